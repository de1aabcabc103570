"""Pure-torch networks of DAVSS: DeepLabv3+ (key frames), flow (DIS or FlowNet-S), warping,
DMNet (distortion_map), CFNet (correction_cue) and the fusions of DAVSS, Accel and DFF."""

from .backbones import BACKBONES, build_backbone
from .cfnet import CFNet
from .common import ConvBNAct, Interpolate, SeparableConv2d, fold_batchnorm
from .dmnet import DMNet
from .flow import DISFlow, FlowProvider, LearnedFlow, build_flow
from .flownet import FlowNetS, build_flownet
from .fusion import AccelFusion, DistortionGuidedFusion, fusion_map
from .net import DavssNet, build_davss_net
from .segmenter import ASPP, DeepLabV3Plus, DeepLabV3PlusDecoder, build_segmenter
from .step import (
    MODE_TABLE,
    Estimate,
    FrameParts,
    ModeSpec,
    NonKeyStep,
    PropagationState,
    mode_spec,
)
from .warp import warp

__all__ = [
    "ASPP",
    "BACKBONES",
    "AccelFusion",
    "CFNet",
    "ConvBNAct",
    "DISFlow",
    "DMNet",
    "DavssNet",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "DistortionGuidedFusion",
    "FlowNetS",
    "FlowProvider",
    "Interpolate",
    "LearnedFlow",
    "Estimate",
    "FrameParts",
    "MODE_TABLE",
    "ModeSpec",
    "NonKeyStep",
    "PropagationState",
    "SeparableConv2d",
    "build_backbone",
    "build_davss_net",
    "build_flow",
    "build_flownet",
    "build_segmenter",
    "fold_batchnorm",
    "fusion_map",
    "mode_spec",
    "warp",
]
