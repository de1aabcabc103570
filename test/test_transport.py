"""Messages cross a real process boundary over FastDDS intact.

A publisher runs in a separate process (the venv's Python, real rclpy and FastDDS); this
process subscribes. Each test uses its own ROS_DOMAIN_ID (set in both processes before
``rclpy.init``) and its own topic names, so concurrent test runs do not see each other.
FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA is in effect in both processes (the ``ros`` fixture
sets it here, whatever conftest.py chose for the other ROS tests; the subprocess gets it
explicitly).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import queue
import runpy
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from davss_ros.tools.harness import unique_domain_id  # noqa: E402

rclpy = pytest.importorskip("rclpy")
davss_msgs_msg = pytest.importorskip("davss_msgs.msg")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

pytestmark = pytest.mark.ros

# The publisher process. Also loaded with runpy by the tests (run_name != "__main__"), so
# the expected values and the image pattern have one source.
PUBLISHER = r'''
import json
import sys
import threading
import time

import numpy as np


def frame_info_values():
    """Every FrameInfo field, each distinct from its default; floats exact in float32."""
    return {
        "frame_index": 2**40 + 12345,
        "is_key_frame": True,
        "propagation_distance": 4000000007,
        "key_reason": "distortion \u00e4",
        "valid": True,
        "distortion_ratio": 0.375,
        "mean_distortion": 0.1875,
        "decode_ms": 1.5,
        "flow_ms": 2.25,
        "warp_ms": 3.125,
        "dmnet_ms": 4.75,
        "cfnet_ms": 5.5,
        "fuse_ms": 6.0625,
        "segmenter_ms": 70.5,
        "encode_ms": 8.25,
        "total_ms": 99.75,
        "dropped_frames": 2**33 + 7,
    }


def label_info_values():
    return {
        "class_ids": [0, 1, 2, 18, 254],
        "class_names": ["road", "sidewalk", "building", "bicycle", "other"],
        "palette": [128, 64, 128, 244, 35, 232, 70, 70, 70, 119, 11, 32, 1, 2, 3],
        "ignore_id": 255,
        "threshold": 0.625,
    }


HEADER = {"sec": 1700000123, "nanosec": 456789012, "frame_id": "camera_optical_frame"}
WIDTH, HEIGHT = 1280, 720


def pattern(width=WIDTH, height=HEIGHT):
    """Deterministic rgb8 test image with no repeating rows or columns."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    c = np.arange(3, dtype=np.int64)
    img = (x[..., None] * 7 + y[..., None] * 13 + c * 85 + (x * y)[..., None] % 251) % 256
    return img.astype(np.uint8)


def _header(msg):
    msg.header.stamp.sec = HEADER["sec"]
    msg.header.stamp.nanosec = HEADER["nanosec"]
    msg.header.frame_id = HEADER["frame_id"]


def main():
    import rclpy
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )

    spec = json.loads(sys.argv[1])
    stop = threading.Event()

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    rclpy.init()
    node = rclpy.create_node("transport_test_publisher")
    kind = spec["kind"]
    if kind == "frame_info":
        from davss_msgs.msg import FrameInfo

        msg = FrameInfo()
        _header(msg)
        for name, value in frame_info_values().items():
            setattr(msg, name, value)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(FrameInfo, spec["topic"], qos)
        once = False
    elif kind == "label_info":
        from davss_msgs.msg import LabelInfo

        msg = LabelInfo()
        _header(msg)
        for name, value in label_info_values().items():
            setattr(msg, name, value)
        qos = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        pub = node.create_publisher(LabelInfo, spec["topic"], qos)
        once = True
    elif kind == "image":
        from sensor_msgs.msg import Image

        img = pattern()
        msg = Image()
        _header(msg)
        msg.height, msg.width = img.shape[:2]
        msg.encoding = "rgb8"
        msg.is_bigendian = 0
        msg.step = msg.width * 3
        msg.data = img.tobytes()
        pub = node.create_publisher(Image, spec["topic"], qos_profile_sensor_data)
        once = False
    else:
        raise SystemExit("unknown kind " + kind)

    deadline = time.monotonic() + spec["seconds"]
    print("ready", flush=True)
    if once:
        pub.publish(msg)  # before any subscriber exists: a late joiner must get it
        print("published", flush=True)
    matched = False
    while not stop.is_set() and time.monotonic() < deadline:
        if not once and (not spec.get("wait_for_match") or pub.get_subscription_count() > 0):
            if not matched:
                matched = True
                print("matched", flush=True)
            pub.publish(msg)
        time.sleep(spec.get("period", 0.1))
    node.destroy_node()
    rclpy.shutdown()
    print("exit", flush=True)


if __name__ == "__main__":
    main()
