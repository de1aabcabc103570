"""The paper's PDA protocol: mIoU of the annotated frame against the propagation distance d.

For every snippet and every d (1..9 by default): the segmenter is reset, frame ``ann - d``
is its key frame, frames ``ann - d + 1 .. ann`` are propagated one by one (all non-key), and
the prediction of the annotated frame ``ann`` is scored against its label. One confusion
matrix per (mode, d) over the whole split gives the mIoU (../shared/notes/method.md,
"Evaluation"). ``per_frame`` segments the annotated frame alone; that prediction does not
depend on d, so it is made once per snippet and scored for every d.

Every mode of one run uses the same weights (one checkpoint, or one set of untrained
weights), so the curves differ by the method only.

``cue`` scores CFNet's correction cue alone (the davss pipeline's f_CC on the annotated
frame). ``hold`` reuses the key frame's labels unwarped (the floor of propagation), and with
``reference="teacher"`` every mode is scored against the per-frame segmenter's prediction
of the annotated frame instead of its label: agreement with the key segmenter.

Oracle modes (the paper's Table IV upper bound, where only the wrongly predicted regions are
rectified, found with the ground truth): ``davss_gt`` runs the davss pipeline and scores, on
the annotated frame, the argmax of the propagated logits f_P where it agrees with the label
(or the label is ignore) and the argmax of CFNet's cue f_CC where it does not. ``accel_gt``
does the same with Accel's fused output in place of the cue. Propagation is untouched (the
raw warped logits, unless the model's ``propagate_corrected``), so only the scored frame
differs from ``dff``; with raw propagation its f_P argmax is ``dff``'s prediction, so the
oracle's correct pixels are a superset of ``dff``'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import cv2
import numpy as np
import torch

from davss_ros.checkpoint import Checkpoint
from davss_ros.classes import IGNORE_ID, default_class_names, default_palette
from davss_ros.config import MODES, DavssConfig, ScheduleConfig
from davss_ros.model import build_davss_net
from davss_ros.pipeline import FrameResult, VideoSegmenter

from .metrics import ConfusionMatrix

DISTANCES = tuple(range(1, 10))

# Oracle mode -> (pipeline mode it runs, FrameParts field replacing f_P on wrong pixels).
ORACLE_MODES = {"davss_gt": ("davss", "cue"), "accel_gt": ("accel", "fused")}
# A part of a mode's non-key step scored alone: ``cue`` is CFNet's correction cue f_CC by
# itself (what the light current-frame branch can do without the key frame).
PART_MODES = {"cue": ("davss", "cue")}
# The floor every propagating mode must beat: the key frame's labels reused unwarped
# (a per-frame segmenter run on the key frame only).
HOLD = "hold"
# Everything evaluate_pda can score: the pipeline's modes, the oracles and the floor.
EVAL_MODES = MODES + tuple(ORACLE_MODES) + tuple(PART_MODES) + (HOLD,)
# What the annotated frame is scored against: its label, or the per-frame segmenter's own
# prediction of it (agreement with the key segmenter: no label needed, e.g. on a user's
# video or on a look the model was not trained on).
REFERENCES = ("label", "teacher")

# Fixed schedule that never asks for a key frame inside a PDA run: the reset makes the first
# frame key and every later one is propagated. The scene-cut rule is switched off, as the
# protocol fixes the propagation distance (a cut would silently shorten it).
PDA_SCHEDULE = ScheduleConfig(policy="fixed", key_interval=1_000_000, max_interval=1_000_000,
                              scene_cut_factor=1.0e12, scene_cut_min_error=1.0e12)


class PdaSample(Protocol):
    frames: list[np.ndarray]  # d + 1 frames, H x W x 3 uint8 RGB, the key frame first
    label: np.ndarray  # the last (annotated) frame's label, H x W trainIds, 255 = ignore


class SnippetDataset(Protocol):
    """What the protocol needs from a data set (the Cityscapes and CamVid loaders)."""

    def __len__(self) -> int: ...

    def pda_sample(self, i: int, distance: int) -> PdaSample: ...


@dataclass
class Step:
    """One frame step of a PDA run, as given to ``evaluate_pda``'s ``on_step`` hook."""

    mode: str
    snippet: int
    distance: int | None  # the run's d; None for per_frame (one run serves every d)
    offset: int  # frames before the annotated frame: d for the key frame, 0 for the last
    image: np.ndarray
    result: FrameResult


