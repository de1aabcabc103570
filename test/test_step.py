"""davss_ros.model.step: the mode table and the non-key step every caller shares."""

import pytest
import torch

from davss_ros.config import MODES, load_config
from davss_ros.model import (
    MODE_TABLE,
    DistortionGuidedFusion,
    PropagationState,
    build_davss_net,
    build_flow,
    mode_spec,
    warp,
)
from davss_ros.model.step import quarter_image

H, W = 64, 128


def _net(**model):
    cfg = load_config({"model": {"input_height": H, "input_width": W,
                                 "segmenter": {"aspp_channels": 16, "decoder_channels": 16},
                                 **model}}).model
    torch.manual_seed(0)
    net = build_davss_net(cfg).eval()
    return net, build_flow(cfg.flow, net.flownet)


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    prev = torch.rand(1, 3, H, W, generator=g)
    return prev, torch.roll(prev, 3, dims=-1)


def test_the_table_names_every_mode_and_only_networks_the_model_has():
    assert tuple(MODE_TABLE) == MODES
    net, _ = _net()
    for mode, spec in MODE_TABLE.items():
        for name in spec.networks:
            assert isinstance(getattr(net, name), torch.nn.Module), (mode, name)
    assert MODE_TABLE["per_frame"].networks == ()
    assert MODE_TABLE["dff"].networks == ()
    assert MODE_TABLE["davss"].networks == ("dmnet", "cfnet", "fusion")
    with pytest.raises(ValueError, match="per_frame, dff, accel, davss"):
        mode_spec("segformer")


@torch.no_grad()
def test_davss_step_is_flow_warp_dmnet_cfnet_and_eq4():
    net, flow = _net()
    prev, cur = _pair()
    key_logits = net.segmenter(prev)
    state = PropagationState.from_key(prev, key_logits)
    parts = net.non_key_step(flow).propagate(state, cur, "davss")
    f = flow(cur, prev)
    warped = warp(key_logits, f)
    warped_image = warp(quarter_image(prev), f)
    m = net.dmnet(warped_image, quarter_image(cur))
    cue = net.cfnet(cur)
    torch.testing.assert_close(parts.propagated, warped)
    torch.testing.assert_close(parts.warped_image, warped_image)
    torch.testing.assert_close(parts.distortion_map, m)
    torch.testing.assert_close(parts.cue, cue)
    torch.testing.assert_close(parts.fused, DistortionGuidedFusion()(warped, cue, m))
    # the raw warped logits go on (the authors' choice), or the output with corrected
    assert parts.next_state(cur).logits is parts.propagated
    assert parts.next_state(cur, corrected=True).logits is parts.fused


@torch.no_grad()
def test_each_mode_runs_only_its_networks():
    net, flow = _net()
    prev, cur = _pair(1)
    calls = []
    hooks = [getattr(net, n).register_forward_hook(lambda *_a, n=n: calls.append(n))
             for n in ("dmnet", "cfnet", "accel_cfnet", "accel_fusion", "fusion")]
    state = PropagationState.from_key(prev, net.segmenter(prev))
    step = net.non_key_step(flow)
    try:
        for mode in ("dff", "accel", "davss"):
            calls.clear()
            parts = step.propagate(state, cur, mode)
            assert sorted(calls) == sorted(MODE_TABLE[mode].networks), mode
            if mode == "dff":
                assert parts.cue is None and parts.fused is parts.propagated
        calls.clear()
        step.propagate(state, cur, "dff", distortion=True)  # an adaptive schedule asks for M
        assert calls == ["dmnet"]
    finally:
        for h in hooks:
            h.remove()
    with pytest.raises(ValueError, match="no non-key frames"):
        step.propagate(state, cur, "per_frame")


@torch.no_grad()
def test_constant_fusion_map_blends_half_and_half_whatever_dmnet_says():
    net, flow = _net()
    prev, cur = _pair(2)
    state = PropagationState.from_key(prev, net.segmenter(prev))
    parts = net.non_key_step(flow, fusion_map="constant").propagate(state, cur, "davss")
    torch.testing.assert_close(parts.fused, 0.5 * parts.propagated + 0.5 * parts.cue)
    assert not torch.allclose(parts.distortion_map, torch.full_like(parts.distortion_map, 0.5))


def test_the_step_carries_gradients_to_the_trained_networks():
    net, flow = _net()
    net.train()
    prev, cur = _pair(3)
    with torch.no_grad():
        state = PropagationState.from_key(prev, net.segmenter(prev))
    parts = net.non_key_step(flow).propagate(state, cur, "davss")
    parts.fused.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.cfnet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.dmnet.parameters())
    assert all(p.grad is None for p in net.accel_cfnet.parameters())
