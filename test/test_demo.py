"""``davss demo`` (``make demo``) end to end on a tiny clip: bag, node, replay, report."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")
pytest.importorskip("rosbags", reason="rosbags is not installed")

from rosbags.rosbag2 import Reader  # noqa: E402

from davss_ros.cli import main as davss  # noqa: E402

SMALL_MODEL_YAML = """\
preset: cpu
model:
  segmenter:
    aspp_channels: 16
    decoder_channels: 16
"""


def test_demo_writes_the_bag_report_and_pictures_and_prints_the_summary(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + (os.getpid() * 4099 + 31) % 200))
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL_MODEL_YAML)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--frames", "6", "--height", "64", "--width", "128",
            "--config", str(cfg), "--device", "cpu", "--no-progress"]
    assert davss(args) == 0
    captured = capsys.readouterr()
    text = captured.out

    bag = out / "bags" / "synthetic_128x64_6f_seed7"
    with Reader(bag) as r:
        counts = {c.topic: c.msgcount for c in r.connections}
    assert counts == {"/camera/image_raw": 6, "/camera/labels_gt": 6}

    report = json.loads((out / "replay" / "report.json").read_text())
    assert report["sent"] == report["received"] == 6 and report["dropped"] == 0
    assert report["miou"] is not None and set(report["miou_by_distance"]) == {
        "0", "1", "2", "3", "4"}
    for name in ("miou_by_distance.png", "latency_hist.png", "contact_sheet.png"):
        assert (out / "replay" / name).read_bytes()[:4] == b"\x89PNG"
    with Reader(out / "replay" / "outputs") as r:
        assert sum(c.msgcount for c in r.connections if c.topic.endswith("/labels")) == 6

    # The summary says what happened and where everything is.
    assert "closed-loop" in text and "sent 6  processed 6  received 6  dropped 0" in text
    assert "mIoU" in text and "by d" in text
    for path in (bag, out / "replay" / "outputs", out / "replay" / "report.json",
                 out / "replay" / "contact_sheet.png"):
        assert str(path) in text
    # --config asks for untrained weights of that architecture, and that is said loudly.
    assert report["checkpoint"] is None
    assert "--config" in captured.err and "UNTRAINED" in captured.err

    # A second run reuses the sample bag and replaces the earlier outputs.
    assert davss(args) == 0
    assert "(reused)" in capsys.readouterr().out
    assert json.loads((out / "replay" / "report.json").read_text())["sent"] == 6


def test_demo_runs_the_shipped_model_by_default(tmp_path, capsys, monkeypatch):
    """Without --checkpoint or --config the demo runs the shipped model (a small stand-in
    here, found through DAVSS_WEIGHTS_DIR), with no untrained warning."""
    from davss_ros.checkpoint import save_checkpoint
    from davss_ros.config import load_config
    from davss_ros.model import build_davss_net
    from davss_ros.weights import DEFAULT_NAME, ENV_VAR

    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + (os.getpid() * 4099 + 57) % 200))
    cfg = load_config({"preset": "cpu", "model": {
        "input_height": 64, "input_width": 128,
        "segmenter": {"aspp_channels": 16, "decoder_channels": 16}}})
    shipped = save_checkpoint(tmp_path / "weights" / DEFAULT_NAME, config=cfg,
                              state_dict=build_davss_net(cfg.model).state_dict(),
                              meta={"trained_by": "davss train"})
    monkeypatch.setenv(ENV_VAR, str(shipped.parent))
    out = tmp_path / "demo"
    assert davss(["demo", "--out", str(out), "--frames", "3", "--height", "64", "--width",
                  "128", "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"model: {shipped}" in captured.out and "UNTRAINED" not in captured.err
    report = json.loads((out / "replay" / "report.json").read_text())
    assert report["checkpoint"] == str(shipped) and report["sent"] == 3

    # --config means untrained weights; with a checkpoint as well it is a usage error.
    assert davss(["demo", "--out", str(out), "--checkpoint", str(shipped),
                  "--config", "cpu"]) == 2
    assert "--config applies to untrained weights only" in capsys.readouterr().err
