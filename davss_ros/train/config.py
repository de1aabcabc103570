"""Typed configuration of ``davss train``: data set, model, the five stages, run settings.

A training YAML has four sections besides a few run settings::

    dataset: {kind: synthetic | cityscapes | camvid, root: DIR, train_split, val_split,
              generate: {...}}          # generate: synthetic only, rendered when missing
    model: {...}                        # a davss_ros model config (preset + overrides)
    stages: {0: {...}, 1: {...}, 2: {...}, 3: {...}, 4: {...}}
    seed: 0
    num_workers: 2

Stages (see ``davss_ros.train.stages``): 0 segmenter, 1 flow-net pretraining on synthetic
pairs (learned flow only), 2 DMNet, 3 flow + CFNet with dual deep supervision (and the
Accel baseline's branch), 4 the ``signals`` distortion estimator (model.distortion: signals
only). ``batch_size`` is the global batch of one iteration, split evenly
over the processes of a distributed run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from davss_ros.config import DavssConfig, _from_dict, load_config
from davss_ros.registry import DATASETS

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("poly", "step_half", "constant")
DGFL_NORMS = ("mean", "sum_m")
# What stage 4 learns the fused output against (see Stage4Config.target).
REFINER_TARGETS = ("auto", "label", "segmenter")
# Model fields that change inference only (a run's stages do not depend on them), left
# out of the stage fingerprints so that setting them does not retrain anything.
INFERENCE_ONLY = ("distortion_map",)


@dataclass
class GenerateConfig:
    """Synthetic clips rendered into ``dataset.root`` when a split is missing there."""

    clips: dict = field(default_factory=lambda: {"train": 48, "val": 12})  # split -> count
    height: int = 256
    width: int = 512
    frames: int = 30
    seed: int = 0
    workers: int = 2


@dataclass
class DatasetConfig:
    kind: str = "synthetic"
    root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    # Frames (and labels) are resized to this (height, width) before augmentation; None =
    # the model's input size, the size the pipeline feeds the networks at inference.
    resize: tuple | None = None
    # Frames per snippet (Cityscapes layout; 30 in Cityscapes); None = generate.frames or 30.
    snippet_length: int | None = None
    # CamVid: resize video frames to their label's size on load (see data/camvid.py).
    resize_frames: bool = False
    # Keep decoded frames in memory (per loader process): for small data sets.
    cache: bool = False
    generate: GenerateConfig | None = None


@dataclass
class StageConfig:
    """What every stage has: schedule, optimiser, augmentation."""

    enabled: bool = True
    iterations: int = 1000
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9  # SGD
    betas: tuple = (0.9, 0.999)  # Adam / AdamW
    weight_decay: float = 0.0
    lr_schedule: str = "step_half"  # poly | step_half (lr / 10 after half) | constant
    poly_power: float = 0.9
    warmup: int = 0  # iterations of linear warm-up
    crop: tuple | None = None  # (height, width) random crop; None = whole frame
    flip: bool = False  # random horizontal flip
    scale: tuple = (1.0, 1.0)  # random rescale range before cropping
    log_every: int = 10
    checkpoint_every: int = 200  # iterations between resumable snapshots


@dataclass
class Stage0Config(StageConfig):
    """Segmenter on the labelled frames."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"
    flip: bool = True
    # annotated: the annotated frame of each snippet; dense: every frame that has a label
    # (synthetic data); auto: dense where the data set has dense labels, else annotated.
    labelled: str = "auto"
    val_images: int = 64  # per-frame mIoU on this many val annotated frames after the stage


@dataclass
class Stage1Config(StageConfig):
    """Flow network pretraining on synthetic frame pairs with true flow (EPE loss)."""

    iterations: int = 2000
    batch_size: int = 8
    lr: float = 1e-4
    pair_height: int = 256  # size of the rendered pairs (crop applies after)
    pair_width: int = 512
    pair_seed: int = 1000
    valid_fraction: float = 0.75  # a 1/4-res pixel is valid if this share of its 4x4 is


@dataclass
class Stage2Config(StageConfig):
    """DMNet: segmenter and flow frozen, BCE against argmax(propagated) != argmax(current)."""

    lr: float = 1e-4
    max_distance: int = 10  # key frame = t - j, j uniform in 1..max_distance
    # Keep the frozen segmenter's logits of every frame once computed (no augmentation
    # only: crop null, scale [1, 1], flip false). Same results, far less compute.
    cache_logits: bool = False


@dataclass
class Stage3Config(StageConfig):
    """Flow (learned) + CFNet with dual deep supervision; segmenter and DMNet frozen."""

    lr: float = 1e-4  # flow network
    cfnet_lr: float = 1e-4
    accel_lr: float | None = None  # None = cfnet_lr
    betas: tuple = (0.9, 0.99)
    min_distance: int = 2  # F1 = F3 - j, j uniform in min..max_distance (clipped to the clip)
    max_distance: int = 10
    dds: bool = True  # False: no F2, one warp F1 -> F3, supervision on F3 only
    dgfl: bool = True  # False: no L_DGFL term
    dgfc: bool = True  # False: fuse with a constant 0.5 map instead of M
    dgfl_norm: str = "mean"  # mean: over all pixels (Eq. 3); sum_m: divided by sum of M
    train_flow: bool = True  # learned flow only
    accel: bool = True  # also train the Accel baseline's branch and fusion
    cache_logits: bool = False  # as in stage 2


