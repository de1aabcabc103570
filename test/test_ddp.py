"""Distributed training: two CPU processes (torchrun, gloo) train stage 0 in lockstep."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from davss_ros.data.synthetic import write_cityscapes_layout
from davss_ros.model import build_davss_net
from davss_ros.train.config import load_train_config
from davss_ros.train.engine import seed_everything

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 128

# Runs in each torchrun process: train, then dump this rank's weights.
WORKER = textwrap.dedent("""
    import sys
    import torch
    from davss_ros.train.config import load_train_config
    from davss_ros.train.engine import setup_context, teardown_context
    from davss_ros.train.runner import Trainer

    config, out, dump = sys.argv[1:4]
    ctx = setup_context("cpu", threads=1, progress=False)
    trainer = Trainer(load_train_config(config), out, ctx)
    trainer.run()
    torch.save(trainer.net.state_dict(), f"{dump}/rank{ctx.rank}.pt")
    print(f"rank {ctx.rank} of {ctx.world} done")
    teardown_context(ctx)
""")


@pytest.fixture
def tiny_run(tmp_path):
    root = tmp_path / "data"
    write_cityscapes_layout(root, "train", 2, H, W, seed=9, frames=20, progress=False)
    config = {
        "dataset": {"kind": "synthetic", "root": str(root), "snippet_length": 20,
                    "cache": True},
        "model": {"input_height": H, "input_width": W,
                  "segmenter": {"backbone": "resnet18", "width_mult": 0.25,
                                "aspp_channels": 16, "decoder_channels": 16,
                                "low_level_channels": 8},
                  "cfnet": {"width_mult": 0.125}},
        "stages": {0: {"iterations": 3, "batch_size": 4, "val_images": 0, "log_every": 1},
                   2: {"enabled": False}, 3: {"enabled": False}},
        "seed": 0, "num_workers": 0, "device": "cpu", "threads": 1,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_processes_end_with_identical_trained_parameters(tmp_path, tiny_run):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    dump = tmp_path / "dump"
    dump.mkdir()
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(tiny_run), str(out), str(dump)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 of 2 done" in proc.stdout and "rank 1 of 2 done" in proc.stdout
    a = torch.load(dump / "rank0.pt", weights_only=True)
    b = torch.load(dump / "rank1.pt", weights_only=True)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # training happened: the segmenter moved away from the shared initial weights
    cfg = load_train_config(tiny_run)
    seed_everything(cfg.seed)
    initial = build_davss_net(cfg.model.model).state_dict()
    seg = [k for k in a if k.startswith("segmenter.") and a[k].is_floating_point()]
    assert any(not torch.equal(a[k], initial[k]) for k in seg)
    untouched = [k for k in a if k.startswith("cfnet.") and a[k].is_floating_point()]
    assert all(torch.equal(a[k], initial[k]) for k in untouched)
    # only rank 0 wrote the files
    assert (out / "final.pt").is_file() and (out / "stage0.csv").is_file()
    assert len((out / "stage0.csv").read_text().strip().splitlines()) == 1 + 3


def test_torchrun_runs_the_module_entry_point(tmp_path, tiny_run):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "davss_ros.train", "--config", str(tiny_run), "--out", str(tmp_path / "out"),
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("davss train: ") == 1  # rank 0 reports, rank 1 is quiet
    assert (tmp_path / "out" / "final.pt").is_file()
