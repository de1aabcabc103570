"""Record the segmenter's outputs into a bag while noting when each frame's outputs arrive.

Subscriptions are raw (``raw=True``): the serialised CDR goes into the bag as it came, and
only the small messages (frame info, label table, diagnostics) and the label images (for
scoring) are deserialised. The bag time of every message is its header stamp, so a frame's
outputs carry the input frame's time, as the node copies the input header onto them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .io import (
    DIAGNOSTICS_TYPE,
    FRAME_INFO_TYPE,
    IMAGE_TYPE,
    AtomicBagWriter,
    cdr_header_stamp,
    typestore,
)

# key -> (topic relative to the node, message type); per-frame outputs first.
FRAME_OUTPUTS = {
    "labels": IMAGE_TYPE,
    "labels_color": IMAGE_TYPE,
    "overlay": IMAGE_TYPE,
    "distortion": IMAGE_TYPE,
    "frame_info": FRAME_INFO_TYPE,
}
IMAGE_OUTPUTS = ("labels_color", "overlay")  # computed only while subscribed: opt-in


@dataclass
class FrameOutcome:
    """What came back for one input frame (``frame_info`` fields we report on)."""

    frame_index: int
    is_key: bool
    distance: int
    key_reason: str
    dropped_frames: int
    total_ms: float
    stages_ms: dict[str, float]
    arrived: float  # perf_counter at frame_info arrival


@dataclass
class RecorderState:
    """Arrivals per topic and frame, guarded by ``cond``."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    arrivals: dict[str, dict[int, float]] = field(default_factory=dict)  # key -> stamp -> t
    outcomes: dict[int, FrameOutcome] = field(default_factory=dict)  # stamp -> outcome
    order: list[int] = field(default_factory=list)  # frame_info stamps in arrival order
    label_info: object | None = None
    diagnostics: list[dict] = field(default_factory=list)  # our node's statuses
    last_output: float = 0.0  # perf_counter of the latest per-frame output
    errors: list[str] = field(default_factory=list)


