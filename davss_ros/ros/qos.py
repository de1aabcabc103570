"""QoS profiles of the segmenter's topics (REP-2003).

- input: sensor-data QoS (volatile, keep last) with depth ``INPUT_DEPTH``; the worker's
  one-frame slot, not the DDS history, makes the node work on the newest frame (see
  ``INPUT_DEPTH``); reliability is a parameter because a reliable-only subscriber (or
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
# Keep-last depth of the input. The history is one queue for every publisher of the topic
# (sensor_msgs/Image has no key), so with depth 1 a frame of one camera waiting for the
# executor is overwritten by another camera's frame: DDS does not count that as lost, and
# when it was that camera's last frame no later sequence gap shows it either (two
# publishers, 30 frames: 28 seen). With a few slots the executor takes every sample and
# the worker's one-frame slot drops the stale ones, counted as dropped. Memory: up to this
# many frames of the largest size in the reader's history.
INPUT_DEPTH = 4


def reliability_policy(name: str) -> ReliabilityPolicy:
    try:
        return RELIABILITY[name]
    except KeyError:
        raise ValueError(
            f"unknown reliability {name!r}; expected one of {', '.join(RELIABILITY)}"
        ) from None


def input_qos(reliability: str = "best_effort") -> QoSProfile:
    """Sensor-data QoS, keep last ``INPUT_DEPTH`` (the worker keeps the newest frame)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=INPUT_DEPTH,
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


def no_event_handlers(kind):
    """``kind`` (rclpy's PublisherEventCallbacks or SubscriptionEventCallbacks) with no QoS
    event handlers at all, for entities destroyed while an executor spins.

    rclpy (Kilted) can raise InvalidHandle in the executor's wait-set construction, and the
    spin thread dies, when an event handler is destroyed from another thread at the wrong
    moment: seen in the node's 100-cycle deactivate/activate test, and in a test camera
    whose publisher was destroyed (after which it heard nothing more). The node's
    incompatible-QoS warning, which the default handler would log, comes from its
    diagnostics timer instead; the image subscription's loss and match events use
    ``node._SafeEventHandler``, which survives the race.
    """
    return kind(use_default_callbacks=False)
