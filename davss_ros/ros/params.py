"""Parameters of the davss_segmenter node: declaration, validation and reading.

Each parameter is declared with a descriptor (description, range, read-only flag) and a
rule saying when a new value takes effect:

- ``live``: at once, also while active (key-frame schedule, output switches, overlay alpha);
- ``configure``: at the next configure transition (the model is built there);
- ``startup``: read-only, fixed when the node starts (QoS, autostart), as ROS 2 QoS
  overrides are.

``validate`` is the single check used both when a value is set at runtime (the node
refuses it with the reason) and when configure reads the values the node was started with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from davss_ros.config import (
    DIS_PRESETS,
    DISTORTION_METRICS,
    FLOW_PROVIDERS,
    MODES,
    POLICIES,
    SCHEDULE_SOURCES,
    ScheduleConfig,
)

RELIABILITIES = ("best_effort", "reliable")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# The input topic of the single-camera case (remap it onto the camera).
IMAGE_TOPIC = "image"


@dataclass(frozen=True)
class Spec:
    default: Any
    description: str
    applies: str = "configure"  # live | configure | startup
    choices: tuple[str, ...] | None = None
    int_range: tuple[int, int, int] | None = None  # from, to, step (0 = any)
    float_range: tuple[float, float] | None = None


_S = ScheduleConfig()

SPECS: dict[str, Spec] = {
    "image_topics": Spec(
        [], "Several cameras in one node: their image topics (sensor_msgs/Image, or "
        "<topic>/compressed with input.transport compressed). An entry is TOPIC or "
        "NAME=TOPIC; the camera's name is NAME, else the topic's parent namespace (front for "
        "/front/image_raw). Each camera publishes under ~/<name>/ (labels, confidence, "
        "label_info, ...), has its own propagation state and diagnostics, and shares the "
        "model and the time budget. Empty: the single topic 'image' (remappable), outputs "
        "directly under ~/."),
    "model.checkpoint": Spec(
        "", "DAVSS checkpoint (.pt). Empty: the trained model shipped with davss_ros "
        "(weights/davss_cpu.pt, or $DAVSS_WEIGHTS_DIR/davss_cpu.pt) when model.config is "
        "cpu; with another model.config, or if the file is missing, untrained random "
        "weights (a warning is logged). 'untrained': random weights of model.config, "
        "meaningless outputs (timing, tests). Else the path of a checkpoint file."),
    "model.config": Spec(
        "cpu", "Model architecture: a preset name (cpu, paper) or a YAML file. cpu is the "
        "shipped model's architecture; another value with model.checkpoint empty runs "
        "untrained weights of it. A checkpoint file carries its own architecture, and "
        "then this is not used."),
    "model.key_segmenter": Spec(
        "", "Key-frame segmenter file: an ONNX (.onnx, run by onnxruntime) or TorchScript "
        "(.ts, .pt) network with its declaration (classes, normalisation, input size) in a "
        "sidecar <file>.yaml or its own metadata. Empty: the checkpoint's own DeepLabv3+ (or "
        "the file the checkpoint references). Its class count must be the checkpoint's; "
        "with model.checkpoint 'untrained' the non-key networks take its classes."),
    "model.device": Spec(
        "auto", "Torch device: auto (CUDA when available), cpu, cuda or cuda:N."),
    "model.threads": Spec(
        0, "CPU threads of the networks (torch, OpenCV, onnxruntime). 0: half the cores, at "
        "most 4, which holds up when other processes share the CPU; all cores of a busy "
        "machine slow every frame down many times over.", int_range=(0, 64, 1)),
    "model.workers": Spec(
        1, "Frames segmented at once, each of another camera (a camera's frames stay in "
        "order). 1: one worker serves every camera in turn. With several cameras on a CPU, "
        "one worker per core (and model.threads 1) holds the rates that separate nodes "
        "would; the budget policy then plans each worker's time.", int_range=(1, 16, 1)),
    "model.mode": Spec(
        "davss", "Pipeline mode: per_frame (segment every frame), dff (warp only), accel "
        "(warp + correction), davss (warp + distortion-aware correction).", choices=MODES),
    "flow.provider": Spec(
        "dis", "Optical flow between frames: dis (OpenCV DIS, CPU) or learned (FlowNet).",
        choices=FLOW_PROVIDERS.names()),
    "flow.dis_preset": Spec(
        "fast", "DIS flow preset when flow.provider is dis.", choices=DIS_PRESETS),
    "schedule.policy": Spec(
        _S.policy, "Key-frame policy: fixed (every key_interval frames), adaptive (when "
        "the distortion exceeds threshold, at most max_interval apart) or budget (a key "
        "frame whenever one fits the time the camera rate leaves, else propagation instead "
        "of dropping frames; at most max_interval apart).",
        applies="live", choices=POLICIES),
    "schedule.key_interval": Spec(
        _S.key_interval, "Fixed policy: a key frame every key_interval frames.",
        applies="live", int_range=(1, 100, 1)),
    "schedule.threshold": Spec(
        _S.threshold, "Adaptive policy: distortion level (see schedule.metric) that "
        "triggers a key frame.", applies="live", float_range=(0.0, 1.0)),
    "schedule.metric": Spec(
        _S.metric, "Adaptive policy: mean (mean of the distortion map) or ratio (share of "
        "pixels above 0.5).", applies="live", choices=DISTORTION_METRICS),
    "schedule.source": Spec(
        _S.source, "Adaptive policy: the distortion map it reads. dmnet: DMNet's, before "
        "the current-frame branch runs; refined: the map the fusion uses (the signals "
        "estimator's, where the model has one).", applies="live", choices=SCHEDULE_SOURCES),
    "schedule.max_interval": Spec(
        _S.max_interval, "Adaptive policy: the longest run of non-key frames.",
        applies="live", int_range=(1, 1000, 1)),
    "input.width": Spec(
        0, "Network input width in pixels: 0 = the model's default, else a multiple of 64. "
        "Outputs always have the input image's size.", int_range=(0, 4096, 64)),
    "input.height": Spec(
        0, "Network input height in pixels: 0 = the model's default, else a multiple of 64.",
        int_range=(0, 4096, 64)),
    "input.resize": Spec(
        "letterbox", "How a camera image of another aspect ratio fits the network input: "
        "letterbox (scaled to fit, aspect kept, black borders), stretch (each axis scaled on "
        "its own) or crop (scaled to cover, aspect kept, the overflow cut; those pixels are "
        "labelled 255). Outputs always map back to the input image's pixels.",
        choices=("letterbox", "stretch", "crop")),
    "input.transport": Spec(
        "raw", "raw: sensor_msgs/Image on 'image'. compressed: sensor_msgs/CompressedImage "
        "(JPEG or PNG, image_transport's 'compressed') on 'image/compressed', decoded off "
        "the subscription callback; corrupt or truncated data is a rejected frame.",
        choices=("raw", "compressed")),
    "input.queue_depth": Spec(
        1, "Frames of a camera that may wait for the worker. A frame is dropped when this "
        "many newer ones of its camera wait: 1 always segments the newest frame (the lowest "
        "latency). More lets a slow key frame be followed by quick propagated ones that "
        "catch up, at up to queue_depth - 1 more periods of latency; the budget policy then "
        "banks that much more time for key frames.", int_range=(1, 10, 1)),
    "input.max_stamp_gap": Spec(
        1.0, "Seconds: a header stamp jumping forward by more than this between two "
        "processed frames (camera pause, bag skipping ahead) resets the propagation, so the "
        "frame is a key frame ('stamp_jump'). Stamps going backwards always do "
        "('stamp_backwards'). 0 = never on a forward jump.",
        applies="live", float_range=(0.0, 3600.0)),
    "output.labels": Spec(
        True, "Publish ~/labels (mono8 trainIds, 255 = ignore).", applies="live"),
    "output.labels_color": Spec(
        True, "Publish ~/labels_color (rgb8 palette image) while it has subscribers.",
        applies="live"),
    "output.overlay": Spec(
        True, "Publish ~/overlay (input blended with the colours) while it has subscribers.",
        applies="live"),
    "output.distortion": Spec(
        True, "Publish ~/distortion (32FC1 distortion map in [0, 1]) while it has "
        "subscribers.", applies="live"),
    "output.confidence": Spec(
        True, "Publish ~/confidence (mono8: 255 x the probability that the label equals the "
        "key segmenter's; 255 on key frames) while it has subscribers, with the labels' "
        "header.", applies="live"),
    "overlay.alpha": Spec(
        0.5, "Weight of the label colours in ~/overlay (0 = input only, 1 = colours only).",
        applies="live", float_range=(0.0, 1.0)),
    "qos.reliability": Spec(
        "best_effort", "Reliability of the image subscription: best_effort (sensor data, "
        "accepts every publisher) or reliable (needs a reliable publisher).",
        applies="startup", choices=RELIABILITIES),
    "qos.output_reliability": Spec(
        "reliable", "Reliability of the published outputs.", applies="startup",
        choices=RELIABILITIES),
    "autostart": Spec(
        True, "Configure and activate on start-up (false when a launch file or a lifecycle "
        "manager drives the transitions).", applies="startup"),
}

SCHEDULE_PARAMS = tuple(n for n in SPECS if n.startswith("schedule."))


def descriptor(name: str) -> ParameterDescriptor:
    spec = SPECS[name]
    desc = ParameterDescriptor(
        name=name, description=spec.description, read_only=spec.applies == "startup")
    constraints = []
    if spec.choices:
        constraints.append("one of " + ", ".join(spec.choices))
    if spec.int_range:
        lo, hi, step = spec.int_range
        desc.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=step)]
    if spec.float_range:
        lo, hi = spec.float_range
        desc.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    if name == "model.device":
        constraints.append("auto, cpu, cuda or cuda:N")
    if spec.applies == "configure":
        constraints.append("takes effect at the next configure")
    elif spec.applies == "live":
        constraints.append("takes effect immediately")
    desc.additional_constraints = "; ".join(constraints)
    return desc


def declare(node: Node) -> None:
    for name, spec in SPECS.items():
        if isinstance(spec.default, list):
            # An empty list cannot carry its element type: declared by type, and left unset
            # (which a params file's `[]` also does) it reads as the empty default.
            node.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor(name))
        else:
            node.declare_parameter(name, spec.default, descriptor(name))


def value_of(node: Node, name: str) -> Any:
    """A parameter's value; an unset string list is its (empty) default."""
    try:
        return node.get_parameter(name).value
    except ParameterUninitializedException:
        return list(SPECS[name].default)


