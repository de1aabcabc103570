"""One-file checkpoints: configuration, weights and the label table together.

A checkpoint is a ``torch.save`` of plain data only (dicts, lists, strings, numbers,
tensors), loaded with ``torch.load(weights_only=True)``, so a file carrying pickled Python
objects is refused rather than executed. The model is rebuilt from the file alone.

Weights may be stored as float16 (``davss export --half``); loading gives float32 tensors
back, so nothing downstream sees the difference.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .classes import IGNORE_ID, default_class_names, default_palette
from .config import DavssConfig

FORMAT = "davss_ros.checkpoint"
VERSION = 1
# Stored dtypes that loading widens to float32 (compact storage, float32 compute).
_WIDENED = (torch.float16, torch.bfloat16)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    path: Path | None
    config: DavssConfig
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_id: int = IGNORE_ID
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    *,
    config: DavssConfig,
    state_dict: dict[str, torch.Tensor],
    class_names: list[str] | None = None,
    palette: list[tuple[int, int, int]] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (a half-written file never carries the final name)."""
    path = Path(path)
    n = config.model.num_classes
    names = list(class_names) if class_names is not None else default_class_names(n)
    colours = [list(map(int, c)) for c in (palette or default_palette(n))]
    if len(names) != n or len(colours) != n:
        raise ValueError(
            f"class_names ({len(names)}) and palette ({len(colours)}) must both have "
            f"num_classes = {n} entries")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "class_names": names,
        "palette": colours,
        "ignore_id": IGNORE_ID,
        "meta": dict(meta or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint; any problem raises CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects, which could run code "
            f"when loaded; davss_ros checkpoints hold only tensors and plain data "
            f"(torch.load weights_only=True said: {_first_line(exc)})") from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for damaged files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a davss_ros checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('version')!r}, "
            f"this davss_ros reads version {VERSION}")
    missing = [k for k in ("config", "state_dict", "class_names", "palette") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        config = DavssConfig.from_dict(payload["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid configuration in checkpoint: {exc}") from exc
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict is not a mapping of names to tensors")
    state = widen_to_float32(state)
    names, palette = list(payload["class_names"]), [tuple(c) for c in payload["palette"]]
    n = config.model.num_classes
    if len(names) != n or len(palette) != n:
        raise CheckpointError(
            f"{path}: {len(names)} class names and {len(palette)} colours for "
            f"num_classes = {n}")
    return Checkpoint(path=path, config=config, state_dict=state, class_names=names,
                      palette=palette, ignore_id=int(payload.get("ignore_id", IGNORE_ID)),
                      meta=dict(payload.get("meta", {})))


def load_weights(module: torch.nn.Module, checkpoint: Checkpoint, *,
                 optional: tuple[str, ...] = ()) -> None:
    """Load the checkpoint's weights into a module built from its configuration (strict);
    tensors whose names start with one of ``optional`` may be missing from the file and
    keep the module's values."""
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(checkpoint.state_dict)
                     if not (optional and k.startswith(optional)))
    unexpected = sorted(set(checkpoint.state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(checkpoint.state_dict)
                   if own[k].shape != checkpoint.state_dict[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with another shape (e.g. {k}: file "
                         f"{tuple(checkpoint.state_dict[k].shape)}, model {tuple(own[k].shape)})")
        raise CheckpointError(
            f"{checkpoint.path}: weights do not match the model its configuration builds: "
            + "; ".join(parts))
    module.load_state_dict(widen_to_float32(checkpoint.state_dict), strict=not optional)


def widen_to_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with float16/bfloat16 tensors as float32 (others unchanged)."""
    return {k: v.float() if v.dtype in _WIDENED else v for k, v in state.items()}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies exactly which weights were loaded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_segmenter_reference(path: str | Path, *, checkpoint_path: str | Path | None = None,
                            num_classes: int | None = None) -> dict[str, Any]:
    """The ``meta['key_segmenter']`` record by which a checkpoint names the external key
    segmenter it was made for (``VideoSegmenter`` loads it when no other is given): the
    file's path (relative to the checkpoint's folder when ``checkpoint_path`` is given and
    the file lies beside or below it) and SHA-256, so that a replaced file is refused."""
    path = Path(path)
    text = str(path)
    if checkpoint_path is not None:
        try:
            text = str(path.resolve().relative_to(Path(checkpoint_path).resolve().parent))
        except ValueError:
            text = str(path.resolve())
    ref: dict[str, Any] = {"path": text, "sha256": file_sha256(path)}
    if num_classes is not None:
        ref["num_classes"] = int(num_classes)
    return ref


def describe_origin(meta: dict[str, Any]) -> str:
    """One line on where a checkpoint's weights come from, from its meta (for logs)."""
    if meta.get("untrained"):
        return "untrained weights"
    parts = []
    if meta.get("trained_by"):
        dataset = (meta.get("train_config") or {}).get("dataset") or {}
        text = f"trained by {meta['trained_by']}"
        if dataset.get("kind"):
            text += f" on {dataset['kind']}"
            if dataset.get("root"):
                text += f" ({dataset['root']})"
        if meta.get("config_file"):
            text += f", recipe {meta['config_file']}"
        parts.append(text)
    else:
        parts.append("origin not recorded")
    export = meta.get("export")
    if isinstance(export, dict):
        text = "exported" + (" float16" if export.get("half") else "")
        if export.get("date"):
            text += f" {export['date']}"
        if export.get("label_agreement") is not None:
            text += f", {export['label_agreement']:.2f}% label agreement with its source"
        parts.append(text)
    return "; ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
