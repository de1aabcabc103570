"""``davss export``: float16 copies that load as float32, checked against their source."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch

from davss_ros import export
from davss_ros.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from davss_ros.config import load_config
from davss_ros.evaluate.pda import untrained_checkpoint
from davss_ros.pipeline import VideoSegmenter

TINY = {"model": {"input_height": 64, "input_width": 128, "num_classes": 5,
                  "segmenter": {"aspp_channels": 16, "decoder_channels": 16,
                                "width_mult": 0.5}}}
TRAIN_META = {"trained_by": "davss train", "config_file": "tiny.yaml",
              "train_config": {"dataset": {"kind": "synthetic", "root": "data/tiny"}},
              "stages": {"0": {"iterations": 3}}}


def _export(*argv: str) -> int:
    """``davss export ARGV`` through the subcommand's own argument parser."""
    parser = argparse.ArgumentParser(prog="davss export")
    export.add_arguments(parser)
    return export.run(parser.parse_args(list(argv)))


def _save(path, state=None, meta=TRAIN_META):
    ck = untrained_checkpoint(load_config(TINY), seed=1)
    return save_checkpoint(path, config=ck.config, state_dict=state or ck.state_dict,
                           class_names=ck.class_names, palette=ck.palette, meta=meta)


@pytest.fixture
def source(tmp_path):
    return _save(tmp_path / "final.pt")


def _labels(checkpoint, frames, mode="davss"):
    cfg = load_config(TINY)
    cfg.model.mode = mode
    cfg.schedule.policy, cfg.schedule.key_interval = "fixed", 3
    seg = VideoSegmenter(cfg, checkpoint=checkpoint, device="cpu")
    try:
        return [seg.step(f).labels for f in frames]
    finally:
        seg.close()


def test_half_export_stores_float16_loads_float32_and_labels_like_the_source(
        source, tmp_path, capsys):
    out = tmp_path / "deploy" / "davss_cpu.pt"
    assert _export("--checkpoint", str(source), "--out", str(out), "--half",
                   "--frames", "4") == 0
    printed = capsys.readouterr().out
    assert "label agreement" in printed and f"wrote {out}" in printed and "MB" in printed

    # Stored: learned weights float16, BatchNorm statistics float32, counters int64.
    raw = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    assert raw["segmenter.decoder.classifier.weight"].dtype == torch.float16
    assert raw["accel_cfnet.classifier.weight"].dtype == torch.float16  # Accel kept
    stats = [k for k in raw if k.endswith(("running_mean", "running_var"))]
    assert stats and all(raw[k].dtype == torch.float32 for k in stats)
    assert all(raw[k].dtype == torch.int64 for k in raw if k.endswith("num_batches_tracked"))
    halves = sum(v.numel() for v in raw.values() if v.dtype == torch.float16)
    assert halves > 0.95 * sum(v.numel() for v in raw.values() if v.is_floating_point())
    assert out.stat().st_size < 0.6 * source.stat().st_size

    # Loaded: float32 throughout, the source's weights to float16 precision.
    ck, src = load_checkpoint(out), load_checkpoint(source)
    assert set(ck.state_dict) == set(src.state_dict)
    for name, value in ck.state_dict.items():
        assert value.dtype == src.state_dict[name].dtype, name
        torch.testing.assert_close(value, src.state_dict[name], rtol=1e-3, atol=1e-4)

    # The meta keeps the training record and says what the export did.
    assert {k: ck.meta[k] for k in TRAIN_META} == TRAIN_META
    record = ck.meta["export"]
    assert record["half"] is True and record["source"] == "final.pt"
    assert record["source_sha256"] == file_sha256(source)
    assert record["date"].endswith("Z") and record["float32_kept"] == []
    assert record["label_agreement"] >= export.DEFAULT_MIN_AGREEMENT

    # The exported file runs unchanged and labels new frames like the source.
    frames = export.render_frames(64, 128, frames=5, seed=11)
    for mode in ("davss", "accel"):
        a, b = _labels(source, frames, mode), _labels(out, frames, mode)
        same = np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)])
        assert same >= 0.995, (mode, same)


