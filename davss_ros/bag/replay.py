"""``davss replay BAG``: play a bag's camera topic through the segmenter node and score it.

The node runs in this process (in the player's rclpy Context: one DDS participant, every
message through FastDDS's writer and reader, no discovery between participants) or, with
``--external``, is a running ``davss_segmenter`` found by namespace. Frames are
published as the bag's raw CDR bytes, in one of two modes:

- closed-loop (default): the next frame goes out once the labels and frame info of the
  previous one came back. Deterministic, nothing dropped: the accuracy numbers equal a
  direct ``VideoSegmenter`` run on the same frames, and the per-frame cost is the node's.
- real-time (``--rate R``): frames go out at the bag's recorded timing scaled by R (2 = twice
  as fast), with ``/clock`` for ``use_sim_time``; measures drops and latency under load.
  Every frame sent is either processed or dropped, and the report says where:
  ``sent = processed + dropped``, ``dropped = dropped_by_node + lost_before_node``
  (replaced in the node's one-frame slot, or never reaching its callback).

The node's outputs are recorded into ``OUT/outputs`` (mcap), each message at its header
stamp, i.e. at the stamp of the input frame it belongs to. ``OUT/report.json`` holds the
numbers (mIoU overall, per propagation distance and per class when the bag has
``/camera/labels_gt``), and ``OUT/*.png`` the figures and a contact sheet.

Compressed bags (sensor_msgs/CompressedImage on ``*image_raw/compressed``, ``davss make-bag
--compressed``) are played on the node's compressed transport (``input.transport
compressed``, the node decodes them). ``--cameras`` plays every camera topic of the bag
(``davss make-bag --cameras N``) through one node with ``image_topics``, each camera scored
against the ``labels_gt`` beside its topic; the report then has one entry per camera under
``cameras`` and the totals.

Everything is written under temporary names and renamed at the end; on failure nothing
new is left that looks complete.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import (
    COMPRESSED_TYPE,
    DEFAULT_LABELS_TOPIC,
    IMAGE_TYPE,
    INPUT_ENCODINGS,
    AtomicBagWriter,
    BagError,
    BagReader,
    base_topic,
    camera_topics,
    cdr_header_stamp,
    image_array,
    pick_image_topic,
    typestore,
)
from .record import IMAGE_OUTPUTS, OutputRecorder

NODE_NAME = "davss_segmenter"
IN_PROCESS_NAMESPACE = "davss_replay"
REPORT_NAME = "report.json"
PICTURES = ("miou_by_distance.png", "latency_hist.png", "contact_sheet.png")


class ReplayError(BagError):
    """The replay could not run or finish (node not found, no outputs, ...)."""


@dataclass
class ReplayOptions:
    bag: Path
    out: Path
    topic: str | None = None
    labels_topic: str = DEFAULT_LABELS_TOPIC
    rate: float | None = None  # None: closed-loop
    record_images: bool = False
    external: bool = False
    namespace: str = ""  # in-process: IN_PROCESS_NAMESPACE when empty
    node_name: str = NODE_NAME
    input_topic: str | None = None  # external: where the node listens (default NS/image)
    checkpoint: str | None = None
    mode: str | None = None
    params_file: str | None = None
    params: list[str] = field(default_factory=list)  # "name:=value"
    max_frames: int | None = None
    timeout: float = 60.0
    discovery_timeout: float = 30.0
    overwrite: bool = False
    json_path: Path | None = None
    progress: bool = True
    plots: bool = True
    domain_id: int | None = None
    cameras: bool = False  # every camera topic of the bag through one node (image_topics)
    reference: Path | None = None  # an earlier replay's outputs to compare the labels with


@dataclass
class _Frames:
    """What a first pass over the bag learned (cheap: header stamps only)."""

    bag_times: list[int]  # bag time of each image message, in bag order
    stamps: list[int]  # its header stamp
    gt_stamps: set[int]
    height: int
    width: int
    encoding: str  # an Image's encoding, or a CompressedImage's format
    msgtype: str = IMAGE_TYPE


@dataclass(eq=False)
class _Stream:
    """One camera of the replay: its bag topics, frames, and (while running) the player's
    publisher, the recorder of its outputs and its scorer."""

    name: str  # '' for a single camera (outputs directly under the node)
    topic: str
    gt_topic: str | None
    frames: _Frames
    input_topic: str = ""
    pub: object = None
    recorder: OutputRecorder | None = None
    scorer: object = None
    sent_at: dict[int, float] = field(default_factory=dict)

    @property
    def compressed(self) -> bool:
        return self.frames.msgtype == COMPRESSED_TYPE


# -- public API -------------------------------------------------------------------------------
def replay(opts: ReplayOptions) -> dict:
    """Replay ``opts.bag`` through the node; returns the report (also written to disk)."""
    if opts.rate is not None and not opts.rate > 0:
        raise ReplayError(f"--rate must be > 0, got {opts.rate}")
    if opts.max_frames is not None and opts.max_frames < 1:
        raise ReplayError(f"--max-frames must be >= 1, got {opts.max_frames}")
    if opts.cameras and opts.external:
        raise ReplayError("--cameras starts its own node with image_topics; it does not go "
                          "with --external")
    from davss_ros.ros.params import camera_name

    with BagReader(opts.bag) as reader:
        if opts.cameras:
            topics = camera_topics(reader)
            if not topics:
                raise ReplayError(f"{opts.bag}: no camera topics (*image_raw or "
                                  f"*image_raw/compressed); {reader.topics_text()}")
        else:
            topics = [pick_image_topic(reader, opts.topic)]
        streams = []
        for topic in topics:
            gt = (posixpath.join(posixpath.dirname(base_topic(topic)), "labels_gt")
                  if opts.cameras else opts.labels_topic)
            gt_topic = gt if reader.topics.get(gt) == IMAGE_TYPE else None
            frames = _scan(reader, topic, gt_topic, opts.max_frames)
            streams.append(_Stream(camera_name(topic) if opts.cameras else "", topic,
                                   gt_topic, frames))
    if len({s.frames.msgtype for s in streams}) > 1:
        raise ReplayError(f"{opts.bag}: the cameras mix Image and CompressedImage topics; "
                          "the node reads one transport")
    return _Replay(opts, streams).run()


def _scan(reader: BagReader, topic: str, gt_topic: str | None,
          max_frames: int | None) -> _Frames:
    bag_times, stamps, gt_stamps = [], [], set()
    seen: set[int] = set()
    first = None
    msgtype = reader.topics[topic]
    topics = [topic] + ([gt_topic] if gt_topic else [])
    for t, tm, raw in reader.messages(topics):
        if t == gt_topic:
            gt_stamps.add(_stamp(reader, raw, t))
            continue
        if max_frames is not None and len(stamps) >= max_frames:
            if tm > bag_times[-1]:
                break  # past the last frame (and its labels, stamped alike)
            continue
        if first is None:
            first = _first_frame(reader, raw, t, msgtype)
        s = _stamp(reader, raw, t)
        if s in seen:
            raise BagError(f"{reader.path}: two frames on {t} have the same header stamp "
                           f"({s} ns); replay matches outputs to inputs by stamp")
        seen.add(s)
        bag_times.append(tm)
        stamps.append(s)
    if not stamps:
        raise BagError(f"{reader.path}: topic {topic} has no messages")
    height, width, encoding = first
    return _Frames(bag_times, stamps, gt_stamps & seen, height, width, encoding, msgtype)


def _first_frame(reader: BagReader, raw: bytes, topic: str,
                 msgtype: str) -> tuple[int, int, str]:
    """(height, width, encoding or format) of a camera topic's first frame, checked to be
    one the node takes."""
    msg = reader.deserialize(raw, msgtype, where=topic)
    if msgtype == IMAGE_TYPE:
        if msg.encoding not in INPUT_ENCODINGS:
            raise BagError(f"{reader.path}: {topic} holds {msg.encoding!r} images; the "
                           f"segmenter takes {', '.join(INPUT_ENCODINGS)}")
        return int(msg.height), int(msg.width), str(msg.encoding)
    from ..ros.image import ImageError, compressed_to_rgb

    try:  # the node's own decoder, so a bag it cannot read fails here, not frame by frame
        rgb = compressed_to_rgb(msg)
    except ImageError as exc:
        raise BagError(f"{reader.path}: the first frame on {topic} does not decode: "
                       f"{exc}") from None
    return rgb.shape[0], rgb.shape[1], str(msg.format)


def _stamp(reader: BagReader, raw: bytes, topic: str) -> int:
    try:
        return cdr_header_stamp(raw)
    except ValueError as exc:
        raise BagError(f"{reader.path}: a message on {topic} is not a valid "
                       f"camera image ({exc})") from None


# -- the run ----------------------------------------------------------------------------------
class _Replay:
    def __init__(self, opts: ReplayOptions, streams: list[_Stream]) -> None:
        self.opts = opts
        self.streams = streams
        self.closed_loop = opts.rate is None
        ns = (opts.namespace or ("" if opts.external else IN_PROCESS_NAMESPACE)).strip("/")
        self.ns = f"/{ns}" if ns else ""
        self.node_fqn = f"{self.ns}/{opts.node_name}"
        several = len(streams) > 1
        for s in streams:
            # One camera: the node's 'image'; several: NS/<camera>/image, in image_topics.
            s.input_topic = (f"{self.ns}/{s.name}/image" if several
                             else opts.input_topic or f"{self.ns}/image")
        # In-process the node's sim clock comes on a private topic, so a replay never moves
        # the clock of other nodes on the same ROS domain; an external node listens on /clock.
        self.clock_topic = "/clock" if opts.external else f"{self.ns}/clock"
        self.frame_keys = ("labels", "distortion", "frame_info") + (
            IMAGE_OUTPUTS if opts.record_images else ())
        self.required = ("labels", "frame_info")
        self.node = None  # in-process SegmenterNode
        self.host = None  # its NodeHost
        self.harness = None  # davss_ros.tools.harness.Harness: everything started here
        self.writer: AtomicBagWriter | None = None
        self.warnings: list[str] = []

    def run(self) -> dict:
        opts = self.opts
        opts.out.mkdir(parents=True, exist_ok=True)
        out_bag = opts.out / "outputs"
        self.writer = AtomicBagWriter(out_bag, storage="mcap", replace=opts.overwrite)
        t_start = time.perf_counter()
        try:
            info = self._replay_through_ros()
        except BaseException:
            self._shutdown()
            self.writer.abort()
            raise
        self._shutdown()
        # The report and pictures of an earlier replay must not sit beside new outputs.
        for name in (REPORT_NAME, *PICTURES):
            (opts.out / name).unlink(missing_ok=True)
        self.writer.commit()
        return self._report(info, out_bag, time.perf_counter() - t_start)

    # -- ROS ----------------------------------------------------------------------------------
    def _replay_through_ros(self) -> dict:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, Image

        from ..tools.harness import Harness

        opts = self.opts
        self.harness = Harness(opts.domain_id)
        node_info: dict = {}
        if opts.external:
            self.harness.attach()
        else:
            node_info = self._start_node()
        # The player shares the in-process node's participant: no discovery to wait on, and
        # no LARGE_DATA TCP connection between the two whose teardown can block in FastDDS
        # (seen: destroying the node hung for good in 1 of 7 test runs). An --external node
        # is another process: a participant of its own.
        player = self.harness.camera(name="davss_replay_player", threads=1,
                                     share=self.host).node
        self.player = player
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                         reliability=ReliabilityPolicy.RELIABLE)
        for i, s in enumerate(self.streams):
            prefix = f"{self.node_fqn}/{s.name}" if s.name else self.node_fqn
            s.recorder = OutputRecorder(
                player, self.writer, prefix, self.frame_keys,
                fallback_ns=s.frames.stamps[0],
                on_labels=lambda stamp, raw, s=s: self._on_labels(s, stamp, raw),
                on_outcome=lambda stamp, outcome, s=s: self._on_outcome(s, stamp, outcome),
                diagnostics_of=self.node_fqn if i == 0 else None)
            # The bag's serialised messages go out as they are: Image on the node's input
            # topic, CompressedImage on its compressed transport beside it.
            s.pub = player.create_publisher(
                CompressedImage if s.compressed else Image,
                f"{s.input_topic}/compressed" if s.compressed else s.input_topic, qos)
        clock_pub = player.create_publisher(Clock, self.clock_topic, 10)

        self._wait_for_node()
        label_info = self._label_info()
        from davss_ros.classes import default_class_names, default_palette

        if label_info is not None:
            from davss_ros.ros.label_info import read_label_info

            table = read_label_info(label_info)  # vision_msgs' has no palette: the default
            names, ignore = table.class_names, table.ignore_id
            palette = table.palette if table.palette is not None else np.asarray(
                default_palette(len(names)), np.uint8)
        else:
            n = self.node.segmenter.num_classes if self.node is not None else 19
            names, palette, ignore = default_class_names(n), \
                np.asarray(default_palette(n), np.uint8), 255
            self.warnings.append(f"no label table on {self.node_fqn}/label_info; assuming "
                                 f"{n} classes")
        from .report import Scorer

        self.class_names, self.palette = names, palette
        for s in self.streams:
            s.scorer = Scorer(len(names), s.frames.gt_stamps, ignore)
        dropped_before = self._node_dropped_baseline()

        t_first = self._play(clock_pub)
        self._drain()
        node_info.update(self._node_summary())
        node_info.update(t_first=t_first, dropped_before=dropped_before)
        return node_info

    def _start_node(self) -> dict:
        from ..tools.harness import HarnessError

        opts = self.opts
        overrides: dict[str, object] = {"use_sim_time": True}
        if opts.checkpoint:
            overrides["model.checkpoint"] = str(opts.checkpoint)
        if opts.mode:
            overrides["model.mode"] = opts.mode
        if len(self.streams) > 1:
            overrides["image_topics"] = [f"{s.name}={s.input_topic}" for s in self.streams]
        if self.streams[0].compressed:
            overrides["input.transport"] = "compressed"
        overrides.update(parse_param_overrides(opts.params))
        cli_args = ["--ros-args", "-r", f"/clock:={self.clock_topic}"]
        if opts.params_file:
            if not Path(opts.params_file).is_file():
                raise ReplayError(f"--params-file: file not found: {opts.params_file}")
            cli_args += ["--params-file", str(opts.params_file)]
        try:
            self.host = self.harness.host(overrides, name=opts.node_name,
                                          namespace=self.ns or "/", cli_args=cli_args,
                                          threads=1)
            self.node = self.host.node
            self.host.bring_up()
        except HarnessError as exc:
            raise ReplayError(str(exc)) from None
        seg = self.node.segmenter
        m = seg.config.model
        ck = seg.checkpoint
        return {"pipeline_mode": seg.mode, "device": str(seg.device),
                "checkpoint": str(ck.path) if ck is not None and ck.path else None,
                "model": (f"{Path(ck.path).name if ck is not None and ck.path else 'untrained'}"
                          f" {m.segmenter.backbone} {m.input_width}x{m.input_height}"),
                "schedule": _schedule_dict(seg.config.schedule)}

    def _wait_for_node(self) -> None:
        opts = self.opts
        deadline = time.monotonic() + opts.discovery_timeout
        for s in self.streams:
            rec = s.recorder
            while not (s.pub.get_subscription_count() > 0 and rec.publishers_matched()):
                if time.monotonic() > deadline:
                    missing = [rec.topics[k] for k, sub in rec.subs.items()
                               if k != "diagnostics" and sub.get_publisher_count() == 0]
                    if s.pub.get_subscription_count() == 0:
                        missing.insert(0, f"a subscriber on {s.pub.topic_name}")
                    hint = (f"is {self.node_fqn} running and active on this ROS_DOMAIN_ID?"
                            if opts.external else "the in-process node did not come up")
                    raise ReplayError(f"no match within {opts.discovery_timeout:g} s for "
                                      f"{', '.join(missing)}: {hint}")
                time.sleep(0.05)
        # The node's publishers compute distortion / colour only while they see a
        # subscriber: wait until its side of the match is there too.
        on_demand = [s.recorder.topics[k] for s in self.streams for k in self.frame_keys
                     if k not in self.required]
        if self.host is not None:
            from ..tools.harness import HarnessError

            left = max(0.1, deadline - time.monotonic())
            try:
                self.host.wait_input_matched(len(self.streams), timeout=left)
                self.host.wait_outputs_seen(on_demand, timeout=left)
            except HarnessError as exc:
                raise ReplayError(f"{exc} (the recorder's subscriptions)") from None
        else:
            time.sleep(1.0)  # no view into the remote node: give its side time to match

    def _label_info(self):
        rec = self.streams[0].recorder
        rec.wait(lambda: rec.state.label_info is not None, timeout=5.0)
        return rec.state.label_info

    def _node_dropped_baseline(self) -> dict[str, int]:
        if self.node is not None:
            return {s.name: int(self.node.camera_stats(s.name).dropped) for s in self.streams}
        # An external node may have dropped frames before: take its last report, if any.
        rec = self.streams[0].recorder
        rec.wait(lambda: bool(rec.state.diagnostics), timeout=2.5)
        with rec.state.cond:
            diags = list(rec.state.diagnostics)
        try:
            return {"": int(diags[-1].get("frames dropped", 0)) if diags else 0}
        except ValueError:
            return {"": 0}

    def _on_labels(self, s: _Stream, stamp: int, raw: bytes) -> None:
        if s.scorer is None or stamp not in s.frames.gt_stamps:
            return
        msg = typestore().deserialize_cdr(raw, IMAGE_TYPE)
        s.scorer.add_prediction(stamp, image_array(msg, where="labels").copy())

    def _on_outcome(self, s: _Stream, stamp: int, outcome) -> None:
        if s.scorer is not None:
            s.scorer.add_distance(stamp, outcome.distance)

    def _play(self, clock_pub) -> float:
        """Send every camera's frames in bag order (real-time: at the recorded timing)."""
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock
        from tqdm import tqdm

        opts = self.opts
        by_topic = {s.topic: s for s in self.streams}
        by_gt = {s.gt_topic: s for s in self.streams if s.gt_topic}
        wanted = {s.topic: set(s.frames.stamps) for s in self.streams}
        left = {s.topic: len(s.frames.stamps) for s in self.streams}
        last_t = max(s.frames.bag_times[-1] for s in self.streams)
        bar = tqdm(total=sum(left.values()),
                   desc="replay " + ("closed-loop" if self.closed_loop else f"{opts.rate:g}x"),
                   unit="frame", disable=not opts.progress, file=sys.stderr)
        optional = [k for k in self.frame_keys if k not in self.required]
        t_first = None
        wall0 = bag0 = None
        with BagReader(opts.bag) as reader:
            for topic, bag_t, raw in reader.messages(list(by_topic) + list(by_gt)):
                if topic in by_gt:
                    s = by_gt[topic]
                    stamp = cdr_header_stamp(raw)
                    if stamp in s.frames.gt_stamps:
                        m = reader.deserialize(raw, IMAGE_TYPE, where=topic)
                        s.scorer.add_gt(stamp, image_array(m, where=topic).copy())
                    continue
                s = by_topic[topic]
                if not left[topic]:
                    if bag_t > last_t:
                        break
                    continue
                stamp = cdr_header_stamp(raw)
                if stamp not in wanted[topic]:
                    continue
                if not self.closed_loop:
                    if wall0 is None:
                        wall0, bag0 = time.perf_counter(), bag_t
                    target = wall0 + (bag_t - bag0) / 1e9 / opts.rate
                    delay = target - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                sec, nsec = divmod(bag_t, 1_000_000_000)
                clock_pub.publish(Clock(clock=Time(sec=sec, nanosec=nsec)))
                now = time.perf_counter()
                s.sent_at[stamp] = now
                t_first = t_first if t_first is not None else now
                s.pub.publish(raw)
                left[topic] -= 1
                i = len(s.sent_at)
                if self.closed_loop:
                    rec = s.recorder
                    ok = rec.wait(lambda r=rec, t=stamp: r.has(t, self.required)
                                  or r.state.errors, timeout=opts.timeout)
                    if rec.state.errors:
                        raise ReplayError("recording failed: " + rec.state.errors[0])
                    if not ok:
                        raise ReplayError(
                            f"no output for frame {i} of {topic} (stamp {stamp} ns) from "
                            f"{self.node_fqn} within {opts.timeout:g} s")
                    if optional:
                        # Published before frame_info by the node; a short grace suffices.
                        if not rec.wait(lambda r=rec, t=stamp, o=tuple(optional):
                                        r.has(t, o), timeout=5.0):
                            late = [k for k in optional if stamp not in
                                    rec.state.arrivals[k]]
                            self.warnings.append(f"frame {i} of {topic}: no "
                                                 f"{', '.join(late)} within 5 s; not "
                                                 "waiting for them any more")
                            optional = [k for k in optional if k not in late]
                bar.update(1)
        bar.close()
        return t_first

    def _drain(self) -> None:
        """Wait until the node has finished with everything sent (real-time mode)."""
        for s in self.streams:
            self._drain_stream(s)

    def _drain_stream(self, s: _Stream) -> None:
        rec = s.recorder
        last = s.frames.stamps[len(s.sent_at) - 1] if s.sent_at else None
        if last is None:
            return
        deadline = time.monotonic() + self.opts.timeout
        # The newest frame always gets processed (nothing replaces it in the node's slot),
        # unless it was lost before the node: then stop once outputs stay quiet.
        quiet = 2.0
        required_at = None
        while time.monotonic() < deadline:
            with rec.state.cond:
                if rec.has(last, self.frame_keys):
                    break
                if rec.has(last, self.required):  # the rest is published just before
                    required_at = required_at or time.monotonic()
                    if time.monotonic() - required_at > quiet:
                        break
                    rec.state.cond.wait(0.05)
                    continue
                since = time.perf_counter() - max(rec.state.last_output, s.sent_at[last])
            if self.node is not None and since > 0.5 and self._node_idle():
                break
            if since > quiet + self._p95_frame_s(s):
                break
            rec.wait(lambda: rec.has(last, self.frame_keys), timeout=0.1)
        # Outputs of other frames still on the way (the recorder is reliable): a moment.
        rec.wait(lambda: all(rec.has(st, self.frame_keys) for st in rec.state.outcomes),
                 timeout=2.0)

    def _node_idle(self) -> bool:
        stats = self.node.stats
        unaccounted = getattr(stats, "unaccounted", None)
        if callable(unaccounted):
            return unaccounted() == 0
        return False

    def _p95_frame_s(self, s: _Stream) -> float:
        with s.recorder.state.cond:
            totals = [o.total_ms for o in s.recorder.state.outcomes.values()]
        return float(np.percentile(totals, 95)) / 1e3 * 3 if totals else 5.0

    def _node_summary(self) -> dict:
        out: dict = {}
        if self.node is not None:
            keys = ("input_count", "output_count", "dropped", "lost", "rejected", "failed",
                    "discarded", "error_count")

            def counts(s):
                return {k: int(getattr(s, k)) for k in keys
                        if isinstance(getattr(s, k, None), int)}

            s = self.node.stats
            out["node_stats"] = counts(s)
            out["camera_stats"] = {c.name: counts(self.node.camera_stats(c.name))
                                   for c in self.streams}
            if getattr(s, "last_error", ""):
                out["node_last_error"] = s.last_error
        else:
            rec = self.streams[0].recorder
            with rec.state.cond:
                diags = list(rec.state.diagnostics)
            if diags:
                out["pipeline_mode"] = diags[-1].get("mode")
                out["model"] = diags[-1].get("model")
                out["device"] = diags[-1].get("device")
        return out

    def _shutdown(self) -> None:
        """Close what the replay started, in the harness's order (the node's worker and
        model included). With ``--external`` the player is kept until the process exits:
        see ``davss_ros.tools.harness``."""
        if self.harness is not None:
            self.harness.close()
        self.node = self.host = self.player = None

    # -- report -------------------------------------------------------------------------------
    def _stream_report(self, s: _Stream, info: dict) -> dict:
        """The frame accounting, latency, timing and scores of one camera."""
        from .report import latency_summary

        st = s.recorder.state
        outcomes = {t: o for t, o in st.outcomes.items() if t in s.sent_at}
        order = [t for t in st.order if t in outcomes]
        sent = len(s.sent_at)
        received = len(outcomes)
        if order:
            by_index = sorted(outcomes.values(), key=lambda o: o.frame_index)
            processed = by_index[-1].frame_index - by_index[0].frame_index + 1
            dropped_by_node = max(o.dropped_frames for o in outcomes.values()) \
                - info["dropped_before"].get(s.name, 0)
        else:
            processed = dropped_by_node = 0
        dropped = sent - processed
        latencies = [(st.arrivals["labels"][t] - s.sent_at[t]) * 1e3
                     for t in order if t in st.arrivals["labels"]]
        last_arrival = max((max(st.arrivals[k].get(t, 0.0) for k in self.required)
                            for t in order), default=0.0)
        span = last_arrival - info["t_first"] if order else 0.0
        keys = [o for o in outcomes.values() if o.is_key]
        nonkeys = [o for o in outcomes.values() if not o.is_key]

        def med(values):
            return round(float(np.median(values)), 3) if values else None

        stages = {k: med([o.stages_ms[k] for o in outcomes.values()])
                  for k in next(iter(outcomes.values())).stages_ms} if outcomes else {}
        out = {
            "topic": s.topic,
            "sent": sent,
            "received": received,
            "processed": processed,
            "dropped": dropped,
            "dropped_by_node": dropped_by_node,
            "lost_before_node": dropped - dropped_by_node,
            "outputs_missing": processed - received,
            "latency_ms": latency_summary(latencies),
            "fps": round(received / span, 3) if span > 0 else None,
            "key_ratio": round(len(keys) / received, 4) if received else None,
            "frame_ms": {"key_median": med([o.total_ms for o in keys]),
                         "nonkey_median": med([o.total_ms for o in nonkeys]),
                         "stages_median": stages},
            "key_reasons": _count([o.key_reason for o in keys]),
            "has_ground_truth": s.gt_topic is not None,
            "ground_truth_topic": s.gt_topic,
            **s.scorer.as_dict(self.class_names),
        }
        if s.name:
            out["camera"] = s.name
        return out, latencies, order, outcomes

    def _report(self, info: dict, out_bag: Path, wall_s: float) -> dict:
        from .report import (
            contact_sheet,
            format_table,
            plot_latency,
            plot_miou_by_distance,
            write_json_atomic,
        )

        opts = self.opts
        parts = [self._stream_report(s, info) for s in self.streams]
        head = {
            "bag": str(opts.bag),
            "topic": ", ".join(s.topic for s in self.streams),
            "transport": "compressed" if self.streams[0].compressed else "raw",
            "mode": "closed_loop" if self.closed_loop else "real_time",
            "rate": opts.rate,
            "node": self.node_fqn,
            "external": opts.external,
            "checkpoint": info.get("checkpoint", opts.checkpoint),
            "model": info.get("model"),
            "pipeline_mode": info.get("pipeline_mode"),
            "device": info.get("device"),
        }
        tail = {
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "output_bag": str(out_bag),
            "output_counts": dict(self.writer.counts),
            "wall_s": round(wall_s, 3),
        }
        if len(parts) == 1:
            body = dict(parts[0][0])
            del body["topic"]
            report = {**head, **body, **tail}
        else:
            cams = {s.name: {**head, **p[0]} for s, p in zip(self.streams, parts, strict=True)}
            total = {k: sum(c[k] for c in cams.values()) for k in (
                "sent", "received", "processed", "dropped", "dropped_by_node",
                "lost_before_node", "outputs_missing")}
            scored = [c["miou"] for c in cams.values() if c.get("miou") is not None]
            every = [c["miou_every_frame"] for c in cams.values()
                     if c.get("miou_every_frame") is not None]
            report = {**head, **total,
                      "miou_mean_of_cameras": round(float(np.mean(scored)), 2)
                      if scored else None,
                      "miou_every_frame_mean_of_cameras": round(float(np.mean(every)), 2)
                      if every else None,
                      "cameras": cams, **tail}
        if info.get("schedule"):
            report["schedule"] = info["schedule"]
        for key in ("node_stats", "camera_stats"):
            if info.get(key) and (key == "node_stats" or len(parts) > 1):
                report[key] = info[key]
        warnings = list(self.warnings)
        for s, (part, *_rest) in zip(self.streams, parts, strict=True):
            warnings += s.scorer.errors + s.recorder.state.errors
            if part["outputs_missing"]:
                warnings.append(f"{part['outputs_missing']} processed frame(s) of {s.topic} "
                                "whose outputs did not reach the recorder")
        if warnings:
            report["warnings"] = warnings
        files = {}
        if opts.plots and len(parts) == 1:
            s, (_part, latencies, order, outcomes) = self.streams[0], parts[0]
            files["miou_plot"] = plot_miou_by_distance(report, opts.out / PICTURES[0])
            files["latency_plot"] = plot_latency(latencies, report, opts.out / PICTURES[1])
            # The first frame (a key frame) and propagated ones, where distortion shows.
            nonkey = [t for t in order[1:] if not outcomes[t].is_key]
            pick = order[:1] + _spread(nonkey, 3)
            topics = s.recorder.topics
            files["contact_sheet"] = contact_sheet(
                opts.bag, s.topic, s.gt_topic, out_bag, topics["labels"],
                topics.get("distortion"), pick, self.palette, opts.out / PICTURES[2])
        if opts.reference is not None:
            from .report import label_agreement

            ref = Path(opts.reference)
            report["reference"] = label_agreement(
                out_bag, ref / "outputs" if (ref / "outputs").is_dir() else ref)
        report["files"] = {k: str(v) for k, v in files.items() if v is not None}
        report["report"] = str(opts.out / REPORT_NAME)
        write_json_atomic(opts.out / REPORT_NAME, report)
        if opts.json_path is not None:
            write_json_atomic(opts.json_path, report)
        if len(parts) == 1:
            report["table"] = format_table(report)
        else:
            report["table"] = "\n".join(
                [f"{len(parts)} cameras in one node: sent {report['sent']}, dropped "
                 f"{report['dropped']}, mIoU (mean of the cameras) "
                 + ("n/a" if report["miou_mean_of_cameras"] is None
                    else f"{report['miou_mean_of_cameras']:.2f} %")
                 + ("" if report["miou_every_frame_mean_of_cameras"] is None else
                    f", every frame {report['miou_every_frame_mean_of_cameras']:.2f} %")]
                + [f"[{name}] " + format_table(c) for name, c in report["cameras"].items()])
        return report


