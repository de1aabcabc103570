"""Optical flow providers: one interface over OpenCV's DIS flow and a learned FlowNet-S.

Every provider maps ``(current, previous)``, two N x 3 x H x W frames in [0, 1], to flow
N x 2 x H/4 x W/4 in 1/4-resolution pixels, on the frames' device, with the convention of
:func:`davss_ros.model.warp.warp`: ``warp(previous_map, flow)`` is aligned with the current
frame, i.e. ``current(x) ~ previous(x + flow(x))``.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod

import cv2
import numpy as np
import torch

from ..config import FlowConfig
from ..registry import FLOW_PROVIDERS
from .flownet import FlowNetS

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class FlowProvider(ABC):
    """Flow from the current frame to the previous one at 1/4 resolution."""

    #: H and W must be multiples of this.
    multiple = 4
    #: Whether the provider runs the model's flow network (built into DavssNet, trained in
    #: stage 1 and carried by checkpoints).
    needs_network = False

    @classmethod
    def from_config(cls, cfg: FlowConfig, flownet: FlowNetS | None = None) -> FlowProvider:
        """The provider for ``cfg`` (``flownet``: the model's flow network, if any)."""
        return cls()

    def __call__(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        for name, x in (("current", current), ("previous", previous)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{type(self).__name__} expects {name} of shape N x 3 x H x W, "
                                 f"got {shape}")
        if current.shape != previous.shape:
            raise ValueError(f"{type(self).__name__} expects current and previous of one shape, "
                             f"got {tuple(current.shape)} and {tuple(previous.shape)}")
        h, w = current.shape[-2:]
        if h % self.multiple or w % self.multiple or h == 0 or w == 0:
            raise ValueError(f"{type(self).__name__} expects height and width that are positive "
                             f"multiples of {self.multiple}, got {h} x {w}")
        return self.compute(current, previous)

    @abstractmethod
    def compute(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """The flow for inputs already checked by ``__call__``."""


class DISFlow(FlowProvider):
    """OpenCV's DIS optical flow (Kroeger et al. 2016) on 1/4-resolution grey frames.

    Needs no weights. The grey image of the last ``current`` is kept, and reused when the next
    call's ``previous`` is that same, unmodified tensor (the usual frame-by-frame case; not
    for tensors made under ``torch.inference_mode``, whose edits cannot be detected).
    """

    def __init__(self, preset: str = "fast") -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; expected one of: "
                             f"{', '.join(DIS_PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        self._last: tuple[weakref.ref, int, list[np.ndarray]] | None = None

    @classmethod
    def from_config(cls, cfg: FlowConfig, flownet: FlowNetS | None = None) -> DISFlow:
        return cls(cfg.dis_preset)

    def compute(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        prev_grey = self._cached(previous)
        if prev_grey is None:
            prev_grey = _quarter_grey(previous)
        cur_grey = _quarter_grey(current)
        # cv2: calc(I0, I1) gives I0(x) ~ I1(x + flow(x)); I0 = current, I1 = previous.
        flows = [self._dis.calc(c, p, None) for c, p in zip(cur_grey, prev_grey, strict=True)]
        # Inference tensors keep no version counter, so in-place edits could not be detected:
        # such frames are not cached.
        self._last = (None if current.is_inference()
                      else (weakref.ref(current), current._version, cur_grey))
        flow = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2)
        return flow.to(device=current.device, dtype=current.dtype)

    def _cached(self, previous: torch.Tensor) -> list[np.ndarray] | None:
        if self._last is None:
            return None
        ref, version, grey = self._last
        if ref() is previous and previous._version == version:
            return grey
        return None


def _quarter_grey(frames: torch.Tensor) -> list[np.ndarray]:
    """N x 3 x H x W in [0, 1] -> N uint8 grey images at H/4 x W/4 (INTER_AREA)."""
    with torch.no_grad():
        r, g, b = frames.detach().float().unbind(dim=1)
        grey = (0.299 * r + 0.587 * g + 0.114 * b).mul(255.0).round_().clamp_(0, 255)
        grey = grey.to(torch.uint8).cpu().numpy()
    h, w = grey.shape[-2:]
    return [cv2.resize(img, (w // 4, h // 4), interpolation=cv2.INTER_AREA) for img in grey]


class LearnedFlow(FlowProvider):
    """A :class:`FlowNetS`; it must sit on the frames' device."""

    multiple = 64
    needs_network = True

    @classmethod
    def from_config(cls, cfg: FlowConfig, flownet: FlowNetS | None = None) -> LearnedFlow:
        if flownet is None:
            raise ValueError("flow provider 'learned' needs a FlowNetS (flownet=...), got None")
        return cls(flownet)

    def __init__(self, flownet: FlowNetS) -> None:
        if not isinstance(flownet, torch.nn.Module):
            raise ValueError(f"LearnedFlow expects a FlowNetS module, got "
                             f"{type(flownet).__name__}")
        self.flownet = flownet

    def compute(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return self.flownet(current, previous)


def build_flow(cfg: FlowConfig, flownet: FlowNetS | None = None) -> FlowProvider:
    """The provider registered as ``cfg.provider`` (``davss_ros.registry.FLOW_PROVIDERS``):
    DIS flow, or ``flownet`` wrapped (``learned``)."""
    return FLOW_PROVIDERS.get(cfg.provider).from_config(cfg, flownet)
