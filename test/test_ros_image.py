"""sensor_msgs/Image and CompressedImage <-> numpy (davss_ros/ros/image.py)."""

import array

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")

from sensor_msgs.msg import Image  # noqa: E402

from davss_ros.ros.image import (  # noqa: E402
    ImageError,
    image_to_numpy,
    image_to_rgb,
    new_image,
    numpy_to_image,
)


def _rgb(h=5, w=7):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _padded(pixels: np.ndarray, encoding: str, pad: int) -> Image:
    """An Image whose rows carry ``pad`` junk bytes after the pixels."""
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1).view(np.uint8)
    step = row.shape[1] + pad
    buf = np.full((h, step), 0xAB, np.uint8)
    buf[:, : row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = array.array("B", buf.tobytes())
    return msg


def test_rgb_conversions_of_each_encoding():
    rgb = _rgb()
    gray = rgb[:, :, 1].copy()
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    cases = {
        "rgb8": (rgb, rgb),
        "bgr8": (rgb[:, :, ::-1].copy(), rgb),
        "rgba8": (np.concatenate([rgb, alpha], axis=2), rgb),
        "bgra8": (np.concatenate([rgb[:, :, ::-1], alpha], axis=2), rgb),
        "mono8": (gray, np.repeat(gray[:, :, None], 3, axis=2)),
    }
    for encoding, (pixels, expected_rgb) in cases.items():
        msg = numpy_to_image(pixels, encoding)
        assert msg.step == pixels.shape[1] * (1 if pixels.ndim == 2 else pixels.shape[2])
        np.testing.assert_array_equal(image_to_numpy(msg), pixels, err_msg=encoding)
        out = image_to_rgb(msg)
        assert out.shape == rgb.shape[:2] + (3,) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected_rgb, err_msg=encoding)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_padded_step_round_trip(encoding):
    channels = {"mono8": 1, "rgba8": 4, "bgra8": 4}.get(encoding, 3)
    rng = np.random.default_rng(1)
    shape = (4, 6) if channels == 1 else (4, 6, channels)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    msg = _padded(pixels, encoding, pad=5)
    decoded = image_to_numpy(msg)
    np.testing.assert_array_equal(decoded, pixels)
    assert np.shares_memory(decoded, np.frombuffer(msg.data, np.uint8))
    # Re-encoding gives a tightly packed image with the same pixels.
    again = numpy_to_image(np.ascontiguousarray(decoded), encoding)
    assert again.step == 6 * channels
    np.testing.assert_array_equal(image_to_numpy(again), pixels)


def test_float_round_trip_32fc1():
    values = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    msg = numpy_to_image(values, "32FC1")
    assert msg.step == 6 * 4 and len(msg.data) == 4 * 6 * 4
    np.testing.assert_array_equal(image_to_numpy(msg), values)


