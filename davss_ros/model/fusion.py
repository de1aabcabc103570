"""Fusion of propagated logits f_P with current-frame logits: DAVSS's distortion-guided
feature correction (Eq. 4, written here only) and the Accel baseline's learned 1x1 fusion.
Which mode fuses how is :data:`davss_ros.model.step.MODE_TABLE`."""

from __future__ import annotations

import torch
from torch import nn

# The distortion map used in place of DMNet's M without DGFC (the paper's ablation): an even
# blend of f_P and f_CC at every pixel, as nothing tells distorted from intact pixels apart.
# Training (the no-DGFC switch) and inference (ModelConfig.distortion_map = "constant")
# both fuse through fusion_map.
CONSTANT_DISTORTION = 0.5


def fusion_map(distortion_map: torch.Tensor, kind: str = "predicted") -> torch.Tensor:
    """The map DGFC weights the correction cue by: DMNet's ``distortion_map`` itself
    (``predicted``) or a map of its shape filled with :data:`CONSTANT_DISTORTION`
    (``constant``)."""
    if kind == "predicted":
        return distortion_map
    if kind == "constant":
        return torch.full_like(distortion_map, CONSTANT_DISTORTION)
    raise ValueError(f"distortion map kind must be predicted or constant, got {kind!r}")


def _check_pair(propagated: torch.Tensor, correction_cue: torch.Tensor, what: str) -> None:
    if propagated.dim() != 4:
        raise ValueError(f"{what} expects propagated logits N x C x h x w, got "
                         f"{tuple(propagated.shape)}")
    if correction_cue.shape != propagated.shape:
        raise ValueError(f"{what} expects correction_cue of the propagated shape "
                         f"{tuple(propagated.shape)}, got {tuple(correction_cue.shape)}")


class DistortionGuidedFusion(nn.Module):
    """f_C = f_P * (1 - M) + f_CC * M (the paper's DGFC), M broadcast over channels."""

    def forward(self, propagated: torch.Tensor, correction_cue: torch.Tensor,
                distortion_map: torch.Tensor) -> torch.Tensor:
        _check_pair(propagated, correction_cue, "DistortionGuidedFusion")
        n, _, h, w = propagated.shape
        if distortion_map.shape != (n, 1, h, w):
            raise ValueError(f"DistortionGuidedFusion expects distortion_map of shape "
                             f"{(n, 1, h, w)}, got {tuple(distortion_map.shape)}")
        return propagated * (1.0 - distortion_map) + correction_cue * distortion_map


class AccelFusion(nn.Module):
    """Accel's fusion: a learned 1x1 conv over concat(f_P, f_CC), 2C -> C, alike for every
    pixel, no distortion map."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.conv = nn.Conv2d(2 * num_classes, num_classes, 1)
        # Initialised as identity on the propagated half and zero on the cue half, so an
        # untrained fusion returns the propagated logits (DFF) and training starts from there.
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :num_classes, 0, 0].copy_(torch.eye(num_classes))
            self.conv.bias.zero_()

    def forward(self, propagated: torch.Tensor, correction_cue: torch.Tensor,
                distortion_map: torch.Tensor | None = None) -> torch.Tensor:
        _check_pair(propagated, correction_cue, "AccelFusion")
        if propagated.shape[1] != self.num_classes:
            raise ValueError(f"AccelFusion expects {self.num_classes} classes, got "
                             f"{propagated.shape[1]}")
        return self.conv(torch.cat([propagated, correction_cue], dim=1))