class OutputRecorder:
    """Subscribes to a node's outputs in ``ros_node`` and writes them to ``writer``.

    Args:
        ros_node: the rclpy node that owns the subscriptions (spun by one thread only:
            callbacks write to the bag without a lock of their own).
        node_fqn: the segmenter's fully qualified name, e.g. ``/davss_replay/davss_segmenter``.
        frame_topics: per-frame output keys to record (see ``FRAME_OUTPUTS``).
        fallback_ns: bag time for messages whose header stamp is 0 (a label table or status
            published before the sim clock started).
        on_labels: called with (stamp_ns, raw CDR) for each label image (scoring).
        on_outcome: called with (stamp_ns, FrameOutcome) for each frame info.
        diagnostics_of: the hardware id whose statuses on /diagnostics are kept (default
            ``node_fqn``); None records no diagnostics (a second recorder of one node).
    """

    def __init__(self, ros_node, writer: AtomicBagWriter, node_fqn: str,
                 frame_topics: tuple[str, ...], *, fallback_ns: int,
                 on_labels: Callable[[int, bytes], None] | None = None,
                 on_outcome: Callable[[int, FrameOutcome], None] | None = None,
                 diagnostics_of: str | None = "") -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from davss_msgs.msg import FrameInfo
        from davss_ros.ros.label_info import label_info_class, label_info_type_name

        self.node_fqn = node_fqn.rstrip("/")
        self.hardware_id = None if diagnostics_of is None else (
            diagnostics_of.rstrip("/") or self.node_fqn)
        self.writer = writer
        self.fallback_ns = fallback_ns
        self.on_labels = on_labels
        self.on_outcome = on_outcome
        self.state = RecorderState()
        self.topics: dict[str, str] = {}  # key -> full topic name
        self.subs: dict[str, object] = {}
        ros_types = {IMAGE_TYPE: Image, FRAME_INFO_TYPE: FrameInfo}
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                              reliability=ReliabilityPolicy.RELIABLE)
        for key in frame_topics:
            msgtype = FRAME_OUTPUTS[key]
            self._subscribe(ros_node, key, f"{self.node_fqn}/{key}", msgtype,
                            ros_types[msgtype], reliable)
            self.state.arrivals[key] = {}
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # The node's label_info type: vision_msgs/LabelInfo where vision_msgs is installed.
        self._label_info_type = label_info_type_name()
        self._subscribe(ros_node, "label_info", f"{self.node_fqn}/label_info",
                        self._label_info_type, label_info_class(), latched)
        if self.hardware_id is not None:
            diag = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                              reliability=ReliabilityPolicy.RELIABLE)
            self._subscribe(ros_node, "diagnostics", "/diagnostics", DIAGNOSTICS_TYPE,
                            DiagnosticArray, diag)

    def _subscribe(self, ros_node, key, topic, msgtype, ros_type, qos) -> None:
        self.topics[key] = topic
        self.writer.add_topic(topic, msgtype)
        self.subs[key] = ros_node.create_subscription(
            ros_type, topic, lambda raw, key=key: self._on_message(key, raw), qos, raw=True)

    # -- callbacks (the recorder's executor thread) ----------------------------------------
    def _on_message(self, key: str, raw: bytes) -> None:
        now = time.perf_counter()
        try:
            stamp = cdr_header_stamp(raw)
            self.writer.write_raw(self.topics[key], stamp or self.fallback_ns, raw)
            if key == "frame_info":
                self._on_frame_info(stamp, raw, now)
            elif key == "label_info":
                msg = typestore().deserialize_cdr(raw, self._label_info_type)
                with self.state.cond:
                    self.state.label_info = msg
                    self.state.cond.notify_all()
            elif key == "diagnostics":
                self._on_diagnostics(raw)
            else:
                if key == "labels" and self.on_labels is not None:
                    self.on_labels(stamp, raw)
                with self.state.cond:
                    self.state.arrivals[key][stamp] = now
                    self.state.last_output = now
                    self.state.cond.notify_all()
        except Exception as exc:  # keep recording; the report says what went wrong
            with self.state.cond:
                self.state.errors.append(f"{self.topics.get(key, key)}: {exc}")
                self.state.cond.notify_all()

    def _on_frame_info(self, stamp: int, raw: bytes, now: float) -> None:
        m = typestore().deserialize_cdr(raw, FRAME_INFO_TYPE)
        outcome = FrameOutcome(
            frame_index=int(m.frame_index), is_key=bool(m.is_key_frame),
            distance=int(m.propagation_distance), key_reason=str(m.key_reason),
            dropped_frames=int(m.dropped_frames), total_ms=float(m.total_ms),
            stages_ms={k: float(getattr(m, f"{k}_ms")) for k in (
                "decode", "flow", "warp", "dmnet", "cfnet", "fuse", "segmenter", "encode")},
            arrived=now)
        if self.on_outcome is not None:
            self.on_outcome(stamp, outcome)
        with self.state.cond:
            if stamp not in self.state.outcomes:
                self.state.order.append(stamp)
            self.state.outcomes[stamp] = outcome
            self.state.arrivals["frame_info"][stamp] = now
            self.state.last_output = now
            self.state.cond.notify_all()

    def _on_diagnostics(self, raw: bytes) -> None:
        m = typestore().deserialize_cdr(raw, DIAGNOSTICS_TYPE)
        for status in m.status:
            if status.hardware_id.rstrip("/") == self.hardware_id:
                values = {kv.key: kv.value for kv in status.values}
                values["_message"] = status.message
                with self.state.cond:
                    self.state.diagnostics.append(values)

    # -- main thread -----------------------------------------------------------------------
    def publishers_matched(self) -> bool:
        return all(s.get_publisher_count() > 0 for k, s in self.subs.items()
                   if k != "diagnostics")

    def wait(self, predicate, timeout: float) -> bool:
        with self.state.cond:
            return self.state.cond.wait_for(predicate, timeout=timeout)

    def has(self, stamp: int, keys: tuple[str, ...]) -> bool:
        """True when every output in ``keys`` arrived for ``stamp`` (caller holds cond)."""
        return all(stamp in self.state.arrivals[k] for k in keys)