def validate(name: str, value: Any) -> str | None:
    """None when ``value`` is allowed for ``name``, else the reason it is not."""
    spec = SPECS.get(name)
    if spec is None:
        return None  # use_sim_time and other parameters rclpy owns
    if name == "image_topics":
        return _check_cameras(value)
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"{name} must be a {expected.__name__}, got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if spec.int_range:
        lo, hi, step = spec.int_range
        if not lo <= value <= hi or (step > 1 and (value - lo) % step):
            extra = f" in steps of {step}" if step > 1 else ""
            return f"{name} must be in [{lo}, {hi}]{extra}; got {value}"
    if spec.float_range:
        lo, hi = spec.float_range
        if not lo <= value <= hi:
            return f"{name} must be in [{lo}, {hi}]; got {value}"
    if name == "model.device" and not _DEVICE.match(value):
        return f"model.device must be auto, cpu, cuda or cuda:N; got {value!r}"
    if name == "model.config" and not value:
        return "model.config must name a preset (cpu, paper) or a YAML file"
    return None


def camera_name(topic: str) -> str:
    """A camera's name from its image topic: the parent namespace (``front`` for
    ``/front/image_raw``, also given as ``/front/image_raw/compressed``), else the topic."""
    if topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    parts = topic.strip("/").split("/")
    return parts[-2] if len(parts) >= 2 else parts[-1]


