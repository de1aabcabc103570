"""FastDDS's shared memory: a dead process's segment is removed, a live one's is kept, and a
nearly full /dev/shm is warned about. Real rclpy participants with LARGE_DATA."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# LARGE_DATA participants, as the node's, here too (conftest.py picks DEFAULT for the other
# ROS tests); set before rclpy creates this process's participant.
os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"

rclpy = pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")

from davss_ros.ros import shm  # noqa: E402
from davss_ros.tools.harness import unique_domain_id  # noqa: E402

pytestmark = pytest.mark.skipif(shm.shared_memory() is None, reason="no /dev/shm here")

# A participant process: it starts, prints the lock files in /dev/shm (its own segment's
# among them) and ends with os._exit, as a killed driver would ('die'), or cleanly.
PARTICIPANT = textwrap.dedent("""
    import os, sys
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    import rclpy
    rclpy.init()
    node = rclpy.create_node("shm_participant")
    print(" ".join(sorted(n for n in os.listdir("/dev/shm") if n.endswith("_el"))), flush=True)
    if sys.argv[1] == "die":
        os._exit(0)
    node.destroy_node()
    rclpy.shutdown()
""")


def _segment_locks() -> set[str]:
    """The lock files of the participant segments in /dev/shm, live or dead."""
    return {f"{n}_el" for n in shm.segment_names()}


def _held_segments() -> set[str]:
    """The segments whose lock a live process holds (this one's too: flock is per open)."""
    import fcntl

    held = set()
    for name in _segment_locks():
        try:
            with open(shm.SHM_DIR / name, "ab") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.add(name)
    return held


def _participant(how: str) -> set[str]:
    """The segments a new participant process added while it ran."""
    before = _segment_locks()
    env = dict(os.environ, ROS_DOMAIN_ID=str(unique_domain_id(1)))
    done = subprocess.run([sys.executable, "-c", PARTICIPANT, how], env=env, timeout=60,
                          capture_output=True, text=True, check=True)
    seen = set(done.stdout.split())
    return {n for n in seen if n.startswith("fastdds_") and "port" not in n} - before


def test_a_dead_process_segment_is_removed_and_a_live_one_is_kept():
    rclpy.init()
    try:
        ours = rclpy.create_node("shm_keeper")  # a live participant of this process
        mine = _held_segments()  # this process's (and any other live process's)
        assert mine, "this process's LARGE_DATA participant has no shared-memory segment"
        dead = _participant("die")
        assert dead and dead <= _segment_locks(), "os._exit left no segment behind"
        shm.clean_zombies()
        left = _segment_locks()
        assert not dead & left, f"dead process's segments still there: {dead & left}"
        assert mine <= left, "the clean-up removed a live participant's segment"
        ours.destroy_node()
    finally:
        rclpy.shutdown()


def test_a_clean_exit_leaves_no_segment():
    gone = _participant("clean")
    assert gone, "the participant had no segment while it ran"
    assert not gone & _segment_locks()


def test_a_nearly_full_dev_shm_is_warned_about_with_the_remedy():
    roomy = shm.SharedMemory(total=512 * shm.MB, free=500 * shm.MB, segments=1)
    assert shm.low_room_warning(roomy) is None
    tight = shm.SharedMemory(total=64 * shm.MB, free=20 * shm.MB, segments=5)
    text = shm.low_room_warning(tight)
    assert tight.room == 2
    assert "only 2 more fit" in text and "--shm-size" in text and "davss shm --clean" in text


def test_destroying_the_segmenter_node_deletes_its_participant_at_once():
    """Not later, in whatever thread the garbage collector happens to run (see
    SegmenterNode.destroy_node): its segment goes with destroy_node, the collector off."""
    import gc

    from rclpy.parameter import Parameter

    from davss_ros.ros.node import SegmenterNode

    before = _held_segments()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=unique_domain_id(2))
    gc.disable()
    try:
        node = SegmenterNode(context=context, parameter_overrides=[
            Parameter("model.checkpoint", value="untrained"),
            Parameter("input.width", value=128), Parameter("input.height", value=64)])
        ours = _held_segments() - before
        assert len(ours) == 1, ours
        node.destroy_node()
        assert not ours & _held_segments(), "the participant outlived destroy_node"
    finally:
        gc.enable()
        rclpy.try_shutdown(context=context)
