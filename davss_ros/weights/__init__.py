"""Checkpoints shipped with the package (installed with it)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
DEFAULT_NAME = "davss_cpu.pt"


def default_checkpoint() -> Path | None:
    """The shipped CPU model, or None while the package ships no trained model."""
    path = WEIGHTS_DIR / DEFAULT_NAME
    return path if path.is_file() else None
