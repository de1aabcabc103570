"""Key-frame scheduling rules, one test per rule."""

from __future__ import annotations

import pytest
import torch

from davss_ros.config import ScheduleConfig
from davss_ros.schedule import KeyFrameScheduler, photometric_error

SHAPE = (3, 32, 64)
CALM = {"distortion_mean": 0.05, "distortion_ratio": 0.05, "photometric_error": 0.02}


def step(s: KeyFrameScheduler, shape: tuple[int, ...] = SHAPE, **measured: float) -> str | None:
    """Run one frame through the scheduler as the pipeline does; return its key reason."""
    reason = s.pre_decision(shape)
    if reason is None:
        values = {**CALM, **measured}
        reason = s.post_decision(**values)
        s.commit(is_key=reason is not None, photometric_error=values["photometric_error"])
    else:
        s.commit(is_key=True)
    return reason


def test_fixed_interval_keys_every_n_frames():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=5))
    reasons = [step(s) for _ in range(12)]
    assert [i for i, r in enumerate(reasons) if r is not None] == [0, 5, 10]
    assert reasons[0] == "first_frame"
    assert reasons[5] == reasons[10] == "interval"


def test_fixed_interval_tracks_propagation_distance():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=3))
    distances = []
    for _ in range(6):
        step(s)
        distances.append(s.propagation_distance)
    assert distances == [0, 1, 2, 0, 1, 2]


def test_interval_one_makes_every_frame_key():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=1))
    reasons = [step(s) for _ in range(5)]
    assert reasons == ["first_frame"] + ["interval"] * 4


def test_adaptive_threshold_on_mean():
    s = KeyFrameScheduler(ScheduleConfig(policy="adaptive", threshold=0.3, metric="mean",
                                         max_interval=100))
    assert step(s) == "first_frame"
    assert step(s, distortion_mean=0.29, distortion_ratio=0.9) is None
    assert step(s, distortion_mean=0.31, distortion_ratio=0.0) == "distortion"
    assert s.propagation_distance == 0


def test_adaptive_threshold_on_ratio():
    s = KeyFrameScheduler(ScheduleConfig(policy="adaptive", threshold=0.3, metric="ratio",
                                         max_interval=100))
    step(s)
    assert step(s, distortion_mean=0.9, distortion_ratio=0.29) is None
    assert step(s, distortion_mean=0.0, distortion_ratio=0.31) == "distortion"


def test_fixed_policy_ignores_distortion():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=10, threshold=0.1))
    step(s)
    assert step(s, distortion_mean=0.99, distortion_ratio=0.99) is None


def test_adaptive_max_interval_forces_key():
    s = KeyFrameScheduler(ScheduleConfig(policy="adaptive", threshold=1.0, max_interval=3))
    reasons = [step(s) for _ in range(9)]
    assert reasons == ["first_frame", None, None, None, "max_interval", None, None, None,
                       "max_interval"]


def test_resolution_change_forces_key_and_clears_level():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=100))
    step(s)
    step(s)
    assert s.photometric_level is not None
    assert step(s, shape=(3, 64, 128)) == "resolution_change"
    assert s.photometric_level is None
    assert step(s, shape=(3, 64, 128)) is None


def test_scene_cut_fires_on_jump_not_on_steady_errors():
    cfg = ScheduleConfig(policy="fixed", key_interval=100, scene_cut_factor=4.0,
                         scene_cut_min_error=0.15)
    s = KeyFrameScheduler(cfg)
    step(s)
    steady = [step(s, photometric_error=e) for e in (0.05, 0.06, 0.04, 0.07, 0.05)]
    assert steady == [None] * 5
    assert step(s, photometric_error=0.5) == "scene_cut"
    assert s.propagation_distance == 0
    # A scene cut clears the running level: the new scene's first error only seeds it.
    assert s.photometric_level is None


def test_scene_cut_needs_min_error():
    s = KeyFrameScheduler(ScheduleConfig(key_interval=100, scene_cut_factor=2.0,
                                         scene_cut_min_error=0.15))
    step(s)
    step(s, photometric_error=0.01)
    # 10x the level, but below the absolute floor.
    assert step(s, photometric_error=0.1) is None


def test_no_scene_cut_before_a_level_exists():
    s = KeyFrameScheduler(ScheduleConfig(key_interval=100))
    step(s)
    assert s.photometric_level is None
    assert step(s, photometric_error=0.9) is None
    assert s.photometric_level == pytest.approx(0.9)


