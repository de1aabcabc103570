"""Fixed against adaptive key-frame scheduling at matched mean cost.

The PDA protocol (``pda.py``) fixes the propagation distance; this evaluation instead streams
whole clips through a VideoSegmenter under a given ``ScheduleConfig``, as a deployed node
would, scores every labelled frame into one confusion matrix per schedule and counts the
key frames. A sweep runs the ``fixed`` policy over key intervals and the ``adaptive`` policy
over distortion thresholds; each schedule's mean cost per frame is

    cost = key_fraction * key_cost + (1 - key_fraction) * nonkey_cost

(costs in any unit: GFLOPs from ``davss_ros.flops.frame_cost_table``, or milliseconds), and
:func:`matched_cost_rows` reads the fixed curve (mIoU against cost, linearly interpolated) at
each adaptive point's cost, so the two policies are compared at the same spend.

An *oracle* schedule (``oracle_thresholds``) bounds what any adaptive trigger could gain on
the clips: it knows the labels, and after each non-key frame whose pixel error exceeds the
per-frame segmenter's on the same frame by more than its threshold, the next frame is key
(otherwise the adaptive policy with threshold 1: only ``max_interval`` and scene cuts). It is
compared with the fixed curve at matched cost like the adaptive schedules. Not a schedule a
deployed node can run: the labels it reads are what the evaluation scores.

Synthetic data labels every frame (``gtFine_sequence``), so every streamed frame is scored;
real Cityscapes labels one frame per snippet (the 20th), and only that one is scored.

Each schedule keeps the base schedule's settings apart from what is swept (the policy, and
``key_interval`` or ``threshold``); in particular the scene-cut rule stays on with the base
settings unless ``scene_cut=False``, which switches it off as the PDA protocol does. A scene
cut adds key frames to both policies alike; they are counted in the key fraction and by
reason in ``key_reasons``.

    davss eval --schedule-sweep --root data/synthetic --checkpoint model.pt \\
        --intervals 1-10 --thresholds 0.05,0.1,0.2,0.3 --clips 20 --frames 30 \\
        --json sweep.json
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from davss_ros.checkpoint import Checkpoint
from davss_ros.classes import IGNORE_ID
from davss_ros.config import ScheduleConfig
from davss_ros.pipeline import FrameResult, VideoSegmenter

from .metrics import ConfusionMatrix
from .pda import PDA_SCHEDULE, _at_label_size

DEFAULT_INTERVALS = tuple(range(1, 11))
DEFAULT_THRESHOLDS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
# The key reason of the frames the oracle schedule makes key.
REASON_ORACLE = "oracle"


@dataclass
class ClipFrames:
    """One clip to stream: its frames in order and each frame's label (None = unlabelled)."""

    name: str
    frames: list[np.ndarray]  # H x W x 3 uint8 RGB
    labels: list[np.ndarray | None]  # H x W trainIds, 255 = ignore; None: not scored

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.labels):
            raise ValueError(f"clip {self.name}: {len(self.frames)} frames but "
                             f"{len(self.labels)} labels")