@dataclass
class PdaResult:
    """One mode's confusion matrices, one per propagation distance."""

    mode: str
    matrices: dict[int, ConfusionMatrix]
    snippets: int = 0
    frames: int = 0  # frame steps run
    seconds: float = 0.0  # wall time of those steps (loading excluded)
    # runs whose annotated frame did not come out at the asked distance (a non-finite output
    # forces a key frame); 0 in a sound run
    distance_mismatches: int = 0
    invalid_outputs: int = 0  # annotated-frame predictions that were non-finite
    extra: dict = field(default_factory=dict)

    @property
    def distances(self) -> tuple[int, ...]:
        return tuple(sorted(self.matrices))

    def miou(self) -> dict[int, float]:
        return {d: m.miou() for d, m in sorted(self.matrices.items())}


def untrained_checkpoint(config: DavssConfig, *, seed: int = 0) -> Checkpoint:
    """Seeded fresh weights of ``config`` as an in-memory checkpoint, to share across modes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_davss_net(config.model)
    n = config.model.num_classes
    return Checkpoint(path=None, config=config,
                      state_dict={k: v.detach().clone() for k, v in net.state_dict().items()},
                      class_names=default_class_names(n), palette=default_palette(n),
                      meta={"untrained": True, "seed": seed})


def build_segmenters(checkpoint: Checkpoint, modes: Iterable[str] = MODES, *,
                     input_size: tuple[int, int] | None = None,
                     key_segmenter=None,
                     device: str | torch.device = "auto") -> dict[str, VideoSegmenter]:
    """One VideoSegmenter per mode, all with the checkpoint's weights and the PDA schedule.

    Args:
        modes: some of ``EVAL_MODES``; an oracle mode (``davss_gt``, ``accel_gt``) gets a
            segmenter of its pipeline mode that keeps the frame parts.
        input_size: (height, width) of the network input; None = the checkpoint's.
        key_segmenter: a KeySegmenter or a TorchScript / ONNX file for key frames; None =
            the checkpoint's own.
    """
    modes = list(modes)
    unknown = [m for m in modes if m not in EVAL_MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {', '.join(EVAL_MODES)}; "
                         f"got {', '.join(modes) or 'none'}")
    out = {}
    for mode in modes:
        oracle = ORACLE_MODES.get(mode) or PART_MODES.get(mode)
        run = oracle[0] if oracle else "per_frame" if mode == HOLD else mode
        out[mode] = VideoSegmenter.from_checkpoint(
            checkpoint, mode=run, input_size=input_size,
            schedule=replace(PDA_SCHEDULE), key_segmenter=key_segmenter, device=device,
            keep_parts=oracle is not None)
    return out


def oracle_labels(propagated: np.ndarray, correction: np.ndarray,
                  label: np.ndarray, ignore_id: int = IGNORE_ID) -> np.ndarray:
    """The ground-truth-guided correction: ``correction`` on the pixels where ``propagated``
    disagrees with ``label``, ``propagated`` elsewhere. Ignored label pixels are not wrong
    (they keep ``propagated``). All three are label-sized id arrays."""
    if not propagated.shape == correction.shape == label.shape:
        raise ValueError(f"oracle_labels expects three arrays of one shape, got "
                         f"{propagated.shape}, {correction.shape} and {label.shape}")
    wrong = (propagated != label) & (label != ignore_id)
    return np.where(wrong, correction, propagated).astype(propagated.dtype, copy=False)


def oracle_prediction(segmenter: VideoSegmenter, result: FrameResult, label: np.ndarray,
                      mode: str, image_size: tuple[int, int]) -> np.ndarray:
    """The oracle ``mode``'s prediction of a frame at the label's size.

    ``result`` must come from ``segmenter`` with ``keep_parts`` on; a key frame (no parts,
    e.g. after a non-finite output) is scored as it came out. Both label maps are made the
    way the pipeline makes its output (``labels_from_logits`` at the image size), then
    brought to the label's size by nearest neighbour, as every mode's prediction is.
    """
    if mode not in ORACLE_MODES:
        raise ValueError(f"unknown oracle mode {mode!r}; expected one of "
                         f"{', '.join(ORACLE_MODES)}")
    if result.parts is None:
        return _at_label_size(result.labels, label.shape)
    source = getattr(result.parts, ORACLE_MODES[mode][1])
    prop = _at_label_size(segmenter.labels_from_logits(result.parts.propagated, image_size),
                          label.shape)
    corr = _at_label_size(segmenter.labels_from_logits(source, image_size), label.shape)
    return oracle_labels(prop, corr, label, segmenter.ignore_id)


def evaluate_pda(segmenters: dict[str, VideoSegmenter], dataset: SnippetDataset, *,
                 distances: Sequence[int] = DISTANCES, limit: int | None = None,
                 progress: bool = False, reference: str = "label",
                 on_step: Callable[[Step], None] | None = None) -> dict[str, PdaResult]:
    """Run the PDA protocol for every mode in ``segmenters`` over ``dataset``.

    Args:
        segmenters: mode -> VideoSegmenter (see ``build_segmenters``); their schedules are
            set to the PDA schedule here. An oracle mode's segmenter must run its pipeline
            mode (davss_gt: davss, accel_gt: accel); it is made to keep its frame parts.
        dataset: annotated snippets; ``pda_sample(i, d)`` gives frames ann - d .. ann and the
            annotated label. Each snippet is read once, at the largest d.
        distances: propagation distances d to score, each >= 1.
        limit: score only the first ``limit`` snippets.
        progress: show a tqdm bar over snippets.
        reference: ``label`` scores against the annotated label; ``teacher`` against the
            per-frame segmenter's prediction of the annotated frame (every pixel counts),
            which needs a ``per_frame`` (or ``hold``) segmenter among ``segmenters``.
        on_step: called with a ``Step`` after every frame step.

    ``hold`` (a per-frame segmenter) segments the key frame ann - d only and scores its
    labels on the annotated frame: the floor of propagation.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got "
                         f"{reference!r}")
    teacher = segmenters.get("per_frame", segmenters.get(HOLD))
    if reference == "teacher" and teacher is None:
        raise ValueError("reference teacher needs a per_frame or hold segmenter")
    if not segmenters:
        raise ValueError("evaluate_pda needs at least one segmenter")
    distances = sorted({int(d) for d in distances})
    if not distances or distances[0] < 1:
        raise ValueError(f"distances must be >= 1, got {distances}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    num_classes = {s.num_classes for s in segmenters.values()}
    if len(num_classes) != 1:
        raise ValueError(f"segmenters disagree on the number of classes: {sorted(num_classes)}")
    n_classes = num_classes.pop()
    for mode, seg in segmenters.items():
        if mode in (HOLD, "per_frame") and seg.mode != "per_frame":
            raise ValueError(f"the segmenter for {mode!r} runs mode {seg.mode!r}, "
                             "expected 'per_frame'")
        needs = ORACLE_MODES.get(mode) or PART_MODES.get(mode)
        if needs is not None:
            if seg.mode != needs[0]:
                raise ValueError(f"the segmenter for {mode!r} runs mode {seg.mode!r}, "
                                 f"expected {needs[0]!r}")
            seg.keep_parts = True
        seg.set_schedule(replace(PDA_SCHEDULE))

    results = {mode: PdaResult(mode, {d: ConfusionMatrix(n_classes) for d in distances})
               for mode in segmenters}
    count = len(dataset) if limit is None else min(limit, len(dataset))
    dmax = distances[-1]

    from tqdm import tqdm

    for i in tqdm(range(count), desc="PDA", unit="snippet", disable=not progress):
        sample = dataset.pda_sample(i, dmax)
        frames, gt = sample.frames, sample.label
        if len(frames) != dmax + 1:
            raise ValueError(f"pda_sample({i}, {dmax}) gave {len(frames)} frames, "
                             f"expected {dmax + 1}")
        if reference == "teacher":
            teacher.reset()
            gt = _at_label_size(teacher.step(frames[-1]).labels, gt.shape)
        for mode, seg in segmenters.items():
            res = results[mode]
            t0 = time.perf_counter()
            if mode == HOLD:
                for d in distances:
                    seg.reset()
                    r = seg.step(frames[dmax - d])
                    res.frames += 1
                    res.invalid_outputs += int(not r.valid)
                    res.matrices[d].update(_at_label_size(r.labels, gt.shape), gt)
            elif mode == "per_frame":
                seg.reset()
                r = seg.step(frames[-1])
                res.frames += 1
                if on_step is not None:
                    on_step(Step(mode, i, None, 0, frames[-1], r))
                pred = _at_label_size(r.labels, gt.shape)
                res.invalid_outputs += int(not r.valid)
                for d in distances:
                    res.matrices[d].update(pred, gt)
            else:
                for d in distances:
                    seg.reset()
                    for offset in range(d, -1, -1):  # key frame ann - d, ..., annotated frame
                        image = frames[dmax - offset]
                        r = seg.step(image)
                        if on_step is not None:
                            on_step(Step(mode, i, d, offset, image, r))
                    res.frames += d + 1
                    res.distance_mismatches += int(r.propagation_distance != d)
                    res.invalid_outputs += int(not r.valid)
                    if mode in ORACLE_MODES:
                        pred = oracle_prediction(seg, r, gt, mode, frames[-1].shape[:2])
                    elif mode in PART_MODES and r.parts is not None:
                        part = getattr(r.parts, PART_MODES[mode][1])
                        pred = _at_label_size(
                            seg.labels_from_logits(part, frames[-1].shape[:2]), gt.shape)
                    else:
                        pred = _at_label_size(r.labels, gt.shape)
                    res.matrices[d].update(pred, gt)
            res.seconds += time.perf_counter() - t0
            res.snippets += 1
    return results


def _at_label_size(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The prediction at the label's resolution (nearest neighbour: labels are ids)."""
    if labels.shape == tuple(shape[:2]):
        return labels
    return cv2.resize(labels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def results_as_json(results: dict[str, PdaResult], class_names: Sequence[str]) -> list[dict]:
    """The ``results`` list of ``davss eval``'s JSON: IoU values in percent, 2 decimals.

    Per mode: ``miou`` ("d" -> mIoU), ``mean_miou`` (over the evaluated d),
    ``per_class_iou`` (class name -> IoU at the largest evaluated d),
    ``per_class_iou_by_distance`` ("d" -> class name -> IoU), ``pixel_accuracy`` ("d" -> %),
    and counts. A value that does not exist (no pixel scored, class absent) is None.
    """
    out = []
    for mode, res in results.items():
        miou = {d: _pct(m.miou()) for d, m in sorted(res.matrices.items())}
        by_d = {str(d): {name: _pct(v) for name, v in zip(class_names, m.iou(), strict=True)}
                for d, m in sorted(res.matrices.items())}
        finite = [v for v in miou.values() if v is not None]
        out.append({
            "mode": mode,
            "miou": {str(d): v for d, v in miou.items()},
            "mean_miou": round(float(np.mean(finite)), 2) if finite else None,
            "per_class_iou": by_d[str(max(res.matrices))],
            "per_class_iou_by_distance": by_d,
            "pixel_accuracy": {str(d): _pct(m.pixel_accuracy())
                               for d, m in sorted(res.matrices.items())},
            "snippets": res.snippets,
            "frames": res.frames,
            "seconds": round(res.seconds, 3),
            "pixels_per_distance": res.matrices[max(res.matrices)].total,
            "distance_mismatches": res.distance_mismatches,
            "invalid_outputs": res.invalid_outputs,
        })
    return out


def _pct(value: float) -> float | None:
    return round(100.0 * float(value), 2) if math.isfinite(value) else None
