"""The non-key step of DAVSS and of its baselines, driven by one table of modes.

On a frame that is not a key frame (paper Sec. III, Fig. 2):

1. flow from the current frame to the previous one (1/4 resolution);
2. the propagated key logits and the propagated 1/4 key image are warped one step;
3. DMNet compares the warped key image with the current 1/4 image: distortion map M;
4. a current-frame branch gives logits (CFNet's correction cue f_CC, or Accel's branch);
5. a fusion makes the output (Eq. 4 for DAVSS, Accel's 1x1 conv, none for DFF).

:data:`MODE_TABLE` says which of 3-5 each mode runs. The pipeline (inference), the training
stages (with gradients) and the FLOPs counter all go through this module, so every mode
means the same everywhere. Steps 1-3 (:meth:`NonKeyStep.estimate`) are apart from 4-5
(:meth:`NonKeyStep.complete`) because an adaptive schedule decides between them, from M,
whether the frame becomes a key frame after all.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..config import MODES
from .flow import FlowProvider
from .fusion import fusion_map
from .refiner import distortion_signals
from .warp import warp

# Context manager factory a caller may pass to time each stage by name ("flow", "warp",
# "dmnet", "cfnet", "fuse").
Timer = Callable[[str], AbstractContextManager]


def untimed(_name: str) -> AbstractContextManager:
    return nullcontext()


@dataclass(frozen=True)
class ModeSpec:
    """What a mode runs on a non-key frame.

    ``propagates``: False for ``per_frame`` (every frame is a key frame). ``distortion``:
    DMNet's map takes part in the output. ``cue`` and ``fusion``: names of the current-frame
    branch and of the fusion module on :class:`~davss_ros.model.net.DavssNet` (None: none).
    """

    propagates: bool
    distortion: bool = False
    cue: str | None = None
    fusion: str | None = None

    @property
    def networks(self) -> tuple[str, ...]:
        """The DavssNet networks a non-key frame runs (flow aside)."""
        if not self.propagates:
            return ()
        return tuple(n for n in ("dmnet" if self.distortion else None, self.cue, self.fusion)
                     if n is not None)


MODE_TABLE: dict[str, ModeSpec] = {
    "per_frame": ModeSpec(propagates=False),
    "dff": ModeSpec(propagates=True),
    "accel": ModeSpec(propagates=True, cue="accel_cfnet", fusion="accel_fusion"),
    "davss": ModeSpec(propagates=True, distortion=True, cue="cfnet", fusion="fusion"),
}
if tuple(MODE_TABLE) != MODES:  # config validates mode names; both must list the same
    raise ImportError(f"MODE_TABLE {tuple(MODE_TABLE)} and config.MODES {MODES} differ")


def mode_spec(mode: str) -> ModeSpec:
    try:
        return MODE_TABLE[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; expected one of: "
                         f"{', '.join(MODE_TABLE)}") from None


@dataclass(frozen=True)
class PropagationState:
    """What a stream carries from frame to frame: the last frame (N x 3 x H x W in [0, 1],
    the flow's ``previous``), the propagated logits and the propagated key image (both at
    1/4 resolution, aligned with that frame), and the trust in the cue that the last key
    frame measured (:func:`davss_ros.model.refiner.cue_trust`; 1 = the signals fusion)."""

    frame: torch.Tensor
    logits: torch.Tensor
    image: torch.Tensor
    trust: float = 1.0

    @classmethod
    def from_key(cls, frame: torch.Tensor, logits: torch.Tensor, *,
                 trust: float = 1.0) -> PropagationState:
        """The state after a key frame: its logits and its own 1/4 image."""
        return cls(frame=frame, logits=logits, image=quarter_image(frame), trust=trust)


def quarter_image(frame: torch.Tensor) -> torch.Tensor:
    """The 1/4-resolution image the key image and DMNet work on (4 x 4 block means)."""
    return F.avg_pool2d(frame, 4)


@dataclass(frozen=True)
class Estimate:
    """Steps 1-3 of a non-key frame."""

    flow: torch.Tensor  # N x 2 x h x w, current -> previous
    warped_image: torch.Tensor  # the propagated key image warped to the current frame
    current_image: torch.Tensor  # the current frame at 1/4
    distortion_map: torch.Tensor | None  # DMNet's M, N x 1 x h x w (when asked for)


@dataclass(frozen=True)
class FrameParts:
    """A non-key frame's maps, all at 1/4 resolution."""

    propagated: torch.Tensor  # f_P: the key logits warped to this frame
    cue: torch.Tensor | None  # current-frame logits: CFNet's f_CC (davss), Accel's branch
    fused: torch.Tensor  # the output logits: f_C (davss), Accel's fusion, f_P (dff)
    distortion_map: torch.Tensor | None  # DMNet's M (davss, or when asked for)
    warped_image: torch.Tensor  # the key image warped to this frame
    trust: float = 1.0  # the stream's trust in the cue this frame was fused with

    def next_state(self, frame: torch.Tensor, *, corrected: bool = False) -> PropagationState:
        """The state after this frame: the raw warped logits (the authors' choice), or the
        output logits with ``corrected``."""
        return PropagationState(frame=frame, logits=self.fused if corrected else self.propagated,
                                image=self.warped_image, trust=self.trust)


