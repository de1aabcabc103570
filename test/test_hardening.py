"""The segmenter node under bad input, bad model files and faults (real rclpy + FastDDS).

Every bad input must end as a counted error in /diagnostics with the node still running,
and every frame the node takes must end in exactly one counter (processed, dropped,
rejected, failed, discarded; see davss_ros/ros/diagnostics.py). Cases test_node.py already
covers are not repeated here: a yuv422 frame and a short data buffer on the node, a missing
or garbage checkpoint file, a checkpoint with one tensor missing.

Faults are injected into the real model (a forward hook that raises or returns NaN once);
the CUDA out-of-memory test with a real allocation failure runs only where a GPU exists.
"""

from __future__ import annotations

import array
import gc
import pathlib
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")

import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_node import (  # noqa: E402
    SMALL_MODEL_YAML,
    TIMEOUT,
    Probe,
    Segmenter,
    _latest_status,
    _values,
    send_closed_loop,
    stamp_key,
)

from davss_msgs.msg import FrameInfo  # noqa: E402
from davss_ros.checkpoint import save_checkpoint  # noqa: E402
from davss_ros.config import load_config  # noqa: E402
from davss_ros.model import build_davss_net  # noqa: E402
from davss_ros.ros.diagnostics import process_rss_bytes, process_threads  # noqa: E402
from davss_ros.ros.image import numpy_to_image  # noqa: E402
from davss_ros.ros.node import FAILURE, SUCCESS  # noqa: E402
from davss_ros.tools.harness import unique_domain_id, wait_until  # noqa: E402

H, W = 64, 128
NS = "/hard"
IMAGE = f"{NS}/image"
OUT = f"{NS}/davss_segmenter"
FQN = f"{NS}/davss_segmenter"

# Every encoding of sensor_msgs/image_encodings.hpp the node does not take, and a few
# spellings a driver might send by mistake.
UNSUPPORTED_ENCODINGS = [
    "rgb16", "rgba16", "bgr16", "bgra16", "mono16",
    "8UC1", "8UC2", "8UC3", "8UC4", "8SC1", "8SC2", "8SC3", "8SC4",
    "16UC1", "16UC2", "16UC3", "16UC4", "16SC1", "16SC2", "16SC3", "16SC4",
    "32SC1", "32SC2", "32SC3", "32SC4", "32FC1", "32FC2", "32FC3", "32FC4",
    "64FC1", "64FC2", "64FC3", "64FC4",
    "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
    "bayer_rggb16", "bayer_bggr16", "bayer_gbrg16", "bayer_grbg16",
    "yuv422", "uyvy", "yuyv", "yuv422_yuy2", "nv21", "nv24",
    "jpeg", "png", "", "RGB8", "rgb8 ",
]


def _domain_id() -> int:
    # Unique per test process and apart from test_node.py's.
    return unique_domain_id(salt=1)


def textured(h: int = H, w: int = W, shift: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.roll(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), shift, axis=1)


def image_msg(pixels: np.ndarray, stamp: float, encoding: str = "rgb8") -> Image:
    msg = numpy_to_image(pixels, encoding)
    msg.header.frame_id = "camera"
    msg.header.stamp.sec = int(stamp)
    msg.header.stamp.nanosec = int(round((stamp - int(stamp)) * 1e9))
    return msg


def raw_msg(encoding: str, height: int, width: int, step: int, size: int,
            stamp: float) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.data = array.array("B", bytes(size))
    msg.header.stamp.sec = int(stamp)
    return msg


class Stream:
    """Closed-loop sending and waiting on the node's counters."""

    def __init__(self, probe: Probe, node) -> None:
        self.probe, self.node = probe, node

    def send(self, msgs: list[Image]) -> list[FrameInfo]:
        """Each frame after the previous one's FrameInfo arrived; the FrameInfos."""
        return send_closed_loop(self.probe, IMAGE, f"{OUT}/frame_info", msgs)

    def send_bad(self, msg: Image, counter: str) -> None:
        """Publish a frame that makes no output; wait until ``stats.<counter>`` grows."""
        before = getattr(self.node.stats, counter)
        self.probe.publisher(IMAGE).publish(msg)
        deadline = time.monotonic() + TIMEOUT
        while getattr(self.node.stats, counter) == before:
            assert time.monotonic() < deadline, f"stats.{counter} did not grow"
            time.sleep(0.005)

    def assert_accounted(self) -> None:
        assert self.node._worker.wait_idle(TIMEOUT)
        s = self.node.stats
        assert s.unaccounted() == 0, (
            f"received {s.input_count} != processed {s.output_count} + dropped {s.dropped} + "
            f"rejected {s.rejected} + failed {s.failed} + discarded {s.discarded}")


