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

The key segmenter alone, for other runtimes (and as a reference for the ONNX/TorchScript
key-segmenter path):

    davss export --checkpoint final.pt --onnx seg.onnx --torchscript seg.ts

writes the checkpoint's DeepLabv3+ (eval, BatchNorm folded) at a static input size (the
checkpoint's, or ``--height``/``--width``) as ONNX (opset ``--opset``, onnx's legacy
TorchScript-based exporter: static shapes need no more, and it runs offline without
onnxscript) and/or as a traced, frozen TorchScript archive. Each carries its declaration
(classes, palette, normalisation, input size, logit stride) inside (ONNX metadata_props
``davss_ros.segmenter``, TorchScript extra file ``davss_ros.segmenter.json``) and in a YAML
sidecar beside it (``seg.onnx.yaml``). Before it is kept, the written file is loaded as a
key segmenter and run beside the checkpoint's network on rendered synthetic frames: the
largest logit difference and the share of equal labels (argmax on the 1/4 logit grid) are
printed, and below ``--min-agreement`` nothing is written (exit status 1), for any target.
``export_key_segmenter`` does the same from Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
ONNX_OPSET = 17
KEY_SEGMENTER_FORMATS = ("onnx", "torchscript")
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


class ExportCheckError(ValueError):
    """An exported key segmenter that labels too few pixels like its source; ``figures``
    holds the measurements. Nothing was written."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


def export_key_segmenter(checkpoint: str | Path | Checkpoint, path: str | Path, kind: str, *,
                         input_size: tuple[int, int] | None = None, frames: int = 8,
                         seed: int = 3, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                         opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Write the checkpoint's DeepLabv3+ as an ONNX or TorchScript key segmenter, with its
    declaration embedded and in a YAML sidecar, once it agrees with the checkpoint.

    Args:
        kind: ``onnx`` or ``torchscript``.
        input_size: the static (H, W) of the file; None = the checkpoint's input size.
        frames, seed: the rendered synthetic clip of the check.
        min_agreement: percent of equal labels below which nothing is written.

    Returns:
        The figures: ``label_agreement`` and ``worst_frame_agreement`` (percent),
        ``max_abs_logit_diff``, ``path``, ``sidecar``, ``bytes``, ``sha256``, ... .

    Raises:
        ExportCheckError: agreement below ``min_agreement`` (nothing written).
        ValueError: unusable arguments or checkpoint, or a failed export.
    """
    staged = _stage_key_segmenter(checkpoint, Path(path), kind, input_size=input_size,
                                  frames=frames, seed=seed, opset=opset)
    try:
        _refuse_below(staged.figures, min_agreement)
        staged.commit()
    finally:
        staged.discard()
    return staged.figures


@dataclass
class _Staged:
    """A written and checked key-segmenter file in a scratch folder beside its target."""

    folder: Path
    target: Path
    figures: dict[str, Any]

    def commit(self) -> None:
        from .segmenters import sidecar_path

        # The sidecar first: a reader that finds the new file finds its declaration too.
        os.replace(sidecar_path(self.folder / self.target.name), sidecar_path(self.target))
        os.replace(self.folder / self.target.name, self.target)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _stage_key_segmenter(checkpoint: str | Path | Checkpoint, target: Path, kind: str, *,
                         input_size: tuple[int, int] | None, frames: int, seed: int,
                         opset: int) -> _Staged:
    from .segmenters import (
        SegmenterInfo,
        load_key_segmenter,
        native_from_checkpoint,
        write_sidecar,
    )

    if kind not in KEY_SEGMENTER_FORMATS:
        raise ValueError(f"kind must be one of {', '.join(KEY_SEGMENTER_FORMATS)}, got {kind!r}")
    if frames < 1:
        raise ValueError(f"the check needs >= 1 frame, got {frames}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    src = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    m = src.config.model
    h, w = input_size if input_size is not None else (m.input_height, m.input_width)
    if h < 16 or w < 16 or h % 16 or w % 16:
        raise ValueError(f"the input size must be multiples of 16 (DeepLabv3+ with output "
                         f"stride 16), got {w}x{h} (WxH)")
    if target.is_dir():
        raise ValueError(f"{target}: is a folder; expected the path of the {kind} file")
    reference = native_from_checkpoint(src, fold=False)  # the network as trained
    module = native_from_checkpoint(src).module  # what is exported: BatchNorm folded
    source_sha = file_sha256(src.path) if src.path is not None else None
    record: dict[str, Any] = {
        "source": src.path.name if src.path is not None else None,
        "source_sha256": source_sha,
        "format": kind,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "davss_ros": __version__,
    }
    info = SegmenterInfo(class_names=reference.info.class_names,
                         palette=reference.info.palette, ignore_id=reference.info.ignore_id,
                         input_size=(h, w), extra={"export": record})

    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part",
                                   dir=target.parent))
    staged = _Staged(folder=folder, target=target, figures={})
    try:
        file = folder / target.name
        example = torch.zeros(1, 3, h, w)
        if kind == "onnx":
            _write_onnx(module, example, file, info, opset)
        else:
            _write_torchscript(module, example, file, info)
        write_sidecar(file, info)
        exported = load_key_segmenter(file, kind=kind, input_size=(h, w))
        figures = _compare(reference, exported, render_frames(h, w, frames, seed))
        figures.update(kind=kind, path=str(target), sidecar=str(target) + ".yaml",
                       input_size=[h, w], frames=frames, seed=seed,
                       bytes=file.stat().st_size, sha256=file_sha256(file),
                       source=str(src.path) if src.path is not None else None)
        if kind == "onnx":
            figures["opset"] = opset
        # The sidecar also records the check (the embedded declaration was written before).
        record.update(label_agreement=round(figures["label_agreement"], 4),
                      max_abs_logit_diff=float(f"{figures['max_abs_logit_diff']:.3g}"),
                      check={"frames": frames, "seed": seed})
        write_sidecar(file, info)
        staged.figures = figures
        return staged
    except BaseException:
        staged.discard()
        raise


