"""``davss report``: measure the trained model and write ``docs/RESULTS.md``.

Everything in the report comes from the project's own code in one run:

- PDA (mIoU at propagation distance d = 1..9, ``davss_ros.evaluate.pda``) of per_frame,
  dff, accel and davss with the shipped recipe's weights, of the stage-3 ablations (the
  paper's Table III), and of the upper bounds with the ground-truth distortion map (the
  paper's Table IV);
- CCA: mean cost per frame, C_mean = (C_key + d * C_nonkey) / (d + 1) (the paper's Eq. 8),
  in GFLOPs (``davss_ros.flops``) and in milliseconds measured on this machine
  (``davss_ros.bench``), against the mIoU at d;
- fixed against adaptive key-frame scheduling at matched mean cost, on whole clips
  (``davss_ros.evaluate.schedule_eval``);
- the goals of the project's results issue, each marked met or missed with its numbers.

The spec (``config/report.yaml``) names the data split, the checkpoints and the sweeps. The
raw numbers go to a JSON file next to the figures, and ``--readme`` rewrites the block of
README.md between the ``results`` markers from the same numbers, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

README_BEGIN = "<!-- results:begin (written by davss report; do not edit) -->"
README_END = "<!-- results:end -->"
MAIN_MODES = ("per_frame", "dff", "accel", "davss")
BOUND_MODES = ("davss_gt", "accel_gt")
SUMMARY_DISTANCES = (1, 5, 9)


@dataclass
class Ablation:
    name: str
    checkpoint: str
    train_config: str = ""


@dataclass
class ScheduleSweep:
    clips: int = 32
    fixed_intervals: list = field(default_factory=lambda: list(range(1, 11)))
    adaptive_thresholds: list = field(default_factory=lambda: [0.05, 0.1, 0.2])
    max_interval: int = 10
    # margins of oracle schedules, which know the labels (schedule_eval): the most any
    # adaptive trigger could gain over fixed intervals on these clips; empty = none run
    oracle_thresholds: list = field(default_factory=list)
    # more clip sets swept the same way (the dataset's split under another root), each
    # {name, root}: clips whose motion changes within a clip, where when to key matters
    clip_sets: list = field(default_factory=list)

    def __post_init__(self) -> None:
        for entry in self.clip_sets:
            if not isinstance(entry, dict) or set(entry) != {"name", "root"}:
                raise ValueError(f"schedule.clip_sets: each entry needs exactly a name and "
                                 f"a root, got {entry!r}")


@dataclass
class DomainShift:
    """Clips in a look the model was not trained on, scored against the per-frame output
    (agreement with the key segmenter), with the previously shipped model beside."""

    root: str
    split: str = "test"
    look: str = "dusk"
    previous: str = ""  # the previously shipped checkpoint ("today's davss")


@dataclass
class ReportSpec:
    dataset_kind: str
    dataset_root: str
    split: str
    checkpoint: str
    train_config: str = ""
    trained: str = ""  # the training run's final.pt that ``checkpoint`` was exported from
    key_segmenter: str = ""  # an ONNX / TorchScript key segmenter for the main modes
    ablations: list = field(default_factory=list)
    distances: list = field(default_factory=lambda: list(range(1, 10)))
    schedule: ScheduleSweep = field(default_factory=ScheduleSweep)
    bench_frames: int = 40
    bench_key_interval: int = 5
    matched: Ablation | None = None  # the per-frame baseline at davss's cost at D = 5
    domain_shift: DomainShift | None = None
    reliability_distances: list = field(default_factory=lambda: [1, 5, 9])
    shipped: str = ""
    notes: list = field(default_factory=list)  # remarks for the setup section, as given
    source: str = ""


def load_spec(path: str | Path) -> ReportSpec:
    """Read ``config/report.yaml``; missing or unknown fields are errors naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report spec not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    known = {"dataset", "model", "ablations", "distances", "schedule", "bench", "shipped",
             "notes", "matched", "domain_shift", "reliability"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}")
    try:
        ds, model = data["dataset"], data["model"]
        spec = ReportSpec(
            dataset_kind=str(ds["kind"]), dataset_root=str(ds["root"]),
            split=str(ds.get("split", "test")), checkpoint=str(model["checkpoint"]),
            train_config=str(model.get("train_config", "")),
            trained=str(model.get("trained", "")),
            key_segmenter=str(model.get("key_segmenter", "")),
            ablations=[Ablation(**a) for a in data.get("ablations") or []],
            distances=[int(d) for d in data.get("distances", range(1, 10))],
            schedule=ScheduleSweep(**(data.get("schedule") or {})),
            bench_frames=int((data.get("bench") or {}).get("frames", 40)),
            bench_key_interval=int((data.get("bench") or {}).get("key_interval", 5)),
            matched=Ablation(**data["matched"]) if data.get("matched") else None,
            domain_shift=(DomainShift(**data["domain_shift"]) if data.get("domain_shift")
                          else None),
            reliability_distances=[int(d) for d in (data.get("reliability") or {}).get(
                "distances", [1, 5, 9])],
            shipped=str(data.get("shipped", "")),
            notes=[str(n) for n in data.get("notes") or []], source=str(path))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: missing or malformed field: {exc}") from exc
    if not spec.distances or min(spec.distances) < 1:
        raise ValueError(f"{path}: distances must be >= 1")
    return spec


# ------------------------------------------------------------------------- measuring


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _seeded_text(seeded: dict[str, str]) -> str:
    sources = ", ".join(f"`{x}`" for x in sorted(set(seeded.values())))
    which = (f"stage {next(iter(seeded))} was" if len(seeded) == 1
             else f"stages {', '.join(sorted(seeded))} were")
    return (f"; {which} not retrained for this model: the weights come from {sources}, "
            "trained with the same settings for those stages")