def test_rgb8_decoding_is_zero_copy():
    msg = numpy_to_image(_rgb(), "rgb8")
    out = image_to_rgb(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_new_image_view_writes_into_the_message():
    msg, view = new_image(3, 4, "rgb8")
    view[...] = 7
    assert bytes(msg.data) == bytes([7]) * (3 * 4 * 3)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("encoding", ["16UC1", "yuv422", "jpeg"])
def test_unsupported_encoding_is_a_clear_error(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=4)
    msg.data = array.array("B", bytes(8))
    with pytest.raises(ValueError, match=f"unsupported.*{encoding}"):
        image_to_rgb(msg)


def test_32fc1_is_not_an_input_encoding():
    msg = numpy_to_image(np.zeros((2, 2), np.float32), "32FC1")
    with pytest.raises(ValueError, match="unsupported input encoding '32FC1'"):
        image_to_rgb(msg)


def test_wrong_data_length_is_a_clear_error():
    msg = numpy_to_image(_rgb(4, 4), "rgb8")
    msg.data = msg.data[:-3]
    with pytest.raises(ValueError, match=r"data has 45 bytes, expected step x height = 12 x 4"):
        image_to_rgb(msg)


def test_step_shorter_than_a_row_is_a_clear_error():
    msg = Image(height=2, width=4, encoding="rgb8", step=8)
    msg.data = array.array("B", bytes(16))
    with pytest.raises(ValueError, match="step 8 is shorter than a row"):
        image_to_numpy(msg)


def test_encoder_checks_shape_and_dtype():
    with pytest.raises(ValueError, match="HxWx3"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="dtype float32"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "32FC1")


# ---------------------------------------------------------------- CompressedImage


def _scene(h=48, w=64):
    rng = np.random.default_rng(5)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 40, 10)
    img[:, w // 2:] = (10, 60, 220)
    img[h // 2:] += rng.integers(0, 20, (h - h // 2, w, 3), dtype=np.uint8)
    return img


def test_png_round_trip_is_exact_for_colour_and_mono():
    from davss_ros.ros.image import compressed_to_rgb, rgb_to_compressed

    rgb = _scene()
    msg = rgb_to_compressed(rgb, "png")
    assert msg.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)
    mono = rgb[:, :, 1].copy()
    msg = rgb_to_compressed(mono, "png")
    assert msg.format.startswith("mono8")
    np.testing.assert_array_equal(compressed_to_rgb(msg), np.repeat(mono[:, :, None], 3, 2))


def test_jpeg_keeps_the_colours_in_rgb_order():
    from davss_ros.ros.image import compressed_to_rgb, rgb_to_compressed

    rgb = _scene()
    out = compressed_to_rgb(rgb_to_compressed(rgb, "jpeg", quality=95))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    # away from the colour edge, within JPEG's error: red stays red, blue stays blue
    assert np.abs(out[:, :20].astype(int) - rgb[:, :20]).max() < 20
    assert np.abs(out[:, -20:].astype(int) - rgb[:, -20:]).max() < 20


def _jpeg_sampling(data: bytes) -> list[int]:
    """The sampling-factor byte of each component in a baseline JPEG's SOF0 segment."""
    at = data.index(b"\xff\xc0")
    n = data[at + 9]
    return [data[at + 10 + 3 * i + 1] for i in range(n)]


def test_jpeg_keeps_full_colour_resolution_unless_420_is_asked():
    from davss_ros.ros.image import JPEG_QUALITY, encode_compressed

    _, data = encode_compressed(_scene(), "jpeg")
    assert _jpeg_sampling(data) == [0x11, 0x11, 0x11]  # 4:4:4: no chroma subsampling
    _, sub = encode_compressed(_scene(), "jpeg", chroma="420")
    assert _jpeg_sampling(sub) == [0x22, 0x11, 0x11]  # luma 2x2 per chroma sample
    assert len(sub) < len(data)
    _, lower = encode_compressed(_scene(), "jpeg", quality=JPEG_QUALITY - 20)
    assert len(lower) < len(data)
    _, mono = encode_compressed(_scene()[:, :, 0].copy(), "jpeg")
    assert _jpeg_sampling(mono) == [0x11]
    with pytest.raises(ValueError, match="chroma"):
        encode_compressed(_scene(), "jpeg", chroma="422")
    with pytest.raises(ValueError, match="quality"):
        encode_compressed(_scene(), "jpeg", quality=0)


def test_a_format_string_without_a_kind_is_told_from_the_data():
    from davss_ros.ros.image import compressed_kind, rgb_to_compressed

    msg = rgb_to_compressed(_scene(), "jpeg")
    msg.format = ""
    assert compressed_kind(msg) == "jpeg"
    msg.format = "theora"
    with pytest.raises(ImageError) as err:
        compressed_kind(msg)
    assert err.value.kind == "encoding"


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_or_corrupt_compressed_data_is_refused(kind):
    from davss_ros.ros.image import compressed_to_rgb, rgb_to_compressed

    msg = rgb_to_compressed(_scene(), kind)
    whole = bytes(msg.data)
    for data in (whole[: len(whole) * 2 // 3], whole[:4] + bytes(len(whole) - 4), b""):
        msg.data = array.array("B", data)
        with pytest.raises(ImageError) as err:
            compressed_to_rgb(msg)
        assert err.value.kind in ("corrupt", "empty")
