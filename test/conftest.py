"""Shared test set-up: small, seeded, single-threaded torch; FastDDS's DEFAULT transports."""

import faulthandler
import os
import signal
import sys
import time

# Must be set before rclpy initialises FastDDS (see ../shared/notes/environment.md). The
# node runs with LARGE_DATA (TCP + shared memory; ros/env.py) unless told otherwise, but
# the ROS tests run on DEFAULT (UDP + shared memory): FastDDS 3.2.2, the version inside the
# newest ros-fastdds wheel, has two LARGE_DATA faults that no code of ours can avoid and
# that turned clean-clone runs red: participant deletion deadlocking in the TCP transport's
# disconnect (eProsima/Fast-DDS#6066, fixed in 3.2.3) and cross-process discovery that
# never completes (scripts/discovery_loop.py: 6 of 40 rounds with LARGE_DATA, 0 of 80 with
# DEFAULT). The files about LARGE_DATA select it themselves (test_transport.py,
# test_large_frames.py, test_shm.py). FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA make test runs
# everything on it.
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "DEFAULT")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# scripts/run_tests.py sends SIGUSR1 to a test process that ran past its time limit before
# it kills it: every thread's stack, written to the file it names (not to stderr, which
# pytest captures while a test runs), then says where the process sat.
_STACK_FILE = None
if hasattr(signal, "SIGUSR1") and os.environ.get("DAVSS_TEST_STACK_FILE"):
    _STACK_FILE = open(os.environ["DAVSS_TEST_STACK_FILE"], "w")  # noqa: SIM115 (for good)
    faulthandler.register(signal.SIGUSR1, file=_STACK_FILE, all_threads=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "known_flaky(reason): fails now and then for a known cause (the reason); "
        "scripts/run_tests.py excuses its failure only when a second run passes")


def pytest_collection_modifyitems(config, items):
    # A known-flaky test states why; the reason travels in the junit report, where
    # scripts/run_tests.py reads it.
    for item in items:
        mark = item.get_closest_marker("known_flaky")
        if mark is None:
            continue
        reason = str(mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")).strip()
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: known_flaky needs a written reason")
        item.user_properties.append(("known_flaky", reason))


_STARTED = time.monotonic()


def pytest_runtest_logreport(report):
    # A failure said the moment it happens (pytest -q prints its details only at the end of
    # the session, which a file killed for its time limit never reaches). The runner
    # repeats these lines for a file that timed out.
    if report.failed:
        text = str(report.longrepr).strip().splitlines()
        where = next((line for line in reversed(text) if line.startswith("E ")), "")
        sys.stdout.write(f"\n[davss-failed] {report.nodeid} ({report.when}, "
                         f"{report.duration:.1f} s, at {time.monotonic() - _STARTED:.0f} s): "
                         f"{where[:300]}\n")
        sys.stdout.flush()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


# Processes that started ROS participants leave without interpreter finalisation: the
# garbage collector deleting FastDDS participants at exit can block (LARGE_DATA's TCP
# transport, see scripts/run_tests.py) or crash after every test has passed and the report
# is written. Every test closes its own nodes and contexts; this only skips the exit-time
# sweep of what the interpreter still holds.
_exit_status: int | None = None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config):
    import sys

    if "rclpy" in sys.modules and _exit_status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
