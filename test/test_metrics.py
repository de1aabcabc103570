"""ConfusionMatrix: IoU, mIoU and pixel accuracy on hand-made arrays."""

import math

import numpy as np
import pytest

from davss_ros.evaluate.metrics import ConfusionMatrix

# 4 classes; class 3 appears nowhere. 255 marks ignored pixels.
GT = np.array([[0, 0, 1, 1],
               [0, 2, 2, 255]], np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 3]], np.uint8)  # the 3 sits on an ignored pixel


def test_iou_per_class_matches_hand_computation():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    iou = cm.iou()
    # class 0: TP 2 (0,0),(1,0); FP 1 (pred 0 at gt 2); FN 1 (gt 0 predicted 1) -> 2/4
    # class 1: TP 2; FP 1 (gt 0 -> pred 1); FN 0 -> 2/3
    # class 2: TP 1; FP 0; FN 1 -> 1/2
    assert iou[0] == pytest.approx(2 / 4)
    assert iou[1] == pytest.approx(2 / 3)
    assert iou[2] == pytest.approx(1 / 2)


def test_ignored_pixels_are_not_counted_even_with_an_out_of_range_prediction():
    cm = ConfusionMatrix(3)  # pred 3 lies on the ignored pixel only, so this is fine
    cm.update(PRED, GT)
    assert cm.total == 7
    assert cm.matrix.sum() == int((GT != 255).sum())


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    assert math.isnan(cm.iou()[3])
    assert cm.miou() == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)


def test_pixel_accuracy_is_correct_over_scored_pixels():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_class_only_predicted_has_iou_zero_not_nan():
    cm = ConfusionMatrix(3)
    cm.update(np.array([2, 0]), np.array([0, 0]))
    iou = cm.iou()
    assert iou[2] == 0.0 and math.isnan(iou[1])
    assert cm.miou() == pytest.approx((1 / 2 + 0.0) / 2)


def test_merge_equals_one_update_over_everything():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (6, 7)) for _ in range(3)]
    gts = [np.where(rng.random((6, 7)) < 0.2, 255, rng.integers(0, 5, (6, 7))) for _ in range(3)]
    parts = []
    for p, g in zip(preds, gts, strict=True):
        cm = ConfusionMatrix(5)
        cm.update(p, g)
        parts.append(cm)
    merged = ConfusionMatrix(5)
    for cm in parts:
        merged.merge(cm)
    whole = ConfusionMatrix(5)
    whole.update(np.concatenate(preds), np.concatenate(gts))
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    assert merged.miou() == whole.miou()


def test_merge_refuses_another_class_count():
    with pytest.raises(ValueError, match="3-class"):
        ConfusionMatrix(4).merge(ConfusionMatrix(3))


def test_nothing_scored_gives_nan_miou_and_accuracy():
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8))
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())


def test_update_checks_shapes_and_class_range():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="ground truth holds class id 7"):
        cm.update(np.zeros(2, np.uint8), np.array([0, 7], np.uint8))
    with pytest.raises(ValueError, match="prediction holds class id 5"):
        cm.update(np.array([0, 5], np.uint8), np.zeros(2, np.uint8))
    assert cm.total == 0


def test_as_dict_names_classes_and_maps_nan_to_none():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    d = cm.as_dict(["a", "b", "c", "d"])
    assert d["per_class_iou"]["a"] == pytest.approx(0.5) and d["per_class_iou"]["d"] is None
    assert d["miou"] == pytest.approx(cm.miou()) and d["pixels"] == 7
