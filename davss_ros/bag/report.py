"""Scoring and reporting of a replay: mIoU per propagation distance, timing, pictures.

Nothing here touches ROS: the scorer takes label images and frame outcomes as they come,
the figures and the contact sheet are drawn from the recorded bags.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from davss_ros.evaluate.metrics import ConfusionMatrix

from .io import IMAGE_TYPE, BagReader, image_array, image_rgb, typestore


class Scorer:
    """Confusion matrices overall and per propagation distance, fed as outputs arrive.

    A frame is scored once its prediction, its ground truth and its propagation distance are
    all known, whatever order they come in; then they are forgotten. Only frames whose
    stamps are in ``gt_stamps`` are kept waiting, so memory stays bounded.

    ``every_frame`` also scores each dropped frame with the newest labels scored before it
    (what a consumer holding the latest labels has at that moment): the accuracy of the
    stream as a whole, where a node that drops frames is charged for the stale labels.
    """

    def __init__(self, num_classes: int, gt_stamps: set[int], ignore_id: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_id = ignore_id
        self.gt_stamps = set(gt_stamps)
        self.overall = ConfusionMatrix(num_classes, ignore_id)
        self.every_frame = ConfusionMatrix(num_classes, ignore_id)
        self.frames_held = 0  # dropped frames scored with the newest labels before them
        self._newest: tuple[int, np.ndarray] | None = None  # (stamp, labels) scored last
        self.by_distance: dict[int, ConfusionMatrix] = {}
        self.frames_by_distance: dict[int, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._gt: dict[int, np.ndarray] = {}
        self._pred: dict[int, np.ndarray] = {}
        self._dist: dict[int, int] = {}

    def add_gt(self, stamp: int, labels: np.ndarray) -> None:
        with self._lock:
            self._gt[stamp] = labels
            self._try(stamp)

    def add_prediction(self, stamp: int, labels: np.ndarray) -> None:
        if stamp not in self.gt_stamps:
            return
        with self._lock:
            self._pred[stamp] = labels
            self._try(stamp)

    def add_distance(self, stamp: int, distance: int) -> None:
        if stamp not in self.gt_stamps:
            return
        with self._lock:
            self._dist[stamp] = distance
            # Frames are processed in stamp order: ground truth older than this frame with
            # no outcome of its own belongs to a dropped frame.
            for old in sorted(s for s in self._gt if s < stamp and s not in self._dist):
                self._score_held(old, self._gt.pop(old))
            self._try(stamp)

    def _score_held(self, stamp: int, gt: np.ndarray) -> None:
        """A dropped frame, scored with the newest labels before it (none yet: skipped)."""
        if self._newest is None or self._newest[0] > stamp:
            return
        m = self._matrix(self._newest[1], gt, stamp)
        if m is not None:
            self.every_frame.merge(m)
            self.frames_held += 1

    def _matrix(self, pred: np.ndarray, gt: np.ndarray, stamp: int) -> ConfusionMatrix | None:
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
        try:
            m = ConfusionMatrix(self.num_classes, self.ignore_id)
            m.update(pred, gt)
        except ValueError as exc:
            self.errors.append(f"frame at {stamp} ns not scored: {exc}")
            return None
        return m

    def _try(self, stamp: int) -> None:
        if stamp in self._gt and stamp in self._pred and stamp in self._dist:
            gt, pred, d = self._gt.pop(stamp), self._pred.pop(stamp), self._dist.pop(stamp)
            m = self._matrix(pred, gt, stamp)
            if m is None:
                return
            if self._newest is None or self._newest[0] < stamp:
                self._newest = (stamp, pred)
            self.overall.merge(m)
            self.every_frame.merge(m)
            self.by_distance.setdefault(d, ConfusionMatrix(self.num_classes, self.ignore_id))
            self.by_distance[d].merge(m)
            self.frames_by_distance[d] = self.frames_by_distance.get(d, 0) + 1

    @property
    def scored(self) -> int:
        return sum(self.frames_by_distance.values())

    def as_dict(self, class_names: Sequence[str]) -> dict:
        """mIoU (percent) overall, per distance ("d" keys) and per class; None when no
        pixel was scored."""
        if not self.scored:
            return {"miou": None, "miou_by_distance": {}, "per_class_iou": {},
                    "pixel_accuracy": None, "frames_scored": 0, "frames_by_distance": {},
                    "miou_every_frame": None, "frames_held": 0}
        names = list(class_names)
        return {
            "miou": pct(self.overall.miou()),
            "miou_by_distance": {str(d): pct(m.miou())
                                 for d, m in sorted(self.by_distance.items())},
            "per_class_iou": {n: pct(v) for n, v in zip(names, self.overall.iou(),
                                                        strict=True)},
            "pixel_accuracy": pct(self.overall.pixel_accuracy()),
            "frames_scored": self.scored,
            "frames_by_distance": {str(d): n for d, n in sorted(self.frames_by_distance.items())},
            "miou_every_frame": pct(self.every_frame.miou()),
            "frames_held": self.frames_held,
        }


def pct(value: float) -> float | None:
    """A fraction as a percentage rounded to 4 decimals; None for nan."""
    return None if not np.isfinite(value) else round(float(value) * 100.0, 4)


def latency_summary(values_ms: Sequence[float]) -> dict:
    if not values_ms:
        return {"median": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values_ms, np.float64)
    return {"median": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3), "mean": round(float(a.mean()), 3)}


# -- files ----------------------------------------------------------------------------------
def write_json_atomic(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _save_figure(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}.png")
    FigureCanvasAgg(fig).print_png(str(tmp))
    os.replace(tmp, path)
    return path


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}.png")
    if not cv2.imwrite(str(tmp), rgb[..., ::-1]):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)
    return path


def plot_miou_by_distance(report: dict, path: Path) -> Path | None:
    by_d = {int(d): v for d, v in (report.get("miou_by_distance") or {}).items()
            if v is not None}
    if not by_d:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ds = sorted(by_d)
    counts = report.get("frames_by_distance", {})
    ax.bar(ds, [by_d[d] for d in ds], color="tab:red", alpha=0.8)
    for d in ds:
        ax.annotate(f"{counts.get(str(d), '')}", (d, by_d[d]), ha="center", va="bottom",
                    fontsize=7, color="0.3")
    if report.get("miou") is not None:
        ax.axhline(report["miou"], color="0.3", linestyle="--",
                   label=f"all frames {report['miou']:.1f}")
        ax.legend(loc="lower left")
    ax.set_xticks(ds)
    ax.set_xlabel("propagation distance d (frames since the key frame; numbers: frames)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"mIoU by propagation distance ({report.get('pipeline_mode', '')}, "
                 f"{report.get('mode', '')})")
    ax.grid(True, axis="y", alpha=0.3)
    return _save_figure(fig, path)


def plot_latency(latencies_ms: Sequence[float], report: dict, path: Path) -> Path | None:
    if not latencies_ms:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(latencies_ms, bins=min(40, max(5, len(latencies_ms) // 2)), color="tab:blue",
            alpha=0.8)
    lat = report["latency_ms"]
    for key, style in (("median", "-"), ("p95", "--")):
        if lat.get(key) is not None:
            ax.axvline(lat[key], color="0.2", linestyle=style, label=f"{key} {lat[key]:.1f} ms")
    ax.set_xlabel("latency publish -> labels (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"Latency, {report.get('mode', '')}: {report['received']} of "
                 f"{report['sent']} frames")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return _save_figure(fig, path)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)  # ignore (255) and unknown ids black
    lut[: len(palette)] = palette
    return lut[labels]


def distortion_rgb(dist: np.ndarray) -> np.ndarray:
    gray = (np.clip(dist, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO)[..., ::-1]


def contact_sheet(input_bag: Path, image_topic: str, gt_topic: str | None, output_bag: Path,
                  labels_topic: str, distortion_topic: str | None, stamps: Sequence[int],
                  palette: np.ndarray, path: Path, *, max_width: int = 384) -> Path | None:
    """Rows of input | ground truth (if any) | colour labels | distortion for ``stamps``."""
    want = set(stamps)
    if not want:
        return None
    found: dict[str, dict[int, np.ndarray]] = {"in": {}, "gt": {}, "lab": {}, "dist": {}}
    with BagReader(input_bag) as r:
        topics = [image_topic] + ([gt_topic] if gt_topic else [])
        for topic, _, raw in r.messages(topics):
            m = typestore().deserialize_cdr(raw, IMAGE_TYPE)
            s = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
            if s in want:
                if topic == image_topic:
                    found["in"][s] = image_rgb(m, where=topic)
                else:
                    found["gt"][s] = image_array(m, where=topic)
    with BagReader(output_bag) as r:
        topics = [labels_topic] + ([distortion_topic] if distortion_topic else [])
        for topic, t, raw in r.messages(topics):
            if t in want:
                m = typestore().deserialize_cdr(raw, IMAGE_TYPE)
                key = "lab" if topic == labels_topic else "dist"
                found[key][t] = image_array(m, where=topic)
    rows = []
    titles = ["input"] + (["ground truth"] if gt_topic and found["gt"] else []) + \
        ["labels"] + (["distortion"] if distortion_topic else [])
    for s in stamps:
        if s not in found["in"] or s not in found["lab"]:
            continue
        rgb = found["in"][s]
        h, w = rgb.shape[:2]
        scale = min(1.0, max_width / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        tiles = [rgb]
        if gt_topic and found["gt"]:
            gt = found["gt"].get(s)
            tiles.append(colorize(gt, palette) if gt is not None else np.zeros_like(rgb))
        tiles.append(colorize(found["lab"][s], palette))
        if distortion_topic:
            d = found["dist"].get(s)
            tiles.append(distortion_rgb(d) if d is not None else np.zeros_like(rgb))
        tiles = [cv2.resize(t, size, interpolation=cv2.INTER_NEAREST if t is not rgb
                            else cv2.INTER_AREA) if t.shape[:2] != (size[1], size[0]) else t
                 for t in tiles]
        sep = np.full((size[1], 4, 3), 255, np.uint8)
        row = [tiles[0]]
        for t in tiles[1:]:
            row += [sep, t]
        rows.append(np.concatenate(row, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if not rows:
        return None
    sheet = np.concatenate(rows[:-1], axis=0)
    tile_w = (sheet.shape[1] - 4 * (len(titles) - 1)) // len(titles)
    header = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    for i, title in enumerate(titles):
        cv2.putText(header, title, (i * (tile_w + 4) + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (40, 40, 40), 1, cv2.LINE_AA)
    return _save_png(path, np.concatenate([header, sheet], axis=0))


def label_agreement(output_bag: Path, reference_bag: Path) -> dict:
    """How far the label images of two replays' output bags agree: over every label topic
    (``*/labels``) and stamp the two have in common, the share of equal pixels (%)."""
    def labels(path: Path) -> dict[tuple[str, int], np.ndarray]:
        out = {}
        with BagReader(path) as reader:
            topics = [t for t, m in reader.topics.items()
                      if m == IMAGE_TYPE and t.endswith("/labels")]
            for topic, t, raw in reader.messages(topics):
                msg = reader.deserialize(raw, IMAGE_TYPE, where=topic)
                out[(topic, t)] = image_array(msg, where=topic).copy()
        return out

    ours, ref = labels(Path(output_bag)), labels(Path(reference_bag))
    common = sorted(set(ours) & set(ref))
    equal = total = 0
    for key in common:
        a, b = ours[key], ref[key]
        if a.shape != b.shape:
            total += max(a.size, b.size)
            continue
        equal += int(np.count_nonzero(a == b))
        total += a.size
    return {"reference": str(reference_bag), "frames": len(common),
            "frames_only_here": len(set(ours) - set(ref)),
            "frames_only_in_reference": len(set(ref) - set(ours)),
            "pixels_equal_pct": pct(equal / total) if total else None}


def format_table(report: dict) -> str:
    """The short summary printed after a replay."""
    lat = report["latency_ms"]

    def num(v, fmt="{:.1f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = [
        f"replay of {report['bag']} ({report['topic']}), {report['mode'].replace('_', '-')}"
        + (f" at {report['rate']:g}x" if report.get("rate") else ""),
        f"  model      {report.get('model', 'n/a')}, mode {report.get('pipeline_mode', 'n/a')}",
        f"  frames     sent {report['sent']}  processed {report['processed']}  "
        f"received {report['received']}  dropped {report['dropped']} "
        f"(in the node {report['dropped_by_node']}, before it {report['lost_before_node']})",
        f"  latency    median {num(lat['median'])} ms  p95 {num(lat['p95'])} ms  "
        f"max {num(lat['max'])} ms  (publish -> labels)",
        f"  throughput {num(report['fps'])} fps   key frames {num(report['key_ratio'], '{:.2f}')}"
        f"   per frame: key {num(report['frame_ms']['key_median'])} ms, "
        f"non-key {num(report['frame_ms']['nonkey_median'])} ms (node, median)",
    ]
    if report.get("miou") is not None:
        by_d = "  ".join(f"d{d}: {v:.1f}" for d, v in report["miou_by_distance"].items()
                         if v is not None)
        lines.append(f"  mIoU       {report['miou']:.2f} % over {report['frames_scored']} "
                     f"labelled frames")
        if report.get("frames_held"):
            lines.append(f"  every frame {num(report['miou_every_frame'], '{:.2f}')} % with "
                         f"{report['frames_held']} dropped frame(s) scored with the newest "
                         f"labels before them")
        lines.append(f"  by d       {by_d}")
    elif report.get("has_ground_truth"):
        lines.append("  mIoU       n/a (no labelled frame was processed)")
    else:
        lines.append("  mIoU       n/a (the bag has no ground-truth labels)")
    ref = report.get("reference")
    if ref:
        lines.append(f"  reference  labels {num(ref['pixels_equal_pct'], '{:.2f}')} % equal to "
                     f"{ref['reference']}'s over {ref['frames']} frames")
    return "\n".join(lines)
