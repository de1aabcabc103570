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

Frames lost in transport are counted two ways per subscription (:class:`LossLedger`):
gaps in each publisher's sequence numbers, and DDS's own count (the subscription's
``message_lost`` event); the camera's ``lost`` is the larger of the two, see the class.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

# Best-effort frames larger than this (MB) are lost between processes with FastDDS's
# default LARGE_DATA socket buffers (measured with FastDDS 3.2: 2560x1080 rgb8, 8.3 MB,
# arrives; 2304x1296, 9.0 MB, mostly does not).
LARGE_FRAME_MB = 8

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
        self._lost: deque[tuple[float, int]] = deque()
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
            for q in (self._inputs, self._outputs, self._drops, self._errors, self._lost,
                      self.frames):
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

    def record_lost(self, count: int, now: float | None = None) -> None:
        """Frames a publisher sent that never reached the subscription."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.lost += count
            self._lost.append((now, count))

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
            while self._lost and self._lost[0][0] < now - self.window_s:
                self._lost.popleft()
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
                "lost_in_window": sum(n for _, n in self._lost),
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


@dataclass
class PublisherRecord:
    """One publisher (DDS writer) of a camera's input, as the subscription saw it."""

    gid: bytes
    name: str = ""  # its node, /namespace/name, once the ROS graph knows it
    received: int = 0  # samples taken from it
    lost: int = 0  # gaps in its sequence numbers
    first_seq: int | None = None
    last_seq: int | None = None
    frame_bytes: int = 0  # data size of its largest frame
    gone: bool = False  # left the graph (or the subscription ended)

    @property
    def label(self) -> str:
        return self.name or f"gid {self.gid.hex()[:12]}"

    def summary(self) -> str:
        seq = "" if self.first_seq is None else (
            f", seq {self.first_seq}-{self.last_seq}")
        size = (f", largest frame {self.frame_bytes / 1e6:.3g} MB" if self.frame_bytes
                else "")
        return (f"received {self.received}, lost {self.lost}{seq}{size}"
                + (", gone" if self.gone else ""))


