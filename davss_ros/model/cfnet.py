"""CFNet: the lightweight network that extracts the correction cue f_CC from the current
frame (DAVSS, Sec. III-C)."""

from __future__ import annotations

import torch
from torch import nn

from .common import check_image, init_weights

# (out_channels, stride) of the ten encoder convs at width 1.
_ENCODER = ((32, 2), (64, 2), (128, 2), (128, 1), (256, 2), (256, 1), (256, 2), (256, 1),
            (512, 2), (512, 1))
# Output channels of the four transposed convs (to levels 1/32, 1/16, 1/8, 1/4) at width 1.
_DECODER = (256, 128, 64, 32)


def _conv(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.1),
    )


def _deconv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.LeakyReLU(0.1),
    )


class CFNet(nn.Module):
    """Ten 3x3 conv + BN + LeakyReLU(0.1) layers down to 1/64, four 2x transposed convs with
    skip concatenations back to 1/4, and a 1x1 conv to class logits.

    ``forward(image)`` takes an N x 3 x H x W frame in [0, 1] (H, W multiples of 64) and
    returns the correction cue, N x num_classes x H/4 x W/4. ``width_mult`` scales every
    channel count (at least 8).
    """

    def __init__(self, num_classes: int, *, width_mult: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")

        def ch(c: int) -> int:
            return max(8, round(c * width_mult))

        self.num_classes = num_classes
        self.width_mult = width_mult
        convs = []
        c_in = 3
        for c, stride in _ENCODER:
            convs.append(_conv(c_in, ch(c), stride))
            c_in = ch(c)
        self.encoder = nn.ModuleList(convs)
        # Skips: conv5_1 (1/32), conv4_1 (1/16), conv3_1 (1/8), conv2 (1/4).
        self._skip_index = (7, 5, 3, 1)
        deconvs = []
        for i, d in zip(self._skip_index, _DECODER, strict=True):
            deconvs.append(_deconv(c_in, ch(d)))
            c_in = ch(d) + ch(_ENCODER[i][0])
        self.decoder = nn.ModuleList(deconvs)
        self.classifier = nn.Conv2d(c_in, num_classes, 1)
        init_weights(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image(image, multiple=64, what="CFNet")
        features = []
        x = image
        for conv in self.encoder:
            x = conv(x)
            features.append(x)
        for deconv, i in zip(self.decoder, self._skip_index, strict=True):
            x = torch.cat([features[i], deconv(x)], dim=1)
        return self.classifier(x)
