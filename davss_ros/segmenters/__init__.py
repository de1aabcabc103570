"""Key segmenters: the network that segments key frames, of whichever kind.

    seg = load_key_segmenter("segformer.onnx", device="cpu", input_size=(512, 1024))
    logits = seg(image)   # N x 3 x H x W RGB in [0, 1] -> N x C x H/4 x W/4 float32

Kinds (``KEY_SEGMENTER_KINDS``): ``native`` (this package's DeepLabv3+ from a davss_ros
checkpoint), ``torchscript`` (a ``torch.jit`` archive), ``onnx`` (onnxruntime). A file's
declaration (classes, palette, normalisation, input size, logit stride) comes from its YAML
sidecar ``<file>.yaml`` when there is one, else from the file itself (ONNX metadata_props
``davss_ros.segmenter``, TorchScript extra file ``davss_ros.segmenter.json``, a checkpoint's
label table). ``davss export --onnx/--torchscript`` writes both for the native model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint
from ..registry import KEY_SEGMENTERS
from .base import (
    DECLARATION_FILE,
    DECLARATION_KEY,
    PROPAGATION_STRIDE,
    KeySegmenter,
    KeySegmenterError,
    SegmenterInfo,
    declaration_json,
    one_line,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from .native import NativeSegmenter
from .onnx import OnnxSegmenter
from .torchscript import TorchScriptSegmenter

# The kinds named in davss_ros.registry.KEY_SEGMENTERS (the one list of names), as classes.
KEY_SEGMENTER_KINDS: dict[str, type[KeySegmenter]] = {
    name: KEY_SEGMENTERS.get(name) for name in KEY_SEGMENTERS}
# The kind a file suffix means when load_key_segmenter is not told.
SUFFIX_KINDS: dict[str, str] = {
    ".onnx": "onnx",
    ".ts": "torchscript", ".torchscript": "torchscript", ".pt": "torchscript",
    ".pth": "torchscript", ".jit": "torchscript",
}

__all__ = [
    "DECLARATION_FILE",
    "DECLARATION_KEY",
    "KEY_SEGMENTER_KINDS",
    "PROPAGATION_STRIDE",
    "SUFFIX_KINDS",
    "KeySegmenter",
    "KeySegmenterError",
    "NativeSegmenter",
    "OnnxSegmenter",
    "SegmenterInfo",
    "TorchScriptSegmenter",
    "declaration_json",
    "load_key_segmenter",
    "native_from_checkpoint",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]


def load_key_segmenter(path: str | Path, *, device: torch.device | str = "cpu",
                       kind: str | None = None,
                       input_size: tuple[int, int] | None = None) -> KeySegmenter:
    """A key segmenter from a file, on ``device``, its source and SHA-256 recorded.

    Args:
        kind: a name in ``davss_ros.registry.KEY_SEGMENTERS`` (the built-in ones:
            ``KEY_SEGMENTER_KINDS``); None = from the suffix (``SUFFIX_KINDS``). A file kind
            is a KeySegmenter class with ``from_file(path, *, device, sha256)``.
        input_size: (H, W) the pipeline will feed. The segmenter runs once on a zero image
            of this size (of its declared ``input_size`` when None and it has one), so a
            wrong output rank, class count or input size fails here, not at the first frame.

    Raises:
        KeySegmenterError: one line naming the file and what was expected.
    """
    path = Path(path)
    if kind is None:
        kind = SUFFIX_KINDS.get(path.suffix.lower())
        if kind is None:
            raise KeySegmenterError(
                f"{path}: cannot tell the key-segmenter kind from the suffix "
                f"'{path.suffix}'; expected one of {', '.join(SUFFIX_KINDS)} or a kind "
                f"({', '.join(KEY_SEGMENTERS)})")
    if kind not in KEY_SEGMENTERS:
        raise KeySegmenterError(f"{path}: unknown key-segmenter kind {kind!r}; expected one "
                                f"of {', '.join(KEY_SEGMENTERS)}")
    if not path.is_file():
        raise KeySegmenterError(f"{path}: no such file (expected a {kind} key segmenter)")
    sha256 = file_sha256(path)
    if kind == "native":
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:
            raise KeySegmenterError(one_line(exc)) from exc
        seg: KeySegmenter = native_from_checkpoint(checkpoint, device=device,
                                                   info=read_sidecar(path))
        seg.sha256 = sha256
    else:
        seg = KEY_SEGMENTERS.get(kind).from_file(path, device=device, sha256=sha256)
    size = input_size if input_size is not None else seg.info.input_size
    if size is not None:
        _check_on_zeros(seg, (int(size[0]), int(size[1])))
    return seg


def native_from_checkpoint(checkpoint: Checkpoint, *, device: torch.device | str = "cpu",
                           info: SegmenterInfo | None = None,
                           fold: bool = True) -> NativeSegmenter:
    """The checkpoint's DeepLabv3+ as a key segmenter, eval mode (BatchNorm folded into the
    convs when ``fold``); the declaration is the checkpoint's label table unless ``info``."""
    from ..model import build_segmenter, fold_batchnorm

    cfg = checkpoint.config.model
    module = build_segmenter(cfg.segmenter, num_classes=cfg.num_classes)
    prefix = "segmenter."
    state = {k[len(prefix):]: v for k, v in checkpoint.state_dict.items()
             if k.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise KeySegmenterError(f"{checkpoint.path}: the segmenter's weights do not match "
                                f"its configuration: {one_line(exc)}") from exc
    module.eval().requires_grad_(False)
    if fold:
        fold_batchnorm(module)
    if info is None:
        info = SegmenterInfo(class_names=tuple(checkpoint.class_names),
                             palette=tuple(tuple(int(v) for v in c) for c in checkpoint.palette),
                             ignore_id=checkpoint.ignore_id)
    sha256 = file_sha256(checkpoint.path) if checkpoint.path is not None else None
    seg = NativeSegmenter(module, info, source=checkpoint.path, sha256=sha256)
    return seg.to(device)  # type: ignore[return-value]


def _check_on_zeros(seg: KeySegmenter, size: tuple[int, int]) -> None:
    h, w = size
    seg.check_input_size(h, w)
    try:
        with torch.inference_mode():
            seg(torch.zeros(1, 3, h, w, device=seg.device))
    except KeySegmenterError:
        raise
    except Exception as exc:  # whatever the network raises on a zero image
        raise KeySegmenterError(f"{seg.name}: fails on a zero {w}x{h} (WxH) input: "
                                f"{type(exc).__name__}: {one_line(exc)}") from exc