@dataclass
class ScheduleResult:
    """What streaming the clips under one schedule gave."""

    name: str  # e.g. "fixed k=5", "adaptive t=0.2"
    schedule: ScheduleConfig
    matrix: ConfusionMatrix
    frames: int = 0  # frames streamed
    key_frames: int = 0
    scored_frames: int = 0  # labelled frames scored
    clips: int = 0
    invalid_outputs: int = 0  # non-finite outputs (not scored; the next frame is key)
    key_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # wall time of the steps (loading and scoring excluded)
    # oracle schedules: the pixel-error margin over the per-frame segmenter that keys the
    # next frame (None: not an oracle)
    oracle_threshold: float | None = None

    @property
    def threshold(self) -> float:
        """What the schedule's trigger compares with: the oracle's margin, or the adaptive
        policy's distortion threshold."""
        return self.oracle_threshold if self.oracle_threshold is not None \
            else self.schedule.threshold

    @property
    def key_fraction(self) -> float:
        return self.key_frames / self.frames if self.frames else float("nan")

    def miou(self) -> float:
        """mIoU as a fraction (nan when nothing was scored)."""
        return self.matrix.miou()

    def cost(self, key_cost: float, nonkey_cost: float) -> float:
        return mean_cost(self.key_fraction, key_cost, nonkey_cost)

    def as_dict(self, key_cost: float | None = None,
                nonkey_cost: float | None = None) -> dict:
        """JSON-ready summary; mIoU and pixel accuracy in percent (None when undefined), and
        the mean cost per frame when both costs are given."""
        out = {
            "name": self.name,
            "policy": self.schedule.policy,
            "key_interval": self.schedule.key_interval if self.schedule.policy == "fixed"
            else None,
            "threshold": self.schedule.threshold if self.schedule.policy == "adaptive"
            else None,
            "max_interval": self.schedule.max_interval if self.schedule.policy == "adaptive"
            else None,
            "metric": self.schedule.metric if self.schedule.policy == "adaptive" else None,
            "oracle_threshold": self.oracle_threshold,
            "miou": _pct(self.miou()),
            "pixel_accuracy": _pct(self.matrix.pixel_accuracy()),
            "key_fraction": _round(self.key_fraction, 4),
            "frames": self.frames,
            "key_frames": self.key_frames,
            "scored_frames": self.scored_frames,
            "clips": self.clips,
            "invalid_outputs": self.invalid_outputs,
            "key_reasons": dict(sorted(self.key_reasons.items())),
            "seconds": round(self.seconds, 3),
        }
        if key_cost is not None and nonkey_cost is not None:
            out["cost"] = _round(self.cost(key_cost, nonkey_cost), 4)
        return out


@dataclass
class SweepResult:
    """The fixed-interval and adaptive-threshold results of one sweep, in sweep order."""

    fixed: list[ScheduleResult]
    adaptive: list[ScheduleResult]
    base: ScheduleConfig
    scene_cut: bool
    oracle: list[ScheduleResult] = field(default_factory=list)


# ---------------------------------------------------------------------------- data


def iter_clips(dataset, *, clips: int | None = None,
               frames: int | None = None) -> Iterator[ClipFrames]:
    """Clips of a Cityscapes-layout data set (``CityscapesSequences``: synthetic or
    Cityscapes), read one at a time as the returned iterator advances (arguments are
    checked at once).

    Args:
        dataset: the split's ``CityscapesSequences``.
        clips: only the first ``clips`` snippets; None = all.
        frames: only the first ``frames`` frames of each snippet; None = the whole snippet.

    With per-frame labels (``gtFine_sequence``, synthetic data) every frame is labelled;
    otherwise only the annotated frame is, so ``frames`` must reach it.
    """
    if clips is not None and clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    length = dataset.snippet_length
    if frames is not None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        length = min(frames, length)
    dense = bool(getattr(dataset, "has_dense_labels", False))
    if not dense and length <= dataset.annotated_index:
        raise ValueError(f"this data set labels frame {dataset.annotated_index} of each "
                         f"snippet only: stream at least {dataset.annotated_index + 1} frames "
                         f"per clip, not {length}")
    count = len(dataset) if clips is None else min(clips, len(dataset))
    return _read_clips(dataset, count, length, dense)


def _read_clips(dataset, count: int, length: int, dense: bool) -> Iterator[ClipFrames]:
    # A generator apart from iter_clips, so that iter_clips checks its arguments when called.
    for i in range(count):
        images = [dataset.load_frame(i, k) for k in range(length)]
        if dense:
            labels = [dataset.dense_label(i, k) for k in range(length)]
        else:
            labels: list[np.ndarray | None] = [None] * length
            labels[dataset.annotated_index] = dataset.load_label(i)
        yield ClipFrames(dataset.snippets[i].name, images, labels)


def build_segmenter(checkpoint: Checkpoint, *, mode: str = "davss",
                    input_size: tuple[int, int] | None = None, key_segmenter=None,
                    device: str | torch.device = "auto") -> VideoSegmenter:
    """A VideoSegmenter of ``mode`` (davss by default) with the checkpoint's weights, for
    :func:`evaluate_schedules` (which sets its schedule)."""
    return VideoSegmenter.from_checkpoint(checkpoint, mode=mode, input_size=input_size,
                                          key_segmenter=key_segmenter, device=device)


# ---------------------------------------------------------------------------- running


