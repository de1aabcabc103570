"""Run-time statistics of the segmenter and their diagnostic_msgs report.

diagnostic_updater is not available everywhere davss_ros runs, so the node builds its
``DiagnosticStatus`` here: rates over a sliding time window, latency percentiles over the
last frames, key-frame ratio, drops and errors.

Frame accounting: every frame the subscription takes ends in exactly one counter, so

    received = processed + dropped + rejected + failed + discarded

once the node is idle (:meth:`SegmenterStats.unaccounted` is the difference, frames in
flight included), and frames a publisher sent that never reached the callback show up as
``lost`` (gaps in the publisher's sequence numbers):

- processed: outputs published (``invalid`` of them had a non-finite network output and
  carry all-ignore labels);
- dropped: replaced in the one-frame slot by a newer frame before the worker took them;
- rejected: input the node cannot use (encoding, size, data length), counted per kind;
- failed: the pipeline raised (out of memory, ...); the frame is skipped;
- discarded: taken while the node was leaving the active state (deactivate, cleanup).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
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
        self.lost = 0
        self.rejected = 0
        self.failed = 0
        self.discarded = 0
        self.invalid = 0
        self.errors_by_kind: Counter[str] = Counter()
        self.forced_keys: Counter[str] = Counter()

    def reset(self) -> None:
        with self._lock:
            for q in (self._inputs, self._outputs, self._drops, self._errors, self.frames):
                q.clear()
            self.input_count = self.output_count = self.dropped = self.error_count = 0
            self.lost = self.rejected = self.failed = self.discarded = self.invalid = 0
            self.errors_by_kind.clear()
            self.forced_keys.clear()
            self.last_error = ""
            self.last_input = 0.0

    def unaccounted(self) -> int:
        """Frames received but in none of the outcome counters (those in flight)."""
        with self._lock:
            return self.input_count - (self.output_count + self.dropped + self.rejected
                                       + self.failed + self.discarded)

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

    def record_error(self, text: str, now: float | None = None, kind: str = "other") -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.error_count += 1
            self.errors_by_kind[kind] += 1
            self.last_error = text
            self._errors.append(now)

    def record_lost(self, count: int) -> None:
        """Frames a publisher sent that never reached the subscription."""
        with self._lock:
            self.lost += count

    def record_rejected(self, kind: str, text: str) -> None:
        """A frame refused as unusable input (one error of that kind)."""
        with self._lock:
            self.rejected += 1
        self.record_error(text, kind=kind)

    def record_failed(self, kind: str, text: str) -> None:
        """A frame skipped because processing raised (one error of that kind)."""
        with self._lock:
            self.failed += 1
        self.record_error(text, kind=kind)

    def record_discard(self) -> None:
        with self._lock:
            self.discarded += 1

    def record_invalid(self, text: str) -> None:
        """A processed frame whose network output was not finite."""
        with self._lock:
            self.invalid += 1
        self.record_error(text, kind="nonfinite_output")

    def record_forced_key(self, reason: str) -> None:
        """A key frame the input forced (stamp, resolution, recovery), not the schedule."""
        with self._lock:
            self.forced_keys[reason] += 1

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
                "lost": self.lost,
                "rejected": self.rejected,
                "failed": self.failed,
                "discarded": self.discarded,
                "invalid": self.invalid,
                "errors_by_kind": dict(self.errors_by_kind),
                "forced_keys": dict(self.forced_keys),
                "unaccounted": self.input_count - (
                    self.output_count + self.dropped + self.rejected + self.failed
                    + self.discarded),
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
                 untrained: bool, configure_error: str = "",
                 qos_problem: str = "") -> DiagnosticStatus:
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
    if qos_problem:
        level = max(level, WARN)
        problems.append(qos_problem)
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
        problems.append("untrained weights: outputs are meaningless")
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
        ("frames lost in transport", str(s["lost"])),
        ("frames rejected", str(s["rejected"])),
        ("frames failed", str(s["failed"])),
        ("frames discarded", str(s["discarded"])),
        ("frames invalid", str(s["invalid"])),
        ("frames in flight", str(s["unaccounted"])),
        ("errors", str(s["error_count"])),
        ("errors by kind", _counts_text(s["errors_by_kind"])),
        ("forced key frames", _counts_text(s["forced_keys"])),
        ("last error", s["last_error"]),
        ("model", model),
        ("device", device),
        ("mode", mode),
        ("memory rss (MB)", fmt_mb(process_rss_bytes())),
        ("threads", str(threading.active_count())),
    ]
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in values])


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def fmt_mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def process_rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of a process from /proc/<pid>/status (None where unreadable)."""
    return _proc_status_field(pid, "VmRSS:", 1024)


def process_threads(pid: int | str = "self") -> int | None:
    """Number of OS threads of a process from /proc/<pid>/status."""
    return _proc_status_field(pid, "Threads:", 1)


def _proc_status_field(pid: int | str, key: str, scale: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * scale
    except (OSError, ValueError, IndexError):
        return None
    return None
