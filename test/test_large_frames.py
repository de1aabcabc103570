"""Large frames and frame accounting per publisher (issue 17), over real rclpy + FastDDS.

A best-effort 4096x2160 rgb8 camera (26.5 MB a frame) in another process loses most of its
frames with FastDDS's default LARGE_DATA buffers; the node must say so (DDS's message_lost
count, sequence gaps, a WARN naming the publisher and what carries such frames), never stay
silent. Two publishers on one input topic must have every frame accounted for, each on its
own line of /diagnostics, also after they went away.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

# This file is about frames on the node's default transports: LARGE_DATA here and in the
# processes it starts, whatever conftest.py chose for the other ROS tests.
os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"

rclpy = pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from test_node import SMALL_MODEL_YAML, Probe, Segmenter  # noqa: E402

from davss_ros.tools.harness import HarnessError, unique_domain_id, wait_until  # noqa: E402

TIMEOUT = 30.0
BIG_W, BIG_H = 4096, 2160  # rgb8: 26.5 MB a frame
BIG_FRAMES = 6
PER_PUBLISHER = 15

# A camera: its own process (its own FastDDS participant and transports, as a driver
# would be), default LARGE_DATA, best-effort. Commands on stdin: 'big' publishes n frames
# of w x h at 4 Hz, 'small' one 128x64 frame; it answers each with 'sent <sequence number
# of its last frame>'. Anything else (or the end of stdin) destroys the publisher, so the
# node sees it go, and ends the process without the participant's teardown (FastDDS 3.2's
# TCP transport now and then blocks for good deleting a participant).
CAMERA = textwrap.dedent("""
    import os, sys, time
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    import numpy as np, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, DurabilityPolicy
    from sensor_msgs.msg import Image
    name, topic = sys.argv[1], sys.argv[2]
    w, h, n = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    rclpy.init()
    node = rclpy.create_node(name)
    pub = node.create_publisher(Image, topic, QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE))

    def image(w, h):
        m = Image(width=w, height=h, encoding="rgb8", step=3 * w)
        m.data = np.random.default_rng(0).integers(0, 256, h * w * 3, np.uint8).tobytes()
        return m

    big, small, seq = image(w, h), image(128, 64), 0
    deadline = time.monotonic() + 30  # the writer's side of the match (the node's: the test)
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if pub.get_subscription_count():
        print("ready", flush=True)
    else:  # what this camera's participant knows of the graph, for the failure message
        rclpy.spin_once(node, timeout_sec=0.1)
        print("unmatched: it sees nodes", node.get_node_names_and_namespaces(),
              "and", node.count_subscribers(topic), "subscribers on", topic, flush=True)
    for line in sys.stdin:
        if line.strip() == "big":
            for _ in range(n):
                pub.publish(big); seq += 1; time.sleep(0.25)
        elif line.strip() == "small":
            pub.publish(small); seq += 1
        else:
            break
        print(f"sent {seq}", flush=True)
    node.destroy_publisher(pub)
    print("gone", flush=True)
    os._exit(0)
