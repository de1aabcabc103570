"""Training losses: DMNet target, DDS terms (Eq. 3-7), the ablation switches, flow EPE."""

import pytest
import torch
from torch.nn import functional as F

from davss_ros.model import DistortionGuidedFusion, FrameParts, fusion_map
from davss_ros.model.fusion import CONSTANT_DISTORTION
from davss_ros.train.losses import (
    DDSSwitches,
    combine_dds,
    distortion_loss,
    distortion_target,
    flow_epe,
    frame_losses,
    quarter_flow,
    segmentation_loss,
)


def _losses(f_p, f_cc, m, target, switches=None):
    """frame_losses on the parts the model's fusion makes (M, or the constant map without
    DGFC), as the non-key step hands them to training."""
    switches = switches or DDSSwitches()
    weight = fusion_map(m, "predicted" if switches.dgfc else "constant")
    parts = FrameParts(propagated=f_p, cue=f_cc, fused=DistortionGuidedFusion()(f_p, f_cc, weight),
                       distortion_map=m, warped_image=torch.zeros(f_p.shape[0], 3,
                                                                  *f_p.shape[-2:]))
    return frame_losses(parts, target, switches)


def _logits_with_argmax(ids, num_classes=3):
    """1 x C x h x w logits whose argmax is ``ids`` (h x w)."""
    ids = torch.tensor(ids)
    return F.one_hot(ids, num_classes).permute(2, 0, 1).float().unsqueeze(0) * 5.0


def test_distortion_target_is_one_where_the_argmaxes_differ():
    propagated = _logits_with_argmax([[0, 1, 2], [2, 0, 1]])
    current = _logits_with_argmax([[0, 2, 2], [1, 0, 1]])
    target = distortion_target(propagated, current)
    assert target.shape == (1, 1, 2, 3) and target.dtype == torch.float32
    assert target[0, 0].tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_distortion_target_ignores_logit_scale_only_argmax_counts():
    a = _logits_with_argmax([[0, 1], [2, 2]])
    assert distortion_target(a, a * 0.01 + 3.0).sum() == 0


def test_distortion_target_rejects_maps_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        distortion_target(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))


def test_distortion_loss_is_binary_cross_entropy_and_lowest_at_the_target():
    target = torch.tensor([[[[0.0, 1.0]]]])
    good = distortion_loss(torch.tensor([[[[0.01, 0.99]]]]), target)
    bad = distortion_loss(torch.tensor([[[[0.99, 0.01]]]]), target)
    assert good < 0.02 < 4.0 < bad


def test_segmentation_loss_upsamples_and_ignores_255():
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 2.0
    target = torch.full((1, 8, 8), 255)
    target[0, :4] = 0
    expected = F.cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert torch.allclose(segmentation_loss(logits, target), expected)


def test_segmentation_loss_is_zero_with_a_gradient_when_everything_is_ignored():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 8, 8), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def _maps(seed=0, n=2, c=4, h=4, w=6):
    g = torch.Generator().manual_seed(seed)
    f_p = torch.randn(n, c, h, w, generator=g)
    f_cc = torch.randn(n, c, h, w, generator=g)
    m = torch.rand(n, 1, h, w, generator=g)
    target = torch.randint(0, c, (n, 4 * h, 4 * w), generator=g)
    target[:, :2] = 255
    return f_p, f_cc, m, target


def test_corrected_logits_are_the_propagated_ones_where_m_is_0_and_the_cue_where_1():
    f_p, f_cc, _, target = _maps()
    zero = _losses(f_p, f_cc, torch.zeros(2, 1, 4, 6), target)
    one = _losses(f_p, f_cc, torch.ones(2, 1, 4, 6), target)
    assert torch.allclose(zero["L_C"], zero["L_P"])
    assert torch.allclose(one["L_C"], segmentation_loss(f_cc, target))