def _write_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, info: Any,
                opset: int) -> None:
    import onnx

    from .segmenters import DECLARATION_KEY, declaration_json

    with torch.no_grad(), warnings.catch_warnings():
        # The shape checks inside the network become constants of the trace: intended, as
        # the file has a static input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 deprecates the TorchScript-based exporter; it is chosen on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False,
                              opset_version=opset, input_names=["image"],
                              output_names=["logits"], do_constant_folding=True)
        except Exception as exc:
            raise ValueError(f"{path.name}: ONNX export failed: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = DECLARATION_KEY, declaration_json(info)
    model.doc_string = "davss_ros key segmenter: DeepLabv3+, RGB in [0, 1], logits at 1/4"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path,
                       info: Any) -> None:
    from .segmenters import DECLARATION_FILE, declaration_json

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 deprecates torch.jit; TorchScript is the format asked for.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, (example,), check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        torch.jit.save(frozen, str(path),
                       _extra_files={DECLARATION_FILE: declaration_json(info)})


def _compare(reference: Any, exported: Any, frames: list[np.ndarray]) -> dict[str, float]:
    """Max |logit difference| and label agreement (percent, overall and worst frame) of two
    key segmenters on the same frames."""
    diff, same = 0.0, []
    with torch.inference_mode():
        for rgb in frames:
            x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            a, b = reference(x), exported(x)
            diff = max(diff, float((a - b).abs().max()))
            same.append(float((a.argmax(1) == b.argmax(1)).float().mean()) * 100.0)
    return {"max_abs_logit_diff": diff, "label_agreement": float(np.mean(same)),
            "worst_frame_agreement": float(min(same))}


def _refuse_below(figures: dict[str, Any], min_agreement: float) -> None:
    if figures["label_agreement"] < min_agreement:
        raise ExportCheckError(
            f"{figures['path']}: the exported {figures['kind']} segmenter labels "
            f"{figures['label_agreement']:.3f}% of the pixels like the checkpoint, below "
            f"--min-agreement {min_agreement}%: not written", figures)


