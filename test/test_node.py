"""The davss_segmenter lifecycle node over real rclpy + FastDDS, with a real (tiny) model.

The node and a "camera" node that publishes frames and records what comes back share one
rclpy Context (one DDS participant: messages pass FastDDS's writers and readers,
serialised, with no discovery between participants to wait on or time out; see
davss_ros.tools.harness). The test of the node process, and test_transport.py and
test_large_frames.py, cross between processes (on FastDDS's DEFAULT transports here,
conftest.py; those two files on LARGE_DATA). Frames are sent closed-loop (the next one
after the previous output arrived), so nothing is dropped and key-frame patterns are
deterministic.
"""

from __future__ import annotations

import array
import contextlib
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from davss_msgs.msg import FrameInfo, LabelInfo  # noqa: E402
from davss_ros.ros.image import numpy_to_image  # noqa: E402
from davss_ros.ros.node import ros_arguments  # noqa: E402
from davss_ros.tools.harness import Camera as Probe  # noqa: E402
from davss_ros.tools.harness import Harness, unique_domain_id  # noqa: E402
from davss_ros.tools.harness import NodeHost as Segmenter  # noqa: E402

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
H, W = 64, 128  # camera frames; also the network input
TIMEOUT = 20.0

# A small network so each frame costs a few milliseconds on a shared CPU.
SMALL_MODEL_YAML = """\
preset: cpu
model:
  segmenter:
    aspp_channels: 16
    decoder_channels: 16
"""


def _domain_id() -> int:
    # Unique per test process, so parallel runs do not see each other's topics.
    return unique_domain_id()


