"""davss_segmenter: the lifecycle node around :class:`davss_ros.pipeline.VideoSegmenter`.

The node owns ROS things only: parameters, QoS, topics, the lifecycle and diagnostics. The
segmentation itself is one ``VideoSegmenter.step`` per frame, run on a worker thread with a
one-frame slot (``worker.py``) so the subscription callback never blocks.

Lifecycle:

- configure: read and validate the parameters, load the checkpoint (by default the model
  shipped with the package, see ``model.checkpoint``) and build the segmenter, warm it
  up, create the (lifecycle) publishers. Any problem (a missing, corrupt or mismatched
  checkpoint, a bad configuration) is logged and answers FAILURE: the node stays
  unconfigured and can be configured again once the parameter is fixed.
- activate: enable the publishers, publish the label table, subscribe to ``image``.
- deactivate: unsubscribe and let the frame in flight finish; the model stays loaded.
- cleanup: free the model and destroy the publishers.
- shutdown: the same, and the worker thread ends.

Bad input and faults never stop the node; each is counted on /diagnostics (see
``diagnostics.py`` for the frame accounting, received = processed + dropped + rejected +
failed + discarded):

- an unusable image (encoding, zero or tiny size, step or data length) is rejected, counted
  per kind;
- a resolution change, a stamp going backwards (a looped bag) or jumping forward by more
  than ``input.max_stamp_gap`` resets the propagation: the frame is a key frame, counted
  under "forced key frames";
- a non-finite network output is published as all-ignore labels, counted as invalid, and
  the next frame is a key frame;
- an exception in the pipeline (CUDA out of memory above all) skips the frame, frees the
  CUDA cache and restarts on a key frame ('recovery');
- frames a publisher sent that never reached the callback are counted from gaps in its
  sequence numbers and from DDS's own count (the ``message_lost`` event), the larger of
  the two ("lost in transport"; ``diagnostics.LossLedger``), with a WARN that names the
  publisher and says what carries large frames. Each publisher (by its DDS gid, named by
  the ROS graph) has its own figures on /diagnostics, closed when it goes away.

Topics (relative, so one node per camera works under its own namespace):
``image`` (input, sensor_msgs/Image), ``~/labels``, ``~/labels_color``, ``~/overlay``,
``~/distortion``, ``~/confidence``, ``~/frame_info``, ``~/label_info``, and
``/diagnostics``. When a ``camera_info`` topic exists beside the input
(``/camera/camera_info`` for ``/camera/image_raw``), its newest message is republished on
``~/camera_info`` with each frame's header, just before the labels.

Several cameras in one node: ``image_topics`` lists their topics (``name=topic`` entries
name a camera; otherwise the name is the topic's parent namespace, ``front`` for
``/front/image_raw``). Each camera then has its own outputs under ``~/<camera>/``
(``~/front/labels``, ``~/front/confidence``, ``~/front/label_info``, ...), its own
propagation state (``VideoSegmenter.new_stream``: one model for all), its own slot in the
worker and its own status on /diagnostics beside the node's total. An empty list is the
single ``image`` topic above; that is the one-camera case of the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import os
import posixpath
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import (
    EventHandler,
    PublisherEventCallbacks,
    QoSSubscriptionEventType,
    SubscriptionEventCallbacks,
)
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from davss_msgs.msg import FrameInfo
from davss_ros.schedule import COLD_KEY_REASONS, CostEstimate, StreamLoad, key_budget_ms

from . import params as P
from .diagnostics import (
    LARGE_FRAME_MB,
    FrameRecord,
    LossLedger,
    PublisherRecord,
    SegmenterStats,
    build_status,
    publisher_values,
)
from .env import ensure_large_data_transport
from .image import ImageError, compressed_to_rgb, image_to_rgb, new_image
from .label_info import label_info_class, make_label_info
from .qos import diagnostics_qos, input_qos, latched_qos, no_event_handlers, output_qos
from .shm import low_room_warning, shared_memory
from .worker import LatestFrameWorker

NODE_NAME = "davss_segmenter"
SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
ERROR = TransitionCallbackReturn.ERROR

# Smallest frame the pipeline takes (davss_ros.pipeline.MIN_IMAGE_SIZE; not imported from
# there so that this module loads without torch).
MIN_IMAGE_SIZE = 4
# Key reasons that come from the input or a fault rather than the schedule; counted in
# /diagnostics ("forced key frames").
FORCED_KEY_REASONS = ("stamp_backwards", "stamp_jump", "resolution_change",
                      "nonfinite_output", "recovery")
# Publishers whose sequence numbers are followed for loss counting (the newest ones).
MAX_TRACKED_PUBLISHERS = 16
# What the loss warning tells: which QoS and transport carry large frames (measured with
# FastDDS 3.2 between two processes on one host, see the README's "Large frames").
LARGE_FRAME_ADVICE = (
    f"best-effort frames larger than about {LARGE_FRAME_MB} MB are lost with FastDDS's "
    "default LARGE_DATA socket buffers. Use reliable QoS on both sides "
    "(qos.reliability:=reliable here and a reliable camera publisher), or start the "
    "CAMERA with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA?sockets_size=64MB (or larger) in "
    "its environment")


class _SafeEventHandler(EventHandler):
    """rclpy's QoS event handler, safe against its subscription being destroyed meanwhile.

    The race ``qos.no_event_handlers`` avoids, in rclpy (Kilted)
    ``Executor._wait_for_ready_callbacks``: a waitable whose handle was destroyed (another
    thread deactivating) after the executor listed it fails to enter the wait set's context
    (caught there), yet its
    ``add_to_wait_set`` is still called and raises InvalidHandle, which kills the spin
    thread. Here the handler then stays out of the wait set (it was not counted in it
    either), and a take after destruction reads as no event.
    """

    def add_to_wait_set(self, wait_set) -> None:
        try:
            super().add_to_wait_set(wait_set)
        except InvalidHandle:
            self._event_index = None

    def take_data(self):
        try:
            return super().take_data()
        except InvalidHandle:
            return None


class _InputEvents(SubscriptionEventCallbacks):
    """message_lost and matched on an input subscription, with :class:`_SafeEventHandler`."""

    def __init__(self, *, message_lost, matched) -> None:
        super().__init__(message_lost=message_lost, matched=matched,
                         use_default_callbacks=False)

    def create_event_handlers(self, callback_group, subscription, topic_name):
        kinds = ((QoSSubscriptionEventType.RCL_SUBSCRIPTION_MESSAGE_LOST, self.message_lost),
                 (QoSSubscriptionEventType.RCL_SUBSCRIPTION_MATCHED, self.matched))
        return [_SafeEventHandler(callback_group=callback_group, callback=callback,
                                  event_type=kind, parent_impl=subscription)
                for kind, callback in kinds]


@dataclass
class _Live:
    """Settings the worker reads per frame and parameter updates change at once."""

    labels: bool = True
    labels_color: bool = True
    overlay: bool = True
    distortion: bool = True
    alpha: float = 0.5
    confidence: bool = True


@dataclass(eq=False)
class _Camera:
    """One input stream: its topic, propagation state, outputs and counters."""

    name: str  # '' for the single ``image`` topic: outputs directly under ~/
    topic: str  # subscription topic as given (relative ones resolve in the namespace)
    stats: SegmenterStats
    seg: object = None  # its VideoSegmenter stream (the node's own for the first camera)
    pubs: dict = field(default_factory=dict)
    sub: object = None
    info_sub: object = None
    camera_info: CameraInfo | None = None  # the newest, republished with each frame
    framed_size: tuple[int, int] | None = None
    # The budget policy's view of the load: the newest arrival and the running average of
    # the arrival intervals (s), and the worker's time per frame beyond the pipeline step
    # (decoding, publishing; ms).
    last_arrival: float | None = None
    arrival_period: float | None = None
    # When the frame a worker is processing now started (perf_counter s; None: none is).
    running_since: float | None = None
    # Held while a worker steps this camera's frame (model.workers > 1: cameras in parallel).
    lock: threading.Lock = field(default_factory=threading.Lock)
    overhead: CostEstimate | None = None
    # frames lost in transport, per publisher and DDS's count (diagnostics.LossLedger)
    ledger: LossLedger = field(
        default_factory=lambda: LossLedger(max_publishers=MAX_TRACKED_PUBLISHERS))
    warned: set = field(default_factory=set)  # loss warnings given (once per publisher)

    def output(self, key: str) -> str:
        return f"~/{self.name}/{key}" if self.name else f"~/{key}"

    def record(self, node_stats: SegmenterStats):
        """The counters a frame of this camera goes into: its own and the node's total."""
        return _Tee(self.stats, node_stats)


