"""Key-frame scheduling rules, one test per rule."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from davss_ros.config import ScheduleConfig
from davss_ros.schedule import (
    COST_MIN_SAMPLES,
    COST_WINDOW,
    CostEstimate,
    KeyFrameScheduler,
    StreamLoad,
    key_budget_ms,
    photometric_error,
)

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


def test_budget_policy_keys_every_key_interval_frames_until_a_key_cost_bound_is_known():
    s = KeyFrameScheduler(ScheduleConfig(policy="budget", key_interval=3, max_interval=10))
    out = []
    for _ in range(7):
        reason = s.pre_decision((8, 8, 3), budget_ms=80.0, key_cost_ms=None)
        out.append(reason)
        s.commit(is_key=reason is not None)
    assert out == ["first_frame", None, None, "interval", None, None, "interval"]
    # ... where an average key frame fits; where it does not, max_interval decides
    out = []
    for _ in range(11):
        reason = s.pre_decision((8, 8, 3), budget_ms=60.0, key_cost_ms=None, key_mean_ms=70.0)
        out.append(reason)
        s.commit(is_key=reason is not None)
    assert out == [None] * 10 + ["max_interval"]
    assert s.pre_decision((8, 8, 3), budget_ms=80.0, key_cost_ms=None,
                          key_mean_ms=70.0) is None  # distance 1 < key_interval


def test_budget_policy_without_a_budget_keys_every_key_interval_frames():
    s = KeyFrameScheduler(ScheduleConfig(policy="budget", key_interval=3, max_interval=10))
    out = []
    for _ in range(7):
        reason = s.pre_decision((8, 8, 3))
        out.append(reason is not None)
        s.commit(is_key=reason is not None)
    assert out == [True, False, False, True, False, False, True]


def test_cost_estimate_bound_is_the_slowest_of_the_recent_samples():
    c = CostEstimate()
    assert c.mean is None and c.bound is None
    c.update(60.0)
    assert c.mean == 60.0 and c.bound is None  # too few to bound the next one
    c.update(50.0)
    assert c.mean == pytest.approx(0.2 * 50 + 0.8 * 60)
    for _ in range(COST_MIN_SAMPLES - 2):
        c.update(50.0)
    assert c.bound == 60.0
    for _ in range(COST_WINDOW - COST_MIN_SAMPLES):  # the slow one is still in the window
        c.update(50.0)
    assert c.bound == 60.0
    c.update(50.0)  # now it has left the window
    assert c.bound == 50.0
    c.update(float("nan"))  # a broken measurement changes nothing
    assert c.bound == 50.0


def test_a_cold_start_cost_stands_in_only_until_a_warm_one_is_measured():
    c = CostEstimate()
    c.update(85.0, cold=True)  # the first key frame of a stream: one-time costs
    assert c.mean == 85.0 and c.bound is None  # nothing to bound the next one with
    for _ in range(COST_MIN_SAMPLES):
        c.update(55.0)
    assert c.mean == 55.0 and c.bound == 55.0  # not pulled up by the slow start
    c.update(90.0, cold=True)  # a later restart does not disturb a warm estimate
    assert c.mean == 55.0


# ----------------------------------------------------------------- key_budget_ms (one camera)

P30 = 1000.0 / 30


def test_one_camera_budget_is_two_periods_less_the_lateness():
    """The next frame may wait in the slot until the one after it arrives: a frame started L
    late may take 2P - L, whatever a propagated frame costs."""
    for late in (0.0, 5.0, 20.0):
        for nonkey in (5.0, 14.0):
            load = StreamLoad(period_ms=P30, next_arrival_ms=P30 - late, frame_ms=nonkey)
            assert key_budget_ms([load], 0) == pytest.approx(2 * P30 - late)


def test_one_camera_budget_with_a_frame_already_waiting_ends_at_its_successor():
    # The worker is more than a period late: the next frame already waits and is dropped
    # when the one after it arrives, 10 ms from now.
    load = StreamLoad(period_ms=P30, next_arrival_ms=10.0, frame_ms=14.0,
                      waiting_ms=(-P30 + 10.0,))
    assert key_budget_ms([load], 0) == pytest.approx(10.0)


def test_a_deeper_queue_gives_a_period_more_budget_per_frame_it_holds():
    """With D frames queued per camera a frame is dropped only when D newer ones wait, so a
    frame started L late may take (D + 1)P - L."""
    for depth in (1, 2, 3):
        for late in (0.0, 20.0):
            load = StreamLoad(period_ms=P30, next_arrival_ms=P30 - late, frame_ms=14.0,
                              depth=depth)
            assert key_budget_ms([load], 0) == pytest.approx((depth + 1) * P30 - late)
    # Two frames wait in a queue of two (the worker is late): the older one is dropped when
    # the next frame arrives, 10 ms from now, unless the worker has started it by then.
    load = StreamLoad(period_ms=P30, next_arrival_ms=10.0, frame_ms=14.0,
                      waiting_ms=(-2 * P30 + 10.0, -P30 + 10.0), depth=2)
    assert key_budget_ms([load], 0) == pytest.approx(10.0)
    # One of two waits: it may wait for two more arrivals, the newer one's successor too.
    load = StreamLoad(period_ms=P30, next_arrival_ms=10.0, frame_ms=14.0,
                      waiting_ms=(-P30 + 10.0,), depth=2)
    assert key_budget_ms([load], 0) == pytest.approx(10.0 + P30)
    with pytest.raises(ValueError, match="depth"):
        key_budget_ms([StreamLoad(period_ms=P30, next_arrival_ms=0.0, frame_ms=1.0,
                                  waiting_ms=(-2.0, -1.0), depth=1)], 0)


def test_overloaded_camera_has_a_budget_below_its_propagated_frame():
    # Propagated frames of 40 ms at 30 Hz fall behind by themselves: nothing fits.
    load = StreamLoad(period_ms=P30, next_arrival_ms=P30, frame_ms=40.0)
    assert key_budget_ms([load], 0) < 40.0


def test_two_cameras_budget_leaves_the_other_cameras_frames_their_deadlines():
    p = 2 * P30  # 15 Hz each; camera 1 arrives half a period after camera 0
    cam0 = StreamLoad(period_ms=p, next_arrival_ms=p, frame_ms=14.0)
    # camera 1's frame arrived 10 ms ago and waits: it must start before its next frame
    # arrives, p - 10 ms from now.
    cam1 = StreamLoad(period_ms=p, next_arrival_ms=p - 10.0, frame_ms=14.0,
                      waiting_ms=(-10.0,))
    assert key_budget_ms([cam0, cam1], 0) == pytest.approx(p - 10.0)
    # Nothing waiting, camera 1 due in half a period. Its frame (due p/2, deadline 3p/2)
    # starts at p/2 after p/2 - 14 ms idle: 3p/2 - p/2 + (p/2 - 14) = 3p/2 - 14 to spare.
    # Camera 0's next (due p, deadline 2p) starts at p after p - 28 ms idle in all:
    # 2p - p + (p - 28) = 2p - 28 to spare. The budget is 14 ms + the smaller.
    cam1 = StreamLoad(period_ms=p, next_arrival_ms=p / 2, frame_ms=14.0)
    assert key_budget_ms([cam0, cam1], 0) == pytest.approx(14.0 + min(3 * p / 2 - 14.0,
                                                                         2 * p - 28.0))
    assert key_budget_ms([cam0, cam1], 0) < key_budget_ms([cam0], 0)  # sharing costs time


def test_a_camera_propagated_longer_keeps_the_time_of_its_key_frame():
    p = 2 * P30
    cam0 = StreamLoad(period_ms=p, next_arrival_ms=p, frame_ms=14.0)
    cam1 = StreamLoad(period_ms=p, next_arrival_ms=p / 2, frame_ms=14.0)
    claimed = StreamLoad(period_ms=p, next_arrival_ms=p / 2, frame_ms=14.0, claim_ms=56.0)
    # camera 1's next frame counted as a 56 ms key frame: 42 ms less for camera 0's next
    # deadline, while camera 1's own deadline is unchanged
    free = key_budget_ms([cam0, cam1], 0)
    assert key_budget_ms([cam0, claimed], 0) == pytest.approx(
        14.0 + min(3 * p / 2 - 14.0, 2 * p - 28.0 - 42.0))
    assert key_budget_ms([cam0, claimed], 0) < free
    # the claim is another camera's: a stream's own claim changes nothing for itself
    assert key_budget_ms([claimed, cam0], 0) == key_budget_ms([cam1, cam0], 0)


def test_a_second_worker_changes_nothing_for_one_camera():
    """A camera's frames run one after the other, so with one camera the simulated
    schedule of two workers (found by bisection) is the one-worker budget."""
    cases = [StreamLoad(period_ms=P30, next_arrival_ms=P30 - late, frame_ms=14.0, depth=d)
             for late in (0.0, 12.0) for d in (1, 3)]
    cases.append(StreamLoad(period_ms=P30, next_arrival_ms=10.0, frame_ms=14.0,
                            waiting_ms=(-P30 + 10.0,), depth=2))
    for load in cases:
        assert key_budget_ms([load], 0, workers=2) == pytest.approx(
            key_budget_ms([load], 0), abs=1e-6), load
    # overloaded (40 ms frames at 30 Hz): both below a propagated frame, no key frame fits
    load = StreamLoad(period_ms=P30, next_arrival_ms=P30, frame_ms=40.0)
    assert max(key_budget_ms([load], 0), key_budget_ms([load], 0, workers=2)) < 40.0


def test_with_two_workers_each_camera_keeps_its_own_budget():
    p = 2 * P30
    cam0 = StreamLoad(period_ms=p, next_arrival_ms=p, frame_ms=14.0)
    # camera 1's frame is being processed on the other worker for 30 ms more, and its next
    # frame is due in half a period
    cam1 = StreamLoad(period_ms=p, next_arrival_ms=p / 2, frame_ms=14.0, running_ms=30.0)
    alone = key_budget_ms([cam0], 0)
    assert key_budget_ms([cam0, cam1], 0, workers=2) == pytest.approx(alone, abs=1e-6)
    assert key_budget_ms([cam0, cam1], 0) < alone  # one worker: the cameras share it
    with pytest.raises(ValueError, match="workers"):
        key_budget_ms([cam0], 0, workers=0)


def test_key_budget_rejects_bad_input():
    load = StreamLoad(period_ms=P30, next_arrival_ms=P30, frame_ms=10.0)
    with pytest.raises(ValueError, match="current"):
        key_budget_ms([load], 1)
    with pytest.raises(ValueError, match="period"):
        key_budget_ms([StreamLoad(period_ms=0.0, next_arrival_ms=0.0, frame_ms=1.0)], 0)


# ---------------------------------------------- the budget policy on a simulated worker
# A deterministic model of the node's worker (up to ``depth`` waiting frames per camera, the
# oldest served first, a camera's oldest waiting frame dropped when a newer one finds its
# queue full; ``workers`` frames at once, each of another camera) with fixed frame costs:
# the scheduler decides, the model keeps the time. No clocks involved.


def run_worker(policy: str, cameras: list[tuple[float, float]], key_ms: float, nonkey_ms: float,
               frames: int, depth: int = 1, workers: int = 1, **cfg) -> list[dict]:
    """cameras: (period, phase) in ms. Returns per camera: key frames, processed, dropped."""
    scheds = [KeyFrameScheduler(ScheduleConfig(policy=policy, **cfg)) for _ in cameras]
    costs = [CostEstimate() for _ in cameras]  # key frame costs, as the pipeline keeps them
    out = [{"keys": 0, "processed": 0, "dropped": 0, "reasons": Counter()} for _ in cameras]
    arrivals = sorted((phase + i * period, c) for c, (period, phase) in enumerate(cameras)
                      for i in range(frames))
    queues: list[list[float]] = [[] for _ in cameras]  # arrivals of the waiting frames
    busy = [0.0] * len(cameras)  # when each camera's frame in hand ends
    last = [None] * len(cameras)
    free = [0.0] * workers  # when each worker is next free
    k = 0
    while k < len(arrivals) or any(queues):
        w = min(range(workers), key=free.__getitem__)
        # the earliest a waiting frame can start: a worker free, its camera's frame in hand
        # done, the frame arrived
        starts = {c: max(free[w], busy[c], q[0]) for c, q in enumerate(queues) if q}
        if k < len(arrivals) and (not starts or arrivals[k][0] < min(starts.values())):
            t, c = arrivals[k]
            k += 1
            last[c] = t
            if len(queues[c]) == depth:  # the oldest waiting frame gives way: dropped
                out[c]["dropped"] += 1
                queues[c].pop(0)
            queues[c].append(t)
            continue
        now = min(starts.values())
        ready = [c for c, t in starts.items() if t <= now]
        c = min(ready, key=lambda i: queues[i][0])
        queues[c].pop(0)
        budget = None
        if policy == "budget":
            mine = scheds[c].propagation_distance
            seen = [i for i in range(len(cameras)) if last[i] is not None]
            loads = [StreamLoad(period_ms=cameras[i][0],
                                next_arrival_ms=last[i] + cameras[i][0] - now,
                                frame_ms=nonkey_ms, depth=depth,
                                waiting_ms=tuple(a - now for a in queues[i]),
                                claim_ms=costs[i].bound if scheds[i].propagation_distance
                                > mine else None,
                                running_ms=busy[i] - now if busy[i] > now else None)
                     for i in seen]
            budget = key_budget_ms(loads, seen.index(c), workers=workers)
        reason = scheds[c].pre_decision(SHAPE, budget_ms=budget, key_cost_ms=costs[c].bound,
                                        key_mean_ms=costs[c].warm_mean)
        scheds[c].commit(is_key=reason is not None)
        if reason is not None:
            costs[c].update(key_ms, cold=reason == "first_frame")
        out[c]["keys"] += reason is not None
        out[c]["reasons"][reason] += 1
        out[c]["processed"] += 1
        free[w] = busy[c] = now + (key_ms if reason is not None else nonkey_ms)
    return out


def test_budget_keys_more_than_fixed_without_dropping_when_there_is_slack():
    # 30 Hz, key 56 ms, propagated 14 ms: a key frame does not fit one period, but the slot
    # and the time saved on propagated frames leave room for one every other frame.
    fixed = run_worker("fixed", [(P30, 0.0)], 56.0, 14.0, 90, key_interval=5)[0]
    budget = run_worker("budget", [(P30, 0.0)], 56.0, 14.0, 90, max_interval=10)[0]
    assert budget["dropped"] == 0 and budget["processed"] == 90
    assert budget["keys"] >= 2 * fixed["keys"] == 36


def test_budget_drops_only_on_forced_key_frames_when_key_frames_never_fit():
    # A key frame (75 ms) longer than two periods at 30 Hz always costs a frame: fixed 5
    # pays on most of its keys, budget only on the ones max_interval forces.
    fixed = run_worker("fixed", [(P30, 0.0)], 75.0, 14.0, 90, key_interval=5)[0]
    budget = run_worker("budget", [(P30, 0.0)], 75.0, 14.0, 90, max_interval=10)[0]
    assert budget["keys"] >= 8  # one key frame at the latest every max_interval + 1 frames
    assert budget["dropped"] <= budget["keys"] < fixed["dropped"]


def test_a_deeper_queue_lets_budget_key_without_dropping_where_one_frame_cannot():
    # 95 ms key frames at 30 Hz: longer than two periods, so with a one-frame queue every
    # key frame costs a frame. A queue of three holds the frames that arrive meanwhile, and
    # the propagated ones after the key frame catch up: budget keys as often as the time
    # allows without a drop, more often than fixed 5, while fixed 4 falls behind and drops.
    one = run_worker("budget", [(P30, 0.0)], 95.0, 18.0, 90, depth=1, max_interval=10)[0]
    deep = run_worker("budget", [(P30, 0.0)], 95.0, 18.0, 90, depth=3, max_interval=10)[0]
    fixed5 = run_worker("fixed", [(P30, 0.0)], 95.0, 18.0, 90, depth=3, key_interval=5)[0]
    fixed4 = run_worker("fixed", [(P30, 0.0)], 95.0, 18.0, 90, depth=3, key_interval=4)[0]
    assert one["dropped"] >= one["reasons"]["max_interval"] > 0 and one["reasons"]["slack"] == 0
    assert deep["dropped"] == 0 and deep["processed"] == 90 and deep["reasons"]["slack"] > 0
    assert deep["keys"] > fixed5["keys"] and deep["keys"] > 2 * one["keys"]
    assert fixed4["dropped"] > 0


def test_budget_shares_one_worker_between_two_cameras_without_dropping():
    # Two cameras at 15 Hz, the second half a period after the first, one worker.
    cams = [(2 * P30, 0.0), (2 * P30, P30)]
    out = run_worker("budget", cams, 56.0, 14.0, 45, max_interval=10)
    fixed = run_worker("fixed", cams, 56.0, 14.0, 45, key_interval=5)
    for cam, ref in zip(out, fixed, strict=True):
        assert cam["dropped"] == 0 and cam["processed"] == 45
        assert cam["keys"] > ref["keys"]


def test_two_workers_hold_two_cameras_that_one_worker_cannot():
    # Two cameras at 15 Hz, key 120 ms, propagated 25 ms: one worker falls behind on every
    # key frame; two hold both cameras without a drop, and budget keys more often than
    # fixed 5 does.
    cams = [(2 * P30, 0.0), (2 * P30, P30)]
    one = run_worker("budget", cams, 120.0, 25.0, 90, max_interval=10)
    two = run_worker("budget", cams, 120.0, 25.0, 90, workers=2, max_interval=10)
    fixed = run_worker("fixed", cams, 120.0, 25.0, 90, workers=2, key_interval=5)
    assert all(cam["dropped"] > 0 for cam in one)
    for cam, ref in zip(two, fixed, strict=True):
        assert cam["dropped"] == ref["dropped"] == 0 and cam["processed"] == 90
        assert cam["keys"] > ref["keys"]


def test_budget_keys_every_frame_when_the_machine_is_fast_enough():
    out = run_worker("budget", [(500.0, 0.0)], 56.0, 14.0, 10, max_interval=10,
                     key_interval=1)[0]
    assert out["keys"] == 10 and out["dropped"] == 0
    assert set(out["reasons"]) == {"first_frame", "interval", "slack"}


def test_budget_propagates_every_frame_but_the_forced_ones_when_overloaded():
    # Propagated frames alone cannot keep up (40 ms at 30 Hz): no key frame ever fits.
    out = run_worker("budget", [(P30, 0.0)], 56.0, 40.0, 90, max_interval=10)[0]
    # the first key_interval one tells the cost; after it, only max_interval keys
    assert out["reasons"]["first_frame"] == out["reasons"]["interval"] == 1
    assert out["reasons"]["max_interval"] >= 5 and out["reasons"]["slack"] == 0
    # Propagated frames that keep up with a little to spare (30 ms) bank it: after a
    # forced key frame the lead grows back until a key frame fits again.
    out = run_worker("budget", [(P30, 0.0)], 56.0, 30.0, 90, max_interval=10)[0]
    assert out["reasons"]["slack"] > 0 and out["dropped"] == 0
