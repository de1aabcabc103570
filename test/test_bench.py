"""davss bench: timings per mode in one run, a file key segmenter beside the native one
(with its label agreement), and the slowdown beside busy processes."""

import json

import torch

from davss_ros.checkpoint import save_checkpoint
from davss_ros.cli import main
from davss_ros.config import load_config
from davss_ros.export import export_key_segmenter
from davss_ros.model import build_davss_net


def test_bench_times_a_file_key_segmenter_against_the_native_one_and_under_load(
        tmp_path, capsys):
    cfg = load_config({"model": {"input_height": 64, "input_width": 128,
                                 "segmenter": {"aspp_channels": 16, "decoder_channels": 16}}})
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "small.pt", config=cfg,
                         state_dict=build_davss_net(cfg.model).state_dict())
    export_key_segmenter(ck, tmp_path / "small.ts", "torchscript", frames=2)
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(ck), "--sizes", "64x128", "--frames", "6",
                 "--modes", "per_frame,davss", "--key-interval", "3", "--threads", "1",
                 "--key-segmenter", str(tmp_path / "small.ts"), "--hog", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torchscript key frame / native (torch eager)" in text
    assert "with 1 busy processes" in text
    data = json.loads(out.read_text())
    rows = data["results"]
    assert [(r["mode"], r["key"]) for r in rows] == [
        ("per_frame", "native"), ("davss", "native"),
        ("per_frame", "torchscript"), ("davss", "torchscript")]
    for r in rows:
        assert r["key_ms"] > 0 and "labels" not in r
        if r["key"] == "torchscript":
            assert r["agreement"] >= 99.5 and r["key_over_native"] > 0
    hog = data["hog"]
    assert hog["processes"] == 1
    assert [r["mode"] for r in hog["results"]] == ["per_frame", "davss"]
    assert all(r["slowdown_d5"] > 0 for r in hog["results"])