""")


class CameraProcess:
    """A CAMERA child process and its stdin/stdout protocol."""

    def __init__(self, domain_id: int, name: str, topic: str, w: int = BIG_W,
                 h: int = BIG_H, n: int = BIG_FRAMES) -> None:
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id),
                   FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CAMERA, name, topic, str(w), str(h), str(n)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ready(self) -> None:
        said = self.proc.stdout.readline().strip()
        assert said == "ready", f"the camera process said {said!r} after 30 s"

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self) -> int:
        """The sequence number of its last frame, once the command was carried out."""
        words = self.proc.stdout.readline().split()
        assert words[:1] == ["sent"], words
        return int(words[1])

    def command(self, what: str) -> int:
        self.send(what)
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.stdin.close()
                self.proc.wait(TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(TIMEOUT)


def _overrides(model_yaml: str, **more) -> dict:
    return {"model.config": model_yaml, "model.device": "cpu", "input.width": 128,
            "input.height": 64, "schedule.policy": "fixed", "schedule.key_interval": 5,
            **more}


_TESTS = itertools.count()


@pytest.fixture()
def domain_id():
    # One domain per test: a camera process of an earlier test ends without its
    # participant's teardown, and a new camera's discovery beside that stale participant
    # was seen to take longer than 30 s (2 of 3 runs).
    return unique_domain_id(salt=next(_TESTS))


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL_MODEL_YAML)
    return str(path)


@pytest.fixture()
def probe(domain_id):
    p = Probe(domain_id)
    p.listen("/diagnostics", DiagnosticArray)
    p.listen("/rosout", Log, QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
    yield p
    p.close()


def _wait(predicate, what: str, timeout: float = TIMEOUT) -> None:
    try:
        wait_until(predicate, timeout, what)
    except HarnessError as exc:
        raise AssertionError(str(exc)) from None


def _warnings(probe, text: str) -> list[str]:
    return [m.msg for m in probe.messages("/rosout")
            if m.level == Log.WARN and text in m.msg]


def _publisher_lines(probe, fqn: str) -> dict[str, str]:
    """The newest status of node ``fqn``: its 'publisher ...' values."""
    for array_msg in reversed(probe.messages("/diagnostics")):
        for status in array_msg.status:
            if status.hardware_id == fqn:
                return {kv.key: kv.value for kv in status.values
                        if kv.key.startswith("publisher ")}
    return {}


CROSS_PROCESS_DISCOVERY = (
    "FastDDS 3.2.2's LARGE_DATA mode: a camera process and the node's participant sometimes "
    "never discover each other (the camera sees the probe participant of the same process, "
    "the node does not see the camera). scripts/discovery_loop.py repeats this test's "
    "set-up: 6 of 40 rounds failed with LARGE_DATA everywhere, 0 of 80 with DEFAULT "
    "everywhere (and LARGE_DATA?tcp_negotiation_timeout=200 did not help: 4 of 40), so the "
    "failure is the LARGE_DATA transports' (TCP metatraffic), not the node's or the "
    "harness's. This file keeps LARGE_DATA because it is what the node runs with (the other "
    "ROS tests run on DEFAULT, conftest.py)")


@pytest.mark.known_flaky(reason=CROSS_PROCESS_DISCOVERY)
def test_best_effort_4096x2160_frames_from_another_process_are_reported_never_silent(
        domain_id, model_yaml, probe):
    seg = Segmenter(domain_id, _overrides(model_yaml), namespace="/big")
    camera = CameraProcess(domain_id, "big_camera", "/big/image")
    try:
        node = seg.node
        seg.bring_up()
        camera.ready()
        seg.wait_input_matched(1)
        stats = node.camera_stats("")
        command = camera.command

        # The big frames: whatever DDS does with them, the node reports them, delivered or
        # lost, without any later frame to show a gap.
        assert command("big") == BIG_FRAMES
        _wait(lambda: stats.input_count + stats.lost > 0,
              "the node neither received nor reported lost any of the 4096x2160 frames")
        gaps, dds = node.loss_counts("")
        print(f"{BIG_FRAMES} frames of {BIG_W}x{BIG_H} sent: received {stats.input_count}, "
              f"lost {stats.lost} (sequence gaps {gaps}, DDS reported {dds})")

        # A small frame of the same publisher arrives and closes its sequence: every big
        # frame before it is now either received or counted lost (a gap, or DDS's count
        # where no frame of the publisher arrived before).
        last = command("small")
        _wait(lambda: stats.input_count >= 1 and any(
            r.last_seq == last for r in node.publisher_records("")),
            "the small frame after the big ones did not arrive")
        (rec,) = node.publisher_records("")
        assert rec.name == "/big_camera"
        gaps, dds = node.loss_counts("")
        print(f"after the small frame (seq {last}): received {stats.input_count}, lost "
              f"{stats.lost} (sequence gaps {gaps}, DDS reported {dds}); publisher "
              f"{rec.label}: {rec.summary()}")
        assert stats.lost == max(gaps, dds)
        # Frames from the publisher's first one here on: each received or a gap. The ones
        # before it count only where DDS reported them (seq 1, and 2 now and then, it does
        # not: measured here).
        assert rec.received + rec.lost == rec.last_seq - rec.first_seq + 1
        assert stats.input_count + stats.lost >= last - rec.first_seq + 1
        assert stats.lost > 0, "a 4096x2160 best-effort frame arrived every time"

        # The log says who lost frames and what carries them, once per publisher.
        _wait(lambda: _warnings(probe, "sockets_size=64MB"), "no loss warning on /rosout")
        texts = _warnings(probe, "sockets_size=64MB")
        # once for the publisher's gaps, once for DDS's count at most
        assert 1 <= len(texts) <= 2, texts
        for text in texts:
            assert "/big_camera" in text and "lost in transport" in text, text
            assert "qos.reliability:=reliable" in text and "8 MB" in text, text
        # /diagnostics: WARN with the loss, and the publisher's own line.
        _wait(lambda: "publisher /big_camera" in _publisher_lines(probe, "/big/davss_segmenter"),
              "no per-publisher line on /diagnostics")
    finally:
        camera.close()
        seg.close()


@pytest.mark.known_flaky(reason=CROSS_PROCESS_DISCOVERY)
def test_two_publishers_on_one_topic_have_every_frame_accounted_for(
        domain_id, model_yaml, probe):
    seg = Segmenter(domain_id, _overrides(model_yaml), namespace="/two")
    cams = []
    try:
        node = seg.node
        seg.bring_up()
        # One after the other, each matched before the next starts (started together,
        # one camera and the node once stayed strangers for 50 s; not understood yet).
        for name in ("camera_a", "camera_b"):
            cams.append(CameraProcess(domain_id, name, "/two/image", 128, 64, 0))
            cams[-1].ready()
        try:
            seg.wait_input_matched(2)
        except HarnessError as exc:
            raise AssertionError(
                f"{exc}: it matched {node.input_publisher_count()} writers; the graph has "
                f"{node.count_publishers('/two/image')}; cameras "
                f"{[c.proc.poll() for c in cams]}") from None
        for _ in range(PER_PUBLISHER):  # both at the same instant, about 10 Hz
            for cam in cams:
                cam.send("small")
            assert [cam.answer() for cam in cams]
            time.sleep(0.1)
        for cam in cams:  # the cameras go away
            cam.close()
        stats = node.camera_stats("")

        def closed() -> list:
            recs = node.publisher_records("")
            return recs if len(recs) == 2 and all(r.gone for r in recs) else []

        _wait(closed, "the node did not see both publishers go: "
              f"{[(r.label, r.summary()) for r in node.publisher_records('')]}")
        recs = {r.name: r for r in closed()}
        print("two publishers: " + "; ".join(f"{k}: {r.summary()}" for k, r in recs.items()))
        assert set(recs) == {"/camera_a", "/camera_b"}
        for rec in recs.values():
            assert rec.first_seq == 1 and rec.last_seq == PER_PUBLISHER, rec.summary()
            assert rec.received + rec.lost == PER_PUBLISHER, rec.summary()
        assert stats.input_count == sum(r.received for r in recs.values())
        assert node._worker.wait_idle(TIMEOUT)
        assert stats.unaccounted() == 0

        # /diagnostics carries each publisher's figures, closed.
        def lines() -> dict:
            found = _publisher_lines(probe, "/two/davss_segmenter")
            return found if all(f"publisher {k}" in found and found[f"publisher {k}"]
                                .endswith("gone") for k in recs) else {}

        _wait(lines, "the publishers' lines on /diagnostics")
        for name, value in lines().items():
            received, lost = map(int, re.match(r"received (\d+), lost (\d+)", value).groups())
            assert received + lost == PER_PUBLISHER, (name, value)
    finally:
        for cam in cams:
            cam.close()
        seg.close()


