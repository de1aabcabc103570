"""Segmentation metrics from one confusion matrix (the paper's protocol).

mIoU is computed from a single confusion matrix accumulated over the whole evaluation set,
not averaged over images: IoU_c = TP_c / (TP_c + FP_c + FN_c). Pixels whose ground truth is
``ignore_index`` do not count. A class absent from both the predictions and the ground truth
has no IoU (nan) and is left out of the mean (``np.nanmean``).
"""

from __future__ import annotations

import warnings

import numpy as np

from davss_ros.classes import IGNORE_ID


class ConfusionMatrix:
    """Counts of (ground truth, prediction) pixel pairs: ``matrix[gt, pred]``.

    Args:
        num_classes: number of valid class ids (0 .. num_classes - 1).
        ignore_index: ground-truth value that marks pixels not scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_ID) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one prediction / ground-truth pair (any equal shapes, integer class ids).

        Ground-truth pixels equal to ``ignore_index`` are skipped. A prediction outside
        0 .. num_classes - 1 on a scored pixel is an error (a model with another label set).
        A ground-truth id outside that range (other than ``ignore_index``) is an error too.
        """
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction and ground truth must have the same shape, got "
                             f"{pred.shape} and {gt.shape}")
        if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(gt.dtype, np.integer)):
            raise ValueError(f"expected integer class ids, got {pred.dtype} and {gt.dtype}")
        keep = gt != self.ignore_index
        p = pred[keep].astype(np.int64, copy=False)
        g = gt[keep].astype(np.int64, copy=False)
        n = self.num_classes
        if g.size:
            if g.min() < 0 or g.max() >= n:
                bad = g[(g < 0) | (g >= n)][0]
                raise ValueError(f"ground truth holds class id {bad}, outside 0..{n - 1} "
                                 f"(and not the ignore index {self.ignore_index})")
            if p.min() < 0 or p.max() >= n:
                bad = p[(p < 0) | (p >= n)][0]
                raise ValueError(f"prediction holds class id {bad} on a scored pixel, "
                                 f"outside 0..{n - 1}")
        self.matrix += np.bincount(g * n + p, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another worker); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class confusion matrix into "
                             f"a {self.num_classes}-class one")
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[:] = 0

    @property
    def total(self) -> int:
        """Number of scored pixels."""
        return int(self.matrix.sum())

    def iou(self) -> np.ndarray:
        """IoU per class (float64, nan for classes absent from predictions and ground truth)."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        out = np.full(self.num_classes, np.nan)
        present = union > 0
        out[present] = tp[present] / union[present]
        return out

    def miou(self) -> float:
        """Mean IoU over the classes that have one (nan when nothing was scored)."""
        iou = self.iou()
        if np.isnan(iou).all():
            return float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(iou))

    def pixel_accuracy(self) -> float:
        """Fraction of scored pixels predicted right (nan when nothing was scored)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def as_dict(self, class_names: list[str] | None = None) -> dict:
        """Plain-data summary: miou, pixel_accuracy, per-class IoU (None for nan), pixels."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        return {
            "miou": _finite_or_none(self.miou()),
            "pixel_accuracy": _finite_or_none(self.pixel_accuracy()),
            "per_class_iou": {name: _finite_or_none(v)
                              for name, v in zip(names, self.iou(), strict=True)},
            "pixels": self.total,
        }


def _finite_or_none(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