@pytest.fixture(scope="module")
def domain_id():
    return _domain_id()


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL_MODEL_YAML)
    return str(path)


def overrides(model_yaml: str, **extra) -> dict:
    return {"model.config": model_yaml, "model.device": "cpu", "input.width": W,
            "input.height": H, "schedule.policy": "fixed", "schedule.key_interval": 10,
            **extra}


@pytest.fixture(scope="module")
def probe(domain_id):
    p = Probe(domain_id)
    p.listen(f"{OUT}/labels", Image)
    p.listen(f"{OUT}/frame_info", FrameInfo)
    p.listen("/diagnostics", DiagnosticArray)
    yield p
    p.close()


@pytest.fixture(scope="module")
def seg(domain_id, model_yaml, probe):
    s = Segmenter(domain_id, overrides(model_yaml), namespace=NS, share=probe)
    yield s
    s.close()


@pytest.fixture
def stream(seg, probe):
    """The node active, matched to the probe, its state reset (next frame key)."""
    node = seg.node
    if node.state == "unconfigured":
        assert node.trigger_configure() == SUCCESS
    if node.state == "inactive":
        assert node.trigger_activate() == SUCCESS
    probe.wait_matched([IMAGE], [f"{OUT}/labels", f"{OUT}/frame_info"])
    # Both sides of each match: the node's reader has the camera's writer (a best-effort
    # frame sent before that is lost), its writers have the probe's readers.
    seg.wait_input_matched()
    seg.wait_outputs_seen([f"{OUT}/labels", f"{OUT}/frame_info"])
    assert node._worker.wait_idle(TIMEOUT)
    node.segmenter.reset()
    probe.clear()
    return Stream(probe, node)


def labels_of(probe: Probe, msg: Image, timeout: float = TIMEOUT) -> np.ndarray:
    want = stamp_key(msg.header)
    topic = f"{OUT}/labels"
    assert probe.wait(lambda: any(stamp_key(m.header) == want for m in probe.got[topic]),
                      timeout)
    out = next(m for m in probe.messages(topic) if stamp_key(m.header) == want)
    return np.frombuffer(out.data, np.uint8).reshape(out.height, out.width)


# -- bad input --------------------------------------------------------------------------------
def test_every_unsupported_encoding_is_a_counted_error_and_the_node_keeps_running(
        stream, probe):
    node = stream.node
    s = node.stats
    rejected, errors = s.rejected, s.errors_by_kind["encoding"]
    for i, encoding in enumerate(UNSUPPORTED_ENCODINGS):
        stream.send_bad(raw_msg(encoding, H, W, 3 * W, 3 * W * H, 3000 + i), "rejected")
    n = len(UNSUPPORTED_ENCODINGS)
    assert s.rejected - rejected == n
    assert s.errors_by_kind["encoding"] - errors == n
    assert "unsupported input encoding" in s.last_error
    assert not probe.messages(f"{OUT}/labels")  # none of them produced an output
    # ERROR while the bad frames are within the error window (see the non-finite test)
    status = _latest_status(probe, FQN, lambda st: f"encoding={errors + n}" in
                            _values(st)["errors by kind"]
                            and st.level == DiagnosticStatus.ERROR)
    assert int(_values(status)["frames rejected"]) >= n
    # Still running: the next good frame is segmented.
    (info,) = stream.send([image_msg(textured(), 3100.0)])
    assert info.is_key_frame
    stream.assert_accounted()