def test_level_survives_ordinary_key_frames():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=2))
    step(s)
    step(s, photometric_error=0.04)
    assert step(s) == "interval"
    assert s.photometric_level == pytest.approx(0.04)
    assert step(s, photometric_error=0.5) == "scene_cut"


def test_requested_key_takes_priority_once():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=100))
    s.request_key("reset")
    assert step(s) == "reset"  # over 'first_frame'
    step(s)
    s.request_key("nonfinite_output")
    assert step(s, shape=(3, 8, 8)) == "nonfinite_output"  # over 'resolution_change'
    assert step(s, shape=(3, 8, 8)) is None


def test_request_during_key_frame_applies_to_next_frame():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=100))
    assert s.pre_decision(SHAPE) == "first_frame"
    s.request_key("nonfinite_output")
    s.commit(is_key=True)
    assert s.pre_decision(SHAPE) == "nonfinite_output"


def test_reset_forgets_everything():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=100))
    for _ in range(4):
        step(s)
    s.request_key("something")
    s.reset()
    assert s.propagation_distance == 0
    assert s.photometric_level is None
    assert step(s) == "first_frame"


def test_update_config_takes_effect_mid_stream():
    s = KeyFrameScheduler(ScheduleConfig(policy="fixed", key_interval=10))
    reasons = [step(s) for _ in range(4)]
    assert reasons == ["first_frame", None, None, None]
    s.update_config(ScheduleConfig(policy="fixed", key_interval=2))
    assert s.propagation_distance == 3  # state kept
    # Distance 4 >= 2: key at once, then every second frame.
    assert [step(s) for _ in range(4)] == ["interval", None, "interval", None]
    s.update_config(ScheduleConfig(policy="adaptive", threshold=0.5, max_interval=100))
    assert step(s, distortion_mean=0.6) == "distortion"


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="schedule.policy"):
        KeyFrameScheduler(ScheduleConfig(policy="sometimes"))
    s = KeyFrameScheduler(ScheduleConfig())
    with pytest.raises(ValueError, match="schedule.key_interval"):
        s.update_config(ScheduleConfig(key_interval=0))
    assert s.cfg.key_interval == 5


def test_nonfinite_measurement_forces_key():
    s = KeyFrameScheduler(ScheduleConfig(key_interval=100))
    step(s)
    assert step(s, distortion_mean=float("nan")) == "nonfinite_metric"


def test_photometric_error_is_mean_absolute_difference():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.25)
    b[..., 0, 0] = 1.0
    expected = (0.25 * 45 + 1.0 * 3) / 48
    assert photometric_error(a, b) == pytest.approx(expected)
    assert photometric_error(b, b) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        photometric_error(a, b[..., :2])


# ------------------------------------------------------------------------- budget policy


def test_budget_policy_keys_when_a_key_frame_fits_and_propagates_when_it_does_not():
    s = KeyFrameScheduler(ScheduleConfig(policy="budget", key_interval=4, max_interval=3))
    shape = (8, 8, 3)
    assert s.pre_decision(shape, budget_ms=10.0, key_cost_ms=50.0) == "first_frame"
    s.commit(is_key=True)
    # plenty of time: every frame is a key frame (per-frame quality)
    assert s.pre_decision(shape, budget_ms=80.0, key_cost_ms=50.0) == "slack"
    s.commit(is_key=True)
    # behind: propagate, up to max_interval frames, then a key frame anyway
    decisions = []
    for _ in range(4):
        reason = s.pre_decision(shape, budget_ms=20.0, key_cost_ms=50.0)
        decisions.append(reason)
        s.commit(is_key=reason is not None)
    assert decisions == [None, None, None, "max_interval"]
    # nothing measured yet: a key frame is tried
    assert s.pre_decision(shape, budget_ms=5.0, key_cost_ms=None) == "slack"


def test_budget_policy_without_a_budget_keys_every_key_interval_frames():
    s = KeyFrameScheduler(ScheduleConfig(policy="budget", key_interval=3, max_interval=10))
    out = []
    for _ in range(7):
        reason = s.pre_decision((8, 8, 3))
        out.append(reason is not None)
        s.commit(is_key=reason is not None)
    assert out == [True, False, False, True, False, False, True]
