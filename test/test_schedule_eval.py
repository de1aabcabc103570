"""Fixed vs adaptive key-frame scheduling over whole synthetic clips, on tiny untrained
models, and the matched-cost comparison on hand-made numbers."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from davss_ros.cli import main
from davss_ros.config import ScheduleConfig, load_config
from davss_ros.data.cityscapes import CityscapesSequences
from davss_ros.data.synthetic import write_cityscapes_layout
from davss_ros.evaluate.metrics import ConfusionMatrix
from davss_ros.evaluate.pda import untrained_checkpoint
from davss_ros.evaluate.schedule_eval import (
    ClipFrames,
    ScheduleResult,
    build_segmenter,
    evaluate_schedules,
    interpolate,
    iter_clips,
    matched_cost_rows,
    mean_cost,
    sweep_schedules,
)

H, W = 64, 128  # the smallest input the networks take is 64 (six stride-2 stages)
FRAMES = 7
TINY = {"model": {"input_height": H, "input_width": W,
                  "segmenter": {"aspp_channels": 16, "decoder_channels": 16}}}
NO_CUT = {"scene_cut_factor": 1.0e12, "scene_cut_min_error": 1.0e12}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_cityscapes_layout(root, "val", n_clips=2, height=H, width=W, seed=1, frames=20,
                            all_labels=True, progress=False)
    return root


@pytest.fixture(scope="module")
def clips(root):
    return list(iter_clips(CityscapesSequences(root, "val"), frames=FRAMES))


@pytest.fixture(scope="module")
def segmenter():
    return build_segmenter(untrained_checkpoint(load_config(TINY)), device="cpu")


@pytest.fixture(scope="module")
def reference():
    # the same seeded weights as ``segmenter``: its key frames are the reference's labels
    return build_segmenter(untrained_checkpoint(load_config(TINY)), mode="per_frame",
                           device="cpu")


def test_clips_carry_every_frame_and_its_label(clips):
    assert len(clips) == 2
    for clip in clips:
        assert len(clip.frames) == len(clip.labels) == FRAMES
        assert all(f.shape == (H, W, 3) for f in clip.frames)
        assert all(lab.shape == (H, W) for lab in clip.labels)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 10])
def test_fixed_interval_k_keys_the_first_frame_and_every_kth(segmenter, clips, k):
    res = evaluate_schedules(segmenter, clips, {
        "f": ScheduleConfig(policy="fixed", key_interval=k, **NO_CUT)})["f"]
    per_clip = len(range(0, FRAMES, k))  # frames 0, k, 2k, ...
    assert res.frames == 2 * FRAMES and res.clips == 2
    assert res.key_frames == 2 * per_clip
    assert res.key_fraction == pytest.approx(per_clip / FRAMES)
    # the first frame of each clip is key because the segmenter was reset before it
    assert res.key_reasons == Counter({"reset": 2, "interval": 2 * (per_clip - 1)}) - Counter()


def test_every_labelled_pixel_of_every_frame_is_scored(segmenter, clips):
    res = evaluate_schedules(segmenter, clips, {"f": ScheduleConfig(key_interval=3)})["f"]
    labelled = sum(int((lab != 255).sum()) for c in clips for lab in c.labels)
    assert res.scored_frames == 2 * FRAMES and res.matrix.total == labelled
    assert 0.0 <= res.miou() <= 1.0


def test_adaptive_threshold_zero_makes_every_frame_key(segmenter, clips):
    # a frame is key when the distortion metric is strictly above the threshold, and DMNet's
    # mean on a moving scene is above 0
    res = evaluate_schedules(segmenter, clips, {
        "a": ScheduleConfig(policy="adaptive", threshold=0.0, max_interval=50, **NO_CUT)})["a"]
    assert res.key_fraction == 1.0
    assert res.key_reasons == Counter({"reset": 2, "distortion": 2 * (FRAMES - 1)})


def test_adaptive_threshold_one_is_the_fixed_schedule_of_max_interval_plus_one(segmenter,
                                                                                clips):
    # the mean of M in [0, 1] never exceeds 1: only max_interval makes key frames, at
    # 0, m + 1, 2 (m + 1), ..., the same frames, hence the same predictions, as fixed m + 1
    m = 2
    res = evaluate_schedules(segmenter, clips, {
        "a": ScheduleConfig(policy="adaptive", threshold=1.0, max_interval=m, **NO_CUT),
        "f": ScheduleConfig(policy="fixed", key_interval=m + 1, **NO_CUT)})
    assert res["a"].key_frames == res["f"].key_frames == 2 * len(range(0, FRAMES, m + 1))
    np.testing.assert_array_equal(res["a"].matrix.matrix, res["f"].matrix.matrix)


ONLY_MAX = ScheduleConfig(policy="adaptive", threshold=1.0, max_interval=50, **NO_CUT)


def _error(labels, label):
    scored = label != 255
    return float((labels[scored] != label[scored]).mean())


def test_an_oracle_margin_of_minus_one_keys_every_other_frame_and_of_one_never(
        segmenter, reference, clips):
    # any error difference exceeds -1: every non-key frame makes the next one key, the
    # frames of fixed k=2; none exceeds 1: only max_interval is left, the frames of fixed 3
    m = 2
    only_max = ScheduleConfig(policy="adaptive", threshold=1.0, max_interval=m, **NO_CUT)
    res = evaluate_schedules(segmenter, clips, {
        "o-": only_max, "o+": only_max,
        "f2": ScheduleConfig(policy="fixed", key_interval=2, **NO_CUT),
        "f3": ScheduleConfig(policy="fixed", key_interval=m + 1, **NO_CUT)},
        oracles={"o-": -1.0, "o+": 1.0}, reference=reference)
    assert res["o-"].key_frames == res["f2"].key_frames == 2 * len(range(0, FRAMES, 2))
    assert res["o-"].key_reasons == Counter({"reset": 2, "oracle": 2 * (FRAMES // 2)})
    np.testing.assert_array_equal(res["o-"].matrix.matrix, res["f2"].matrix.matrix)
    assert res["o+"].key_frames == res["f3"].key_frames
    assert "oracle" not in res["o+"].key_reasons
    np.testing.assert_array_equal(res["o+"].matrix.matrix, res["f3"].matrix.matrix)
    assert (res["o-"].oracle_threshold, res["f2"].oracle_threshold) == (-1.0, None)


def test_the_oracle_keys_the_frame_after_the_first_one_worse_than_per_frame_by_the_margin(
        segmenter, reference, clips):
    clip = clips[0]
    saved = segmenter.config.schedule
    segmenter.set_schedule(ONLY_MAX)
    segmenter.reset()
    reference.reset()
    try:
        gaps = [_error(segmenter.step(im).labels, lab) - _error(reference.step(im).labels, lab)
                for im, lab in zip(clip.frames, clip.labels, strict=True)]
    finally:
        segmenter.set_schedule(saved)
        segmenter.reset()
    assert gaps[0] == 0.0  # the key frame is the per-frame segmenter's own
    worst = max(gaps[1:-1])
    j = gaps.index(worst, 1)  # the first frame that exceeds the margin below
    margin = worst - 1e-9
    for length, keys in ((j + 1, 1), (j + 2, 2)):
        part = ClipFrames(clip.name, clip.frames[:length], clip.labels[:length])
        res = evaluate_schedules(segmenter, [part], {"o": ONLY_MAX}, oracles={"o": margin},
                                 reference=reference)["o"]
        assert res.key_frames == keys
    assert res.key_reasons == Counter({"reset": 1, "oracle": 1})


def test_oracle_schedules_are_checked_before_any_clip_is_streamed(segmenter, reference):
    never = iter(())  # would raise nothing; the checks come first
    with pytest.raises(ValueError, match="need a reference"):
        evaluate_schedules(segmenter, never, {"o": ONLY_MAX}, oracles={"o": 0.0})
    with pytest.raises(ValueError, match="in \\[-1, 1\\]"):
        evaluate_schedules(segmenter, never, {"o": ONLY_MAX}, oracles={"o": 1.5},
                           reference=reference)
    with pytest.raises(ValueError, match="not run: x"):
        evaluate_schedules(segmenter, never, {"o": ONLY_MAX}, oracles={"x": 0.0},
                           reference=reference)


def test_sweep_keeps_the_base_settings_and_switches_scene_cuts_off_on_request(segmenter,
                                                                               clips):
    base = ScheduleConfig(max_interval=4, metric="ratio", scene_cut_factor=3.0)
    on = sweep_schedules(segmenter, clips[:1], intervals=[2, 5], thresholds=[0.3],
                         base=base)
    assert [r.name for r in on.fixed] == ["fixed k=2", "fixed k=5"]
    assert [r.schedule.key_interval for r in on.fixed] == [2, 5]
    (ada,) = on.adaptive
    assert ada.name == "adaptive t=0.3" and ada.schedule.policy == "adaptive"
    assert (ada.schedule.threshold, ada.schedule.max_interval, ada.schedule.metric) == (
        0.3, 4, "ratio")
    assert all(r.schedule.scene_cut_factor == 3.0 for r in on.fixed + on.adaptive)
    off = sweep_schedules(segmenter, clips[:1], intervals=[2], thresholds=[], base=base,
                          scene_cut=False)
    assert off.fixed[0].schedule.scene_cut_factor == 1.0e12
    assert off.fixed[0].schedule.scene_cut_min_error == 1.0e12
    # the segmenter's own schedule is back after a sweep
    assert segmenter.config.schedule == build_segmenter(
        untrained_checkpoint(load_config(TINY)), device="cpu").config.schedule


def test_clip_and_frame_limits_and_sparse_labels(root):
    dataset = CityscapesSequences(root, "val")
    assert len(list(iter_clips(dataset, clips=1, frames=3))) == 1
    with pytest.raises(ValueError, match="frames must be >= 1"):
        iter_clips(dataset, frames=0)
    # without per-frame labels only frame 19 is labelled, so the stream has to reach it
    dataset.has_dense_labels = False
    with pytest.raises(ValueError, match="at least 20 frames"):
        iter_clips(dataset, frames=FRAMES)
    (clip,) = iter_clips(dataset, clips=1, frames=20)
    assert [i for i, lab in enumerate(clip.labels) if lab is not None] == [19]


def test_interpolation_on_hand_made_points():
    points = [(3.0, 30.0), (1.0, 10.0), (2.0, 25.0)]  # any order
    assert interpolate(points, 1.5) == pytest.approx(17.5)
    assert interpolate(points, 2.5) == pytest.approx(27.5)
    assert interpolate(points, 3.0) == pytest.approx(30.0)
    assert interpolate(points, 1.0) == pytest.approx(10.0)
    assert interpolate(points, 0.5) is None and interpolate(points, 3.5) is None
    # two schedules of one cost (short clips) count as their mean
    assert interpolate([(1.0, 10.0), (1.0, 20.0), (2.0, 30.0)], 1.5) == pytest.approx(22.5)
    assert interpolate([(1.0, math.nan), (2.0, 30.0)], 1.5) is None
    assert interpolate([], 1.0) is None


def _result(name, policy, keys, frames, miou, **schedule):
    # a two-class matrix [[a, b], [b, a]] with a + 2b = 100 has IoU a / 100 for both classes
    a = round(100 * miou)
    matrix = ConfusionMatrix(2)
    matrix.matrix[:] = [[a, (100 - a) // 2], [(100 - a) // 2, a]]
    return ScheduleResult(name, ScheduleConfig(policy=policy, **schedule), matrix,
                          frames=frames, key_frames=keys)


def test_matched_cost_reads_the_fixed_curve_at_each_adaptive_cost():
    fixed = [_result("fixed k=1", "fixed", 10, 10, 0.8, key_interval=1),
             _result("fixed k=5", "fixed", 2, 10, 0.6, key_interval=5)]
    adaptive = [_result("adaptive t=0.1", "adaptive", 5, 10, 0.7, threshold=0.1),
                _result("adaptive t=0.5", "adaptive", 1, 10, 0.5, threshold=0.5)]
    assert mean_cost(0.5, 10.0, 1.0) == pytest.approx(5.5)
    rows = matched_cost_rows(fixed, adaptive, key_cost=10.0, nonkey_cost=1.0)
    # fixed costs: 10 (k=1) and 0.2 * 10 + 0.8 * 1 = 2.8 (k=5); adaptive t=0.1 costs 5.5,
    # where the fixed curve is 60 + (80 - 60) * (5.5 - 2.8) / (10 - 2.8) = 67.5
    first = rows[0]
    assert (first["threshold"], first["key_fraction"], first["cost"]) == (0.1, 0.5, 5.5)
    assert first["adaptive_miou"] == 70.0 and first["fixed_miou"] == 67.5
    assert first["difference"] == 2.5
    # t=0.5 costs 1.9, below the cheapest fixed schedule: no extrapolation
    assert rows[1]["cost"] == pytest.approx(1.9)
    assert rows[1]["fixed_miou"] is None and rows[1]["difference"] is None
    assert rows[1]["adaptive_miou"] == 50.0


def test_davss_eval_schedule_sweep_prints_and_writes_json(root, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "sweep.json"
    rc = main(["eval", "--schedule-sweep", "--untrained", "--config", str(cfg),
               "--root", str(root), "--clips", "1", "--frames", "4", "--intervals", "1,2",
               "--thresholds", "0,1", "--max-interval", "1", "--no-scene-cut",
               "--device", "cpu", "--no-progress", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["cost"]["units"] == "GFLOPs" and report["cost"]["key"] > 0
    assert [r["name"] for r in report["fixed"]] == ["fixed k=1", "fixed k=2"]
    assert [r["key_fraction"] for r in report["fixed"]] == [1.0, 0.5]
    assert [r["key_fraction"] for r in report["adaptive"]] == [1.0, 0.5]
    assert report["base_schedule"]["max_interval"] == 1 and report["scene_cut"] is False
    # threshold 1 with max_interval 1 is fixed k=2: same cost, same mIoU, difference 0
    row = report["matched"][1]
    assert row["fixed_miou"] == row["adaptive_miou"] and row["difference"] == 0.0
    table = capsys.readouterr().out
    assert "fixed k=2" in table and "adaptive t=1" in table and "same mean cost" in table
    rc = main(["eval", "--schedule-sweep", "--untrained", "--config", str(cfg),
               "--root", str(root), "--costs", "3", "--device", "cpu", "--no-progress"])
    assert rc == 2 and "--costs" in capsys.readouterr().err


def test_davss_eval_schedule_sweep_runs_oracle_schedules_on_request(root, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "sweep.json"
    args = ["eval", "--schedule-sweep", "--untrained", "--config", str(cfg), "--root",
            str(root), "--clips", "1", "--frames", "4", "--intervals", "1,2,4",
            "--thresholds", "1", "--max-interval", "5", "--no-scene-cut", "--device", "cpu",
            "--no-progress"]
    assert main(args + ["--oracle-thresholds=-1,1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # -1: frames 0 and 2 are key (fixed k=2); 1: frame 0 only (fixed k=4)
    assert [r["key_fraction"] for r in report["oracle"]] == [0.5, 0.25]
    assert [r["oracle_threshold"] for r in report["oracle"]] == [-1.0, 1.0]
    rows = report["oracle_matched"]
    assert [r["threshold"] for r in rows] == [-1.0, 1.0]
    fixed = {r["name"]: r["miou"] for r in report["fixed"]}
    assert [r["adaptive_miou"] for r in rows] == [fixed["fixed k=2"], fixed["fixed k=4"]]
    assert [r["difference"] for r in rows] == [0.0, 0.0]
    assert "oracle (knows the labels" in capsys.readouterr().out
    assert main(args + ["--oracle-thresholds", "2"]) == 2
    assert "margin must be in [-1, 1]" in capsys.readouterr().err
    assert main(args) == 0
    assert "oracle" not in capsys.readouterr().out
