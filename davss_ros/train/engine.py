"""The machinery every stage shares: processes, seeds, sampling, optimisers, the loop,
progress and resumable snapshots.

Distributed runs start under ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the
environment): gloo on CPU, NCCL on CUDA, one process per device; only rank 0 writes files
and shows progress. A stage is a module whose ``forward(batch)`` returns its losses; the
loop wraps it in DistributedDataParallel when there is more than one process.
"""

from __future__ import annotations

import csv
import ctypes
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ..threads import set_threads
from .config import StageConfig

# ------------------------------------------------------------------------ processes

# glibc's mallopt parameters (malloc.h); no Python library exposes them, hence ctypes.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the
    kernel; returns whether it could (False off glibc).

    A CPU training step allocates and frees buffers of tens of megabytes (batch 8 at
    256 x 512). By default glibc maps each one afresh and unmaps it when freed, so every
    step faults its pages in again: with one thread, a stage-3 training spent about 45% of
    its CPU time in the kernel, and ran at 0.09 iterations/s against 0.19 with freed memory
    kept (two trainings side by side on 2 cores). The price is a resident size that stays
    at the training's peak (3.8 GB against 1.7 GB for that stage). Dataloader workers
    forked afterwards inherit the setting.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # no mmap for large blocks (the heap serves them, and reuses them once freed), and no
    # trimming of the heap's free top below 2 GiB
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))



