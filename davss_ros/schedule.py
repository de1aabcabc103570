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
  per frame by whoever knows the camera rates: the node, with :func:`key_budget_ms`), else
  propagation; a key frame at the latest after ``max_interval`` propagated frames. A fast
  machine thus segments every frame, a slow one propagates exactly as much as it must
  instead of dropping frames. Without a ``budget_ms`` (offline) it keys every
  ``key_interval`` frames, like ``fixed``; so it does until enough key frames have been
  measured to bound the next one's cost, where an average key frame fits the budget.

The budget (:func:`key_budget_ms`) is the most worker time the frame may take without any
camera dropping a frame later, if the frames after it are propagated. The worker keeps up to
``depth`` waiting frames per camera (the node's ``input.queue_depth``, 1 by default), and a
frame is dropped when ``depth`` newer ones of its camera arrive before the worker has taken
it; so a frame must be started within ``depth`` periods of its arrival. The time saved on
cheap (propagated) frames is banked as the worker's lead on those deadlines, up to what the
queues can hold: a key frame is allowed once the lead covers its cost, and it is spent
again by the key frame. With one camera at period P, a queue of one frame and the worker L
late on this frame, the budget is 2P - L: the next frame may wait in the slot until the one
after it arrives; a queue of D frames makes it (D + 1)P - L. Several cameras are the same
computation over all of their arrivals, oldest first, as the worker serves them; a camera
propagated for longer than this one has the prior claim, and the time its next key frame
needs is kept for it. The key cost compared with the budget is a :class:`CostEstimate`
bound (the slowest of the last :data:`COST_WINDOW` key frames), so a key frame is placed
only where even a slow one fits.

Every policy also cuts on a scene change: the photometric error of the warped key image
against the current frame above ``scene_cut_factor`` times its running level and above
``scene_cut_min_error``. The running level is an exponential moving average with weight
:data:`LEVEL_ALPHA` on the newest non-key frame. It survives ordinary key frames (the scene
is the same) and is cleared by ``reset``, a resolution change and a scene cut; the first
non-key frame afterwards seeds it and cannot itself be a scene cut (there is nothing to
compare the error with; ``max_interval`` and the distortion rule still apply).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import TYPE_CHECKING

from davss_ros.config import DISTORTION_METRICS, POLICIES, ScheduleConfig

if TYPE_CHECKING:  # the node imports this module without torch
    import torch

# Weight of the newest non-key frame's photometric error in the running level (EMA).
LEVEL_ALPHA = 0.1
# Weight of the newest frame in the running mean of a frame's cost.
COST_ALPHA = 0.2
# A key frame's cost as the budget policy counts it: the slowest of this many recent ones,
# once there are at least COST_MIN_SAMPLES (the slowest of fewer says little about the next).
COST_WINDOW = 16
COST_MIN_SAMPLES = 4
# How many periods of the fastest camera key_budget_ms looks ahead at most.
BUDGET_HORIZON_FRAMES = 8

# Key reasons, in the order pre_decision / post_decision apply them.
REASON_FIRST_FRAME = "first_frame"
REASON_RESOLUTION_CHANGE = "resolution_change"
REASON_INTERVAL = "interval"
REASON_MAX_INTERVAL = "max_interval"
REASON_SCENE_CUT = "scene_cut"
REASON_DISTORTION = "distortion"
REASON_NONFINITE_METRIC = "nonfinite_metric"
REASON_SLACK = "slack"
# Key frames that start a stream afresh and pay one-time costs (CostEstimate's cold samples).
COLD_KEY_REASONS = (REASON_FIRST_FRAME, REASON_RESOLUTION_CHANGE, "reset", "recovery")


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


class CostEstimate:
    """A frame's cost (ms): the running mean (newest weighted COST_ALPHA) and a bound, the
    slowest of the last COST_WINDOW samples, which the next one seldom exceeds (about one
    time in COST_WINDOW + 1 whatever the distribution: a machine's occasional stalls count).

    A cold sample (``update(ms, cold=True)``: the first frame of a stream or of a new
    resolution, which pays one-time costs) stands in for the mean only until a warm one is
    measured, and never bounds: one slow start says little about the next frames."""

    def __init__(self) -> None:
        self._mean: float | None = None
        self._cold: float | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=COST_WINDOW)

    @property
    def mean(self) -> float | None:
        """The running mean; the cold sample until a warm one exists."""
        return self._mean if self._mean is not None else self._cold

    @property
    def warm_mean(self) -> float | None:
        """The running mean of the warm samples only (None before one)."""
        return self._mean

    @property
    def bound(self) -> float | None:
        """The slowest of the last COST_WINDOW warm samples; None before COST_MIN_SAMPLES."""
        return max(self._recent) if len(self._recent) >= COST_MIN_SAMPLES else None

    def update(self, ms: float, *, cold: bool = False) -> None:
        ms = float(ms)
        if not math.isfinite(ms):
            return
        if cold:
            self._cold = ms
            return
        self._recent.append(ms)
        self._mean = ms if self._mean is None else COST_ALPHA * ms + (1.0 - COST_ALPHA) * self._mean


