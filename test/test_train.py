"""davss train: stage wiring on tiny models, a smoke run of every stage, resuming, data errors."""

import csv
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from davss_ros.checkpoint import load_checkpoint
from davss_ros.cli import main as davss_main
from davss_ros.config import load_config
from davss_ros.data.imageio import write_label
from davss_ros.data.synthetic import write_cityscapes_layout
from davss_ros.model import PropagationState, build_davss_net, build_flow
from davss_ros.pipeline import VideoSegmenter
from davss_ros.train.config import load_train_config
from davss_ros.train.data import (
    Augment,
    DistortionClips,
    LabelledFrames,
    TripletClips,
    open_source,
)
from davss_ros.train.engine import ResumableSampler
from davss_ros.train.losses import DDSSwitches
from davss_ros.train.stages import DDSStep, LogitCache, propagate_chain, set_trainable

H, W = 64, 128
REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"input_height": H, "input_width": W,
              "segmenter": {"backbone": "resnet18", "width_mult": 0.25, "aspp_channels": 16,
                            "decoder_channels": 16, "low_level_channels": 8},
              "cfnet": {"width_mult": 0.125}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """4 train and 2 val synthetic clips, 64x128, 20 frames, labels on every frame."""
    root = tmp_path_factory.mktemp("synthetic")
    write_cityscapes_layout(root, "train", 4, H, W, seed=5, frames=20, progress=False)
    write_cityscapes_layout(root, "val", 2, H, W, seed=5, frames=20, progress=False)
    return root


def tiny_config(root, *, learned=False, **stages):
    model = dict(TINY_MODEL)
    if learned:
        model["flow"] = {"provider": "learned", "width": 0.125}
    base = {0: {"iterations": 3, "batch_size": 2, "log_every": 1, "val_images": 2},
            1: {"iterations": 2, "batch_size": 2, "pair_height": H, "pair_width": W},
            2: {"iterations": 2, "batch_size": 2, "max_distance": 3},
            3: {"iterations": 2, "batch_size": 2, "max_distance": 4}}
    for n, extra in stages.items():
        base.setdefault(int(n[1:]), {}).update(extra)
    return {"dataset": {"kind": "synthetic", "root": str(root), "cache": True,
                        "snippet_length": 20},
            "model": model, "stages": base, "seed": 0, "num_workers": 0}


