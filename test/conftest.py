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
