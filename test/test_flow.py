"""davss_ros.model.flow: flow providers and their sign convention."""

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from davss_ros.config import CFNetConfig, FlowConfig, ModelConfig
from davss_ros.model import (
    CFNet,
    DeepLabV3Plus,
    DISFlow,
    DMNet,
    FlowNetS,
    LearnedFlow,
    build_davss_net,
    build_flow,
    warp,
)
from davss_ros.model import flow as flow_module


def _textured(h: int = 256, w: int = 256, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    img = (img - img.min()) / (img.max() - img.min())
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def test_dis_recovers_a_shift_with_the_warp_convention():
    previous = _textured()
    current = torch.roll(previous, 8, dims=3)  # content moves 8 px right: 2 px at 1/4
    flow = DISFlow("fast")(current, previous)
    assert flow.shape == (1, 2, 64, 64)
    inner = flow[..., 8:-8, 8:-8]
    assert abs(inner[:, 0].median().item() + 2.0) < 0.1
    assert abs(inner[:, 1].median().item()) < 0.1
    # warp(previous, flow) must reproduce the current frame (this is what the pipeline uses)
    prev_q, cur_q = F.avg_pool2d(previous, 4), F.avg_pool2d(current, 4)
    err = (warp(prev_q, flow) - cur_q)[..., 8:-8, 8:-8].abs().mean()
    unwarped = (prev_q - cur_q)[..., 8:-8, 8:-8].abs().mean()
    assert err < 0.01 < unwarped


def test_dis_returns_float_flow_on_the_input_dtype():
    frames = _textured(64, 128)
    flow = DISFlow("ultrafast")(frames.double(), frames.double())
    assert flow.dtype == torch.float64 and flow.shape == (1, 2, 16, 32)


def test_dis_handles_a_batch_frame_by_frame():
    a, b = _textured(64, 64, 0), _textured(64, 64, 1)
    dis = DISFlow("ultrafast")
    batch = dis(torch.cat([a, b]), torch.cat([b, a]))
    torch.testing.assert_close(batch[:1], DISFlow("ultrafast")(a, b))
    torch.testing.assert_close(batch[1:], DISFlow("ultrafast")(b, a))


def test_dis_reuses_the_last_current_frame_only_while_unmodified(monkeypatch):
    f0, f1, f2 = (_textured(64, 64, s) for s in range(3))
    dis = DISFlow("ultrafast")
    calls = []
    real = flow_module._quarter_grey
    monkeypatch.setattr(flow_module, "_quarter_grey", lambda x: calls.append(x) or real(x))
    dis(f1, f0)
    assert len(calls) == 2
    out = dis(f2, f1)  # f1 was the last current: its grey image is reused
    assert len(calls) == 3
    torch.testing.assert_close(out, DISFlow("ultrafast")(f2, f1))
    f2.mul_(0.5)  # an in-place edit invalidates the cached grey image
    calls.clear()
    out = dis(f0, f2)
    assert len(calls) == 2
    torch.testing.assert_close(out, DISFlow("ultrafast")(f0, f2))


def test_dis_rejects_unknown_presets_and_bad_frames():
    with pytest.raises(ValueError, match="ultrafast, fast, medium"):
        DISFlow("slow")
    with pytest.raises(ValueError, match="one shape"):
        DISFlow()(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 128))
    with pytest.raises(ValueError, match="multiples of 4"):
        DISFlow()(torch.rand(1, 3, 62, 64), torch.rand(1, 3, 62, 64))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        DISFlow()(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))


@torch.no_grad()
def test_learned_flow_runs_the_flownet():
    net = FlowNetS(width=0.125).eval()
    provider = build_flow(FlowConfig(provider="learned"), flownet=net)
    assert isinstance(provider, LearnedFlow)
    a, b = torch.rand(1, 3, 64, 128), torch.rand(1, 3, 64, 128)
    torch.testing.assert_close(provider(a, b), net(a, b))
    with pytest.raises(ValueError, match="multiples of 64"):
        provider(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_build_flow_picks_the_provider():
    dis = build_flow(FlowConfig(provider="dis", dis_preset="medium"))
    assert isinstance(dis, DISFlow) and dis.preset == "medium"
    with pytest.raises(ValueError, match="needs a FlowNetS"):
        build_flow(FlowConfig(provider="learned"))
    with pytest.raises(ValueError, match="dis, learned"):
        build_flow(FlowConfig(provider="raft"))


def test_davss_net_holds_a_flownet_only_for_learned_flow():
    dis_net = build_davss_net(ModelConfig(num_classes=4, cfnet=CFNetConfig(width_mult=0.125)))
    assert dis_net.flownet is None
    assert isinstance(dis_net.segmenter, DeepLabV3Plus) and isinstance(dis_net.dmnet, DMNet)
    assert isinstance(dis_net.cfnet, CFNet) and dis_net.cfnet is not dis_net.accel_cfnet
    assert dis_net.cfnet.width_mult == dis_net.accel_cfnet.width_mult == 0.125
    assert dis_net.accel_fusion.num_classes == 4
    learned = build_davss_net(ModelConfig(num_classes=4, flow=FlowConfig(provider="learned")))
    assert isinstance(learned.flownet, FlowNetS)
    assert isinstance(build_flow(learned.config.flow, learned.flownet), LearnedFlow)
