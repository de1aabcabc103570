"""Losses of the training stages (paper Sec. III-D, Eq. 3, 5-7; ../shared/notes/method.md).

All class maps (propagated logits f_P, correction cue f_CC, corrected f_C) live at 1/4 of
the input resolution, as at inference; a loss against a label upsamples them x4 bilinearly
(``align_corners=False``, as the pipeline does before its argmax) to the label's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from davss_ros.classes import IGNORE_ID
from davss_ros.model.step import FrameParts


def upsample_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of N x C x h x w logits (upsampled to the target) against N x H x W class
    ids, 255 ignored; 0 (with a gradient) when every pixel is ignored."""
    logits = upsample_to(logits, target.shape[-2:])
    valid = target != IGNORE_ID
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.long(), ignore_index=IGNORE_ID)


def pseudo_label(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """argmax of the upsampled logits: the segmenter's pseudo label (N x H x W, int64)."""
    return upsample_to(logits.detach(), size).argmax(1)


# ------------------------------------------------------------------------- stage 1


def quarter_flow(flow: torch.Tensor, valid: torch.Tensor,
                 valid_fraction: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution flow N x 2 x H x W (pixels) and its validity N x H x W -> the flow at
    1/4 resolution in 1/4-resolution pixels and its validity.

    Each 1/4 pixel averages the valid flow vectors of its 4 x 4 block (the block's centre is
    that pixel's centre, as for ``avg_pool2d(image, 4)``) and divides by 4; it is valid when
    at least ``valid_fraction`` of the block is."""
    v = valid.unsqueeze(1).to(flow.dtype)
    num = F.avg_pool2d(flow * v, 4)
    den = F.avg_pool2d(v, 4)
    q = num / den.clamp_min(1e-6) / 4.0
    return q, den[:, 0] >= valid_fraction


def flow_epe(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean end-point error (Euclidean distance of flow vectors) over the valid pixels."""
    epe = torch.linalg.vector_norm(pred - target, dim=1)
    valid = valid.to(epe.dtype)
    return (epe * valid).sum() / valid.sum().clamp_min(1.0)


# ------------------------------------------------------------------------- stage 2


def distortion_target(propagated: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """DMNet's ground truth: 1 where argmax(propagated logits) != argmax(current logits).

    Both N x C x h x w (1/4 resolution); returns N x 1 x h x w float in {0, 1}."""
    if propagated.shape != current.shape:
        raise ValueError(f"distortion_target expects two logit maps of one shape, got "
                         f"{tuple(propagated.shape)} and {tuple(current.shape)}")
    return (propagated.argmax(1, keepdim=True) != current.argmax(1, keepdim=True)).float()


def distortion_loss(distortion_map: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the distortion map M in [0, 1] against the 0/1 target."""
    return F.binary_cross_entropy(distortion_map.clamp(0.0, 1.0), target)


# ------------------------------------------------------------------------- stage 3


@dataclass(frozen=True)
class DDSSwitches:
    """The ablation switches of stage 3 (paper Table III)."""

    dds: bool = True  # False: one warp F1 -> F3 and supervision on F3 only
    dgfl: bool = True  # False: no L_DGFL
    dgfc: bool = True  # False: fuse with the constant map instead of M (fusion_map)
    dgfl_norm: str = "mean"  # mean: 1/(HW) as Eq. 3; sum_m: divided by the sum of M


def frame_losses(parts: FrameParts, target: torch.Tensor,
                 switches: DDSSwitches = DDSSwitches()) -> dict[str, torch.Tensor]:
    """The three terms at one supervised frame, from the non-key step's ``parts``
    (``davss_ros.model.step``: f_P ``propagated``, f_CC ``cue``, M ``distortion_map`` and
    f_C ``fused``, made by the same fusion as at inference, Eq. 4, or with the constant map
    when the run is without DGFC); ``target`` N x H x W class ids (ground truth, or the
    pseudo label on F2), 255 ignored.

    Returns ``L_P`` (Eq. 5), ``L_C`` (Eq. 6, on f_C) and ``L_DGFL`` (Eq. 3: per-pixel CE of
    f_CC weighted by M). M is detached in L_DGFL: it weights the loss and is not something
    that loss should shrink; it keeps its gradient in L_C (through the fusion), as in the
    authors' code.
    """
    if parts.cue is None or parts.distortion_map is None:
        raise ValueError("frame_losses needs the parts of a davss step (cue and distortion map)")
    out = {"L_P": segmentation_loss(parts.propagated, target),
           "L_C": segmentation_loss(parts.fused, target)}
    if switches.dgfl:
        size = target.shape[-2:]
        ce = F.cross_entropy(upsample_to(parts.cue, size), target.long(),
                             ignore_index=IGNORE_ID, reduction="none")
        m = upsample_to(parts.distortion_map.detach(), size)[:, 0]
        m = m * (target != IGNORE_ID).to(m.dtype)
        if switches.dgfl_norm == "sum_m":
            out["L_DGFL"] = (ce * m).sum() / m.sum().clamp_min(1.0)
        else:
            out["L_DGFL"] = (ce * m).mean()
    return out


def combine_dds(per_frame: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Average each term over the supervised frames (F2 and F3, or F3 alone) and add
    ``total`` = the mean of the terms present: (L_P + L_C + L_DGFL) / 3, Eq. 7 (or
    (L_P + L_C) / 2 without DGFL)."""
    if not per_frame:
        raise ValueError("combine_dds needs the losses of at least one frame")
    names = list(per_frame[0])
    out = {n: torch.stack([f[n] for f in per_frame]).mean() for n in names}
    out["total"] = torch.stack([out[n] for n in names]).mean()
    return out
