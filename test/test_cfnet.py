"""davss_ros.model.cfnet: the correction-cue network."""

import pytest
import torch

from davss_ros.model import CFNet


@torch.no_grad()
def test_output_is_class_logits_at_quarter_resolution():
    net = CFNet(7, width_mult=0.25).eval()
    out = net(torch.rand(2, 3, 64, 128))
    assert out.shape == (2, 7, 16, 32)


def test_width_mult_scales_channels_with_a_floor_of_eight():
    full = CFNet(19)
    quarter = CFNet(19, width_mult=0.25)
    tiny = CFNet(19, width_mult=0.01)
    assert [m[0].out_channels for m in full.encoder] == [32, 64, 128, 128, 256, 256, 256, 256,
                                                         512, 512]
    assert [m[0].out_channels for m in quarter.encoder] == [8, 16, 32, 32, 64, 64, 64, 64,
                                                            128, 128]
    assert all(m[0].out_channels == 8 for m in tiny.encoder)
    assert full.classifier.in_channels == 96  # 32 (deconv2) + 64 (conv2), as in the paper


def test_full_width_matches_the_paper_layout():
    net = CFNet(19)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 11  # 10 encoder convs + the 1x1 classifier
    assert len(deconvs) == 4
    assert all(c.bias is None for c in convs[:10])
    assert [d.out_channels for d in deconvs] == [256, 128, 64, 32]


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (1, 3, 32, 64), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_raises_value_error(shape):
    with pytest.raises(ValueError, match="CFNet expects"):
        CFNet(3, width_mult=0.25)(torch.rand(shape))
