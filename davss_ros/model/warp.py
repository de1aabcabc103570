"""Backward bilinear warping of feature maps and images along optical flow."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.nn import functional as F


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at ``p + flow(p)`` for every pixel ``p`` (bilinear, border clamping).

    ``x`` is N x C x h x w (logits or an image), ``flow`` is N x 2 x h x w in pixels of that
    resolution: ``flow[:, 0]`` is dx, ``flow[:, 1]`` is dy. With flow from the current frame to
    the previous one, ``warp(previous_map, flow)`` is the map propagated to the current frame.
    Equivalent to ``cv2.remap(x, p + flow, INTER_LINEAR, BORDER_REPLICATE)``.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(flow, torch.Tensor):
        raise ValueError("warp expects torch tensors x and flow")
    if x.dim() != 4:
        raise ValueError(f"warp expects x of shape N x C x h x w, got {tuple(x.shape)}")
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"warp expects flow of shape N x 2 x h x w, got {tuple(flow.shape)}")
    if flow.shape[0] != x.shape[0] or flow.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"warp expects flow N x 2 x {x.shape[-2]} x {x.shape[-1]} with N = "
                         f"{x.shape[0]} to match x {tuple(x.shape)}, got {tuple(flow.shape)}")
    if not x.is_floating_point() or not flow.is_floating_point():
        raise ValueError(f"warp expects floating-point x and flow, got {x.dtype} and "
                         f"{flow.dtype}")
    if x.device != flow.device:
        raise ValueError(f"warp expects x and flow on one device, got {x.device} and "
                         f"{flow.device}")
    h, w = x.shape[-2:]
    base, scale = _base_grid(h, w, x.device, x.dtype)
    grid = base + flow.to(x.dtype).permute(0, 2, 3, 1) * scale
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


@lru_cache(maxsize=32)
def _base_grid(h: int, w: int, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity sampling grid (1 x h x w x 2, normalised for ``align_corners=True``) and the
    pixel-to-normalised scale (2 / (size - 1)) for (x, y)."""
    # Built outside inference mode so a grid first made during inference can be reused while
    # training (inference tensors cannot take part in autograd).
    with torch.inference_mode(False), torch.no_grad():
        sx = 2.0 / (w - 1) if w > 1 else 0.0
        sy = 2.0 / (h - 1) if h > 1 else 0.0
        xs = torch.arange(w, device=device, dtype=torch.float64) * sx - (1.0 if w > 1 else 0.0)
        ys = torch.arange(h, device=device, dtype=torch.float64) * sy - (1.0 if h > 1 else 0.0)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack((gx, gy), dim=-1).unsqueeze(0).to(dtype)
        scale = torch.tensor([sx, sy], device=device, dtype=dtype)
    return base, scale
