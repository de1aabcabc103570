"""Run-time statistics of the segmenter and their diagnostic_msgs report.

diagnostic_updater is not available everywhere davss_ros runs, so the node builds its
``DiagnosticStatus`` here: rates over a sliding time window, latency percentiles over the
last frames, key-frame ratio, drops and errors.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

OK = DiagnosticStatus.OK  # bytes, b'\x00'
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR


@dataclass
class FrameRecord:
    done: float  # monotonic seconds when the outputs were published
    total_ms: float  # receive -> outputs published
    pipeline_ms: float  # VideoSegmenter.step wall time
    stamp_latency_ms: float  # ROS now - header.stamp at publication (camera -> outputs)
    is_key: bool
    frame_index: int


class SegmenterStats:
    """Thread-safe counters; the worker records, the diagnostics timer reads.

    ``window_s``: span of the rate, drop and error windows; ``latency_frames``: how many
    recent frames the latency percentiles cover.
    """

    def __init__(self, window_s: float = 5.0, latency_frames: int = 100) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._inputs: deque[float] = deque()
        self._outputs: deque[float] = deque()
        self._drops: deque[float] = deque()
        self._errors: deque[float] = deque()
        self.frames: deque[FrameRecord] = deque(maxlen=latency_frames)
        self.input_count = 0
        self.output_count = 0
        self.dropped = 0
        self.error_count = 0
        self.last_error = ""
        self.last_input = 0.0

    def reset(self) -> None:
        with self._lock:
            for q in (self._inputs, self._outputs, self._drops, self._errors, self.frames):
                q.clear()
            self.input_count = self.output_count = self.dropped = self.error_count = 0
            self.last_error = ""
            self.last_input = 0.0

    def record_input(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.input_count += 1
            self.last_input = now
            self._inputs.append(now)

    def record_drop(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.dropped += 1
            self._drops.append(now)

    def record_error(self, text: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.error_count += 1
            self.last_error = text
            self._errors.append(now)

    def record_frame(self, record: FrameRecord) -> None:
        with self._lock:
            self.output_count += 1
            self._outputs.append(record.done)
            self.frames.append(record)

    def snapshot(self, now: float | None = None) -> dict:
        """Rates, counts and percentiles as plain numbers."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for q in (self._inputs, self._outputs, self._drops, self._errors):
                while q and q[0] < now - self.window_s:
                    q.popleft()
            frames = list(self.frames)
            span = self.window_s
            out = {
                "input_rate": len(self._inputs) / span,
                "output_rate": len(self._outputs) / span,
                "inputs_in_window": len(self._inputs),
                "drops_in_window": len(self._drops),
                "errors_in_window": len(self._errors),
                "input_count": self.input_count,
                "output_count": self.output_count,
                "dropped": self.dropped,
                "error_count": self.error_count,
                "last_error": self.last_error,
                "since_last_input": (now - self.last_input) if self.last_input else None,
            }
        if frames:
            total = np.array([f.total_ms for f in frames])
            stamp = np.array([f.stamp_latency_ms for f in frames])
            pipe = np.array([f.pipeline_ms for f in frames])
            out.update(
                latency_median_ms=float(np.median(total)),
                latency_p95_ms=float(np.percentile(total, 95)),
                pipeline_median_ms=float(np.median(pipe)),
                stamp_latency_median_ms=float(np.median(stamp)),
                key_ratio=float(np.mean([f.is_key for f in frames])),
            )
        return out


def build_status(stats: SegmenterStats, *, name: str, hardware_id: str, state: str,
                 model: str, device: str, mode: str, input_topic: str,
                 untrained: bool, configure_error: str = "") -> DiagnosticStatus:
    """One DiagnosticStatus.

    Level ERROR after a failed configure or on frame errors within the window; WARN when
    active without input, dropping many frames, or running untrained weights.
    """
    s = stats.snapshot()
    level, problems = OK, []
    if configure_error and state == "unconfigured":
        level = ERROR
        problems.append(f"configure failed: {configure_error}")
    elif s["errors_in_window"]:
        level = ERROR
        problems.append(f"{s['errors_in_window']} bad frame(s) in the last "
                        f"{stats.window_s:g} s: {s['last_error']}")
    if state == "active":
        silent = s["since_last_input"]
        if silent is None or silent > stats.window_s:
            level = max(level, WARN)
            problems.append(f"no images on {input_topic}")
        elif s["inputs_in_window"] and s["drops_in_window"] > 0.2 * s["inputs_in_window"]:
            level = max(level, WARN)
            problems.append(
                f"dropping {s['drops_in_window']} of {s['inputs_in_window']} frames "
                "(input faster than segmentation)")
    if untrained:
        level = max(level, WARN)
        problems.append("no checkpoint: untrained weights, outputs are meaningless")
    message = "; ".join(problems) if problems else f"{state}, segmenting" \
        if state == "active" else state

    def fmt(key: str, digits: int = 1) -> str:
        value = s.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    values = [
        ("lifecycle state", state),
        ("input topic", input_topic),
        ("input rate (Hz)", fmt("input_rate", 2)),
        ("output rate (Hz)", fmt("output_rate", 2)),
        ("latency median (ms)", fmt("latency_median_ms")),
        ("latency p95 (ms)", fmt("latency_p95_ms")),
        ("pipeline median (ms)", fmt("pipeline_median_ms")),
        ("stamp latency median (ms)", fmt("stamp_latency_median_ms")),
        ("key frame ratio", fmt("key_ratio", 3)),
        ("frames received", str(s["input_count"])),
        ("frames processed", str(s["output_count"])),
        ("frames dropped", str(s["dropped"])),
        ("errors", str(s["error_count"])),
        ("last error", s["last_error"]),
        ("model", model),
        ("device", device),
        ("mode", mode),
    ]
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in values])