def evaluate_schedules(segmenter: VideoSegmenter, clips: Iterable[ClipFrames],
                       schedules: dict[str, ScheduleConfig], *,
                       oracles: dict[str, float] | None = None,
                       reference: VideoSegmenter | None = None,
                       progress: bool = False) -> dict[str, ScheduleResult]:
    """Stream every clip under every schedule and score the labelled frames.

    Clip-major: each clip is read once and streamed once per schedule, with the segmenter
    reset before each pass (the clip's first frame is a key frame). The segmenter's own
    schedule is restored at the end.

    Args:
        segmenter: any mode; for the DAVSS comparison a davss-mode one
            (:func:`build_segmenter`).
        clips: the clips (:func:`iter_clips`), iterated once.
        schedules: name -> schedule to run.
        oracles: name (of ``schedules``) -> margin in [-1, 1]: after a non-key frame whose
            pixel error exceeds ``reference``'s on that frame by more than the margin, the
            next frame is key (reason ``oracle``). Only labelled frames trigger.
        reference: a per-frame segmenter, run once over each clip, for ``oracles``.
        progress: show a tqdm bar over clips.

    Returns name -> ScheduleResult, in the order of ``schedules``.
    """
    if not schedules:
        raise ValueError("evaluate_schedules needs at least one schedule")
    oracles = dict(oracles or {})
    unknown = [n for n in oracles if n not in schedules]
    if unknown:
        raise ValueError(f"oracles name schedules that are not run: {', '.join(unknown)}")
    for name, margin in oracles.items():
        if not -1.0 <= margin <= 1.0:
            raise ValueError(f"oracle {name}: margin must be in [-1, 1], got {margin}")
    if oracles and reference is None:
        raise ValueError("oracle schedules need a reference (per-frame) segmenter")
    results = {name: ScheduleResult(name, replace(s), ConfusionMatrix(segmenter.num_classes),
                                    oracle_threshold=oracles.get(name))
               for name, s in schedules.items()}
    saved = segmenter.config.schedule

    from tqdm import tqdm

    try:
        for clip in tqdm(clips, desc="schedules", unit="clip", disable=not progress):
            ref_errors = _reference_errors(reference, clip) if oracles else None
            for name, schedule in schedules.items():
                res = results[name]
                margin = oracles.get(name)
                segmenter.set_schedule(schedule)
                segmenter.reset()
                outputs = []
                t0 = time.perf_counter()
                for i, image in enumerate(clip.frames):
                    r = segmenter.step(image)
                    outputs.append((r.labels, r.valid))
                    res.key_frames += int(r.is_key)
                    if r.is_key:
                        res.key_reasons[r.key_reason] += 1
                    elif margin is not None and ref_errors[i] is not None:
                        if _pixel_error(r, clip.labels[i]) - ref_errors[i] > margin:
                            segmenter.scheduler.request_key(REASON_ORACLE)
                res.seconds += time.perf_counter() - t0
                res.frames += len(clip.frames)
                res.clips += 1
                for (labels, valid), label in zip(outputs, clip.labels, strict=True):
                    if label is None:
                        continue
                    if not valid:
                        # all-ignore labels cannot be scored against the classes
                        res.invalid_outputs += 1
                        continue
                    res.matrix.update(_at_label_size(labels, label.shape), label)
                    res.scored_frames += 1
    finally:
        segmenter.set_schedule(saved)
        segmenter.reset()
    return results


def _pixel_error(result: FrameResult, label: np.ndarray) -> float | None:
    """Share of the labelled pixels that a frame's output gets wrong (all of them when the
    output was not finite; None: no pixel is labelled)."""
    if not result.valid:
        return 1.0
    pred = _at_label_size(result.labels, label.shape)
    scored = label != IGNORE_ID
    count = int(scored.sum())
    return None if count == 0 else float((pred[scored] != label[scored]).sum()) / count


def _reference_errors(reference: VideoSegmenter, clip: ClipFrames) -> list[float | None]:
    """The reference segmenter's pixel error on each labelled frame of the clip."""
    reference.reset()
    errors: list[float | None] = []
    for image, label in zip(clip.frames, clip.labels, strict=True):
        r = reference.step(image)
        errors.append(None if label is None else _pixel_error(r, label))
    return errors