def training_info(checkpoint) -> dict[str, Any]:
    """What the checkpoint's meta says about its training: data, stages, seconds."""
    meta = checkpoint.meta or {}
    cfg = meta.get("train_config") or {}
    stages = meta.get("stages") or {}
    seconds = {k: v.get("seconds") for k, v in stages.items() if isinstance(v, dict)
               and v.get("seconds") is not None}
    gen = (cfg.get("dataset") or {}).get("generate") or {}
    return {
        "config_file": meta.get("config_file"),
        "seed": cfg.get("seed"),
        "data": {"kind": (cfg.get("dataset") or {}).get("kind"), "clips": gen.get("clips"),
                 "height": gen.get("height"), "width": gen.get("width"),
                 "frames": gen.get("frames"), "seed": gen.get("seed")},
        "iterations": {k: v.get("iterations") for k, v in stages.items()
                       if isinstance(v, dict) and "iterations" in v},
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1) if seconds else None,
        # stages whose weights were taken from an earlier model instead of trained by this
        # run (the same settings: the runner checked their fingerprints), stage -> source
        "seeded": {k: v["seeded_from"] for k, v in stages.items()
                   if isinstance(v, dict) and v.get("seeded_from")},
        "stage0_val_miou": (stages.get("0") or {}).get("val_miou"),
    }


def _pda(checkpoint, modes, dataset, distances, device, progress,
         key_segmenter: str = "", reference: str = "label") -> dict[str, dict]:
    from davss_ros.evaluate.pda import build_segmenters, evaluate_pda, results_as_json

    segmenters = build_segmenters(checkpoint, modes, device=device,
                                  key_segmenter=key_segmenter or None)
    try:
        results = evaluate_pda(segmenters, dataset, distances=distances, progress=progress,
                               reference=reference)
    finally:
        for seg in segmenters.values():
            seg.close()
    names = next(iter(segmenters.values())).class_names
    return {row["mode"]: row for row in results_as_json(results, names)}


def _bench(checkpoint_path: str, config, frames, key_interval: int, device,
           key_segmenter: str = "") -> dict:
    from davss_ros.bench import time_mode

    return {mode: time_mode(frames, config=config, mode=mode, checkpoint=checkpoint_path,
                            device=device, key_interval=key_interval,
                            key_segmenter=key_segmenter or None)
            for mode in MAIN_MODES}


def _test_frames(dataset, count: int):
    """``count`` consecutive frames of the first test snippet(s), for timing."""
    import numpy as np

    frames = []
    i = 0
    while len(frames) < count and i < len(dataset):
        sample = dataset.pda_sample(i, 9)
        frames.extend(sample.frames)
        i += 1
    return np.stack(frames[:count])


def cca_points(pda: dict[str, dict], costs: dict[str, dict[str, float]],
               distances) -> list[tuple[str, float, float]]:
    """(mode, C_mean at d, mIoU at d) for each mode and d: the paper's CCA convention, a
    key frame every d + 1 frames scored at its farthest frame. per_frame is one point."""
    from davss_ros.flops import c_mean

    points = []
    for mode, row in pda.items():
        if mode not in costs:
            continue
        key, nonkey = costs[mode]["key"], costs[mode]["nonkey"]
        for d in ([distances[0]] if mode == "per_frame" else distances):
            miou = row["miou"].get(str(d))
            if miou is not None:
                points.append((mode, c_mean(key, nonkey, d), miou))
    return points


