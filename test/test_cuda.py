"""The CUDA path: the pipeline on a GPU labels like it does on the CPU, in every mode, with
the native and an ONNX key segmenter. Skipped without a CUDA GPU (scripts/gpu_check.sh
runs it where one is)."""

import numpy as np
import pytest
import torch

from davss_ros.bench import bench_frames
from davss_ros.pipeline import VideoSegmenter
from davss_ros.weights import default_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("mode", ["per_frame", "dff", "accel", "davss"])
def test_cuda_labels_match_the_cpu_in_every_mode(mode):
    frames = bench_frames(256, 512, 8, 1)
    labels = {}
    for device in ("cpu", "cuda"):
        seg = VideoSegmenter.from_checkpoint(default_checkpoint(), mode=mode, device=device,
                                             schedule={"key_interval": 4})
        labels[device] = np.stack([seg.step(f).labels for f in frames])
        seg.close()
    assert (labels["cpu"] == labels["cuda"]).mean() >= 0.99


def test_an_onnx_key_segmenter_runs_on_cuda(tmp_path):
    pytest.importorskip("onnxruntime")
    from davss_ros.export import export_key_segmenter

    export_key_segmenter(default_checkpoint(), tmp_path / "seg.onnx", "onnx", frames=2)
    seg = VideoSegmenter.from_checkpoint(default_checkpoint(), key_segmenter=tmp_path / "seg.onnx",
                                         device="cuda")
    frames = bench_frames(256, 512, 3, 2)
    results = [seg.step(f) for f in frames]
    assert results[0].is_key and results[0].labels.shape == (256, 512)
    print(seg.key_segmenter.describe())
