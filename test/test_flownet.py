"""davss_ros.model.flownet: FlowNet-S at 3/8 width."""

import pytest
import torch

from davss_ros.config import FlowConfig
from davss_ros.model import FlowNetS, build_flownet


def test_encoder_channels_are_three_eighths_of_flownet_s():
    net = build_flownet(FlowConfig())
    assert [m[0].out_channels for m in net.encoder] == [24, 48, 96, 96, 192, 192, 192, 192,
                                                        384, 384]
    assert [p.in_channels for p in net.predict_flow] == [384, 386, 290, 146, 74]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@torch.no_grad()
def test_output_is_two_channel_flow_at_quarter_resolution():
    net = FlowNetS(width=0.125).eval()
    flow = net(torch.rand(2, 3, 64, 128), torch.rand(2, 3, 64, 128))
    assert flow.shape == (2, 2, 16, 32)


@torch.no_grad()
def test_level_two_prediction_is_scaled_by_five():
    net = FlowNetS(width=0.125).eval()
    last = net.predict_flow[-1]
    last.weight.zero_()
    last.bias.copy_(torch.tensor([1.0, -0.5]))
    flow = net(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(flow[:, 0], torch.full((1, 16, 16), 5.0))
    torch.testing.assert_close(flow[:, 1], torch.full((1, 16, 16), -2.5))


def test_frames_are_stacked_current_first():
    net = FlowNetS(width=0.125)
    seen = {}
    net.encoder[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    current, previous = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        net(current, previous)
    assert torch.equal(seen["x"][:, :3], current) and torch.equal(seen["x"][:, 3:], previous)


@pytest.mark.parametrize("a, b", [
    ((1, 3, 64, 96), (1, 3, 64, 96)),  # not a multiple of 64
    ((1, 3, 64, 64), (1, 3, 128, 64)),  # different shapes
    ((1, 6, 64, 64), (1, 6, 64, 64)),  # not RGB
])
def test_bad_input_raises_value_error(a, b):
    with pytest.raises(ValueError, match="FlowNetS expects"):
        FlowNetS(width=0.125)(torch.rand(a), torch.rand(b))
