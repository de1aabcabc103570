"""Shared test set-up: small, seeded, single-threaded torch; LARGE_DATA for FastDDS."""

import os

# Must be set before rclpy initialises FastDDS (see ../shared/notes/environment.md).
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


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