def collect(spec: ReportSpec, *, device: str = "auto", limit: int | None = None,
            progress: bool = False, bench: bool = True,
            log=print) -> dict[str, Any]:
    """Run every measurement of the report; returns the JSON-ready results."""
    from davss_ros.checkpoint import load_checkpoint
    from davss_ros.evaluate.cli import open_dataset
    from davss_ros.flops import frame_cost_table

    t_start = time.perf_counter()
    ck = load_checkpoint(spec.checkpoint)
    split = open_dataset(spec.dataset_kind, Path(spec.dataset_root), spec.split,
                         max_distance=max(spec.distances))
    dataset = split if limit is None else _Limited(split, limit)
    # Everything the report cannot do without is opened before the first measurement, so
    # that a missing file fails the command at once, not after many minutes of work.
    # (Ablations are optional: an untrained one is reported missing.)
    mck = load_checkpoint(spec.matched.checkpoint) if spec.matched is not None else None
    shift_data = prev = None
    if spec.domain_shift is not None:
        shift_data = open_dataset(spec.dataset_kind, Path(spec.domain_shift.root),
                                  spec.domain_shift.split, max_distance=max(spec.distances))
        if spec.domain_shift.previous:
            prev = load_checkpoint(spec.domain_shift.previous)
    clip_sets = {c["name"]: open_dataset(spec.dataset_kind, Path(c["root"]), spec.split)
                 for c in spec.schedule.clip_sets}
    out: dict[str, Any] = {
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "spec": spec.source, "machine": machine_info(),
        "dataset": {"kind": spec.dataset_kind, "root": spec.dataset_root,
                    "split": spec.split, "snippets": len(dataset)},
        "checkpoint": spec.checkpoint, "checkpoint_source": spec.trained or None,
        "export": (ck.meta or {}).get("export"), "distances": list(spec.distances),
        "training": training_info(ck), "notes": list(spec.notes),
    }
    m = ck.config.model
    out["model"] = {"backbone": m.segmenter.backbone, "flow": m.flow.provider,
                    "input": [m.input_height, m.input_width], "classes": m.num_classes,
                    "cfnet_width": m.cfnet.width_mult}

    log(f"report: PDA of {', '.join(MAIN_MODES + BOUND_MODES + ('hold',))} on "
        f"{len(dataset)} {spec.split} snippets")
    out["pda"] = _pda(ck, MAIN_MODES + BOUND_MODES + ("hold",), dataset, spec.distances,
                      device, progress, spec.key_segmenter)
    log("report: CFNet's cue alone (it does not depend on d: scored at d=1)")
    out["cue"] = _pda(ck, ("cue",), dataset, [1], device, progress,
                      spec.key_segmenter)["cue"]
    out["model"]["distortion"] = m.distortion
    out["key_segmenter"] = spec.key_segmenter or None
    if spec.matched is not None:
        log(f"report: the matched-cost per-frame baseline ({spec.matched.checkpoint})")
        row = _pda(mck, ("per_frame",), dataset, spec.distances, device, progress)["per_frame"]
        row.update(name=spec.matched.name, checkpoint=spec.matched.checkpoint,
                   train_config=spec.matched.train_config, training=training_info(mck),
                   gflops=frame_cost_table(mck.config)["key"])
        out["matched"] = row

    if spec.domain_shift is not None:
        out["domain_shift"] = _domain_shift(ck, prev, spec, shift_data, device, progress, log)

    clips = spec.schedule.clips if limit is None else min(spec.schedule.clips, limit)
    log(f"report: temporal consistency on {clips} whole clips (key interval "
        f"{spec.bench_key_interval})")
    out["consistency"] = {"key_interval": spec.bench_key_interval, "clips": clips,
                          "modes": _consistency(ck, split, clips, spec, device, mck)}

    log(f"report: confidence calibration of davss at d = {spec.reliability_distances}")
    out["reliability"] = _reliability(ck, dataset, spec.reliability_distances, device,
                                      spec.key_segmenter)

    log("report: GFLOPs per frame (davss flops)")
    table = frame_cost_table(ck.config)
    out["flops"] = {"key": table["key"], "key_by_mode": table["key_by_mode"],
                    "non_key": table["non_key"],
                    "modules": table["modules"], "flow_note": table["flow_note"]}
    gflops = {mode: {"key": table["key_by_mode"][mode], "nonkey": table["non_key"][mode]}
              for mode in MAIN_MODES}
    if out.get("matched"):
        gflops["matched per_frame"] = {"key": out["matched"]["gflops"],
                                       "nonkey": out["matched"]["gflops"]}
    out["cca_gflops"] = cca_points(_with_matched(out), gflops, spec.distances)

    if bench:
        log(f"report: timing {spec.bench_frames} frames per mode on {device}")
        frames = _test_frames(dataset, spec.bench_frames)
        out["bench"] = _bench(spec.checkpoint, ck.config, frames, spec.bench_key_interval,
                              device, spec.key_segmenter)
        if spec.matched is not None:
            from davss_ros.bench import time_mode

            out["bench_matched"] = time_mode(
                frames, config=mck.config, mode="per_frame", checkpoint=spec.matched.checkpoint,
                device=device, key_interval=spec.bench_key_interval)
        if not spec.key_segmenter:
            log("report: timing per_frame and davss with the key segmenter on onnxruntime")
            out["bench_onnx"] = _bench_onnx(spec, ck, frames, device)
        ms = {mode: {"key": b["key_ms"], "nonkey": b["nonkey_ms"]}
              for mode, b in out["bench"].items()}
        if out.get("bench_matched"):
            b = out["bench_matched"]
            ms["matched per_frame"] = {"key": b["key_ms"], "nonkey": b["key_ms"]}
        for mode, b in (out.get("bench_onnx") or {}).items():
            if mode in out["pda"]:
                ms[f"{mode} (onnxruntime key)"] = {"key": b["key_ms"], "nonkey": b["nonkey_ms"]}
        out["cca_ms"] = cca_points(_with_matched(out, onnx=True), ms, spec.distances)

    sw = spec.schedule
    clips = sw.clips if limit is None else min(sw.clips, limit)
    log(f"report: fixed against adaptive key frames on {clips} whole clips")
    out["schedule"] = _schedule(ck, split, sw, clips, table, device, progress)
    out["schedule_sets"] = {}
    for c in sw.clip_sets:
        log(f"report: fixed against adaptive key frames on {clips} clips with "
            f"{c['name']} ({c['root']})")
        row = _schedule(ck, clip_sets[c["name"]], sw, clips, table, device, progress)
        out["schedule_sets"][c["name"]] = dict(row, root=c["root"])

    # The ablations last: their trainings are the longest, and may still be finishing.
    out["ablations"] = {}
    out["ablations_missing"] = {}
    for abl in spec.ablations:
        if not Path(abl.checkpoint).is_file():
            log(f"report: the ablation {abl.name!r} is not trained ({abl.checkpoint} is "
                "missing); reported as missing")
            out["ablations_missing"][abl.name] = {"checkpoint": abl.checkpoint,
                                                  "train_config": abl.train_config}
            continue
        log(f"report: PDA of the ablation {abl.name!r} ({abl.checkpoint})")
        ack = load_checkpoint(abl.checkpoint)
        row = _pda(ack, ("davss",), dataset, spec.distances, device, progress)["davss"]
        row["checkpoint"] = abl.checkpoint
        row["train_config"] = abl.train_config
        row["training"] = training_info(ack)
        out["ablations"][abl.name] = row

    if spec.shipped and Path(spec.shipped).is_file():
        out["shipped"] = shipped_info(spec.shipped)
    out["goals"] = check_goals(out)
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    return out


def _with_matched(out: dict[str, Any], onnx: bool = False) -> dict[str, dict]:
    """The PDA rows plus the matched-cost baseline (and, ``onnx``, the main modes again under
    the names their onnxruntime timings carry), for the CCA points."""
    rows = dict(out["pda"])
    if out.get("matched"):
        rows["matched per_frame"] = out["matched"]
    if onnx:
        for mode in out.get("bench_onnx") or {}:
            if mode in out["pda"]:
                rows[f"{mode} (onnxruntime key)"] = out["pda"][mode]
    return rows


def _bench_onnx(spec: ReportSpec, ck, frames, device) -> dict[str, dict]:
    """per_frame and davss timed with the checkpoint's segmenter exported to ONNX."""
    import tempfile

    from davss_ros.bench import time_mode
    from davss_ros.export import export_key_segmenter

    with tempfile.TemporaryDirectory(prefix="davss_report_") as tmp:
        path = Path(tmp) / "key.onnx"
        export_key_segmenter(ck, path, "onnx")
        return {mode: time_mode(frames, config=ck.config, mode=mode,
                                checkpoint=spec.checkpoint, device=device,
                                key_interval=spec.bench_key_interval, key_segmenter=str(path))
                for mode in ("per_frame", "davss")}


def _domain_shift(ck, prev, spec: ReportSpec, data, device, progress,
                  log) -> dict[str, Any]:
    """Agreement with the per-frame output on ``data`` (clips in another look), this
    model's modes and the davss of ``prev`` (the previous model; None: left out)."""
    ds = spec.domain_shift
    log(f"report: {ds.look} look ({ds.root} {ds.split}, {len(data)} snippets), agreement "
        "with the per-frame output")
    modes = ("per_frame", "hold", "dff", "accel", "davss")
    out: dict[str, Any] = {"root": ds.root, "split": ds.split, "look": ds.look,
                           "snippets": len(data),
                           "rows": _pda(ck, modes, data, spec.distances, device, progress,
                                        spec.key_segmenter, reference="teacher")}
    if prev is not None:
        out["previous"] = ds.previous
        out["previous_rows"] = _pda(prev, ("per_frame", "davss"), data, spec.distances,
                                    device, progress, reference="teacher")
    return out


