"""``davss replay``: a real bag through the real node over FastDDS, with a tiny real model.

The node runs in-process in its own rclpy Context (its own DDS participant) and the player
in another, so every frame and output crosses the middleware. Each test process uses its
own ROS_DOMAIN_ID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")
pytest.importorskip("rosbags", reason="rosbags is not installed")

from rosbags.rosbag2 import Reader  # noqa: E402

from davss_ros.bag.io import AtomicBagWriter, typestore  # noqa: E402
from davss_ros.bag.make import synthetic_frames, write_bag  # noqa: E402
from davss_ros.bag.replay import ReplayError, ReplayOptions, replay  # noqa: E402
from davss_ros.bag.report import pct  # noqa: E402
from davss_ros.cli import main as davss  # noqa: E402
from davss_ros.config import ScheduleConfig, load_config  # noqa: E402
from davss_ros.evaluate.metrics import ConfusionMatrix  # noqa: E402
from davss_ros.tools.harness import unique_domain_id  # noqa: E402

H, W = 64, 128
FRAMES = 24
START_NS = 1_000 * 1_000_000_000
SMALL_MODEL_YAML = """\
preset: cpu
model:
  input_height: 64
  input_width: 128
  segmenter:
    aspp_channels: 16
    decoder_channels: 16
"""


def _domain_id() -> int:
    return unique_domain_id()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A small labelled bag and a checkpoint of seeded untrained weights (shared weights)."""
    from davss_ros.checkpoint import save_checkpoint
    from davss_ros.evaluate.pda import untrained_checkpoint

    root = tmp_path_factory.mktemp("replay")
    yaml_path = root / "small.yaml"
    yaml_path.write_text(SMALL_MODEL_YAML)
    cfg = load_config(str(yaml_path))
    ck = untrained_checkpoint(cfg, seed=1)
    ckpt = save_checkpoint(root / "small.pt", config=cfg, state_dict=ck.state_dict)
    bag = root / "bag"
    write_bag(bag, synthetic_frames(FRAMES, H, W, seed=5), rate=30.0, start_ns=START_NS)
    return {"root": root, "bag": bag, "checkpoint": ckpt, "yaml": yaml_path}


def _options(assets, out: Path, **kw) -> ReplayOptions:
    base = dict(bag=assets["bag"], out=out, checkpoint=str(assets["checkpoint"]),
                params=["model.device:=cpu"], progress=False, domain_id=_domain_id(),
                timeout=60.0)
    base.update(kw)
    return ReplayOptions(**base)


@pytest.fixture(scope="module")
def closed_loop(assets):
    out = assets["root"] / "closed"
    report = replay(_options(assets, out, json_path=assets["root"] / "copy.json"))
    return out, report


def _input_frames(bag: Path):
    ts = typestore()
    images, gts = [], {}
    with Reader(bag) as r:
        for conn, _, raw in r.messages():
            m = ts.deserialize_cdr(raw, conn.msgtype)
            stamp = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
            if conn.topic == "/camera/image_raw":
                images.append((stamp, m.data.reshape(H, W, 3).copy()))
            else:
                gts[stamp] = m.data.reshape(H, W).copy()
    return images, gts


def _output_messages(bag: Path) -> dict[str, list[tuple[int, object]]]:
    ts = typestore()
    out: dict[str, list] = {}
    with Reader(bag) as r:
        for conn, t, raw in r.messages():
            out.setdefault(conn.topic.rsplit("/", 1)[-1], []).append(
                (t, ts.deserialize_cdr(raw, conn.msgtype)))
    return out


