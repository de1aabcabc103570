"""The four training stages as modules: ``forward(batch)`` -> losses.

- 0 ``SegmenterStep``: DeepLabv3+ cross-entropy on labelled frames.
- 1 ``FlowStep``: FlowNet-S end-point error against true flow at 1/4 resolution.
- 2 ``DMNetStep``: the key frame's logits and 1/4 image are propagated frame by frame from
  F_{t-j} to F_t with the frozen flow; DMNet learns where argmax(propagated) differs from
  argmax(segmenter on F_t).
- 4 ``RefinerStep`` (``model.distortion: signals`` only): the key frame is propagated as in
  stage 2; the refiner (``davss_ros.model.refiner``) and its fusion floor learn from the
  fused output's cross-entropy and a BCE of the refined map; with ``train_cfnet`` CFNet
  learns with them (the cue is then trained against the output it is fused into, as
  Accel's branch is), everything else frozen.
- 3 ``DDSStep``: dual deep supervision of the flow (when learned) and CFNet: F1 -> F2 -> F3
  with two warps (flows computed between those frames directly, as in the paper's
  training), L_P, L_C and L_DGFL on F2 (pseudo label) and F3 (ground truth); and the Accel
  baseline's branch and fusion on the same (detached) propagated logits.

Frozen networks run in eval mode without gradients. Stages 2-4 take the frozen key
segmenter as ``segmenter`` (any module giving logits on the 1/4 grid, e.g. an external
ONNX teacher wrapped by ``davss_ros.train.adapt``); None = the net's own DeepLabv3+.
Every non-key frame goes through the model's own non-key step (``davss_ros.model.step``),
as at inference: the same warps, the same DMNet input, the same fusion; the raw warped
logits are propagated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from davss_ros.model import DavssNet, PropagationState
from davss_ros.model.flow import FlowProvider, LearnedFlow
from davss_ros.model.step import quarter_image

from .config import REFINER_TARGETS
from .losses import (
    DDSSwitches,
    combine_dds,
    distortion_loss,
    distortion_target,
    flow_epe,
    frame_losses,
    pseudo_label,
    quarter_flow,
    segmentation_loss,
)

IMAGE_KEYS = ("image", "frames")


def prepare_batch(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Loader output -> tensors on ``device``: uint8 images to float in [0, 1], labels and
    indices to int64."""
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        if k in IMAGE_KEYS:
            v = v.float().div_(255.0)
        elif k in ("label", "distance", "indices", "frame_ids"):
            v = v.long()
        elif k in ("valid", "has_label"):
            v = v.bool()
        out[k] = v
    return out


def set_trainable(net: DavssNet, names: set[str]) -> list[str]:
    """Train (mode and gradients) the named sub-networks of ``net``, freeze the rest (eval
    mode, no gradients). Returns the names actually trained."""
    trained = []
    for name, child in net.named_children():
        on = name in names
        child.train(on)
        for p in child.parameters():
            p.requires_grad_(on)
        if on:
            trained.append(name)
    return trained


def _scalars(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in out.items()}