def _consistency(ck, split, clips: int, spec: ReportSpec, device, matched) -> dict[str, dict]:
    """Label flicker along the motion, every main mode (and the matched-cost per-frame
    network) streaming the same whole clips with a key frame every bench key interval."""
    from davss_ros.evaluate.consistency import temporal_consistency
    from davss_ros.evaluate.pda import build_segmenters
    from davss_ros.evaluate.schedule_eval import iter_clips

    segs = build_segmenters(ck, MAIN_MODES, device=device,
                            key_segmenter=spec.key_segmenter or None)
    if matched is not None:
        segs["matched per_frame"] = build_segmenters(matched, ["per_frame"],
                                                     device=device)["per_frame"]
    try:
        res = temporal_consistency(segs, iter_clips(split, clips=clips),
                                   key_interval=spec.bench_key_interval)
    finally:
        for seg in segs.values():
            seg.close()
    return {name: f.as_dict() for name, f in res.items()}


def _reliability(ck, dataset, distances, device, key_segmenter: str) -> dict[str, Any]:
    """The confidence image's calibration (davss against the key segmenter's labels)."""
    from davss_ros.evaluate.reliability import Reliability, evaluate_reliability
    from davss_ros.pipeline import VideoSegmenter

    kw = {"device": device, "key_segmenter": key_segmenter or None}
    reference = VideoSegmenter.from_checkpoint(ck, mode="per_frame", **kw)
    seg = VideoSegmenter.from_checkpoint(ck, mode="davss", **kw)
    try:
        res = evaluate_reliability(seg, reference, dataset, distances=distances)
    finally:
        seg.close()
        reference.close()
    total = Reliability.merged(res.values())
    return {"table": total.table(), "ece": 100 * total.ece(),
            "agreement": 100 * total.agreement(),
            "ece_by_d": {str(d): 100 * r.ece() for d, r in sorted(res.items())}}


def _schedule(ck, dataset, sw: ScheduleSweep, clips: int, table: dict, device,
              progress: bool) -> dict[str, Any]:
    """Stream whole clips under fixed intervals and adaptive thresholds (davss mode, the
    node's schedule settings otherwise, scene cuts on) and compare at matched GFLOPs."""
    from dataclasses import replace

    from davss_ros.evaluate.schedule_eval import (
        build_segmenter,
        iter_clips,
        sweep_as_json,
        sweep_schedules,
    )

    seg = build_segmenter(ck, mode="davss", device=device)
    reference = (build_segmenter(ck, mode="per_frame", device=device)
                 if sw.oracle_thresholds else None)
    try:
        base = replace(seg.config.schedule, max_interval=int(sw.max_interval))
        sweep = sweep_schedules(seg, iter_clips(dataset, clips=clips),
                                intervals=sw.fixed_intervals,
                                thresholds=sw.adaptive_thresholds, base=base,
                                oracle_thresholds=sw.oracle_thresholds, reference=reference,
                                progress=progress)
    finally:
        seg.close()
        if reference is not None:
            reference.close()
    out = sweep_as_json(sweep, key_cost=table["key_by_mode"]["davss"],
                        nonkey_cost=table["non_key"]["davss"])
    frames = sweep.fixed[0].frames if sweep.fixed else 0
    out["description"] = (
        f"davss mode streams {clips} whole clips ({frames} frames, every frame scored) "
        "under each schedule: fixed = a key frame every k frames; adaptive = a key frame "
        "when the mean of the predicted distortion map is above the threshold, or after "
        f"{sw.max_interval} frames. Scene cuts force key frames in both. The mean cost per "
        "frame is key fraction x key GFLOPs + the rest x non-key GFLOPs; the fixed curve's "
        "mIoU is interpolated linearly at each adaptive point's cost.")
    if sw.oracle_thresholds:
        out["description"] += (
            " An oracle schedule knows the labels: after a frame whose pixel error exceeds "
            "the per-frame segmenter's on that frame by more than the margin, the next frame "
            f"is key (otherwise only scene cuts and {sw.max_interval} frames). No trigger "
            "that runs without labels can choose when to key better, so the oracle's lead "
            "over fixed bounds what adaptive key frames can gain on these clips.")
    return out


