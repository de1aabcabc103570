"""Property-based tests (hypothesis): image decoding and parameter validation.

Image decoding faces whatever a driver or a bag puts in a sensor_msgs/Image; it must either
give the right pixels or raise ImageError naming the problem, never anything else. The
parameter rules are checked against three other authorities: the ROS parameter descriptors
(ranges the rclpy node enforces itself), the pipeline's schedule validation, and torch's
device parser.
"""

from __future__ import annotations

import array
import math

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from davss_ros.ros import params as P  # noqa: E402
from davss_ros.ros.image import (  # noqa: E402
    ENCODINGS,
    INPUT_ENCODINGS,
    ImageError,
    image_to_numpy,
    image_to_rgb,
    numpy_to_image,
)
from davss_ros.schedule import validate_schedule  # noqa: E402
from davss_ros.tools.harness import unique_domain_id  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
KINDS = {"encoding", "empty", "step", "data_length"}


def _msg(encoding: str, height: int, width: int, step: int, data: bytes,
         bigendian: bool = False) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step,
                is_bigendian=bigendian)
    msg.data = array.array("B", data)
    return msg


@st.composite
def valid_images(draw, encodings=tuple(ENCODINGS)):
    """(message, expected pixels) with random size, row padding and content."""
    encoding = draw(st.sampled_from(encodings))
    channels, dtype = ENCODINGS[encoding]
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    pad = draw(st.integers(0, 3)) * dtype.itemsize
    shape = (h, w) if channels == 1 else (h, w, channels)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = draw(st.binary(min_size=n, max_size=n))
    pixels = np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)
    row = w * channels * dtype.itemsize
    buf = np.full((h, row + pad), 0xAB, np.uint8)
    buf[:, :row] = np.frombuffer(raw, np.uint8).reshape(h, row)
    return _msg(encoding, h, w, row + pad, buf.tobytes()), pixels


@SETTINGS
@given(valid_images())
def test_any_valid_image_decodes_to_its_pixels_whatever_the_padding(case):
    msg, pixels = case
    out = image_to_numpy(msg)
    assert out.shape == pixels.shape
    if pixels.dtype.kind == "f":
        np.testing.assert_array_equal(out.view(np.uint32), pixels.view(np.uint32))  # NaN too
    else:
        np.testing.assert_array_equal(out, pixels)


@SETTINGS
@given(valid_images(INPUT_ENCODINGS))
def test_every_input_encoding_gives_hxwx3_uint8_rgb(case):
    msg, pixels = case
    rgb = image_to_rgb(msg)
    assert rgb.shape == pixels.shape[:2] + (3,) and rgb.dtype == np.uint8
    expected = {
        "rgb8": lambda p: p,
        "bgr8": lambda p: p[:, :, ::-1],
        "rgba8": lambda p: p[:, :, :3],
        "bgra8": lambda p: p[:, :, 2::-1],
        "mono8": lambda p: np.repeat(p[:, :, None], 3, axis=2),
    }[msg.encoding](pixels)
    np.testing.assert_array_equal(rgb, expected)


@SETTINGS
@given(
    encoding=st.one_of(st.sampled_from(tuple(ENCODINGS) + ("16UC1", "yuv422", "", "RGB8")),
                       st.text(max_size=12)),
    height=st.integers(0, 40), width=st.integers(0, 40),
    step=st.integers(0, 200), size=st.integers(0, 3000), bigendian=st.booleans())
def test_arbitrary_headers_decode_or_raise_image_error_with_the_right_kind(
        encoding, height, width, step, size, bigendian):
    msg = _msg(encoding, height, width, step, bytes(size), bigendian)
    # The oracle: the first rule the message breaks, in the decoder's order.
    if encoding not in INPUT_ENCODINGS:
        expected = "encoding"
    else:
        channels = ENCODINGS[encoding][0]
        if height == 0 or width == 0:
            expected = "empty"
        elif step < width * channels:
            expected = "step"
        elif size != step * height:
            expected = "data_length"
        else:
            expected = None
    if expected is None:
        rgb = image_to_rgb(msg)
        assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    else:
        with pytest.raises(ImageError) as info:
            image_to_rgb(msg)
        assert info.value.kind == expected and info.value.kind in KINDS
        assert isinstance(info.value, ValueError)  # callers catching ValueError still work


@SETTINGS
@given(height=st.integers(1, 30), width=st.integers(1, 30), extra=st.integers(1, 4),
       bigendian=st.booleans())
def test_a_float_image_whose_step_is_not_whole_pixels_is_a_step_error(
        height, width, extra, bigendian):
    step = width * 4 + extra if extra % 4 else width * 4 + 1
    msg = _msg("32FC1", height, width, step, bytes(step * height), bigendian)
    with pytest.raises(ImageError, match="not a multiple") as info:
        image_to_numpy(msg)
    assert info.value.kind == "step"


