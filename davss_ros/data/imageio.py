"""PNG reading and writing shared by the data-set loaders, with errors that name the file."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a PNG from its header, without decoding the pixels."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {path}") from None
    if len(head) < 24 or head[:8] != _PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError(f"not a PNG file: {path}")
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (8-bit only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing image file: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode image file: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """A single-channel 8-bit label image as H x W uint8 (raw values, no mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing label file: {path}")
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise ValueError(f"cannot decode label file: {path}")
    if lab.ndim != 2 or lab.dtype != np.uint8:
        raise ValueError(
            f"label file must be single-channel 8-bit, got shape {lab.shape} dtype "
            f"{lab.dtype}: {path}")
    return lab


def read_rgb_label(path: str | Path) -> np.ndarray:
    """A colour-coded label image as H x W x 3 uint8 RGB, read losslessly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing label file: {path}")
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None or lab.ndim != 3 or lab.shape[2] != 3 or lab.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit RGB colour-coded label file: {path}")
    return cv2.cvtColor(lab, cv2.COLOR_BGR2RGB)


def write_rgb(path: str | Path, rgb: np.ndarray, *, compression: int = 1) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise OSError(f"could not write {path}")


def write_label(path: str | Path, label: np.ndarray, *, compression: int = 1) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be H x W uint8, got {label.shape} {label.dtype}")
    if not cv2.imwrite(str(path), label, [cv2.IMWRITE_PNG_COMPRESSION, compression]):
        raise OSError(f"could not write {path}")


def check_same_size(shape: tuple[int, ...], ref: tuple[int, int], path: str | Path,
                    ref_path: str | Path) -> None:
    if tuple(shape[:2]) != tuple(ref):
        raise ValueError(
            f"size mismatch: {path} is {shape[0]}x{shape[1]} but {ref_path} is "
            f"{ref[0]}x{ref[1]}")
