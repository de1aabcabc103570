"""Typed configuration of the DAVSS models and key-frame scheduling.

Everything a model needs to be rebuilt is in :class:`DavssConfig`; checkpoints carry it as a
plain dict (``to_dict``), and YAML files load into it (``load_config``). Presets:

- ``cpu`` (default): MobileNetV3-Large DeepLabv3+, CFNet at 1/4 width, DIS flow, 256x512.
- ``paper``: the paper's configuration: Xception-65 DeepLabv3+ (output stride 16, ASPP 256),
  FlowNet-S at 3/8 width, full CFNet, 1024x2048.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .registry import BACKBONES, FLOW_PROVIDERS

MODES = ("per_frame", "dff", "accel", "davss")
# Kinds with a registry (davss_ros.registry: backbones, flow providers) are checked there.
DIS_PRESETS = ("ultrafast", "fast", "medium")
POLICIES = ("fixed", "adaptive", "budget")
DISTORTION_METRICS = ("mean", "ratio")
# Which distortion map the adaptive policy reads (davss_ros.schedule).
SCHEDULE_SOURCES = ("dmnet", "refined")
# What the davss fusion weights f_CC by: DMNet's map (the method) or a constant map (the
# paper's "without DGFC" ablation, for a model trained that way).
DISTORTION_MAPS = ("predicted", "constant")
# The distortion estimator: DMNet alone (the paper), or DMNet refined by free signals with a
# learned fusion floor (davss_ros.model.refiner; trained in stage 4); "signals_mix" adds a
# learned per-class mixing of the propagated logits and the cue to that fusion.
DISTORTIONS = ("paper", "signals", "signals_mix")
# The estimators with the signals refiner (stage 4 trains it).
REFINED_DISTORTIONS = ("signals", "signals_mix")


@dataclass
class SegmenterConfig:
    """DeepLabv3+ key-frame segmenter."""

    backbone: str = "mobilenet_v3_large"
    output_stride: int = 16
    aspp_channels: int = 128
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    decoder_channels: int = 128
    low_level_channels: int = 48
    width_mult: float = 1.0
    dropout: float = 0.1
    # Compatibility with the DAVSS authors' weights (davss import-authors sets them): TF
    # DeepLab's BatchNorm eps in the backbone and the 48-channel low-level projection, and
    # align_corners in the decoder's upsampling of the ASPP output.
    backbone_bn_eps: float = 1e-5
    low_level_bn_eps: float = 1e-5
    decoder_align_corners: bool = False


@dataclass
class FlowConfig:
    """Optical flow between consecutive frames, at 1/4 resolution in 1/4-resolution pixels."""

    provider: str = "dis"
    dis_preset: str = "fast"
    width: float = 0.375  # FlowNet-S channel ratio (the paper uses 3/8)


@dataclass
class CFNetConfig:
    """Correction-cue network on the current frame."""

    width_mult: float = 0.25


@dataclass
class DMNetConfig:
    """Distortion-map network (siamese separable convs)."""

    channels: tuple[int, int, int] = (4, 8, 16)
    # BatchNorm + ReLU after each separable conv, as in the DAVSS authors' DMNet.
    extra_bn_relu: bool = False


@dataclass
class ModelConfig:
    num_classes: int = 19
    input_height: int = 256
    input_width: int = 512
    mode: str = "davss"
    # The authors propagate the raw warped logits; True propagates the corrected ones
    # (refused with the signals_mix estimator, see validate).
    propagate_corrected: bool = False
    # "predicted": fuse with DMNet's distortion map M (DGFC). "constant": fuse with M = 0.5
    # everywhere (davss_ros.model.fusion.CONSTANT_DISTORTION), as a model trained without
    # DGFC was; DMNet still runs and gives the distortion output and the adaptive schedule.
    # Part of the trained model, so it comes from the checkpoint, not the runtime config.
    distortion_map: str = "predicted"
    # "paper": DMNet's M fuses as Eq. 4. "signals": DMNet's M, the cue/propagated softmax
    # distance, both confidences and the photometric error go through a small head
    # (davss_ros.model.refiner) whose map fuses with a learned floor. "signals_mix": as
    # signals, plus a learned 1x1 mixing of f_P, f_CC and both weighted by the fusion weight,
    # added to Eq. 4 (zero at the start of training). Architecture.
    distortion: str = "paper"
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    cfnet: CFNetConfig = field(default_factory=CFNetConfig)
    dmnet: DMNetConfig = field(default_factory=DMNetConfig)


@dataclass
class ScheduleConfig:
    """Key-frame scheduling (see ``davss_ros.schedule``)."""

    policy: str = "fixed"
    key_interval: int = 5
    threshold: float = 0.2
    metric: str = "mean"
    # dmnet: DMNet's map, before the current-frame branch runs; refined: the map the fusion
    # uses (the signals estimator's, where the model has one; DMNet's otherwise).
    source: str = "dmnet"
    max_interval: int = 10
    # Scene cut: warped-image photometric error above factor x its running level (and above
    # min_error, in [0, 1] intensity units) forces a key frame.
    scene_cut_factor: float = 4.0
    scene_cut_min_error: float = 0.15


@dataclass
class DavssConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DavssConfig:
        cfg = _from_dict(cls, data or {}, "config")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        m, s = self.model, self.schedule
        _choice("model.mode", m.mode, MODES)
        _choice("model.distortion_map", m.distortion_map, DISTORTION_MAPS)
        _choice("model.distortion", m.distortion, DISTORTIONS)
        BACKBONES.check("model.segmenter.backbone", m.segmenter.backbone)
        FLOW_PROVIDERS.check("model.flow.provider", m.flow.provider)
        _choice("model.flow.dis_preset", m.flow.dis_preset, DIS_PRESETS)
        _choice("schedule.policy", s.policy, POLICIES)
        _choice("schedule.metric", s.metric, DISTORTION_METRICS)
        _choice("schedule.source", s.source, SCHEDULE_SOURCES)
        if m.propagate_corrected and m.distortion == "signals_mix":
            # The mixing term adds a learned multiple of f_P to the output, so propagating
            # the output compounds it frame after frame: on the val clips the shipped model
            # fell from 67.43 to 19.75 mIoU at d = 9 (propagating the output rescaled to the
            # warped logits' spread: 64.42; the raw warped logits, the authors' choice: 67.43).
            raise ValueError("model.propagate_corrected cannot be used with model.distortion "
                             "signals_mix: its mixing term compounds along the propagation")
        if m.segmenter.output_stride not in (8, 16):
            raise ValueError(
                f"model.segmenter.output_stride must be 8 or 16, got {m.segmenter.output_stride}"
            )
        for name, value in (("model.input_height", m.input_height),
                            ("model.input_width", m.input_width)):
            # FlowNet-S and CFNet downsample 64x (six stride-2 stages).
            if value < 64 or value % 64:
                raise ValueError(f"{name} must be a multiple of 64 and >= 64, got {value}")
        if not 1 <= m.num_classes <= 255:
            raise ValueError(f"model.num_classes must be in [1, 255], got {m.num_classes}")
        if s.key_interval < 1:
            raise ValueError(f"schedule.key_interval must be >= 1, got {s.key_interval}")
        if s.max_interval < 1:
            raise ValueError(f"schedule.max_interval must be >= 1, got {s.max_interval}")
        if s.scene_cut_factor <= 0 or s.scene_cut_min_error < 0:
            raise ValueError("schedule.scene_cut_factor must be > 0 and "
                             "schedule.scene_cut_min_error >= 0")
        if not 0.0 <= s.threshold <= 1.0:
            raise ValueError(f"schedule.threshold must be in [0, 1], got {s.threshold}")
        for name, value in (("model.segmenter.width_mult", m.segmenter.width_mult),
                            ("model.cfnet.width_mult", m.cfnet.width_mult),
                            ("model.flow.width", m.flow.width)):
            if not 0.0 < value <= 4.0:
                raise ValueError(f"{name} must be in (0, 4], got {value}")
        for name, value in (("model.segmenter.backbone_bn_eps", m.segmenter.backbone_bn_eps),
                            ("model.segmenter.low_level_bn_eps", m.segmenter.low_level_bn_eps)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")


def preset(name: str) -> DavssConfig:
    """A named configuration: ``cpu`` (the default) or ``paper``."""
    if name == "cpu":
        return DavssConfig()
    if name == "paper":
        return DavssConfig(
            model=ModelConfig(
                input_height=1024,
                input_width=2048,
                segmenter=SegmenterConfig(backbone="xception65", aspp_channels=256,
                                          decoder_channels=256),
                flow=FlowConfig(provider="learned"),
                cfnet=CFNetConfig(width_mult=1.0),
            )
        )
    raise ValueError(f"unknown preset {name!r}; expected one of: cpu, paper")


def load_config(source: str | Path | dict[str, Any] | None) -> DavssConfig:
    """A preset name, a YAML file path, a dict, or None (the default preset).

    A YAML file may name a ``preset:`` and override any of its fields.
    """
    if source is None:
        return preset("cpu")
    if isinstance(source, dict):
        data = dict(source)
    elif isinstance(source, str) and not source.endswith((".yaml", ".yml")):
        return preset(source)
    else:
        data = read_config_file(source)
    base = preset(data.pop("preset", "cpu")).to_dict()
    return DavssConfig.from_dict(_merge(base, data))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A model YAML as the mapping it holds (``preset:`` and the fields it changes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory \
            is not dataclasses.MISSING else fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{name}: expected true/false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{name}: expected a number, got {value!r} ({hints[name]})")
        elif isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{where}.{name}: expected an integer, got {value!r}")
        else:
            kwargs[name] = type(default)(value) if default is not None else value
    return cls(**kwargs)
