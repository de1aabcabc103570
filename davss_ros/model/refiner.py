"""The ``signals`` distortion estimator: DMNet's map refined by signals that cost nothing
extra, and a fusion weight with a learned floor.

Measured on the shipped model (issue "the correction must earn its place"): DMNet alone
tells wrongly propagated pixels apart with ROC-AUC 0.68-0.78, while the total-variation
distance between the softmax of the correction cue and of the propagated logits reaches
0.94-0.97. Those logits exist anyway on a DAVSS non-key frame, so a tiny head over

1. DMNet's map M,
2. TV(softmax(f_CC), softmax(f_P)) = 0.5 * sum_c |p_CC - p_P|,
3. the cue's top-class probability, 4. the propagated top-class probability,
5. the photometric error |warped key image - current image| (channel mean),

predicts the distortion map M_s (1 where the propagated label is wrong). The fusion weight
is ``a + b * M_s`` (clamped to [0, 1]) with two learned scalars; a = 0, b = 1 is the paper's
Eq. 4 on M_s. Both are trained in stage 4 with the fused output's loss and a BCE on M_s,
and used the same way at inference (:class:`~davss_ros.model.step.NonKeyStep`). The
``signals_mix`` estimator adds a learned mixing term to the fused logits (see
:class:`DistortionRefiner`), trained with them in stage 4.

The signals lean on the light branch: where it is wrong everywhere (a camera or a light it
was not trained for) the cue/propagated distance is high everywhere and the refined map
hands the frame to a bad cue. Measured on the val clips of the strong recipe: the cue's
argmax agrees with the key segmenter's on 85-97 % of a key frame's pixels in the training
look, and on 42-55 % in the dusk look, where the signals fusion agreed 9 points less with
the key segmenter than DMNet alone. So every key frame also runs CFNet, and that agreement
sets a trust t in [0, 1] (:func:`cue_trust`: 1 at or above :data:`TRUST_HIGH`, 0 at or
below :data:`TRUST_LOW`, linear between); the non-key frames after it fuse with
``t * (a + b * M_s) + (1 - t) * M`` (M: DMNet's map, the paper's fusion). Training is in the
training look: t = 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The cue/key-segmenter agreement on a key frame at and above which the signals fusion is
# trusted fully, and at and below which DMNet's map alone fuses (val clips: the lowest
# in-domain agreement is 0.85, the highest in the dusk look 0.55).
TRUST_HIGH = 0.85
TRUST_LOW = 0.60

SIGNALS = ("dmnet", "tv_distance", "cue_confidence", "propagated_confidence",
           "photometric_error")


def distortion_signals(dmnet_map: torch.Tensor, cue: torch.Tensor, propagated: torch.Tensor,
                       warped_image: torch.Tensor, current_image: torch.Tensor) -> torch.Tensor:
    """The five signals (:data:`SIGNALS`) as N x 5 x h x w, each in [0, 1]."""
    p_cue = F.softmax(cue, dim=1)
    p_prop = F.softmax(propagated, dim=1)
    tv = 0.5 * (p_cue - p_prop).abs().sum(dim=1, keepdim=True)
    photometric = (warped_image - current_image).abs().mean(dim=1, keepdim=True)
    return torch.cat([dmnet_map, tv, p_cue.amax(dim=1, keepdim=True),
                      p_prop.amax(dim=1, keepdim=True), photometric], dim=1)


class DistortionRefiner(nn.Module):
    """Signals -> distortion map M_s (sigmoid) and the fusion weight a + b * M_s.

    ``num_classes`` (the ``signals_mix`` estimator): also a learned 1x1 mixing over
    [f_P, f_CC, w f_P, w f_CC] (w: the fusion weight), added to Eq. 4's output: per-class
    gains and cross-class terms for the propagated logits and the cue, alike everywhere
    (Accel's fusion is such a mixing of f_P and its own branch) and gated by the distortion
    weight. Zero at the start, so an untrained mixing leaves Eq. 4 as it is."""

    def __init__(self, hidden: int = 16, num_classes: int | None = None) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.head = nn.Sequential(
            nn.Conv2d(len(SIGNALS), hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1))
        # The floor a and slope b of the fusion weight; a = 0, b = 1 is Eq. 4 on M_s.
        self.floor = nn.Parameter(torch.zeros(()))
        self.slope = nn.Parameter(torch.ones(()))
        self.mix = None
        if num_classes is not None:
            self.mix = nn.Conv2d(4 * num_classes, num_classes, 1)
            nn.init.zeros_(self.mix.weight)
            nn.init.zeros_(self.mix.bias)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        if signals.dim() != 4 or signals.shape[1] != len(SIGNALS):
            raise ValueError(f"DistortionRefiner expects N x {len(SIGNALS)} x h x w signals, "
                             f"got {tuple(signals.shape)}")
        return torch.sigmoid(self.head(signals))

    def fusion_weight(self, distortion_map: torch.Tensor) -> torch.Tensor:
        """The weight of the correction cue in Eq. 4: a + b * M_s, clamped to [0, 1]."""
        return (self.floor + self.slope * distortion_map).clamp(0.0, 1.0)

    def mixing(self, propagated: torch.Tensor, cue: torch.Tensor,
               weight: torch.Tensor) -> torch.Tensor | None:
        """The mixing term added to Eq. 4's output (N x C x h x w), None without one."""
        if self.mix is None:
            return None
        return self.mix(torch.cat([propagated, cue, weight * propagated, weight * cue], dim=1))


def cue_trust(cue: torch.Tensor, key_logits: torch.Tensor) -> float:
    """How far a stream's cue can be trusted: the share of a key frame's pixels where the
    cue's argmax equals the key segmenter's (both N x C x h x w), mapped linearly from
    [TRUST_LOW, TRUST_HIGH] onto [0, 1]."""
    if cue.shape != key_logits.shape:
        raise ValueError(f"cue_trust expects two logit maps of one shape, got "
                         f"{tuple(cue.shape)} and {tuple(key_logits.shape)}")
    agree = float((cue.argmax(1) == key_logits.argmax(1)).float().mean())
    return min(1.0, max(0.0, (agree - TRUST_LOW) / (TRUST_HIGH - TRUST_LOW)))
