"""``davss replay BAG``: play a bag's camera topic through the segmenter node and score it.

The node runs in this process (its own rclpy Context, so every message crosses FastDDS) or,
with ``--external``, is a running ``davss_segmenter`` found by namespace. Frames are
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

Everything is written under temporary names and renamed at the end; on failure nothing
new is left that looks complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import (
    DEFAULT_LABELS_TOPIC,
    IMAGE_TYPE,
    INPUT_ENCODINGS,
    AtomicBagWriter,
    BagError,
    BagReader,
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
# (player node, contexts) of --external replays: never finalised before the process ends,
# see _Replay._shutdown.
_KEPT_FOR_PROCESS_EXIT: list = []


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


@dataclass
class _Frames:
    """What a first pass over the bag learned (cheap: header stamps only)."""

    bag_times: list[int]  # bag time of each image message, in bag order
    stamps: list[int]  # its header stamp
    gt_stamps: set[int]
    height: int
    width: int
    encoding: str


# -- public API -------------------------------------------------------------------------------
def replay(opts: ReplayOptions) -> dict:
    """Replay ``opts.bag`` through the node; returns the report (also written to disk)."""
    if opts.rate is not None and not opts.rate > 0:
        raise ReplayError(f"--rate must be > 0, got {opts.rate}")
    if opts.max_frames is not None and opts.max_frames < 1:
        raise ReplayError(f"--max-frames must be >= 1, got {opts.max_frames}")
    with BagReader(opts.bag) as reader:
        topic = pick_image_topic(reader, opts.topic)
        gt_topic = opts.labels_topic if reader.topics.get(opts.labels_topic) == IMAGE_TYPE \
            else None
        frames = _scan(reader, topic, gt_topic, opts.max_frames)
    return _Replay(opts, topic, gt_topic, frames).run()


def _scan(reader: BagReader, topic: str, gt_topic: str | None,
          max_frames: int | None) -> _Frames:
    bag_times, stamps, gt_stamps = [], [], set()
    seen: set[int] = set()
    first = None
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
            first = reader.deserialize(raw, IMAGE_TYPE, where=t)
            if first.encoding not in INPUT_ENCODINGS:
                raise BagError(f"{reader.path}: {t} holds {first.encoding!r} images; the "
                               f"segmenter takes {', '.join(INPUT_ENCODINGS)}")
        s = _stamp(reader, raw, t)
        if s in seen:
            raise BagError(f"{reader.path}: two frames on {t} have the same header stamp "
                           f"({s} ns); replay matches outputs to inputs by stamp")
        seen.add(s)
        bag_times.append(tm)
        stamps.append(s)
    if not stamps:
        raise BagError(f"{reader.path}: topic {topic} has no messages")
    return _Frames(bag_times, stamps, gt_stamps & seen, int(first.height), int(first.width),
                   str(first.encoding))


def _stamp(reader: BagReader, raw: bytes, topic: str) -> int:
    try:
        return cdr_header_stamp(raw)
    except ValueError as exc:
        raise BagError(f"{reader.path}: a message on {topic} is not a valid "
                       f"sensor_msgs/Image ({exc})") from None


# -- the run ----------------------------------------------------------------------------------
class _Replay:
    def __init__(self, opts: ReplayOptions, topic: str, gt_topic: str | None,
                 frames: _Frames) -> None:
        self.opts = opts
        self.topic = topic
        self.gt_topic = gt_topic
        self.frames = frames
        self.closed_loop = opts.rate is None
        ns = (opts.namespace or ("" if opts.external else IN_PROCESS_NAMESPACE)).strip("/")
        self.ns = f"/{ns}" if ns else ""
        self.node_fqn = f"{self.ns}/{opts.node_name}"
        self.input_topic = opts.input_topic or f"{self.ns}/image"
        # In-process the node's sim clock comes on a private topic, so a replay never moves
        # the clock of other nodes on the same ROS domain; an external node listens on /clock.
        self.clock_topic = "/clock" if opts.external else f"{self.ns}/clock"
        self.frame_keys = ("labels", "distortion", "frame_info") + (
            IMAGE_OUTPUTS if opts.record_images else ())
        self.required = ("labels", "frame_info")
        self.sent_at: dict[int, float] = {}
        self.node = None  # in-process SegmenterNode
        self.contexts: list = []
        self.executors: list = []
        self.threads: list = []  # BackgroundSpin per executor
        self.writer: AtomicBagWriter | None = None
        self.scorer = None
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
        from davss_ros.ros.env import ensure_large_data_transport

        ensure_large_data_transport()
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image

        opts = self.opts
        init_args = {} if opts.domain_id is None else {"domain_id": opts.domain_id}
        node_info: dict = {}
        if not opts.external:
            node_info = self._start_node(init_args)

        ctx = rclpy.Context()
        rclpy.init(context=ctx, **init_args)
        self.contexts.append(ctx)
        player = rclpy.create_node("davss_replay_player", context=ctx)
        self.player = player
        self.fallback_ns = self.frames.stamps[0]
        self.recorder = OutputRecorder(player, self.writer, self.node_fqn, self.frame_keys,
                                       fallback_ns=self.fallback_ns, on_labels=self._on_labels,
                                       on_outcome=self._on_outcome)
        pub = player.create_publisher(Image, self.input_topic, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE))
        clock_pub = player.create_publisher(Clock, self.clock_topic, 10)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(player)
        self._spin(ex)

        self._wait_for_node(pub)
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
        self.scorer = Scorer(len(names), self.frames.gt_stamps, ignore)
        dropped_before = self._node_dropped_baseline()

        t_first = self._play(pub, clock_pub)
        self._drain()
        node_info.update(self._node_summary())
        node_info.update(t_first=t_first, dropped_before=dropped_before)
        return node_info

    def _start_node(self, init_args: dict) -> dict:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter

        from davss_ros.ros.node import SUCCESS, SegmenterNode

        opts = self.opts
        overrides: dict[str, object] = {"use_sim_time": True}
        if opts.checkpoint:
            overrides["model.checkpoint"] = str(opts.checkpoint)
        if opts.mode:
            overrides["model.mode"] = opts.mode
        overrides.update(parse_param_overrides(opts.params))
        cli_args = ["--ros-args", "-r", f"/clock:={self.clock_topic}"]
        if opts.params_file:
            if not Path(opts.params_file).is_file():
                raise ReplayError(f"--params-file: file not found: {opts.params_file}")
            cli_args += ["--params-file", str(opts.params_file)]
        ctx = rclpy.Context()
        rclpy.init(context=ctx, **init_args)
        self.contexts.append(ctx)
        try:
            self.node = SegmenterNode(
                opts.node_name, context=ctx, namespace=self.ns or "/",
                cli_args=cli_args,
                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        except Exception as exc:  # a parameter of the wrong type, a bad params file
            raise ReplayError(f"cannot start the node: {exc}") from None
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(self.node)
        self._spin(ex)
        if self.node.trigger_configure() != SUCCESS:
            reason = getattr(self.node, "_configure_error", "") or "see the log above"
            raise ReplayError(f"the node did not configure: {reason}")
        if self.node.trigger_activate() != SUCCESS:
            raise ReplayError("the node did not activate (see the log above)")
        seg = self.node.segmenter
        m = seg.config.model
        ck = seg.checkpoint
        return {"pipeline_mode": seg.mode, "device": str(seg.device),
                "checkpoint": str(ck.path) if ck is not None and ck.path else None,
                "model": (f"{Path(ck.path).name if ck is not None and ck.path else 'untrained'}"
                          f" {m.segmenter.backbone} {m.input_width}x{m.input_height}"),
                "schedule": _schedule_dict(seg.config.schedule)}

    def _spin(self, ex) -> None:
        """Spin ``ex`` on a thread until ``_shutdown`` (see davss_ros.ros.spin)."""
        from ..ros.spin import BackgroundSpin

        self.executors.append(ex)
        self.threads.append(BackgroundSpin(ex, name="davss_replay_spin"))

    def _wait_for_node(self, pub) -> None:
        opts = self.opts
        deadline = time.monotonic() + opts.discovery_timeout
        rec = self.recorder
        while not (pub.get_subscription_count() > 0 and rec.publishers_matched()):
            if time.monotonic() > deadline:
                missing = [rec.topics[k] for k, s in rec.subs.items()
                           if k != "diagnostics" and s.get_publisher_count() == 0]
                if pub.get_subscription_count() == 0:
                    missing.insert(0, f"a subscriber on {self.input_topic}")
                hint = (f"is {self.node_fqn} running and active on this ROS_DOMAIN_ID?"
                        if opts.external else "the in-process node did not come up")
                raise ReplayError(f"no match within {opts.discovery_timeout:g} s for "
                                  f"{', '.join(missing)}: {hint}")
            time.sleep(0.05)
        # The node's publishers compute distortion / colour only while they see a
        # subscriber: wait until its side of the match is there too.
        on_demand = [rec.topics[k] for k in self.frame_keys if k not in self.required]
        if self.node is not None:
            while not all(self.node.count_subscribers(t) > 0 for t in on_demand):
                if time.monotonic() > deadline:
                    raise ReplayError("the node did not see the recorder's subscriptions")
                time.sleep(0.05)
            time.sleep(0.2)
        else:
            time.sleep(1.0)  # no view into the remote node: give its side time to match

    def _label_info(self):
        rec = self.recorder
        rec.wait(lambda: rec.state.label_info is not None, timeout=5.0)
        return rec.state.label_info

    def _node_dropped_baseline(self) -> int:
        if self.node is not None:
            return int(self.node.stats.dropped)
        # An external node may have dropped frames before: take its last report, if any.
        rec = self.recorder
        rec.wait(lambda: bool(rec.state.diagnostics), timeout=2.5)
        with rec.state.cond:
            diags = list(rec.state.diagnostics)
        try:
            return int(diags[-1].get("frames dropped", 0)) if diags else 0
        except ValueError:
            return 0

    def _on_labels(self, stamp: int, raw: bytes) -> None:
        if self.scorer is None or stamp not in self.frames.gt_stamps:
            return
        msg = typestore().deserialize_cdr(raw, IMAGE_TYPE)
        self.scorer.add_prediction(stamp, image_array(msg, where="labels").copy())

    def _on_outcome(self, stamp: int, outcome) -> None:
        if self.scorer is not None:
            self.scorer.add_distance(stamp, outcome.distance)

    def _play(self, pub, clock_pub) -> float:
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock
        from tqdm import tqdm

        opts = self.opts
        rec = self.recorder
        frames = self.frames
        n = len(frames.stamps)
        wanted = set(frames.stamps)
        bar = tqdm(total=n, desc="replay " + ("closed-loop" if self.closed_loop
                                              else f"{opts.rate:g}x"),
                   unit="frame", disable=not opts.progress, file=sys.stderr)
        optional = [k for k in self.frame_keys if k not in self.required]
        t_first = None
        i = 0
        wall0 = bag0 = None
        with BagReader(opts.bag) as reader:
            topics = [self.topic] + ([self.gt_topic] if self.gt_topic else [])
            for topic, bag_t, raw in reader.messages(topics):
                if topic == self.gt_topic:
                    s = cdr_header_stamp(raw)
                    if s in frames.gt_stamps:
                        m = reader.deserialize(raw, IMAGE_TYPE, where=topic)
                        self.scorer.add_gt(s, image_array(m, where=topic).copy())
                    continue
                if i >= n:
                    if bag_t > frames.bag_times[-1]:
                        break
                    continue
                stamp = cdr_header_stamp(raw)
                if stamp not in wanted:
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
                self.sent_at[stamp] = now
                t_first = t_first if t_first is not None else now
                pub.publish(raw)
                i += 1
                if self.closed_loop:
                    ok = rec.wait(lambda s=stamp: rec.has(s, self.required) or rec.state.errors,
                                  timeout=opts.timeout)
                    if rec.state.errors:
                        raise ReplayError("recording failed: " + rec.state.errors[0])
                    if not ok:
                        raise ReplayError(
                            f"no output for frame {i} (stamp {stamp} ns) from {self.node_fqn} "
                            f"within {opts.timeout:g} s")
                    if optional:
                        # Published before frame_info by the node; a short grace suffices.
                        if not rec.wait(lambda s=stamp, o=tuple(optional): rec.has(s, o),
                                        timeout=5.0):
                            late = [k for k in optional if stamp not in
                                    rec.state.arrivals[k]]
                            self.warnings.append(f"frame {i}: no {', '.join(late)} within "
                                                 "5 s; not waiting for them any more")
                            optional = [k for k in optional if k not in late]
                bar.update(1)
        bar.close()
        return t_first

    def _drain(self) -> None:
        """Wait until the node has finished with everything sent (real-time mode)."""
        rec = self.recorder
        last = self.frames.stamps[len(self.sent_at) - 1] if self.sent_at else None
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
                since = time.perf_counter() - max(rec.state.last_output,
                                                  self.sent_at[last])
            if self.node is not None and since > 0.5 and self._node_idle():
                break
            if since > quiet + self._p95_frame_s():
                break
            rec.wait(lambda: rec.has(last, self.frame_keys), timeout=0.1)
        # Outputs of other frames still on the way (the recorder is reliable): a moment.
        rec.wait(lambda: all(rec.has(s, self.frame_keys) for s in rec.state.outcomes),
                 timeout=2.0)

    def _node_idle(self) -> bool:
        stats = self.node.stats
        unaccounted = getattr(stats, "unaccounted", None)
        if callable(unaccounted):
            return unaccounted() == 0
        return False

    def _p95_frame_s(self) -> float:
        with self.recorder.state.cond:
            totals = [o.total_ms for o in self.recorder.state.outcomes.values()]
        return float(np.percentile(totals, 95)) / 1e3 * 3 if totals else 5.0

    def _node_summary(self) -> dict:
        out: dict = {}
        if self.node is not None:
            s = self.node.stats
            out["node_stats"] = {k: int(getattr(s, k)) for k in (
                "input_count", "output_count", "dropped", "lost", "rejected", "failed",
                "discarded", "error_count") if isinstance(getattr(s, k, None), int)}
            if getattr(s, "last_error", ""):
                out["node_last_error"] = s.last_error
        else:
            with self.recorder.state.cond:
                diags = list(self.recorder.state.diagnostics)
            if diags:
                out["pipeline_mode"] = diags[-1].get("mode")
                out["model"] = diags[-1].get("model")
                out["device"] = diags[-1].get("device")
        return out

    def _shutdown(self) -> None:
        """Stop spinning, then free the executors, nodes and contexts.

        The spin threads must have left the executor before anything is destroyed:
        ``destroy_node`` (and the executor's guard condition in ``Executor.shutdown``) wait
        for their handles to be released while holding the GIL, and a spin thread still in
        ``wait_for_ready_callbacks`` needs the GIL to release them: a deadlock, seen under
        load with ``ex.spin()`` + ``ex.shutdown()`` (which does not wait for the spinning
        thread). So the threads spin in short slices and are stopped and joined first; a
        node whose thread did not stop is left to the process exit rather than deadlock.
        """
        import rclpy

        stuck = not all([th.stop(10.0) for th in self.threads])
        if not stuck:
            for ex in self.executors:
                try:
                    ex.shutdown(timeout_sec=0)
                except Exception:
                    pass
        if self.node is not None:
            try:
                self.node.close()  # stops the worker thread, frees the model
                if not stuck:
                    self.node.destroy_node()
            except Exception:
                pass
            self.node = None
        if getattr(self, "player", None) is not None:
            if self.opts.external:
                # Deleting the last participant of a context while a node in another process
                # holds its LARGE_DATA TCP connection open blocks for good in FastDDS 3.2
                # (TCPChannelResourceBasic::disconnect). The player stays alive, unreferenced
                # by the garbage collector, until the process ends (the CLI leaves with
                # os._exit; test processes too, see test/conftest.py).
                _KEPT_FOR_PROCESS_EXIT.append((self.player, list(self.contexts)))
                self.contexts = []
            else:
                try:
                    if not stuck:
                        self.player.destroy_node()
                except Exception:
                    pass
            self.player = None
        for ctx in self.contexts:
            rclpy.try_shutdown(context=ctx)
        self.executors, self.contexts, self.threads = [], [], []

    # -- report -------------------------------------------------------------------------------
    def _report(self, info: dict, out_bag: Path, wall_s: float) -> dict:
        from .report import (
            contact_sheet,
            format_table,
            latency_summary,
            plot_latency,
            plot_miou_by_distance,
            write_json_atomic,
        )

        opts = self.opts
        st = self.recorder.state
        outcomes = {s: o for s, o in st.outcomes.items() if s in self.sent_at}
        order = [s for s in st.order if s in outcomes]
        sent = len(self.sent_at)
        received = len(outcomes)
        if order:
            by_index = sorted(outcomes.values(), key=lambda o: o.frame_index)
            processed = by_index[-1].frame_index - by_index[0].frame_index + 1
            dropped_by_node = max(o.dropped_frames for o in outcomes.values()) \
                - info["dropped_before"]
        else:
            processed = dropped_by_node = 0
        dropped = sent - processed
        latencies = [(st.arrivals["labels"][s] - self.sent_at[s]) * 1e3
                     for s in order if s in st.arrivals["labels"]]
        last_arrival = max((max(st.arrivals[k].get(s, 0.0) for k in self.required)
                            for s in order), default=0.0)
        span = last_arrival - info["t_first"] if order else 0.0
        keys = [o for o in outcomes.values() if o.is_key]
        nonkeys = [o for o in outcomes.values() if not o.is_key]

        def med(values):
            return round(float(np.median(values)), 3) if values else None

        stages = {k: med([o.stages_ms[k] for o in outcomes.values()])
                  for k in next(iter(outcomes.values())).stages_ms} if outcomes else {}
        scores = self.scorer.as_dict(self.class_names)
        counts = {t: n for t, n in self.writer.counts.items()}
        report = {
            "bag": str(opts.bag),
            "topic": self.topic,
            "mode": "closed_loop" if self.closed_loop else "real_time",
            "rate": opts.rate,
            "node": self.node_fqn,
            "external": opts.external,
            "checkpoint": info.get("checkpoint", opts.checkpoint),
            "model": info.get("model"),
            "pipeline_mode": info.get("pipeline_mode"),
            "device": info.get("device"),
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
            "has_ground_truth": self.gt_topic is not None,
            "ground_truth_topic": self.gt_topic,
            **scores,
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "output_bag": str(out_bag),
            "output_counts": counts,
            "wall_s": round(wall_s, 3),
        }
        if info.get("schedule"):
            report["schedule"] = info["schedule"]
        if info.get("node_stats"):
            report["node_stats"] = info["node_stats"]
        warnings = self.warnings + self.scorer.errors + st.errors
        if report["outputs_missing"]:
            warnings.append(f"{report['outputs_missing']} processed frame(s) whose outputs "
                            "did not reach the recorder")
        if warnings:
            report["warnings"] = warnings
        files = {}
        if opts.plots:
            files["miou_plot"] = plot_miou_by_distance(report, opts.out / PICTURES[0])
            files["latency_plot"] = plot_latency(latencies, report, opts.out / PICTURES[1])
            # The first frame (a key frame) and propagated ones, where distortion shows.
            nonkey = [s for s in order[1:] if not outcomes[s].is_key]
            pick = order[:1] + _spread(nonkey, 3)
            topics = self.recorder.topics
            files["contact_sheet"] = contact_sheet(
                opts.bag, self.topic, self.gt_topic, out_bag, topics["labels"],
                topics.get("distortion"), pick, self.palette, opts.out / PICTURES[2])
        report["files"] = {k: str(v) for k, v in files.items() if v is not None}
        report["report"] = str(opts.out / REPORT_NAME)
        write_json_atomic(opts.out / REPORT_NAME, report)
        if opts.json_path is not None:
            write_json_atomic(opts.json_path, report)
        report["table"] = format_table(report)
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
    parser.add_argument("--topic", help="image topic (default: the *image_raw Image topic)")
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
        json_path=args.json, progress=not args.no_progress, plots=not args.no_plots)


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
    if _KEPT_FOR_PROCESS_EXIT:
        # Everything is written; leave without finalising the kept participant.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="davss replay", description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
