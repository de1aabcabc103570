"""sensor_msgs/Image <-> numpy without cv_bridge.

cv_bridge is not installable everywhere davss_ros runs (no ROS 2 build of it on PyPI, and
the PyPI ``cv-bridge`` shim is broken with numpy 2), and it copies anyway. The few
encodings a segmentation node needs are simple enough to handle here with numpy views:

- decoding wraps the message's byte buffer (``np.frombuffer``, no copy) and slices the row
  padding (``step`` > width x channels) away with strides;
- encoding allocates the message's ``array.array('B')`` once and hands back a writable
  numpy view of it, so results are written straight into the message.

``is_bigendian`` does not matter for the 8-bit encodings; float outputs are written in the
machine's byte order and the flag says which.
"""

from __future__ import annotations

import array
import sys

import numpy as np
from sensor_msgs.msg import Image

# encoding -> (channels, dtype) of the encodings this module reads or writes.
ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "mono8": (1, np.dtype(np.uint8)),
    "32FC1": (1, np.dtype(np.float32)),
}
# Encodings accepted on the node's input.
INPUT_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

_BIG_ENDIAN = sys.byteorder == "big"


class ImageError(ValueError):
    """An input image the node cannot use; ``kind`` names the problem for the counters.

    Kinds: ``encoding`` (unsupported encoding), ``empty`` (zero width or height), ``step``
    (a row stride shorter than a row, or not a multiple of the pixel size), ``data_length``
    (data is not step x height bytes).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def image_to_numpy(msg: Image) -> np.ndarray:
    """A read-only view of the pixels: HxW (one channel) or HxWxC, no copy.

    Raises :class:`ImageError` (a ValueError) for an unknown encoding, a zero width or
    height, a ``step`` shorter than a row, or a data length other than ``step * height``.
    """
    if msg.encoding not in ENCODINGS:
        raise ImageError(
            "encoding", f"unsupported image encoding {msg.encoding!r}; "
            f"expected one of {', '.join(ENCODINGS)}")
    channels, dtype = ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageError("empty", f"empty image {width}x{height}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError(
            "step", f"{msg.encoding} image {width}x{height}: step {step} is shorter than a "
            f"row ({row_bytes} bytes)")
    size = len(msg.data)
    if size != step * height:
        raise ImageError(
            "data_length", f"{msg.encoding} image {width}x{height}: data has {size} bytes, "
            f"expected step x height = {step} x {height} = {step * height}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    rows = buf.reshape(height, step)[:, :row_bytes]  # a view; drops the row padding
    if dtype.itemsize > 1:
        if step % dtype.itemsize:
            raise ImageError(
                "step", f"{msg.encoding} image: step {step} is not a multiple of "
                f"{dtype.itemsize} bytes")
        order = ">" if msg.is_bigendian else "<"
        pixels = rows.view(dtype.newbyteorder(order))
    else:
        pixels = rows
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def image_to_rgb(msg: Image) -> np.ndarray:
    """HxWx3 uint8 RGB for the network.

    rgb8 comes back as a view of the message (zero-copy, row padding skipped with strides);
    the other encodings need one copy to reorder or expand the channels.
    """
    if msg.encoding not in INPUT_ENCODINGS:
        raise ImageError(
            "encoding", f"unsupported input encoding {msg.encoding!r}; "
            f"expected one of {', '.join(INPUT_ENCODINGS)}")
    pixels = image_to_numpy(msg)
    if msg.encoding == "rgb8":
        return pixels
    if msg.encoding == "mono8":
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if msg.encoding == "rgba8":
        return np.ascontiguousarray(pixels[:, :, :3])
    # bgr8 / bgra8: reverse the first three channels
    return np.ascontiguousarray(pixels[:, :, 2::-1])


def new_image(height: int, width: int, encoding: str, header=None) -> tuple[Image, np.ndarray]:
    """An Image with a freshly allocated, tightly packed buffer and a writable view of it.

    Write the pixels into the view (``np.copyto``, ``np.take(..., out=view)``,
    ``cv2.addWeighted(..., dst=view)``): the message then holds them with no further copy.
    """
    if encoding not in ENCODINGS:
        raise ValueError(
            f"unsupported image encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    channels, dtype = ENCODINGS[encoding]
    step = width * channels * dtype.itemsize
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.step = int(height), int(width), int(step)
    msg.encoding = encoding
    msg.is_bigendian = _BIG_ENDIAN and dtype.itemsize > 1
    msg.data = array.array("B", [0]) * (step * height)
    # The setter may copy (it does when field checks are off), so view what the message
    # holds; array.array exports a writable buffer.
    view = np.frombuffer(msg.data, dtype=dtype)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return msg, view.reshape(shape)


def numpy_to_image(pixels: np.ndarray, encoding: str, header=None) -> Image:
    """An Image holding a copy of ``pixels`` (HxW or HxWxC, dtype matching ``encoding``)."""
    if encoding not in ENCODINGS:
        raise ValueError(
            f"unsupported image encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    channels, dtype = ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(
            f"{encoding} needs an array of shape "
            f"{'HxW' if channels == 1 else f'HxWx{channels}'}, got {pixels.shape}")
    if pixels.dtype != dtype:
        raise ValueError(f"{encoding} needs dtype {dtype}, got {pixels.dtype}")
    msg, view = new_image(pixels.shape[0], pixels.shape[1], encoding, header)
    np.copyto(view, pixels)
    return msg
