"""``davss adapt``: learn the non-key networks on a camera's own unlabelled video.

The key segmenter is the teacher. Its labels stand in for ground truth wherever the DAVSS
losses need one: DMNet's target is already argmax(propagated) != argmax(segmenter), dual
deep supervision already takes the segmenter's label on F2, and here F3's label is the
teacher's too. So flow (when learned), DMNet, CFNet, the Accel branch and the ``signals``
estimator learn from a plain recording::

    davss adapt --checkpoint davss_ros/weights/davss_cpu.pt --video drive.mp4 --out my.pt
    davss adapt --key-segmenter seg.onnx --bag run.mcap --topic /cam/image_raw --out my.pt

What it does, in a work folder (``--work``, default ``<out>.work/``), each step resumable:

1. Reads the frames (bag topic, video or image folder), brings each to the network input
   as the pipeline does (``--resize``), and writes them with the teacher's per-frame labels
   as a *recording* (``davss_ros.data.cityscapes``: the Cityscapes sequence layout, labels
   as class indices, ``recording.json``): the first frames are ``train``, the last
   ``--val-fraction`` of them ``val`` (held out; split by time, never shuffled across),
   in snippets of ``distance + 1`` frames.
2. Trains stages 2 (DMNet), 3 (flow + CFNet with dual deep supervision, Accel branch) and 4
   (``signals`` models only) with ``davss train``'s Trainer on the ``train`` snippets; the
   teacher stays frozen (an external ONNX / TorchScript teacher is what the stages run as
   the segmenter).
3. Every ``--validate-every`` iterations it scores davss on the ``val`` snippets (pixel
   agreement with the teacher at propagation distance ``--distance``, the PDA protocol) and
   keeps the best weights; the starting weights are scored first. ``validation.csv`` logs
   every score.
4. Writes ``--out``: the best weights, or the starting weights unchanged when nothing beat
   them, with the teacher's classes; a checkpoint made for an external teacher references
   it (path and SHA-256), so the node, ``replay`` and ``eval`` load it with it.

``davss eval --dataset recording --root <work>/data --split val --reference teacher``
scores any checkpoint on the same held-out frames.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from davss_ros.checkpoint import (
    Checkpoint,
    CheckpointError,
    key_segmenter_reference,
    load_checkpoint,
    save_checkpoint,
)
from davss_ros.classes import IGNORE_ID
from davss_ros.data.cityscapes import RECORDING_FILE
from davss_ros.data.imageio import read_rgb, write_label, write_rgb
from davss_ros.resize import RESIZE_POLICIES, Framing
from davss_ros.segmenters.base import KeySegmenter, KeySegmenterError

CITY = "rec"
FORMAT_VERSION = 1


class AdaptError(ValueError):
    """Input that ``davss adapt`` cannot use; one line saying what and why."""


# ------------------------------------------------------------------------- settings


@dataclass
class AdaptSettings:
    """What an adaptation run trains and how it validates (the CLI's options)."""

    distance: int = 9  # validation distance d; snippets have d + 1 frames
    val_fraction: float = 0.2
    resize: str = "letterbox"  # the pipeline's default
    max_frames: int | None = None
    batch_size: int = 4
    # Chosen on the held-out part of a 300-frame dusk recording (docs/issue13_figures.md):
    # about 13 minutes on a busy 2-core CPU at 256x512.
    dmnet_iterations: int = 200
    cfnet_iterations: int = 600
    refiner_iterations: int = 200
    dmnet_lr: float = 5e-3
    cfnet_lr: float = 3e-3
    refiner_lr: float = 1e-3
    validate_every: int = 50
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def check(self) -> None:
        if not 2 <= self.distance <= 29:
            raise AdaptError(f"--distance must be in 2..29, got {self.distance}")
        if not 0.0 < self.val_fraction < 1.0:
            raise AdaptError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.resize not in RESIZE_POLICIES:
            raise AdaptError(f"--resize must be one of {', '.join(RESIZE_POLICIES)}")
        for name in ("batch_size", "validate_every", "dmnet_iterations", "cfnet_iterations",
                     "refiner_iterations"):
            if getattr(self, name) < 1:
                raise AdaptError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise AdaptError("--max-frames must be >= 1")


# --------------------------------------------------------------------------- frames


@dataclass
class FrameInput:
    """Where the frames come from: exactly one of bag, video, images."""

    bag: Path | None = None
    topic: str | None = None
    video: Path | None = None
    images: Path | None = None

    def describe(self) -> str:
        if self.bag is not None:
            return f"bag {self.bag}" + (f" topic {self.topic}" if self.topic else "")
        if self.video is not None:
            return f"video {self.video}"
        return f"images {self.images}"

    def open(self, limit: int | None = None) -> Iterator[np.ndarray]:
        """The frames as H x W x 3 uint8 RGB, in order. Problems that show without decoding
        every frame (missing file, unreadable video, a bag without the topic) raise here."""
        given = [x for x in (self.bag, self.video, self.images) if x is not None]
        if len(given) != 1:
            raise AdaptError("give exactly one of --bag, --video, --images")
        if self.topic is not None and self.bag is None:
            raise AdaptError("--topic goes with --bag")
        from davss_ros.bag.io import BagError

        try:
            if self.bag is not None:
                frames = _bag_frames(self.bag, self.topic)
            elif self.video is not None:
                from davss_ros.bag.make import video_frames

                _, _, gen = video_frames(self.video)
                frames = (f.rgb for f in gen)
            else:
                from davss_ros.bag.make import folder_frames

                _, gen = folder_frames(self.images)
                frames = (f.rgb for f in gen)
        except BagError as exc:
            raise AdaptError(str(exc)) from None
        return _limited(_bag_errors(frames), limit)


def _bag_frames(path: Path, topic: str | None) -> Iterator[np.ndarray]:
    from davss_ros.bag.io import COMPRESSED_TYPE, BagReader, image_rgb, pick_image_topic

    reader = BagReader(path)
    try:
        topic = pick_image_topic(reader, topic)
    except Exception:
        reader.close()
        raise
    msgtype = reader.topics[topic]

    def gen() -> Iterator[np.ndarray]:
        with reader:
            for _, _, raw in reader.messages([topic]):
                msg = reader.deserialize(raw, msgtype, where=topic)
                if msgtype == COMPRESSED_TYPE:
                    from davss_ros.ros.image import compressed_to_rgb

                    yield compressed_to_rgb(msg)
                else:
                    yield image_rgb(msg, where=topic)

    return gen()


def _bag_errors(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    from davss_ros.bag.io import BagError

    try:
        yield from frames
    except BagError as exc:
        raise AdaptError(str(exc)) from None


def _limited(frames: Iterator[np.ndarray], limit: int | None) -> Iterator[np.ndarray]:
    for i, rgb in enumerate(frames):
        if limit is not None and i >= limit:
            return
        yield rgb


# -------------------------------------------------------------------------- teacher


class TeacherModule(nn.Module):
    """A KeySegmenter as the frozen segmenter of the training stages: N x 3 x H x W in
    [0, 1] -> logits on the 1/4 grid, no gradients, no parameters."""

    def __init__(self, key: KeySegmenter) -> None:
        super().__init__()
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.key(x)


@dataclass
class Teacher:
    """The teacher: an external key-segmenter file, or a checkpoint's own segmenter."""

    file: Path | None
    checkpoint: Path | None
    key: KeySegmenter | None  # loaded external segmenter (None: the checkpoint's own)
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    sha256: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        return str(self.file if self.file is not None else self.checkpoint)


def load_teacher(*, key_segmenter: Path | None, checkpoint: Path | None,
                 device: torch.device) -> Teacher:
    from davss_ros.checkpoint import file_sha256

    if (key_segmenter is None) == (checkpoint is None):
        raise AdaptError("give the teacher: exactly one of --key-segmenter FILE or "
                         "--checkpoint CHECKPOINT")
    if key_segmenter is not None:
        from davss_ros.segmenters import load_key_segmenter

        try:
            key = load_key_segmenter(key_segmenter, device=device)
        except KeySegmenterError as exc:
            raise AdaptError(str(exc)) from None
        return Teacher(file=Path(key_segmenter), checkpoint=None, key=key,
                       class_names=list(key.info.class_names),
                       palette=[tuple(c) for c in key.info.palette],
                       sha256=key.sha256 or file_sha256(key_segmenter))
    try:
        ck = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise AdaptError(str(exc)) from None
    if ck.meta.get("key_segmenter"):
        raise AdaptError(f"{checkpoint}: references an external key segmenter "
                         f"({ck.meta['key_segmenter'].get('path')}); give that file as "
                         f"--key-segmenter and this checkpoint as --init")
    return Teacher(file=None, checkpoint=Path(checkpoint), key=None,
                   class_names=list(ck.class_names), palette=list(ck.palette),
                   sha256=file_sha256(checkpoint))


def starting_checkpoint(teacher: Teacher, init: Path | None) -> tuple[Checkpoint, str]:
    """The non-key weights to start from and how to name them: ``init`` (its classes must
    be the teacher's), else the teacher checkpoint, else the shipped model when its classes
    match the teacher's, else untrained weights of the cpu preset for the teacher's
    classes (and its declared input size)."""
    if init is not None:
        if teacher.checkpoint is not None:
            raise AdaptError("--init goes with --key-segmenter; with --checkpoint the "
                             "teacher checkpoint's own non-key networks are the start")
        try:
            ck = load_checkpoint(init)
        except CheckpointError as exc:
            raise AdaptError(str(exc)) from None
        n = ck.config.model.num_classes
        if n != teacher.num_classes:
            raise AdaptError(f"the teacher {teacher.describe()} gives {teacher.num_classes} "
                             f"classes, the starting checkpoint {init} has {n}; start from "
                             f"a checkpoint made for this teacher's classes, or leave out "
                             f"--init to start from scratch")
        return ck, str(init)
    if teacher.checkpoint is not None:
        return load_checkpoint(teacher.checkpoint), str(teacher.checkpoint)
    from davss_ros.weights import default_checkpoint

    shipped = default_checkpoint()
    if shipped is not None:
        ck = load_checkpoint(shipped)
        if ck.config.model.num_classes == teacher.num_classes:
            return ck, str(shipped)
    from davss_ros.config import load_config
    from davss_ros.evaluate.pda import untrained_checkpoint

    cfg = load_config("cpu")
    model = replace(cfg.model, num_classes=teacher.num_classes)
    size = teacher.key.info.input_size if teacher.key is not None else None
    if size is not None:
        model = replace(model, input_height=int(size[0]), input_width=int(size[1]))
    cfg = replace(cfg, model=model)
    ck = untrained_checkpoint(cfg)
    ck.class_names, ck.palette = list(teacher.class_names), list(teacher.palette)
    return ck, "untrained (cpu preset)"


def per_frame_segmenter(teacher: Teacher, start: Checkpoint, device: torch.device,
                        resize: str):
    """The teacher as the pipeline runs it per frame: it fixes the network input size (the
    starting checkpoint's, or the size the teacher declares) and makes the labels."""
    from davss_ros.pipeline import VideoSegmenter

    try:
        return VideoSegmenter.from_checkpoint(start, mode="per_frame", key_segmenter=teacher.key,
                                              resize=resize, device=device)
    except (KeySegmenterError, CheckpointError) as exc:
        raise AdaptError(str(exc)) from None


# -------------------------------------------------------------------- the recording


@dataclass
class Layout:
    """How the frames of a recording are cut: split by time, snippets of ``length``."""

    frames: int
    length: int
    train: tuple[int, int]  # [first, end) recording frame indices
    val: tuple[int, int]

    @classmethod
    def of(cls, frames: int, distance: int, val_fraction: float) -> Layout:
        length = distance + 1
        if frames < 2 * length:
            raise AdaptError(
                f"the recording has {frames} frame(s); adapting needs at least {2 * length}: "
                f"one training snippet of {length} frames (a training triplet spans up to "
                f"{distance + 1} frames, at least 3) and one held-out snippet of {length} "
                f"for scoring at d = {distance}; record longer or lower --distance")
        n_val = max(length, int(round(frames * val_fraction)) // length * length)
        n_train = (frames - n_val) // length * length
        if n_train < length:
            n_val = (frames - length) // length * length
            n_train = length
        val_start = frames - n_val
        return cls(frames, length, (0, n_train), (val_start, frames))

    def split_of(self, index: int) -> tuple[str, int] | None:
        """(split, frame number within it) of recording frame ``index``; None = unused (the
        frames between the parts that do not fill a snippet)."""
        for name, (a, b) in (("train", self.train), ("val", self.val)):
            if a <= index < b:
                return name, index - a
        return None

    def snippets(self, split: str) -> int:
        a, b = getattr(self, split)
        return (b - a) // self.length


def _names(split: str, k: int) -> tuple[str, str, str]:
    stem = f"{CITY}_000000_{k:06d}"
    return (f"leftImg8bit_sequence/{split}/{CITY}/{stem}_leftImg8bit.png",
            f"gtFine_sequence/{split}/{CITY}/{stem}_gtFine_labelIds.png",
            f"gtFine/{split}/{CITY}/{stem}_gtFine_labelIds.png")


def write_recording(root: Path, frames: Iterator[np.ndarray], segmenter, *,
                    settings: AdaptSettings, identity: dict[str, Any],
                    class_names: list[str], progress: bool = True,
                    log=print) -> dict[str, Any]:
    """Read the frames, bring them to the network input, label them with the teacher and
    write the recording under ``root``; returns its description (``recording.json``, written
    last, so a folder with one is complete). An existing complete recording with the same
    ``identity`` is kept as it is; another one is an error."""
    from tqdm import tqdm

    desc_path = root / RECORDING_FILE
    if desc_path.is_file():
        desc = json.loads(desc_path.read_text())
        if desc.get("identity") != identity:
            raise AdaptError(f"{root} holds a recording made from other input, teacher or "
                             f"settings; use another --work folder or --force")
        log(f"frames and teacher labels: {desc['frames']} frames cached in {root}")
        return desc
    if root.exists():
        shutil.rmtree(root)  # an incomplete one
    staging = root / "staging"
    staging.mkdir(parents=True)
    size = segmenter.network_size
    count = 0
    outside: dict[tuple[int, int], np.ndarray] = {}  # image size -> input pixels not its own
    sizes: list[tuple[int, int]] = []
    bar = tqdm(desc="frames", unit="frame", disable=not progress)
    for rgb in frames:
        framing = Framing.of(settings.resize, rgb.shape[:2], size)
        write_rgb(staging / f"{count:06d}.png", framing.to_network(rgb))
        shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        if shape not in outside:  # a letterbox's borders: the teacher's labels are ignored
            ones = np.ones(shape, np.uint8)
            outside[shape] = framing.to_network(ones) == 0
        sizes.append(shape)
        count += 1
        bar.update(1)
    bar.close()
    if count == 0:
        raise AdaptError("the input has no frames")
    layout = Layout.of(count, settings.distance, settings.val_fraction)
    bar = tqdm(total=count, desc="teacher", unit="frame", disable=not progress)
    t0 = time.perf_counter()
    for i in range(count):
        where = layout.split_of(i)
        src = staging / f"{i:06d}.png"
        if where is None:
            src.unlink()
            bar.update(1)
            continue
        split, k = where
        image = read_rgb(src)
        segmenter.reset()
        labels = segmenter.step(image).labels.copy()
        labels[outside[sizes[i]]] = IGNORE_ID
        frame_name, dense_name, ann_name = _names(split, k)
        (root / frame_name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, root / frame_name)
        write_label(root / dense_name, labels)
        if k % layout.length == layout.length - 1:  # the last frame of a snippet
            write_label(root / ann_name, labels)
        bar.update(1)
    bar.close()
    teacher_s = time.perf_counter() - t0
    shutil.rmtree(staging)
    desc = {"format": "davss_ros.recording", "version": FORMAT_VERSION,
            "snippet_length": layout.length, "annotated_index": layout.length - 1,
            "label_format": "train_ids", "frames": count,
            "splits": {"train": list(layout.train), "val": list(layout.val)},
            "network_size": list(size), "resize": settings.resize,
            "class_names": list(class_names), "identity": identity,
            "teacher_seconds": round(teacher_s, 1)}
    desc_path.write_text(json.dumps(desc, indent=1))
    log(f"frames and teacher labels: {count} frames -> train {layout.train[1]} frames "
        f"({layout.snippets('train')} snippets), held out frames {layout.val[0]}.."
        f"{layout.val[1] - 1} ({layout.snippets('val')} snippets); teacher {teacher_s:.0f} s")
    return desc


# ------------------------------------------------------------------------ training


def train_config(run_cfg, data_root: Path, length: int, snippets: int,
                 s: AdaptSettings):
    from .config import load_train_config

    batch = min(s.batch_size, snippets)
    common = {"batch_size": batch, "cache_logits": True, "log_every": 5,
              "checkpoint_every": s.validate_every}
    model = run_cfg.to_dict()["model"]
    return load_train_config({
        "dataset": {"kind": "recording", "root": str(data_root), "snippet_length": length,
                    "cache": True},
        "model": model,
        "stages": {
            0: {"enabled": False},
            1: {"enabled": False},
            2: {**common, "iterations": s.dmnet_iterations, "optimizer": "adam",
                "lr": s.dmnet_lr, "lr_schedule": "step_half", "max_distance": length - 1},
            3: {**common, "iterations": s.cfnet_iterations, "optimizer": "adam",
                "lr": s.cfnet_lr, "cfnet_lr": s.cfnet_lr, "betas": [0.9, 0.99],
                "lr_schedule": "step_half", "min_distance": 2,
                "max_distance": length - 1, "accel": True},
            4: {**common, "iterations": s.refiner_iterations, "optimizer": "adam",
                "lr": s.refiner_lr, "lr_schedule": "poly", "max_distance": length - 1,
                "target": "segmenter"},
        },
        "seed": s.seed, "num_workers": 0, "device": s.device, "threads": s.threads,
    })


RUN_FILE = "run.json"
RUN_OUTPUTS = ("train", "start.pt", "best.pt", "state.json", "validation.csv")


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _start_over_unless(work: Path, run_id: dict[str, Any], log=print) -> None:
    """Keep the stages and the validation record in ``work`` only when they come from the
    same settings and starting weights; else remove them (the cached recording stays)."""
    path = work / RUN_FILE
    if path.is_file() and json.loads(path.read_text()) == run_id:
        return
    if any((work / name).exists() for name in RUN_OUTPUTS):
        log(f"{work}: training settings or starting weights changed; training again")
    for name in RUN_OUTPUTS:
        target = work / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    path.write_text(json.dumps(run_id))


@dataclass
class Validator:
    """Scores weights on the held-out snippets (davss, agreement with the teacher at d) and
    keeps the best; its record (``state.json``, ``validation.csv``, ``best.pt``) lets a
    resumed run carry on."""

    work: Path
    config: Any  # DavssConfig of the weights
    teacher: Teacher
    distance: int
    device: torch.device
    history: list[dict] = field(default_factory=list)
    best: dict | None = None

    def __post_init__(self) -> None:
        from davss_ros.data.cityscapes import open_recording

        self.dataset = open_recording(self.work / "data", "val")
        state = self.work / "state.json"
        if state.is_file():
            saved = json.loads(state.read_text())
            self.history, self.best = saved["history"], saved["best"]

    def done(self, stage: int, iteration: int) -> bool:
        return any(h["stage"] == stage and h["iteration"] == iteration for h in self.history)

    @torch.no_grad()
    def score(self, state_dict: dict[str, torch.Tensor]) -> float:
        from davss_ros.evaluate.pda import build_segmenters, evaluate_pda

        ck = Checkpoint(path=None, config=self.config,
                        state_dict={k: v.detach().cpu() for k, v in state_dict.items()},
                        class_names=list(self.teacher.class_names),
                        palette=list(self.teacher.palette))
        with torch.random.fork_rng(devices=[]):
            segs = build_segmenters(ck, ["davss"], key_segmenter=self.teacher.key,
                                    device=self.device)
            res = evaluate_pda(segs, self.dataset, distances=[self.distance],
                               reference="label")
            segs["davss"].close()
        return 100.0 * res["davss"].matrices[self.distance].pixel_accuracy()

    def record(self, stage: int, iteration: int, state_dict: dict[str, torch.Tensor],
               log=print) -> None:
        t0 = time.perf_counter()
        agree = self.score(state_dict)
        better = self.best is None or agree > self.best["agreement"]
        row = {"stage": stage, "iteration": iteration, "agreement": round(agree, 3),
               "seconds": round(time.perf_counter() - t0, 1), "best": better}
        self.history.append(row)
        if better:
            save_checkpoint(self.work / "best.pt", config=self.config,
                            state_dict={k: v.detach().cpu() for k, v in state_dict.items()},
                            class_names=list(self.teacher.class_names),
                            palette=list(self.teacher.palette),
                            meta={"stage": stage, "iteration": iteration})
            self.best = dict(row)
        self._save()
        where = "start" if stage < 0 else f"stage {stage} iteration {iteration}"
        log(f"held out: davss agrees with the teacher on {agree:.2f} % at d = "
            f"{self.distance} ({where}){'; best so far' if better else ''}")

    def _save(self) -> None:
        tmp = self.work / "state.json.part"
        tmp.write_text(json.dumps({"history": self.history, "best": self.best}, indent=1))
        os.replace(tmp, self.work / "state.json")
        with open(self.work / "validation.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["stage", "iteration", "agreement", "seconds",
                                              "best"])
            w.writeheader()
            w.writerows(self.history)


@dataclass
class AdaptResult:
    out: Path | None  # None: stopped early (resumable)
    start_agreement: float | None = None
    best_agreement: float | None = None
    improved: bool = False
    seconds: float = 0.0
    frames: int = 0


def adapt(frames: FrameInput, *, out: Path, key_segmenter: Path | None = None,
          checkpoint: Path | None = None, init: Path | None = None,
          work: Path | None = None, settings: AdaptSettings | None = None,
          stop_after: int | None = None, force: bool = False, progress: bool = True,
          log=None) -> AdaptResult:
    """The whole of ``davss adapt`` (see the module's docstring)."""
    from .engine import setup_context, teardown_context
    from .runner import Trainer

    s = settings or AdaptSettings()
    s.check()
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    t_start = time.perf_counter()
    ctx = setup_context(s.device, s.threads, progress=progress)
    say = log or ctx.log
    try:
        teacher = load_teacher(key_segmenter=key_segmenter, checkpoint=checkpoint,
                               device=ctx.device)
        start, start_name = starting_checkpoint(teacher, init)
        if start.class_names != teacher.class_names and teacher.key is not None \
                and start.config.model.num_classes == teacher.num_classes:
            start = copy.copy(start)
            start.class_names, start.palette = list(teacher.class_names), list(teacher.palette)
        labeller = per_frame_segmenter(teacher, start, ctx.device, s.resize)
        frame_iter = frames.open(s.max_frames)  # opening errors before anything is written
        config = labeller.config
        say(f"davss adapt: teacher {teacher.describe()} ({teacher.num_classes} classes), "
            f"start {start_name}, input {config.model.input_height}x"
            f"{config.model.input_width}, device {ctx.device}")
        identity = {"input": frames.describe(), "teacher_sha256": teacher.sha256,
                    "distance": s.distance, "val_fraction": s.val_fraction,
                    "resize": s.resize, "max_frames": s.max_frames,
                    "network_size": list(labeller.network_size)}
        if force and work.exists() and ctx.is_main:
            shutil.rmtree(work)
        data = work / "data"
        if ctx.is_main:
            work.mkdir(parents=True, exist_ok=True)
            desc = write_recording(data, frame_iter, labeller, settings=s, identity=identity,
                                   class_names=teacher.class_names, progress=progress,
                                   log=say)
        ctx.barrier()
        desc = json.loads((data / RECORDING_FILE).read_text())
        labeller.close()
        # the networks as trained: the start's, at the input size agreed with the teacher
        run_cfg = replace(start.config, model=replace(
            start.config.model, num_classes=teacher.num_classes,
            input_height=config.model.input_height, input_width=config.model.input_width))
        length = int(desc["snippet_length"])
        train_snippets = (desc["splits"]["train"][1] - desc["splits"]["train"][0]) // length
        cfg = train_config(run_cfg, data, length, train_snippets, s)
        # What the training and its record depend on besides the recording: the settings
        # and the starting weights. Another run in the same work folder starts over.
        run_id = {"train": cfg.fingerprint(4), "start": start_name,
                  "start_sha256": _state_digest(start.state_dict)}
        start_path = work / "start.pt"
        if ctx.is_main:
            _start_over_unless(work, run_id, log=say)
            if not start_path.is_file():
                save_checkpoint(start_path, config=run_cfg, state_dict=start.state_dict,
                                class_names=list(teacher.class_names),
                                palette=list(teacher.palette), meta={"source": start_name})
        ctx.barrier()
        validator = Validator(work, run_cfg, teacher, s.distance, ctx.device)
        if ctx.is_main and not validator.done(-1, 0):
            validator.record(-1, 0, start.state_dict, log=say)
        ctx.barrier()
        start_score = validator.history[0]["agreement"] if validator.history else None

        def after_snapshot(stage: int, iteration: int, net: nn.Module) -> None:
            total = cfg.stage(stage).iterations
            if iteration % s.validate_every and iteration != total:
                return
            if validator.done(stage, iteration):
                return
            validator.record(stage, iteration, net.state_dict(), log=say)

        module = TeacherModule(teacher.key) if teacher.key is not None else None
        trainer = Trainer(cfg, work / "train", ctx, stop_after=stop_after, init=start_path,
                          key_segmenter=module, after_snapshot=after_snapshot)
        final = trainer.run()
        if final is None:
            return AdaptResult(out=None, start_agreement=start_score,
                               seconds=time.perf_counter() - t_start,
                               frames=int(desc["frames"]))
        best = validator.best
        improved = best is not None and (best["stage"], best["iteration"]) != (-1, 0)
        if ctx.is_main:
            source = load_checkpoint(work / "best.pt") if improved else None
            state = source.state_dict if source is not None else start.state_dict
            meta: dict[str, Any] = {
                "trained_by": "davss adapt", "train_config": cfg.to_dict(),
                "adapt": {"input": frames.describe(), "teacher": teacher.describe(),
                          "teacher_sha256": teacher.sha256, "start": start_name,
                          "frames": desc["frames"], "splits": desc["splits"],
                          "distance": s.distance,
                          "start_agreement": start_score,
                          "best_agreement": best["agreement"] if best else None,
                          "best_at": None if not improved else
                          {"stage": best["stage"], "iteration": best["iteration"]},
                          "improved": improved}}
            if not improved and start.meta:
                meta["start_meta"] = start.meta
            if teacher.file is not None:
                meta["key_segmenter"] = key_segmenter_reference(
                    teacher.file, checkpoint_path=out, num_classes=teacher.num_classes)
            save_checkpoint(out, config=run_cfg, state_dict=state,
                            class_names=list(teacher.class_names),
                            palette=list(teacher.palette), meta=meta)
            if improved:
                say(f"davss adapt: held-out agreement at d = {s.distance}: "
                    f"{start_score:.2f} % -> {best['agreement']:.2f} % (best at stage "
                    f"{best['stage']} iteration {best['iteration']}); wrote {out}")
            else:
                say(f"davss adapt: nothing beat the starting weights on the held-out frames "
                    f"({start_score:.2f} % at d = {s.distance}); wrote the starting weights "
                    f"unchanged to {out}")
        ctx.barrier()
        return AdaptResult(out=out, start_agreement=start_score,
                           best_agreement=best["agreement"] if best else None,
                           improved=improved, seconds=time.perf_counter() - t_start,
                           frames=int(desc["frames"]))
    finally:
        teardown_context(ctx)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = AdaptSettings()
    teacher = parser.add_argument_group("teacher (one of)")
    teacher.add_argument("--key-segmenter", type=Path, default=None, metavar="FILE",
                         help="an ONNX or TorchScript segmenter with its declaration")
    teacher.add_argument("--checkpoint", type=Path, default=None,
                         help="a davss checkpoint: its segmenter is the teacher, its non-key "
                              "networks the start")
    source = parser.add_argument_group("frames (one of)")
    source.add_argument("--bag", type=Path, default=None, help="a rosbag2 (mcap or sqlite3)")
    source.add_argument("--topic", default=None,
                        help="with --bag: the image topic (default: the *image_raw one)")
    source.add_argument("--video", type=Path, default=None, help="a video file (OpenCV)")
    source.add_argument("--images", type=Path, default=None,
                        help="a folder of images, in name order")
    parser.add_argument("--out", type=Path, required=True, help="the adapted checkpoint")
    parser.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT",
                        help="with --key-segmenter: the non-key weights to start from (its "
                             "classes must be the teacher's; default: the shipped model when "
                             "they match, else untrained)")
    parser.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="cached frames, labels, stages, logs (default: <out>.work)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="only the first N frames")
    parser.add_argument("--distance", type=int, default=d.distance, metavar="D",
                        help="validation distance; snippets have D + 1 frames "
                             "(default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction,
                        help="the last share of the frames held out (default: %(default)s)")
    parser.add_argument("--resize", choices=RESIZE_POLICIES, default=d.resize,
                        help="how frames reach the network input (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--dmnet-iterations", type=int, default=d.dmnet_iterations)
    parser.add_argument("--cfnet-iterations", type=int, default=d.cfnet_iterations)
    parser.add_argument("--refiner-iterations", type=int, default=d.refiner_iterations,
                        help="stage 4, signals models only")
    parser.add_argument("--dmnet-lr", type=float, default=d.dmnet_lr)
    parser.add_argument("--cfnet-lr", type=float, default=d.cfnet_lr)
    parser.add_argument("--refiner-lr", type=float, default=d.refiner_lr)
    parser.add_argument("--validate-every", type=int, default=d.validate_every,
                        metavar="N", help="iterations between held-out scores and snapshots")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop (resumably) after this many optimiser steps")
    parser.add_argument("--force", action="store_true",
                        help="start over: delete the work folder first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    settings = AdaptSettings(
        distance=args.distance, val_fraction=args.val_fraction, resize=args.resize,
        max_frames=args.max_frames, batch_size=args.batch_size,
        dmnet_iterations=args.dmnet_iterations, cfnet_iterations=args.cfnet_iterations,
        refiner_iterations=args.refiner_iterations, dmnet_lr=args.dmnet_lr,
        cfnet_lr=args.cfnet_lr, refiner_lr=args.refiner_lr,
        validate_every=args.validate_every, seed=args.seed, device=args.device,
        threads=args.threads)
    frames = FrameInput(bag=args.bag, topic=args.topic, video=args.video, images=args.images)
    try:
        result = adapt(frames, out=args.out, key_segmenter=args.key_segmenter,
                       checkpoint=args.checkpoint, init=args.init, work=args.work,
                       settings=settings, stop_after=args.stop_after, force=args.force,
                       progress=not args.no_progress)
    except (AdaptError, CheckpointError, KeySegmenterError, FileNotFoundError) as exc:
        print(f"davss adapt: error: {exc}", file=sys.stderr)
        return 2
    if result.out is None:
        print(f"davss adapt: stopped after the requested steps ({result.seconds:.0f} s); "
              f"run the same command again to continue")
    else:
        print(f"davss adapt: {result.out} ({result.frames} frames, {result.seconds:.0f} s)")
    return 0
