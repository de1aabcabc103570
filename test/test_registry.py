"""davss_ros.registry: named kinds that the configuration checks and the builders use."""

import pytest
import torch

from davss_ros.config import load_config
from davss_ros.model import build_davss_net, build_flow
from davss_ros.model.flow import DISFlow
from davss_ros.registry import BACKBONES, DATASETS, FLOW_PROVIDERS, KEY_SEGMENTERS, Registry


def test_every_registered_name_resolves_to_a_builder():
    for registry in (BACKBONES, FLOW_PROVIDERS, KEY_SEGMENTERS, DATASETS):
        for name in registry:
            assert callable(registry.get(name)), (registry.kind, name)


def test_config_refuses_unregistered_names_and_lists_the_registered_ones():
    with pytest.raises(ValueError, match="model.segmenter.backbone must be one of "
                                         "xception65, resnet18, resnet50, mobilenet_v3_large"):
        load_config({"model": {"segmenter": {"backbone": "vgg16"}}})
    with pytest.raises(ValueError, match="model.flow.provider must be one of dis, learned"):
        load_config({"model": {"flow": {"provider": "raft"}}})


def test_a_new_flow_provider_is_one_class_and_one_entry():
    class ZeroFlow(DISFlow):
        def compute(self, current, previous):
            n, _, h, w = current.shape
            return torch.zeros(n, 2, h // 4, w // 4)

    FLOW_PROVIDERS.register("zero_test", ZeroFlow)
    try:
        cfg = load_config({"model": {"flow": {"provider": "zero_test"},
                                     "input_height": 64, "input_width": 64}}).model
        net = build_davss_net(cfg)
        assert net.flownet is None  # it needs no network
        flow = build_flow(cfg.flow)
        assert isinstance(flow, ZeroFlow)
        x = torch.rand(1, 3, 64, 64)
        assert flow(x, x).abs().sum() == 0
    finally:
        FLOW_PROVIDERS._targets.pop("zero_test")


def test_registering_twice_or_a_bad_target_is_refused():
    reg = Registry("thing", {"a": "math:sqrt"})
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "math:floor")
    with pytest.raises(ValueError, match="module:attribute"):
        reg.register("b", "math.floor")
    assert reg.get("a")(9.0) == 3.0