def _spread(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in idx]


def _count(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v or "?"] = out.get(v or "?", 0) + 1
    return out


def _schedule_dict(s) -> dict:
    return {"policy": s.policy, "key_interval": s.key_interval, "threshold": s.threshold,
            "metric": s.metric, "max_interval": s.max_interval}


def parse_param_overrides(items: list[str]) -> dict[str, object]:
    """``name:=value`` strings (as ``ros2 run ... -p``) to typed values (YAML rules)."""
    import yaml

    out: dict[str, object] = {}
    for item in items or []:
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise ReplayError(f"-p expects name:=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        if value is None:
            value = ""
        if not isinstance(value, bool | int | float | str | list):
            value = text
        out[name.strip()] = value
    return out


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 folder (or .mcap / .db3 file)")
    parser.add_argument("--topic", help="image topic (default: the *image_raw Image topic, "
                        "or *image_raw/compressed CompressedImage)")
    parser.add_argument("--cameras", action="store_true",
                        help="every camera topic of the bag through one node (image_topics), "
                        "each scored against the labels_gt beside it")
    parser.add_argument("--labels-topic", default=DEFAULT_LABELS_TOPIC,
                        help="ground-truth labels (mono8 trainIds) for scoring, if present")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where outputs/, report.json and the PNGs go "
                        "(default out/replay/<bag name>)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the report JSON here")
    parser.add_argument("--rate", type=float, default=None, metavar="R",
                        help="real-time mode at R x the recorded rate (default: closed-loop)")
    parser.add_argument("--record-images", action="store_true",
                        help="also record labels_color and overlay (costs node time)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="replay only the first N frames")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR/outputs from an earlier replay")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SEC",
                        help="longest wait for one frame's outputs")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--reference", type=Path, default=None, metavar="DIR",
                        help="an earlier replay's --out (or its outputs bag): report the share "
                        "of label pixels equal to its labels, frame by frame by stamp")
    parser.add_argument("--no-progress", action="store_true")
    node = parser.add_argument_group("the segmenter node")
    node.add_argument("--external", action="store_true",
                      help="use a running davss_segmenter instead of starting one here")
    node.add_argument("--namespace", default="", metavar="NS",
                      help="the node's namespace (external; in-process default davss_replay)")
    node.add_argument("--input-topic", default=None, metavar="TOPIC",
                      help="external: the topic the node subscribes to (default NS/image)")
    node.add_argument("--checkpoint", default=None, help="in-process: model.checkpoint")
    node.add_argument("--mode", default=None, choices=("per_frame", "dff", "accel", "davss"),
                      help="in-process: model.mode")
    node.add_argument("--params-file", default=None, metavar="YAML",
                      help="in-process: ROS parameters file (config/davss.yaml)")
    node.add_argument("--key-segmenter", default=None, metavar="FILE",
                      help="in-process: model.key_segmenter (an ONNX or TorchScript file)")
    node.add_argument("-p", "--param", dest="params", action="append", default=[],
                      metavar="NAME:=VALUE", help="in-process: a parameter override")


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    out = args.out or Path("out") / "replay" / (args.bag.resolve().name or "bag")
    if args.external and (args.checkpoint or args.mode or args.params_file or args.params
                          or args.key_segmenter):
        raise ReplayError("--checkpoint, --mode, --key-segmenter, --params-file and -p "
                          "configure the in-process node; with --external set them on the "
                          "running node")
    params = list(args.params)
    if args.key_segmenter:
        params.append(f"model.key_segmenter:={args.key_segmenter}")
    return ReplayOptions(
        bag=args.bag, out=out, topic=args.topic, labels_topic=args.labels_topic,
        rate=args.rate, record_images=args.record_images, external=args.external,
        namespace=args.namespace, input_topic=args.input_topic, checkpoint=args.checkpoint,
        mode=args.mode, params_file=args.params_file, params=params,
        max_frames=args.max_frames, timeout=args.timeout, overwrite=args.overwrite,
        json_path=args.json, progress=not args.no_progress, plots=not args.no_plots,
        cameras=args.cameras, reference=args.reference)


def run(args: argparse.Namespace) -> int:
    try:
        opts = options_from_args(args)
        report = replay(opts)
    except BagError as exc:
        print(f"davss replay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("davss replay: interrupted; nothing was kept", file=sys.stderr)
        return 130
    print(report["table"])
    for w in report.get("warnings", []):
        print(f"  warning: {w}")
    print(f"outputs: {report['output_bag']}  report: {report['report']}")
    if report["files"]:
        print("pictures: " + "  ".join(report["files"].values()))
    from ..tools.harness import kept_for_process_exit

    if kept_for_process_exit():
        # Everything is written; leave without finalising the kept participant.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="davss replay", description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
