"""Temporal consistency: flicker of labels along the motion between consecutive frames."""

import numpy as np
import pytest
import torch

from davss_ros.config import load_config
from davss_ros.data.synthetic import SceneConfig, render_clip
from davss_ros.evaluate.consistency import label_changes, temporal_consistency, trusted_motion
from davss_ros.evaluate.pda import build_segmenters, untrained_checkpoint
from davss_ros.evaluate.schedule_eval import ClipFrames

H, W = 64, 128


def _textured(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H // 4, W // 4 + 4, 3), np.uint8)
    import cv2

    return cv2.resize(base, ((W // 4 + 4) * 4, H), interpolation=cv2.INTER_CUBIC)


def test_motion_of_a_shifted_image_is_found_and_trusted():
    wide = _textured()
    previous, current = wide[:, 8:8 + W], wide[:, 5:5 + W]  # the scene moves 3 px right
    map_x, map_y, valid = trusted_motion(current, previous)
    inner = (slice(8, H - 8), slice(12, W - 12))
    # current[x] = previous[x - 3]: each pixel of current was 3 px to the left
    assert np.median(map_x[inner] - np.arange(W)[None, 12:W - 12]) == pytest.approx(-3, abs=0.3)
    assert np.abs(map_y[inner] - np.arange(H)[8:H - 8, None]).mean() < 0.5
    assert valid[inner].mean() > 0.9


def test_labels_carried_along_the_motion_do_not_flicker_and_a_changed_patch_does():
    wide = _textured(1)
    previous, current = wide[:, 8:8 + W], wide[:, 5:5 + W]
    motion = trusted_motion(current, previous)
    labels_wide = (np.arange(W + 16)[None, :] // 10 % 5).repeat(H, 0).astype(np.uint8)
    prev_labels, labels = labels_wide[:, 8:8 + W], labels_wide[:, 5:5 + W].copy()
    counted, changed = label_changes(labels, prev_labels, *motion)
    assert counted > 0.8 * H * W and changed < 0.02 * counted
    labels[20:30, 40:60] = 9
    _, changed_patch = label_changes(labels, prev_labels, *motion)
    assert changed_patch - changed >= 0.9 * 200


def test_per_frame_on_a_still_clip_never_flickers_and_counts_every_pair():
    torch.set_num_threads(1)
    frame = render_clip(SceneConfig(height=H, width=W, frames=1, seed=4)).images[0]
    clip = ClipFrames("still", [frame] * 4, [None] * 4)
    ck = untrained_checkpoint(load_config({"model": {"input_height": H, "input_width": W}}))
    segs = build_segmenters(ck, ["per_frame", "davss"], device="cpu")
    res = temporal_consistency(segs, [clip], key_interval=2)
    assert res["per_frame"].percent == 0.0 and res["per_frame"].frames == 3
    assert res["davss"].frames == 3 and 0.0 <= res["davss"].percent <= 100.0


def test_key_interval_below_one_is_refused():
    with pytest.raises(ValueError, match="key_interval"):
        temporal_consistency({}, [], key_interval=0)