@dataclass
class Context:
    """Where this process runs and what it may do."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    progress: bool = True  # show bars (rank 0 only)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def log(self, message: str) -> None:
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(message)


def setup_context(device: str = "auto", threads: int | None = None,
                  progress: bool = True) -> Context:
    """Join the process group when started by torchrun, pick the device, set threads; on
    CPU keep freed memory for reuse (:func:`keep_freed_memory`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device == "auto":
        use_cuda = torch.cuda.is_available()
    elif device == "cpu":
        use_cuda = False
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here")
        use_cuda = True
    else:
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    if use_cuda:
        index = local_rank if world > 1 or device in ("auto", "cuda") else \
            torch.device(device).index or 0
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    n_threads = threads or max(1, (os.cpu_count() or 1) // max(1, local_world))
    # torch's and OpenCV's (DIS flow, resizes): OpenCV alone would take every core
    set_threads(n_threads)
    if not use_cuda:
        keep_freed_memory()
    return Context(device=dev, rank=rank, world=world, local_rank=local_rank,
                   progress=progress and rank == 0)


def teardown_context(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_seed(base: int, stage: int, rank: int) -> int:
    """Each stage and rank its own stream, independent of which stages ran before."""
    return int(base) * 1000 + 101 * int(stage) + 7919 * int(rank)


# ------------------------------------------------------------------------- sampling


class ResumableSampler(DistributedSampler):
    """DistributedSampler (one shard per process, reshuffled per epoch) that yields
    ``(index, (epoch, position))`` keys for the seeded data sets, and can start an epoch
    part-way (``set_start``) when a run resumes."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int]]]:
        indices = list(super().__iter__())
        for pos in range(self.start, len(indices)):
            yield indices[pos], (self.epoch, pos * self.num_replicas + self.rank)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


# ----------------------------------------------------------------------- optimiser


def make_optimizer(cfg: StageConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over parameter groups; each group may carry its own ``lr``
    (kept as ``base_lr`` for the schedule) and a ``name``."""
    groups = [dict(g) for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters in this stage")
    for g in groups:
        g.setdefault("lr", cfg.lr)
        g["base_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(cfg: StageConfig, iteration: int) -> float:
    """The schedule's multiplier of the base learning rate at ``iteration`` (0-based)."""
    n = cfg.iterations
    if cfg.warmup and iteration < cfg.warmup:
        warm = (iteration + 1) / cfg.warmup
    else:
        warm = 1.0
    if cfg.lr_schedule == "poly":
        return warm * (1.0 - min(iteration, n - 1) / n) ** cfg.poly_power
    if cfg.lr_schedule == "step_half":
        return warm * (1.0 if iteration < n / 2 else 0.1)
    return warm


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


# ------------------------------------------------------------------- snapshot state


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _plain_python_state(random.getstate()),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def save_state(path: Path, *, iteration: int, optimizer: torch.optim.Optimizer,
               fingerprint: str, extra: dict[str, Any] | None = None) -> None:
    """The resumable part of a stage that the model checkpoint does not hold: iteration,
    optimiser, random generators (plain data and tensors: ``torch.load(weights_only=True)``)."""
    payload = {"iteration": int(iteration), "optimizer": optimizer.state_dict(),
               "rng": rng_state(), "fingerprint": fingerprint, "extra": dict(extra or {})}
    tmp = path.with_name(path.name + ".part")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: name it
        raise ValueError(f"{path}: unreadable training state ({type(exc).__name__}: {exc})") \
            from exc


# -------------------------------------------------------------------------- logging


class StageLog:
    """A tqdm bar with losses and throughput, and a CSV row every ``log_every`` iterations
    (rank 0 only; the logged losses are averaged over the processes)."""

    def __init__(self, ctx: Context, path: Path | None, stage: int, total: int, start: int,
                 batch_size: int, log_every: int) -> None:
        self.ctx, self.path, self.total = ctx, path, total
        self.batch_size, self.log_every = batch_size, log_every
        self.sums: dict[str, float] = {}
        self.count = 0
        self.t_start = time.perf_counter()
        self.t_window = self.t_start
        self.n_window = 0
        self.last: dict[str, float] = {}
        self.bar = None
        if ctx.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=f"stage {stage}", unit="it",
                            disable=not ctx.progress, dynamic_ncols=True)
        self._writer = None
        self._file = None
        self._fields: list[str] | None = None

    def update(self, iteration: int, scalars: dict[str, float], lr: float) -> None:
        for k, v in scalars.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        self.n_window += 1
        if self.bar is not None:
            self.bar.update(1)
        if iteration % self.log_every and iteration != self.total:
            return
        means = {k: v / self.count for k, v in self.sums.items()}
        if self.ctx.distributed:
            t = torch.tensor([means[k] for k in sorted(means)], dtype=torch.float64,
                             device=self.ctx.device if self.ctx.device.type == "cuda"
                             else "cpu")
            dist.all_reduce(t)
            means = dict(zip(sorted(means), (t / self.ctx.world).tolist(), strict=True))
        now = time.perf_counter()
        it_s = self.n_window / max(now - self.t_window, 1e-9)
        self.t_window, self.n_window = now, 0
        self.sums, self.count = {}, 0
        self.last = dict(means)
        if not self.ctx.is_main:
            return
        row = {"iteration": iteration, **{k: round(v, 6) for k, v in means.items()},
               "lr": lr, "time": round(now - self.t_start, 3), "it_per_s": round(it_s, 4),
               "img_per_s": round(it_s * self.batch_size, 3)}
        if self.bar is not None:
            shown = {k: f"{v:.4f}" for k, v in means.items()}
            shown.update(lr=f"{lr:.2e}", img_s=f"{it_s * self.batch_size:.1f}")
            self.bar.set_postfix(shown, refresh=False)
        if self.path is not None:
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
            self._fields = list(row)
            if not new:  # keep the columns of the file being continued
                with open(self.path) as f:
                    header = f.readline().strip().split(",")
                if header and header != [""]:
                    self._fields = header
            self._writer = csv.DictWriter(self._file, fieldnames=self._fields,
                                          extrasaction="ignore")
            if new:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._file is not None:
            self._file.close()


# ----------------------------------------------------------------------------- loop


class StopRequested(Exception):
    """The run's step budget (``--stop-after``) is spent; the stage stays resumable."""


@dataclass
class LoopResult:
    iteration: int
    last: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class StepBudget:
    """Optimizer steps this invocation may still take (None = unlimited)."""

    remaining: int | None = None

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def train_loop(ctx: Context, *, stage: int, cfg: StageConfig, module: nn.Module,
               dataset: Dataset, groups: list[dict[str, Any]],
               prepare: Callable[[dict[str, Any]], dict[str, Any]], seed: int,
               num_workers: int, snapshot: Callable[[int, torch.optim.Optimizer], None],
               resume: dict[str, Any] | None, csv_path: Path | None,
               budget: StepBudget) -> LoopResult:
    """Run ``cfg.iterations`` optimiser steps of ``module`` (forward(batch) -> dict with
    'loss' to minimise and other scalars to log), snapshotting every
    ``cfg.checkpoint_every`` steps, at the end, on Ctrl-C and when the budget runs out."""
    if cfg.batch_size % ctx.world:
        raise ValueError(f"stages.{stage}.batch_size {cfg.batch_size} is not divisible by "
                         f"the {ctx.world} processes")
    per_rank = cfg.batch_size // ctx.world
    model: nn.Module = module
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = make_optimizer(cfg, groups)
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        start = int(resume["iteration"])
    sampler = ResumableSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, seed=seed)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
                        num_workers=num_workers, pin_memory=ctx.device.type == "cuda",
                        persistent_workers=False,
                        # its own generator: making an iterator then draws nothing from the
                        # global RNG, so a resumed run continues the same random stream
                        generator=torch.Generator().manual_seed(seed))
    per_epoch = len(sampler) // per_rank
    if per_epoch < 1:
        raise ValueError(f"stage {stage}: {len(dataset)} samples are fewer than one batch of "
                         f"{per_rank} per process")
    log = StageLog(ctx, csv_path, stage, cfg.iterations, start, cfg.batch_size, cfg.log_every)
    it = start
    t0 = time.perf_counter()
    try:
        while it < cfg.iterations:
            epoch, offset = divmod(it, per_epoch)
            sampler.set_epoch(epoch)
            sampler.set_start(offset * per_rank)
            for batch in loader:
                if not budget.take():
                    snapshot(it, optimizer)
                    raise StopRequested(f"stage {stage} stopped at iteration {it}")
                factor = lr_factor(cfg, it)
                set_lr(optimizer, factor)
                out = model(prepare(batch))
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"stage {stage}: non-finite loss at iteration {it}"
                                             f" ({ {k: float(v) for k, v in out.items()} })")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                it += 1
                log.update(it, {k: float(v.detach()) for k, v in out.items() if k != "loss"},
                           optimizer.param_groups[0]["lr"])
                if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                    snapshot(it, optimizer)
                if it >= cfg.iterations:
                    break
    except KeyboardInterrupt:
        snapshot(it, optimizer)
        raise
    finally:
        log.close()
    if ctx.distributed:
        # DDP keeps parameters in lockstep; BatchNorm statistics are each process's own
        # until the next forward re-broadcasts them: take rank 0's, which are the ones saved.
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)
    return LoopResult(iteration=it, last=log.last, seconds=time.perf_counter() - t0)
