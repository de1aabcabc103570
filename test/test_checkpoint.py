"""Checkpoints: round trip, and every way a file can be unusable gives a clear error."""

import collections
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from davss_ros import weights
from davss_ros.checkpoint import (
    CheckpointError,
    describe_origin,
    load_checkpoint,
    save_checkpoint,
)
from davss_ros.config import load_config
from davss_ros.model import build_davss_net
from davss_ros.pipeline import VideoSegmenter
from davss_ros.train.config import load_train_config

TINY = {"model": {"input_height": 64, "input_width": 128, "num_classes": 5,
                  "segmenter": {"aspp_channels": 16, "decoder_channels": 16,
                                "width_mult": 0.5}}}


@pytest.fixture
def tiny_config():
    return load_config(TINY)


def _save(path, cfg, net=None, **kw):
    net = net or build_davss_net(cfg.model)
    return save_checkpoint(path, config=cfg, state_dict=net.state_dict(), **kw), net


def test_round_trip_rebuilds_the_same_model_from_the_file_alone(tmp_path, tiny_config):
    names = ["a", "b", "c", "d", "e"]
    palette = [(i, 2 * i, 3 * i) for i in range(5)]
    path, net = _save(tmp_path / "m.pt", tiny_config, class_names=names, palette=palette,
                      meta={"note": "test"})
    ck = load_checkpoint(path)
    assert ck.config == tiny_config
    assert ck.class_names == names and ck.palette == palette and ck.meta["note"] == "test"
    seg = VideoSegmenter(checkpoint=path, device="cpu")
    x = torch.rand(1, 3, 64, 128)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(seg.net.segmenter(x), net.segmenter(x), atol=1e-4, rtol=1e-4)
    assert seg.class_names == names and seg.num_classes == 5


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, tiny_config):
    path, _ = _save(tmp_path / "m.pt", tiny_config)
    payload = torch.load(path, weights_only=True)
    payload["meta"] = {"hook": collections.Counter("pickled")}  # not plain data
    payload["extra"] = _NotAllowed()
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*pickled"):
        load_checkpoint(evil)


class _NotAllowed:
    pass


def test_truncated_file_is_reported_with_its_name(tmp_path, tiny_config):
    path, _ = _save(tmp_path / "m.pt", tiny_config)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt.*(truncated|corrupt)"):
        load_checkpoint(cut)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match=r"absent\.pt: no such checkpoint file"):
        VideoSegmenter(checkpoint=tmp_path / "absent.pt")


def test_weights_of_another_configuration_are_refused(tmp_path, tiny_config):
    other = load_config({**TINY, "model": {**TINY["model"], "num_classes": 7}})
    other_net = build_davss_net(other.model)
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, config=tiny_config, state_dict=other_net.state_dict())
    with pytest.raises(CheckpointError, match=r"mixed\.pt: weights do not match.*shape"):
        VideoSegmenter(checkpoint=path)


def test_a_plain_torch_file_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a davss_ros checkpoint"):
        load_checkpoint(path)