def cameras_from(topics: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, topic) of each camera; ``[("", "image")]`` for an empty list. ValueError
    when an entry is empty, a name is not a ROS name token, or two cameras share a name or
    a topic."""
    if not topics:
        return [("", IMAGE_TOPIC)]
    out: list[tuple[str, str]] = []
    for entry in topics:
        text = str(entry).strip()
        name, sep, topic = text.partition("=")
        if not sep:
            name, topic = "", text
        name, topic = name.strip(), topic.strip()
        if not topic or topic.strip("/") == "":
            raise ValueError(f"image_topics: entry {entry!r} names no topic")
        name = name or camera_name(topic)
        if not _CAMERA_NAME.match(name):
            raise ValueError(
                f"image_topics: camera name {name!r} (from {entry!r}) is not a ROS name "
                "token (a letter, then letters, digits or _); write NAME=TOPIC")
        out.append((name, topic))
    for i, kind in ((0, "name"), (1, "topic")):
        values = [c[i] for c in out]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            hint = "; write NAME=TOPIC to name them" if i == 0 else ""
            raise ValueError(f"image_topics: two cameras have the {kind} {dup[0]!r}{hint}")
    return out


def _check_cameras(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return f"image_topics must be a list of strings, got {value!r}"
    try:
        cameras_from(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class NodeParams:
    """A snapshot of the node's parameters, validated."""

    checkpoint: str
    config: str
    key_segmenter: str
    device: str
    threads: int
    workers: int
    mode: str
    flow_provider: str
    dis_preset: str
    schedule: ScheduleConfig
    input_width: int
    input_height: int
    resize: str
    transport: str
    queue_depth: int
    max_stamp_gap: float
    output_labels: bool
    output_labels_color: bool
    output_overlay: bool
    output_distortion: bool
    output_confidence: bool
    overlay_alpha: float
    reliability: str
    output_reliability: str
    autostart: bool
    cameras: list[tuple[str, str]]  # (name, topic); [("", "image")] for a single camera


