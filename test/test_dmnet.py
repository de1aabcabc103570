"""davss_ros.model.dmnet: the distortion map from warped and current images."""

import pytest
import torch

from davss_ros.model import DMNet


def _dmnet() -> DMNet:
    net = DMNet()
    # Random BatchNorm affine parameters and statistics measured on random images, so the tests
    # do not rely on the identity-like initial state.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.momentum = None  # cumulative average over the calibration pass
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16))
    return net.eval()


@torch.no_grad()
def test_identical_inputs_give_zero_distortion():
    net = _dmnet()
    image = torch.rand(2, 3, 16, 32)
    m = net(image, image.clone())
    assert m.abs().max() < 1e-6


@torch.no_grad()
def test_all_zero_features_count_as_identical():
    net = _dmnet()
    for p in net.features[-1].parameters():  # the final 1x1 conv outputs zeros
        p.zero_()
    image = torch.rand(1, 3, 8, 8)
    assert net(image, image).abs().max() < 1e-6


@torch.no_grad()
def test_output_lies_in_unit_interval_and_differs_for_different_inputs():
    net = _dmnet()
    m = net(torch.rand(2, 3, 16, 32), torch.rand(2, 3, 16, 32))
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert m.max() > 0.01


@torch.no_grad()
def test_output_shape_is_n_1_h_w():
    m = _dmnet()(torch.rand(3, 3, 10, 14), torch.rand(3, 3, 10, 14))
    assert m.shape == (3, 1, 10, 14)


def test_mismatched_inputs_raise_value_error():
    net = _dmnet()
    with pytest.raises(ValueError, match="one shape"):
        net(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 16))
    with pytest.raises(ValueError, match="N x 3 x h x w"):
        net(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