@SETTINGS
@given(st.sampled_from(tuple(ENCODINGS)), st.integers(1, 10), st.integers(1, 10), st.data())
def test_encoding_then_decoding_is_the_identity(encoding, h, w, data):
    channels, dtype = ENCODINGS[encoding]
    shape = (h, w) if channels == 1 else (h, w, channels)
    if dtype.kind == "f":
        values = data.draw(st.lists(st.floats(width=32, allow_nan=False),
                                    min_size=h * w, max_size=h * w))
        pixels = np.array(values, np.float32).reshape(shape)
    else:
        raw = data.draw(st.binary(min_size=h * w * channels, max_size=h * w * channels))
        pixels = np.frombuffer(raw, np.uint8).reshape(shape)
    msg = numpy_to_image(pixels, encoding)
    assert msg.step * msg.height == len(msg.data)
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


# -- parameters ---------------------------------------------------------------------------------
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=20), st.lists(st.integers(), max_size=3))


def _typed_value(name: str):
    """Values of the parameter's own ROS type, in and around its allowed set."""
    spec = P.SPECS[name]
    if isinstance(spec.default, list):
        return st.lists(st.sampled_from(["/front/image_raw", "/rear/image_raw", "image", "",
                                         "left=/a/image", "1x=/b/image", "/", "x/y/z"]),
                        max_size=3)
    if isinstance(spec.default, bool):
        return st.booleans()
    if isinstance(spec.default, int):
        lo, hi, _ = spec.int_range or (-10**6, 10**6, 1)
        return st.integers(lo - 200, hi + 200)
    if isinstance(spec.default, float):
        lo, hi = spec.float_range or (-1e6, 1e6)
        return st.one_of(st.floats(lo - 2.0, hi + 2.0), st.just(math.nan), st.just(math.inf))
    choices = list(spec.choices or ()) + ["auto", "cpu", "cuda", "cuda:1", "cuda:x", "gpu",
                                          "", "cpu ", "Cuda"]
    return st.one_of(st.sampled_from(choices), st.text(max_size=10))


@SETTINGS
@given(name=st.sampled_from(sorted(P.SPECS)), value=ANY_VALUE)
def test_validate_never_raises_and_what_it_accepts_fits_the_spec(name, value):
    reason = P.validate(name, value)
    assert reason is None or (isinstance(reason, str) and name in reason)
    if reason is not None:
        return
    spec = P.SPECS[name]
    if isinstance(spec.default, bool):
        assert isinstance(value, bool)
    elif isinstance(spec.default, int):
        lo, hi, step = spec.int_range
        assert isinstance(value, int) and not isinstance(value, bool)
        assert lo <= value <= hi and (value - lo) % max(step, 1) == 0
    elif isinstance(spec.default, float):
        lo, hi = spec.float_range
        assert not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi
    elif isinstance(spec.default, list):
        assert isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        P.cameras_from(value)  # names and topics it accepts make cameras
    else:
        assert isinstance(value, str)
        if spec.choices:
            assert value in spec.choices


@SETTINGS
@given(st.data())
def test_schedule_values_the_node_accepts_are_accepted_by_the_pipeline(data):
    values = {}
    for name in P.SCHEDULE_PARAMS:
        value = data.draw(_typed_value(name), label=name)
        if P.validate(name, value) is None:
            values[name] = value
    validate_schedule(P.schedule_from(values))  # raises if the two rule sets disagree


@SETTINGS
@given(_typed_value("model.device"))
def test_an_accepted_device_is_one_torch_understands(value):
    if P.validate("model.device", value) is None and value != "auto":
        assert torch.device(value).type in ("cpu", "cuda")


@pytest.fixture(scope="module")
def ros_node():
    """A SegmenterNode that is never configured: only its parameter handling is used."""
    import rclpy

    from davss_ros.ros.node import SegmenterNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=unique_domain_id())
    node = SegmenterNode(context=context, namespace="/props")
    yield node
    node.destroy_node()
    rclpy.try_shutdown(context=context)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_running_node_accepts_exactly_what_validate_accepts(ros_node, data):
    """The rclpy descriptors (ranges, read-only) and our own check agree on every value."""
    name = data.draw(st.sampled_from(sorted(P.SPECS)), label="name")
    value = data.draw(_typed_value(name), label="value")
    before = P.value_of(ros_node, name)
    (result,) = ros_node.set_parameters([_parameter(name, value)])
    if P.SPECS[name].applies == "startup":
        assert not result.successful  # read-only at run time
    else:
        assert result.successful == (P.validate(name, value) is None), result.reason
    after = P.value_of(ros_node, name)
    if result.successful:
        assert after == value
        ros_node.set_parameters([_parameter(name, before)])
    else:
        assert after == before or (after != after and before != before)  # NaN stays NaN


def _parameter(name, value):
    """A Parameter of the spec's ROS type (an empty list has none of its own)."""
    from rclpy.parameter import Parameter

    if isinstance(P.SPECS[name].default, list) and isinstance(value, list):
        return Parameter(name, Parameter.Type.STRING_ARRAY, value)
    return Parameter(name, value=value)