# Held while a frame goes into a camera's counters and the node's total, and while the
# diagnostics read them: a status then never shows a frame in one and not yet in the other
# (seen: a total of 5 beside cameras of 4 + 2).
_RECORDING = threading.Lock()


class _Tee:
    """Calls each ``record_*`` method on every distinct SegmenterStats given, as one step."""

    def __init__(self, *stats: SegmenterStats) -> None:
        self._all = list({id(s): s for s in stats}.values())

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            with _RECORDING:
                for s in self._all:
                    getattr(s, name)(*args, **kwargs)
        return call


class SegmenterNode(LifecycleNode):
    """Video semantic segmentation of the ``image`` topic (DAVSS, see the package README)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        P.declare(self)
        if "LARGE_DATA" in os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", ""):
            warning = low_room_warning(shared_memory())
            if warning:
                self.get_logger().warning(warning)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.stats = SegmenterStats()
        self._state = "unconfigured"
        self._configure_error = ""
        self._settings: P.NodeParams | None = None
        self._live = _Live()
        self._seg = None
        # Schedule changes and cleanup vs. the workers' steps: taken with every camera's
        # lock (_streams_locked); a step holds its camera's only.
        self._seg_lock = threading.Lock()
        self._lut = np.zeros((256, 3), np.uint8)
        self._model_text = "none"
        self._untrained = False
        self._active = False
        self._label_info_sent = False
        self._worker: LatestFrameWorker | None = None
        # The input streams (one per camera; the single 'image' topic is one camera).
        self._cameras: list[_Camera] = []

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
        # One camera: the node's own counters; several: each its own, plus the total.
        several = len(settings.cameras) > 1
        self._cameras = [
            _Camera(name, topic, SegmenterStats() if several else self.stats,
                    seg=seg if i == 0 else seg.new_stream())
            for i, (name, topic) in enumerate(settings.cameras)]
        try:
            self._setup_outputs(settings, seg)
        except Exception as exc:
            self._release_outputs()
            self._cameras = []
            seg.close()
            return self._configure_failed(f"creating publishers failed: {_describe(exc)}")
        self._settings = settings
        self._live = _Live(settings.output_labels, settings.output_labels_color,
                           settings.output_overlay, settings.output_distortion,
                           settings.overlay_alpha, settings.output_confidence)
        with self._streams_locked():
            self._seg = seg
        self.stats.reset()
        for cam in self._cameras:
            cam.stats.reset()
        self._worker = LatestFrameWorker(
            self._process, on_error=lambda exc: self._frame_failed(None, exc),
            name=f"davss_worker{self.get_namespace().replace('/', '_')}",
            on_discard=lambda item: item[0].record(self.stats).record_discard(),
            depth=settings.queue_depth, threads=settings.workers)
        self._configure_error = ""
        self._state = "inactive"
        self.get_logger().info(
            f"configured: {self._model_text} on {seg.device}, mode {seg.mode}, "
            f"schedule {_schedule_text(seg.config.schedule)}"
            + (f", {len(self._cameras)} cameras: "
               + ", ".join(f"{c.name} ({c.topic})" for c in self._cameras) if several else ""))
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            ret = super().on_activate(state)  # enables the lifecycle publishers
            if ret != SUCCESS:
                return ret
            if not self._label_info_sent:
                for cam in self._cameras:
                    cam.pubs["label_info"].publish(self._label_info())
                self._label_info_sent = True
            self._active = True
            compressed = self._settings.transport == "compressed"
            qos = input_qos(self._settings.reliability)
            for cam in self._cameras:
                cam.ledger.restart()  # a new subscription: gaps and DDS counts afresh
                cam.warned = set()
                cam.last_arrival = cam.arrival_period = None
                cam.overhead = CostEstimate()
                cam.sub = self.create_subscription(
                    CompressedImage if compressed else Image,
                    f"{cam.topic}/compressed" if compressed else cam.topic,
                    functools.partial(self._on_image, cam), qos,
                    event_callbacks=_InputEvents(
                        message_lost=functools.partial(self._on_message_lost, cam),
                        matched=functools.partial(self._on_matched, cam)))
                cam.info_sub = self.create_subscription(
                    CameraInfo, camera_info_topic(self.resolve_topic_name(cam.topic)),
                    functools.partial(self._on_camera_info, cam), qos,
                    event_callbacks=no_event_handlers(SubscriptionEventCallbacks))
        except Exception as exc:
            self.get_logger().error(f"activate failed: {_describe(exc)}")
            self._active = False
            self._destroy_subscription()
            super().on_deactivate(state)
            return FAILURE
        self._state = "active"
        self.get_logger().info(
            f"active: segmenting "
            f"{', '.join(self.resolve_topic_name(c.topic) for c in self._cameras)} "
            f"(reliability {self._settings.reliability})")
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._stop_processing()
            with self._streams_locked():
                for cam in self._cameras:
                    if cam.seg is not None:
                        cam.seg.reset()  # the next activation starts on a key frame
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

    def destroy_node(self) -> None:
        """Destroy the node, and with it its DDS participant, now.

        rclpy (Kilted) ``LifecycleNode.destroy_node`` leaves the lifecycle state machine
        alive, and the machine holds the rcl node: the participant then lives on until the
        cyclic garbage collector frees the Python node, at any moment, in whatever thread
        allocates then, holding the GIL. Deleting a LARGE_DATA participant can block inside
        FastDDS's TCP transport, and then every thread of the process stops (seen in the
        tests: a camera's executor thread collecting an earlier test's node, for good).
        """
        super().destroy_node()
        machine = getattr(self, "_state_machine", None)  # rclpy's; absent: nothing to free
        if machine is not None:
            machine.destroy_when_not_in_use()

    @property
    def state(self) -> str:
        """The lifecycle state as this node last set it."""
        return self._state

    @property
    def configure_error(self) -> str:
        """Why the last configure failed ('' after a successful one)."""
        return self._configure_error

    @property
    def segmenter(self):
        """The VideoSegmenter while configured (None otherwise); the first camera's stream."""
        return self._seg

    @property
    def cameras(self) -> list[str]:
        """The cameras' names while configured ('' for the single ``image`` topic)."""
        return [c.name for c in self._cameras]

    def input_publisher_count(self) -> int:
        """Writers the input readers have matched (all cameras; 0 while not subscribed).

        The reader's own side of the match: a best-effort frame published before it counts
        the camera's writer never arrives.
        """
        total = 0
        for cam in list(self._cameras):
            sub = cam.sub
            if sub is not None:
                try:
                    total += sub.get_publisher_count()
                except Exception:  # destroyed while counting (deactivate)
                    pass
        return total

    def camera_stats(self, name: str) -> SegmenterStats:
        """One camera's counters (the node's own with a single camera)."""
        for cam in self._cameras:
            if cam.name == name:
                return cam.stats
        raise KeyError(f"no camera {name!r}; cameras: {self.cameras}")

    @property
    def _pubs(self) -> dict:
        """The first camera's publishers (all of them, with a single camera)."""
        return self._cameras[0].pubs if self._cameras else {}

    # -- configure helpers ---------------------------------------------------------------
    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._configure_error = reason
        self.stats.record_error(f"configure failed: {reason}", kind="configure")
        self.get_logger().error(
            f"configure failed: {reason}. The node stays unconfigured; fix the parameter "
            "and configure again.")
        return FAILURE

    def _build_segmenter(self, s: P.NodeParams):
        # Imported here: torch takes a while to import, and `segmenter --help` need not wait.
        from davss_ros.checkpoint import describe_origin, file_sha256, load_checkpoint
        from davss_ros.config import load_config
        from davss_ros.pipeline import VideoSegmenter
        from davss_ros.weights import resolve_checkpoint

        # model.checkpoint empty = the shipped model (for model.config cpu), 'untrained' =
        # random weights, else a file; see davss_ros.weights.resolve_checkpoint.
        path, untrained_reason = resolve_checkpoint(s.checkpoint, s.config)
        checkpoint = load_checkpoint(path) if path is not None else None
        # With a checkpoint its own configuration builds the networks; the node's
        # parameters are runtime overrides on top (mode, flow, schedule, input size).
        size = None
        if s.input_width or s.input_height:
            base = (checkpoint.config if checkpoint is not None else load_config(s.config)).model
            size = (s.input_height or base.input_height, s.input_width or base.input_width)
        seg = VideoSegmenter.from_checkpoint(
            checkpoint, preset=s.config, mode=s.mode, input_size=size, flow=s.flow_provider,
            dis_preset=s.dis_preset, schedule=s.schedule,
            key_segmenter=s.key_segmenter or None, resize=s.resize, device=s.device,
            threads=s.threads, max_stamp_gap=s.max_stamp_gap or None)
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
                f"{untrained_reason}: running UNTRAINED random weights, the outputs are "
                "meaningless. Set model.checkpoint to a trained DAVSS checkpoint (empty = "
                "the model shipped with davss_ros, for model.config cpu).")
        else:
            shipped = not s.checkpoint.strip()
            self._model_text = (f"{path.name} ({'shipped; ' if shipped else ''}"
                                f"{m.segmenter.backbone}, {m.input_width}x{m.input_height})")
            self.get_logger().info(
                f"model: {'shipped ' if shipped else ''}{path} (sha256 "
                f"{file_sha256(path)[:12]}): {describe_origin(checkpoint.meta)}")
            if not shipped and s.config != P.SPECS["model.config"].default \
                    and seg.key_segmenter.kind == "native":
                self.get_logger().warning(
                    f"model.config {s.config!r} is not used: the checkpoint carries its own "
                    "architecture")
        if seg.key_segmenter.kind != "native":
            self._model_text += f", key frames: {seg.key_segmenter.describe()}"
            self.get_logger().info(f"key segmenter: {seg.key_segmenter.describe()}")
        return seg

    def _setup_outputs(self, s: P.NodeParams, seg) -> None:
        qos = output_qos(s.output_reliability)

        def create(msg_type, topic, profile):
            return self.create_lifecycle_publisher(
                msg_type, topic, profile,
                event_callbacks=no_event_handlers(PublisherEventCallbacks))

        for cam in self._cameras:
            out = cam.output
            cam.pubs = {
                "labels": create(Image, out("labels"), qos),
                "labels_color": create(Image, out("labels_color"), qos),
                "overlay": create(Image, out("overlay"), qos),
                "distortion": create(Image, out("distortion"), qos),
                "confidence": create(Image, out("confidence"), qos),
                "frame_info": create(FrameInfo, out("frame_info"), qos),
                "camera_info": create(CameraInfo, out("camera_info"), qos),
                # vision_msgs/LabelInfo where vision_msgs is installed (see label_info.py).
                "label_info": create(label_info_class(), out("label_info"), latched_qos()),
            }
        self._label_info_sent = False
        lut = np.zeros((256, 3), np.uint8)  # ignore (255) and unknown ids draw black
        lut[: seg.num_classes] = np.asarray(seg.palette, np.uint8).reshape(-1, 3)
        self._lut = lut

    def _label_info(self, stamp=None):
        seg = self._seg
        return make_label_info(list(seg.class_names), seg.palette, int(seg.ignore_id),
                               stamp if stamp is not None else self.get_clock().now().to_msg())

    # -- teardown helpers ----------------------------------------------------------------
    def _destroy_subscription(self) -> None:
        for cam in self._cameras:
            if cam.sub is not None:
                self.destroy_subscription(cam.sub)
                cam.sub = None
            if cam.info_sub is not None:
                self.destroy_subscription(cam.info_sub)
                cam.info_sub = None
            cam.camera_info = None

    def _stop_processing(self) -> None:
        """Unsubscribe, drop the waiting frame and wait for the one in flight."""
        self._active = False
        self._destroy_subscription()
        if self._worker is not None:
            self._worker.clear()
            if not self._worker.wait_idle(timeout=30.0):
                self.get_logger().warning("the frame in flight did not finish within 30 s")

    def _release_outputs(self) -> None:
        for cam in self._cameras:
            for pub in cam.pubs.values():
                self.destroy_lifecycle_publisher(pub)
            cam.pubs = {}

    def _release_all(self) -> None:
        self._active = False
        self._destroy_subscription()
        if self._worker is not None:
            self._worker.stop(timeout=30.0)
            self._worker = None
        with self._streams_locked():
            seg, self._seg = self._seg, None
            streams = [c.seg for c in self._cameras if c.seg is not None and c.seg is not seg]
            for cam in self._cameras:
                cam.seg = None
        for stream in streams:
            stream.close()
        if seg is not None:
            seg.close()
        self._release_outputs()
        self._cameras = []
        self._settings = None

    # -- frames ----------------------------------------------------------------------------
    def _on_image(self, cam: _Camera, msg: Image, info) -> None:
        # Executor thread: store and return; the worker does the rest. Bound to its camera
        # with functools.partial: two parameters left (no default) make rclpy pass the
        # MessageInfo.
        received = time.perf_counter()
        last = cam.last_arrival
        cam.last_arrival = received
        if last is not None and received > last:
            gap = received - last
            prev = cam.arrival_period
            cam.arrival_period = gap if prev is None else 0.3 * gap + 0.7 * prev
        record = cam.record(self.stats)
        record.record_input()
        self._track_sequence(cam, msg, info)
        worker = self._worker
        if worker is None:
            record.record_discard()
        elif worker.offer((cam, msg, received), cam.name) == "replaced":
            record.record_drop()
        # 'refused' (the worker is stopping) is counted by the worker's on_discard

    def _on_camera_info(self, cam: _Camera, msg: CameraInfo) -> None:
        cam.camera_info = msg  # the newest; published with the next frame's outputs

    def _track_sequence(self, cam: _Camera, msg, info) -> None:
        """Count frames a publisher sent that never reached this subscription.

        DDS gives each sample its writer's sequence number; a gap between two samples of
        the same publisher is frames lost on the way (best-effort transport, or the reader's
        history overwritten before the executor took the sample). A publisher that goes
        and comes back is a new writer (a new gid), so a restarted camera is no gap. DDS's
        own count comes with the message_lost event; ``LossLedger`` reconciles the two.
        """
        try:
            gid = info.get("publisher_gid")
            seq = info.get("publication_sequence_number")
        except AttributeError:
            return
        if not gid:
            return
        data = getattr(msg, "data", None)
        rec, gap, new = cam.ledger.sample(bytes(gid.get("data", b"")), seq,
                                          len(data) if data is not None else 0)
        if new:
            cam.record(self.stats).record_lost(new)
        if rec.received == 1:  # a new publisher: its name (else the diagnostics timer's)
            self._name_publishers(cam)
        if gap:
            self._warn_lost(cam, rec.gid, f"{gap} frame(s) from {self._who(cam, rec)} lost "
                            f"in transport (seq {rec.last_seq - gap}-{rec.last_seq - 1})")

    def _on_message_lost(self, cam: _Camera, event) -> None:
        """DDS gave up on samples of this subscription (which publisher it does not say)."""
        new = cam.ledger.dds_reported(event.total_count)
        if new:
            cam.record(self.stats).record_lost(new)
        present = self._name_publishers(cam)
        known = {r.gid: r for r in cam.ledger.records()}
        who = ", ".join(self._who(cam, known[g]) if g in known else
                        f"publisher {n or 'gid ' + g.hex()[:12]}"
                        for g, n in present.items()) or "a publisher now gone"
        self._warn_lost(cam, "dds", f"DDS reports {event.total_count} frame(s) on "
                        f"{self._topic(cam)} lost in transport (from {who})")

    def _on_matched(self, cam: _Camera, event) -> None:
        if event.current_count_change < 0:  # a publisher went away: close its record
            self._name_publishers(cam)

    def _name_publishers(self, cam: _Camera) -> dict[bytes, str]:
        """Name the publishers the graph knows; close the records of those gone.

        Returns the graph's publishers of the camera's topic, gid -> node name."""
        sub = cam.sub
        if sub is None:
            return {}
        try:
            infos = self.get_publishers_info_by_topic(sub.topic_name)
        except Exception:  # the graph may be unavailable while shutting down
            return {}
        present = {}
        for i in infos:
            ns = i.node_namespace.rstrip("/")
            # '_NODE_NAME_UNKNOWN_' until the graph has the writer's node too: asked again
            present[bytes(i.endpoint_gid)] = (
                "" if "_UNKNOWN_" in i.node_name else f"{ns}/{i.node_name}")
        with cam.ledger.lock:
            for gid, rec in cam.ledger.publishers.items():
                if not rec.name and present.get(gid):
                    rec.name = present[gid]
        for rec in cam.ledger.close_absent(set(present)):
            gaps, dds = cam.ledger.totals()
            extra = (f"; DDS reported {dds - gaps} more lost frame(s) on this topic than "
                     "sequence gaps show (before a publisher's first frame here or after "
                     "its last)" if dds > gaps else "")
            self.get_logger().info(
                f"publisher {rec.label} left {self._topic(cam)}: {rec.summary()}{extra}")
        return present

    def _who(self, cam: _Camera, rec: PublisherRecord) -> str:
        size = f" ({rec.frame_bytes / 1e6:.3g} MB frames)" if rec.frame_bytes else ""
        return f"publisher {rec.label}{size}"

    def _topic(self, cam: _Camera) -> str:
        sub = cam.sub
        try:
            return sub.topic_name if sub is not None else self.resolve_topic_name(cam.topic)
        except Exception:
            return cam.topic

    def _warn_lost(self, cam: _Camera, key, text: str) -> None:
        """The loss warning, once per publisher (and once for DDS's count) a subscription."""
        if key in cam.warned:
            return
        cam.warned.add(key)
        self.get_logger().warning(f"{text}: {LARGE_FRAME_ADVICE}.")

    def publisher_records(self, name: str = "") -> list[PublisherRecord]:
        """One camera's input publishers as its subscription saw them (copies)."""
        for cam in self._cameras:
            if cam.name == name:
                return cam.ledger.records()
        raise KeyError(f"no camera {name!r}; cameras: {self.cameras}")

    def loss_counts(self, name: str = "") -> tuple[int, int]:
        """One camera's frames lost since activation: (sequence gaps, DDS reported)."""
        for cam in self._cameras:
            if cam.name == name:
                return cam.ledger.totals()
        raise KeyError(f"no camera {name!r}; cameras: {self.cameras}")

    def _incompatible_publishers(self) -> str:
        """A warning when the input's publishers cannot match the subscription, else ''.

        Only one mismatch is possible here: a reliable subscription and a best-effort
        publisher (a subscription's durability is volatile, which matches everything).
        """
        settings = self._settings
        if settings is None or settings.reliability != "reliable":
            return ""
        problems = []
        for cam in list(self._cameras):
            sub = cam.sub
            if sub is None:
                continue
            try:
                infos = self.get_publishers_info_by_topic(sub.topic_name)
            except Exception:  # the graph may be unavailable while shutting down
                return ""
            n = sum(1 for i in infos
                    if i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT)
            if n:
                problems.append(
                    f"{n} best-effort publisher(s) on {sub.topic_name} cannot match this "
                    "reliable subscription: no images arrive from them. Set "
                    "qos.reliability to best_effort.")
        return " ".join(problems)

    def _frame_failed(self, cam: _Camera | None, exc: BaseException) -> None:
        # The last resort: something outside the pipeline step raised.
        record = cam.record(self.stats) if cam is not None else self.stats
        if not self.context.ok():
            # Ctrl-C while a frame was in flight: its publishers are gone, not a fault.
            record.record_discard()
            return
        text = _describe(exc)
        record.record_failed("exception", text)
        self.get_logger().error(f"frame skipped: {text}", throttle_duration_sec=5.0)

    def _frame_rejected(self, cam: _Camera, kind: str, text: str) -> None:
        cam.record(self.stats).record_rejected(kind, text)
        self.get_logger().error(f"frame rejected: {text}", throttle_duration_sec=5.0)

    def _step_failed(self, cam: _Camera, seg, exc: BaseException) -> None:
        """The pipeline raised on a frame: count it, skip it, restart on a key frame."""
        oom = _is_out_of_memory(exc)
        text = _describe(exc)
        seg.reset("recovery")  # the failed step may have left the state half updated
        record = cam.record(self.stats)
        if oom:
            _free_cuda_cache(seg.device)
            record.record_failed("out_of_memory", f"out of memory: {text}")
            self.get_logger().error(
                f"out of memory on {seg.device}; frame skipped, the next one is a key frame: "
                f"{text}", throttle_duration_sec=5.0)
        else:
            record.record_failed("pipeline", text)
            self.get_logger().error(f"frame skipped: {text}", throttle_duration_sec=5.0)

    def _process(self, item: tuple[_Camera, Image, float]) -> None:
        cam = item[0]
        try:
            self._process_frame(*item)
        except Exception as exc:
            self._frame_failed(cam, exc)

    @contextlib.contextmanager
    def _streams_locked(self):
        """No camera's frame is stepped meanwhile: the node's lock, then each camera's."""
        with self._seg_lock, contextlib.ExitStack() as stack:
            for cam in list(self._cameras):
                stack.enter_context(cam.lock)
            yield

    def _process_frame(self, cam: _Camera, msg: Image, received: float) -> None:
        record = cam.record(self.stats)
        with cam.lock:
            seg = cam.seg
            if seg is None or not self._active or not cam.pubs:
                record.record_discard()  # taken while leaving the active state
                return
            t0 = cam.running_since = time.perf_counter()
            try:
                self._step_frame(cam, seg, record, msg, received, t0)
            finally:
                cam.running_since = None

    def _step_frame(self, cam: _Camera, seg, record, msg: Image, received: float,
                    t0: float) -> None:
        """Decode, step and publish one frame (under the camera's lock)."""
        try:
            rgb = (compressed_to_rgb(msg) if isinstance(msg, CompressedImage)
                   else image_to_rgb(msg))
        except ImageError as exc:
            self._frame_rejected(cam, exc.kind, str(exc))
            return
        h, w = rgb.shape[:2]
        if h < MIN_IMAGE_SIZE or w < MIN_IMAGE_SIZE:
            self._frame_rejected(cam, "too_small", f"image {w}x{h} is too small, "
                                 f"expected at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
            return
        if (h, w) != cam.framed_size:
            cam.framed_size = (h, w)
            self.get_logger().info(f"input{' ' + cam.name if cam.name else ''} "
                                   f"{seg.framing((h, w)).describe()} "
                                   f"(input.resize {seg.resize})")
        t1 = time.perf_counter()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        budget = self._budget_ms(cam, received, t0) \
            if seg.config.schedule.policy == "budget" else None
        try:
            result = seg.step(rgb, stamp if stamp > 0 else None, budget_ms=budget)
        except Exception as exc:  # out of memory, a CUDA error, ...: skip the frame
            self._step_failed(cam, seg, exc)
            return
        t2 = time.perf_counter()
        if not result.valid:
            record.record_invalid(
                f"non-finite network output at frame {result.frame_index}: labels set to "
                f"{seg.ignore_id} (ignore), the next frame is a key frame")
            self.get_logger().error(
                "non-finite network output: frame published as all-ignore, next frame key",
                throttle_duration_sec=5.0)
        if result.key_reason in FORCED_KEY_REASONS:
            record.record_forced_key(result.key_reason)
        self._publish(cam, msg, rgb, result, received, t0, t1, t2)
        if cam.overhead is not None:
            spent = (time.perf_counter() - t0) * 1e3
            cam.overhead.update(spent - result.timings_ms["total"],
                                cold=result.key_reason in COLD_KEY_REASONS)

    def _budget_ms(self, cam: _Camera, received: float, started: float) -> float | None:
        """The time this frame's pipeline step may take before a frame of any camera is
        dropped (budget policy; ``schedule.key_budget_ms``).

        Each camera as the worker sees it at ``started``: its period (the running average
        of its arrival intervals), its next arrival (its newest plus a period), the frames
        of it waiting in the worker's queue, when its frame in hand on another worker ends
        (model.workers > 1), and what one of its propagated frames costs the worker (the
        step's running time plus decoding and publishing). A camera gone
        quiet (no frame for four periods) takes no time; a camera propagated for longer
        than this one has its next frame counted as a key frame (its claim comes first).
        What this frame spends outside the step comes off. One camera is the same
        computation with one stream."""
        worker = self._worker
        if cam.arrival_period is None or cam.overhead is None or worker is None:
            return None
        mine = cam.seg.scheduler.propagation_distance
        loads, current = [], 0
        for other in self._cameras:
            p, last, seg = other.arrival_period, other.last_arrival, other.seg
            if other is not cam and (p is None or last is None or other.overhead is None
                                     or seg is None or started - last > 4.0 * p):
                continue
            if other is cam:
                current = len(loads)
                last = max(last if last is not None else received, received)
            waiting = [it[2] for it in worker.waiting_items(other.name)]  # arrivals
            overhead = other.overhead.mean or 0.0
            key = seg.key_cost_bound_ms
            frame_ms = (seg.expected_ms["nonkey"] or 0.0) + overhead
            since = other.running_since if other is not cam else None
            loads.append(StreamLoad(
                period_ms=p * 1e3, next_arrival_ms=(last + p - started) * 1e3,
                frame_ms=frame_ms,
                # on another worker: counted as a propagated frame, ending that much later
                running_ms=max(0.0, frame_ms - (started - since) * 1e3)
                if since is not None else None,
                waiting_ms=tuple((t - started) * 1e3 for t in waiting),
                depth=worker.depth,
                # propagated for longer than this camera: its next key frame comes first
                claim_ms=key + overhead if key is not None
                and seg.scheduler.propagation_distance > mine else None))
        return key_budget_ms(loads, current, workers=worker.threads) \
            - (cam.overhead.mean or 0.0)

    def _publish(self, cam: _Camera, msg: Image, rgb: np.ndarray, result, received: float,
                 t0: float, t1: float, t2: float) -> None:
        pubs, live, header = cam.pubs, self._live, msg.header
        h, w = result.labels.shape
        camera_info = cam.camera_info
        if camera_info is not None:  # first, so it is there when the labels arrive
            camera_info.header = header  # this worker is its only user after the callback
            pubs["camera_info"].publish(camera_info)
        if live.labels:
            out, view = new_image(h, w, "mono8", header)
            np.copyto(view, result.labels)
            pubs["labels"].publish(out)
        if live.confidence and pubs["confidence"].get_subscription_count() > 0:
            conf_msg, conf = new_image(h, w, "mono8", header)
            np.copyto(conf, result.confidence)
            pubs["confidence"].publish(conf_msg)
        # LabelInfo with every frame's stamp too, so that a consumer pairing labels,
        # confidence and LabelInfo by exact stamp (Nav2's semantic layer) finds all three.
        pubs["label_info"].publish(self._label_info(header.stamp))
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
        info.valid = bool(result.valid)
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
        info.dropped_frames = int(cam.stats.dropped)

        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        pubs["frame_info"].publish(info)
        # Last: a frame counts as processed once all its outputs went out (an exception
        # above makes it a failed frame instead, never both).
        cam.record(self.stats).record_frame(FrameRecord(
            done=time.monotonic(), total_ms=info.total_ms,
            pipeline_ms=float(tm.get("total", (t2 - t1) * 1e3)),
            stamp_latency_ms=(now_ns - stamp_ns) / 1e6 if stamp_ns else float("nan"),
            is_key=bool(result.is_key), frame_index=int(result.frame_index)))

    # -- diagnostics -----------------------------------------------------------------------
    def publish_diagnostics(self) -> None:
        seg = self._seg
        qos_problem = self._incompatible_publishers()
        if qos_problem:
            self.get_logger().warning(qos_problem, throttle_duration_sec=10.0)
        fqn = self.get_fully_qualified_name()
        cameras = list(self._cameras)
        for cam in cameras:  # names of new publishers, records of those gone
            self._name_publishers(cam)

        def status(stats, suffix, topics, ledger=None):
            return build_status(
                stats, name=f"{fqn}: segmentation{suffix}", hardware_id=fqn,
                state=self._state,
                model=self._model_text if seg is not None else "none",
                device=str(seg.device) if seg is not None else "none",
                mode=seg.mode if seg is not None else "none",
                input_topic=", ".join(self.resolve_topic_name(t) for t in topics),
                untrained=seg is not None and self._untrained,
                configure_error=self._configure_error, qos_problem=qos_problem,
                publishers=publisher_values(ledger))

        # The node's total first; with several cameras one status per camera after it.
        with _RECORDING:
            statuses = [status(self.stats, "", [c.topic for c in cameras] or ["image"],
                               cameras[0].ledger if len(cameras) == 1 else None)]
            if len(cameras) > 1:
                statuses += [status(c.stats, f" {c.name}", [c.topic], c.ledger)
                             for c in cameras]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = statuses
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
            alpha=float(values.get("overlay.alpha", live.alpha)),
            confidence=values.get("output.confidence", live.confidence))
        if "input.max_stamp_gap" in values:
            with self._streams_locked():
                for cam in self._cameras:
                    if cam.seg is not None:
                        cam.seg.max_stamp_gap = float(values["input.max_stamp_gap"]) or None
        if names & set(P.SCHEDULE_PARAMS):
            with self._streams_locked():
                seg = self._seg
                if seg is not None:
                    current = {n: self.get_parameter(n).value for n in P.SCHEDULE_PARAMS}
                    schedule = P.schedule_from(current, base=seg.config.schedule)
                    for cam in self._cameras:
                        if cam.seg is not None:
                            cam.seg.set_schedule(schedule)
                    self.get_logger().info(f"schedule now {_schedule_text(schedule)}")
        later = sorted(n for n in names if P.SPECS.get(n) and P.SPECS[n].applies == "configure")
        if later and self._seg is not None:
            self.get_logger().info(
                f"{', '.join(later)} changed: takes effect at the next configure "
                "(deactivate, cleanup, configure, activate)")


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic beside an image topic (image_transport's convention)."""
    return posixpath.join(posixpath.dirname(image_topic), "camera_info")


def _schedule_text(s) -> str:
    if s.policy == "fixed":
        return f"fixed, key every {s.key_interval} frames"
    if s.policy == "budget":
        return (f"budget, a key frame whenever one fits the camera's rate, at most "
                f"{s.max_interval} frames apart")
    return (f"adaptive, {s.metric} distortion > {s.threshold:g}, "
            f"at most {s.max_interval} frames apart")


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # loaded by the pipeline; not imported here
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _free_cuda_cache(device) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and getattr(device, "type", "") == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - the device may be in a bad state
            pass


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if name in ("CheckpointError", "ValueError") and text:
        return text
    return f"{name}: {text}" if text else name


# -- entry points ------------------------------------------------------------------------------
def _ignore_sigint():
    """Ignore SIGINT from here on; the handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


# Seconds the ROS teardown after Ctrl-C may take before the process ends anyway (status 1).
TEARDOWN_TIMEOUT_S = 20.0


def main(args: list[str] | None = None, *, exit_process: bool = True) -> int:
    """Console script ``segmenter``: run the node until Ctrl-C.

    Configures and activates on its own unless the ``autostart`` parameter is false (then
    a launch file or a lifecycle manager drives the transitions). With ``exit_process`` the
    process ends right after the clean ROS shutdown (``os._exit``), within a second of a
    SIGINT; otherwise the exit code is returned.
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
        # rclpy's SIGINT handler shuts the context down at once; a callback publishing at
        # that moment (the diagnostics timer) fails with "publisher's context is invalid".
        # That is the Ctrl-C, not a failure.
        if rclpy.ok():
            print(f"davss_segmenter: {_describe(exc)}", file=sys.stderr)
            code = 1
    finally:
        # A second SIGINT (a terminal's Ctrl-C plus the one a launch file forwards) must not
        # break off the teardown with a KeyboardInterrupt.
        previous = _ignore_sigint()
        # A teardown blocked inside the middleware must not keep the process. FastDDS 3.2.2
        # (the ros-fastdds wheel) can block deleting a participant whose TCP peer stays
        # connected and silent: disconnect() waits for the read mutex that the channel's
        # listening thread holds in a blocking recv() (eProsima/Fast-DDS#6066, fixed in
        # 3.2.3). faulthandler's own thread, which needs no GIL, then prints every thread's
        # stack and exits with status 1.
        # (Only when this process is the node's own: it would end a caller's process too.)
        if exit_process:
            faulthandler.dump_traceback_later(TEARDOWN_TIMEOUT_S, exit=True)
        if node is not None:
            node.close()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()  # also flushes and closes ROS logging
        if exit_process:
            faulthandler.cancel_dump_traceback_later()
        _ignore_sigint()  # rclpy's shutdown put its predecessor back
    if previous is not None and not exit_process:
        signal.signal(signal.SIGINT, previous)
    if exit_process:
        # The ROS side is down and nothing is left to save; interpreter finalisation (torch's
        # and FastDDS's teardown at exit) would take about another second after Ctrl-C.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``davss node``; ``--ros-args ...`` at the end goes to ROS unchanged."""
    parser.add_argument("--params-file", metavar="YAML",
                        help="ROS parameters file (see config/davss.yaml)")
    parser.add_argument("--image-topic", metavar="TOPIC",
                        help="input topic, remapped onto 'image' (e.g. /camera/image_raw)")
    parser.add_argument("--image-topics", metavar="TOPIC", nargs="+",
                        help="several cameras in one node: sets image_topics (entries "
                        "TOPIC or NAME=TOPIC; outputs under ~/<camera>/)")
    parser.add_argument("--namespace", metavar="NS", help="node namespace")
    parser.add_argument("--checkpoint", metavar="PT",
                        help="sets model.checkpoint (default: the shipped model; "
                        "'untrained' for random weights)")
    parser.add_argument("--key-segmenter", metavar="FILE",
                        help="sets model.key_segmenter: an ONNX or TorchScript key-frame "
                        "segmenter (default: the checkpoint's own)")
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
    if getattr(args, "image_topics", None):
        ros += ["-p", "image_topics:=[" + ", ".join(f"'{t}'" for t in args.image_topics) + "]"]
    if args.namespace:
        ns = args.namespace if args.namespace.startswith("/") else "/" + args.namespace
        ros += ["-r", f"__ns:={ns}"]
    if args.checkpoint:
        ros += ["-p", f"model.checkpoint:='{args.checkpoint}'"]
    if getattr(args, "key_segmenter", None):
        ros += ["-p", f"model.key_segmenter:='{args.key_segmenter}'"]
    if args.no_autostart:
        ros += ["-p", "autostart:=false"]
    ros += list(args.ros_args or [])
    return [NODE_NAME, "--ros-args", *ros] if ros else [NODE_NAME]


def run(args: argparse.Namespace) -> int:
    return main(ros_arguments(args))


if __name__ == "__main__":
    sys.exit(main())
