"""sensor_msgs/Image (and CompressedImage) <-> numpy without cv_bridge.

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

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

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

# JPEG encoding of encode_compressed (make-bag --compressed jpeg): quality and chroma
# subsampling. With 4:4:4 at quality 95 the node's labels on the decoded frames match the raw
# frames' on >= 99 % of the pixels (docs/issue15_figures.md); 4:2:0 does not, at any quality
# tried up to 98.
JPEG_QUALITY = 95
JPEG_CHROMA = "444"
JPEG_CHROMAS = {"444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
                "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}


class ImageError(ValueError):
    """An input image the node cannot use; ``kind`` names the problem for the counters.

    Kinds: ``encoding`` (unsupported encoding), ``empty`` (zero width or height), ``step``
    (a row stride shorter than a row, or not a multiple of the pixel size), ``data_length``
    (data is not step x height bytes), ``corrupt`` (compressed data that does not decode
    whole).
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


# -- sensor_msgs/CompressedImage (the image_transport "compressed" plugin's messages) ----

_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def compressed_kind(msg: CompressedImage) -> str:
    """``jpeg`` or ``png`` from the message's ``format`` (image_transport writes e.g.
    "bgr8; jpeg compressed bgr8", "mono8; png compressed mono8", or just "jpeg"); an empty
    format is told from the data's signature."""
    fmt = (msg.format or "").lower()
    if "jpeg" in fmt or "jpg" in fmt:
        return "jpeg"
    if "png" in fmt:
        return "png"
    if not fmt:
        head = bytes(msg.data[:8])
        if head.startswith(_JPEG_START):
            return "jpeg"
        if head.startswith(_PNG_START):
            return "png"
    raise ImageError("encoding", f"unsupported compressed format {msg.format!r}; expected "
                     "jpeg or png (image_transport 'compressed')")


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """HxWx3 uint8 RGB decoded by OpenCV from a JPEG or PNG CompressedImage (colour or
    mono). Truncated or corrupt data raises :class:`ImageError` (kind ``corrupt``):
    OpenCV itself decodes a truncated JPEG to a partly grey image without an error, so the
    end-of-image marker (JPEG) or IEND chunk (PNG) is checked first."""
    kind = compressed_kind(msg)
    data = bytes(msg.data)
    if not data:
        raise ImageError("empty", f"empty {kind} CompressedImage")
    start, end = (_JPEG_START, _JPEG_END) if kind == "jpeg" else (_PNG_START, _PNG_END)
    # JPEG may carry padding after its end marker; a missing marker means a cut stream.
    if not data.startswith(start) or end not in data[-64:]:
        raise ImageError("corrupt", f"{kind} CompressedImage of {len(data)} bytes is "
                         "truncated or corrupt (no image start or end marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError("corrupt", f"{kind} CompressedImage of {len(data)} bytes does not "
                         "decode")
    if image.dtype != np.uint8:
        raise ImageError("encoding", f"{kind} CompressedImage decodes to {image.dtype}; "
                         "expected 8-bit colour or mono")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    # OpenCV hands back what the encoder was given as BGR; image_transport encodes colour
    # images as bgr8 unless the format says the compressed data is rgb8.
    if "compressed rgb" in (msg.format or "").lower():
        return np.ascontiguousarray(image)
    return np.ascontiguousarray(image[:, :, ::-1])


def encode_compressed(rgb: np.ndarray, kind: str = "jpeg", *, quality: int | None = None,
                      chroma: str | None = None) -> tuple[str, bytes]:
    """(format string, data) of a CompressedImage holding an HxWx3 RGB (or HxW mono) uint8
    array, as image_transport's compressed plugin writes them ("rgb8; jpeg compressed
    bgr8"). Shared by the node's tests and ``davss make-bag --compressed``.

    JPEG: ``quality`` (1..100, default :data:`JPEG_QUALITY`) and ``chroma`` subsampling
    (``444``: none, the default :data:`JPEG_CHROMA`; ``420``: OpenCV's and most cameras'
    default, colour at half resolution, which moves class boundaries on thin coloured
    objects). PNG is lossless."""
    if kind not in ("jpeg", "png"):
        raise ValueError(f"kind must be jpeg or png, got {kind!r}")
    quality = JPEG_QUALITY if quality is None else int(quality)
    chroma = JPEG_CHROMA if chroma is None else chroma
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if chroma not in JPEG_CHROMAS:
        raise ValueError(f"chroma must be one of {', '.join(JPEG_CHROMAS)}, got {chroma!r}")
    mono = rgb.ndim == 2
    pixels = rgb if mono else np.ascontiguousarray(rgb[:, :, ::-1])
    params = ([cv2.IMWRITE_JPEG_QUALITY, quality,
               cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_CHROMAS[chroma]] if kind == "jpeg"
              else [cv2.IMWRITE_PNG_COMPRESSION, 3])
    ok, buf = cv2.imencode(".jpg" if kind == "jpeg" else ".png", pixels, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {kind}")
    enc = "mono8" if mono else "bgr8"
    return f"{'mono8' if mono else 'rgb8'}; {kind} compressed {enc}", buf.tobytes()


def rgb_to_compressed(rgb: np.ndarray, kind: str = "jpeg", *, quality: int | None = None,
                      chroma: str | None = None, header=None) -> CompressedImage:
    """A CompressedImage of an HxWx3 RGB (or HxW mono) uint8 array (see
    :func:`encode_compressed`)."""
    fmt, data = encode_compressed(rgb, kind, quality=quality, chroma=chroma)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = fmt
    msg.data = array.array("B", data)
    return msg
