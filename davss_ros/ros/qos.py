"""QoS profiles of the segmenter's topics (REP-2003).

- input: sensor-data QoS (volatile, keep last) with depth 1, so the node always works on
  the newest frame; reliability is a parameter because a reliable-only subscriber (or
  publisher) mismatch is the classic "no data" problem.
- image and frame outputs: reliable by default (parameter), keep last.
- label table: reliable + transient local, depth 1, so late subscribers get it.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)

RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
}

# Keep-last depth of the outputs: enough for a recorder to ride out a hiccup, small enough
# that a slow viewer never sees stale images.
OUTPUT_DEPTH = 5


def reliability_policy(name: str) -> ReliabilityPolicy:
    try:
        return RELIABILITY[name]
    except KeyError:
        raise ValueError(
            f"unknown reliability {name!r}; expected one of {', '.join(RELIABILITY)}"
        ) from None


def input_qos(reliability: str = "best_effort") -> QoSProfile:
    """Sensor-data QoS with depth 1 (the newest frame wins)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=reliability_policy(reliability),
        durability=DurabilityPolicy.VOLATILE,
    )


def output_qos(reliability: str = "reliable", depth: int = OUTPUT_DEPTH) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=reliability_policy(reliability),
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_qos() -> QoSProfile:
    """Reliable + transient local, depth 1: the last message waits for late subscribers."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def diagnostics_qos() -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=10,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