def test_zero_sizes_tiny_frames_and_bad_layouts_are_rejected_by_kind(stream, probe):
    node = stream.node
    before = dict(node.stats.errors_by_kind)
    row = 3 * W
    cases = [
        (raw_msg("rgb8", H, 0, 0, 0, 3200), "empty"),  # zero width
        (raw_msg("rgb8", 0, W, row, 0, 3201), "empty"),  # zero height
        (raw_msg("rgb8", 0, 0, 0, 0, 3202), "empty"),
        (raw_msg("rgb8", H, W, row, row * H + 7, 3203), "data_length"),  # too long
        (raw_msg("rgb8", H, W, row, row * (H - 1), 3204), "data_length"),  # a row short
        (raw_msg("rgb8", H, W, row - 1, (row - 1) * H, 3205), "step"),  # step < row
        (raw_msg("mono8", 2, 2, 2, 4, 3206), "too_small"),
        (raw_msg("bgr8", 3, W, row, row * 3, 3207), "too_small"),
    ]
    for msg, _kind in cases:
        stream.send_bad(msg, "rejected")
    after = node.stats.errors_by_kind
    for kind in ("empty", "data_length", "step", "too_small"):
        expected = sum(1 for _, k in cases if k == kind)
        assert after[kind] - before.get(kind, 0) == expected, kind
    assert not probe.messages(f"{OUT}/labels")
    stream.send([image_msg(textured(), 3210.0)])
    stream.assert_accounted()


def test_resolution_change_mid_stream_forces_a_key_frame(stream, probe):
    node = stream.node
    forced = node.stats.forced_keys["resolution_change"]
    small = [image_msg(textured(shift=i), 4000 + i * 0.1) for i in range(3)]
    big = [image_msg(textured(96, 192, shift=i), 4000.3 + i * 0.1) for i in range(2)]
    back = [image_msg(textured(shift=9), 4000.5)]
    infos = stream.send(small + big + back)
    assert [m.is_key_frame for m in infos] == [True, False, False, True, False, True]
    assert infos[3].key_reason == "resolution_change"
    assert infos[5].key_reason == "resolution_change"
    assert labels_of(probe, big[1]).shape == (96, 192)  # outputs follow the new size
    assert labels_of(probe, back[0]).shape == (H, W)
    assert node.stats.forced_keys["resolution_change"] - forced == 2
    stream.assert_accounted()


def test_stamps_going_backwards_or_jumping_reset_the_propagation(stream, probe):
    node = stream.node
    assert node.get_parameter("input.max_stamp_gap").value == 1.0
    stamps = [5000.0, 5000.1, 5000.2,  # a clip
              4990.0, 4990.1,  # the bag loops: back in time
              4995.0, 4995.1]  # a 4.9 s pause: forward jump beyond max_stamp_gap
    infos = stream.send([image_msg(textured(shift=i), t) for i, t in enumerate(stamps)])
    assert [m.is_key_frame for m in infos] == [True, False, False, True, False, True, False]
    assert infos[3].key_reason == "stamp_backwards"
    assert infos[5].key_reason == "stamp_jump"
    forced = node.stats.forced_keys
    assert forced["stamp_backwards"] >= 1 and forced["stamp_jump"] >= 1
    status = _latest_status(probe, FQN, lambda st: "stamp_jump" in
                            _values(st)["forced key frames"])
    assert "stamp_backwards" in _values(status)["forced key frames"]

    # The gap is a live parameter: 0 switches the forward-jump rule off.
    (result,) = node.set_parameters([Parameter("input.max_stamp_gap", value=0.0)])
    assert result.successful and node.segmenter.max_stamp_gap is None
    try:
        infos = stream.send([image_msg(textured(shift=7), 5100.0)])
        assert not infos[0].is_key_frame
    finally:
        node.set_parameters([Parameter("input.max_stamp_gap", value=1.0)])
    assert node.segmenter.max_stamp_gap == 1.0
    stream.assert_accounted()


