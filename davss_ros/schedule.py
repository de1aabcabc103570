"""Key-frame scheduling: when a frame is segmented from scratch instead of propagated.

Every frame goes through the same three steps, in this order:

1. ``pre_decision(frame_shape)`` before any work: a key reason, or None to try propagation.
2. ``post_decision(...)`` after flow, the warped key image and DMNet on a would-be non-key
   frame: a key reason, or None to keep the frame non-key.
3. ``commit(is_key=...)`` once the frame's outcome is known.

Policies (``ScheduleConfig.policy``):

- ``fixed``: key frames at 0, N, 2N, ... with N = ``key_interval`` (DFF, Accel and the
  paper's experiments).
- ``adaptive``: a key frame when the distortion map says propagation has gone wrong (its mean,
  or the fraction of pixels above 0.5, above ``threshold``), or after ``max_interval``
  propagated frames. DMNet already estimates where the warped prediction is wrong, so this
  costs nothing extra (DVSNet and Li et al. 2018 train a separate regressor for the same job).

- ``budget``: a key frame whenever one fits the time the stream leaves (``budget_ms``, given
  per frame by whoever knows the camera rates: the node), else propagation; a key frame at
  the latest after ``max_interval`` propagated frames. A fast machine thus segments every
  frame, a slow one propagates exactly as much as it must instead of dropping frames.
  Without a ``budget_ms`` (offline) it keys every ``key_interval`` frames, like ``fixed``.

Every policy also cuts on a scene change: the photometric error of the warped key image
against the current frame above ``scene_cut_factor`` times its running level and above
``scene_cut_min_error``. The running level is an exponential moving average with weight
:data:`LEVEL_ALPHA` on the newest non-key frame. It survives ordinary key frames (the scene
is the same) and is cleared by ``reset``, a resolution change and a scene cut; the first
non-key frame afterwards seeds it and cannot itself be a scene cut (there is nothing to
compare the error with; ``max_interval`` and the distortion rule still apply).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from davss_ros.config import DISTORTION_METRICS, POLICIES, ScheduleConfig

# Weight of the newest non-key frame's photometric error in the running level (EMA).
LEVEL_ALPHA = 0.1

# Key reasons, in the order pre_decision / post_decision apply them.
REASON_FIRST_FRAME = "first_frame"
REASON_RESOLUTION_CHANGE = "resolution_change"
REASON_INTERVAL = "interval"
REASON_MAX_INTERVAL = "max_interval"
REASON_SCENE_CUT = "scene_cut"
REASON_DISTORTION = "distortion"
REASON_NONFINITE_METRIC = "nonfinite_metric"
REASON_SLACK = "slack"


def photometric_error(warped_image: torch.Tensor, current_image: torch.Tensor) -> float:
    """Mean absolute difference of two images in [0, 1] (any shape, both the same)."""
    if warped_image.shape != current_image.shape:
        raise ValueError(
            "photometric_error expects two tensors of the same shape, got "
            f"{tuple(warped_image.shape)} and {tuple(current_image.shape)}"
        )
    if warped_image.numel() == 0:
        raise ValueError("photometric_error expects non-empty tensors")
    diff = warped_image.detach().float() - current_image.detach().float()
    return float(diff.abs().mean())


def validate_schedule(cfg: ScheduleConfig) -> None:
    """Raise ValueError naming the first schedule field whose value is not allowed."""
    if cfg.policy not in POLICIES:
        raise ValueError(f"schedule.policy must be one of {', '.join(POLICIES)}; "
                         f"got {cfg.policy!r}")
    if cfg.metric not in DISTORTION_METRICS:
        raise ValueError(f"schedule.metric must be one of {', '.join(DISTORTION_METRICS)}; "
                         f"got {cfg.metric!r}")
    if int(cfg.key_interval) != cfg.key_interval or cfg.key_interval < 1:
        raise ValueError(f"schedule.key_interval must be an integer >= 1, "
                         f"got {cfg.key_interval!r}")
    if int(cfg.max_interval) != cfg.max_interval or cfg.max_interval < 1:
        raise ValueError(f"schedule.max_interval must be an integer >= 1, "
                         f"got {cfg.max_interval!r}")
    if not 0.0 <= cfg.threshold <= 1.0:
        raise ValueError(f"schedule.threshold must be in [0, 1], got {cfg.threshold!r}")
    if not cfg.scene_cut_factor > 0.0:
        raise ValueError(f"schedule.scene_cut_factor must be > 0, got {cfg.scene_cut_factor!r}")
    if not cfg.scene_cut_min_error >= 0.0:
        raise ValueError(
            f"schedule.scene_cut_min_error must be >= 0, got {cfg.scene_cut_min_error!r}")


class KeyFrameScheduler:
    """Decides, frame by frame, which frames are key frames (see the module docstring).

    ``propagation_distance`` is the number of non-key frames committed since the last key
    frame: 0 on and after a key frame, 1 after the first propagated frame, and so on.
    """

    def __init__(self, cfg: ScheduleConfig) -> None:
        validate_schedule(cfg)
        self.cfg = dataclasses.replace(cfg)
        self.propagation_distance = 0
        self._has_key = False
        self._committed_shape: tuple[int, ...] | None = None
        self._frame_shape: tuple[int, ...] | None = None
        self._requested: str | None = None
        self._frame_reason: str | None = None
        self._level: float | None = None

    @property
    def photometric_level(self) -> float | None:
        """Running level of the photometric error, or None when none exists yet."""
        return self._level

    def update_config(self, cfg: ScheduleConfig) -> None:
        """Apply a new configuration from the next decision on, keeping the state."""
        validate_schedule(cfg)
        self.cfg = dataclasses.replace(cfg)

    def reset(self) -> None:
        """Forget everything: the next frame is a key frame with reason 'first_frame'."""
        self.propagation_distance = 0
        self._has_key = False
        self._committed_shape = None
        self._frame_shape = None
        self._requested = None
        self._frame_reason = None
        self._level = None

    def request_key(self, reason: str) -> None:
        """Make the next frame a key frame with this reason (before any other rule).

        The request is consumed by the next ``pre_decision``; one made while a frame is being
        processed (e.g. after its output turned out non-finite) applies to the frame after.
        """
        if not reason:
            raise ValueError("request_key expects a non-empty reason")
        self._requested = reason

    def pre_decision(self, frame_shape: tuple[int, ...], *, budget_ms: float | None = None,
                     key_cost_ms: float | None = None) -> str | None:
        """A key reason for this frame before any work on it, or None.

        ``budget_ms`` and ``key_cost_ms`` (budget policy): the time this frame may take
        before the stream falls behind, and what a key frame is expected to cost; the frame
        is key when it fits (or nothing has been measured yet)."""
        shape = tuple(int(s) for s in frame_shape)
        self._frame_shape = shape
        distance = self.propagation_distance + 1  # this frame's distance if it is not key
        if self._requested is not None:
            reason: str | None = self._requested
            self._requested = None
        elif not self._has_key:
            reason = REASON_FIRST_FRAME
        elif shape != self._committed_shape:
            reason = REASON_RESOLUTION_CHANGE
        elif self.cfg.policy == "fixed" and distance >= self.cfg.key_interval:
            # '>=' and not '==': a key_interval lowered mid-stream below the current
            # distance takes effect at once.
            reason = REASON_INTERVAL
        elif self.cfg.policy in ("adaptive", "budget") and distance > self.cfg.max_interval:
            reason = REASON_MAX_INTERVAL
        elif self.cfg.policy == "budget" and budget_ms is None:
            reason = REASON_INTERVAL if distance >= self.cfg.key_interval else None
        elif self.cfg.policy == "budget":
            fits = key_cost_ms is None or key_cost_ms <= budget_ms
            reason = REASON_SLACK if fits else None
        else:
            reason = None
        self._frame_reason = reason
        return reason

    def post_decision(self, *, distortion_mean: float, distortion_ratio: float,
                      photometric_error: float) -> str | None:
        """A key reason for a would-be non-key frame from its measurements, or None.

        A non-finite measurement means the flow or DMNet broke down: the frame becomes a key
        frame with reason 'nonfinite_metric'.
        """
        values = (distortion_mean, distortion_ratio, photometric_error)
        if not all(math.isfinite(float(v)) for v in values):
            reason: str | None = REASON_NONFINITE_METRIC
        elif (self._level is not None
              and photometric_error > self.cfg.scene_cut_factor * self._level
              and photometric_error > self.cfg.scene_cut_min_error):
            reason = REASON_SCENE_CUT
        elif self.cfg.policy == "adaptive":
            value = distortion_mean if self.cfg.metric == "mean" else distortion_ratio
            reason = REASON_DISTORTION if value > self.cfg.threshold else None
        else:
            reason = None
        self._frame_reason = reason
        return reason

    def commit(self, *, is_key: bool, photometric_error: float | None = None) -> None:
        """Record this frame's outcome.

        Key: distance back to 0; the running level is kept
        unless the frame was a scene cut or a new resolution. Non-key: distance + 1, and
        ``photometric_error`` (if given and finite) updates the running level. The
        ``photometric_error`` of a key frame is ignored.
        """
        shape_changed = (self._committed_shape is not None
                         and self._frame_shape is not None
                         and self._frame_shape != self._committed_shape)
        if shape_changed or self._frame_reason == REASON_SCENE_CUT:
            self._level = None
        if self._frame_shape is not None:
            self._committed_shape = self._frame_shape
        if is_key:
            self.propagation_distance = 0
            self._has_key = True
        else:
            if not self._has_key:
                raise ValueError("commit(is_key=False) before any key frame: nothing to "
                                 "propagate from; the first frame must be a key frame")
            self.propagation_distance += 1
            if photometric_error is not None and math.isfinite(photometric_error):
                err = float(photometric_error)
                self._level = err if self._level is None else (
                    LEVEL_ALPHA * err + (1.0 - LEVEL_ALPHA) * self._level)
        self._frame_reason = None