def test_closed_loop_mious_equal_a_direct_video_segmenter_run(assets, closed_loop):
    from davss_ros.pipeline import VideoSegmenter

    out, report = closed_loop
    assert report["mode"] == "closed_loop"
    assert report["sent"] == report["received"] == report["processed"] == FRAMES
    assert report["dropped"] == 0

    # The node's configuration: the checkpoint's networks with the node's default runtime
    # parameters (davss, DIS fast, fixed schedule every 5 frames).
    cfg = load_config(str(assets["yaml"]))
    cfg.model.mode = "davss"
    cfg.model.flow.provider, cfg.model.flow.dis_preset = "dis", "fast"
    cfg.schedule = ScheduleConfig()
    seg = VideoSegmenter(cfg, checkpoint=assets["checkpoint"], device="cpu")
    seg.warmup()
    images, gts = _input_frames(assets["bag"])
    n = report["num_classes"]
    by_d: dict[int, ConfusionMatrix] = {}
    overall = ConfusionMatrix(n)
    direct = {}
    for stamp, rgb in images:
        r = seg.step(rgb, stamp / 1e9)
        direct[stamp] = (r.labels, r.propagation_distance)
        by_d.setdefault(r.propagation_distance, ConfusionMatrix(n)).update(r.labels, gts[stamp])
        overall.update(r.labels, gts[stamp])

    # Per-frame labels and distances are identical...
    outputs = _output_messages(out / "outputs")
    labels = {t: m.data.reshape(H, W) for t, m in outputs["labels"]}
    infos = {t: m for t, m in outputs["frame_info"]}
    assert sorted(labels) == sorted(direct)
    for stamp, (lab, d) in direct.items():
        np.testing.assert_array_equal(labels[stamp], lab)
        assert infos[stamp].propagation_distance == d
    # ...so every score is.
    assert report["miou_by_distance"] == {str(d): pct(m.miou())
                                          for d, m in sorted(by_d.items())}
    assert report["miou"] == pct(overall.miou())
    assert set(report["miou_by_distance"]) == {"0", "1", "2", "3", "4"}
    assert report["frames_by_distance"]["0"] == 5  # keys at 0, 5, 10, 15, 20
    assert report["key_ratio"] == pytest.approx(5 / FRAMES, abs=1e-4)
    assert len(report["per_class_iou"]) == n


