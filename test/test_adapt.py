"""``davss adapt``: a real tiny model as teacher, a real 20-frame video, real training.

The teacher is a small untrained DeepLabv3+ (64x128 input); its labels are what the
non-key networks learn. Iterations are a handful: these tests check the mechanism
(caching, splits, validation, keep-best, resume, the ONNX teacher, bad input), not how much
adaptation gains (docs/issue13_figures.md has that).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from davss_ros.checkpoint import load_checkpoint, save_checkpoint
from davss_ros.cli import main as davss
from davss_ros.config import load_config
from davss_ros.data.cityscapes import open_recording
from davss_ros.data.synthetic import SceneConfig, render_clip
from davss_ros.evaluate.pda import untrained_checkpoint

H, W = 64, 128
FRAMES = 20
SMALL = {"preset": "cpu", "model": {"input_height": H, "input_width": W,
                                    "segmenter": {"aspp_channels": 16, "decoder_channels": 16}}}
FAST = ["--dmnet-iterations", "4", "--cfnet-iterations", "4", "--validate-every", "2",
        "--device", "cpu", "--threads", "1", "--no-progress"]


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    """An MJPG .avi of the frames (lossy, as a camera's video is)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def small_checkpoint(path: Path, *, num_classes: int = 19, seed: int = 1,
                     distortion: str = "paper") -> Path:
    data = json.loads(json.dumps(SMALL))
    data["model"]["num_classes"] = num_classes
    data["model"]["distortion"] = distortion
    cfg = load_config(data)
    return save_checkpoint(path, config=cfg, state_dict=untrained_checkpoint(cfg, seed=seed)
                           .state_dict)


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    teacher = small_checkpoint(root / "teacher.pt")
    clip = render_clip(SceneConfig(height=H, width=W, frames=FRAMES, seed=3))
    video = write_video(root / "clip.avi", clip.images)
    return {"root": root, "teacher": teacher, "video": video}


@pytest.fixture(scope="module")
def adapted(assets):
    out = assets["root"] / "run" / "adapted.pt"
    code = davss(["adapt", "--checkpoint", str(assets["teacher"]), "--video",
                  str(assets["video"]), "--out", str(out), *FAST])
    assert code == 0
    return out


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_20_frame_video_is_cached_split_by_time_with_the_teachers_labels(assets, adapted):
    from davss_ros.pipeline import VideoSegmenter

    data = adapted.with_name(adapted.name + ".work") / "data"
    desc = json.loads((data / "recording.json").read_text())
    assert desc["frames"] == FRAMES
    assert desc["splits"] == {"train": [0, 10], "val": [10, 20]}  # the last frames held out
    assert desc["snippet_length"] == 10 and desc["annotated_index"] == 9
    train, val = open_recording(data, "train"), open_recording(data, "val")
    assert len(train) == len(val) == 1
    video = read_video(assets["video"])
    teacher = VideoSegmenter.from_checkpoint(assets["teacher"], mode="per_frame",
                                             device="cpu")
    for split, first in ((train, 0), (val, 10)):
        for k in (0, 9):
            frame = split.load_frame(0, k)
            np.testing.assert_array_equal(frame, video[first + k])  # same size: unchanged
            teacher.reset()
            np.testing.assert_array_equal(split.dense_label(0, k), teacher.step(frame).labels)
    np.testing.assert_array_equal(val.load_label(0), val.dense_label(0, 9))