def sweep_schedules(segmenter: VideoSegmenter, clips: Iterable[ClipFrames], *,
                    intervals: Sequence[int] = DEFAULT_INTERVALS,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    base: ScheduleConfig | None = None, scene_cut: bool = True,
                    oracle_thresholds: Sequence[float] = (),
                    reference: VideoSegmenter | None = None,
                    progress: bool = False) -> SweepResult:
    """Fixed intervals against adaptive thresholds over the same clips.

    Args:
        segmenter: see :func:`evaluate_schedules`.
        clips: see :func:`evaluate_schedules`.
        intervals: ``key_interval`` of each fixed schedule (each >= 1).
        thresholds: ``threshold`` of each adaptive schedule (each in [0, 1]; a frame is key
            when the distortion metric is strictly above it, so 0 makes nearly every frame
            key and 1 leaves only ``max_interval``).
        base: the settings not swept (``max_interval``, ``metric``, scene cut); None = the
            segmenter's current schedule.
        scene_cut: False switches the scene-cut rule off in every schedule.
        oracle_thresholds: margins of oracle schedules (see :func:`evaluate_schedules`),
            each the adaptive policy at threshold 1 (``max_interval`` and scene cuts only)
            plus the oracle trigger; they need ``reference``, a per-frame segmenter.
    """
    base = replace(base if base is not None else segmenter.config.schedule)
    if not scene_cut:
        base = replace(base, scene_cut_factor=PDA_SCHEDULE.scene_cut_factor,
                       scene_cut_min_error=PDA_SCHEDULE.scene_cut_min_error)
    intervals = list(dict.fromkeys(int(k) for k in intervals))
    thresholds = list(dict.fromkeys(float(t) for t in thresholds))
    if not intervals and not thresholds:
        raise ValueError("sweep_schedules needs at least one interval or threshold")
    fixed = {f"fixed k={k}": replace(base, policy="fixed", key_interval=k) for k in intervals}
    adaptive = {f"adaptive t={t:g}": replace(base, policy="adaptive", threshold=t)
                for t in thresholds}
    margins = {f"oracle t={t:g}": float(t) for t in dict.fromkeys(oracle_thresholds)}
    oracle = {n: replace(base, policy="adaptive", threshold=1.0) for n in margins}
    results = evaluate_schedules(segmenter, clips, {**fixed, **adaptive, **oracle},
                                 oracles=margins, reference=reference, progress=progress)
    return SweepResult(fixed=[results[n] for n in fixed],
                       adaptive=[results[n] for n in adaptive], base=base, scene_cut=scene_cut,
                       oracle=[results[n] for n in oracle])


# ---------------------------------------------------------------------------- matched cost


def mean_cost(key_fraction: float, key_cost: float, nonkey_cost: float) -> float:
    """Mean cost per frame of a stream with ``key_fraction`` key frames."""
    return key_fraction * key_cost + (1.0 - key_fraction) * nonkey_cost


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """The piecewise-linear curve through ``points`` (x, y) read at ``x``.

    Points may come in any order; several at one x are averaged into one. None when ``x``
    lies outside the points' x range (no extrapolation) or a y needed is not finite.
    """
    grouped: dict[float, list[float]] = {}
    for px, py in points:
        grouped.setdefault(float(px), []).append(float(py))
    if not grouped or not math.isfinite(x):
        return None
    xs = sorted(grouped)
    ys = [sum(grouped[v]) / len(grouped[v]) for v in xs]
    if x < xs[0] or x > xs[-1]:
        return None
    for i, px in enumerate(xs):
        if x == px:
            return ys[i] if math.isfinite(ys[i]) else None
        if x < px:
            x0, y0, y1 = xs[i - 1], ys[i - 1], ys[i]
            if not (math.isfinite(y0) and math.isfinite(y1)):
                return None
            return y0 + (y1 - y0) * (x - x0) / (px - x0)
    return None  # not reached: x <= xs[-1] ends the loop