class NonKeyStep:
    """Runs a :class:`~davss_ros.model.net.DavssNet`'s networks on a non-key frame.

    Args:
        net: the networks (DMNet, CFNet, the Accel branch and fusions).
        flow: the flow provider (DIS or the net's FlowNet-S).
        fusion_map: ``predicted`` (DMNet's M, the method) or ``constant`` (M = 0.5, the
            model trained without DGFC); None = the net's configuration.
        refine: use the net's ``signals`` refiner when it has one (False: DMNet's map
            alone, as stage 3 trains CFNet before the refiner exists).
    """

    def __init__(self, net: torch.nn.Module, flow: FlowProvider, *,
                 fusion_map: str | None = None, refine: bool = True) -> None:
        self.net = net
        self.flow = flow
        self.fusion_map = fusion_map or net.config.distortion_map
        self.refiner = getattr(net, "refiner", None) if refine else None

    def estimate(self, state: PropagationState, frame: torch.Tensor, *, distortion: bool,
                 flow: torch.Tensor | None = None, timer: Timer = untimed) -> Estimate:
        """Flow, the warped key image and (``distortion``) DMNet's map. ``flow``: a flow
        already computed for this pair (training computes it under its own grad mode)."""
        if flow is None:
            with timer("flow"):
                flow = self.flow(frame, state.frame)
        with timer("warp"):
            warped_image = warp(state.image, flow)
        current_image = quarter_image(frame)
        m = None
        if distortion:
            with timer("dmnet"):
                m = self.distortion(warped_image, current_image)
        return Estimate(flow=flow, warped_image=warped_image, current_image=current_image,
                        distortion_map=m)

    def distortion(self, warped_image: torch.Tensor, current_image: torch.Tensor) -> torch.Tensor:
        """DMNet's distortion map M of the warped key image against the current frame's 1/4
        image (both N x 3 x h x w)."""
        return self.net.dmnet(warped_image, current_image)

    def complete(self, state: PropagationState, estimate: Estimate, frame: torch.Tensor,
                 mode: str, *, timer: Timer = untimed) -> FrameParts:
        """Warp the logits, run the mode's current-frame branch and fusion."""
        spec = mode_spec(mode)
        if not spec.propagates:
            raise ValueError(f"mode {mode!r} has no non-key frames")
        with timer("warp"):
            propagated = warp(state.logits, estimate.flow)
        m = estimate.distortion_map
        if spec.distortion and m is None:
            raise ValueError(f"mode {mode!r} fuses with the distortion map; estimate() must be "
                             "called with distortion=True")
        cue, fused, m = self.correct(mode, propagated, frame, m, estimate=estimate,
                                     trust=state.trust, timer=timer)
        return FrameParts(propagated=propagated, cue=cue, fused=fused, distortion_map=m,
                          warped_image=estimate.warped_image, trust=state.trust)

    def correct(self, mode: str, propagated: torch.Tensor, frame: torch.Tensor,
                distortion_map: torch.Tensor | None, *, estimate: Estimate | None = None,
                trust: float = 1.0, timer: Timer = untimed,
                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """The mode's current-frame branch on ``frame`` and its fusion with ``propagated``:
        (cue, fused, distortion map); (None, propagated, map) for a mode without a branch.

        With the ``signals`` estimator (``net.refiner``), a mode that fuses with the map
        refines DMNet's ``distortion_map`` from the signals (which needs the ``estimate``'s
        images) and fuses with the refiner's floored weight; the map returned is the refined
        one. Otherwise the map returned is ``distortion_map``."""
        spec = mode_spec(mode)
        if spec.cue is None:
            return None, propagated, distortion_map
        with timer("cfnet"):
            cue = getattr(self.net, spec.cue)(frame)
        with timer("fuse"):
            weight = None
            if spec.distortion:
                images = (None if estimate is None else
                          (estimate.warped_image, estimate.current_image))
                distortion_map, weight = self.fusion_weight(distortion_map, cue, propagated,
                                                            images, trust=trust)
            fused = self.fuse(mode, propagated, cue, weight, trust=trust)
        return cue, fused, distortion_map

    def fuse(self, mode: str, propagated: torch.Tensor, cue: torch.Tensor,
             weight: torch.Tensor | None, *, trust: float = 1.0) -> torch.Tensor:
        """The mode's fusion of ``propagated`` and ``cue`` (``weight``: what Eq. 4 gives the
        cue, for davss). With the ``signals_mix`` estimator the refiner's mixing term is
        added, scaled by the ``trust`` like the refined weight (0: the paper's fusion)."""
        spec = mode_spec(mode)
        fused = getattr(self.net, spec.fusion)(propagated, cue, weight)
        refiner = self.refiner
        if (spec.distortion and refiner is not None and self.fusion_map != "constant"
                and trust > 0.0):
            extra = refiner.mixing(propagated, cue, weight)
            if extra is not None:
                fused = fused + trust * extra
        return fused

    def fusion_weight(self, distortion_map: torch.Tensor, cue: torch.Tensor,
                      propagated: torch.Tensor,
                      images: tuple[torch.Tensor, torch.Tensor] | None, *,
                      trust: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(the distortion map, the weight Eq. 4 gives the cue): DMNet's map and itself
        (or the constant map) for the paper's estimator; for ``signals``, which needs
        ``images`` (the warped key image and the current image at 1/4), the refined map
        and its floored weight, blended with DMNet's map and weight by ``trust`` (1: the
        refined ones alone, 0: DMNet's)."""
        refiner = self.refiner
        if refiner is None or self.fusion_map == "constant":
            return distortion_map, fusion_map(distortion_map, self.fusion_map)
        if images is None:
            raise ValueError("the signals distortion estimator needs the warped key image "
                             "and the current image")
        if trust <= 0.0:
            return distortion_map, distortion_map
        refined = refiner(distortion_signals(distortion_map, cue, propagated, *images))
        weight = refiner.fusion_weight(refined)
        if trust >= 1.0:
            return refined, weight
        return (trust * refined + (1.0 - trust) * distortion_map,
                trust * weight + (1.0 - trust) * distortion_map)

    def propagate(self, state: PropagationState, frame: torch.Tensor, mode: str, *,
                  distortion: bool | None = None, flow: torch.Tensor | None = None,
                  timer: Timer = untimed) -> FrameParts:
        """The whole non-key step of ``mode``; ``distortion`` (default: when the mode needs
        it) also runs DMNet for a mode that does not fuse with it."""
        need = mode_spec(mode).distortion if distortion is None else distortion
        est = self.estimate(state, frame, distortion=need or mode_spec(mode).distortion,
                            flow=flow, timer=timer)
        return self.complete(state, est, frame, mode, timer=timer)
