"""Process environment the ROS entry points need before ``rclpy.init()``."""

from __future__ import annotations

import os


def ensure_large_data_transport() -> str:
    """Select FastDDS's LARGE_DATA builtin transports unless the user chose already.

    With the default transports, best-effort (sensor-data QoS) images larger than about
    480 KB are lost entirely; LARGE_DATA (TCP + shared memory) delivers them with low
    latency. Must run before rclpy initialises the middleware. Returns the value in effect.
    """
    return os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
