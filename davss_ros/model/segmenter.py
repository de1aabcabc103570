"""DeepLabv3+ (Chen et al., ECCV 2018), the key-frame segmenter Net_seg of DAVSS."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import SegmenterConfig
from .backbones import build_backbone
from .common import (
    ConvBNAct,
    Interpolate,
    SeparableConv2d,
    check_image,
    init_weights,
    set_batchnorm_eps,
)


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv, broadcast back to the input size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        # No BatchNorm after the 1x1 conv (DeepLab has one): on a 1x1 map it has a single value
        # per channel at batch size 1 and cannot train; CPU training here often uses batch 1.
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.relu = nn.ReLU()
        self.upsample = Interpolate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.relu(self.conv(self.pool(x))), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one separable atrous 3x3 branch per rate,
    the image-pooling branch, then a 1x1 projection and Dropout2d."""

    def __init__(self, in_channels: int, rates: Sequence[int], *, out_channels: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNAct(in_channels, out_channels, 1)]
        branches += [SeparableConv2d(in_channels, out_channels, 3, dilation=int(r))
                     for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvBNAct(len(branches) * out_channels, out_channels, 1),
            nn.Dropout2d(dropout),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """Projects the low-level features to ``low_level_channels``, concatenates them with the
    upsampled ASPP output, refines with two separable 3x3 convs and classifies (1x1).

    ``align_corners`` is that of the ASPP output's bilinear upsampling (the DAVSS authors'
    DeepLabv3+ uses True).
    """

    def __init__(self, in_channels: int, low_level_in_channels: int, num_classes: int, *,
                 low_level_channels: int = 48, channels: int = 256,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.low_level_project = ConvBNAct(low_level_in_channels, low_level_channels, 1)
        self.upsample = Interpolate(align_corners=align_corners)
        self.refine = nn.Sequential(
            SeparableConv2d(in_channels + low_level_channels, channels, 3),
            SeparableConv2d(channels, channels, 3),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.low_level_project(low_level)
        x = self.upsample(x, low_level.shape[-2:])
        return self.classifier(self.refine(torch.cat([x, low_level], dim=1)))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ assembled from a backbone (returning ``low_level`` and ``out`` features),
    an ASPP module and a decoder.

    ``forward`` takes an N x 3 x H x W image in [0, 1] (no mean/std normalisation; the
    networks are trained on raw [0, 1] input) and returns class logits at H/4 x W/4.
    """

    def __init__(self, backbone: nn.Module, aspp: ASPP, decoder: DeepLabV3PlusDecoder) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image(image, multiple=16, what="DeepLabV3Plus")
        features = self.backbone(image)
        return self.decoder(self.aspp(features["out"]), features["low_level"])


def build_segmenter(cfg: SegmenterConfig, *, num_classes: int) -> DeepLabV3Plus:
    """DeepLabv3+ from a :class:`SegmenterConfig`. ``aspp_rates`` are used as given (DeepLab
    doubles them for output stride 8; set them so in the config)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone = build_backbone(cfg.backbone, output_stride=cfg.output_stride,
                              width_mult=cfg.width_mult)
    aspp = ASPP(backbone.out_channels, cfg.aspp_rates, out_channels=cfg.aspp_channels,
                dropout=cfg.dropout)
    decoder = DeepLabV3PlusDecoder(cfg.aspp_channels, backbone.low_level_channels, num_classes,
                                   low_level_channels=cfg.low_level_channels,
                                   channels=cfg.decoder_channels,
                                   align_corners=cfg.decoder_align_corners)
    init_weights(aspp)
    init_weights(decoder)
    # The DAVSS authors' DeepLabv3+ keeps TF DeepLab's BatchNorm eps (1e-3) in the backbone
    # and the low-level projection; the defaults are torch's 1e-5.
    set_batchnorm_eps(backbone, cfg.backbone_bn_eps)
    set_batchnorm_eps(decoder.low_level_project, cfg.low_level_bn_eps)
    return DeepLabV3Plus(backbone, aspp, decoder)