def test_dgfl_is_the_distortion_weighted_cross_entropy_of_the_cue():
    f_p, f_cc, _, target = _maps()
    assert _losses(f_p, f_cc, torch.zeros(2, 1, 4, 6), target)["L_DGFL"] == 0
    m = torch.ones(2, 1, 4, 6)  # weight 1 everywhere: plain CE, ignored pixels weigh 0
    ce = F.cross_entropy(F.interpolate(f_cc, scale_factor=4, mode="bilinear",
                                       align_corners=False), target, ignore_index=255,
                         reduction="none")
    mean = _losses(f_p, f_cc, m, target)["L_DGFL"]
    assert torch.allclose(mean, ce.mean())  # Eq. 3: 1/(HW) over all pixels
    summed = _losses(f_p, f_cc, m, target, DDSSwitches(dgfl_norm="sum_m"))["L_DGFL"]
    assert torch.allclose(summed, ce.sum() / (target != 255).sum())


def test_dgfl_does_not_push_the_distortion_map_but_the_correction_loss_does():
    f_p, f_cc, m, target = _maps()
    m.requires_grad_(True)
    f_cc.requires_grad_(True)
    out = _losses(f_p, f_cc, m, target)
    (g_dgfl,) = torch.autograd.grad(out["L_DGFL"], m, allow_unused=True)
    (g_c,) = torch.autograd.grad(out["L_C"], m)
    assert g_dgfl is None or g_dgfl.abs().max() == 0
    assert g_c.abs().max() > 0


def test_without_dgfc_the_fusion_ignores_the_distortion_map():
    f_p, f_cc, m, target = _maps()
    sw = DDSSwitches(dgfc=False)
    a = _losses(f_p, f_cc, m, target, sw)
    b = _losses(f_p, f_cc, torch.rand_like(m), target, sw)
    assert torch.allclose(a["L_C"], b["L_C"])
    half = (1 - CONSTANT_DISTORTION) * f_p + CONSTANT_DISTORTION * f_cc
    assert torch.allclose(a["L_C"], segmentation_loss(half, target))
    # DGFL still weights by the real map
    assert not torch.allclose(a["L_DGFL"], b["L_DGFL"])


def test_without_dgfl_there_is_no_dgfl_term():
    f_p, f_cc, m, target = _maps()
    out = _losses(f_p, f_cc, m, target, DDSSwitches(dgfl=False))
    assert set(out) == {"L_P", "L_C"}


def test_total_is_the_mean_of_the_terms_averaged_over_frames():
    f2 = {"L_P": torch.tensor(1.0), "L_C": torch.tensor(2.0), "L_DGFL": torch.tensor(3.0)}
    f3 = {"L_P": torch.tensor(3.0), "L_C": torch.tensor(4.0), "L_DGFL": torch.tensor(5.0)}
    out = combine_dds([f2, f3])
    assert out["L_P"] == 2.0 and out["L_C"] == 3.0 and out["L_DGFL"] == 4.0
    assert out["total"] == pytest.approx((2.0 + 3.0 + 4.0) / 3)
    two = combine_dds([{"L_P": torch.tensor(1.0), "L_C": torch.tensor(3.0)}])
    assert two["total"] == pytest.approx(2.0)


def test_quarter_flow_averages_blocks_and_divides_by_four():
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0], flow[:, 1] = 8.0, -4.0
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :4, :4] = False  # one whole block invalid
    valid[0, 4, 4] = False  # one pixel of another block: still >= 75 % valid
    q, qv = quarter_flow(flow, valid)
    assert q.shape == (1, 2, 2, 2)
    assert torch.allclose(q[0, :, 1, 1], torch.tensor([2.0, -1.0]))
    assert qv[0].tolist() == [[False, True], [True, True]]


def test_flow_epe_counts_only_valid_pixels():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 3.0
    target[0, 1, 0, 0] = 4.0  # EPE 5 there
    target[0, 0, 1, 1] = 100.0  # invalid
    valid = torch.tensor([[[True, True], [True, False]]])
    assert flow_epe(pred, target, valid).item() == pytest.approx(5.0 / 3)