def write_config(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def train(config_path, out, *extra):
    return davss_main(["train", "--config", str(config_path), "--out", str(out),
                       "--no-progress", *extra])


def _batch(source, seed=0):
    ds = TripletClips(source, min_distance=2, max_distance=4, augment=Augment(), seed=seed)
    items = [ds[(i, (0, i))] for i in range(2)]
    frames = torch.from_numpy(np.stack([it["frames"] for it in items])).float() / 255
    label = torch.from_numpy(np.stack([it["label"] for it in items])).long()
    return {"frames": frames, "label": label}


def _dds(learned=False, **switches):
    cfg = load_config({"model": {**TINY_MODEL, **(
        {"flow": {"provider": "learned", "width": 0.125}} if learned else {})}}).model
    torch.manual_seed(0)
    net = build_davss_net(cfg)
    set_trainable(net, {"cfnet", "accel_cfnet", "accel_fusion"} | (
        {"flownet"} if learned else set()))
    net.segmenter.eval()
    step = DDSStep(net, build_flow(cfg.flow, net.flownet), switches=DDSSwitches(**switches))
    return net, step


def _perturb(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _losses(step, batch):
    torch.manual_seed(0)
    with torch.no_grad():
        return {k: float(v) for k, v in step(batch).items()}


# --------------------------------------------------------------------- DDS wiring


def test_perturbing_cfnet_moves_l_c_and_l_dgfl_but_not_l_p(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    net, step = _dds()
    before = _losses(step, batch)
    _perturb(net.cfnet)
    after = _losses(step, batch)
    assert after["L_P"] == pytest.approx(before["L_P"], abs=1e-6)
    assert after["L_C"] != pytest.approx(before["L_C"], abs=1e-6)
    assert after["L_DGFL"] != pytest.approx(before["L_DGFL"], abs=1e-6)
    assert after["total"] == pytest.approx((after["L_P"] + after["L_C"] + after["L_DGFL"]) / 3)


class ConstantMap(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, warped, current):
        return torch.full_like(current[:, :1], self.value)


def test_changing_the_distortion_map_moves_l_c_and_l_dgfl_but_not_l_p(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    net, step = _dds()
    net.dmnet = ConstantMap(0.2)
    low = _losses(step, batch)
    net.dmnet = ConstantMap(0.8)
    high = _losses(step, batch)
    assert high["L_P"] == pytest.approx(low["L_P"], abs=1e-6)
    assert high["L_C"] != pytest.approx(low["L_C"], abs=1e-6)
    assert high["L_DGFL"] == pytest.approx(low["L_DGFL"] * 4, rel=1e-4)  # linear in M


def test_without_dgfc_the_distortion_map_only_moves_l_dgfl(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    net, step = _dds(dgfc=False)
    net.dmnet = ConstantMap(0.2)
    low = _losses(step, batch)
    net.dmnet = ConstantMap(0.8)
    high = _losses(step, batch)
    assert high["L_C"] == pytest.approx(low["L_C"], abs=1e-6)
    assert high["L_DGFL"] != pytest.approx(low["L_DGFL"], abs=1e-6)


def test_perturbing_a_learned_flow_net_moves_l_p(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    net, step = _dds(learned=True)
    before = _losses(step, batch)
    _perturb(net.flownet)
    after = _losses(step, batch)
    assert after["L_P"] != pytest.approx(before["L_P"], abs=1e-6)


def test_learned_flow_gets_gradients_from_l_p_and_not_from_the_accel_branch(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    net, step = _dds(learned=True)
    out = step.losses(batch)
    out["L_accel"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in net.flownet.parameters())
    # the fusion starts as identity on f_P and zero on the cue, so its weights move first
    assert any(p.grad is not None and p.grad.abs().max() > 0
               for p in net.accel_fusion.parameters())
    out["L_P"].backward()  # L_P's only trainable part is the flow
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in net.flownet.parameters())
    assert all(p.grad is None for p in net.cfnet.parameters())


def test_dgfl_switch_removes_the_term_and_total_averages_the_rest(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    _, step = _dds(dgfl=False)
    out = _losses(step, batch)
    assert "L_DGFL" not in out
    assert out["total"] == pytest.approx((out["L_P"] + out["L_C"]) / 2)


def test_without_dds_the_intermediate_frame_plays_no_part(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    other = {k: v.clone() for k, v in batch.items()}
    other["frames"][:, 1] = torch.rand_like(other["frames"][:, 1])
    _, with_dds = _dds()
    _, without = _dds(dds=False)
    assert _losses(without, batch) == pytest.approx(_losses(without, other), abs=1e-6)
    assert _losses(with_dds, batch)["L_P"] != pytest.approx(_losses(with_dds, other)["L_P"],
                                                            abs=1e-6)


def test_accel_switch_drops_the_accel_loss(data_root):
    batch = _batch(open_source("synthetic", data_root, "train", snippet_length=20))
    net, step = _dds()
    assert "L_accel" in _losses(step, batch)
    step.accel = False
    assert "L_accel" not in _losses(step, batch)


# ---------------------------------------------------------------------- stage 2


def test_dmnet_chain_propagates_from_each_samples_own_key_frame(data_root):
    source = open_source("synthetic", data_root, "train", snippet_length=20)
    ds = DistortionClips(source, max_distance=4, augment=Augment(), seed=0)
    item = ds[(0, (0, 0))]
    j = int(item["distance"])
    frames = torch.from_numpy(item["frames"]).float()[None] / 255
    cfg = load_config({"model": TINY_MODEL}).model
    net = build_davss_net(cfg).eval()
    flow = build_flow(cfg.flow)
    prop, prop_img, cur = propagate_chain(net, flow, frames, torch.tensor([j]))
    noisy = frames.clone()
    noisy[:, : 4 - j] = torch.rand_like(noisy[:, : 4 - j])  # the padding before the key
    prop2, _, _ = propagate_chain(net, flow, noisy, torch.tensor([j]))
    assert torch.equal(prop, prop2)
    # by hand: key logits warped one frame at a time
    with torch.no_grad():
        ref = net.segmenter(frames[:, 4 - j])
        for s in range(5 - j, 5):
            from davss_ros.model import warp

            ref = warp(ref, flow(frames[:, s], frames[:, s - 1]))
    assert torch.allclose(prop, ref, atol=1e-5)
    assert prop_img.shape == (1, 3, H // 4, W // 4) and cur.shape == ref.shape


def test_cached_segmenter_logits_give_the_same_losses_with_less_work(data_root):
    source = open_source("synthetic", data_root, "train", snippet_length=20)
    ds = TripletClips(source, min_distance=2, max_distance=4, augment=Augment(), seed=0)
    items = [ds[(i, (0, i))] for i in range(2)]
    batch = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}
    batch["frames"] = batch["frames"].float() / 255
    batch["label"] = batch["label"].long()
    net, plain = _dds()
    cached = DDSStep(net, plain.flow, cache=LogitCache())
    ref = _losses(plain, batch)
    assert _losses(cached, batch) == pytest.approx(ref, abs=1e-6)
    assert cached.cache.misses == 4 and cached.cache.hits == 0
    assert _losses(cached, batch) == pytest.approx(ref, abs=1e-6)
    assert cached.cache.misses == 4 and cached.cache.hits == 4
    # stage 2 as well
    dm = DistortionClips(source, max_distance=4, augment=Augment(), seed=0)
    items = [dm[(i, (0, i))] for i in range(2)]
    frames = torch.from_numpy(np.stack([it["frames"] for it in items])).float() / 255
    dist = torch.tensor([int(it["distance"]) for it in items])
    ids = torch.from_numpy(np.stack([it["frame_ids"] for it in items]))
    flow = build_flow(net.config.flow)
    a = propagate_chain(net, flow, frames, dist)
    b = propagate_chain(net, flow, frames, dist, frame_ids=ids, cache=LogitCache())
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_logit_cache_is_refused_with_augmentation(tmp_path):
    with pytest.raises(ValueError, match="cache_logits"):
        load_train_config(tiny_config(tmp_path, s3={"cache_logits": True, "flip": True}))


# --------------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("learned", [False, True], ids=["dis", "learned"])
def test_every_stage_runs_and_final_checkpoint_drives_the_pipeline(tmp_path, data_root, learned,
                                                                   capsys):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(data_root, learned=learned))
    assert train(cfg, tmp_path / "out") == 0
    log = capsys.readouterr().out
    out = tmp_path / "out"
    for n in range(4):
        ck = load_checkpoint(out / f"stage{n}.pt")
        assert ck.meta["finished"] and ck.meta["stage"] == n
        assert not (out / f"stage{n}.state.pt").exists()
    assert (out / "stage1.csv").exists() == learned
    for n in (0, 2, 3):
        with open(out / f"stage{n}.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and {"iteration", "lr", "time", "img_per_s"} <= set(rows[0])
    with open(out / "stage3.csv") as f:
        assert {"L_P", "L_C", "L_DGFL", "total", "L_accel"} <= set(next(csv.DictReader(f)))
    final = load_checkpoint(out / "final.pt")
    assert final.meta["trained_by"] == "davss train"
    for mode in ("davss", "accel", "dff", "per_frame"):
        runtime = {"mode": mode, "input_height": H, "input_width": W,
                   "flow": {"provider": "learned" if learned else "dis"}}
        seg = VideoSegmenter({"model": runtime}, checkpoint=out / "final.pt", device="cpu")
        frames = [np.random.default_rng(i).integers(0, 256, (H, W, 3), np.uint8)
                  for i in range(3)]
        for f in frames:
            r = seg.step(f)
            assert r.labels.shape == (H, W) and r.valid
    assert "wrote" in log


def test_stage1_is_skipped_with_dis_flow(tmp_path, data_root, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(
        data_root, s0={"iterations": 1}, s2={"enabled": False}, s3={"enabled": False}))
    assert train(cfg, tmp_path / "out") == 0
    assert "stage 1 (flow network): skipped, flow provider is 'dis'" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "out" / "stage1.pt").meta["summary"]["skipped"]


# ------------------------------------------------------------------------ resume


def _weights(path):
    return load_checkpoint(path).state_dict


def test_rerun_skips_finished_stages(tmp_path, data_root, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(data_root))
    out = tmp_path / "out"
    assert train(cfg, out) == 0
    stamps = {n: (out / f"stage{n}.pt").stat().st_mtime_ns for n in range(4)}
    capsys.readouterr()
    assert train(cfg, out) == 0
    text = capsys.readouterr().out
    assert all(f"stage {n} (" in text and "finished earlier" in text for n in range(4))
    assert {n: (out / f"stage{n}.pt").stat().st_mtime_ns for n in range(4)} == stamps
    # a changed stage-3 setting retrains stage 3 only
    data = tiny_config(data_root, s3={"iterations": 3})
    write_config(cfg, data)
    assert train(cfg, out) == 0
    text = capsys.readouterr().out
    assert "stage 2 (DMNet): finished earlier" in text and "settings changed" in text
    assert load_checkpoint(out / "stage3.pt").meta["iteration"] == 3
    assert (out / "stage2.pt").stat().st_mtime_ns == stamps[2]


def test_interrupted_stage_resumes_from_its_state_file_and_matches_an_uninterrupted_run(
        tmp_path, data_root, capsys):
    data = tiny_config(data_root, s0={"iterations": 4, "val_images": 0},
                       s2={"enabled": False}, s3={"enabled": False})
    cfg = write_config(tmp_path / "tiny.yaml", data)
    assert train(cfg, tmp_path / "straight") == 0
    out = tmp_path / "resumed"
    assert train(cfg, out, "--stop-after", "2") == 0
    assert not (out / "final.pt").exists()
    ck = load_checkpoint(out / "stage0.pt")
    assert ck.meta["iteration"] == 2 and not ck.meta["finished"]
    state = torch.load(out / "stage0.state.pt", weights_only=True)
    assert state["iteration"] == 2 and state["optimizer"]["state"]
    capsys.readouterr()
    assert train(cfg, out) == 0
    assert "stage 0: resuming at iteration 2" in capsys.readouterr().out
    with open(out / "stage0.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    a, b = _weights(tmp_path / "straight" / "final.pt"), _weights(out / "final.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_force_retrains_finished_stages(tmp_path, data_root, capsys):
    data = tiny_config(data_root, s0={"iterations": 1, "val_images": 0},
                       s2={"enabled": False}, s3={"enabled": False})
    cfg = write_config(tmp_path / "tiny.yaml", data)
    assert train(cfg, tmp_path / "out") == 0
    capsys.readouterr()
    assert train(cfg, tmp_path / "out", "--force") == 0
    assert "finished earlier" not in capsys.readouterr().out


# ------------------------------------------------------------------------ data


def test_augmentation_crops_and_flips_frames_labels_and_flow_alike():
    columns = np.tile(np.arange(32, dtype=np.uint8), (16, 1))
    frame = np.stack([columns, columns, columns], axis=-1)
    flow = np.zeros((16, 32, 2), np.float32)
    flow[..., 0] = 2.0
    aug = Augment(crop=(8, 8), flip=True)
    flips = set()
    for seed in range(8):
        (f1, f2), (lab,), (fl,), _ = aug(np.random.default_rng(seed), [frame, frame.copy()],
                                         [columns], flows=[flow])
        assert f1.shape == (8, 8, 3) and lab.shape == (8, 8) and fl.shape == (8, 8, 2)
        assert np.array_equal(f1, f2) and np.array_equal(f1[..., 0], lab)
        flipped = bool(lab[0, 1] < lab[0, 0])
        flips.add(flipped)
        assert fl[0, 0, 0] == (-2.0 if flipped else 2.0)
    assert flips == {True, False}


def test_rescaling_scales_the_flow_with_the_image():
    flow = np.full((16, 32, 2), 2.0, np.float32)
    frame = np.zeros((16, 32, 3), np.uint8)
    (f,), _, (fl,), _ = Augment(scale=(2.0, 2.0))(np.random.default_rng(0), [frame],
                                                    flows=[flow])
    assert f.shape == (32, 64, 3) and np.allclose(fl, 4.0)


def test_sampler_resumes_mid_epoch_with_the_same_keys():
    ds = list(range(10))
    full = ResumableSampler(ds, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    keys = list(full)
    part = ResumableSampler(ds, num_replicas=1, rank=0, seed=3)
    part.set_epoch(2)
    part.set_start(4)
    assert list(part) == keys[4:]
    assert sorted(k[0] for k in keys) == ds


def _copy_root(src, dst):
    shutil.copytree(src, dst)
    return dst


def _first_dense_label(root):
    return sorted((root / "gtFine_sequence" / "train").glob("*/*_000003_gtFine_labelIds.png"))[0]


def test_missing_frame_error_names_the_file(tmp_path, data_root):
    root = _copy_root(data_root, tmp_path / "d")
    victim = sorted((root / "leftImg8bit_sequence" / "train").glob("*/*_000000_000003_*.png"))[0]
    victim.unlink()
    ds = LabelledFrames(open_source("synthetic", root, "train", snippet_length=20),
                        augment=Augment())
    index = ds.items.index((0, 3))
    with pytest.raises(FileNotFoundError, match=victim.name):
        ds[index]


def test_label_id_outside_the_table_error_names_the_file(tmp_path, data_root):
    root = _copy_root(data_root, tmp_path / "d")
    victim = _first_dense_label(root)
    lab = np.full((H, W), 7, np.uint8)
    lab[0, 0] = 200
    write_label(victim, lab)
    ds = LabelledFrames(open_source("synthetic", root, "train", snippet_length=20),
                        augment=Augment())
    with pytest.raises(ValueError, match=victim.name):
        ds[ds.items.index((0, 3))]


def test_image_and_label_of_different_sizes_error_names_both_files(tmp_path, data_root):
    root = _copy_root(data_root, tmp_path / "d")
    victim = sorted((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))[0]
    write_label(victim, np.full((H // 2, W // 2), 7, np.uint8))
    source = open_source("synthetic", root, "train", snippet_length=20)
    ds = TripletClips(source, min_distance=2, max_distance=4, augment=Augment())
    with pytest.raises(ValueError, match="size mismatch") as err:
        for i in range(len(ds)):
            ds[(i, (0, i))]
    assert victim.name in str(err.value)


def test_missing_data_root_fails_the_command_with_the_path(tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path / "nowhere"))
    assert train(cfg, tmp_path / "out") == 1
    assert "nowhere" in capsys.readouterr().err


# ---------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["synthetic_quick", "synthetic_cpu", "cityscapes", "camvid"])
def test_shipped_training_configs_load(name):
    cfg = load_train_config(REPO / "config" / "train" / f"{name}.yaml")
    assert cfg.stage3.betas == (0.9, 0.99)
    if name == "camvid":
        assert cfg.model.model.num_classes == 11 and cfg.stage0.flip


def test_every_training_config_loads_and_the_strong_variants_share_its_earlier_stages():
    root = REPO / "config" / "train"
    configs = {p.relative_to(root).as_posix(): load_train_config(p)
               for p in sorted(root.rglob("*.yaml"))}
    strong = configs["synthetic_strong.yaml"]
    variants = ["synthetic_strong_signals.yaml"] + \
        [name for name in configs if name.startswith("ablation/strong_")]
    assert len(variants) == 5
    for name in variants:
        cfg = configs[name]
        # the stage-3 ablations retrain stage 3 (and so 4) and share stages 0-2
        shared = 3 if name.startswith("ablation/strong_no_") else 4
        assert [cfg.fingerprint(n) for n in range(shared)] == \
            [strong.fingerprint(n) for n in range(shared)], name
        assert cfg.fingerprint(4) != strong.fingerprint(4), name
    # the shipped recipe trains CFNet with the mixing estimator; the previous one did not
    assert strong.stage4.train_cfnet and strong.model.model.distortion == "signals_mix"
    previous = configs["synthetic_strong_signals.yaml"]
    assert not previous.stage4.train_cfnet and previous.model.model.distortion == "signals"


def test_unknown_stage_setting_is_an_error_naming_it(tmp_path):
    data = tiny_config(tmp_path, s2={"max_distnace": 3})
    with pytest.raises(ValueError, match="max_distnace"):
        load_train_config(data)


@pytest.mark.parametrize("name,switch", [("no_dds", "dds"), ("no_dgfl", "dgfl"),
                                         ("no_dgfc", "dgfc")])
def test_ablation_configs_change_only_their_stage3_switch(name, switch):
    base = load_train_config(REPO / "config" / "train" / "synthetic_cpu.yaml")
    abl = load_train_config(REPO / "config" / "train" / "ablation" / f"{name}.yaml")
    assert getattr(base.stage3, switch) and not getattr(abl.stage3, switch)
    assert not abl.stage3.accel
    # stages 0-2 are the same run: --reuse can share them
    assert all(abl.fingerprint(n) == base.fingerprint(n) for n in range(3))
    assert abl.fingerprint(3) != base.fingerprint(3)


def test_extends_merges_mappings_at_every_depth_and_rejects_loops(tmp_path, data_root):
    write_config(tmp_path / "base.yaml", tiny_config(data_root))
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nstages:\n  3: {dgfl: false}\nseed: 4\n")
    base = load_train_config(tmp_path / "base.yaml")
    child = load_train_config(tmp_path / "child.yaml")
    assert child.seed == 4 and not child.stage3.dgfl
    assert child.stage3.max_distance == base.stage3.max_distance == 4
    assert child.model.model.segmenter.width_mult == 0.25
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_train_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_train_config(tmp_path / "orphan.yaml")


def test_reuse_copies_matching_finished_stages_and_retrains_the_rest(tmp_path, data_root,
                                                                      capsys):
    cfg = write_config(tmp_path / "base.yaml", tiny_config(data_root))
    assert train(cfg, tmp_path / "base") == 0
    abl = write_config(tmp_path / "abl.yaml", tiny_config(data_root, s3={"dgfc": False}))
    capsys.readouterr()
    assert train(abl, tmp_path / "abl", "--reuse", str(tmp_path / "base")) == 0
    text = capsys.readouterr().out
    assert all(f"stage {n}: reusing" in text for n in range(3))
    assert "stage 3: reusing" not in text
    for n in range(3):
        assert (tmp_path / "abl" / f"stage{n}.pt").read_bytes() == \
            (tmp_path / "base" / f"stage{n}.pt").read_bytes()
    a, b = _weights(tmp_path / "base" / "final.pt"), _weights(tmp_path / "abl" / "final.pt")
    shared = [k for k in a if k.startswith(("segmenter.", "dmnet."))]
    assert shared and all(torch.equal(a[k], b[k]) for k in shared)
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("cfnet."))
    # trained against a constant fusion map, the final checkpoint fuses with it too
    assert load_checkpoint(tmp_path / "abl" / "final.pt").config.model.distortion_map == \
        "constant"
    assert load_checkpoint(tmp_path / "base" / "final.pt").config.model.distortion_map == \
        "predicted"


def test_inference_only_model_fields_leave_the_stage_fingerprints_alone(data_root):
    base = load_train_config(tiny_config(data_root))
    data = tiny_config(data_root)
    data["model"] = {**data["model"], "distortion_map": "constant"}
    other = load_train_config(data)
    assert other.model.model.distortion_map == "constant"
    assert [other.fingerprint(n) for n in range(4)] == [base.fingerprint(n) for n in range(4)]


def test_stage4s_cfnet_settings_leave_its_fingerprint_alone_while_cfnet_is_not_trained(
        data_root):
    def fp(**s4):
        return load_train_config(tiny_config(data_root, s4=s4)).fingerprint(4)

    assert fp() == fp(cfnet_lr=0.5, cue_weight=2.0)  # stage-4 runs of before keep theirs
    assert fp(train_cfnet=True) not in (fp(), fp(train_cfnet=True, cfnet_lr=0.5))


@pytest.mark.parametrize("distortion,train_cfnet", [("signals", False),
                                                    ("signals_mix", False),
                                                    ("signals_mix", True)])
def test_a_refined_run_reuses_the_paper_stages_and_trains_only_the_refiner(
        tmp_path, data_root, capsys, distortion, train_cfnet):
    """Stage 4 trains the refiner (and CFNet with ``train_cfnet``), nothing else."""
    base = write_config(tmp_path / "base.yaml", tiny_config(data_root))
    assert train(base, tmp_path / "base") == 0
    assert "stage 4 (signals distortion estimator): skipped" in capsys.readouterr().out
    data = tiny_config(data_root, s4={"iterations": 3, "batch_size": 2, "max_distance": 3,
                                      "log_every": 1, "train_cfnet": train_cfnet})
    data["model"] = {**data["model"], "distortion": distortion}
    sig = write_config(tmp_path / "signals.yaml", data)
    capsys.readouterr()
    assert train(sig, tmp_path / "signals", "--reuse", str(tmp_path / "base")) == 0
    text = capsys.readouterr().out
    assert all(f"stage {n}: reusing" in text for n in range(4))
    assert "stage 4 (signals distortion estimator): 3 iterations" in text
    a, b = _weights(tmp_path / "base" / "final.pt"), _weights(tmp_path / "signals" / "final.pt")
    cfnet = [k for k in a if k.startswith("cfnet.")]
    assert cfnet and all(torch.equal(a[k], b[k]) for k in a if k not in cfnet)
    # CFNet learns only with train_cfnet (its weights, not only its BatchNorm statistics)
    learned = [k for k in cfnet if k.endswith(".weight") and not torch.equal(a[k], b[k])]
    assert bool(learned) == train_cfnet
    refiner = [k for k in b if k.startswith("refiner.")]
    assert refiner and not any(k in a for k in refiner)
    if distortion == "signals_mix":
        assert b["refiner.mix.weight"].shape == (19, 4 * 19, 1, 1)
        assert b["refiner.mix.weight"].abs().sum() > 0  # it started at zero
    else:
        assert not any(k.startswith("refiner.mix") for k in refiner)
    with open(tmp_path / "signals" / "stage4.csv") as f:
        columns = set(next(csv.DictReader(f)))
    assert {"CE", "BCE", "floor", "slope"} <= columns
    assert ("CE_cue" in columns) == train_cfnet
    final = load_checkpoint(tmp_path / "signals" / "final.pt")
    assert final.config.model.distortion == distortion
    seg = VideoSegmenter({"model": {"mode": "davss", "input_height": H, "input_width": W}},
                         checkpoint=tmp_path / "signals" / "final.pt", device="cpu")
    for i in range(3):
        r = seg.step(np.random.default_rng(i).integers(0, 256, (H, W, 3), np.uint8))
        assert r.labels.shape == (H, W) and r.valid


def _refined_net(distortion: str):
    """A tiny net with a refined distortion estimator (seed 0, eval mode) and its step."""
    cfg = load_config({"model": {**TINY_MODEL, "distortion": distortion}}).model
    torch.manual_seed(0)
    net = build_davss_net(cfg).eval()
    return net, net.non_key_step(build_flow(cfg.flow, None))


def test_the_signals_mix_fusion_adds_its_mixing_to_eq4_scaled_by_the_trust():
    net, step = _refined_net("signals_mix")
    g = torch.Generator().manual_seed(2)
    cue, prop = torch.randn(1, 19, 4, 8, generator=g), torch.randn(1, 19, 4, 8, generator=g)
    w = torch.rand(1, 1, 4, 8, generator=g)
    eq4 = prop * (1 - w) + cue * w
    with torch.no_grad():
        assert torch.equal(step.fuse("davss", prop, cue, w), eq4)  # zero at the start
        net.refiner.mix.weight.normal_(generator=g)
        net.refiner.mix.bias.fill_(0.5)
        extra = net.refiner.mix(torch.cat([prop, cue, w * prop, w * cue], dim=1))
        assert extra.abs().mean() > 0.1
        torch.testing.assert_close(step.fuse("davss", prop, cue, w), eq4 + extra)
        torch.testing.assert_close(step.fuse("davss", prop, cue, w, trust=0.5), eq4 + 0.5 * extra)
        torch.testing.assert_close(step.fuse("davss", prop, cue, w, trust=0.0), eq4)
        # accel has its own fusion, untouched by the refiner's mixing
        assert torch.equal(step.fuse("accel", prop, cue, None),
                           net.accel_fusion(prop, cue))


def test_the_signals_refiner_fuses_with_its_floored_weight_and_reports_its_own_map():
    net, step = _refined_net("signals")
    g = torch.Generator().manual_seed(0)
    key, cur = torch.rand(1, 3, H, W, generator=g), torch.rand(1, 3, H, W, generator=g)
    state = PropagationState.from_key(key, torch.randn(1, 19, H // 4, W // 4, generator=g))
    with torch.no_grad():
        net.refiner.floor.fill_(0.25)
        net.refiner.slope.fill_(0.5)
        est = step.estimate(state, cur, distortion=True)
        parts = step.complete(state, est, cur, "davss")
        dmnet_only = net.non_key_step(step.flow, refine=False).complete(state, est, cur, "davss")
    m = parts.distortion_map
    assert not torch.equal(m, est.distortion_map)  # the refined map, not DMNet's
    assert torch.equal(dmnet_only.distortion_map, est.distortion_map)
    w = 0.25 + 0.5 * m
    assert torch.allclose(parts.fused, parts.propagated * (1 - w) + parts.cue * w, atol=1e-6)


def test_cue_trust_maps_the_key_frame_agreement_onto_zero_to_one():
    from davss_ros.model.refiner import TRUST_HIGH, TRUST_LOW, cue_trust

    key = torch.zeros(1, 3, 4, 5)
    key[:, 0] = 1.0  # class 0 everywhere
    for share, want in ((1.0, 1.0), (0.0, 0.0), (TRUST_HIGH, 1.0), (TRUST_LOW, 0.0)):
        cue = torch.zeros(1, 3, 4, 5)
        n = round(share * 20)
        flat = cue.view(1, 3, 20)
        flat[:, 0, :n] = 1.0
        flat[:, 1, n:] = 1.0
        assert cue_trust(cue, key) == pytest.approx(want, abs=0.05)
    mid = (TRUST_LOW + TRUST_HIGH) / 2
    cue = torch.zeros(1, 3, 1, 1000)
    cue[:, 0, :, :round(mid * 1000)] = 1.0
    cue[:, 1, :, round(mid * 1000):] = 1.0
    assert cue_trust(cue, torch.ones(1, 3, 1, 1000) * torch.tensor([1.0, 0, 0]).view(
        1, 3, 1, 1)) == pytest.approx(0.5, abs=0.01)


def test_the_signals_fusion_blends_with_dmnets_by_the_trust():
    net, step = _refined_net("signals")
    g = torch.Generator().manual_seed(1)
    m = torch.rand(1, 1, 4, 8, generator=g)
    cue, prop = torch.randn(1, 19, 4, 8, generator=g), torch.randn(1, 19, 4, 8, generator=g)
    images = (torch.rand(1, 3, 4, 8, generator=g), torch.rand(1, 3, 4, 8, generator=g))
    with torch.no_grad():
        full_m, full_w = step.fusion_weight(m, cue, prop, images, trust=1.0)
        none_m, none_w = step.fusion_weight(m, cue, prop, images, trust=0.0)
        half_m, half_w = step.fusion_weight(m, cue, prop, images, trust=0.5)
    assert torch.equal(none_m, m) and torch.equal(none_w, m)
    torch.testing.assert_close(half_w, 0.5 * full_w + 0.5 * m)
    torch.testing.assert_close(half_m, 0.5 * full_m + 0.5 * m)


@pytest.mark.parametrize("base_distortion,distortion", [("signals", "paper"),
                                                        ("signals", "signals_mix"),
                                                        ("signals_mix", "signals")])
def test_stages_0_to_3_of_a_refined_run_serve_a_run_with_another_estimator(
        tmp_path, data_root, capsys, base_distortion, distortion):
    """Stages 0-3 do not depend on the distortion estimator, so --reuse shares them whatever
    the refiner of the run that wrote them (make results: the paper ablation reuses the
    shipped signals_mix run's stages)."""
    s4 = {"iterations": 2, "batch_size": 2, "max_distance": 3, "log_every": 1}

    def config(name, estimator):
        data = tiny_config(data_root, s4=s4)
        data["model"] = {**data["model"], "distortion": estimator}
        return write_config(tmp_path / f"{name}.yaml", data)

    assert train(config("base", base_distortion), tmp_path / "base") == 0
    base_stage3 = _weights(tmp_path / "base" / "stage3.pt")
    assert any(k.startswith("refiner.") for k in base_stage3)
    capsys.readouterr()
    assert train(config("other", distortion), tmp_path / "other", "--reuse",
                 str(tmp_path / "base")) == 0
    text = capsys.readouterr().out
    assert all(f"stage {n}: reusing" in text for n in range(4))
    final = _weights(tmp_path / "other" / "final.pt")
    shared = [k for k in base_stage3 if k.startswith(("segmenter.", "dmnet.", "cfnet."))]
    assert shared and all(torch.equal(base_stage3[k], final[k]) for k in shared)
    assert any(k.startswith("refiner.") for k in final) == (distortion != "paper")
    assert load_checkpoint(tmp_path / "other" / "final.pt").config.model.distortion == \
        distortion


def test_the_training_threads_setting_holds_for_opencv_too():
    # DIS flow runs in OpenCV, whose own default is every core: two trainings meant to
    # share a 2-core machine at one thread each would otherwise each take both
    import cv2

    from davss_ros.train.engine import setup_context

    before = (torch.get_num_threads(), cv2.getNumThreads())
    try:
        cv2.setNumThreads(4)
        setup_context("cpu", threads=1, progress=False)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


_REFAULTS = """
import resource, sys
import torch
if sys.argv[1] == "train":
    from davss_ros.train.engine import setup_context
    setup_context("cpu", threads=1, progress=False)
else:
    torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 8, 3, padding=1))
optimiser = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.rand(4, 3, 256, 512)
def step():
    optimiser.zero_grad()
    net(x).square().mean().backward()
    optimiser.step()
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_cpu_training_reuses_freed_memory_instead_of_faulting_it_in_again():
    # Five training steps of a small network on 4 x 256 x 512 after two warm-up steps: a
    # process left to glibc's defaults maps each step's large buffers afresh and faults
    # their pages in again (about 125,000 faults here); after the training's setup the
    # steps reuse the pages of the ones before.
    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _REFAULTS, mode], capture_output=True,
                              text=True, timeout=120, check=True)
        return int(done.stdout.split()[-1])

    plain, kept = faults("plain"), faults("train")
    assert plain > 50_000
    assert kept < plain / 10