@dataclass
class Stage4Config(StageConfig):
    """The ``signals`` distortion estimator and its fusion floor (model.distortion: signals;
    skipped otherwise); everything else frozen. Chains as in stage 2."""

    iterations: int = 400
    lr: float = 1e-3
    lr_schedule: str = "poly"
    max_distance: int = 10
    # auto: the last frame's label where the data set has one, else the segmenter's pseudo
    # label; label / segmenter: always that (segmenter: learn from a key segmenter alone).
    target: str = "auto"
    bce_weight: float = 1.0  # weight of the BCE of the refined map against the paper's target
    cache_logits: bool = False  # as in stage 2
    # CFNet learns too, against the fused output, plus cue_weight x its own cross-entropy.
    train_cfnet: bool = False
    cfnet_lr: float = 1e-3
    cue_weight: float = 0.5


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: DavssConfig = field(default_factory=DavssConfig)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    stage4: Stage4Config = field(default_factory=Stage4Config)
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    threads: int | None = None  # torch threads per process; None = cores / processes
    source: str = ""  # the YAML file it came from, for the record

    def stage(self, n: int) -> StageConfig:
        return getattr(self, f"stage{n}")

    def to_dict(self) -> dict[str, Any]:
        out = {
            "dataset": _plain(dataclasses.asdict(self.dataset)),
            "model": self.model.to_dict(),
            "stages": {n: _plain(dataclasses.asdict(self.stage(n))) for n in STAGES},
        }
        for name in ("seed", "num_workers", "device", "threads"):
            out[name] = getattr(self, name)
        return out

    def validate(self) -> None:
        d = self.dataset
        DATASETS.check("dataset.kind", d.kind)
        if d.generate is not None and d.kind != "synthetic":
            raise ValueError("dataset.generate is for kind synthetic only")
        if d.resize is not None and len(d.resize) != 2:
            raise ValueError(f"dataset.resize must be [height, width], got {d.resize!r}")
        m = self.model.model
        for n in STAGES:
            s = self.stage(n)
            where = f"stages.{n}"
            if s.optimizer not in OPTIMIZERS:
                raise ValueError(f"{where}.optimizer must be one of {', '.join(OPTIMIZERS)}; "
                                 f"got {s.optimizer!r}")
            if s.lr_schedule not in LR_SCHEDULES:
                raise ValueError(f"{where}.lr_schedule must be one of "
                                 f"{', '.join(LR_SCHEDULES)}; got {s.lr_schedule!r}")
            if s.iterations < 1 or s.batch_size < 1 or s.log_every < 1 \
                    or s.checkpoint_every < 1:
                raise ValueError(f"{where}: iterations, batch_size, log_every and "
                                 f"checkpoint_every must be >= 1")
            if len(s.scale) != 2 or not 0 < s.scale[0] <= s.scale[1]:
                raise ValueError(f"{where}.scale must be [min, max] with 0 < min <= max, "
                                 f"got {s.scale!r}")
            if s.crop is not None:
                if len(s.crop) != 2:
                    raise ValueError(f"{where}.crop must be [height, width], got {s.crop!r}")
                # Stage 0 only runs the segmenter (stride 4 output); the others run CFNet /
                # FlowNet, which need multiples of 64.
                multiple = 32 if n == 0 else 64
                if any(int(c) % multiple or int(c) < multiple for c in s.crop):
                    raise ValueError(f"{where}.crop must be multiples of {multiple}, "
                                     f"got {list(s.crop)}")
        for n in (2, 3, 4):
            s = self.stage(n)
            if s.cache_logits and (s.crop is not None or tuple(s.scale) != (1.0, 1.0)
                                   or s.flip):
                raise ValueError(f"stages.{n}.cache_logits needs un-augmented frames: crop "
                                 f"null, scale [1, 1], flip false")
        if self.stage0.labelled not in ("auto", "annotated", "dense"):
            raise ValueError(f"stages.0.labelled must be auto, annotated or dense; got "
                             f"{self.stage0.labelled!r}")
        for n in (2, 4):
            if self.stage(n).max_distance < 1:
                raise ValueError(f"stages.{n}.max_distance must be >= 1")
        if self.stage4.target not in REFINER_TARGETS:
            raise ValueError(f"stages.4.target must be one of {', '.join(REFINER_TARGETS)}; "
                             f"got {self.stage4.target!r}")
        s3 = self.stage3
        if not 2 <= s3.min_distance <= s3.max_distance:
            raise ValueError(f"stages.3 needs 2 <= min_distance <= max_distance (F2 lies "
                             f"strictly between F1 and F3); got {s3.min_distance}, "
                             f"{s3.max_distance}")
        if s3.dgfl_norm not in DGFL_NORMS:
            raise ValueError(f"stages.3.dgfl_norm must be one of {', '.join(DGFL_NORMS)}; "
                             f"got {s3.dgfl_norm!r}")
        if m.input_height % 64 or m.input_width % 64:
            raise ValueError(f"model input {m.input_height}x{m.input_width}: training runs "
                             f"CFNet, which needs multiples of 64")

    def fingerprint(self, n: int) -> str:
        """A digest of everything stage ``n``'s result depends on (earlier stages included);
        fields that only change logging or snapshots are left out."""
        skip = ("log_every", "checkpoint_every", "val_images")
        model = self.model.to_dict()["model"]
        for name in INFERENCE_ONLY:  # training never reads them (stage 3 has its switches)
            model.pop(name, None)
        if n < 4:  # stages 0-3 train the same with either distortion estimator
            model.pop("distortion", None)
        data = {
            "model": model,
            "dataset": {k: v for k, v in _plain(dataclasses.asdict(self.dataset)).items()
                        if k not in ("cache",)},
            "seed": self.seed,
            "stages": [{k: v for k, v in _plain(dataclasses.asdict(self.stage(i))).items()
                        if k not in skip} for i in range(n + 1)],
        }
        if n >= 4 and not self.stage4.train_cfnet:
            # Settings added with train_cfnet: left out while it is off, so stage-4 runs
            # written before it keep their fingerprints.
            for k in ("train_cfnet", "cfnet_lr", "cue_weight"):
                data["stages"][4].pop(k)
        if data["dataset"].get("generate"):
            data["dataset"]["generate"].pop("workers", None)
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_STAGE_CLASSES = {0: Stage0Config, 1: Stage1Config, 2: Stage2Config, 3: Stage3Config,
                  4: Stage4Config}
