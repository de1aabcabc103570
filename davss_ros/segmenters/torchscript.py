"""TorchScript key segmenters: a ``torch.jit`` archive (traced or scripted) of any network.

The archive's module takes the normalised N x 3 x H x W float32 input its declaration
describes and returns logits at 1/``logit_stride``: a tensor, a tuple or list whose first
element is the logits, or a dict with the logits under ``"out"`` (as torchvision's
segmentation models return them). The declaration comes from the sidecar
``<file>.yaml``, else from the archive's extra file ``davss_ros.segmenter.json``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .base import (
    DECLARATION_FILE,
    KeySegmenter,
    KeySegmenterError,
    SegmenterInfo,
    one_line,
    resolve_declaration,
)


class TorchScriptSegmenter(KeySegmenter):
    """A ``torch.jit.ScriptModule`` as key segmenter."""

    kind = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule, info: SegmenterInfo, **kwargs) -> None:
        super().__init__(info, **kwargs)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module

    @classmethod
    def from_file(cls, path: str | Path, *, info: SegmenterInfo | None = None,
                  device: torch.device | str = "cpu",
                  sha256: str | None = None) -> TorchScriptSegmenter:
        """Load an archive with ``torch.jit.load`` straight onto ``device``.

        The declaration is ``info`` when given, else the sidecar, else the archive's extra
        file; KeySegmenterError (one line, naming the file) for anything unusable.
        """
        path = Path(path)
        if not path.is_file():
            raise KeySegmenterError(f"{path}: no such TorchScript file")
        device = torch.device(device)
        extra = {DECLARATION_FILE: ""}
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates torch.jit (in favour of torch.export); loading a
                # TorchScript file is what was asked for.
                warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated",
                                        category=DeprecationWarning)
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:  # RuntimeError from the archive reader, among others
            raise KeySegmenterError(
                f"{path}: not a TorchScript archive (expected a torch.jit.save file{_hint(path)}"
                f"): {one_line(exc)}") from exc
        raw = extra[DECLARATION_FILE]
        embedded = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        declared = resolve_declaration(path, info=info, embedded=embedded,
                                       embedded_where=f"the archive's extra file "
                                       f"{DECLARATION_FILE}")
        seg = cls(module, declared, source=path, sha256=sha256)
        seg.device = device
        return seg

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        elif isinstance(out, dict) and "out" in out:
            out = out["out"]
        if not isinstance(out, torch.Tensor):
            raise KeySegmenterError(f"{self.name}: expected the module to return logits (a "
                                    f"tensor, a tuple starting with one or a dict with 'out'), "
                                    f"got {type(out).__name__}")
        return out

    def _move(self, device: torch.device) -> None:
        self.module.to(device)


def _hint(path: Path) -> str:
    """A pointer for the common mix-up: a davss_ros checkpoint (torch.save) named .pt."""
    try:
        import zipfile

        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # not a zip at all: no hint
        return ""
    if any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names):
        return "; this is a torch.save file, e.g. a davss_ros checkpoint: load it with " \
               "kind='native'"
    return ""
