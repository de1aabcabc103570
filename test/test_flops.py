"""The paper's Table I FLOPs counter, checked against hand arithmetic and torch's counter."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from davss_ros.cli import main
from davss_ros.config import load_config
from davss_ros.flops import (
    FlopCounter,
    c_mean,
    count_flops,
    frame_cost_table,
    fusion_flops,
    warp_flops,
)


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    )


def test_tiny_net_matches_hand_arithmetic():
    report = count_flops(tiny_net(), torch.rand(1, 3, 8, 8))
    conv = 2 * 8 * 8 * (3 * 3 * 3 + 1) * 4  # 2 Ho Wo (Ci Kh Kw + 1) Co = 14336
    bn = 2 * 8 * 8 * 4  # 2 H W C = 512
    relu = 8 * 8 * 4  # H W C = 256
    up = 11 * 16 * 16 * 4  # 11 Ho Wo Co = 11264
    assert [(n, t, f) for n, t, f in report.rows] == [
        ("0", "Conv2d", conv), ("1", "BatchNorm2d", bn), ("2", "ReLU", relu),
        ("3", "Upsample", up)]
    assert report.total == conv + bn + relu + up == 26368
    assert report.uncounted == set()


def test_batch_counts_each_sample():
    one = count_flops(tiny_net(), torch.rand(1, 3, 8, 8)).total
    assert count_flops(tiny_net(), torch.rand(3, 3, 8, 8)).total == 3 * one


def test_depthwise_conv_counts_one_input_channel_per_output():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    report = count_flops(conv, torch.rand(1, 8, 10, 10))
    assert report.total == 2 * 10 * 10 * (1 * 3 * 3 + 1) * 8  # 16000, bias term included


def test_conv_transpose_counts_input_side_work_plus_bias():
    deconv = nn.ConvTranspose2d(4, 2, kernel_size=4, stride=2, padding=1)
    report = count_flops(deconv, torch.rand(1, 4, 5, 5))
    # 2 Hi Wi (Ci/g Kh Kw) Co + 2 Ho Wo Co, with a 10 x 10 output.
    assert report.total == 2 * 5 * 5 * (4 * 4 * 4) * 2 + 2 * 10 * 10 * 2 == 6800


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(3, 8, 3, padding=1), (2, 3, 9, 7)),
    (nn.Conv2d(6, 12, 5, stride=2, padding=2, bias=False), (1, 6, 16, 12)),
    (nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4), (1, 8, 10, 10)),
    (nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1), (1, 6, 5, 6)),
])
def test_conv_agrees_with_torch_flop_counter_modulo_bias(layer, shape):
    x = torch.rand(shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = layer(x)
    ours = count_flops(layer, x).total
    n, c_out, h_out, w_out = out.shape
    # torch counts 2 x multiply-accumulates and no bias; Table I adds 2 Ho Wo Co per sample.
    assert ours - 2 * n * h_out * w_out * c_out == counter.get_total_flops()


def test_linear_counts_every_row():
    report = count_flops(nn.Linear(5, 3), torch.rand(2, 4, 5))
    assert report.total == 2 * (5 + 1) * 3 * 8


def test_interpolate_module_counted_as_bilinear_and_nearest_as_free():
    class Interpolate(nn.Module):
        def __init__(self, scale: int, mode: str = "bilinear") -> None:
            super().__init__()
            self.scale, self.mode = scale, mode

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=self.scale, mode=self.mode)

    x = torch.rand(1, 2, 4, 4)
    assert count_flops(Interpolate(4), x).total == 11 * 16 * 16 * 2
    assert count_flops(Interpolate(4, "nearest"), x).total == 0
    assert count_flops(nn.Upsample(scale_factor=2, mode="nearest"), x).total == 0


def test_hooks_are_removed_after_counting_and_on_error():
    net = tiny_net()
    count_flops(net, torch.rand(1, 3, 8, 8))
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(RuntimeError):
        count_flops(net, torch.rand(1, 5, 8, 8))  # wrong channel count: the conv raises
    assert all(not m._forward_hooks for m in net.modules())


def test_training_mode_is_restored():
    net = tiny_net().train()
    net[1].eval()
    count_flops(net, torch.rand(1, 3, 8, 8))
    assert net.training and net[0].training and not net[1].training


def test_uncounted_module_type_is_reported():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GELU(), nn.Dropout2d(0.1))
    report = count_flops(net, torch.rand(1, 3, 4, 4))
    assert report.uncounted == {"GELU"}  # dropout is known to be free
    assert ("1", "GELU", 0) in report.rows
    assert "GELU" in report.format_table()


def test_shared_module_sums_its_calls_and_by_prefix_groups_children():
    class Siamese(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.branch = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.branch(a), self.branch(b)], 1))

    x = torch.rand(1, 3, 4, 4)
    report = count_flops(Siamese(), x, x)
    branch_once = 2 * 16 * (3 + 1) * 4 + 16 * 4
    head = 2 * 16 * (8 + 1) * 1
    assert report.by_prefix() == {"branch": 2 * branch_once, "head": head}
    assert report.by_prefix(depth=2)["branch.0"] == 2 * 2 * 16 * (3 + 1) * 4


def test_c_mean_is_paper_eq_8():
    assert c_mean(826.4, 212.9, 0) == 826.4
    assert c_mean(826.4, 212.9, 5) == pytest.approx((826.4 + 212.9 * 5) / 6)
    assert c_mean(10.0, 1.0, 9) == pytest.approx(1.9)
    with pytest.raises(ValueError, match="d >= 0"):
        c_mean(1.0, 1.0, -1)


def test_analytic_warp_and_fusion_costs():
    assert warp_flops(19, 4, 8) == 11 * 4 * 8 * 19
    assert fusion_flops(19, 4, 8) == 3 * 4 * 8 * 19 + 4 * 8


def test_transposed_output_convention_applies_conv_formula_to_output():
    deconv = nn.ConvTranspose2d(4, 2, kernel_size=4, stride=2, padding=1)
    report = FlopCounter(transposed="output").count(deconv, torch.rand(1, 4, 5, 5))
    assert report.total == 2 * 10 * 10 * (4 * 4 * 4 + 1) * 2
    with pytest.raises(ValueError, match="transposed convention"):
        FlopCounter(transposed="sideways")


def test_flops_command_prints_table2_rows(capsys, tmp_path):
    out_json = tmp_path / "flops.json"
    rc = main(["flops", "--config", "cpu", "--height", "64", "--width", "128",
               "--json", str(out_json), "--modules"])
    assert rc == 0
    text = capsys.readouterr().out
    for row in ("FlowNet (DIS: 0)", "CFNet", "DMNet", "Overall for key", "Overall for non-key",
                "== segmenter", "dff", "accel", "davss", "D=9"):
        assert row in text
    table = json.loads(out_json.read_text())
    assert table["input_height"] == 64 and table["input_width"] == 128
    assert table["modules"]["flownet"] == 0.0
    assert table["uncounted"] == {}


@pytest.mark.parametrize("preset_name", ["cpu", "paper"])
def test_non_key_frames_cost_less_than_key_frames(preset_name, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(f"preset: {preset_name}\nmodel:\n  input_height: 64\n"
                      "  input_width: 128\n")
    table = frame_cost_table(load_config(str(config)))
    assert (table["modules"]["flownet"] > 0.0) == (preset_name == "paper")
    key, non_key = table["key"], table["non_key"]
    assert non_key["dff"] < non_key["davss"] < key
    assert non_key["per_frame"] == key
    # C_mean falls with the propagation distance towards the non-key cost (Eq. 8).
    means = [table["c_mean"]["davss"][str(d)] for d in range(1, 10)]
    assert means == sorted(means, reverse=True)
    assert means[0] == pytest.approx((key + non_key["davss"]) / 2)
