"""``train``: the stages in order, each resumable, into one output folder.

Output folder (written by rank 0)::

    stageN.pt         the networks after stage N (davss_ros checkpoint format; meta says
                      stage, iteration, finished, and a fingerprint of the settings)
    stageN.state.pt   what resuming stage N needs besides the weights (iteration,
                      optimiser, random generators), kept until the stage finishes
    stageN.csv        iteration, losses, lr, time, throughput
    final.pt          the trained model, loadable by VideoSegmenter(checkpoint=...)
    train_config.yaml the configuration of the run

A finished stage whose fingerprint (its settings and those of the stages before it) still
matches is skipped on a re-run; an unfinished one resumes from its snapshot; a stage whose
settings changed is retrained, and so are the stages after it. ``force`` retrains all.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn import functional as F

from davss_ros.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from davss_ros.classes import default_class_names, default_palette
from davss_ros.config import DavssConfig
from davss_ros.model import DavssNet, build_davss_net, build_flow

from .config import STAGES, TrainConfig
from .data import (
    Augment,
    DistortionClips,
    LabelledFrames,
    SnippetSource,
    SyntheticFlowPairs,
    TripletClips,
    open_source,
)
from .engine import (
    Context,
    StepBudget,
    StopRequested,
    load_state,
    save_state,
    seed_everything,
    stage_seed,
    train_loop,
)
from .losses import DDSSwitches
from .stages import (
    DDSStep,
    DMNetStep,
    FlowStep,
    LogitCache,
    RefinerStep,
    SegmenterStep,
    prepare_batch,
    set_trainable,
)

STAGE_NAMES = {0: "segmenter", 1: "flow network", 2: "DMNet",
               3: "flow + CFNet (dual deep supervision) and Accel branch",
               4: "signals distortion estimator"}


def label_table(cfg: TrainConfig) -> tuple[list[str], list[tuple[int, int, int]]]:
    n = cfg.model.model.num_classes
    if cfg.dataset.kind == "camvid":
        from davss_ros.data.labels import CAMVID_CLASSES, CAMVID_PALETTE

        if n != len(CAMVID_CLASSES):
            raise ValueError(f"CamVid has {len(CAMVID_CLASSES)} classes, model.num_classes is "
                             f"{n}")
        return list(CAMVID_CLASSES), list(CAMVID_PALETTE)
    return default_class_names(n), default_palette(n)


def prepare_data(cfg: TrainConfig, ctx: Context) -> None:
    """Render the synthetic splits that ``dataset.generate`` asks for and the root lacks
    (rank 0; the others wait). A marker file records what was rendered; a root rendered with
    other settings is an error rather than silently mixed."""
    gen = cfg.dataset.generate
    if cfg.dataset.kind != "synthetic" or gen is None:
        return
    root = Path(cfg.dataset.root)
    if ctx.is_main:
        from davss_ros.data.synthetic import write_cityscapes_layout

        for split, count in gen.clips.items():
            marker = root / f".generated_{split}.json"
            want = {"clips": int(count), "height": gen.height, "width": gen.width,
                    "frames": gen.frames, "seed": gen.seed}
            if marker.is_file():
                have = json.loads(marker.read_text())
                if have != want:
                    raise ValueError(f"{marker}: split {split!r} was rendered with {have}, the "
                                     f"config asks for {want}; use another dataset.root or "
                                     f"delete that folder")
                continue
            t0 = time.perf_counter()
            ctx.log(f"rendering {count} synthetic {split} clips ({gen.height}x{gen.width}, "
                    f"{gen.frames} frames) into {root}")
            write_cityscapes_layout(root, split, int(count), gen.height, gen.width,
                                    seed=gen.seed, frames=gen.frames, workers=gen.workers,
                                    progress=ctx.progress)
            marker.write_text(json.dumps(want))
            ctx.log(f"  {split}: {time.perf_counter() - t0:.1f} s")
    ctx.barrier()


def _source(cfg: TrainConfig, split: str) -> SnippetSource:
    d, m = cfg.dataset, cfg.model.model
    size = tuple(d.resize) if d.resize is not None else (m.input_height, m.input_width)
    length = d.snippet_length or (d.generate.frames if d.generate is not None else 30)
    return open_source(d.kind, d.root, split, size=size, cache=d.cache,
                       snippet_length=length, resize_frames=d.resize_frames,
                       max_distance=max(cfg.stage2.max_distance, cfg.stage3.max_distance))


def _augment(stage_cfg) -> Augment:
    return Augment(crop=stage_cfg.crop, flip=stage_cfg.flip, scale=tuple(stage_cfg.scale))


class Trainer:
    """Runs the stages of one configuration into ``out``."""

    def __init__(self, cfg: TrainConfig, out: str | Path, ctx: Context, *,
                 force: bool = False, from_stage: int | None = None,
                 stop_after: int | None = None, init: str | Path | None = None,
                 reuse: str | Path | None = None,
                 key_segmenter: torch.nn.Module | None = None,
                 after_snapshot: Callable[[int, int, DavssNet], None] | None = None) -> None:
        """``key_segmenter``: the frozen segmenter of stages 2-4 in place of the net's own
        (``davss adapt``'s teacher); the net's segmenter weights are kept and saved as they
        are. ``after_snapshot(stage, iteration, net)``: called on rank 0 after every
        resumable snapshot of a stage (``davss adapt`` validates there)."""
        self.key_segmenter = key_segmenter
        self.after_snapshot = after_snapshot
        self.cfg, self.out, self.ctx = cfg, Path(out), ctx
        self.reuse = Path(reuse) if reuse is not None else None
        self.force, self.from_stage = force, from_stage
        self.budget = StepBudget(stop_after)
        self.init = init
        self.summary: dict[str, Any] = {}
        self.net: DavssNet | None = None  # the networks, once run() has built them

    # -- the whole run ------------------------------------------------------------------
    def run(self) -> Path | None:
        """Train; returns the final checkpoint's path, or None when ``stop_after`` ran out."""
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "train_config.yaml", "w") as f:
                yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
        prepare_data(cfg, ctx)
        seed_everything(cfg.seed)  # same initial weights on every rank
        net = self.net = build_davss_net(cfg.model.model)
        if self.init is not None:
            load_weights(net, load_checkpoint(self.init))
        net.to(ctx.device)
        pending: Checkpoint | None = None  # weights of the last skipped stage, loaded lazily
        rerun = self.force
        for n in STAGES:
            fp = cfg.fingerprint(n)
            ck_path, st_path = self._paths(n)
            if self.from_stage is not None and n >= self.from_stage:
                rerun = True
            existing = None
            if not rerun and not ck_path.is_file():
                self._take_reused(n, fp)
            if not rerun and ck_path.is_file():
                existing = load_checkpoint(ck_path)
                if existing.meta.get("fingerprint") != fp:
                    ctx.log(f"stage {n}: settings changed since {ck_path} was written; "
                            f"retraining stage {n} and the stages after it")
                    existing, rerun = None, True
            if existing is not None and existing.meta.get("finished"):
                ctx.log(f"stage {n} ({self._name(n)}): finished earlier "
                        f"({existing.meta.get('iteration')} iterations), skipped")
                self.summary[str(n)] = existing.meta.get("summary", {})
                pending = existing
                continue
            rerun = True  # everything after a stage that runs now runs too
            if pending is not None:
                _load_stage(net, pending)
                pending = None
            resume = None
            if existing is not None and st_path.is_file():
                state = load_state(st_path)
                if state.get("fingerprint") == fp:
                    _load_stage(net, existing)
                    resume = state
                    ctx.log(f"stage {n}: resuming at iteration {state['iteration']} from "
                            f"{st_path}")
            try:
                self._run_stage(n, net, fp, resume)
            except StopRequested as stop:
                ctx.log(f"{stop}; re-run the same command to continue")
                return None
        if pending is not None:
            _load_stage(net, pending)
        return self._write_final(net)

    def _take_reused(self, n: int, fp: str) -> None:
        """Copy stage ``n`` from the ``reuse`` folder when it finished there with the same
        fingerprint (same settings for this stage and those before it), so runs that differ
        in later stages only (the ablations) share the earlier ones instead of retraining."""
        if self.reuse is None:
            return
        src = self.reuse / f"stage{n}.pt"
        if not src.is_file():
            return
        try:
            meta = load_checkpoint(src).meta
        except CheckpointError as exc:
            self.ctx.log(f"stage {n}: not reusing {src}: {exc}")
            return
        if meta.get("fingerprint") != fp or not meta.get("finished"):
            self.ctx.log(f"stage {n}: not reusing {src} (other settings, or unfinished)")
            return
        if self.ctx.is_main:
            shutil.copyfile(src, self._paths(n)[0])
            self.ctx.log(f"stage {n}: reusing {src}")
        self.ctx.barrier()

    def _name(self, n: int) -> str:
        if n == 3 and not self.cfg.stage3.accel:
            return "flow + CFNet (dual deep supervision)"
        return STAGE_NAMES[n]

    def _paths(self, n: int) -> tuple[Path, Path]:
        return self.out / f"stage{n}.pt", self.out / f"stage{n}.state.pt"

    # -- one stage ----------------------------------------------------------------------
    def _run_stage(self, n: int, net: DavssNet, fp: str, resume: dict | None) -> None:
        cfg, ctx = self.cfg, self.ctx
        scfg = cfg.stage(n)
        skip = None
        if not scfg.enabled:
            skip = "disabled in the configuration"
        elif n == 1 and net.flownet is None:
            skip = f"flow provider is {cfg.model.model.flow.provider!r}, no flow network"
        elif n == 4 and net.refiner is None:
            skip = "model.distortion is paper (DMNet alone)"
        if skip is not None:
            ctx.log(f"stage {n} ({self._name(n)}): skipped, {skip}")
            self.summary[str(n)] = {"skipped": skip}
            self._save_stage(n, net, fp, iteration=0, finished=True,
                             summary=self.summary[str(n)])
            return
        ctx.log(f"stage {n} ({self._name(n)}): {scfg.iterations} iterations, batch "
                f"{scfg.batch_size}")
        seed_everything(stage_seed(cfg.seed, n, ctx.rank))
        module, dataset, groups = self._build(n, net)
        ck_path, st_path = self._paths(n)

        def snapshot(iteration: int, optimizer: torch.optim.Optimizer) -> None:
            if not ctx.is_main:
                return
            self._save_stage(n, net, fp, iteration=iteration, finished=False)
            save_state(st_path, iteration=iteration, optimizer=optimizer, fingerprint=fp)
            if self.after_snapshot is not None:
                self.after_snapshot(n, iteration, net)

        result = train_loop(
            ctx, stage=n, cfg=scfg, module=module, dataset=dataset, groups=groups,
            prepare=lambda b: prepare_batch(b, ctx.device),
            seed=stage_seed(cfg.seed, n, 0), num_workers=cfg.num_workers,
            snapshot=snapshot, resume=resume,
            csv_path=self.out / f"stage{n}.csv" if ctx.is_main else None, budget=self.budget)
        summary = {"iterations": result.iteration, "seconds": round(result.seconds, 1),
                   "last_losses": {k: round(v, 5) for k, v in result.last.items()}}
        if n == 0 and cfg.stage0.val_images > 0 and ctx.is_main:
            miou = self._validate_segmenter(net)
            if miou is not None:
                summary["val_miou"] = round(miou * 100.0, 2)
                ctx.log(f"stage 0: segmenter mIoU on {cfg.stage0.val_images} val frames: "
                        f"{miou * 100.0:.2f}")
        self.summary[str(n)] = summary
        ctx.barrier()
        if ctx.is_main:
            self._save_stage(n, net, fp, iteration=result.iteration, finished=True,
                             summary=summary)
            if st_path.is_file():
                st_path.unlink()
        ctx.barrier()
        ctx.log(f"stage {n}: done in {result.seconds:.0f} s; last losses "
                + ", ".join(f"{k} {v:.4f}" for k, v in result.last.items()))

    def _build(self, n: int, net: DavssNet):
        cfg = self.cfg
        scfg = cfg.stage(n)
        seed = stage_seed(cfg.seed, n, 0)
        learned = net.flownet is not None
        if n == 0:
            set_trainable(net, {"segmenter"})
            dataset = LabelledFrames(_source(cfg, cfg.dataset.train_split),
                                     augment=_augment(scfg), seed=seed,
                                     labelled=cfg.stage0.labelled)
            return SegmenterStep(net), dataset, [{"params": _params(net.segmenter),
                                                  "name": "segmenter"}]
        if n == 1:
            set_trainable(net, {"flownet"})
            s1 = cfg.stage1
            dataset = SyntheticFlowPairs(max(64, s1.batch_size * 50), height=s1.pair_height,
                                         width=s1.pair_width, augment=_augment(scfg),
                                         seed=s1.pair_seed)
            return FlowStep(net, s1.valid_fraction), dataset, [
                {"params": _params(net.flownet), "name": "flownet"}]
        flow = build_flow(cfg.model.model.flow, net.flownet)
        source = _source(cfg, cfg.dataset.train_split)
        if n == 2:
            set_trainable(net, {"dmnet"})
            dataset = DistortionClips(source, max_distance=cfg.stage2.max_distance,
                                      augment=_augment(scfg), seed=seed)
            cache = LogitCache() if cfg.stage2.cache_logits else None
            return DMNetStep(net, flow, cache=cache, segmenter=self.key_segmenter), dataset, [
                {"params": _params(net.dmnet), "name": "dmnet"}]
        if n == 4:
            s4 = cfg.stage4
            set_trainable(net, {"refiner", "cfnet"} if s4.train_cfnet else {"refiner"})
            dataset = DistortionClips(source, max_distance=s4.max_distance,
                                      augment=_augment(scfg), seed=seed,
                                      labels=s4.target != "segmenter")
            module = RefinerStep(net, flow, target=s4.target, bce_weight=s4.bce_weight,
                                 cache=LogitCache() if s4.cache_logits else None,
                                 segmenter=self.key_segmenter, train_cfnet=s4.train_cfnet,
                                 cue_weight=s4.cue_weight)
            groups = [{"params": _params(net.refiner), "name": "refiner"}]
            if s4.train_cfnet:
                groups.append({"params": _params(net.cfnet), "lr": s4.cfnet_lr,
                               "name": "cfnet"})
            return module, dataset, groups
        s3 = cfg.stage3
        train_flow = learned and s3.train_flow
        names = {"cfnet"} | ({"flownet"} if train_flow else set()) | (
            {"accel_cfnet", "accel_fusion"} if s3.accel else set())
        set_trainable(net, names)
        dataset = TripletClips(source, min_distance=s3.min_distance,
                               max_distance=s3.max_distance, augment=_augment(scfg), seed=seed)
        switches = DDSSwitches(dds=s3.dds, dgfl=s3.dgfl, dgfc=s3.dgfc, dgfl_norm=s3.dgfl_norm)
        accel_lr = s3.accel_lr if s3.accel_lr is not None else s3.cfnet_lr
        groups = [{"params": _params(net.cfnet), "lr": s3.cfnet_lr, "name": "cfnet"}]
        if train_flow:
            groups.append({"params": _params(net.flownet), "lr": s3.lr, "name": "flownet"})
        if s3.accel:
            groups.append({"params": _params(net.accel_cfnet) + _params(net.accel_fusion),
                           "lr": accel_lr, "name": "accel"})
        module = DDSStep(net, flow, switches=switches, accel=s3.accel, train_flow=train_flow,
                         cache=LogitCache() if s3.cache_logits else None,
                         segmenter=self.key_segmenter)
        return module, dataset, groups

    def _save_stage(self, n: int, net: DavssNet, fp: str, *, iteration: int, finished: bool,
                    summary: dict | None = None) -> None:
        if not self.ctx.is_main:
            return
        names, palette = label_table(self.cfg)
        meta = {"stage": n, "iteration": int(iteration), "finished": bool(finished),
                "fingerprint": fp, "summary": summary or {}}
        save_checkpoint(self._paths(n)[0], config=self.cfg.model, state_dict=_cpu(net),
                        class_names=names, palette=palette, meta=meta)

    def _write_final(self, net: DavssNet) -> Path:
        path = self.out / "final.pt"
        if self.ctx.is_main:
            names, palette = label_table(self.cfg)
            meta = {"trained_by": "davss train", "config_file": self.cfg.source,
                    "train_config": self.cfg.to_dict(), "stages": self.summary}
            save_checkpoint(path, config=self._inference_config(), state_dict=_cpu(net),
                            class_names=names, palette=palette, meta=meta)
            self.ctx.log(f"wrote {path}")
        self.ctx.barrier()
        return path

    def _inference_config(self) -> DavssConfig:
        """The model configuration the final checkpoint runs with: that of the run, except
        that a CFNet trained against a constant fusion map (stage 3 ``dgfc: false``, the
        "without DGFC" ablation) must also be fused with that constant at inference."""
        s3 = self.cfg.stage3
        if not (s3.enabled and not s3.dgfc):
            return self.cfg.model
        config = copy.deepcopy(self.cfg.model)
        config.model.distortion_map = "constant"
        return config

    @torch.no_grad()
    def _validate_segmenter(self, net: DavssNet) -> float | None:
        """Per-frame mIoU of the segmenter on the first val annotated frames (a sanity check
        during training; ``davss eval`` is the evaluation)."""
        cfg = self.cfg
        try:
            source = _source(cfg, cfg.dataset.val_split)
        except FileNotFoundError as exc:
            self.ctx.log(f"stage 0: no validation ({exc})")
            return None
        k = cfg.model.model.num_classes
        conf = np.zeros((k, k), np.int64)
        was_training = net.segmenter.training
        net.segmenter.eval()
        for i in range(min(len(source), cfg.stage0.val_images)):
            img = source.frame(i, source.annotated_index)
            lab = source.label(i, source.annotated_index)
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).to(self.ctx.device)
            logits = F.interpolate(net.segmenter(x), size=lab.shape, mode="bilinear",
                                   align_corners=False)
            pred = logits.argmax(1)[0].cpu().numpy()
            valid = lab < k
            conf += np.bincount(lab[valid].astype(np.int64) * k + pred[valid],
                                minlength=k * k).reshape(k, k)
        net.segmenter.train(was_training)
        inter = np.diag(conf).astype(np.float64)
        union = conf.sum(0) + conf.sum(1) - np.diag(conf)
        present = union > 0
        return float((inter[present] / union[present]).mean()) if present.any() else None


def _load_stage(net: DavssNet, checkpoint: Checkpoint) -> None:
    """A stage's weights into ``net``. The refiner is stage 4's: stages 0-3 do not train it
    and their fingerprints do not depend on the distortion estimator, so ``--reuse`` shares
    them between runs with another estimator (paper, signals, signals_mix) or none. The
    refiner tensors of a stage 0-3 file (its initial weights, in a refined run's files) are
    left out, and the refiner of ``net`` keeps its own."""
    if int(checkpoint.meta.get("stage", 4)) < 4:
        kept = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith("refiner.")}
        checkpoint = dataclasses.replace(checkpoint, state_dict=kept)
    optional = ("refiner.",) if net.refiner is not None else ()
    load_weights(net, checkpoint, optional=optional)


def _params(module: torch.nn.Module | None) -> list[torch.nn.Parameter]:
    return [] if module is None else [p for p in module.parameters() if p.requires_grad]


def _cpu(net: DavssNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}