def test_the_adapted_checkpoint_is_the_best_held_out_weights_and_loads_everywhere(
        assets, adapted, capsys):
    from davss_ros.pipeline import VideoSegmenter

    work = adapted.with_name(adapted.name + ".work")
    ck = load_checkpoint(adapted)
    info = ck.meta["adapt"]
    history = json.loads((work / "state.json").read_text())["history"]
    rows = (work / "validation.csv").read_text().splitlines()
    assert rows[0] == "stage,iteration,agreement,seconds,best"
    # the start, then every 2 iterations of stages 2 and 3
    assert [(h["stage"], h["iteration"]) for h in history] == [
        (-1, 0), (2, 2), (2, 4), (3, 2), (3, 4)]
    assert len(rows) == 1 + len(history)
    best = max(history, key=lambda h: h["agreement"])
    assert info["start_agreement"] == history[0]["agreement"]
    assert info["best_agreement"] == best["agreement"]
    start = load_checkpoint(assets["teacher"])
    if info["improved"]:
        assert info["best_at"] == {"stage": best["stage"], "iteration": best["iteration"]}
        assert state_equal(ck.state_dict, load_checkpoint(work / "best.pt").state_dict)
        assert not state_equal(ck.state_dict, start.state_dict)
    else:
        assert state_equal(ck.state_dict, start.state_dict)
    # the segmenter (the teacher) is untouched
    seg_keys = [k for k in start.state_dict if k.startswith("segmenter.")]
    assert seg_keys and all(torch.equal(ck.state_dict[k], start.state_dict[k]) for k in seg_keys)
    # the pipeline runs it...
    seg = VideoSegmenter.from_checkpoint(adapted, device="cpu")
    frames = read_video(assets["video"])
    labels = [seg.step(f).labels for f in frames[:3]]
    assert labels[0].shape == (H, W)
    # ...and eval scores it on the held-out frames of the recording
    capsys.readouterr()
    code = davss(["eval", "--checkpoint", str(adapted), "--dataset", "recording", "--root",
                  str(work / "data"), "--split", "val", "--reference", "teacher",
                  "--modes", "davss", "--distances", "9", "--no-progress",
                  "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    agree = [line for line in out.splitlines() if line.startswith("davss")][-1]
    assert float(agree.split()[1]) == pytest.approx(info["best_agreement"], abs=0.01)


def test_when_nothing_beats_the_start_it_writes_the_starting_weights_unchanged(
        assets, tmp_path, capsys):
    # A still camera: the warped key labels are the teacher's own on every frame, so the
    # start agrees 100 % and no training can beat it.
    still = render_clip(SceneConfig(height=H, width=W, frames=1, seed=4)).images[0]
    video = write_video(tmp_path / "still.avi", [still] * FRAMES)
    out = tmp_path / "still.pt"
    code = davss(["adapt", "--checkpoint", str(assets["teacher"]), "--video", str(video),
                  "--out", str(out), *FAST])
    text = capsys.readouterr().out
    assert code == 0
    ck = load_checkpoint(out)
    assert ck.meta["adapt"]["improved"] is False
    assert ck.meta["adapt"]["start_agreement"] == 100.0
    assert state_equal(ck.state_dict, load_checkpoint(assets["teacher"]).state_dict)
    assert "nothing beat the starting weights" in text


def test_an_interrupted_run_resumes_to_the_same_weights(assets, adapted, tmp_path, capsys):
    out = tmp_path / "resumed.pt"
    args = ["adapt", "--checkpoint", str(assets["teacher"]), "--video", str(assets["video"]),
            "--out", str(out), *FAST]
    assert davss([*args, "--stop-after", "3"]) == 0
    text = capsys.readouterr().out
    assert "stopped after the requested steps" in text and not out.exists()
    work = tmp_path / "resumed.pt.work"
    assert (work / "train" / "stage2.state.pt").is_file()
    assert davss(args) == 0
    text = capsys.readouterr().out
    assert "stage 2: resuming at iteration 3" in text
    assert "frames and teacher labels: 20 frames cached" in text
    history = json.loads((work / "state.json").read_text())["history"]
    once = json.loads((adapted.with_name(adapted.name + ".work") / "state.json").read_text())
    # validated where the uninterrupted run was, once each, with the same scores
    assert [(h["stage"], h["iteration"], h["agreement"]) for h in history] == [
        (h["stage"], h["iteration"], h["agreement"]) for h in once["history"]]
    a, b = load_checkpoint(out).state_dict, load_checkpoint(adapted).state_dict
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_other_settings_in_the_same_work_folder_train_again_on_the_cached_frames(
        assets, tmp_path, capsys):
    out = tmp_path / "again.pt"
    args = ["adapt", "--checkpoint", str(assets["teacher"]), "--video", str(assets["video"]),
            "--out", str(out), *FAST]
    assert davss(args) == 0
    capsys.readouterr()
    assert davss([*args, "--cfnet-iterations", "2"]) == 0
    text = capsys.readouterr().out
    assert "frames and teacher labels: 20 frames cached" in text
    assert "training settings or starting weights changed; training again" in text
    history = json.loads((tmp_path / "again.pt.work" / "state.json").read_text())["history"]
    assert [(h["stage"], h["iteration"]) for h in history] == [
        (-1, 0), (2, 2), (2, 4), (3, 2)]  # the record of the first run is gone


def test_an_onnx_teacher_is_the_segmenter_of_training_and_the_checkpoint_references_it(
        assets, tmp_path):
    pytest.importorskip("onnxruntime")
    from davss_ros.checkpoint import file_sha256
    from davss_ros.export import export_key_segmenter
    from davss_ros.pipeline import VideoSegmenter

    onnx = tmp_path / "teacher.onnx"
    export_key_segmenter(assets["teacher"], onnx, "onnx", frames=2)
    start = small_checkpoint(tmp_path / "start.pt", seed=7)  # other segmenter weights
    out = tmp_path / "onnx_adapted.pt"
    code = davss(["adapt", "--key-segmenter", str(onnx), "--init", str(start), "--video",
                  str(assets["video"]), "--out", str(out), *FAST])
    assert code == 0
    ck = load_checkpoint(out)
    assert ck.meta["key_segmenter"] == {"path": "teacher.onnx", "sha256": file_sha256(onnx),
                                        "num_classes": 19}
    # the labels learned from are the ONNX teacher's, not the start checkpoint's segmenter
    data = tmp_path / "onnx_adapted.pt.work" / "data"
    frame = open_recording(data, "train").load_frame(0, 5)
    by_onnx = VideoSegmenter.from_checkpoint(start, mode="per_frame", key_segmenter=onnx,
                                             device="cpu").step(frame).labels
    by_start = VideoSegmenter.from_checkpoint(start, mode="per_frame",
                                              device="cpu").step(frame).labels
    assert not np.array_equal(by_onnx, by_start)
    np.testing.assert_array_equal(open_recording(data, "train").dense_label(0, 5), by_onnx)
    # the adapted checkpoint runs its key frames on the ONNX file it references
    seg = VideoSegmenter.from_checkpoint(out, mode="per_frame", device="cpu")
    assert seg.key_segmenter.kind == "onnx"
    np.testing.assert_array_equal(seg.step(frame).labels, by_onnx)


def test_a_signals_model_also_retrains_its_distortion_estimator_from_the_teacher(
        assets, tmp_path):
    teacher = small_checkpoint(tmp_path / "signals.pt", distortion="signals")
    out = tmp_path / "signals_adapted.pt"
    code = davss(["adapt", "--checkpoint", str(teacher), "--video", str(assets["video"]),
                  "--out", str(out), *FAST, "--refiner-iterations", "2"])
    assert code == 0
    history = json.loads((tmp_path / "signals_adapted.pt.work" / "state.json").read_text())
    assert [(h["stage"], h["iteration"]) for h in history["history"]][-1] == (4, 2)
    stage4 = (tmp_path / "signals_adapted.pt.work" / "train" / "stage4.csv").read_text()
    assert stage4.splitlines()[0].startswith("iteration,CE,BCE")
    ck = load_checkpoint(out)
    assert ck.config.model.distortion == "signals"
    assert ck.meta["train_config"]["stages"][4]["target"] == "segmenter"


@pytest.mark.parametrize("case", ["unreadable_video", "too_few_frames", "other_classes"])
def test_bad_input_is_one_clear_error_before_any_training(assets, tmp_path, capsys, case):
    args = ["--checkpoint", str(assets["teacher"])]
    if case == "unreadable_video":
        video = tmp_path / "broken.avi"
        video.write_bytes(b"this is not a video" * 100)
        message = f"OpenCV cannot open {video}"
    elif case == "too_few_frames":
        clip = render_clip(SceneConfig(height=H, width=W, frames=2, seed=3))
        video = write_video(tmp_path / "short.avi", clip.images)
        message = ("the recording has 2 frame(s); adapting needs at least 20: one training "
                   "snippet of 10 frames")
    else:
        pytest.importorskip("onnxruntime")
        from davss_ros.export import export_key_segmenter

        onnx = tmp_path / "teacher.onnx"
        export_key_segmenter(assets["teacher"], onnx, "onnx", frames=2)
        five = small_checkpoint(tmp_path / "five.pt", num_classes=5)
        args = ["--key-segmenter", str(onnx), "--init", str(five)]
        video = assets["video"]
        message = (f"the teacher {onnx} gives 19 classes, the starting checkpoint {five} "
                   f"has 5")
    out = tmp_path / "out.pt"
    code = davss(["adapt", *args, "--video", str(video), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("davss adapt: error: ") and message in err, err
    assert "Traceback" not in err
    assert not out.exists()
    assert not (tmp_path / "out.pt.work" / "train").exists()  # nothing trained
