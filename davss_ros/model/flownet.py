"""FlowNet-S (Dosovitskiy et al., ICCV 2015) at a reduced width, DAVSS's "FlowNet2-S"."""

from __future__ import annotations

import torch
from torch import nn

from ..config import FlowConfig
from .common import check_image

# FlowNet-S encoder channels at full width (conv1, conv2, conv3, conv3_1, ..., conv6_1).
_ENCODER = (64, 128, 256, 256, 512, 512, 512, 512, 1024, 1024)
_KERNELS = (7, 5, 5, 3, 3, 3, 3, 3, 3, 3)
_STRIDES = (2, 2, 2, 1, 2, 1, 2, 1, 2, 1)
# Decoder feature channels at full width (deconv5, deconv4, deconv3, deconv2).
_DECODER = (512, 256, 128, 64)
FLOW_SCALE = 5.0


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2),
        nn.LeakyReLU(0.1),
    )


def _deconv(in_channels: int, out_channels: int) -> nn.Sequential:
    # kernel 4, stride 2, padding 1 gives exactly 2x; the original pads 0 and crops one
    # pixel on each side afterwards, which is the same operation.
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.LeakyReLU(0.1),
    )


class FlowNetS(nn.Module):
    """FlowNet-S with every channel count scaled by ``width`` (3/8 in DAVSS), no BatchNorm.

    ``forward(current, previous)`` takes two N x 3 x H x W frames in [0, 1] (H, W multiples
    of 64), concatenated as 6 channels, and returns N x 2 x H/4 x W/4 flow in 1/4-resolution
    pixels such that ``warp(previous_map, flow)`` is aligned with the current frame. The
    level-2 prediction is multiplied by 5.0, as in the authors' code.
    """

    def __init__(self, *, width: float = 0.375) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        enc = [max(2, round(c * width)) for c in _ENCODER]
        dec = [max(2, round(c * width)) for c in _DECODER]
        self.width = width
        convs = []
        c_in = 6
        for c, k, s in zip(enc, _KERNELS, _STRIDES, strict=True):
            convs.append(_conv(c_in, c, k, s))
            c_in = c
        self.encoder = nn.ModuleList(convs)
        # Skip features at levels 5, 4, 3, 2 (conv5_1, conv4_1, conv3_1, conv2).
        skips = [enc[7], enc[5], enc[3], enc[1]]
        self.predict_flow = nn.ModuleList([nn.Conv2d(enc[9], 2, 3, padding=1)])
        self.deconv = nn.ModuleList()
        self.upsample_flow = nn.ModuleList()
        c_in = enc[9]
        for skip, d in zip(skips, dec, strict=True):
            self.deconv.append(_deconv(c_in, d))
            self.upsample_flow.append(nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1,
                                                         bias=False))
            c_in = skip + d + 2
            self.predict_flow.append(nn.Conv2d(c_in, 2, 3, padding=1))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        check_image(current, multiple=64, name="current", what="FlowNetS")
        check_image(previous, multiple=64, name="previous", what="FlowNetS")
        if current.shape != previous.shape:
            raise ValueError(f"FlowNetS expects current and previous of one shape, got "
                             f"{tuple(current.shape)} and {tuple(previous.shape)}")
        x = torch.cat([current, previous], dim=1)
        features = []
        for conv in self.encoder:
            x = conv(x)
            features.append(x)
        skips = [features[7], features[5], features[3], features[1]]
        flow = self.predict_flow[0](x)
        for deconv, upsample, predict, skip in zip(self.deconv, self.upsample_flow,
                                                   self.predict_flow[1:], skips, strict=True):
            x = torch.cat([skip, deconv(x), upsample(flow)], dim=1)
            flow = predict(x)
        return flow * FLOW_SCALE


def build_flownet(cfg: FlowConfig) -> FlowNetS:
    return FlowNetS(width=cfg.width)