@dataclasses.dataclass(frozen=True)
class StreamLoad:
    """One camera as the shared worker sees it when a frame starts (times in ms from then).

    ``next_arrival_ms``: when its next frame is due (clamped to >= 0); ``frame_ms``: the
    worker time one of its propagated frames takes; ``waiting_ms``: the arrivals (<= 0) of
    its frames waiting in the worker's queue, oldest first; ``depth``: how many frames its
    queue holds (a frame is dropped when ``depth`` newer ones of its camera have arrived
    before the worker starts it); ``claim_ms``: what its first frame ahead (the oldest
    waiting one, else the next) is counted as costing, when it has the prior claim to a key
    frame (None: ``frame_ms``); ``running_ms``: with several workers, how long its frame
    being processed on another worker still takes (None: none is).
    """

    period_ms: float
    next_arrival_ms: float
    frame_ms: float
    waiting_ms: tuple[float, ...] = ()
    depth: int = 1
    claim_ms: float | None = None
    running_ms: float | None = None


def key_budget_ms(streams: list[StreamLoad], current: int, *,
                  horizon_frames: int = BUDGET_HORIZON_FRAMES, workers: int = 1) -> float:
    """The most worker time the frame starting now, of ``streams[current]``, may take
    without a later frame of any stream being dropped, when every later frame is propagated.

    The worker serves frames oldest first; a frame is dropped when ``depth`` newer frames
    of its stream have arrived before the worker has started it, so each frame's deadline
    is the arrival of the frame ``depth`` after it (with a queue of one: the next). With
    the frame costing its stream's ``frame_ms`` the schedule ahead is simulated; an extra
    x ms on this frame delays a later start by x less the idle time before it, so the
    budget is ``frame_ms`` + the least (deadline - start + idle so far) over the frames
    ahead, up to ``horizon_frames`` periods of the fastest stream or until the idle time
    exceeds that least value. Below ``frame_ms`` the stream cannot even keep up by
    propagating. A stream with a ``claim_ms`` (one that has waited longer for its key
    frame) is counted with that cost for its first frame ahead, so the time its key frame
    needs is not given to this one: the cameras take turns.

    With ``workers`` > 1 frames of different streams run at once (a stream's own frames one
    after the other): each frame ahead goes to the worker free first, not before its
    stream's previous frame has ended, and the budget is found by bisection on the extra
    time, the schedule simulated for each try.
    """
    if not 0 <= current < len(streams):
        raise ValueError(f"current must index streams (0..{len(streams) - 1}), got {current}")
    if horizon_frames < 1:
        raise ValueError(f"horizon_frames must be >= 1, got {horizon_frames}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers}")
    for s in streams:
        if not (s.period_ms > 0 and math.isfinite(s.period_ms)):
            raise ValueError(f"a stream's period must be a positive number, got {s.period_ms}")
        if int(s.depth) != s.depth or s.depth < 1 or len(s.waiting_ms) > s.depth:
            raise ValueError(f"a stream's queue depth must be an integer >= 1 and at least "
                             f"its waiting frames, got {s.depth} and {len(s.waiting_ms)}")
    # Up to the time every stream's arrivals are known (the fastest one's horizon).
    end = min(max(0.0, s.next_arrival_ms) + horizon_frames * s.period_ms for s in streams)
    frames = []  # (arrival, deadline, cost, stream)
    for i, s in enumerate(streams):
        nxt = max(0.0, float(s.next_arrival_ms))
        first = s.frame_ms if s.claim_ms is None or i == current else s.claim_ms
        # A frame's deadline is the arrival of the frame ``depth`` after it in its stream:
        # for the k-th of w waiting frames, future arrival number k + depth - w.
        waiting = len(s.waiting_ms)
        for k, since in enumerate(s.waiting_ms):
            frames.append((min(0.0, float(since)),
                           nxt + (k + s.depth - waiting) * s.period_ms, first, i))
            first = s.frame_ms
        arrival = nxt
        while arrival < end:
            frames.append((arrival, arrival + s.depth * s.period_ms, first, i))
            first = s.frame_ms
            arrival += s.period_ms
    frames.sort(key=lambda f: f[0])
    own = float(streams[current].frame_ms)
    if workers > 1:
        return own + _extra_ms(frames, streams, current, own, workers)
    t, idle, slack = own, 0.0, math.inf
    for arrival, deadline, cost, _ in frames:
        if arrival > t:
            idle += arrival - t
            t = arrival
        slack = min(slack, deadline - t + idle)
        if idle >= slack:
            break
        t += cost
    return own + slack