def matched_cost_rows(fixed: Sequence[ScheduleResult], adaptive: Sequence[ScheduleResult], *,
                      key_cost: float, nonkey_cost: float) -> list[dict]:
    """Each adaptive schedule against the fixed curve at the same mean cost per frame.

    Returns one row per adaptive result: ``threshold``, ``key_fraction``, ``cost`` (in the
    unit of the costs given), ``adaptive_miou`` and ``fixed_miou`` (percent; the fixed one
    is the fixed results' mIoU-against-cost curve linearly interpolated at ``cost``) and
    ``difference`` = adaptive - fixed (percentage points). ``fixed_miou`` and
    ``difference`` are None where the cost lies outside the fixed curve's range.
    """
    if key_cost < 0 or nonkey_cost < 0:
        raise ValueError(f"costs must be >= 0, got key {key_cost} and non-key {nonkey_cost}")
    curve = [(r.cost(key_cost, nonkey_cost), 100.0 * r.miou()) for r in fixed]
    rows = []
    for r in adaptive:
        cost = r.cost(key_cost, nonkey_cost)
        ada = _pct(r.miou())
        fix = interpolate(curve, cost)
        fix = None if fix is None else round(fix, 2)
        rows.append({
            "name": r.name,
            "threshold": r.threshold,
            "key_fraction": _round(r.key_fraction, 4),
            "cost": _round(cost, 4),
            "adaptive_miou": ada,
            "fixed_miou": fix,
            "difference": None if ada is None or fix is None else round(ada - fix, 2),
        })
    return rows


def sweep_as_json(sweep: SweepResult, *, key_cost: float, nonkey_cost: float,
                  cost_units: str = "GFLOPs") -> dict:
    """``fixed``, ``adaptive`` (``ScheduleResult.as_dict`` with costs), ``matched``
    (:func:`matched_cost_rows`), the costs and the base schedule; mIoU in percent."""
    out = {
        "units": "percent",
        "cost": {"units": cost_units, "key": key_cost, "non_key": nonkey_cost},
        "scene_cut": sweep.scene_cut,
        "base_schedule": {k: getattr(sweep.base, k) for k in sweep.base.__dataclass_fields__},
        "fixed": [r.as_dict(key_cost, nonkey_cost) for r in sweep.fixed],
        "adaptive": [r.as_dict(key_cost, nonkey_cost) for r in sweep.adaptive],
        "matched": matched_cost_rows(sweep.fixed, sweep.adaptive, key_cost=key_cost,
                                     nonkey_cost=nonkey_cost),
    }
    if sweep.oracle:
        out["oracle"] = [r.as_dict(key_cost, nonkey_cost) for r in sweep.oracle]
        out["oracle_matched"] = matched_cost_rows(sweep.fixed, sweep.oracle,
                                                  key_cost=key_cost, nonkey_cost=nonkey_cost)
    return out


def format_sweep(report: dict) -> str:
    """The schedules (key fraction, cost, mIoU) and the matched-cost comparison as text."""
    units = report["cost"]["units"]

    def cell(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    head = f"{'schedule':<18}{'key frac':>10}{'cost':>12}{'mIoU (%)':>10}"
    lines = [f"cost per frame in {units}: key {report['cost']['key']:g}, "
             f"non-key {report['cost']['non_key']:g}", head, "-" * len(head)]
    for row in report["fixed"] + report["adaptive"] + report.get("oracle", []):
        lines.append(f"{row['name']:<18}{cell(row['key_fraction'], '.3f'):>10}"
                     f"{cell(row.get('cost'), '.3f'):>12}{cell(row['miou']):>10}")
    sections = [("adaptive", "matched", "adaptive vs fixed")]
    if report.get("oracle_matched"):
        sections.append(("oracle", "oracle_matched",
                         "oracle (knows the labels: keys the frame after one that is worse "
                         "than per-frame by more than the threshold) vs fixed"))
    for column, key, title in sections:
        head = (f"{'threshold':<11}{'key frac':>10}{'cost':>12}{column:>10}{'fixed':>10}"
                f"{'diff':>8}")
        lines += ["", f"{title} at the same mean cost (mIoU %, fixed interpolated)",
                  head, "-" * len(head)]
        for row in report[key]:
            lines.append(f"{row['threshold']:<11g}{cell(row['key_fraction'], '.3f'):>10}"
                         f"{cell(row['cost'], '.3f'):>12}{cell(row['adaptive_miou']):>10}"
                         f"{cell(row['fixed_miou']):>10}{cell(row['difference'], '+.2f'):>8}")
    return "\n".join(lines)


def _pct(value: float) -> float | None:
    return round(100.0 * float(value), 2) if math.isfinite(value) else None


def _round(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None