def frame(i: int, encoding: str = "rgb8", frame_id: str = "camera") -> Image:
    """A textured frame drifting one pixel per index, stamped 1000 + i/10 s."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb = np.roll(base, i, axis=1)
    alpha = np.full((H, W, 1), 255, np.uint8)
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1].copy(),
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
        "mono8": rgb[:, :, 1].copy(),
    }[encoding]
    msg = numpy_to_image(pixels, encoding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = 1000 + i // 10
    msg.header.stamp.nanosec = (i % 10) * 100_000_000
    return msg


def stamp_key(header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


@contextlib.contextmanager
def model_held(node):
    """The first frame to reach the node's segmenter network stays inside it until
    ``release`` is set or the block ends. Yields the events (busy, release)."""
    busy, release = threading.Event(), threading.Event()

    def hold(_module, _inputs, _output):
        if not busy.is_set():
            busy.set()
            release.wait(TIMEOUT)

    handle = node.segmenter.net.segmenter.register_forward_hook(hold)
    try:
        yield busy, release
    finally:
        release.set()
        handle.remove()


def send_closed_loop(probe: Probe, image_topic: str, info_topic: str, frames: list[Image],
                     resend_first_s: float | None = None):
    """Publish each frame after the previous one's FrameInfo arrived; the FrameInfos.

    resend_first_s: republish the first frame at this period until it is answered, for a
    node in another process, whose subscription may match the camera a moment after the
    camera matched it (best effort drops what comes before). The first answer is returned.
    """
    out = []
    for i, msg in enumerate(frames):
        want = stamp_key(msg.header)

        def arrived(want=want):
            return any(stamp_key(m.header) == want for m in probe.got[info_topic])

        probe.publisher(image_topic).publish(msg)
        if i == 0 and resend_first_s:
            deadline = time.monotonic() + TIMEOUT
            while not probe.wait(arrived, timeout=resend_first_s):
                assert time.monotonic() < deadline, f"no frame_info for stamp {want}"
                probe.publisher(image_topic).publish(msg)
        assert probe.wait(arrived), f"no frame_info for stamp {want}"
        out.append(next(m for m in probe.messages(info_topic) if stamp_key(m.header) == want))
    return out


@pytest.fixture(scope="module")
def domain_id():
    return _domain_id()


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL_MODEL_YAML)
    return str(path)


@pytest.fixture(scope="module")
def probe(domain_id):
    p = Probe(domain_id)
    for topic, msg_type in [
        ("/davss_segmenter/labels", Image),
        ("/davss_segmenter/labels_color", Image),
        ("/davss_segmenter/overlay", Image),
        ("/davss_segmenter/distortion", Image),
        ("/davss_segmenter/frame_info", FrameInfo),
        ("/diagnostics", DiagnosticArray),
    ]:
        p.listen(topic, msg_type)
    yield p
    p.close()


def base_overrides(model_yaml: str) -> dict:
    return {"model.config": model_yaml, "model.device": "cpu", "input.width": W,
            "input.height": H, "schedule.policy": "fixed", "schedule.key_interval": 5}


@pytest.fixture(scope="module")
def seg(domain_id, model_yaml, probe):
    s = Segmenter(domain_id, base_overrides(model_yaml), share=probe)
    yield s
    s.close()


@pytest.fixture(scope="module")
def active(seg, probe):
    """The node configured and activated, with every output matched to the probe."""
    node = seg.node
    if node.state == "unconfigured":
        assert node.trigger_configure() == SUCCESS
    if node.state == "inactive":
        assert node.trigger_activate() == SUCCESS
    probe.wait_matched(["/image"], [t for t in probe.subs if t != "/diagnostics"])
    # The node's side of each match: its reader has the camera's writer, its writers see
    # the probe's readers (outputs such as the overlay are computed only while subscribed).
    seg.wait_input_matched()
    seg.wait_outputs_seen([t for t in probe.subs if t != "/diagnostics"])
    return node


def _latest_status(probe: Probe, node_fqn: str, predicate=lambda s: True, timeout=TIMEOUT):
    found = []

    def check():
        for array_msg in reversed(probe.got["/diagnostics"]):
            for status in array_msg.status:
                if status.hardware_id == node_fqn and predicate(status):
                    found.append(status)
                    return True
        return False

    assert probe.wait(check, timeout), f"no matching diagnostics from {node_fqn}"
    return found[0]


def _values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


# -- tests (module order matters little: each brings the node to the state it needs) ----------
def test_configure_fails_on_a_missing_checkpoint_and_succeeds_after_the_fix(
        seg, probe, tmp_path):
    node = seg.node
    missing = tmp_path / "no_such_model.pt"
    node.set_parameters([Parameter("model.checkpoint", value=str(missing))])
    assert node.trigger_configure() == FAILURE
    assert node.state == "unconfigured" and node.segmenter is None
    assert probe.lifecycle_state("/davss_segmenter") == "unconfigured"
    status = _latest_status(probe, "/davss_segmenter",
                            lambda s: "no_such_model.pt" in s.message)
    assert status.level == DiagnosticStatus.ERROR and "configure failed" in status.message

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    node.set_parameters([Parameter("model.checkpoint", value=str(corrupt))])
    assert node.trigger_configure() == FAILURE
    assert "corrupt.pt" in node.configure_error

    node.set_parameters([Parameter("model.checkpoint", value="")])
    assert node.trigger_configure() == SUCCESS
    assert node.state == "inactive" and node.segmenter is not None
    assert probe.lifecycle_state("/davss_segmenter") == "inactive"


def test_nothing_is_published_before_activation(seg, probe):
    node = seg.node
    if node.state == "unconfigured":
        assert node.trigger_configure() == SUCCESS
    assert node.state == "inactive"
    # a late subscriber for the transient-local label table
    late = Probe(_domain_id(), name="late_camera", share=probe)
    try:
        # The outputs exist (created by configure) and are matched, but stay silent.
        probe.wait_matched([], [t for t in probe.subs if t != "/diagnostics"])
        probe.clear()
        for i in range(3):
            probe.publisher("/image").publish(frame(i))
            time.sleep(0.2)
        outputs = [t for t in probe.got if t != "/diagnostics"]
        assert all(not probe.messages(t) for t in outputs), "published while inactive"
        assert node.stats.input_count == 0  # not even subscribed

        assert node.trigger_activate() == SUCCESS
        late.listen("/davss_segmenter/label_info", LabelInfo, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        assert late.wait(lambda: late.got["/davss_segmenter/label_info"]), "no label_info"
        info = late.messages("/davss_segmenter/label_info")[0]
        num = node.segmenter.num_classes
        assert list(info.class_ids) == list(range(num))
        assert len(info.class_names) == num and len(info.palette) == 3 * num
        assert info.ignore_id == 255
    finally:
        late.close()


def test_round_trip_of_30_frames_keeps_headers_and_the_key_frame_pattern(active, probe):
    node = active
    node.segmenter.reset()
    probe.clear()
    frames = [frame(i) for i in range(30)]
    infos = send_closed_loop(probe, "/image", "/davss_segmenter/frame_info", frames)

    keys = [i for i, m in enumerate(infos) if m.is_key_frame]
    assert keys == list(range(0, 30, 5))
    assert [m.propagation_distance for m in infos[:6]] == [0, 1, 2, 3, 4, 0]
    assert infos[0].key_reason in ("reset", "first_frame")
    assert infos[5].key_reason == "interval"
    assert all(m.key_reason == "" for m in infos if not m.is_key_frame)
    assert all(m.dropped_frames == 0 for m in infos)
    assert [m.frame_index for m in infos] == sorted(m.frame_index for m in infos)
    assert all(m.total_ms > 0 and m.decode_ms >= 0 and m.encode_ms >= 0 for m in infos)
    assert all(m.segmenter_ms > 0 for m in infos if m.is_key_frame)
    assert all(m.flow_ms > 0 for m in infos if not m.is_key_frame)

    assert probe.wait(lambda: len(probe.got["/davss_segmenter/labels"]) >= 30)
    labels = {stamp_key(m.header): m for m in probe.messages("/davss_segmenter/labels")}
    for sent in frames:
        out = labels[stamp_key(sent.header)]
        assert (out.height, out.width, out.encoding) == (H, W, "mono8")
        assert out.step == W and out.header.frame_id == "camera"
        ids = np.frombuffer(out.data, np.uint8)
        assert ids.size == H * W and (ids < node.segmenter.num_classes).all()

    # The subscribed extras: colour and overlay rgb8, distortion 32FC1 in [0, 1].
    for topic, encoding, step in [("labels_color", "rgb8", 3 * W), ("overlay", "rgb8", 3 * W),
                                  ("distortion", "32FC1", 4 * W)]:
        full = f"/davss_segmenter/{topic}"
        assert probe.wait(lambda full=full: len(probe.got[full]) >= 30), topic
        msgs = {stamp_key(m.header): m for m in probe.messages(full)}
        m = msgs[stamp_key(frames[7].header)]
        assert (m.height, m.width, m.encoding, m.step) == (H, W, encoding, step)
        assert m.header.frame_id == "camera"
    dist = np.frombuffer(msgs[stamp_key(frames[7].header)].data, np.float32)
    assert dist.min() >= 0.0 and dist.max() <= 1.0
    key_dist = np.frombuffer(msgs[stamp_key(frames[5].header)].data, np.float32)
    assert not key_dist.any()  # zeros on a key frame

    # The colour image is the palette applied to the labels.
    color = {stamp_key(m.header): m for m in probe.messages("/davss_segmenter/labels_color")}
    sent = frames[3]
    ids = np.frombuffer(labels[stamp_key(sent.header)].data, np.uint8).reshape(H, W)
    rgb = np.frombuffer(color[stamp_key(sent.header)].data, np.uint8).reshape(H, W, 3)
    palette = np.asarray(node.segmenter.palette, np.uint8)
    np.testing.assert_array_equal(rgb, palette[ids])


def test_mono8_bgr8_rgba8_and_padded_frames_are_segmented(active, probe):
    probe.clear()
    padded = frame(44)
    rows = np.frombuffer(padded.data, np.uint8).reshape(H, 3 * W)
    buf = np.zeros((H, 3 * W + 16), np.uint8)
    buf[:, : 3 * W] = rows
    padded.step, padded.data = 3 * W + 16, array.array("B", buf.tobytes())
    sent = [frame(40, "mono8"), frame(41, "bgr8"), frame(42, "rgba8"), frame(43, "bgra8"),
            padded]
    infos = send_closed_loop(probe, "/image", "/davss_segmenter/frame_info", sent)
    assert len(infos) == len(sent)
    assert probe.wait(lambda: len(probe.got["/davss_segmenter/overlay"]) >= len(sent))
    overlays = {stamp_key(m.header): m for m in probe.messages("/davss_segmenter/overlay")}
    out = overlays[stamp_key(padded.header)]
    assert (out.width, out.height, out.step) == (W, H, 3 * W)  # outputs are tightly packed


def test_a_burst_drops_stale_frames_and_counts_every_drop(active, probe):
    """While the worker is busy, a burst replaces the waiting frame again and again: every
    frame but the newest is dropped and counted, and nothing goes unaccounted for."""
    node = active
    node.segmenter.reset()  # the first frame of the burst is a key frame
    probe.clear()
    before = {k: getattr(node.stats, k) for k in ("input_count", "output_count", "dropped",
                                                  "lost")}
    burst = [frame(200 + i) for i in range(12)]
    with model_held(node) as (busy, _release):  # the worker sits in the first frame
        probe.publisher("/image").publish(burst[0])
        assert busy.wait(TIMEOUT), "the first frame of the burst never reached the model"
        for msg in burst[1:]:
            probe.publisher("/image").publish(msg)
            time.sleep(0.02)  # a camera's pace; the executor takes each one

        def taken():
            return (node.stats.input_count + node.stats.lost
                    - before["input_count"] - before["lost"]) == len(burst)

        deadline = time.monotonic() + TIMEOUT
        while not taken():
            assert time.monotonic() < deadline, "the burst did not reach the node"
            time.sleep(0.01)
    last = stamp_key(burst[-1].header)
    # The newest frame always wins, so the last one of the burst is processed.
    assert probe.wait(lambda: any(stamp_key(m.header) == last
                                  for m in probe.got["/davss_segmenter/frame_info"]))
    assert node._worker.wait_idle(TIMEOUT)
    received = node.stats.input_count - before["input_count"]
    processed = node.stats.output_count - before["output_count"]
    dropped = node.stats.dropped - before["dropped"]
    assert processed == 2  # the frame the worker held, then the newest
    assert dropped == received - 2 and dropped >= 1
    infos = probe.messages("/davss_segmenter/frame_info")
    assert [stamp_key(m.header) for m in infos] == [stamp_key(burst[0].header), last]
    assert infos[-1].dropped_frames == node.stats.dropped


def test_worker_keeps_only_the_newest_frame_and_counts_drops():
    from davss_ros.ros.worker import LatestFrameWorker

    gate, seen, errors = threading.Event(), [], []

    def process(item):
        if item == "boom":
            raise RuntimeError("bad frame")
        gate.wait(TIMEOUT)
        seen.append(item)

    worker = LatestFrameWorker(process, on_error=errors.append)
    try:
        assert worker.submit(0) is False  # taken at once; the worker blocks on the gate
        deadline = time.monotonic() + TIMEOUT
        while worker.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.submit(1) is False  # waits in the slot
        assert worker.submit(2) is True  # replaces 1: one drop
        assert worker.submit(3) is True
        gate.set()
        assert worker.wait_idle(TIMEOUT)
        assert seen == [0, 3] and worker.dropped == 2
        worker.submit("boom")
        assert worker.wait_idle(TIMEOUT)
        assert [str(e) for e in errors] == ["bad frame"] and worker.alive
        worker.submit(4)
        assert worker.wait_idle(TIMEOUT) and seen == [0, 3, 4]
    finally:
        gate.set()
        assert worker.stop(timeout=5.0)
    assert not worker.alive and worker.submit(5) is False


def test_diagnostics_report_rates_latency_and_model(active, probe):
    probe.clear()
    send_closed_loop(probe, "/image", "/davss_segmenter/frame_info",
                     [frame(i) for i in range(50, 55)])
    status = _latest_status(probe, "/davss_segmenter",
                            lambda s: _values(s).get("lifecycle state") == "active")
    values = _values(status)
    assert status.name == "/davss_segmenter: segmentation"
    for key in ("input rate (Hz)", "output rate (Hz)", "latency median (ms)",
                "latency p95 (ms)", "key frame ratio", "frames dropped", "errors",
                "last error", "model", "device", "mode"):
        assert key in values, key
    assert float(values["output rate (Hz)"]) > 0
    assert float(values["latency median (ms)"]) > 0
    assert values["device"] == "cpu" and values["mode"] == "davss"
    assert "untrained" in values["model"]
    # Untrained weights are worth a warning, never silence.
    assert status.level in (DiagnosticStatus.WARN, DiagnosticStatus.ERROR)
    assert "untrained" in status.message


def test_bad_parameter_values_are_refused_with_a_reason(active):
    node = active
    cases = [
        (Parameter("schedule.key_interval", value=0), "schedule.key_interval"),
        (Parameter("model.mode", value="foo"), "model.mode must be one of"),
        (Parameter("model.device", value="gpu7"), "model.device"),
        (Parameter("schedule.threshold", value=1.5), "schedule.threshold"),
        (Parameter("input.width", value=100), "input.width"),
        (Parameter("flow.provider", value="raft"), "flow.provider"),
    ]
    for param, reason in cases:
        (result,) = node.set_parameters([param])
        assert not result.successful, param.name
        assert reason in result.reason or param.name in result.reason, result.reason
    # Read-only: QoS is fixed at start-up.
    (result,) = node.set_parameters([Parameter("qos.reliability", value="reliable")])
    assert not result.successful
    assert node.get_parameter("schedule.key_interval").value == 5
    assert node.get_parameter("model.mode").value == "davss"


def test_bad_frames_are_skipped_with_an_error_and_the_node_keeps_running(active, probe):
    node = active
    errors_before = node.stats.error_count
    probe.clear()
    yuv = Image(height=H, width=W, encoding="yuv422", step=2 * W)
    yuv.data = array.array("B", bytes(2 * W * H))
    yuv.header.stamp.sec = 2000
    short = frame(60)
    short.data = short.data[: len(short.data) - 10]
    short.header.stamp.sec = 2001
    # One at a time, each once the previous one's error is counted: a frame still waiting
    # when the next arrives would be dropped (the one-frame slot keeps only the newest).
    for i, bad in enumerate((yuv, short), start=1):
        probe.publisher("/image").publish(bad)
        assert probe.wait(lambda i=i: node.stats.error_count >= errors_before + i)
    assert "data has" in node.stats.last_error
    # A good frame afterwards still gets its outputs.
    infos = send_closed_loop(probe, "/image", "/davss_segmenter/frame_info", [frame(61)])
    assert len(infos) == 1
    assert not any(m.header.stamp.sec in (2000, 2001)
                   for m in probe.messages("/davss_segmenter/labels"))
    # ERROR while the bad frames are within the error window; later statuses, once the
    # window has passed on a slow machine, are back to the usual level
    status = _latest_status(probe, "/davss_segmenter",
                            lambda s: _values(s)["errors"] == str(errors_before + 2)
                            and s.level == DiagnosticStatus.ERROR)
    assert "data has" in _values(status)["last error"]
    assert "yuv422" in status.message or "data has" in status.message


def test_schedule_change_while_active_takes_effect(active, probe):
    node = active
    (result,) = node.set_parameters([Parameter("schedule.key_interval", value=3)])
    assert result.successful
    assert node.segmenter.config.schedule.key_interval == 3
    probe.clear()
    infos = send_closed_loop(probe, "/image", "/davss_segmenter/frame_info",
                             [frame(i) for i in range(70, 82)])
    keys = [i for i, m in enumerate(infos) if m.is_key_frame]
    assert len(keys) >= 3 and all(b - a == 3 for a, b in zip(keys, keys[1:], strict=False))
    node.set_parameters([Parameter("schedule.key_interval", value=5)])


def test_output_switch_stops_an_output(active, probe):
    node = active
    node.set_parameters([Parameter("output.overlay", value=False)])
    try:
        probe.clear()
        send_closed_loop(probe, "/image", "/davss_segmenter/frame_info", [frame(90), frame(91)])
        time.sleep(0.3)
        assert not probe.messages("/davss_segmenter/overlay")
        assert len(probe.messages("/davss_segmenter/labels_color")) == 2
    finally:
        node.set_parameters([Parameter("output.overlay", value=True)])


def test_deactivate_cleanup_and_shutdown(active, probe):
    node = active
    assert node.trigger_deactivate() == SUCCESS
    assert node.state == "inactive" and node.segmenter is not None  # model kept
    probe.clear()
    probe.publisher("/image").publish(frame(100))
    time.sleep(0.5)
    assert not probe.messages("/davss_segmenter/frame_info")
    assert node.trigger_cleanup() == SUCCESS
    assert node.segmenter is None and node.state == "unconfigured"
    assert probe.lifecycle_state("/davss_segmenter") == "unconfigured"
    # It can be configured and activated again, then shut down cleanly.
    assert node.trigger_configure() == SUCCESS
    assert node.trigger_activate() == SUCCESS
    worker = node._worker
    assert node.trigger_shutdown() == SUCCESS
    assert node.state == "finalized" and not worker.alive and node.segmenter is None


def test_two_cameras_in_two_namespaces(domain_id, model_yaml):
    probe = Probe(domain_id)
    seg = Segmenter(domain_id, base_overrides(model_yaml), namespace="cam1", share=probe)
    try:
        seg.add(base_overrides(model_yaml), namespace="cam2")
        topics = {}
        for cam in ("cam1", "cam2"):
            topics[cam] = f"/{cam}/davss_segmenter/frame_info"
            probe.listen(topics[cam], FrameInfo)
            probe.listen(f"/{cam}/davss_segmenter/labels", Image)
        for node in seg.nodes:
            assert node.trigger_configure() == SUCCESS
            assert node.trigger_activate() == SUCCESS
        probe.wait_matched(["/cam1/image", "/cam2/image"], list(topics.values()))
        for node in seg.nodes:  # each node's reader has matched its camera
            seg.wait_input_matched(node=node)
        for cam, i in (("cam1", 0), ("cam2", 1)):
            send_closed_loop(probe, f"/{cam}/image", topics[cam], [frame(i, frame_id=cam)])
        time.sleep(0.3)
        for cam in ("cam1", "cam2"):
            labels = probe.messages(f"/{cam}/davss_segmenter/labels")
            assert labels and all(m.header.frame_id == cam for m in labels)
    finally:
        seg.close()
        probe.close()


def test_cli_options_become_ros_arguments():
    import argparse

    from davss_ros.ros.node import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--params-file", "p.yaml", "--image-topic", "/cam/image_raw", "--namespace", "front",
        "--checkpoint", "m.pt", "--no-autostart", "--ros-args", "-p", "use_sim_time:=true"])
    assert ros_arguments(args) == [
        "davss_segmenter", "--ros-args", "--params-file", "p.yaml",
        "-r", "image:=/cam/image_raw", "-r", "__ns:=/front",
        "-p", "model.checkpoint:='m.pt'", "-p", "autostart:=false",
        "-p", "use_sim_time:=true"]
    assert ros_arguments(parser.parse_args([])) == ["davss_segmenter"]


def test_params_file_documents_every_parameter_with_its_default():
    import pathlib

    import yaml

    from davss_ros.ros.params import SPECS

    path = pathlib.Path(__file__).resolve().parents[1] / "config" / "davss.yaml"
    values = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    assert set(values) == set(SPECS)
    for name, spec in SPECS.items():
        assert values[name] == spec.default, name


def test_segmenter_process_runs_from_the_params_file_and_exits_cleanly_on_ctrl_c(
        model_yaml, tmp_path):
    """The console-script entry point in its own process: autostart, outputs, Ctrl-C."""
    import pathlib
    import sys

    # A domain of its own: the module's node and probe, alive and silent in this process,
    # would be TCP peers of both sides here under LARGE_DATA, the kind that FastDDS 3.2.2's
    # participant deletion can wait on for good (eProsima/Fast-DDS#6066; the tests run on
    # DEFAULT, conftest.py, but FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA make test does not).
    domain_id = unique_domain_id(salt=1)

    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-c", "import sys; from davss_ros.ros.node import main; "
           "sys.exit(main(sys.argv))",
           "--ros-args", "--params-file", str(root / "config" / "davss.yaml"),
           "-r", "__ns:=/proc", "-r", "image:=/proc_camera",
           "-p", f"model.config:={model_yaml}", "-p", "model.device:=cpu",
           "-p", f"input.width:={W}", "-p", f"input.height:={H}"]
    # The harness stops the node process before it deletes the probe's participant:
    # the other order can block for good inside FastDDS (see davss_ros.tools.harness).
    with Harness(domain_id) as harness:
        proc = harness.spawn(cmd, log_path=tmp_path / "node.log")
        probe = harness.camera()
        probe.listen("/proc/davss_segmenter/frame_info", FrameInfo)
        try:
            probe.wait_matched(["/proc_camera"], ["/proc/davss_segmenter/frame_info"],
                               timeout=40)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe node process (status {proc.poll()}) said:\n"
                                 f"{proc.tail()}") from None
        # Resent until answered: the node's reader, in another process, may match this
        # camera a moment after the camera matched it.
        infos = send_closed_loop(probe, "/proc_camera", "/proc/davss_segmenter/frame_info",
                                 [frame(0), frame(1)], resend_first_s=2.0)
        assert [m.is_key_frame for m in infos] == [True, False]
        code = proc.stop(timeout=60)
    out = proc.tail(1000)
    assert code == 0, out
    assert "UNTRAINED" in out and "active: segmenting /proc_camera" in out


def test_a_teardown_that_blocks_ends_the_node_process_with_status_1_and_its_stacks(
        model_yaml, tmp_path):
    """The middleware can block for good while tearing down (FastDDS deleting a participant
    whose TCP peer is still connected): after Ctrl-C the process still ends, within the
    teardown timeout, with status 1 and every thread's stack in its output. The block is
    made here by a destroy_node that sleeps."""
    import sys

    cmd = [sys.executable, "-c",
           "import sys, time; import davss_ros.ros.node as n; n.TEARDOWN_TIMEOUT_S = 1.0; "
           "n.SegmenterNode.destroy_node = lambda self: time.sleep(3600); "
           "sys.exit(n.main(sys.argv))",
           "--ros-args", "-r", "__ns:=/blocked",
           "-p", f"model.config:={model_yaml}", "-p", "model.device:=cpu",
           "-p", f"input.width:={W}", "-p", f"input.height:={H}"]
    with Harness(unique_domain_id(salt=2)) as harness:  # no peer: it must end by itself
        proc = harness.spawn(cmd, log_path=tmp_path / "node.log")
        deadline = time.monotonic() + 60
        while "active: segmenting" not in proc.tail(100):
            assert proc.poll() is None and time.monotonic() < deadline, proc.tail()
            time.sleep(0.1)
        started = time.monotonic()
        code = proc.stop(timeout=30)
        took = time.monotonic() - started
    out = proc.tail(1000)
    assert code == 1, out
    assert "Timeout (0:00:01)!" in out, out
    # the main thread's stack, down to the blocked call
    assert "in <lambda>" in out and "davss_ros/ros/node.py" in out and "in main" in out, out
    assert took < 30, out


def test_node_bench_measures_latency_and_overhead(model_yaml):
    from davss_ros.tools.node_bench import run_node_bench

    r = run_node_bench(width=W, height=H, frames=4, warmup=1, config=model_yaml,
                       device="cpu", key_interval=2, subscribe=("labels", "overlay"))
    assert r["frames"] == 4 and r["dropped"] == 0
    assert r["subscribed"] == ["labels", "overlay"]
    assert r["e2e_median_ms"] >= r["pipeline_median_ms"] > 0
    assert r["node_overhead_median_ms"] > 0
    assert r["all_outputs_overhead_median_ms"] >= r["node_overhead_median_ms"]


def test_configure_with_a_checkpoint_and_refuse_a_mismatched_one(domain_id, model_yaml, tmp_path):
    from davss_ros.checkpoint import save_checkpoint
    from davss_ros.config import load_config
    from davss_ros.model import build_davss_net

    cfg = load_config(model_yaml)
    cfg.model.input_height, cfg.model.input_width = H, W
    state = build_davss_net(cfg.model).state_dict()  # as training saves it
    names = [f"thing_{i}" for i in range(cfg.model.num_classes)]
    good = save_checkpoint(tmp_path / "good.pt", config=cfg, state_dict=state,
                           class_names=names)
    bad = save_checkpoint(tmp_path / "bad.pt", config=cfg, state_dict={
        k: v for i, (k, v) in enumerate(state.items()) if i})  # one tensor missing

    # input.width/height 0: the checkpoint's own network size is used.
    seg = Segmenter(domain_id, {"model.checkpoint": str(good), "model.device": "cpu"})
    try:
        node = seg.node
        assert node.trigger_configure() == SUCCESS
        assert node.segmenter.class_names == names
        assert (node.segmenter.config.model.input_height,
                node.segmenter.config.model.input_width) == (H, W)
        assert not node._untrained and "good.pt" in node._model_text
        assert node.trigger_cleanup() == SUCCESS

        node.set_parameters([Parameter("model.checkpoint", value=str(bad))])
        assert node.trigger_configure() == FAILURE
        assert node.state == "unconfigured" and node.segmenter is None
        assert "bad.pt" in node.configure_error
        assert "do not match" in node.configure_error
    finally:
        seg.close()


def test_empty_checkpoint_means_the_shipped_model_and_the_node_says_which_it_loaded(
        domain_id, model_yaml, tmp_path, monkeypatch, capfd):
    """model.checkpoint "" runs the shipped model (here a small stand-in found through
    DAVSS_WEIGHTS_DIR); without a shipped file, with 'untrained' or with another
    model.config it runs untrained weights and says so."""
    from davss_ros.checkpoint import file_sha256, save_checkpoint
    from davss_ros.config import load_config
    from davss_ros.model import build_davss_net
    from davss_ros.weights import DEFAULT_NAME, ENV_VAR

    cfg = load_config(model_yaml)
    cfg.model.input_height, cfg.model.input_width = H, W
    shipped_dir = tmp_path / "weights"
    shipped = save_checkpoint(
        shipped_dir / DEFAULT_NAME, config=cfg, state_dict=build_davss_net(cfg.model).state_dict(),
        meta={"trained_by": "davss train",
              "train_config": {"dataset": {"kind": "synthetic", "root": "data/x"}}})
    monkeypatch.setenv(ENV_VAR, str(shipped_dir))

    seg = Segmenter(domain_id, {"model.device": "cpu"})  # every model.* at its default
    try:
        node = seg.node
        assert node.get_parameter("model.checkpoint").value == ""
        assert node.trigger_configure() == SUCCESS
        assert node.segmenter.checkpoint.path == shipped and not node._untrained
        assert f"{DEFAULT_NAME} (shipped; " in node._model_text
        log = "".join(capfd.readouterr())
        assert f"model: shipped {shipped} (sha256 {file_sha256(shipped)[:12]})" in log
        assert "trained by davss train on synthetic (data/x)" in log
        assert "UNTRAINED" not in log
        assert node.trigger_cleanup() == SUCCESS

        def configure_untrained(why: str) -> None:
            assert node.trigger_configure() == SUCCESS
            assert node._untrained and node.segmenter.checkpoint is None
            assert node._model_text.startswith("untrained")
            log = "".join(capfd.readouterr())
            assert "UNTRAINED" in log and why in log, log
            assert node.trigger_cleanup() == SUCCESS

        node.set_parameters([Parameter("model.checkpoint", value="untrained")])
        configure_untrained("model.checkpoint is 'untrained'")
        node.set_parameters([Parameter("model.checkpoint", value=""),
                             Parameter("model.config", value=model_yaml)])
        configure_untrained("only the 'cpu' preset has a shipped model")
        # A checkout without the shipped file keeps running, untrained and loudly so.
        node.set_parameters([Parameter("model.config", value="cpu"),
                             Parameter("input.width", value=W),
                             Parameter("input.height", value=H)])
        shipped.unlink()
        configure_untrained(f"no model is shipped: {shipped}")
    finally:
        seg.close()