def test_output_bag_holds_the_input_stamps(assets, closed_loop):
    out, report = closed_loop
    images, _ = _input_frames(assets["bag"])
    stamps = [s for s, _ in images]
    outputs = _output_messages(out / "outputs")
    for name in ("labels", "distortion", "frame_info"):
        msgs = outputs[name]
        assert [t for t, _ in msgs] == stamps, name  # bag time = the input frame's stamp
        assert [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
                for _, m in msgs] == stamps, name
        assert all(m.header.frame_id == "camera" for _, m in msgs)
    assert outputs["distortion"][1][1].encoding == "32FC1"
    # LabelInfo once at activation, then with every frame's stamp (labels, confidence and
    # LabelInfo pair by exact stamp, as Nav2's semantic layer pairs them)
    info_stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
                   for _, m in outputs["label_info"]]
    assert len(info_stamps) == len(stamps) + 1 and info_stamps[1:] == stamps
    # The node ran on the bag's clock (sim time): its diagnostics carry bag times.
    assert all(stamps[0] <= t <= stamps[-1] + 10**9 for t, _ in outputs.get("diagnostics", []))

    # The report, its copy and the pictures are there.
    saved = json.loads((out / "report.json").read_text())
    for key in ("sent", "received", "dropped", "latency_ms", "fps", "key_ratio", "miou",
                "miou_by_distance"):
        assert key in saved
    assert set(saved["latency_ms"]) >= {"median", "p95", "max"}
    assert saved["latency_ms"]["median"] > 0 and saved["fps"] > 0
    assert json.loads((assets["root"] / "copy.json").read_text())["miou"] == saved["miou"]
    for name in ("miou_by_distance.png", "latency_hist.png", "contact_sheet.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not [p for p in out.iterdir() if "partial" in p.name]


def test_real_time_overload_drops_frames_and_accounts_for_every_one(assets):
    out = assets["root"] / "realtime"
    # 20 x 30 Hz: a frame every 1.7 ms, far faster than the model runs on this CPU.
    report = replay(_options(assets, out, rate=20.0, record_images=True))
    assert report["mode"] == "real_time" and report["rate"] == 20.0
    assert report["sent"] == FRAMES
    assert report["dropped"] > 0
    assert report["sent"] == report["processed"] + report["dropped"]
    assert report["dropped"] == report["dropped_by_node"] + report["lost_before_node"]
    assert report["received"] == report["processed"]  # every processed frame recorded
    # The node's own counters agree: what reached it was processed or dropped there.
    node = report["node_stats"]
    assert node["input_count"] == report["processed"] + report["dropped_by_node"]
    assert node["dropped"] == report["dropped_by_node"]
    if "lost" in node:  # sequence-gap counting in the node
        # A gap shows only once a later frame arrives: frames lost after the last one that
        # reached the node are known to the player (sent - received) but not to the node.
        assert node["lost"] <= report["lost_before_node"]
    outputs = _output_messages(out / "outputs")
    assert len(outputs["labels"]) == len(outputs["labels_color"]) == report["processed"]
    assert len(outputs["overlay"]) == report["processed"]
    assert report["latency_ms"]["max"] >= report["latency_ms"]["median"] > 0


def _no_image_bag(root: Path) -> Path:
    """A bag with a std_msgs/String topic and no image."""
    bag = root / "no_image"
    if not bag.exists():
        with AtomicBagWriter(bag) as w:
            w.add_topic("/chatter", "std_msgs/msg/String")
            w.write("/chatter", 1, typestore().types["std_msgs/msg/String"](data="x"),
                    "std_msgs/msg/String")
            w.commit()
    return bag


@pytest.mark.parametrize("case,args,message", [
    ("missing", ["--topic", "/camera/nope"],
     "topic /camera/nope is not in the bag; topics in the bag: /camera/image_raw "
     "(sensor_msgs/msg/Image, 24 msgs), /camera/labels_gt"),
    ("no_image", [], "no camera image topic (sensor_msgs/msg/Image named *image_raw); topics "
     "in the bag: /chatter (std_msgs/msg/String, 1 msgs)"),
    ("wrong_type", ["--topic", "/chatter"],
     "topic /chatter holds std_msgs/msg/String messages, expected sensor_msgs/msg/Image"),
])
def test_bad_topics_give_a_clear_error_and_exit_code_2(assets, tmp_path, capsys, case, args,
                                                       message):
    bag = assets["bag"] if case == "missing" else _no_image_bag(assets["root"])
    out = tmp_path / "out"
    code = davss(["replay", str(bag), "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("davss replay: error: ") and message in err, err
    assert "Traceback" not in err
    assert not (out / "outputs").exists() and not (out / "report.json").exists()


def test_truncated_bag_file_exits_2_naming_the_file_without_a_traceback(assets, tmp_path):
    bag = tmp_path / "truncated"
    bag.mkdir()
    src = assets["bag"]
    (bag / "metadata.yaml").write_bytes((src / "metadata.yaml").read_bytes())
    data = (src / "bag.mcap").read_bytes()
    (bag / "bag.mcap").write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "davss_ros.cli", "replay", str(bag), "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"davss replay: error: {bag}: cannot read the bag: truncated, corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_replay_that_fails_leaves_nothing_that_looks_complete(assets, tmp_path):
    out = tmp_path / "out"
    opts = _options(assets, out, external=True, namespace="nobody_here", checkpoint=None,
                    params=[], discovery_timeout=1.0)
    with pytest.raises(ReplayError, match="no match within 1 s for a subscriber on "
                       "/nobody_here/image"):
        replay(opts)
    assert list(out.iterdir()) == []  # no outputs bag, no partial folder, no report


def test_external_mode_replays_through_a_running_node_process(assets, tmp_path):
    """``--external``: the node is a separate process (the console entry point)."""
    import signal

    domain = _domain_id()
    cmd = [sys.executable, "-c", "import sys; from davss_ros.ros.node import main; "
           "sys.exit(main(sys.argv))", "--ros-args", "-r", "__ns:=/ext",
           "-p", f"model.checkpoint:={assets['checkpoint']}", "-p", "model.device:=cpu",
           "-p", "schedule.key_interval:=3"]
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        # The replay as a user runs it, in its own process, which has ended before the node
        # gets Ctrl-C. (Replay participants kept alive in this process would be silent TCP
        # peers of the node's participant under LARGE_DATA, which FastDDS 3.2.2 can wait on
        # for good while deleting it: eProsima/Fast-DDS#6066, conftest.py.)
        out = tmp_path / "out"
        run = subprocess.run(
            [sys.executable, "-m", "davss_ros.cli", "replay", str(assets["bag"]), "--external",
             "--namespace", "ext", "--max-frames", "7", "--out", str(out), "--no-progress",
             "--json", str(tmp_path / "report.json")],
            env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads((tmp_path / "report.json").read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            log, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
    assert report["node"] == "/ext/davss_segmenter" and report["external"]
    assert report["sent"] == report["received"] == 7 and report["dropped"] == 0
    assert set(report["miou_by_distance"]) == {"0", "1", "2"}  # the node's key interval 3
    outputs = _output_messages(out / "outputs")
    images, _ = _input_frames(assets["bag"])
    assert [t for t, _ in outputs["labels"]] == [s for s, _ in images[:7]]
    assert proc.returncode == 0, log


def test_a_compressed_bag_replays_on_the_compressed_transport_like_the_raw_bag(assets,
                                                                               closed_loop):
    """make-bag --compressed png (lossless) writes CompressedImage on <topic>/compressed;
    replay finds it, runs the node with input.transport compressed, and every label equals
    the raw bag's replay, frame by frame by stamp."""
    from davss_ros.bag.io import BagReader

    bag = assets["root"] / "bag_png"
    write_bag(bag, synthetic_frames(FRAMES, H, W, seed=5), rate=30.0, start_ns=START_NS,
              compressed="png")
    with BagReader(bag) as reader:
        assert reader.topics["/camera/image_raw/compressed"] == \
            "sensor_msgs/msg/CompressedImage"
        assert "/camera/image_raw" not in reader.topics
    raw_out, raw_report = closed_loop
    report = replay(_options(assets, assets["root"] / "png", bag=bag, plots=False,
                             reference=raw_out))
    assert report["topic"] == "/camera/image_raw/compressed"
    assert report["transport"] == "compressed"
    assert report["processed"] == FRAMES and report["dropped"] == 0
    assert report["reference"]["frames"] == FRAMES
    assert report["reference"]["pixels_equal_pct"] == 100.0
    assert report["miou"] == raw_report["miou"]


def test_two_cameras_replay_through_one_node_scored_per_camera(assets):
    """make-bag's two-camera layout (its own clip per camera, labels beside each) through
    one node with image_topics: each camera's frames all processed and scored against its
    own ground truth; a camera's frames keep the fixed key pattern of their own stream."""
    from davss_ros.bag.make import Camera, write_cameras_bag

    bag = assets["root"] / "bag_two"
    n = 8
    write_cameras_bag(bag, [
        Camera(synthetic_frames(n, H, W, seed=5), "/camera0/image_raw", "/camera0/labels_gt"),
        Camera(synthetic_frames(n, H, W, seed=6), "/camera1/image_raw", "/camera1/labels_gt"),
    ], rate=30.0, start_ns=START_NS)
    report = replay(_options(assets, assets["root"] / "two", bag=bag, cameras=True,
                             params=["model.device:=cpu", "schedule.key_interval:=3"]))
    assert set(report["cameras"]) == {"camera0", "camera1"}
    assert report["sent"] == 2 * n and report["dropped"] == 0
    for name, cam in report["cameras"].items():
        assert cam["topic"] == f"/{name}/image_raw"
        assert cam["ground_truth_topic"] == f"/{name}/labels_gt"
        assert cam["processed"] == n and cam["frames_scored"] == n
        assert cam["key_ratio"] == pytest.approx(3 / n)  # frames 0, 3, 6 of this camera
        assert cam["miou"] is not None
    assert report["camera_stats"]["camera1"]["output_count"] == n
    counts = report["output_counts"]
    assert counts["/davss_replay/davss_segmenter/camera0/labels"] == n
    assert counts["/davss_replay/davss_segmenter/camera1/labels"] == n
    assert "/davss_replay/davss_segmenter/labels" not in counts


def test_the_scorer_charges_a_dropped_frame_with_the_newest_labels_before_it():
    """Frames 1 and 3 processed, 2 dropped: mIoU over the processed frames is perfect; over
    every frame, frame 2 is scored with frame 1's labels, which are wrong for it."""
    from davss_ros.bag.report import Scorer

    zeros, ones = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    scorer = Scorer(2, {1, 2, 3})
    for stamp, gt in ((1, zeros), (2, ones), (3, ones)):
        scorer.add_gt(stamp, gt)
    scorer.add_prediction(1, zeros)
    scorer.add_distance(1, 0)
    scorer.add_prediction(3, ones)
    scorer.add_distance(3, 1)  # frame 2 had no outcome: it was dropped
    out = scorer.as_dict(["a", "b"])
    assert out["miou"] == 100.0 and out["frames_scored"] == 2
    assert out["frames_held"] == 1
    # every frame: class a 16 / 32 pixels right (IoU 0.5), class b 16 / 32 (0.5)
    assert out["miou_every_frame"] == pytest.approx(50.0)
