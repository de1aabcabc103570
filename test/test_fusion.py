"""davss_ros.model.fusion: DAVSS, Accel and DFF fusions of propagated logits."""

import pytest
import torch

from davss_ros.model import AccelFusion, DistortionGuidedFusion


def _logits():
    return torch.randn(2, 5, 6, 8), torch.randn(2, 5, 6, 8)


def test_distortion_guided_fusion_follows_the_equation():
    fuse = DistortionGuidedFusion()
    p, c = _logits()
    zeros = torch.zeros(2, 1, 6, 8)
    assert torch.equal(fuse(p, c, zeros), p)
    assert torch.equal(fuse(p, c, torch.ones_like(zeros)), c)
    torch.testing.assert_close(fuse(p, c, zeros + 0.25), 0.75 * p + 0.25 * c)


def test_distortion_map_is_applied_per_pixel():
    fuse = DistortionGuidedFusion()
    p, c = _logits()
    m = torch.zeros(2, 1, 6, 8)
    m[:, :, :, 4:] = 1.0
    out = fuse(p, c, m)
    assert torch.equal(out[..., :4], p[..., :4])
    assert torch.equal(out[..., 4:], c[..., 4:])


def test_distortion_guided_fusion_rejects_a_bad_map():
    p, c = _logits()
    with pytest.raises(ValueError, match="distortion_map"):
        DistortionGuidedFusion()(p, c, torch.zeros(2, 5, 6, 8))


def test_accel_fusion_returns_propagated_logits_at_init():
    fuse = AccelFusion(5)
    p, c = _logits()
    torch.testing.assert_close(fuse(p, c), p)
    assert sum(t.numel() for t in fuse.parameters()) == 5 * 10 + 5


def test_accel_fusion_output_shape_and_class_check():
    fuse = AccelFusion(5)
    p, c = _logits()
    assert fuse(p, c).shape == p.shape
    with pytest.raises(ValueError, match="5 classes"):
        fuse(torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8))
