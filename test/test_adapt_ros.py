"""``davss adapt`` on a rosbag2, and the whole chain through ROS: a video made into a bag,
adapted on that bag, the adapted checkpoint in the node, ``davss replay`` scoring its
agreement with the teacher (a per-frame replay of the same bag)."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")
pytest.importorskip("rosbags", reason="rosbags is not installed")

from test_adapt import FAST, FRAMES, H, W, small_checkpoint, write_video  # noqa: E402

from davss_ros.bag.replay import ReplayOptions, replay  # noqa: E402
from davss_ros.checkpoint import load_checkpoint  # noqa: E402
from davss_ros.cli import main as davss  # noqa: E402
from davss_ros.data.synthetic import SceneConfig, render_clip  # noqa: E402
from davss_ros.tools.harness import unique_domain_id  # noqa: E402


def _domain_id() -> int:
    return unique_domain_id()


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt_ros")
    clip = render_clip(SceneConfig(height=H, width=W, frames=FRAMES, seed=3))
    video = write_video(root / "clip.avi", clip.images)
    out = root / "bag"
    assert davss(["make-bag", "--video", str(video), "-o", str(out), "--no-progress"]) == 0
    return {"root": root, "bag": out, "teacher": small_checkpoint(root / "teacher.pt")}


def test_a_bag_without_the_topic_is_a_clear_error_before_any_training(bag, tmp_path, capsys):
    out = tmp_path / "out.pt"
    code = davss(["adapt", "--checkpoint", str(bag["teacher"]), "--bag", str(bag["bag"]),
                  "--topic", "/front/image_raw", "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("davss adapt: error: ")
    assert "topic /front/image_raw is not in the bag; topics in the bag: /camera/image_raw" \
        in err, err
    assert "Traceback" not in err and not out.exists()
    assert not (tmp_path / "out.pt.work" / "train").exists()


def test_video_to_bag_to_adapt_to_node_to_replay_reports_agreement(bag, capsys):
    root = bag["root"]
    adapted = root / "adapted.pt"
    code = davss(["adapt", "--checkpoint", str(bag["teacher"]), "--bag", str(bag["bag"]),
                  "--topic", "/camera/image_raw", "--out", str(adapted), *FAST])
    assert code == 0, capsys.readouterr().err
    meta = load_checkpoint(adapted).meta["adapt"]
    assert meta["frames"] == FRAMES and meta["input"].startswith(f"bag {bag['bag']}")

    def play(out, checkpoint, mode, reference=None):
        return replay(ReplayOptions(
            bag=bag["bag"], out=out, checkpoint=str(checkpoint), mode=mode,
            params=["model.device:=cpu"], progress=False, plots=False,
            domain_id=_domain_id(), timeout=60.0, reference=reference))

    teacher = play(root / "teacher", bag["teacher"], "per_frame")
    assert teacher["processed"] == FRAMES
    report = play(root / "davss", adapted, "davss", reference=root / "teacher")
    assert report["processed"] == FRAMES and report["pipeline_mode"] == "davss"
    agreement = report["reference"]
    assert agreement["frames"] == FRAMES
    assert 0.0 < agreement["pixels_equal_pct"] <= 100.0