def test_black_and_constant_frames_are_segmented_without_errors(stream, probe):
    node = stream.node
    errors = node.stats.error_count
    frames = [np.zeros((H, W, 3), np.uint8)] * 3 + [np.full((H, W, 3), 128, np.uint8)] * 3 \
        + [np.full((H, W, 3), 255, np.uint8)] * 2
    msgs = [image_msg(f, 6000 + 0.1 * i) for i, f in enumerate(frames)]
    infos = stream.send(msgs)
    assert len(infos) == len(msgs)
    # Black to grey to white are scene cuts; within each run the frames propagate.
    assert [m.is_key_frame for m in infos[:3]] == [True, False, False]
    for msg in msgs:
        labels = labels_of(probe, msg)
        assert (labels < node.segmenter.num_classes).all()  # no ignore: output was finite
    assert all(np.isfinite(m.mean_distortion) and 0 <= m.mean_distortion <= 1 for m in infos)
    assert node.stats.error_count == errors and node.stats.invalid == 0
    stream.assert_accounted()


def test_nonfinite_model_output_flags_the_frame_and_forces_the_next_key(stream, probe):
    node = stream.node
    invalid = node.stats.invalid
    fired = []

    def poison(module, inputs, output):  # an injected fault on the real segmenter, once
        if fired:
            return None
        fired.append(True)
        return torch.full_like(output, float("nan"))

    handle = node.segmenter.net.segmenter.register_forward_hook(poison)
    try:
        msgs = [image_msg(textured(shift=i), 7000 + 0.1 * i) for i in range(3)]
        infos = stream.send(msgs)
    finally:
        handle.remove()
    assert fired
    assert infos[0].is_key_frame  # the poisoned key frame is still published...
    assert (labels_of(probe, msgs[0]) == 255).all()  # ...flagged: every pixel 'ignore'
    assert infos[1].is_key_frame and infos[1].key_reason == "nonfinite_output"
    assert (labels_of(probe, msgs[1]) < node.segmenter.num_classes).all()
    assert not infos[2].is_key_frame
    assert node.stats.invalid - invalid == 1
    # Within the error window, a status counts the invalid frame at level ERROR (a later
    # one, once the window has passed on a slow machine, is back to its usual level).
    status = _latest_status(probe, FQN, lambda st: _values(st)["frames invalid"] ==
                            str(invalid + 1) and st.level == DiagnosticStatus.ERROR)
    assert "nonfinite_output" in _values(status)["errors by kind"]
    stream.assert_accounted()


def test_out_of_memory_in_the_model_is_caught_reported_and_the_frame_skipped(stream, probe):
    """The CUDA OOM path on any machine: the real segmenter raises OutOfMemoryError once."""
    node = stream.node
    failed, oom = node.stats.failed, node.stats.errors_by_kind["out_of_memory"]
    fired = []

    def out_of_memory(module, inputs):
        if not fired:
            fired.append(True)
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    handle = node.segmenter.net.segmenter.register_forward_pre_hook(out_of_memory)
    try:
        first = image_msg(textured(), 7100.0)
        stream.send_bad(first, "failed")  # skipped: no outputs
        infos = stream.send([image_msg(textured(shift=1), 7100.1),
                             image_msg(textured(shift=2), 7100.2)])
    finally:
        handle.remove()
    assert node.state == "active" and node._worker.alive
    assert node.stats.failed - failed == 1
    assert node.stats.errors_by_kind["out_of_memory"] - oom == 1
    assert "out of memory" in node.stats.last_error
    assert not any(stamp_key(m.header) == stamp_key(first.header)
                   for m in probe.messages(f"{OUT}/labels"))
    assert infos[0].is_key_frame and infos[0].key_reason == "recovery"
    assert not infos[1].is_key_frame
    status = _latest_status(probe, FQN, lambda st: f"out_of_memory={oom + 1}" in
                            _values(st)["errors by kind"])
    assert int(_values(status)["frames failed"]) >= failed + 1
    stream.assert_accounted()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_real_cuda_out_of_memory_is_caught_and_the_node_recovers(
        domain_id, model_yaml, probe):
    seg = Segmenter(domain_id, overrides(model_yaml, **{"model.device": "cuda"}),
                    namespace="/gpu")
    filler = []
    try:
        node = seg.node
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        probe.listen("/gpu/davss_segmenter/frame_info", FrameInfo)
        probe.wait_matched(["/gpu/image"], ["/gpu/davss_segmenter/frame_info"])
        torch.cuda.empty_cache()
        # Take all the GPU memory there is, in ever smaller blocks, so that the next frame's
        # activations (hundreds of KiB at this size) cannot be allocated.
        for block in (2**28, 2**24, 2**20, 2**16):
            try:
                while True:
                    filler.append(torch.empty(block, dtype=torch.uint8, device="cuda"))
            except torch.OutOfMemoryError:
                pass
        probe.publisher("/gpu/image").publish(image_msg(textured(), 8000.0))
        deadline = time.monotonic() + TIMEOUT
        while node.stats.failed == 0:
            assert time.monotonic() < deadline, "no out-of-memory failure recorded"
            time.sleep(0.01)
        assert node.stats.errors_by_kind["out_of_memory"] == 1
        filler.clear()
        torch.cuda.empty_cache()
        probe.publisher("/gpu/image").publish(image_msg(textured(), 8000.1))
        topic = "/gpu/davss_segmenter/frame_info"
        assert probe.wait(lambda: any(m.header.stamp.sec == 8000 for m in probe.got[topic]))
        info = probe.messages(topic)[-1]
        assert info.is_key_frame and info.key_reason == "recovery"
    finally:
        filler.clear()
        seg.close()


