"""davss bench --node --peak: the camera rate the node holds, through real rclpy/FastDDS."""

import pytest

pytest.importorskip("rclpy")

from davss_ros.tools.node_bench import run_peak  # noqa: E402


def test_peak_counts_answered_frames_per_rate_and_reports_the_highest_held(tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("preset: cpu\nmodel:\n  input_height: 64\n  input_width: 128\n"
                   "  segmenter: {aspp_channels: 16, decoder_channels: 16}\n")
    lines = []
    # 4 Hz is far below what a 64x128 network takes; 2000 Hz far above what any
    # publisher-to-node round trip here holds.
    r = run_peak(160, 120, seconds=1.5, config=str(cfg), checkpoint="untrained", device="cpu",
                 rates=(4.0, 2000.0), log=lines.append)
    slow, fast = r["trials"]
    assert slow["held"] and slow["answered"] == slow["sent"] >= 6
    assert not fast["held"] and fast["answered"] < fast["sent"]
    assert r["peak_rate_hz"] == 4.0
    assert len(lines) == 2 and "held" in lines[0]


def test_the_key_segmenter_reaches_the_node_under_test(tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("preset: cpu\nmodel:\n  input_height: 64\n  input_width: 128\n"
                   "  segmenter: {aspp_channels: 16, decoder_channels: 16}\n")
    missing = tmp_path / "nope.onnx"
    # the node is asked to load it: a file that is not there fails its configuration
    with pytest.raises(Exception, match="nope.onnx"):
        run_peak(160, 120, seconds=1.0, config=str(cfg), checkpoint="untrained",
                 device="cpu", rates=(4.0,), key_segmenter=str(missing), log=lambda _: None,
                 timeout=20.0)