'''

_counter = itertools.count()


def _unique_domain_id() -> int:
    """1..100 (FastDDS port range safe), different per process and per test."""
    return unique_domain_id(salt=next(_counter))


class Publisher:
    """The publisher subprocess; always killed by ``close``."""

    def __init__(self, script: Path, spec: dict, domain_id: int, log: Path):
        env = dict(os.environ)
        env.update(
            ROS_DOMAIN_ID=str(domain_id),
            FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
            PYTHONUNBUFFERED="1",
        )
        self.log_path = log
        self._log = open(log, "wb")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.lines.get(timeout=0.2) == word:
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        raise AssertionError(f"publisher did not say {word!r} in {timeout} s; {self.stderr()}")

    def stderr(self) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")[-3000:]
        return f"exit code {self.proc.poll()}, stderr:\n{text}"

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.write("stop\n")
                    self.proc.stdin.flush()
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._log.close()


@pytest.fixture
def helper(tmp_path):
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    return script, runpy.run_path(str(script), run_name="transport_helper")


@pytest.fixture
def ros(monkeypatch):
    """A node in its own rclpy context on a fresh domain id; yields (node, executor, id)."""
    domain_id = _unique_domain_id()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id))
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    node = rclpy.create_node(f"transport_test_{os.getpid()}", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    try:
        yield node, executor, domain_id
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def _spin_until(executor, received: list, publisher: Publisher, timeout: float):
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
        if publisher.proc.poll() is not None:
            break
    assert received, f"nothing received in {timeout} s; {publisher.stderr()}"
    return received[0]


def _topic(name: str) -> str:
    return f"/davss_transport_test_{os.getpid()}/{name}"


def _check_header(msg, values):
    assert msg.header.stamp.sec == values["HEADER"]["sec"]
    assert msg.header.stamp.nanosec == values["HEADER"]["nanosec"]
    assert msg.header.frame_id == values["HEADER"]["frame_id"]


def test_frame_info_arrives_intact_from_another_process(helper, ros, tmp_path):
    script, values = helper
    node, executor, domain_id = ros
    FrameInfo = davss_msgs_msg.FrameInfo
    expected = values["frame_info_values"]()
    # The test covers every field of FrameInfo.msg, each set away from its default.
    assert set(expected) | {"header"} == set(FrameInfo.get_fields_and_field_types())
    default = FrameInfo()
    for name, value in expected.items():
        assert getattr(default, name) != value, name

    received = []
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(FrameInfo, _topic("frame_info"), received.append, qos)
    pub = Publisher(
        script,
        {"kind": "frame_info", "topic": _topic("frame_info"), "seconds": 60},
        domain_id,
        tmp_path / "pub.log",
    )
    try:
        pub.wait_for("ready", timeout=30)
        msg = _spin_until(executor, received, pub, timeout=30)
    finally:
        pub.close()
    _check_header(msg, values)
    for name, value in expected.items():
        assert getattr(msg, name) == value, name


def test_label_info_transient_local_reaches_late_subscriber(helper, ros, tmp_path):
    script, values = helper
    node, executor, domain_id = ros
    LabelInfo = davss_msgs_msg.LabelInfo
    expected = values["label_info_values"]()
    assert set(expected) | {"header"} == set(LabelInfo.get_fields_and_field_types())

    pub = Publisher(
        script,
        {"kind": "label_info", "topic": _topic("label_info"), "seconds": 60},
        domain_id,
        tmp_path / "pub.log",
    )
    try:
        pub.wait_for("published", timeout=30)
        # The message was published once, with no subscriber anywhere; subscribe now.
        time.sleep(0.5)
        received = []
        qos = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        node.create_subscription(LabelInfo, _topic("label_info"), received.append, qos)
        msg = _spin_until(executor, received, pub, timeout=30)
    finally:
        pub.close()
    _check_header(msg, values)
    assert list(msg.class_ids) == expected["class_ids"]
    assert list(msg.class_names) == expected["class_names"]
    assert list(msg.palette) == expected["palette"]
    assert msg.ignore_id == expected["ignore_id"]
    assert msg.threshold == expected["threshold"]


@pytest.mark.slow
def test_720p_rgb8_image_best_effort_arrives_intact_with_large_data(helper, ros, tmp_path):
    from sensor_msgs.msg import Image

    script, values = helper
    node, executor, domain_id = ros
    assert os.environ["FASTDDS_BUILTIN_TRANSPORTS"] == "LARGE_DATA"
    want = values["pattern"]()
    assert want.shape == (720, 1280, 3)

    received = []
    node.create_subscription(Image, _topic("image"), received.append, qos_profile_sensor_data)
    pub = Publisher(
        script,
        {
            "kind": "image",
            "topic": _topic("image"),
            "seconds": 60,
            "wait_for_match": True,
            "period": 0.2,
        },
        domain_id,
        tmp_path / "pub.log",
    )
    try:
        pub.wait_for("ready", timeout=30)
        # LARGE_DATA discovery can take about 3 s; the publisher waits for the match.
        msg = _spin_until(executor, received, pub, timeout=25)
    finally:
        pub.close()
    _check_header(msg, values)
    assert (msg.height, msg.width, msg.step) == (720, 1280, 1280 * 3)
    assert msg.encoding == "rgb8"
    got = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    assert got.size == want.size
    assert hashlib.sha256(got.tobytes()).hexdigest() == hashlib.sha256(want.tobytes()).hexdigest()
    got = got.reshape(want.shape)
    # A few pixels by the formula itself, independent of pattern():
    for y, x in [(0, 0), (0, 1279), (719, 0), (719, 1279), (360, 640), (17, 1001)]:
        for c in range(3):
            assert got[y, x, c] == (x * 7 + y * 13 + c * 85 + (x * y) % 251) % 256