def test_worker_puts_every_item_in_exactly_one_outcome():
    from davss_ros.ros.worker import LatestFrameWorker

    gate, discarded, processed = threading.Event(), [], []
    worker = LatestFrameWorker(lambda item: (gate.wait(TIMEOUT), processed.append(item)),
                               on_discard=discarded.append)
    outcomes = [worker.offer(0)]
    deadline = time.monotonic() + TIMEOUT
    while worker.waiting and time.monotonic() < deadline:  # 0 is being processed
        time.sleep(0.005)
    outcomes += [worker.offer(1), worker.offer(2)]  # 2 replaces 1
    assert worker.clear() and not worker.clear()  # 2 is discarded
    outcomes.append(worker.offer(3))  # waits...
    assert not worker.stop(timeout=0)  # ...and is discarded: stopping while 0 still runs
    outcomes.append(worker.offer(4))  # refused
    gate.set()
    assert worker.stop(timeout=5.0)
    assert outcomes == ["queued", "queued", "replaced", "queued", "refused"]
    assert processed == [0] and worker.dropped == 1 and discarded == [2, 3, 4]
    assert len(processed) + worker.dropped + worker.discarded == len(outcomes)


# -- model files ------------------------------------------------------------------------------
class _RunsCode:
    """A pickled object that would create a file if unpickling ran its __reduce__."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model_yaml):
    """A good checkpoint and the unusable kinds of file, by name."""
    root = tmp_path_factory.mktemp("ck")
    cfg = load_config(model_yaml)
    cfg.model.input_height, cfg.model.input_width = H, W
    good = save_checkpoint(root / "good.pt", config=cfg,
                           state_dict=build_davss_net(cfg.model).state_dict())
    files = {"good": good}

    payload = torch.load(good, weights_only=True)
    payload["meta"] = {"hook": _RunsCode(root / "code_ran")}
    torch.save(payload, root / "pickled.pt")
    files["pickled"] = root / "pickled.pt"

    data = good.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) * 2 // 3])
    files["truncated"] = root / "truncated.pt"

    # Weights trained with another configuration (wider ASPP) under this file's header.
    other = load_config(model_yaml)
    other.model.segmenter.aspp_channels = 32
    payload = torch.load(good, weights_only=True)
    payload["state_dict"] = build_davss_net(other.model).state_dict()
    torch.save(payload, root / "other_config.pt")
    files["other_config"] = root / "other_config.pt"

    files["directory"] = root / "a_directory.pt"
    files["directory"].mkdir()
    files["marker"] = root / "code_ran"
    return files


@pytest.mark.parametrize("kind, reason", [
    ("pickled", "refused: the file holds pickled Python objects"),
    ("truncated", "truncated or corrupt"),
    ("other_config", "weights do not match the model its configuration builds"),
    ("directory", "not a file"),
])
def test_an_unusable_checkpoint_leaves_the_node_unconfigured_until_a_good_one(
        seg, checkpoints, kind, reason):
    node = seg.nodes[1] if len(seg.nodes) > 1 else seg.add({"model.device": "cpu"}, "/ck")
    if node.state == "inactive":
        assert node.trigger_cleanup() == SUCCESS
    errors = node.stats.errors_by_kind["configure"]
    bad = checkpoints[kind]
    node.set_parameters([Parameter("model.checkpoint", value=str(bad))])
    assert node.trigger_configure() == FAILURE
    assert node.state == "unconfigured" and node.segmenter is None and node._worker is None
    assert bad.name in node.configure_error and reason in node.configure_error
    assert node.stats.errors_by_kind["configure"] == errors + 1
    assert not checkpoints["marker"].exists()  # the pickled payload never ran
    # A later configure with a good file succeeds.
    node.set_parameters([Parameter("model.checkpoint", value=str(checkpoints["good"]))])
    assert node.trigger_configure() == SUCCESS
    assert node.state == "inactive" and "good.pt" in node._model_text
    assert node.configure_error == ""
    assert node.trigger_cleanup() == SUCCESS


# -- faults -----------------------------------------------------------------------------------
def test_camera_publisher_disappearing_and_coming_back(stream, probe, seg):
    node = stream.node
    lost = node.stats.lost
    stream.send([image_msg(textured(shift=i), 9000 + 0.1 * i) for i in range(3)])
    # The camera goes away: the node keeps running and says it has no images.
    probe.drop_publisher(IMAGE)
    status = _latest_status(probe, FQN, lambda st: "no images" in st.message,
                            timeout=node.stats.window_s + TIMEOUT)
    assert status.level == DiagnosticStatus.WARN
    assert node.state == "active" and node._worker.alive
    wait_until(lambda: node.input_publisher_count() == 0, TIMEOUT, "the old writer stayed")
    # It comes back (a new writer whose sequence numbers start again at 1): sent once the
    # node's reader has matched it, not just once the camera sees the reader.
    probe.wait_matched([IMAGE], [f"{OUT}/frame_info"])
    seg.wait_input_matched()
    infos = stream.send([image_msg(textured(shift=3 + i), 9000.3 + 0.1 * i) for i in range(3)])
    assert len(infos) == 3
    assert node.stats.lost == lost  # a restarted camera is no loss
    subs = [s for s in node.subscriptions if s.topic_name == IMAGE]
    assert len(subs) == 1
    stream.assert_accounted()


def test_a_best_effort_camera_on_a_reliable_subscription_is_reported(
        seg, probe, model_yaml):
    node = seg.add(overrides(model_yaml, **{"qos.reliability": "reliable"}), "/rel")
    try:
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        from rclpy.qos import qos_profile_sensor_data

        probe.publisher("/rel/image", Image, qos_profile_sensor_data)
        status = _latest_status(probe, "/rel/davss_segmenter",
                                lambda st: "best-effort publisher" in st.message)
        assert status.level == DiagnosticStatus.WARN
        assert "qos.reliability" in status.message
        probe.drop_publisher("/rel/image")
    finally:
        seg.remove(node)


# What would betray a leak, counted exactly: live objects of these kinds (the garbage
# collector sees every instance of a Python class).
LEAK_KINDS = ("Subscription", "Publisher", "Timer", "Client", "Service", "EventHandler",
              "VideoSegmenter", "LatestFrameWorker", "PropagationState", "Thread")


def _live_objects() -> dict[str, int]:
    counts = dict.fromkeys(LEAK_KINDS, 0)
    for obj in gc.get_objects():
        for cls in type(obj).__mro__:
            if cls.__name__ in counts:
                counts[cls.__name__] += 1
                break
    return counts


def _leak_baseline(node) -> dict:
    gc.collect()
    return {
        "python_threads": sorted(t.name for t in threading.enumerate()
                                 if t.name != "test_camera"),
        "os_threads": process_threads(),
        "subscriptions": sorted(s.topic_name for s in node.subscriptions),
        "publishers": sorted(p.topic_name for p in node.publishers),
        "objects": _live_objects(),
        "rss": process_rss_bytes(),
    }


def _assert_no_leak(before: dict, mid: dict, after: dict, what: str) -> None:
    """Nothing of ``LEAK_KINDS`` more, the same threads and endpoints; memory flat.

    Memory: the allocator settles during the first half of the cycles (pools, arenas,
    DDS buffers: up to 15 MB seen), so the bound is on the second half, where noise was
    0 to 6.8 MB here; a leaked model (the object counts catch it exactly) or a leak of
    100 kB a cycle over 50 cycles shows above it.
    """
    assert after["python_threads"] == before["python_threads"]  # each worker thread ended
    assert after["subscriptions"] == before["subscriptions"]
    assert after["publishers"] == before["publishers"]
    # At most one more of a kind: an executor keeps the entities of its last wait until it
    # waits again, and that can be the newest subscription and its event handlers. A leak
    # is one (or more) per cycle: 8 or 50 here.
    grown = {k: (before["objects"][k], n) for k, n in after["objects"].items()
             if n > before["objects"][k] + 1}
    assert not grown, f"more live objects after {what}: {grown}"
    assert after["os_threads"] <= mid["os_threads"], (mid["os_threads"], after["os_threads"])
    first = (mid["rss"] - before["rss"]) / 2**20
    second = (after["rss"] - mid["rss"]) / 2**20
    print(f"{what}: RSS {first:+.1f} MB then {second:+.1f} MB; OS threads "
          f"{before['os_threads']} -> {mid['os_threads']} -> {after['os_threads']}")
    assert second < 10.0, f"RSS grew {second:.1f} MB over the second half of {what}"


def test_100_deactivate_activate_cycles_under_input_leak_nothing(stream, probe, seg):
    node = stream.node
    stop = threading.Event()
    sent = [0]

    def camera():  # ~100 Hz of small frames while the node cycles
        pub = probe.publisher(IMAGE)
        frames = [image_msg(textured(shift=i), 0.0) for i in range(8)]
        i = 0
        while not stop.is_set():
            msg = frames[i % len(frames)]
            t = 10_000 + 0.01 * i
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
            pub.publish(msg)
            sent[0] += 1
            i += 1
            time.sleep(0.01)

    taken_before = node.stats.input_count + node.stats.lost
    thread = threading.Thread(target=camera, daemon=True, name="test_camera")
    thread.start()
    try:
        # Warm up under input, so that the lazily started pools (the executors' worker
        # threads, DDS, OpenCV, torch) exist before the baseline.
        time.sleep(0.5)
        for _ in range(3):
            assert node.trigger_deactivate() == SUCCESS
            assert node.trigger_activate() == SUCCESS
        time.sleep(0.5)
        before = _leak_baseline(node)
        processed = node.stats.output_count
        marks = []
        for i in range(100):
            assert node.trigger_deactivate() == SUCCESS
            assert node.trigger_activate() == SUCCESS
            time.sleep(0.01)
            if i == 49:
                marks.append(_leak_baseline(node))
    finally:
        stop.set()
        thread.join(5.0)
    time.sleep(0.5)  # let the last frames in flight arrive
    stream.assert_accounted()
    assert node.stats.output_count > processed  # frames were segmented between cycles
    # No frame counted twice: what the node took in or saw lost is at most what was sent.
    assert node.stats.input_count + node.stats.lost - taken_before <= sent[0]
    _assert_no_leak(before, marks[0], _leak_baseline(node), "100 deactivate/activate cycles")
    # The executor survived every subscription teardown (no QoS event handlers to race
    # with), and the camera side sees exactly one subscription on the image topic.
    assert seg.spinning
    assert probe.node.count_subscribers(IMAGE) == 1
    # And the node still segments, once the last activation's reader has matched the
    # camera (a best-effort frame sent before that is lost).
    probe.wait_matched([IMAGE], [f"{OUT}/frame_info"])
    seg.wait_input_matched()
    stream.send([image_msg(textured(), 11_000.0)])


def test_configure_cleanup_cycles_leak_no_threads_publishers_or_memory(seg, probe):
    node = seg.node
    if node.state == "active":
        assert node.trigger_deactivate() == SUCCESS
    if node.state == "inactive":
        assert node.trigger_cleanup() == SUCCESS
    for _ in range(2):  # warm-up cycles
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_cleanup() == SUCCESS
    before = _leak_baseline(node)
    marks = []
    for i in range(16):
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        assert node.trigger_deactivate() == SUCCESS
        assert node.trigger_cleanup() == SUCCESS
        if i == 7:
            marks.append(_leak_baseline(node))
    assert node.segmenter is None and node._worker is None and not node._pubs
    _assert_no_leak(before, marks[0], _leak_baseline(node), "16 configure/cleanup cycles")


def test_worker_keeps_one_slot_per_stream_and_takes_the_oldest_waiting_first():
    from davss_ros.ros.worker import LatestFrameWorker

    gate, processed = threading.Event(), []
    worker = LatestFrameWorker(lambda item: (gate.wait(TIMEOUT), processed.append(item)))
    worker.offer("a0", "front")
    deadline = time.monotonic() + TIMEOUT
    while worker.waiting and time.monotonic() < deadline:  # a0 is being processed
        time.sleep(0.005)
    outcomes = [worker.offer("a1", "front"), worker.offer("b1", "rear"),
                worker.offer("a2", "front")]  # a2 replaces a1 only, and queues behind b1
    assert outcomes == ["queued", "queued", "replaced"] and worker.waiting == 2
    assert worker.dropped_by("front") == 1 and worker.dropped_by("rear") == 0
    gate.set()
    assert worker.wait_idle(timeout=5.0)
    assert processed == ["a0", "b1", "a2"]
    assert worker.stop(timeout=5.0)


def test_worker_with_a_deeper_queue_keeps_that_many_frames_and_drops_the_oldest():
    from davss_ros.ros.worker import LatestFrameWorker

    with pytest.raises(ValueError, match="depth"):
        LatestFrameWorker(lambda item: None, depth=0)
    gate, processed = threading.Event(), []
    worker = LatestFrameWorker(lambda item: (gate.wait(TIMEOUT), processed.append(item)),
                               depth=2)
    worker.offer("a0", "front")
    deadline = time.monotonic() + TIMEOUT
    while worker.waiting and time.monotonic() < deadline:  # a0 is being processed
        time.sleep(0.005)
    outcomes = [worker.offer("a1", "front"), worker.offer("b1", "rear"),
                worker.offer("a2", "front"), worker.offer("a3", "front")]
    # a1 and a2 fit the front queue; a3 drops a1, the oldest
    assert outcomes == ["queued", "queued", "queued", "replaced"]
    assert worker.waiting_items("front") == ["a2", "a3"] and worker.waiting == 3
    assert worker.dropped_by("front") == 1 and worker.dropped_by("rear") == 0
    gate.set()
    assert worker.wait_idle(timeout=5.0)
    assert processed == ["a0", "b1", "a2", "a3"]  # oldest first over both cameras
    assert worker.stop(timeout=5.0)


def test_worker_threads_run_two_streams_at_once_and_one_stream_in_order():
    from davss_ros.ros.worker import LatestFrameWorker

    with pytest.raises(ValueError, match="threads"):
        LatestFrameWorker(lambda item: None, threads=0)
    lock = threading.Lock()
    running, most, order = set(), {}, []
    gates = {"front": threading.Event(), "rear": threading.Event()}

    def process(item):
        stream = item[0]
        with lock:
            running.add(item)
            most[stream] = max(most.get(stream, 0), sum(i[0] == stream for i in running))
            most["all"] = max(most.get("all", 0), len(running))
        gates[stream].wait(TIMEOUT)
        with lock:
            running.discard(item)
            order.append(item)

    worker = LatestFrameWorker(process, threads=2, depth=3)
    for i in range(3):
        worker.offer(("front", i), "front")
    worker.offer(("rear", 0), "rear")
    deadline = time.monotonic() + TIMEOUT
    while len(running) < 2 and time.monotonic() < deadline:  # front 0 and rear 0 at once
        time.sleep(0.005)
    assert running == {("front", 0), ("rear", 0)}
    gates["rear"].set()  # the free thread may not take front 1 while front 0 runs
    deadline = time.monotonic() + TIMEOUT
    while ("rear", 0) not in order and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert running == {("front", 0)}
    gates["front"].set()
    assert worker.wait_idle(TIMEOUT)
    assert [i for i in order if i[0] == "front"] == [("front", 0), ("front", 1), ("front", 2)]
    assert most["front"] == 1 and most["all"] == 2
    assert worker.stop(timeout=5.0) and not worker.alive
