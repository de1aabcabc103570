"""Temporal consistency: how often an output label flickers from one frame to the next where
the images say the point is the same.

For consecutive frames t-1, t of a clip, dense optical flow from t to t-1 (OpenCV's DIS at
full resolution, the ``medium`` preset, independent of the model under test) carries the
labels of t-1 onto t. A pixel counts where the flow is forward-backward consistent (the flow
of t-1 -> t, read where t's flow lands, brings it back within 1 px + 5 % of the motion) and
lands inside the image; it flickers where its label differs from the carried one. The share
of counted pixels that flicker is the figure (lower is steadier). Every mode streams the
same clips under one fixed key interval, and the flow is computed once per frame pair for
all of them. No label is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from davss_ros.config import ScheduleConfig
from davss_ros.pipeline import VideoSegmenter


@dataclass
class Flicker:
    counted: int = 0  # pixels whose motion the flow check trusts
    changed: int = 0  # of those, pixels whose label changed along the motion
    frames: int = 0  # frame pairs

    @property
    def percent(self) -> float:
        return 100.0 * self.changed / self.counted if self.counted else float("nan")

    def as_dict(self) -> dict:
        return {"flicker_percent": round(self.percent, 3), "counted_pixels": self.counted,
                "frame_pairs": self.frames}


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def trusted_motion(current: np.ndarray, previous: np.ndarray,
                   dis=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map_x, map_y, valid): where each pixel of ``current`` was in ``previous`` (for
    ``cv2.remap``) and whether that motion passes the forward-backward check and stays
    inside the image. Both frames H x W x 3 uint8 RGB."""
    dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g_cur, g_prev = _grey(current), _grey(previous)
    back = dis.calc(g_cur, g_prev, None)  # current -> previous
    fwd = dis.calc(g_prev, g_cur, None)  # previous -> current
    h, w = g_cur.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = xs + back[..., 0], ys + back[..., 1]
    fwd_there = cv2.remap(fwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    loop = np.linalg.norm(back + fwd_there, axis=-1)
    motion = np.linalg.norm(back, axis=-1) + np.linalg.norm(fwd_there, axis=-1)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return map_x, map_y, inside & (loop < 1.0 + 0.05 * motion)


def label_changes(labels: np.ndarray, previous_labels: np.ndarray, map_x: np.ndarray,
                  map_y: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """(counted, changed) pixels of one frame pair: ``previous_labels`` carried along the
    motion (nearest) against ``labels``, over the ``valid`` pixels."""
    carried = cv2.remap(previous_labels, map_x, map_y, cv2.INTER_NEAREST,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    counted = valid & (carried != 255) & (labels != 255)
    return int(counted.sum()), int((counted & (carried != labels)).sum())


def temporal_consistency(segmenters: dict[str, VideoSegmenter],
                         clips: Iterable, *, key_interval: int = 5) -> dict[str, Flicker]:
    """Stream every clip (``ClipFrames``: its ``frames``) through each segmenter with a key
    frame every ``key_interval`` frames; the flicker of each mode's labels."""
    if key_interval < 1:
        raise ValueError(f"key_interval must be >= 1, got {key_interval}")
    schedule = ScheduleConfig(policy="fixed", key_interval=key_interval)
    for seg in segmenters.values():
        seg.set_schedule(replace(schedule))
    out = {name: Flicker() for name in segmenters}
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for clip in clips:
        images = list(clip.frames)
        motions = [trusted_motion(images[t], images[t - 1], dis)
                   for t in range(1, len(images))]
        for name, seg in segmenters.items():
            seg.reset()
            previous = None
            for t, rgb in enumerate(images):
                labels = seg.step(rgb).labels
                if previous is not None:
                    counted, changed = label_changes(labels, previous, *motions[t - 1])
                    out[name].counted += counted
                    out[name].changed += changed
                    out[name].frames += 1
                previous = labels
    return out
