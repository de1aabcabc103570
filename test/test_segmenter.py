"""davss_ros.model.segmenter and backbones: DeepLabv3+ with its four backbones."""

import pytest
import torch

from davss_ros.config import SegmenterConfig
from davss_ros.model import (
    BACKBONES,
    DeepLabV3Plus,
    Interpolate,
    build_backbone,
    fold_batchnorm,
)
from davss_ros.model.segmenter import build_segmenter


def _small(backbone: str, **kw) -> SegmenterConfig:
    return SegmenterConfig(backbone=backbone, aspp_channels=16, decoder_channels=16,
                           low_level_channels=8, **kw)


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(ValueError, match="mobilenet_v3_large"):
        build_backbone("vgg16")


@pytest.mark.parametrize("name", sorted(BACKBONES))
@torch.no_grad()
def test_logits_are_at_quarter_resolution(name):
    net = build_segmenter(_small(name), num_classes=5).eval()
    assert isinstance(net, DeepLabV3Plus)
    out = net(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 5, 16, 24)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@torch.no_grad()
def test_output_stride_sets_the_stride_of_out_features(name):
    x = torch.rand(1, 3, 64, 64)
    for stride in (16, 8):
        # narrow, to keep Xception-65 fast; the strides do not depend on the width
        backbone = build_backbone(name, output_stride=stride, width_mult=0.25).eval()
        features = backbone(x)
        assert features["out"].shape[1:] == (backbone.out_channels, 64 // stride, 64 // stride)
        assert features["low_level"].shape[1:] == (backbone.low_level_channels, 16, 16)


def test_width_mult_scales_backbone_channels():
    full = build_backbone("mobilenet_v3_large")
    half = build_backbone("mobilenet_v3_large", width_mult=0.5)
    assert (full.low_level_channels, full.out_channels) == (24, 960)
    assert half.out_channels < full.out_channels
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in full.parameters())


@torch.no_grad()
def test_resizes_go_through_interpolate_modules(monkeypatch):
    net = build_segmenter(_small("resnet18"), num_classes=3).eval()
    calls = {"functional": 0, "module": 0}
    real = torch.nn.functional.interpolate

    def counting(*args, **kwargs):
        calls["functional"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", counting)
    for m in net.modules():
        if isinstance(m, Interpolate):
            m.register_forward_hook(lambda *_: calls.__setitem__("module", calls["module"] + 1))
    net(torch.rand(1, 3, 64, 64))
    assert calls["functional"] == calls["module"] == 2  # image pooling and decoder


def test_trains_at_batch_size_one():
    net = build_segmenter(_small("mobilenet_v3_large"), num_classes=3).train()
    net(torch.rand(1, 3, 64, 64)).mean().backward()
    assert net.backbone.stem[0].weight.grad is not None


@pytest.mark.parametrize("shape", [(1, 3, 64, 72), (1, 1, 64, 64), (3, 64, 64), (1, 4, 32, 32)])
def test_bad_input_raises_value_error(shape):
    net = build_segmenter(_small("resnet18"), num_classes=3).eval()
    with pytest.raises(ValueError, match="DeepLabV3Plus expects"):
        net(torch.rand(shape))


def test_integer_images_are_rejected():
    net = build_segmenter(_small("resnet18"), num_classes=3).eval()
    with pytest.raises(ValueError, match="floating-point"):
        net(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@torch.no_grad()
def test_fold_batchnorm_keeps_outputs_and_removes_batchnorm():
    net = build_segmenter(_small("mobilenet_v3_large"), num_classes=3).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(1, 3, 64, 64)
    expected = net(x)
    fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(net.train())