class _Limited:
    """The first ``n`` snippets of a data set (quick runs of the report)."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n = dataset, min(int(n), len(dataset))

    def __len__(self) -> int:
        return self.n

    def pda_sample(self, i: int, distance: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset.pda_sample(i, distance)


def shipped_info(path: str | Path) -> dict[str, Any]:
    import hashlib

    data = Path(path).read_bytes()
    return {"path": str(path), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------------- goals


def _schedule_tables(sched: dict[str, Any]) -> list[str]:
    """A schedule sweep's markdown: adaptive (and oracle) against fixed at matched cost,
    then the fixed intervals."""
    L = []
    for key, what in (("matched", "adaptive"), ("oracle_matched", "oracle")):
        if key == "oracle_matched" and not sched.get(key):
            continue
        head = "adaptive threshold" if what == "adaptive" else "oracle margin"
        L += [f"| {head} | key fraction | GFLOPs / frame | {what} mIoU | "
              f"fixed mIoU at that cost | {what} - fixed |", "|---|---|---|---|---|---|"]
        for r in sched.get(key, []):
            L.append(f"| {r['threshold']:g} | {r['key_fraction']:.3f} | {r['cost']:.2f} | "
                     f"{_f(r['adaptive_miou'])} | {_f(r.get('fixed_miou'))} | "
                     f"{_f(r.get('difference'))} |")
        L.append("")
    L += ["Fixed intervals k (key fraction, mIoU): " + ", ".join(
        f"{r['key_interval']} ({r['key_fraction']:.3f}, {_f(r['miou'])})"
        for r in sched.get("fixed", [])) + ".", ""]
    return L


def _oracle_bound(schedule: dict[str, Any]) -> str:
    """The adaptive goal's context: how the oracle schedules (which know the labels) fare
    against fixed at matched cost; empty when the report ran none."""
    rows = [r for r in schedule.get("oracle_matched") or [] if r.get("fixed_miou") is not None]
    if not rows:
        return ""
    diffs = [r["difference"] for r in rows]
    return (f"; an oracle that knows the labels: at least as accurate at "
            f"{sum(d >= 0.0 for d in diffs)} of {len(rows)}, oracle - fixed from "
            f"{min(diffs):+.2f} to {max(diffs):+.2f}")


def check_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals on held-out clips (the issue "the correction must earn its place"), each
    with its numbers and met or not:

    - davss at least accel at every d;
    - davss at the largest d within 2 mIoU points of per_frame, and 5 points above dff;
    - davss's mean over d above the per-frame baseline of matched cost (when measured);
    - each ablation below the full model (mean over d);
    - adaptive key frames at least as accurate as fixed at 7 of 9 (the same share of the
      swept) matched costs;
    - per_frame at least 5 points above CFNet's cue alone;
    - in the other look (when measured): davss's agreement with the per-frame output at the
      largest d at least the previous model's davss, and above accel, dff and hold.
    """
    pda, d = results["pda"], str(max(results["distances"]))
    goals = []

    def at(mode: str) -> float:
        return pda[mode]["miou"][d]

    worse = [k for k, v in pda["davss"]["miou"].items()
             if v is not None and pda["accel"]["miou"].get(k) is not None
             and v < pda["accel"]["miou"][k]]
    margins = [pda["davss"]["miou"][k] - pda["accel"]["miou"][k] for k in pda["davss"]["miou"]
               if pda["davss"]["miou"][k] is not None
               and pda["accel"]["miou"].get(k) is not None]
    goals.append({"goal": "davss at least accel at every d",
                  "measured": f"davss - accel from {min(margins):+.2f} to {max(margins):+.2f}"
                              + (f" (below at d={', '.join(worse)})" if worse else ""),
                  "met": not worse})
    gap = at("per_frame") - at("davss")
    goals.append({"goal": f"davss at d={d} within 2 points of per_frame",
                  "measured": f"{at('davss'):.2f} vs {at('per_frame'):.2f} "
                              f"(gap {gap:.2f})", "met": gap <= 2.0})
    lead = at("davss") - at("dff")
    goals.append({"goal": f"davss at d={d} at least 5 points above dff",
                  "measured": f"{at('davss'):.2f} vs {at('dff'):.2f} ({lead:+.2f})",
                  "met": lead >= 5.0})
    full = pda["davss"]["mean_miou"]
    if results.get("matched"):
        base = results["matched"]["mean_miou"]
        goals.append({"goal": "davss (mean over d) above the per-frame baseline of matched "
                              "cost",
                      "measured": f"{full:.2f} vs {base:.2f} ({full - base:+.2f}; "
                                  f"{results['matched']['gflops']:.2f} GFLOPs a frame)",
                      "met": full > base})
    for name, row in results.get("ablations", {}).items():
        goals.append({"goal": f"{name} below the full model (mean mIoU over d)",
                      "measured": f"{row['mean_miou']:.2f} vs {full:.2f}",
                      "met": row["mean_miou"] < full})
    for name, row in (results.get("ablations_missing") or {}).items():
        goals.append({"goal": f"{name} below the full model (mean mIoU over d)",
                      "measured": f"not measured: {row['checkpoint']} not trained",
                      "met": False})
    rows = [r for r in (results.get("schedule") or {}).get("matched", [])
            if r.get("fixed_miou") is not None]
    if rows:
        wins = sum(r["difference"] >= 0.0 for r in rows)
        need = -(-7 * len(rows) // 9)  # 7 of 9, as a share of the points swept
        goals.append({"goal": f"adaptive at least as accurate as fixed at {need} of "
                              f"{len(rows)} matched costs",
                      "measured": f"{wins} of {len(rows)}; adaptive - fixed from "
                                  f"{min(r['difference'] for r in rows):+.2f} to "
                                  f"{max(r['difference'] for r in rows):+.2f} points"
                                  + _oracle_bound(results["schedule"]),
                      "met": wins >= need})
    if results.get("cue"):
        cue = results["cue"]["miou"]["1"]
        per = pda["per_frame"]["mean_miou"]
        goals.append({"goal": "per_frame at least 5 points above CFNet's cue alone",
                      "measured": f"{per:.2f} vs {cue:.2f} ({per - cue:+.2f})",
                      "met": per - cue >= 5.0})
    shift = results.get("domain_shift")
    if shift:
        agree = {m: r["pixel_accuracy"][d] for m, r in shift["rows"].items()}
        prev = (shift.get("previous_rows") or {}).get("davss", {}).get(
            "pixel_accuracy", {}).get(d)
        others = {m: agree[m] for m in ("accel", "dff", "hold") if m in agree}
        ok = all(agree["davss"] > v for v in others.values())
        text = f"davss {agree['davss']:.2f}; " + ", ".join(
            f"{m} {v:.2f}" for m, v in others.items())
        if prev is not None:
            ok = ok and agree["davss"] >= prev
            text += f"; previous davss {prev:.2f}"
        goals.append({"goal": f"{shift['look']} look, agreement with per_frame at d={d}: "
                              "davss above accel, dff and hold"
                              + (" and at least the previous davss" if prev is not None
                                 else ""),
                      "measured": text + " (% of pixels)", "met": ok})
    return goals


# ------------------------------------------------------------------------- writing


def write_figures(results: dict[str, Any], folder: Path) -> dict[str, str]:
    from davss_ros.evaluate.plots import plot_cca, plot_pda

    folder.mkdir(parents=True, exist_ok=True)
    figs = {}
    rows = [results["pda"][m] for m in MAIN_MODES if m in results["pda"]]
    rows += [dict(r, mode=f"davss, {name}") for name, r in results["ablations"].items()]
    rows += [dict(results["pda"][m], mode=m.replace("_gt", "*")) for m in BOUND_MODES
             if m in results["pda"]]
    figs["pda"] = str(plot_pda({"results": rows}, folder / "pda.png",
                               title=f"PDA, synthetic {results['dataset']['split']} clips"))
    figs["cca_gflops"] = str(plot_cca(results["cca_gflops"], folder / "cca_gflops.png",
                                      title="CCA: mIoU against GFLOPs per frame"))
    if results.get("cca_ms"):
        figs["cca_ms"] = str(plot_cca(results["cca_ms"], folder / "cca_ms.png",
                                      cost_label="mean time per frame (ms, this CPU)",
                                      title="CCA: mIoU against measured time per frame"))
    sched = results.get("schedule") or {}
    if sched.get("fixed") and sched.get("adaptive"):
        pts = [("fixed", r["cost"], r["miou"]) for r in sched["fixed"]]
        pts += [("adaptive", r["cost"], r["miou"]) for r in sched["adaptive"]]
        figs["schedule"] = str(plot_cca(pts, folder / "schedule.png",
                                        title="davss: fixed against adaptive key frames"))
    return figs


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _key_gflops(results: dict[str, Any], mode: str) -> float:
    return results["flops"].get("key_by_mode", {}).get(mode, results["flops"]["key"])


def _bench_frames(results: dict[str, Any]) -> int:
    b = results["bench"]["davss"]
    return int(b["key_frames"] + b["nonkey_frames"])


def _pda_table(rows: list[tuple[str, dict]], distances) -> list[str]:
    head = "| | " + " | ".join(f"d={d}" for d in distances) + " | mean |"
    lines = [head, "|---" * (len(distances) + 2) + "|"]
    for name, row in rows:
        cells = [_f(row["miou"].get(str(d))) for d in distances] + [_f(row["mean_miou"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: dict[str, Any], figures: dict[str, str], *,
                    doc_dir: Path, command: str) -> str:
    ds, tr, mach, model = (results["dataset"], results["training"], results["machine"],
                           results["model"])
    dist = results["distances"]
    rel = {k: os.path.relpath(v, doc_dir) for k, v in figures.items()}
    L: list[str] = []
    L += ["# Results", "",
          f"Written by `{command}` on {results['generated']} "
          f"({results['seconds']:.0f} s). Do not edit: rerun the command.", "",
          "Everything here is on **synthetic** driving clips rendered by davss_ros "
          "(`davss_ros/data/synthetic.py`), not on real camera data. "
          f"The scores are on the held-out `{ds['split']}` split "
          f"({ds['snippets']} snippets); nothing in training or in the recipe's choices "
          "looked at it.", ""]
    L += ["## Goals", "", "| goal | measured (mIoU %) | met |", "|---|---|---|"]
    L += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |"
          for g in results["goals"]]
    L += ["", "## Setup", "",
          f"- Model: DeepLabv3+ on {model['backbone']}, {model['flow']} flow, CFNet at "
          f"{model['cfnet_width']} width, input {model['input'][0]}x{model['input'][1]}, "
          f"{model['classes']} classes (Cityscapes trainIds); distortion estimator "
          f"`{model.get('distortion', 'paper')}`.",
          f"- Checkpoint: `{results['checkpoint']}`"
          + (f"; shipped as `{results['shipped']['path']}` "
             f"({results['shipped']['bytes'] / 1e6:.1f} MB, sha256 "
             f"{results['shipped']['sha256'][:12]})" if results.get("shipped") else "")
          + (f"; float16 copy of `{results['checkpoint_source'] or 'the trained model'}` by "
             f"`davss export --half`, labels {results['export']['label_agreement']:.3f} % "
             "the same as the float32 weights' on rendered frames"
             if (results.get("export") or {}).get("label_agreement") is not None else "")
          + ".",
          f"- Training: `davss train --config {tr['config_file']}`, seed {tr['seed']}; "
          f"data {tr['data']['clips']} clips of {tr['data']['frames']} frames at "
          f"{tr['data']['height']}x{tr['data']['width']} (render seed "
          f"{tr['data']['seed']}); iterations per stage {tr['iterations']}; "
          f"{_f(tr['total_seconds'], 0)} s of training "
          f"({', '.join(f'stage {k}: {v:.0f} s' for k, v in tr['stage_seconds'].items())}"
          "), data rendering not included"
          + (_seeded_text(tr['seeded']) if tr.get("seeded") else "") + ".",
          f"- Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']} "
          f"({mach['torch_threads']} thread{'' if mach['torch_threads'] == 1 else 's'}), "
          f"Python {mach['python']}, {mach['system']}"
          + (f", GPU {mach['cuda']}" if mach.get("cuda") else ", no GPU") + ".",
          "- PDA protocol: for each snippet and d, the frame d before the annotated one is "
          "the key frame and the following frames are propagated one by one; one confusion "
          "matrix per (mode, d) over the split."]
    L += [f"- {note}" for note in results.get("notes", [])]
    L += [""]

    L += ["## PDA: mIoU (%) against propagation distance", ""]
    rows = [(m, results["pda"][m]) for m in MAIN_MODES]
    if "hold" in results["pda"]:
        rows.append(("hold (key labels unwarped)", results["pda"]["hold"]))
    if results.get("matched"):
        rows.append((f"per_frame at matched cost ({results['matched']['gflops']:.2f} GFLOPs)",
                     results["matched"]))
    L += _pda_table(rows, dist)
    L += ["", f"![PDA]({rel['pda']})", ""]
    if results.get("cue") or results.get("matched"):
        L += ["## The key segmenter, the light branch and a per-frame network of davss's "
              "cost", ""]
        if results.get("cue"):
            cue = results["cue"]["miou"]["1"]
            per = results["pda"]["per_frame"]["mean_miou"]
            L += [f"- CFNet's correction cue alone (the light current-frame branch, no key "
                  f"frame): {_f(cue)} mIoU, against {_f(per)} for the key segmenter on every "
                  f"frame: a gap of {_f(per - cue)} points. DAVSS needs that gap: where the "
                  "cue is as good as the key segmenter, a per-frame light network wins."]
        if results.get("matched"):
            mt, fl = results["matched"], results["flops"]
            d5 = (fl.get("key_by_mode", {}).get("davss", fl["key"])
                  + 4 * fl["non_key"]["davss"]) / 5
            L += [f"- `{mt['name']}`: a light DeepLabv3+ trained on the same clips with the "
                  f"same stage-0 budget (`{mt['train_config']}`), {mt['gflops']:.2f} GFLOPs "
                  f"a frame against davss's mean at D = 5 ({d5:.2f} GFLOPs): mean "
                  f"{_f(mt['mean_miou'])} mIoU, davss "
                  f"{_f(results['pda']['davss']['mean_miou'])}."]
        L += [""]

    L += ["## Ablations (the paper's Table III)", "",
          "Each ablation shares the full model's earlier stages (`davss train --reuse`) and "
          "retrains what its configuration changes; davss mode.", ""]
    rows = [("full model", results["pda"]["davss"])]
    rows += [(name, row) for name, row in results["ablations"].items()]
    sd = [d for d in SUMMARY_DISTANCES if d in dist]
    L += _pda_table(rows, sd)
    L += ["", "(mean: over all d = " + ", ".join(map(str, dist)) + ".)", ""]
    for name, row in (results.get("ablations_missing") or {}).items():
        L += [f"- {name}: not trained for this report (`davss train --config "
              f"{row['train_config']} --out {Path(row['checkpoint']).parent}`; resumable)."]
    if results.get("ablations_missing"):
        L += [""]

    L += ["## Upper bound with the ground-truth distortion map (the paper's Table IV)", "",
          "`*`: the wrongly propagated pixels (against the ground truth) take the correction "
          "(CFNet's cue for davss, Accel's fused output for accel), the others keep the "
          "propagated prediction. The gap is how much a perfect distortion map would add.",
          ""]
    head = "| | " + " | ".join(f"d={d}" for d in sd) + " | mean | gap |"
    L += [head, "|---" * (len(sd) + 3) + "|"]
    for mode, bound in (("davss", "davss_gt"), ("accel", "accel_gt")):
        if bound not in results["pda"]:
            continue
        a, b = results["pda"][mode], results["pda"][bound]
        L.append(f"| {mode} | " + " | ".join(_f(a["miou"][str(d)]) for d in sd)
                 + f" | {_f(a['mean_miou'])} | |")
        L.append(f"| {mode}* | " + " | ".join(_f(b["miou"][str(d)]) for d in sd)
                 + f" | {_f(b['mean_miou'])} | {_f(b['mean_miou'] - a['mean_miou'])} |")
    L += [""]

    L += ["## CCA: mIoU against mean cost per frame", "",
          "C_mean = (C_key + d C_nonkey) / (d + 1) (the paper's Eq. 8): one key frame every "
          "d + 1 frames, plotted against the mIoU at d (the farthest frame), as the paper "
          "does. GFLOPs by `davss flops` (" + results["flops"]["flow_note"] + ")"
          + (f"; milliseconds measured by `davss bench`'s timing on {_bench_frames(results)}"
             " test frames per mode, medians." if results.get("bench") else "."), ""]
    L += ["| mode | key GFLOPs | non-key GFLOPs"
          + (" | key ms | non-key ms | non-key / key (ms)" if results.get("bench") else "")
          + " |", "|---|---|---" + ("|---|---|---" if results.get("bench") else "") + "|"]
    for mode in MAIN_MODES:
        line = (f"| {mode} | {_key_gflops(results, mode):.2f} | "
                f"{results['flops']['non_key'][mode]:.2f}")
        if results.get("bench"):
            b = results["bench"][mode]
            line += f" | {b['key_ms']:.1f} | {b['nonkey_ms']:.1f} | {b['nonkey_over_key']:.2f}"
        L.append(line + " |")
    for mode, b in (results.get("bench_onnx") or {}).items():
        L.append(f"| {mode}, key segmenter on onnxruntime | {_key_gflops(results, mode):.2f} | "
                 f"{results['flops']['non_key'][mode]:.2f} | {b['key_ms']:.1f} | "
                 f"{b['nonkey_ms']:.1f} | {b['nonkey_over_key']:.2f} |")
    if results.get("matched"):
        g = results["matched"]["gflops"]
        line = f"| per_frame at matched cost | {g:.2f} | {g:.2f}"
        if results.get("bench_matched"):
            b = results["bench_matched"]
            line += f" | {b['key_ms']:.1f} | {b['key_ms']:.1f} | 1.00"
        L.append(line + " |")
    L += ["", f"![CCA GFLOPs]({rel['cca_gflops']})"]
    if "cca_ms" in rel:
        L += ["", f"![CCA ms]({rel['cca_ms']})"]
    L += [""]

    shift = results.get("domain_shift")
    if shift:
        L += [f"## Robustness: the {shift['look']} look, never trained on", "",
              f"`{shift['root']}` `{shift['split']}` ({shift['snippets']} snippets): the same "
              f"scenes and motion as the training look, rendered {shift['look']}. No label is "
              "used: each mode's labels on the annotated frame are compared with the key "
              "segmenter's own (per_frame) labels there, % of pixels that agree. `hold` "
              "reuses the key frame's labels unwarped.", ""]
        head = "| agreement (%) | " + " | ".join(f"d={d}" for d in dist) + " | mean |"
        L += [head, "|---" * (len(dist) + 2) + "|"]
        rows = [(m, r) for m, r in shift["rows"].items() if m != "per_frame"]
        if shift.get("previous_rows"):
            rows.append((f"previous davss (`{shift['previous']}`)",
                         shift["previous_rows"]["davss"]))
        for name, r in rows:
            vals = [r["pixel_accuracy"].get(str(d)) for d in dist]
            fin = [v for v in vals if v is not None]
            L.append(f"| {name} | " + " | ".join(_f(v) for v in vals)
                     + f" | {_f(sum(fin) / len(fin) if fin else None)} |")
        L += [""]

    cons = results.get("consistency")
    if cons:
        L += ["## Temporal consistency", "",
              "Share of pixels whose label changes from one frame to the next along the "
              "motion (dense DIS flow between the frames, forward-backward checked; "
              f"`davss_ros/evaluate/consistency.py`), {cons['clips']} whole test clips, a key "
              f"frame every {cons['key_interval']} frames. Lower is steadier.", "",
              "| mode | flicker (%) | pixels counted |", "|---|---|---|"]
        L += [f"| {name} | {c['flicker_percent']:.2f} | {c['counted_pixels']} |"
              for name, c in cons["modes"].items()]
        L += [""]

    rel_cal = results.get("reliability")
    if rel_cal:
        L += ["## Calibration of `~/confidence`", "",
              "davss's confidence image against how often its label equals the key "
              "segmenter's on the same frame (PDA protocol, d = "
              + ", ".join(rel_cal["ece_by_d"]) + ", pixels pooled). A calibrated image has "
              "agreement = mean confidence in every bin.", "",
              "| confidence | share of pixels | mean confidence | agreement |",
              "|---|---|---|---|"]
        for row in rel_cal["table"]:
            lo, hi = row["bin"]
            L.append(f"| {lo:.1f}-{hi:.1f} | {100 * row['share']:.2f} % | "
                     f"{100 * row['confidence']:.2f} % | {100 * row['agreement']:.2f} % |")
        L += ["", f"ECE {rel_cal['ece']:.2f} points (by d: " + ", ".join(
            f"d={d} {v:.2f}" for d, v in rel_cal["ece_by_d"].items())
              + f"); overall agreement {rel_cal['agreement']:.2f} %.", ""]

    sched = results.get("schedule") or {}
    L += ["## Fixed against adaptive key frames at matched mean cost", ""]
    if sched:
        L += [sched.get("description", ""), ""] + _schedule_tables(sched)
        if "schedule" in rel:
            L += [f"![schedule]({rel['schedule']})", ""]
    for name, row in (results.get("schedule_sets") or {}).items():
        L += [f"### The same on clips with {name}", "",
              f"`{row['root']}`, the same split, clips, schedules and costs.", ""]
        L += _schedule_tables(row)
    L += ["## Reproduce", "",
          "`make results` runs these (each training skips the stages already finished):", "",
          "```"]
    main_out = str(Path(results["checkpoint_source"]).parent) if results.get(
        "checkpoint_source") else "out/train/cpu"
    if tr.get("config_file"):
        L.append(f"davss train --config {tr['config_file']} --out {main_out}")
    for name, row in results["ablations"].items():
        if row.get("train_config"):
            L.append(f"davss train --config {row['train_config']} --out "
                     f"{Path(row['checkpoint']).parent} --reuse {main_out}   # {name}")
    if (results.get("matched") or {}).get("train_config"):
        mt = results["matched"]
        L.append(f"davss train --config {mt['train_config']} --out "
                 f"{Path(mt['checkpoint']).parent}   # {mt['name']}")
    if results.get("shipped"):
        L.append(f"davss export --checkpoint {main_out}/final.pt --out "
                 f"{results['shipped']['path']} --half")
    L += [command, "```", "",
          "Raw numbers: `" + os.path.relpath(results.get("json_path", ""), doc_dir) + "`.",
          ""]
    return "\n".join(L)


def readme_block(results: dict[str, Any]) -> str:
    """The README's results block: the headline numbers, from the same results."""
    pda, d = results["pda"], str(max(results["distances"]))
    lines = [README_BEGIN,
             f"Held-out synthetic `{results['dataset']['split']}` clips "
             f"({results['dataset']['snippets']} snippets), mIoU (%) at propagation "
             f"distance d (from [docs/RESULTS.md](docs/RESULTS.md)):", "",
             "| mode | d=1 | d=5 | d=9 | mean |", "|---|---|---|---|---|"]
    for mode in MAIN_MODES:
        r = pda[mode]
        lines.append(f"| {mode} | " + " | ".join(_f(r["miou"].get(str(k)))
                                                  for k in (1, 5, 9)) +
                     f" | {_f(r['mean_miou'])} |")
    met = sum(g["met"] for g in results["goals"])
    lines += ["", f"Goals met: {met} of {len(results['goals'])} "
                  f"(d={d}; see the report for which)."]
    if results.get("bench"):
        b = results["bench"]["davss"]
        lines.append(f"davss on this CPU: key frame {b['key_ms']:.1f} ms, non-key "
                     f"{b['nonkey_ms']:.1f} ms (ratio {b['nonkey_over_key']:.2f}).")
    lines.append(README_END)
    return "\n".join(lines)


def model_card_block(results: dict[str, Any]) -> str:
    """The model card's numbers: per-class IoU of the shipped model, and the headline."""
    pda, d = results["pda"], str(max(results["distances"]))
    per, dav = pda["per_frame"]["per_class_iou"], pda["davss"]["per_class_iou"]
    lines = [README_BEGIN,
             f"On the held-out synthetic `{results['dataset']['split']}` split "
             f"({results['dataset']['snippets']} snippets; from "
             "[RESULTS.md](RESULTS.md)): mIoU per frame (every frame a key frame) "
             f"{_f(pda['per_frame']['mean_miou'])} %, davss at d=1 "
             f"{_f(pda['davss']['miou'].get('1'))} % and at d={d} "
             f"{_f(pda['davss']['miou'].get(d))} %.", "",
             f"| class | IoU per frame (%) | IoU davss, d={d} (%) |", "|---|---|---|"]
    for name in per:
        if per[name] is None and dav.get(name) is None:
            continue
        lines.append(f"| {name} | {_f(per[name])} | {_f(dav.get(name))} |")
    absent = [n for n in per if per[n] is None and dav.get(n) is None]
    if absent:
        lines += ["", "Not in the synthetic data, never scored (the model still has an output "
                      "for them): " + ", ".join(absent) + "."]
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(path: Path, block: str) -> bool:
    """Replace the results block of a markdown file (README.md, docs/MODEL_CARD.md);
    returns False when the markers are missing."""
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(head + block + tail)
    return True


# ------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/report.yaml",
                        help="report spec (data split, checkpoints, sweeps)")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"),
                        help="markdown report to write")
    parser.add_argument("--figures", type=Path, default=None,
                        help="folder for the plots and results.json (default: "
                             "<out's folder>/results)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also rewrite this README's results block")
    parser.add_argument("--model-card", type=Path, default=None,
                        help="also rewrite this model card's results block "
                             "(docs/MODEL_CARD.md)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N snippets / clips (a quick look)")
    parser.add_argument("--no-bench", action="store_true", help="skip the timing")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of torch, OpenCV and onnxruntime for every "
                        "measurement (0 = half the cores, at most 4: davss_ros.threads), as "
                        "davss bench; the report's Setup line names it")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from davss_ros.checkpoint import CheckpointError
    from davss_ros.threads import set_threads

    try:
        # before anything is measured: the timings depend on it (threads.py)
        set_threads(args.threads)
        spec = load_spec(args.config)
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be >= 1")
        results = collect(spec, device=args.device, limit=args.limit,
                          progress=not args.no_progress, bench=not args.no_bench)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"davss report: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    figdir = args.figures or out.parent / "results"
    results["json_path"] = str(figdir / "results.json")
    figures = write_figures(results, figdir)
    command = "davss report --config " + str(args.config) + (
        f" --limit {args.limit}" if args.limit else "") + (
        " --no-bench" if args.no_bench else "") + (
        f" --threads {args.threads}" if args.threads else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(results, figures, doc_dir=out.parent, command=command))
    Path(results["json_path"]).write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"wrote {out}, {figdir}/")
    for g in results["goals"]:
        print(f"  {'met   ' if g['met'] else 'MISSED'}  {g['goal']}: {g['measured']}")
    status = 0
    for path, block in ((args.readme, readme_block), (args.model_card, model_card_block)):
        if path is None:
            continue
        if update_readme(path, block(results)):
            print(f"updated the results block of {path}")
        else:
            print(f"davss report: {path} has no results markers; not changed",
                  file=sys.stderr)
            status = 1
    return status
