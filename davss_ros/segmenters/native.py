"""The native key segmenter: this package's DeepLabv3+ from a davss checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from .base import KeySegmenter, SegmenterInfo


class NativeSegmenter(KeySegmenter):
    """A torch module taking RGB in [0, 1] and giving logits at 1/4 (DeepLabV3Plus)."""

    kind = "native"

    def __init__(self, module: nn.Module, info: SegmenterInfo, **kwargs) -> None:
        super().__init__(info, **kwargs)
        self.module = module

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def _move(self, device: torch.device) -> None:
        self.module.to(device)
