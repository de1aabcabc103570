"""davss_segmenter: the lifecycle node around :class:`davss_ros.pipeline.VideoSegmenter`.

The node owns ROS things only: parameters, QoS, topics, the lifecycle and diagnostics. The
segmentation itself is one ``VideoSegmenter.step`` per frame, run on a worker thread with a
one-frame slot (``worker.py``) so the subscription callback never blocks.

Lifecycle:

- configure: read and validate the parameters, load the checkpoint and build the
  segmenter, warm it up, create the (lifecycle) publishers. Any problem (a missing, corrupt
  or mismatched checkpoint, a bad configuration) is logged and answers FAILURE: the node
  stays unconfigured and can be configured again once the parameter is fixed.
- activate: enable the publishers, publish the label table, subscribe to ``image``.
- deactivate: unsubscribe and let the frame in flight finish; the model stays loaded.
- cleanup: free the model and destroy the publishers.
- shutdown: the same, and the worker thread ends.

Topics (relative, so one node per camera works under its own namespace):
``image`` (input, sensor_msgs/Image), ``~/labels``, ``~/labels_color``, ``~/overlay``,
``~/distortion``, ``~/frame_info``, ``~/label_info``, and ``/diagnostics``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from davss_msgs.msg import FrameInfo, LabelInfo

from . import params as P
from .diagnostics import FrameRecord, SegmenterStats, build_status
from .env import ensure_large_data_transport
from .image import image_to_rgb, new_image
from .qos import diagnostics_qos, input_qos, latched_qos, output_qos
from .worker import LatestFrameWorker

NODE_NAME = "davss_segmenter"
SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
ERROR = TransitionCallbackReturn.ERROR


@dataclass
class _Live:
    """Settings the worker reads per frame and parameter updates change at once."""

    labels: bool = True
    labels_color: bool = True
    overlay: bool = True
    distortion: bool = True
    alpha: float = 0.5


class SegmenterNode(LifecycleNode):
    """Video semantic segmentation of the ``image`` topic (DAVSS, see the package README)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        P.declare(self)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.stats = SegmenterStats()
        self._state = "unconfigured"
        self._configure_error = ""
        self._settings: P.NodeParams | None = None
        self._live = _Live()
        self._seg = None
        self._seg_lock = threading.Lock()  # the worker's step vs. schedule changes / cleanup
        self._lut = np.zeros((256, 3), np.uint8)
        self._model_text = "none"
        self._untrained = False
        self._active = False
        self._label_info_sent = False
        self._worker: LatestFrameWorker | None = None
        self._sub = None
        self._pubs: dict[str, object] = {}

        # Diagnostics run in every state, so a failed configure is visible on /diagnostics.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._diag_timer = self.create_timer(1.0, self.publish_diagnostics)

    # -- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return self._configure()
        except Exception as exc:  # anything unforeseen: stay unconfigured, say why
            self._release_all()
            return self._configure_failed(f"unexpected {_describe(exc)}")

    def _configure(self) -> TransitionCallbackReturn:
        try:
            settings = P.read(self)
        except ValueError as exc:
            return self._configure_failed(f"invalid parameter: {exc}")
        try:
            seg = self._build_segmenter(settings)
        except Exception as exc:  # CheckpointError, bad config, CUDA not there, ...
            return self._configure_failed(_describe(exc))
        try:
            self._setup_outputs(settings, seg)
        except Exception as exc:
            self._release_outputs()
            seg.close()
            return self._configure_failed(f"creating publishers failed: {_describe(exc)}")
        self._settings = settings
        self._live = _Live(settings.output_labels, settings.output_labels_color,
                           settings.output_overlay, settings.output_distortion,
                           settings.overlay_alpha)
        with self._seg_lock:
            self._seg = seg
        self.stats.reset()
        self._worker = LatestFrameWorker(
            self._process, on_error=self._frame_failed,
            name=f"davss_worker{self.get_namespace().replace('/', '_')}")
        self._configure_error = ""
        self._state = "inactive"
        self.get_logger().info(
            f"configured: {self._model_text} on {seg.device}, mode {seg.mode}, "
            f"schedule {_schedule_text(seg.config.schedule)}")
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            ret = super().on_activate(state)  # enables the lifecycle publishers
            if ret != SUCCESS:
                return ret
            if not self._label_info_sent:
                self._pubs["label_info"].publish(self._label_info())
                self._label_info_sent = True
            self._active = True
            self._sub = self.create_subscription(
                Image, "image", self._on_image, input_qos(self._settings.reliability),
                event_callbacks=SubscriptionEventCallbacks(
                    incompatible_qos=self._on_incompatible_qos))
        except Exception as exc:
            self.get_logger().error(f"activate failed: {_describe(exc)}")
            self._active = False
            self._destroy_subscription()
            super().on_deactivate(state)
            return FAILURE
        self._state = "active"
        self.get_logger().info(
            f"active: segmenting {self.resolve_topic_name('image')} "
            f"(reliability {self._settings.reliability})")
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._stop_processing()
            with self._seg_lock:
                if self._seg is not None:
                    self._seg.reset()  # the next activation starts on a key frame
            ret = super().on_deactivate(state)
        except Exception as exc:
            self.get_logger().error(f"deactivate failed: {_describe(exc)}")
            return ERROR
        self._state = "inactive"
        self.get_logger().info("inactive: unsubscribed, model kept")
        return ret

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._release_all()
        except Exception as exc:
            self.get_logger().error(f"cleanup failed: {_describe(exc)}")
            return ERROR
        self._state = "unconfigured"
        self.get_logger().info("cleaned up: model freed")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._release_all()
        except Exception as exc:
            self.get_logger().error(f"shutdown failed: {_describe(exc)}")
            return ERROR
        self._state = "finalized"
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # After an ERROR, drop everything and go back to unconfigured (SUCCESS).
        try:
            self._release_all()
        except Exception as exc:
            self.get_logger().error(f"error processing failed: {_describe(exc)}")
            self._state = "finalized"
            return FAILURE
        self._state = "unconfigured"
        return SUCCESS

    def close(self) -> None:
        """Stop the worker and free the model whatever the state (for clean exits)."""
        self._release_all()
        self._state = "finalized"

    @property
    def state(self) -> str:
        """The lifecycle state as this node last set it."""
        return self._state

    @property
    def segmenter(self):
        """The VideoSegmenter while configured (None otherwise)."""
        return self._seg

    # -- configure helpers ---------------------------------------------------------------
    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._configure_error = reason
        self.stats.record_error(f"configure failed: {reason}")
        self.get_logger().error(
            f"configure failed: {reason}. The node stays unconfigured; fix the parameter "
            "and configure again.")
        return FAILURE

    def _build_segmenter(self, s: P.NodeParams):
        # Imported here: torch takes a while to import, and `segmenter --help` need not wait.
        from davss_ros.checkpoint import load_checkpoint
        from davss_ros.config import load_config
        from davss_ros.pipeline import VideoSegmenter

        checkpoint = load_checkpoint(s.checkpoint) if s.checkpoint else None
        # With a checkpoint its own configuration builds the networks; the node's
        # parameters set the runtime fields on top (mode, flow, schedule, input size).
        cfg = checkpoint.config if checkpoint is not None else load_config(s.config)
        cfg = type(cfg).from_dict(cfg.to_dict())  # a private copy
        cfg.model.mode = s.mode
        cfg.model.flow.provider = s.flow_provider
        cfg.model.flow.dis_preset = s.dis_preset
        cfg.schedule = s.schedule
        if s.input_width:
            cfg.model.input_width = s.input_width
        if s.input_height:
            cfg.model.input_height = s.input_height
        cfg.validate()
        seg = VideoSegmenter(config=cfg, checkpoint=checkpoint, device=s.device)
        try:
            seg.warmup()
        except Exception:
            seg.close()
            raise
        m = seg.config.model
        self._untrained = checkpoint is None
        if checkpoint is None:
            self._model_text = (f"untrained {m.segmenter.backbone} "
                                f"({s.config}, {m.input_width}x{m.input_height})")
            self.get_logger().warning(
                "model.checkpoint is empty: running UNTRAINED random weights, the outputs "
                "are meaningless. Set model.checkpoint to a trained DAVSS checkpoint.")
        else:
            self._model_text = (f"{Path(s.checkpoint).name} ({m.segmenter.backbone}, "
                                f"{m.input_width}x{m.input_height})")
        return seg

    def _setup_outputs(self, s: P.NodeParams, seg) -> None:
        qos = output_qos(s.output_reliability)
        create = self.create_lifecycle_publisher
        self._pubs = {
            "labels": create(Image, "~/labels", qos),
            "labels_color": create(Image, "~/labels_color", qos),
            "overlay": create(Image, "~/overlay", qos),
            "distortion": create(Image, "~/distortion", qos),
            "frame_info": create(FrameInfo, "~/frame_info", qos),
            "label_info": create(LabelInfo, "~/label_info", latched_qos()),
        }
        self._label_info_sent = False
        lut = np.zeros((256, 3), np.uint8)  # ignore (255) and unknown ids draw black
        lut[: seg.num_classes] = np.asarray(seg.palette, np.uint8).reshape(-1, 3)
        self._lut = lut

    def _label_info(self) -> LabelInfo:
        seg = self._seg
        msg = LabelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_ids = list(range(seg.num_classes))
        msg.class_names = list(seg.class_names)
        msg.palette = [int(v) for c in seg.palette for v in c]
        msg.ignore_id = int(seg.ignore_id)
        msg.threshold = 0.0
        return msg

    # -- teardown helpers ----------------------------------------------------------------
    def _destroy_subscription(self) -> None:
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None

    def _stop_processing(self) -> None:
        """Unsubscribe, drop the waiting frame and wait for the one in flight."""
        self._active = False
        self._destroy_subscription()
        if self._worker is not None:
            self._worker.clear()
            if not self._worker.wait_idle(timeout=30.0):
                self.get_logger().warning("the frame in flight did not finish within 30 s")

    def _release_outputs(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}

    def _release_all(self) -> None:
        self._active = False
        self._destroy_subscription()
        if self._worker is not None:
            self._worker.stop(timeout=30.0)
            self._worker = None
        with self._seg_lock:
            seg, self._seg = self._seg, None
        if seg is not None:
            seg.close()
        self._release_outputs()
        self._settings = None

    # -- frames ----------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        # Executor thread: store and return; the worker does the rest.
        received = time.perf_counter()
        self.stats.record_input()
        worker = self._worker
        if worker is not None and worker.submit((msg, received)):
            self.stats.record_drop()

    def _on_incompatible_qos(self, event) -> None:
        self.get_logger().warning(
            f"a publisher on {self.resolve_topic_name('image')} offers a QoS this "
            f"subscription (reliability {self._settings.reliability if self._settings else '?'})"
            " cannot match: no images will arrive. Set qos.reliability to best_effort.",
            throttle_duration_sec=10.0)

    def _frame_failed(self, exc: BaseException) -> None:
        text = _describe(exc)
        self.stats.record_error(text)
        self.get_logger().error(f"frame skipped: {text}", throttle_duration_sec=5.0)

    def _process(self, item: tuple[Image, float]) -> None:
        msg, received = item
        with self._seg_lock:
            seg = self._seg
            if seg is None or not self._active:
                return
            t0 = time.perf_counter()
            try:
                rgb = image_to_rgb(msg)
            except ValueError as exc:
                self._frame_failed(exc)
                return
            t1 = time.perf_counter()
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            result = seg.step(rgb, stamp if stamp > 0 else None)
            t2 = time.perf_counter()
        self._publish(msg, rgb, result, received, t0, t1, t2)

    def _publish(self, msg: Image, rgb: np.ndarray, result, received: float,
                 t0: float, t1: float, t2: float) -> None:
        pubs, live, header = self._pubs, self._live, msg.header
        if not pubs:
            return
        h, w = result.labels.shape
        if live.labels:
            out, view = new_image(h, w, "mono8", header)
            np.copyto(view, result.labels)
            pubs["labels"].publish(out)
        want_color = live.labels_color and pubs["labels_color"].get_subscription_count() > 0
        want_overlay = live.overlay and pubs["overlay"].get_subscription_count() > 0
        if want_color or want_overlay:
            if want_color:
                color_msg, color = new_image(h, w, "rgb8", header)
            else:
                color_msg, color = None, np.empty((h, w, 3), np.uint8)
            np.take(self._lut, result.labels, axis=0, out=color, mode="clip")
            if color_msg is not None:
                pubs["labels_color"].publish(color_msg)
            if want_overlay:
                over_msg, over = new_image(h, w, "rgb8", header)
                cv2.addWeighted(rgb, 1.0 - live.alpha, color, live.alpha, 0.0, dst=over)
                pubs["overlay"].publish(over_msg)
        if live.distortion and pubs["distortion"].get_subscription_count() > 0:
            dist_msg, dist = new_image(h, w, "32FC1", header)
            np.copyto(dist, result.distortion)
            pubs["distortion"].publish(dist_msg)
        t3 = time.perf_counter()

        info = FrameInfo()
        info.header = header
        info.frame_index = int(result.frame_index)
        info.is_key_frame = bool(result.is_key)
        info.propagation_distance = int(result.propagation_distance)
        info.key_reason = result.key_reason
        info.distortion_ratio = float(result.distortion_ratio)
        info.mean_distortion = float(result.distortion_mean)
        tm = result.timings_ms
        info.decode_ms = (t1 - t0) * 1e3
        info.flow_ms = float(tm.get("flow", 0.0))
        info.warp_ms = float(tm.get("warp", 0.0))
        info.dmnet_ms = float(tm.get("dmnet", 0.0))
        info.cfnet_ms = float(tm.get("cfnet", 0.0))
        info.fuse_ms = float(tm.get("fuse", 0.0))
        info.segmenter_ms = float(tm.get("segmenter", 0.0))
        info.encode_ms = (t3 - t2) * 1e3
        info.total_ms = (t3 - received) * 1e3
        info.dropped_frames = int(self.stats.dropped)

        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        self.stats.record_frame(FrameRecord(
            done=time.monotonic(), total_ms=info.total_ms,
            pipeline_ms=float(tm.get("total", (t2 - t1) * 1e3)),
            stamp_latency_ms=(now_ns - stamp_ns) / 1e6 if stamp_ns else float("nan"),
            is_key=bool(result.is_key), frame_index=int(result.frame_index)))
        pubs["frame_info"].publish(info)

    # -- diagnostics -----------------------------------------------------------------------
    def publish_diagnostics(self) -> None:
        seg = self._seg
        status = build_status(
            self.stats,
            name=f"{self.get_fully_qualified_name()}: segmentation",
            hardware_id=self.get_fully_qualified_name(),
            state=self._state,
            model=self._model_text if seg is not None else "none",
            device=str(seg.device) if seg is not None else "none",
            mode=seg.mode if seg is not None else "none",
            input_topic=self.resolve_topic_name("image"),
            untrained=seg is not None and self._untrained,
            configure_error=self._configure_error)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diag_pub.publish(array)

    # -- parameters --------------------------------------------------------------------------
    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for p in parameters:
            reason = P.validate(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        names = {p.name for p in parameters}
        live = self._live
        values = {p.name: p.value for p in parameters}
        self._live = _Live(
            labels=values.get("output.labels", live.labels),
            labels_color=values.get("output.labels_color", live.labels_color),
            overlay=values.get("output.overlay", live.overlay),
            distortion=values.get("output.distortion", live.distortion),
            alpha=float(values.get("overlay.alpha", live.alpha)))
        if names & set(P.SCHEDULE_PARAMS):
            with self._seg_lock:
                seg = self._seg
                if seg is not None:
                    current = {n: self.get_parameter(n).value for n in P.SCHEDULE_PARAMS}
                    schedule = P.schedule_from(current, base=seg.config.schedule)
                    seg.set_schedule(schedule)
                    self.get_logger().info(f"schedule now {_schedule_text(schedule)}")
        later = sorted(n for n in names if P.SPECS.get(n) and P.SPECS[n].applies == "configure")
        if later and self._seg is not None:
            self.get_logger().info(
                f"{', '.join(later)} changed: takes effect at the next configure "
                "(deactivate, cleanup, configure, activate)")


def _schedule_text(s) -> str:
    if s.policy == "fixed":
        return f"fixed, key every {s.key_interval} frames"
    return (f"adaptive, {s.metric} distortion > {s.threshold:g}, "
            f"at most {s.max_interval} frames apart")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if name in ("CheckpointError", "ValueError") and text:
        return text
    return f"{name}: {text}" if text else name


# -- entry points ------------------------------------------------------------------------------
def main(args: list[str] | None = None) -> int:
    """Console script ``segmenter``: run the node until Ctrl-C.

    Configures and activates on its own unless the ``autostart`` parameter is false (then
    a launch file or a lifecycle manager drives the transitions).
    """
    ensure_large_data_transport()
    rclpy.init(args=args)
    node = None
    executor = SingleThreadedExecutor()  # heavy work runs on the node's worker thread
    code = 0
    try:
        node = SegmenterNode()
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != SUCCESS:
                node.get_logger().error(
                    "autostart: configure failed (see above); the node stays unconfigured "
                    "and waits for a lifecycle transition request")
            elif node.trigger_activate() != SUCCESS:
                node.get_logger().error("autostart: activate failed (see above)")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:
        print(f"davss_segmenter: {_describe(exc)}", file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            node.close()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``davss node``; ``--ros-args ...`` at the end goes to ROS unchanged."""
    parser.add_argument("--params-file", metavar="YAML",
                        help="ROS parameters file (see config/davss.yaml)")
    parser.add_argument("--image-topic", metavar="TOPIC",
                        help="input topic, remapped onto 'image' (e.g. /camera/image_raw)")
    parser.add_argument("--namespace", metavar="NS", help="node namespace (one per camera)")
    parser.add_argument("--checkpoint", metavar="PT", help="sets model.checkpoint")
    parser.add_argument("--no-autostart", action="store_true",
                        help="stay unconfigured; wait for lifecycle transition requests")
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                        metavar="ARG", help="everything after it goes to ROS unchanged "
                        "(-p name:=value, -r from:=to, --params-file, --log-level ...)")


def ros_arguments(args: argparse.Namespace) -> list[str]:
    """The rclpy argv for ``davss node``'s options (ours first, then the passed-through)."""
    ros: list[str] = []
    if args.params_file:
        ros += ["--params-file", str(args.params_file)]
    if args.image_topic:
        ros += ["-r", f"image:={args.image_topic}"]
    if args.namespace:
        ns = args.namespace if args.namespace.startswith("/") else "/" + args.namespace
        ros += ["-r", f"__ns:={ns}"]
    if args.checkpoint:
        ros += ["-p", f"model.checkpoint:='{args.checkpoint}'"]
    if args.no_autostart:
        ros += ["-p", "autostart:=false"]
    ros += list(args.ros_args or [])
    return [NODE_NAME, "--ros-args", *ros] if ros else [NODE_NAME]


def run(args: argparse.Namespace) -> int:
    return main(ros_arguments(args))


if __name__ == "__main__":
    sys.exit(main())