def read(node: Node) -> NodeParams:
    """Read and validate every parameter; ValueError with the first reason on a bad one."""
    values = {name: value_of(node, name) for name in SPECS}
    for name, value in values.items():
        reason = validate(name, value)
        if reason:
            raise ValueError(reason)
    return NodeParams(
        checkpoint=values["model.checkpoint"],
        config=values["model.config"],
        key_segmenter=values["model.key_segmenter"].strip(),
        device=values["model.device"],
        threads=values["model.threads"],
        workers=values["model.workers"],
        mode=values["model.mode"],
        flow_provider=values["flow.provider"],
        dis_preset=values["flow.dis_preset"],
        schedule=schedule_from(values),
        input_width=values["input.width"],
        input_height=values["input.height"],
        resize=values["input.resize"],
        transport=values["input.transport"],
        queue_depth=values["input.queue_depth"],
        max_stamp_gap=float(values["input.max_stamp_gap"]),
        output_labels=values["output.labels"],
        output_labels_color=values["output.labels_color"],
        output_overlay=values["output.overlay"],
        output_distortion=values["output.distortion"],
        output_confidence=values["output.confidence"],
        overlay_alpha=float(values["overlay.alpha"]),
        reliability=values["qos.reliability"],
        output_reliability=values["qos.output_reliability"],
        autostart=values["autostart"],
        cameras=cameras_from(values["image_topics"]),
    )


def schedule_from(values: dict[str, Any], base: ScheduleConfig | None = None) -> ScheduleConfig:
    """A ScheduleConfig from ``schedule.*`` values (missing ones from ``base``)."""
    base = base or ScheduleConfig()
    return ScheduleConfig(
        policy=values.get("schedule.policy", base.policy),
        key_interval=int(values.get("schedule.key_interval", base.key_interval)),
        threshold=float(values.get("schedule.threshold", base.threshold)),
        metric=values.get("schedule.metric", base.metric),
        max_interval=int(values.get("schedule.max_interval", base.max_interval)),
        scene_cut_factor=base.scene_cut_factor,
        scene_cut_min_error=base.scene_cut_min_error,
    )
