"""DMNet: predicts the distortion map of propagated features from images (DAVSS, Sec. III-B)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import DMNetConfig
from .common import SeparableConv2d, init_weights


class DMNet(nn.Module):
    """Siamese feature extractor (shared weights) on the warped key image and the current
    frame, compared by cosine similarity per pixel.

    ``forward(warped_image, current_image)`` takes two N x 3 x h x w images in [0, 1] (at 1/4
    of the input resolution in DAVSS) and returns the distortion_map
    ``M = clamp((1 - cos) / 2, 0, 1)``, N x 1 x h x w: 0 where the features agree.

    ``extra_bn_relu`` adds a BatchNorm + ReLU after each separable conv, as the DAVSS
    authors' DMNet has (their weights need it).
    """

    def __init__(self, *, channels: Sequence[int] = (4, 8, 16), eps: float = 1e-6,
                 extra_bn_relu: bool = False) -> None:
        super().__init__()
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be positive channel counts, got {channels!r}")
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers.append(SeparableConv2d(c_in, int(c), 3))
            if extra_bn_relu:
                layers += [nn.BatchNorm2d(int(c)), nn.ReLU()]
            c_in = int(c)
        layers.append(nn.Conv2d(c_in, c_in, 1))
        self.features = nn.Sequential(*layers)
        self.eps = eps
        init_weights(self)

    def forward(self, warped_image: torch.Tensor, current_image: torch.Tensor) -> torch.Tensor:
        for name, x in (("warped_image", warped_image), ("current_image", current_image)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"DMNet expects {name} of shape N x 3 x h x w, got {shape}")
        if warped_image.shape != current_image.shape:
            raise ValueError(f"DMNet expects warped_image and current_image of one shape, got "
                             f"{tuple(warped_image.shape)} and {tuple(current_image.shape)}")
        # One batched pass of the shared branch, in training as at inference: BatchNorm sees
        # both images together either way (two separate passes in training normalised each
        # branch by its own batch statistics, which inference, on running statistics shared
        # by both, never does).
        f_warped, f_current = self.features(torch.cat([warped_image, current_image])).chunk(2)
        # Cosine similarity with an eps^2 term in the dot product and both squared norms, i.e.
        # of the features extended by one constant channel eps: two all-zero features count as
        # identical (M = 0) instead of orthogonal (M = 0.5); negligible otherwise.
        eps2 = self.eps * self.eps
        dot = (f_warped * f_current).sum(dim=1, keepdim=True) + eps2
        norm_w = (f_warped.square().sum(dim=1, keepdim=True) + eps2).sqrt()
        norm_c = (f_current.square().sum(dim=1, keepdim=True) + eps2).sqrt()
        cos = dot / (norm_w * norm_c)
        return ((1.0 - cos) * 0.5).clamp(0.0, 1.0)


def build_dmnet(cfg: DMNetConfig | None = None) -> DMNet:
    """DMNet from a :class:`DMNetConfig` (None: the defaults)."""
    cfg = cfg if cfg is not None else DMNetConfig()
    return DMNet(channels=cfg.channels, extra_bn_relu=cfg.extra_bn_relu)
