"""Backbones for the DeepLabv3+ key-frame segmenter.

Every backbone maps an N x 3 x H x W image to ``{'low_level': stride-4 features,
'out': stride-``output_stride`` features}`` and exposes ``low_level_channels`` and
``out_channels``. Output stride 16 or 8 is reached by trading the last strides for dilation.
``width_mult`` scales every channel count (rounded to a multiple of 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import BACKBONES
from .common import ConvBNAct, SeparableConv2d, init_weights, make_divisible


def build_backbone(name: str, *, output_stride: int = 16, width_mult: float = 1.0) -> nn.Module:
    """The backbone registered as ``name`` (``davss_ros.registry.BACKBONES``)."""
    BACKBONES.check("backbone", name)
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    return BACKBONES.get(name)(output_stride=output_stride, width_mult=width_mult)


class _Strider:
    """Tracks the running stride and turns strides beyond ``output_stride`` into dilation."""

    def __init__(self, output_stride: int, stride: int = 1) -> None:
        self.output_stride = output_stride
        self.stride = stride
        self.dilation = 1

    def step(self, stride: int) -> tuple[int, int]:
        """(stride, dilation) for a layer that would downsample by ``stride``."""
        if stride > 1 and self.stride * stride > self.output_stride:
            self.dilation *= stride
            return 1, self.dilation
        self.stride *= stride
        return stride, self.dilation


# ----------------------------------------------------------------------------- Xception-65


class _XceptionBlock(nn.Module):
    """Three separable convs, the last one strided, with a sum or 1x1-conv shortcut.

    ``preact=True`` puts a ReLU before each linear separable conv (DeepLab's entry/middle
    flow); ``preact=False`` uses ReLU inside the separable conv and no shortcut (last exit
    block). ``forward`` returns the block output and the second conv's output, which is
    the decoder's low-level feature in the entry flow's second block.
    """

    def __init__(self, in_channels: int, channels: tuple[int, int, int], *, stride: int = 1,
                 dilation: int = 1, shortcut: str = "conv", preact: bool = True) -> None:
        super().__init__()
        if shortcut not in ("conv", "sum", "none"):
            raise ValueError(f"shortcut must be conv, sum or none, got {shortcut!r}")
        if shortcut == "sum" and (stride != 1 or in_channels != channels[-1]):
            raise ValueError("a sum shortcut needs stride 1 and equal in/out channels")
        act = None if preact else nn.ReLU
        convs = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            layers: list[nn.Module] = [nn.ReLU()] if preact else []
            layers.append(SeparableConv2d(c_in, c_out, 3, stride=stride if i == 2 else 1,
                                          dilation=dilation, act_layer=act))
            convs.append(nn.Sequential(*layers))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.shortcut_type = shortcut
        self.shortcut = (ConvBNAct(in_channels, channels[-1], 1, stride=stride, act_layer=None)
                         if shortcut == "conv" else None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = self.convs[0](x)
        y2 = self.convs[1](y1)
        y = self.convs[2](y2)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        elif self.shortcut_type == "sum":
            y = y + x
        return y, y2


class Xception65(nn.Module):
    """Aligned Xception-65 as used by DeepLabv3+: entry flow (3 blocks), middle flow (16 blocks
    of 728 channels), exit flow (2 blocks); the low-level feature is the entry flow's second
    block after its second separable conv (stride 4)."""

    def __init__(self, *, output_stride: int = 16, width_mult: float = 1.0) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        s = _Strider(output_stride, stride=1)
        stem_stride, _ = s.step(2)
        # Symmetric padding instead of TF's "SAME" padding on strided convs: the weights are
        # trained here, so the half-pixel alignment difference does not matter.
        self.stem = nn.Sequential(
            ConvBNAct(3, ch(32), 3, stride=stem_stride),
            ConvBNAct(ch(32), ch(64), 3),
        )
        entry = []
        c_in = ch(64)
        for c in (128, 256, 728):
            stride, dilation = s.step(2)
            entry.append(_XceptionBlock(c_in, (ch(c),) * 3, stride=stride, dilation=dilation))
            c_in = ch(c)
        self.entry_flow = nn.ModuleList(entry)
        _, middle_dilation = s.step(1)
        self.middle_flow = nn.ModuleList(
            _XceptionBlock(c_in, (c_in,) * 3, dilation=middle_dilation, shortcut="sum")
            for _ in range(16)
        )
        # DeepLab's exit flow: the first block's stride (32) is always traded for dilation at
        # output stride 8 or 16; the following block runs at the doubled rate.
        exit1_stride, exit1_dilation = s.step(2)
        exit1 = _XceptionBlock(c_in, (c_in, ch(1024), ch(1024)), stride=exit1_stride,
                               dilation=middle_dilation)
        exit2 = _XceptionBlock(ch(1024), (ch(1536), ch(1536), ch(2048)),
                               dilation=exit1_dilation, shortcut="none", preact=False)
        self.exit_flow = nn.ModuleList([exit1, exit2])
        self.low_level_channels = ch(256)
        self.out_channels = ch(2048)
        self.output_stride = output_stride
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        x, _ = self.entry_flow[0](x)
        x, low_level = self.entry_flow[1](x)
        x, _ = self.entry_flow[2](x)
        for block in self.middle_flow:
            x, _ = block(x)
        for block in self.exit_flow:
            x, _ = block(x)
        return {"low_level": low_level, "out": x}


def xception65(*, output_stride: int = 16, width_mult: float = 1.0) -> Xception65:
    return Xception65(output_stride=output_stride, width_mult=width_mult)


# ----------------------------------------------------------------------------- ResNet


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, *, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvBNAct(in_channels, width, 3, stride=stride, dilation=dilation)
        self.conv2 = ConvBNAct(width, out_channels, 3, dilation=dilation, act_layer=None)
        self.downsample = _downsample(in_channels, out_channels, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, *, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvBNAct(in_channels, width, 1)
        self.conv2 = ConvBNAct(width, width, 3, stride=stride, dilation=dilation)
        self.conv3 = ConvBNAct(width, out_channels, 1, act_layer=None)
        self.downsample = _downsample(in_channels, out_channels, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvBNAct(in_channels, out_channels, 1, stride=stride, act_layer=None)


class ResNet(nn.Module):
    """ResNet (v1.5: stride on the 3x3 conv); ``low_level`` is layer1 (stride 4)."""

    def __init__(self, block: type[_BasicBlock] | type[_Bottleneck], layers: tuple[int, ...], *,
                 output_stride: int = 16, width_mult: float = 1.0) -> None:
        super().__init__()
        widths = [make_divisible(c * width_mult) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            ConvBNAct(3, widths[0], 7, stride=2),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        s = _Strider(output_stride, stride=4)
        stages = []
        c_in = widths[0]
        for i, (width, n) in enumerate(zip(widths, layers, strict=True)):
            stride, dilation = s.step(1 if i == 0 else 2)
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, width, stride=stride if j == 0 else 1,
                                    dilation=dilation))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.low_level_channels = widths[0] * block.expansion
        self.out_channels = c_in
        self.output_stride = output_stride
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low_level = self.layer1(self.stem(x))
        out = self.layer4(self.layer3(self.layer2(low_level)))
        return {"low_level": low_level, "out": out}


def resnet18(*, output_stride: int = 16, width_mult: float = 1.0) -> ResNet:
    return ResNet(_BasicBlock, (2, 2, 2, 2), output_stride=output_stride, width_mult=width_mult)


def resnet50(*, output_stride: int = 16, width_mult: float = 1.0) -> ResNet:
    return ResNet(_Bottleneck, (3, 4, 6, 3), output_stride=output_stride, width_mult=width_mult)


# ----------------------------------------------------------------------------- MobileNetV3


@dataclass(frozen=True)
class _IRSetting:
    kernel: int
    expanded: int
    out: int
    se: bool
    hardswish: bool
    stride: int


# MobileNetV3-Large (Howard et al. 2019, Table 1), after the 16-channel stem.
_MOBILENET_V3_LARGE = (
    _IRSetting(3, 16, 16, False, False, 1),
    _IRSetting(3, 64, 24, False, False, 2),
    _IRSetting(3, 72, 24, False, False, 1),
    _IRSetting(5, 72, 40, True, False, 2),
    _IRSetting(5, 120, 40, True, False, 1),
    _IRSetting(5, 120, 40, True, False, 1),
    _IRSetting(3, 240, 80, False, True, 2),
    _IRSetting(3, 200, 80, False, True, 1),
    _IRSetting(3, 184, 80, False, True, 1),
    _IRSetting(3, 184, 80, False, True, 1),
    _IRSetting(3, 480, 112, True, True, 1),
    _IRSetting(3, 672, 112, True, True, 1),
    _IRSetting(5, 672, 160, True, True, 2),
    _IRSetting(5, 960, 160, True, True, 1),
    _IRSetting(5, 960, 160, True, True, 1),
)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, expanded: int, out_channels: int, kernel: int, *,
                 stride: int, dilation: int, se: bool, act_layer: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, act_layer=act_layer))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride=stride, dilation=dilation,
                                groups=expanded, act_layer=act_layer))
        if se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, out_channels, 1, act_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_residual else y


class MobileNetV3Large(nn.Module):
    """MobileNetV3-Large features up to the 960-channel 1x1 conv; ``low_level`` is the last
    24-channel block (stride 4)."""

    def __init__(self, *, output_stride: int = 16, width_mult: float = 1.0) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        s = _Strider(output_stride)
        stride, _ = s.step(2)
        self.stem = ConvBNAct(3, ch(16), 3, stride=stride, act_layer=nn.Hardswish)
        blocks, n_low = [], 0
        c_in = ch(16)
        for cfg in _MOBILENET_V3_LARGE:
            stride, dilation = s.step(cfg.stride)
            blocks.append(InvertedResidual(c_in, ch(cfg.expanded), ch(cfg.out), cfg.kernel,
                                           stride=stride, dilation=dilation, se=cfg.se,
                                           act_layer=nn.Hardswish if cfg.hardswish else nn.ReLU))
            c_in = ch(cfg.out)
            if s.stride <= 4:
                n_low, self.low_level_channels = len(blocks), c_in
        self.low_level_blocks = nn.Sequential(*blocks[:n_low])
        self.high_level_blocks = nn.Sequential(*blocks[n_low:])
        self.last_conv = ConvBNAct(c_in, 6 * c_in, 1, act_layer=nn.Hardswish)
        self.out_channels = 6 * c_in
        self.output_stride = output_stride
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low_level = self.low_level_blocks(self.stem(x))
        out = self.last_conv(self.high_level_blocks(low_level))
        return {"low_level": low_level, "out": out}


def mobilenet_v3_large(*, output_stride: int = 16,
                       width_mult: float = 1.0) -> MobileNetV3Large:
    return MobileNetV3Large(output_stride=output_stride, width_mult=width_mult)