STAGES = tuple(_STAGE_CLASSES)


def load_train_config(source: str | Path | dict[str, Any]) -> TrainConfig:
    """A training YAML file (or the same as a dict) as a validated TrainConfig."""
    where = "train config"
    if isinstance(source, dict):
        data = json.loads(json.dumps(source, default=list))  # a deep, plain copy
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config not found: {path}")
        data = _read_yaml(path)
    try:
        cfg = _parse(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
    cfg.source = "" if isinstance(source, dict) else str(source)
    return cfg


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A training YAML as a dict, with ``extends: BASE.yaml`` (relative to the file) resolved:
    the file's mappings are merged into the base's, key by key, at every depth."""
    resolved = path.resolve()
    if resolved in chain:
        raise ValueError(f"{path}: 'extends' loops back to {resolved}")
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ValueError(f"{path}: 'extends' must be a file name, got {base_name!r}")
    base = _read_yaml(path.parent / base_name, chain + (resolved,))
    return _merge(base, data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse(data: dict[str, Any]) -> TrainConfig:
    data = dict(data)
    known = {"dataset", "model", "stages", "seed", "num_workers", "device", "threads"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    ds = dict(data.pop("dataset", None) or {})
    gen = ds.pop("generate", None)
    dataset = _from_dict(DatasetConfig, ds, "dataset")
    if dataset.resize is not None:
        dataset.resize = tuple(int(v) for v in dataset.resize)
    if gen is not None:
        dataset.generate = _from_dict(GenerateConfig, gen, "dataset.generate")
    # The model section holds ModelConfig fields, and optionally a preset they override.
    model_in = dict(data.pop("model", None) or {})
    preset_name = model_in.pop("preset", "cpu")
    model = load_config({"preset": preset_name, "model": model_in})
    stages_in = data.pop("stages", None) or {}
    if not isinstance(stages_in, dict):
        raise ValueError("stages: expected a mapping 0..4 -> settings")
    stages = {}
    for key, value in stages_in.items():
        try:
            n = int(key)
        except (TypeError, ValueError):
            n = -1
        if n not in _STAGE_CLASSES:
            raise ValueError(f"stages: unknown stage {key!r}; expected 0, 1, 2, 3 or 4")
        value = dict(value or {})
        for name in ("crop", "scale", "betas"):
            if value.get(name) is not None:
                value[name] = tuple(value[name])
        stage = _from_dict(_STAGE_CLASSES[n], value, f"stages.{n}")
        if stage.crop is not None:
            stage.crop = tuple(int(c) for c in stage.crop)
        stage.scale = tuple(float(s) for s in stage.scale)
        stage.betas = tuple(float(b) for b in stage.betas)
        stages[f"stage{n}"] = stage
    cfg = TrainConfig(dataset=dataset, model=model, **stages)
    for name in ("seed", "num_workers"):
        if name in data:
            setattr(cfg, name, int(data.pop(name)))
    if "device" in data:
        cfg.device = str(data.pop("device"))
    if data.get("threads") is not None:
        cfg.threads = int(data.pop("threads"))
    cfg.validate()
    return cfg


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