class LossLedger:
    """Frames lost in transport on one subscription, per publisher and in total.

    Two counts, neither complete on its own:

    - gaps: a sample whose sequence number is more than one past the last one taken from
      the same publisher (gid) shows the frames in between lost. Seen per publisher, but
      only once a later frame of that publisher arrives: frames before its first one taken
      here and after its last one are invisible to it.
    - DDS: the subscription's ``message_lost`` event (FastDDS's sample-lost status). DDS
      reports a sample lost once the reader has given up on it, which is when a later
      sample of that writer starts to arrive, so it reports losses that no gap will ever
      show (no frame of the publisher arrives complete: 4096x2160 best-effort frames with
      the default LARGE_DATA buffers), including frames before the first one taken. It
      does not say which publisher, and it does not count samples that the reader's
      keep-last history overwrote before the executor took them (those show as gaps).

    A frame DDS reports is also a gap once a later frame of that publisher is taken, so
    adding the two would count it twice. The rule: lost = max(gaps, DDS). The input
    history is deep enough (``qos.INPUT_DEPTH``) that the executor takes every sample
    unless it stalls for that many frames, so gaps are normally a subset of DDS's count
    and the maximum is the number lost; where overwrites and DDS losses both happen it is
    a lower bound, never a double count. Both counts are shown beside it.

    Not thread-safe on its own: the node calls it from its executor's callbacks (one
    callback group) and reads it under ``lock``.
    """

    def __init__(self, max_publishers: int = 16) -> None:
        self.lock = threading.Lock()
        self.max_publishers = max_publishers
        self.publishers: dict[bytes, PublisherRecord] = {}
        self.gaps = 0
        self.dds_lost = 0
        self.counted = 0  # max(gaps, dds_lost) as last recorded into the stats

    def restart(self) -> None:
        """A new subscription: the counts start afresh, the old publishers are closed."""
        with self.lock:
            for rec in self.publishers.values():
                rec.gone = True
            self.gaps = self.dds_lost = self.counted = 0

    def sample(self, gid: bytes, seq: int | None, nbytes: int = 0
               ) -> tuple[PublisherRecord, int, int]:
        """A sample taken: (its publisher's record, the gap it shows, newly lost frames)."""
        with self.lock:
            rec = self.publishers.get(gid)
            if rec is None:
                rec = self.publishers[gid] = PublisherRecord(gid)
                self._bound()
            rec.received += 1
            rec.frame_bytes = max(nbytes, rec.frame_bytes)
            rec.gone = False
            gap = 0
            if seq is not None:
                if rec.last_seq is not None and seq > rec.last_seq + 1:
                    gap = seq - rec.last_seq - 1
                if rec.first_seq is None:
                    rec.first_seq = seq
                if rec.last_seq is None or seq > rec.last_seq:
                    rec.last_seq = seq
            rec.lost += gap
            self.gaps += gap
            return rec, gap, self._newly_lost()

    def dds_reported(self, total_count: int) -> int:
        """The message_lost event's total for this subscription; newly lost frames."""
        with self.lock:
            self.dds_lost = max(self.dds_lost, int(total_count))
            return self._newly_lost()

    def close_absent(self, present: set[bytes]) -> list[PublisherRecord]:
        """Close the open records whose gid is not in ``present``; those closed."""
        with self.lock:
            closed = [r for g, r in self.publishers.items()
                      if not r.gone and g not in present]
            for rec in closed:
                rec.gone = True
            return closed

    def records(self) -> list[PublisherRecord]:
        """Copies, open ones first, then the newest."""
        with self.lock:
            recs = [PublisherRecord(**vars(r)) for r in self.publishers.values()]
        return sorted(recs, key=lambda r: r.gone)

    def totals(self) -> tuple[int, int]:
        with self.lock:
            return self.gaps, self.dds_lost

    def _newly_lost(self) -> int:
        now = max(self.gaps, self.dds_lost)
        new, self.counted = now - self.counted, max(now, self.counted)
        return max(new, 0)

    def _bound(self) -> None:
        # Drop the oldest closed records first, then the oldest open ones.
        while len(self.publishers) > self.max_publishers:
            victim = next((g for g, r in self.publishers.items() if r.gone),
                          next(iter(self.publishers)))
            del self.publishers[victim]


# Publishers listed one by one in a status (the others are summed up in one line).
SHOWN_PUBLISHERS = 4


def publisher_values(ledger: LossLedger | None) -> list[tuple[str, str]]:
    """Diagnostic key/values for a camera's publishers and its two loss counts."""
    if ledger is None:
        return []
    gaps, dds = ledger.totals()
    recs = ledger.records()
    values = [("frames lost: sequence gaps / DDS reported", f"{gaps} / {dds}"),
              ("publishers", f"{sum(not r.gone for r in recs)} present, "
                             f"{sum(r.gone for r in recs)} gone")]
    for rec in recs[:SHOWN_PUBLISHERS]:
        values.append((f"publisher {rec.label}", rec.summary()))
    if len(recs) > SHOWN_PUBLISHERS:
        rest = recs[SHOWN_PUBLISHERS:]
        values.append((f"publishers not shown ({len(rest)})",
                       f"received {sum(r.received for r in rest)}, "
                       f"lost {sum(r.lost for r in rest)}"))
    return values


def build_status(stats: SegmenterStats, *, name: str, hardware_id: str, state: str,
                 model: str, device: str, mode: str, input_topic: str,
                 untrained: bool, configure_error: str = "",
                 qos_problem: str = "",
                 publishers: list[tuple[str, str]] | None = None) -> DiagnosticStatus:
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
    if s["lost_in_window"]:
        level = max(level, WARN)
        problems.append(
            f"{s['lost_in_window']} frame(s) lost in transport in the last "
            f"{stats.window_s:g} s (best-effort frames above about {LARGE_FRAME_MB} MB: "
            "see the node's log)")
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
        *(publishers or []),
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