def test_save_is_atomic_and_leaves_no_partial_files(tmp_path, tiny_config):
    _save(tmp_path / "m.pt", tiny_config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_runtime_fields_of_a_given_config_apply_to_a_checkpoint(tmp_path, tiny_config):
    path, _ = _save(tmp_path / "m.pt", tiny_config)
    runtime = load_config({"model": {"mode": "dff", "input_height": 128, "input_width": 256},
                           "schedule": {"key_interval": 3}})
    seg = VideoSegmenter(runtime, checkpoint=path, device="cpu")
    assert seg.mode == "dff" and seg.config.model.input_height == 128
    assert seg.config.schedule.key_interval == 3
    # architecture still from the file
    assert seg.num_classes == 5 and seg.config.model.segmenter.aspp_channels == 16


def test_float16_weights_load_as_float32_and_run_unchanged(tmp_path, tiny_config):
    net = build_davss_net(tiny_config.model)
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = save_checkpoint(tmp_path / "half.pt", config=tiny_config, state_dict=half)
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert stored["segmenter.decoder.classifier.weight"].dtype == torch.float16
    ck = load_checkpoint(path)
    assert all(v.dtype != torch.float16 for v in ck.state_dict.values())
    assert ck.state_dict["segmenter.decoder.classifier.weight"].dtype == torch.float32
    seg = VideoSegmenter(checkpoint=path, device="cpu")
    assert next(seg.net.parameters()).dtype == torch.float32
    assert seg.step(np.zeros((64, 128, 3), np.uint8)).labels.shape == (64, 128)


def test_describe_origin_says_how_the_weights_were_made():
    assert describe_origin({"untrained": True, "seed": 0}) == "untrained weights"
    assert describe_origin({}) == "origin not recorded"
    text = describe_origin({
        "trained_by": "davss train", "config_file": "config/train/synthetic_cpu.yaml",
        "train_config": {"dataset": {"kind": "synthetic", "root": "out/data/s"}},
        "export": {"half": True, "date": "2026-11-24T00:00:00Z", "label_agreement": 99.97}})
    assert text == ("trained by davss train on synthetic (out/data/s), recipe "
                    "config/train/synthetic_cpu.yaml; exported float16 2026-11-24T00:00:00Z, "
                    "99.97% label agreement with its source")


def test_default_model_location_follows_davss_weights_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    assert weights.weights_dir() == weights.PACKAGE_WEIGHTS_DIR
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path))
    assert weights.default_checkpoint() is None  # an empty folder: no default model
    (tmp_path / weights.DEFAULT_NAME).write_bytes(b"x")
    assert weights.default_checkpoint() == tmp_path / weights.DEFAULT_NAME


def test_node_checkpoint_values_select_shipped_untrained_or_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path))
    shipped = tmp_path / weights.DEFAULT_NAME
    path, why = weights.resolve_checkpoint("", "cpu")
    assert path is None and str(shipped) in why and "missing" in why
    shipped.write_bytes(b"x")
    assert weights.resolve_checkpoint("", "cpu") == (shipped, "")
    assert weights.resolve_checkpoint("", "paper")[0] is None  # no shipped paper model
    assert "only the 'cpu' preset" in weights.resolve_checkpoint("", "paper")[1]
    path, why = weights.resolve_checkpoint("untrained", "cpu")
    assert path is None and "'untrained'" in why
    assert weights.resolve_checkpoint("/m/other.pt", "paper") == (Path("/m/other.pt"), "")


SHIPPED = weights.PACKAGE_WEIGHTS_DIR / weights.DEFAULT_NAME


@pytest.mark.skipif(not SHIPPED.is_file(),
                    reason=f"no model shipped yet ({SHIPPED} is absent in this checkout)")
def test_the_shipped_model_is_small_safe_to_load_trained_and_of_the_cpu_family():
    assert SHIPPED.stat().st_size <= 20_000_000  # bytes: 20 MB
    payload = torch.load(SHIPPED, map_location="cpu", weights_only=True)  # plain data only
    assert payload["format"] == "davss_ros.checkpoint"
    ck = load_checkpoint(SHIPPED)
    assert ck.meta.get("trained_by") and not ck.meta.get("untrained"), ck.meta.keys()
    # the cpu preset's architecture (backbone, stride, input, classes, DIS flow), its
    # segmenter 1.5x wider and the distortion estimator of the shipped recipe
    preset, model = load_config("cpu").model, ck.config.model
    recipe = load_train_config(Path(__file__).resolve().parents[1] / "config" / "train" /
                               "synthetic_strong.yaml").model.model
    assert dataclasses.replace(model.segmenter, width_mult=1.0) == preset.segmenter
    assert model.segmenter.width_mult == 1.5 and model.distortion == recipe.distortion
    assert (model.input_height, model.input_width, model.num_classes, model.flow) == (
        preset.input_height, preset.input_width, preset.num_classes, preset.flow)
    assert any(k.startswith("accel_") for k in ck.state_dict)  # model.mode accel works
    seg = VideoSegmenter(checkpoint=SHIPPED, device="cpu")
    assert seg.step(np.zeros((256, 512, 3), np.uint8)).labels.shape == (256, 512)