def _print_figures(figures: dict[str, Any]) -> None:
    h, w = figures["input_size"]
    print(f"{figures['kind']}: {figures['path']} ({w}x{h} input"
          f"{', opset ' + str(figures['opset']) if 'opset' in figures else ''}): max |logit "
          f"difference| {figures['max_abs_logit_diff']:.3g}, label agreement "
          f"{figures['label_agreement']:.3f}% (worst frame {figures['worst_frame_agreement']:.3f}"
          f"%) with the checkpoint's network on {figures['frames']} synthetic frames "
          f"(seed {figures['seed']})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="IN",
                        help="the checkpoint to export (e.g. out/train/cpu/final.pt)")
    parser.add_argument("--out", type=Path, metavar="OUT",
                        help="where to write the copy (replaced if it exists)")
    parser.add_argument("--onnx", type=Path, metavar="PATH",
                        help="also (or only) write the checkpoint's DeepLabv3+ as an ONNX key "
                        "segmenter, with the YAML sidecar PATH.yaml")
    parser.add_argument("--torchscript", type=Path, metavar="PATH",
                        help="also (or only) write it as a TorchScript key segmenter, with "
                        "the YAML sidecar PATH.yaml")
    parser.add_argument("--height", type=int, default=None,
                        help="static input height of --onnx/--torchscript (default: the "
                        "checkpoint's)")
    parser.add_argument("--width", type=int, default=None,
                        help="static input width of --onnx/--torchscript (default: the "
                        "checkpoint's)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET,
                        help="ONNX opset of --onnx (default %(default)s)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights of --out as float16 (buffers and tensors "
                             "float16 cannot hold closely stay float32); loading widens them "
                             "back")
    parser.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        metavar="PCT", help="fail (exit 1, nothing written) when an export "
                        "labels fewer than PCT %% of the check frames' pixels like the "
                        "source (default %(default)s)")
    parser.add_argument("--frames", type=int, default=8,
                        help="synthetic frames of the check (default %(default)s)")
    parser.add_argument("--seed", type=int, default=3,
                        help="synthetic scene of the check (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device of the --out check")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ExportCheckError as exc:
        print(f"davss export: error: {exc}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError) as exc:
        print(f"davss export: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2 (a key frame and a propagated one), "
                         f"got {args.frames}")
    if not 0.0 <= args.min_agreement <= 100.0:
        raise ValueError(f"--min-agreement must be in [0, 100], got {args.min_agreement}")
    targets = [(kind, Path(p)) for kind, p in (("onnx", args.onnx),
                                               ("torchscript", args.torchscript)) if p]
    if args.out is None and not targets:
        raise ValueError("nothing to write: give --out, --onnx and/or --torchscript")
    if args.half and args.out is None:
        raise ValueError("--half applies to --out (a checkpoint copy); give --out")
    if (args.height is None) != (args.width is None):
        raise ValueError("give --height and --width together")
    src_path = Path(args.checkpoint)
    outs = [Path(args.out)] if args.out is not None else []
    outs += [p for _, p in targets]
    if src_path.exists():
        for out in outs:
            if out.exists() and out.resolve() == src_path.resolve():
                raise ValueError(f"--out, --onnx and --torchscript must not be the source "
                                 f"checkpoint itself ({src_path})")
    if len({p.resolve() for p in outs}) != len(outs):
        raise ValueError("--out, --onnx and --torchscript must be different files")
    src = load_checkpoint(src_path)

    copy = None
    if args.out is not None:
        copy = _check_copy(args, src)
        if copy is None:
            return 1
    size = (args.height, args.width) if args.height is not None else None
    staged: list[_Staged] = []
    try:
        # Every export is checked before anything is written: all or nothing.
        for kind, path in targets:
            staged.append(_stage_key_segmenter(src, path, kind, input_size=size,
                                               frames=args.frames, seed=args.seed,
                                               opset=args.opset))
            _print_figures(staged[-1].figures)
        for item in staged:
            _refuse_below(item.figures, args.min_agreement)
        if copy is not None:
            _write_copy(args, src, *copy)
        for item in staged:
            item.commit()
            f = item.figures
            print(f"wrote {f['path']} ({_mb(f['bytes'])}, sha256 {f['sha256'][:12]}) and "
                  f"{f['sidecar']}")
    finally:
        for item in staged:
            item.discard()
    return 0


def _check_copy(args: argparse.Namespace, src: Checkpoint
                ) -> tuple[dict[str, torch.Tensor], dict[str, str], float] | None:
    """The --out copy's state, float32-kept tensors and agreement; None when refused."""
    out_path = Path(args.out)
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
              f"{src.path}, below --min-agreement {args.min_agreement}%: not written",
              file=sys.stderr)
        return None
    return state, kept, agreement


def _write_copy(args: argparse.Namespace, src: Checkpoint, state: dict[str, torch.Tensor],
                kept: dict[str, str], agreement: float) -> None:
    src_path, out_path = Path(args.checkpoint), Path(args.out)
    m = src.config.model
    meta = dict(src.meta)
    meta["export"] = {
        "source": src_path.name,
        "source_sha256": file_sha256(src_path),
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
    for name, value in widen_to_float32(state).items():
        if not torch.equal(written.state_dict[name], value):
            raise CheckpointError(f"{out_path}: reads back differently ({name})")
    size_in, size_out = src_path.stat().st_size, out_path.stat().st_size
    print(f"wrote {out_path}: {_mb(size_out)} (source {_mb(size_in)}, "
          f"{100.0 * size_out / size_in:.0f}%), sha256 {file_sha256(out_path)[:12]}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
