"""Checkpoints: round trip, and every way a file can be unusable gives a clear error."""

import collections

import pytest
import torch

from davss_ros.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from davss_ros.config import load_config
from davss_ros.model import build_davss_net
from davss_ros.pipeline import VideoSegmenter

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