def test_full_precision_export_is_exact_and_records_half_false(source, tmp_path, capsys):
    out = tmp_path / "copy.pt"
    assert _export("--checkpoint", str(source), "--out", str(out), "--frames", "2") == 0
    assert "100.000%" in capsys.readouterr().out
    raw = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(v.dtype == torch.float16 for v in raw.values())
    src = load_checkpoint(source)
    assert all(torch.equal(v, src.state_dict[k]) for k, v in raw.items())
    assert load_checkpoint(out).meta["export"]["half"] is False


def test_float16_keeps_buffers_and_tensors_it_cannot_hold_in_float32():
    g = torch.Generator().manual_seed(0)
    state = {
        "conv.weight": torch.randn(8, 4, generator=g),
        "huge.weight": torch.tensor([1.0, 7.0e4]),  # beyond float16's 65504
        "tiny.weight": torch.full((6,), 3.0e-8),  # below float16's subnormals: zeros
        "bn.running_var": torch.rand(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(5),
    }
    result = export.half_state_dict(state, {"conv.weight", "huge.weight", "tiny.weight"})
    assert result.halved == ["conv.weight"]
    assert result.state_dict["conv.weight"].dtype == torch.float16
    assert set(result.kept_float32) == {"huge.weight", "tiny.weight"}
    assert "overflows" in result.kept_float32["huge.weight"]
    assert "rounding error" in result.kept_float32["tiny.weight"]
    for name in ("huge.weight", "tiny.weight", "bn.running_var", "bn.num_batches_tracked"):
        assert result.state_dict[name] is state[name]


def test_export_below_the_agreement_threshold_exits_1_and_writes_nothing(
        tmp_path, capsys):
    # Classes whose scores differ by less than float16 resolves near 1.0 (0.00098): in
    # float16 they tie and the labels change, although each tensor rounds by under 0.1 %.
    ck = untrained_checkpoint(load_config(TINY), seed=1)
    state = dict(ck.state_dict)
    state["segmenter.decoder.classifier.weight"] = torch.zeros_like(
        state["segmenter.decoder.classifier.weight"])
    state["segmenter.decoder.classifier.bias"] = 1.0 + 1e-4 * torch.arange(5.0)
    source = _save(tmp_path / "fragile.pt", state=state)
    out = tmp_path / "fragile_half.pt"
    assert _export("--checkpoint", str(source), "--out", str(out), "--half",
                   "--frames", "3") == 1
    err = capsys.readouterr().err
    assert "below --min-agreement 99.5%" in err and "not written" in err
    assert not out.exists()
    # Without float16 the same model passes the check.
    assert _export("--checkpoint", str(source), "--out", str(out), "--frames", "2") == 0


def test_unusable_inputs_are_clear_errors(tmp_path, source, capsys):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(source.read_bytes()[:1000])
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    cases = [
        (cut, r"cut\.pt: not a readable checkpoint \(truncated or corrupt\?\)"),
        (plain, r"plain\.pt: not a davss_ros checkpoint"),
        (tmp_path / "absent.pt", r"absent\.pt: no such checkpoint file"),
    ]
    out = tmp_path / "out.pt"
    for path, message in cases:
        assert _export("--checkpoint", str(path), "--out", str(out), "--half") == 2
        err = capsys.readouterr().err
        assert err.startswith("davss export: error: ")
        assert re.search(message, err), err
        assert not out.exists()
    assert _export("--checkpoint", str(source), "--out", str(source), "--half") == 2
    assert "must not be the source" in capsys.readouterr().err
    assert _export("--checkpoint", str(source), "--out", str(out),
                   "--min-agreement", "101") == 2
    assert "--min-agreement must be in [0, 100]" in capsys.readouterr().err