class SegmenterStep(nn.Module):
    """Stage 0: cross-entropy of the segmenter's logits (x4 upsampled) on labelled frames."""

    def __init__(self, net: DavssNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = segmentation_loss(self.net.segmenter(batch["image"]), batch["label"])
        return {"loss": loss, "CE": loss.detach()}


class FlowStep(nn.Module):
    """Stage 1: end-point error of FlowNet-S at 1/4 resolution on the valid pixels."""

    def __init__(self, net: DavssNet, valid_fraction: float = 0.75) -> None:
        super().__init__()
        if net.flownet is None:
            raise ValueError("stage 1 needs a flow network (model.flow.provider: learned)")
        self.net = net
        self.valid_fraction = valid_fraction

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        pred = self.net.flownet(frames[:, 0], frames[:, 1])
        target, valid = quarter_flow(batch["flow"], batch["valid"], self.valid_fraction)
        epe = flow_epe(pred, target, valid)
        return {"loss": epe, "EPE": epe.detach(), "valid": valid.float().mean()}


class LogitCache:
    """What the frozen segmenter makes of each (un-augmented) training frame, computed once.

    Stages 2 and 3 run the frozen segmenter on key frames, current frames and F2 again and
    again; without augmentation the logits of a frame never change, so they are kept
    (float32, on the training device: about 4 x C x H/4 x W/4 bytes per frame)."""

    def __init__(self) -> None:
        self.store: dict[int, torch.Tensor] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def __call__(self, segmenter: nn.Module, frames: torch.Tensor,
                 ids: torch.Tensor) -> torch.Tensor:
        keys = [int(i) for i in ids.tolist()]
        todo = sorted({k for k in keys if k not in self.store})
        if todo:
            first = {k: keys.index(k) for k in todo}
            out = segmenter(frames[[first[k] for k in todo]])
            for k, logits in zip(todo, out, strict=True):
                self.store[k] = logits
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return torch.stack([self.store[k] for k in keys])


def _segment(net: DavssNet, frames: torch.Tensor, ids: torch.Tensor | None,
             cache: LogitCache | None, segmenter: nn.Module | None = None) -> torch.Tensor:
    seg = net.segmenter if segmenter is None else segmenter
    if cache is None or ids is None:
        return seg(frames)
    return cache(seg, frames, ids)


@torch.no_grad()
def propagate_chain(net: DavssNet, flow: FlowProvider, frames: torch.Tensor,
                    distance: torch.Tensor, *, frame_ids: torch.Tensor | None = None,
                    cache: LogitCache | None = None, segmenter: nn.Module | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Propagate each sample's key frame to the last frame, one frame at a time, by the
    model's non-key step.

    ``frames`` is N x L x 3 x H x W with sample b's chain in its last ``distance[b] + 1``
    slots (key frame at L - 1 - distance[b]). Returns the propagated logits and key image
    (1/4 resolution) at the last frame, and the segmenter's logits on the last frame.
    With a ``cache``, the segmenter's logits come from it by ``frame_ids`` (N x L).
    """
    n, length = frames.shape[:2]
    if distance.min() < 1 or distance.max() > length - 1:
        raise ValueError(f"distances must lie in 1..{length - 1}, got {distance.tolist()}")
    start = (length - 1) - distance
    rows = torch.arange(n, device=frames.device)
    keys = frames[rows, start]
    ids = None if frame_ids is None else torch.cat([frame_ids[rows, start], frame_ids[:, -1]])
    logits = _segment(net, torch.cat([keys, frames[:, -1]]), ids, cache, segmenter)
    state = PropagationState.from_key(keys, logits[:n].clone())
    step = net.non_key_step(flow)
    for s in range(1, length):
        active = torch.nonzero(start < s).flatten()
        if active.numel() == 0:
            continue
        sub = PropagationState(frame=frames[active, s - 1], logits=state.logits[active],
                               image=state.image[active])
        parts = step.propagate(sub, frames[active, s], "dff")
        state.logits[active] = parts.propagated
        state.image[active] = parts.warped_image
    return state.logits, state.image, logits[n:]


class DMNetStep(nn.Module):
    """Stage 2: BCE of DMNet's map against argmax(propagated) != argmax(current)."""

    def __init__(self, net: DavssNet, flow: FlowProvider, *,
                 cache: LogitCache | None = None, segmenter: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.flow = flow
        self.cache = cache
        self._segmenter = [segmenter]  # a list: not a sub-module (no parameters to train)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        prop, prop_image, current_logits = propagate_chain(
            self.net, self.flow, frames, batch["distance"], frame_ids=batch.get("frame_ids"),
            cache=self.cache, segmenter=self._segmenter[0])
        target = distortion_target(prop, current_logits)
        m = self.net.non_key_step(self.flow).distortion(prop_image,
                                                        quarter_image(frames[:, -1]))
        loss = distortion_loss(m, target)
        return {"loss": loss, "BCE": loss.detach(), "target_mean": target.mean(),
                "M_mean": m.detach().mean()}


class DDSStep(nn.Module):
    """Stage 3: dual deep supervision of flow (learned) and CFNet, plus the Accel branch.

    ``batch['frames']`` is N x 3 x 3 x H x W (F1 key, F2, F3), ``batch['label']`` F3's
    ground truth. Returns ``L_P``, ``L_C``, ``L_DGFL`` (when on), ``total`` = their mean
    (Eq. 7), ``L_accel`` (when on) and ``loss`` = total + L_accel (disjoint parameters).
    """

    def __init__(self, net: DavssNet, flow: FlowProvider, *,
                 switches: DDSSwitches | None = None, accel: bool = True,
                 train_flow: bool = True, cache: LogitCache | None = None,
                 segmenter: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.flow = flow
        self.cache = cache
        self._segmenter = [segmenter]
        self.switches = switches or DDSSwitches()
        self.accel = accel
        self.train_flow = train_flow and isinstance(flow, LearnedFlow)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.losses(batch)
        loss = out["total"] + out["L_accel"] if self.accel else out["total"]
        out = _scalars(out)
        out["loss"] = loss
        return out

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The terms with their graphs (``forward`` detaches all but ``loss``)."""
        net, sw = self.net, self.switches
        frames, label = batch["frames"], batch["label"]
        f1, f2, f3 = frames.unbind(1)
        size = label.shape[-2:]
        ids = batch.get("frame_ids")
        with torch.no_grad():
            if sw.dds:
                logits = _segment(net, torch.cat([f1, f2]),
                                  None if ids is None else torch.cat([ids[:, 0], ids[:, 1]]),
                                  self.cache, self._segmenter[0])
                key, on_f2 = logits.chunk(2)
                steps = [(f2, f1, pseudo_label(on_f2, size)), (f3, f2, label)]
            else:
                key = _segment(net, f1, None if ids is None else ids[:, 0], self.cache,
                               self._segmenter[0])
                steps = [(f3, f1, label)]
        # CFNet learns against DMNet's map (the paper's); a signals refiner comes after, in
        # stage 4, as it needs a trained cue.
        step = net.non_key_step(self.flow, fusion_map=None if sw.dgfc else "constant",
                                refine=False)
        state = PropagationState.from_key(f1, key)
        terms, accel_terms = [], []
        for current, previous, target in steps:
            with torch.set_grad_enabled(self.train_flow and torch.is_grad_enabled()):
                flow = self.flow(current, previous)
            parts = step.propagate(state, current, "davss", flow=flow)
            terms.append(frame_losses(parts, target, sw))
            if self.accel:
                _, fused, _ = step.correct("accel", parts.propagated.detach(), current, None)
                accel_terms.append(segmentation_loss(fused, target))
            state = parts.next_state(current)
        out = combine_dds(terms)
        if self.accel:
            out["L_accel"] = torch.stack(accel_terms).mean()
        out["M_mean"] = parts.distortion_map.detach().mean()
        return out


class RefinerStep(nn.Module):
    """Stage 4: the ``signals`` distortion estimator and its fusion floor.

    Chains of 1..max_distance frames (stage 2's data) are propagated by the frozen flow; on
    the last frame the model's own non-key step (frozen DMNet, CFNet frozen unless
    ``train_cfnet``, the refiner with gradients) gives the refined map M_s and the fused
    logits. Loss: cross-entropy of the fused logits against the target (the frame's label
    where the batch has one, else the segmenter's pseudo label: the same loss teaches from a
    key segmenter alone) plus
    ``bce_weight`` x BCE of M_s against argmax(propagated) != argmax(segmenter), the paper's
    distortion target.

    ``train_cfnet``: CFNet is trained too, through the fused output, plus ``cue_weight`` x
    the cross-entropy of the cue alone against the same target (the cue stays a segmenter
    of its own: its agreement with the key segmenter is the cue trust,
    :func:`davss_ros.model.refiner.cue_trust`).
    """

    def __init__(self, net: DavssNet, flow: FlowProvider, *, target: str = "auto",
                 bce_weight: float = 1.0, cache: LogitCache | None = None,
                 segmenter: nn.Module | None = None, train_cfnet: bool = False,
                 cue_weight: float = 0.5) -> None:
        super().__init__()
        if net.refiner is None:
            raise ValueError("stage 4 trains the signals distortion estimator; the model has "
                             "none (model.distortion: paper)")
        if target not in REFINER_TARGETS:
            raise ValueError(f"target must be one of {', '.join(REFINER_TARGETS)}, got "
                             f"{target!r}")
        self.net, self.flow, self.cache = net, flow, cache
        self.target, self.bce_weight = target, float(bce_weight)
        self.train_cfnet, self.cue_weight = bool(train_cfnet), float(cue_weight)
        self._segmenter = [segmenter]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        current = frames[:, -1]
        prop, prop_image, current_logits = propagate_chain(
            self.net, self.flow, frames, batch["distance"], frame_ids=batch.get("frame_ids"),
            cache=self.cache, segmenter=self._segmenter[0])
        step = self.net.non_key_step(self.flow)
        current_image = quarter_image(current)
        with torch.no_grad():
            m = step.distortion(prop_image, current_image)
        with torch.set_grad_enabled(self.train_cfnet and torch.is_grad_enabled()):
            cue = self.net.cfnet(current)
        refined, weight = step.fusion_weight(m, cue, prop, (prop_image, current_image))
        fused = step.fuse("davss", prop, cue, weight)
        size = current.shape[-2:]
        target = pseudo_label(current_logits, size)
        if self.target != "segmenter" and "label" in batch:
            has = batch["has_label"].view(-1, 1, 1)
            target = torch.where(has, batch["label"], target)
        ce = segmentation_loss(fused, target)
        bce = distortion_loss(refined, distortion_target(prop, current_logits))
        loss = ce + self.bce_weight * bce
        out = {"CE": ce.detach(), "BCE": bce.detach(), "M_mean": refined.detach().mean(),
               "floor": self.net.refiner.floor.detach(),
               "slope": self.net.refiner.slope.detach()}
        if self.train_cfnet:
            cue_ce = segmentation_loss(cue, target)
            loss = loss + self.cue_weight * cue_ce
            out["CE_cue"] = cue_ce.detach()
        out["loss"] = loss
        return out