def _extra_ms(frames: list, streams: list[StreamLoad], current: int, own: float,
              workers: int) -> float:
    """The most extra time (>= -own) the current frame may take with several workers."""
    running = {i: max(0.0, float(s.running_ms)) for i, s in enumerate(streams)
               if i != current and s.running_ms is not None}

    def fits(extra: float) -> bool:
        done = {**running, current: own + extra}  # when each stream's frame in hand ends
        free = sorted(done.values())[:workers]
        free += [0.0] * (workers - len(free))  # when each worker is free
        for arrival, deadline, cost, stream in frames:
            k = min(range(workers), key=free.__getitem__)
            start = max(arrival, free[k], done.get(stream, 0.0))
            if start > deadline:
                return False
            free[k] = done[stream] = start + cost
        return True

    lo, hi = -own, max((f[1] for f in frames), default=0.0) + own
    if not fits(lo):
        return lo
    if fits(hi):
        return hi
    for _ in range(40):  # to well under a microsecond
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


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
                     key_cost_ms: float | None = None,
                     key_mean_ms: float | None = None) -> str | None:
        """A key reason for this frame before any work on it, or None.

        ``budget_ms`` and ``key_cost_ms`` (budget policy): the time this frame may take
        before a frame is dropped (:func:`key_budget_ms`), and what a key frame costs (a
        :class:`CostEstimate` bound); the frame is key when it fits. Offline (no budget) it
        keys every ``key_interval`` frames, like ``fixed``. Before enough key frames have
        been measured to bound the next one (no ``key_cost_ms``) it keys every
        ``key_interval`` frames where the expected cost ``key_mean_ms`` (the warm mean;
        None: nothing measured yet) fits the budget, and otherwise waits for
        ``max_interval``."""
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
        elif self.cfg.policy == "budget" and key_cost_ms is None:
            # too few key frames measured to bound the next one's cost: key_interval apart
            # where an average one fits
            fits = key_mean_ms is None or key_mean_ms <= budget_ms
            reason = REASON_INTERVAL if distance >= self.cfg.key_interval and fits else None
        elif self.cfg.policy == "budget":
            reason = REASON_SLACK if key_cost_ms <= budget_ms else None
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
