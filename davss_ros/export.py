"""``davss export``: a deployable copy of a checkpoint, checked against its source.

    davss export --checkpoint out/train/cpu/final.pt --out davss_ros/weights/davss_cpu.pt --half

``--half`` stores the learned weights as float16, about half the file. Kept in float32:
every buffer (BatchNorm running mean and variance, counters: a variance's small values
lose most of their digits in float16 and are divided by), and any parameter that float16
cannot hold closely (a value beyond its range, or one whose rounding error is above
0.1 % of the tensor's norm, e.g. values under float16's smallest normal number).
``load_checkpoint`` widens float16 back to float32, so the copy runs unchanged.

Every network is kept, the Accel branch included: the node's ``model.mode`` offers
``accel`` as a baseline.

Before writing, the copy and its source segment the same rendered synthetic clip in
``davss`` mode (fixed key frames, so both take the same path) and the share of equal
labels is printed; below ``--min-agreement`` nothing is written and the exit status is 1.
The copy's meta keeps the training meta and adds an ``export`` record: source file name
and SHA-256, half or not, which tensors stayed float32, date and the agreement.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    widen_to_float32,
)
from .config import DavssConfig, ScheduleConfig

# A float32 tensor stays float32 when float16 rounding moves it by more than this share
# of its norm (well-scaled tensors round to about 3e-4 at most).
MAX_RELATIVE_ERROR = 1e-3
DEFAULT_MIN_AGREEMENT = 99.5  # percent
_FP16_MAX = float(torch.finfo(torch.float16).max)


@dataclass
class HalfResult:
    state_dict: dict[str, torch.Tensor]
    halved: list[str] = field(default_factory=list)
    kept_float32: dict[str, str] = field(default_factory=dict)  # name -> why


def half_state_dict(state: dict[str, torch.Tensor], parameters: set[str]) -> HalfResult:
    """float16 copies of the float32 ``parameters`` that float16 holds closely.

    Buffers (names not in ``parameters``) and non-float tensors are returned unchanged.
    """
    out = HalfResult(state_dict={})
    for name, value in state.items():
        if name not in parameters or value.dtype != torch.float32:
            out.state_dict[name] = value
            continue
        why = _float16_problem(value)
        if why:
            out.kept_float32[name] = why
            out.state_dict[name] = value
        else:
            out.halved.append(name)
            out.state_dict[name] = value.half()
    return out


def _float16_problem(value: torch.Tensor) -> str:
    """'' when float16 holds ``value`` closely, else the reason it does not."""
    if not torch.isfinite(value).all():
        return "not finite"
    peak = float(value.abs().max()) if value.numel() else 0.0
    if peak > _FP16_MAX:
        return f"|x| up to {peak:.3g} overflows float16"
    norm = float(value.norm())
    if norm == 0.0:
        return ""
    err = float((value.half().float() - value).norm()) / norm
    if err > MAX_RELATIVE_ERROR:
        return f"float16 rounding error {err:.2e} of the norm"
    return ""


def parameter_names(config: DavssConfig) -> set[str]:
    """Names of the learned parameters (not buffers) of the networks ``config`` builds."""
    from .model import build_davss_net

    return {name for name, _ in build_davss_net(config.model).named_parameters()}


def render_frames(height: int, width: int, frames: int, seed: int) -> list[np.ndarray]:
    """RGB frames of one synthetic driving clip (the project's renderer)."""
    from .data.synthetic import SceneConfig, render_clip

    clip = render_clip(SceneConfig(height=height, width=width, frames=frames, seed=seed))
    return [np.ascontiguousarray(img) for img in clip.images]


def label_agreement(a: Checkpoint, b: Checkpoint, frames: list[np.ndarray], *,
                    mode: str = "davss", key_interval: int = 4,
                    device: str = "cpu") -> tuple[float, float]:
    """(overall, worst frame) percentages of pixels labelled alike by ``a`` and ``b``.

    Both run ``mode`` over ``frames`` with key frames every ``key_interval`` frames (a
    fixed schedule, so both propagate over the same frames).
    """
    from .pipeline import VideoSegmenter

    runtime = DavssConfig.from_dict(a.config.to_dict())
    runtime.model.mode = mode
    runtime.schedule = ScheduleConfig(policy="fixed", key_interval=key_interval)
    labels = []
    for ck in (a, b):
        seg = VideoSegmenter(runtime, checkpoint=ck, device=device)
        try:
            labels.append([seg.step(img, stamp=i / 17.0).labels for i, img in enumerate(frames)])
        finally:
            seg.close()
    same = [float(np.mean(x == y)) * 100.0 for x, y in zip(*labels, strict=True)]
    return float(np.mean(same)), float(min(same))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="IN",
                        help="the checkpoint to export (e.g. out/train/cpu/final.pt)")
    parser.add_argument("--out", required=True, type=Path, metavar="OUT",
                        help="where to write the copy (replaced if it exists)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16 (buffers and tensors float16 "
                             "cannot hold closely stay float32); loading widens them back")
    parser.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        metavar="PCT", help="fail (exit 1, nothing written) when the copy "
                        "labels fewer than PCT %% of the check frames' pixels like the "
                        "source (default %(default)s)")
    parser.add_argument("--frames", type=int, default=8,
                        help="synthetic frames of the check (default %(default)s)")
    parser.add_argument("--seed", type=int, default=3,
                        help="synthetic scene of the check (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device of the check")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (CheckpointError, ValueError) as exc:
        print(f"davss export: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2 (a key frame and a propagated one), "
                         f"got {args.frames}")
    if not 0.0 <= args.min_agreement <= 100.0:
        raise ValueError(f"--min-agreement must be in [0, 100], got {args.min_agreement}")
    src_path, out_path = Path(args.checkpoint), Path(args.out)
    if out_path.exists() and src_path.exists() and out_path.resolve() == src_path.resolve():
        raise ValueError(f"--out must not be the source checkpoint itself ({src_path})")
    src = load_checkpoint(src_path)
    src_sha = file_sha256(src_path)

    state, kept = dict(src.state_dict), {}
    if args.half:
        halved = half_state_dict(state, parameter_names(src.config))
        state, kept = halved.state_dict, halved.kept_float32
        print(f"float16: {len(halved.halved)} tensors; float32 kept: "
              f"{len(state) - len(halved.halved)} (buffers, integer tensors"
              f"{', ' + str(len(kept)) + ' parameters float16 cannot hold' if kept else ''})")
        for name, why in kept.items():
            print(f"  kept float32: {name}: {why}")
    # What loading the written file will give (float16 widened back to float32).
    copy = Checkpoint(path=out_path, config=src.config, state_dict=widen_to_float32(state),
                      class_names=src.class_names, palette=src.palette,
                      ignore_id=src.ignore_id, meta=src.meta)

    m = src.config.model
    frames = render_frames(m.input_height, m.input_width, args.frames, args.seed)
    agreement, worst = label_agreement(src, copy, frames, device=args.device)
    print(f"label agreement with the source, davss mode, {args.frames} synthetic frames "
          f"{m.input_width}x{m.input_height} (seed {args.seed}): {agreement:.3f}% "
          f"(worst frame {worst:.3f}%)")
    if agreement < args.min_agreement:
        print(f"davss export: error: the copy labels {agreement:.3f}% of the pixels like "
              f"{src_path}, below --min-agreement {args.min_agreement}%: not written",
              file=sys.stderr)
        return 1

    meta = dict(src.meta)
    meta["export"] = {
        "source": src_path.name,
        "source_sha256": src_sha,
        "half": bool(args.half),
        "float32_kept": sorted(kept),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "davss_ros": __version__,
        "label_agreement": round(agreement, 4),
        "agreement_check": {"mode": "davss", "frames": args.frames, "seed": args.seed,
                            "size": [m.input_height, m.input_width]},
    }
    save_checkpoint(out_path, config=src.config, state_dict=state,
                    class_names=src.class_names, palette=src.palette, meta=meta)
    written = load_checkpoint(out_path)  # the file as every consumer will read it
    for name, value in copy.state_dict.items():
        if not torch.equal(written.state_dict[name], value):
            raise CheckpointError(f"{out_path}: reads back differently ({name})")
    size_in, size_out = src_path.stat().st_size, out_path.stat().st_size
    print(f"wrote {out_path}: {_mb(size_out)} (source {_mb(size_in)}, "
          f"{100.0 * size_out / size_in:.0f}%), sha256 {file_sha256(out_path)[:12]}")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
