"""How well the confidence image is calibrated: its predicted probability that a label
equals the key segmenter's, against how often it does.

For every snippet and propagation distance d, the segmenter propagates from frame
``ann - d`` to ``ann`` (the PDA protocol) and its labels on ``ann`` are compared with the
key segmenter's own labels on that frame (``per_frame``): no ground truth is needed, so
this runs on any recording. Pixels are binned by their confidence; each bin's observed
agreement is what its confidence should be. ECE (expected calibration error) is the
pixel-weighted mean of |confidence - agreement| over the bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from davss_ros.pipeline import VideoSegmenter

from .pda import DISTANCES, PDA_SCHEDULE, SnippetDataset


@dataclass
class Reliability:
    """Counts per confidence bin: pixels, summed confidence, agreeing pixels."""

    bins: int = 10
    pixels: np.ndarray = field(default=None)  # type: ignore[assignment]
    confidence: np.ndarray = field(default=None)  # type: ignore[assignment]
    agree: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
        for name in ("pixels", "confidence", "agree"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.bins, np.float64))

    def update(self, confidence: np.ndarray, agree: np.ndarray) -> None:
        """``confidence`` uint8 (0..255) and ``agree`` bool, one shape."""
        if confidence.shape != agree.shape:
            raise ValueError(f"confidence {confidence.shape} and agreement {agree.shape} "
                             "differ in shape")
        p = confidence.astype(np.float64).ravel() / 255.0
        idx = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.pixels += np.bincount(idx, minlength=self.bins)
        self.confidence += np.bincount(idx, weights=p, minlength=self.bins)
        self.agree += np.bincount(idx, weights=agree.ravel().astype(np.float64),
                                  minlength=self.bins)

    def table(self) -> list[dict]:
        """One row per non-empty bin: range, share of pixels, mean confidence, agreement."""
        total = self.pixels.sum()
        rows = []
        for b in range(self.bins):
            n = self.pixels[b]
            if n:
                rows.append({"bin": [b / self.bins, (b + 1) / self.bins],
                             "share": n / total, "confidence": self.confidence[b] / n,
                             "agreement": self.agree[b] / n})
        return rows

    def ece(self) -> float:
        total = self.pixels.sum()
        return float(sum(r["share"] * abs(r["confidence"] - r["agreement"])
                         for r in self.table())) if total else float("nan")

    def agreement(self) -> float:
        total = self.pixels.sum()
        return float(self.agree.sum() / total) if total else float("nan")

    @classmethod
    def merged(cls, results: Sequence[Reliability]) -> Reliability:
        """The counts of several results (e.g. every d) added up."""
        results = list(results)
        total = cls(results[0].bins)
        for r in results:
            total.pixels += r.pixels
            total.confidence += r.confidence
            total.agree += r.agree
        return total

    def as_dict(self) -> dict:
        return {"ece": self.ece(), "agreement": self.agreement(),
                "mean_confidence": float(self.confidence.sum() / max(self.pixels.sum(), 1)),
                "pixels": int(self.pixels.sum()), "table": self.table()}


def evaluate_reliability(segmenter: VideoSegmenter, reference: VideoSegmenter,
                         dataset: SnippetDataset, *,
                         distances: Sequence[int] = DISTANCES, bins: int = 10,
                         limit: int | None = None) -> dict[int, Reliability]:
    """Reliability of ``segmenter``'s confidence per distance d, against ``reference`` (a
    ``per_frame`` segmenter with the same key segmenter) on each snippet's annotated
    frame. ``segmenter``'s schedule is set to the PDA one here."""
    if reference.mode != "per_frame":
        raise ValueError(f"the reference must run per_frame, got {reference.mode!r}")
    segmenter.set_schedule(replace(PDA_SCHEDULE))
    out = {int(d): Reliability(bins) for d in distances}
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(count):
        for d in sorted(out):
            sample = dataset.pda_sample(i, d)
            segmenter.reset("pda")
            for rgb in sample.frames:
                result = segmenter.step(rgb)
            reference.reset("pda")
            truth = reference.step(sample.frames[-1]).labels
            out[d].update(result.confidence, result.labels == truth)
    return out


def format_reliability(results: dict[int, Reliability]) -> str:
    """The table over all distances, then ECE per distance (text for the terminal)."""
    total = Reliability.merged(results.values())
    lines = [f"{'confidence':>12} {'pixels':>8} {'mean conf':>10} {'agreement':>10}"]
    for row in total.table():
        lo, hi = row["bin"]
        lines.append(f"{lo:5.1f}-{hi:<5.1f} {100 * row['share']:7.2f}% "
                     f"{100 * row['confidence']:9.2f}% {100 * row['agreement']:9.2f}%")
    lines.append(f"ECE {100 * total.ece():.2f} points over all d; agreement "
                 f"{100 * total.agreement():.2f}%")
    lines.append("ECE by d: " + ", ".join(f"d={d} {100 * r.ece():.2f}"
                                           for d, r in sorted(results.items())))
    return "\n".join(lines)
