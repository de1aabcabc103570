"""davss_ros.model.warp: backward bilinear warping with border clamping."""

import cv2
import numpy as np
import pytest
import torch

from davss_ros.model import warp


def test_zero_flow_is_identity():
    x = torch.randn(2, 5, 12, 17)
    out = warp(x, torch.zeros(2, 2, 12, 17))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_constant_integer_flow_shifts_the_interior():
    x = torch.randn(1, 3, 16, 20)
    flow = torch.zeros(1, 2, 16, 20)
    flow[:, 0] = 3.0  # sample 3 px to the right
    flow[:, 1] = -2.0  # and 2 px up
    out = warp(x, flow)
    # out(y, x) = in(y - 2, x + 3) wherever that lies inside the image
    torch.testing.assert_close(out[..., 2:, :-3], x[..., :-2, 3:], atol=1e-5, rtol=0)


def test_agrees_with_cv2_remap_on_fractional_flow():
    h, w = 24, 32
    x = np.random.rand(h, w, 3).astype(np.float32)
    flow = (np.random.rand(h, w, 2).astype(np.float32) - 0.5) * 10.0
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    expected = cv2.remap(x, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    out = warp(torch.from_numpy(x).permute(2, 0, 1)[None],
               torch.from_numpy(flow).permute(2, 0, 1)[None])
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=1e-2)


def test_samples_outside_the_image_clamp_to_the_border():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    flow = torch.zeros(1, 2, 3, 4)
    flow[:, 0] = 100.0
    out = warp(x, flow)
    torch.testing.assert_close(out, x[..., -1:].expand_as(x))
    flow[:, 0] = 0.0
    flow[:, 1] = -100.0
    out = warp(x, flow)
    torch.testing.assert_close(out, x[..., :1, :].expand_as(x))


@pytest.mark.parametrize("x_shape, flow_shape", [
    ((1, 3, 8, 8), (1, 3, 8, 8)),  # flow must have 2 channels
    ((1, 3, 8, 8), (1, 2, 8, 9)),  # spatial size must match
    ((2, 3, 8, 8), (1, 2, 8, 8)),  # batch must match
    ((3, 8, 8), (2, 8, 8)),  # must be 4-D
])
def test_bad_shapes_raise_value_error(x_shape, flow_shape):
    with pytest.raises(ValueError, match="warp expects"):
        warp(torch.zeros(x_shape), torch.zeros(flow_shape))


def test_flow_is_differentiable():
    x = torch.randn(1, 2, 6, 7)
    flow = torch.full((1, 2, 6, 7), 0.3, requires_grad=True)
    warp(x, flow).sum().backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(2, 19, 32, 48)
    flow = torch.randn(2, 2, 32, 48) * 4.0
    expected = warp(x, flow)
    out = warp(x.cuda(), flow.cuda()).cpu()
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
