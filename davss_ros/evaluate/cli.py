"""``davss eval``: the paper's PDA evaluation (mIoU of the annotated frame per distance d).

    davss eval --dataset synthetic --root data/synthetic --split val --json pda.json \\
        --plot pda.png
    davss eval --dataset cityscapes --root /data/cityscapes --checkpoint model.pt \\
        --modes davss,dff --distances 1,5,9 --limit 50

Prints a table (rows: modes; columns: d and the mean over d; mIoU in percent) and writes the
numbers as JSON (``--json``) and the PDA curve as PNG (``--plot``). ``--modes`` also takes
the oracle upper bounds ``davss_gt`` and ``accel_gt`` (only the pixels the propagation got
wrong, found with the label, take the correction; see ``pda.py``); they are not run unless
asked for, nor is ``hold`` (the key frame's labels reused unwarped: the floor of
propagation).

``--reference teacher`` scores every mode against the per-frame segmenter's prediction of
the annotated frame instead of its label (agreement with the key segmenter, for video
without labels or in a look the model was not trained on); it prints pixel agreement as
well as mIoU::

    davss eval --root out/data/synthetic_dusk --split test --reference teacher \
        --modes per_frame,hold,dff,accel,davss

``--schedule-sweep`` runs the other evaluation, fixed against adaptive key-frame scheduling
at matched mean cost over whole clips (``schedule_eval.py``)::

    davss eval --schedule-sweep --root data/synthetic --checkpoint model.pt \\
        --intervals 1-10 --thresholds 0.05,0.1,0.2 --clips 20 --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from davss_ros.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from davss_ros.config import MODES, SCHEDULE_SOURCES, load_config
from davss_ros.registry import DATASETS

from .pda import (
    DISTANCES,
    EVAL_MODES,
    HOLD,
    REFERENCES,
    build_segmenters,
    evaluate_pda,
    results_as_json,
    untrained_checkpoint,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint to evaluate (default: the one shipped with davss_ros)")
    parser.add_argument("--key-segmenter", type=Path, default=None, metavar="FILE",
                        help="key-frame segmenter: an ONNX or TorchScript file with its "
                        "declaration (sidecar <file>.yaml or metadata); default: the "
                        "checkpoint's own")
    parser.add_argument("--untrained", action="store_true",
                        help="evaluate untrained weights of --config (tests, plumbing checks)")
    parser.add_argument("--config", default=None,
                        help="with --untrained: preset or YAML of the model (default: cpu)")
    parser.add_argument("--dataset", choices=DATASETS.names(), default="synthetic",
                        help="data layout: synthetic and cityscapes share the Cityscapes "
                             "sequence layout (default: %(default)s)")
    parser.add_argument("--root", type=Path, required=True, help="data set root folder")
    parser.add_argument("--split", default="val", help="default: %(default)s")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"some of {', '.join(EVAL_MODES)} (default: %(default)s)")
    parser.add_argument("--reference", choices=REFERENCES, default="label",
                        help="score against the label, or against the per-frame segmenter's "
                             "prediction (teacher: agreement; adds per_frame to the modes)")
    parser.add_argument("--distances", default=",".join(map(str, DISTANCES)),
                        help="propagation distances d, e.g. 1,5,9 or 1-9 (default: 1-9)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N snippets")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--input-height", type=int, default=None,
                        help="network input height (default: the checkpoint's)")
    parser.add_argument("--input-width", type=int, default=None,
                        help="network input width (default: the checkpoint's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PDA curve (PNG)")
    parser.add_argument("--resize-frames", action="store_true",
                        help="camvid: resize video frames to the label size on load")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--reliability", action="store_true",
                        help="also measure the calibration of the confidence image of each "
                             "propagating mode: its predicted agreement with the key "
                             "segmenter against the observed one, per confidence bin (ECE)")
    parser.add_argument("--consistency", type=int, default=None, metavar="K",
                        help="also stream whole clips (the first --limit, default all) with a "
                             "key frame every K frames and print each mode's label flicker "
                             "along the motion (temporal consistency; no label needed)")
    sweep = parser.add_argument_group(
        "schedule sweep", "fixed vs adaptive key-frame scheduling at matched mean cost, over "
        "whole clips of a Cityscapes-layout split (synthetic or cityscapes); --modes, "
        "--distances, --limit and --plot do not apply")
    sweep.add_argument("--schedule-sweep", action="store_true",
                       help="run the schedule sweep instead of the PDA evaluation")
    sweep.add_argument("--intervals", default="1-10",
                       help="fixed key intervals, e.g. 1-10 or 2,5,10 (default: %(default)s)")
    sweep.add_argument("--thresholds", default=None,
                       help="adaptive distortion thresholds in [0, 1], comma-separated "
                            "(default: 0.02,0.05,0.1,0.15,0.2,0.3)")
    sweep.add_argument("--oracle-thresholds", default=None, metavar="MARGINS",
                       help="also run oracle schedules, which know the labels: after a frame "
                            "whose pixel error exceeds the per-frame segmenter's by more than "
                            "the margin (in [-1, 1], comma-separated, e.g. 0.01,0.02), the "
                            "next is key; the most any adaptive trigger could gain")
    sweep.add_argument("--max-interval", type=int, default=None,
                       help="adaptive max_interval (default: the checkpoint's schedule)")
    sweep.add_argument("--schedule-source", choices=SCHEDULE_SOURCES, default=None,
                       help="the map the adaptive policy reads: dmnet or refined (the "
                            "fusion's; default: the checkpoint's schedule)")
    sweep.add_argument("--clips", type=int, default=None, help="only the first N clips")
    sweep.add_argument("--frames", type=int, default=None,
                       help="only the first N frames of each clip (default: all)")
    sweep.add_argument("--no-scene-cut", action="store_true",
                       help="switch the scene-cut rule off in every schedule (default: on, "
                            "with the checkpoint's settings)")
    sweep.add_argument("--costs", default=None, metavar="KEY,NONKEY",
                       help="cost of a key and a non-key frame in any unit, e.g. measured "
                            "ms (default: GFLOPs of davss mode at the input size)")


def run(args: argparse.Namespace) -> int:
    if args.schedule_sweep:
        return _run_sweep(args)
    try:
        modes = _parse_modes(args.modes)
        if args.reference == "teacher" and not {"per_frame", HOLD} & set(modes):
            modes = ["per_frame", *modes]
        distances = parse_distances(args.distances)
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        input_size = _input_size(args.input_height, args.input_width)
        checkpoint, checkpoint_name = _checkpoint(args)
        dataset = open_dataset(args.dataset, args.root, args.split,
                               max_distance=max(distances), resize_frames=args.resize_frames)
        if len(dataset) == 0:
            raise ValueError(f"no annotated snippets in {args.root} split {args.split!r}")
        segmenters = build_segmenters(checkpoint, modes, input_size=input_size,
                                      key_segmenter=args.key_segmenter,
                                      device=args.device)
    except (CheckpointError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"davss eval: error: {exc}", file=sys.stderr)
        return 2

    first = next(iter(segmenters.values()))
    model = first.config.model
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    print(f"davss eval: {args.dataset} {args.split} ({count} snippets), {checkpoint_name}, "
          f"input {model.input_height}x{model.input_width}, device {first.device}")
    t0 = time.perf_counter()
    try:
        results = evaluate_pda(segmenters, dataset, distances=distances, limit=args.limit,
                               progress=not args.no_progress, reference=args.reference)
    except (ValueError, FileNotFoundError, IndexError) as exc:  # a snippet the data lacks
        print(f"davss eval: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "dataset": args.dataset,
        "split": args.split,
        "reference": args.reference,
        "checkpoint": checkpoint_name,
        "units": "percent",
        "root": str(args.root),
        "distances": list(distances),
        "input_height": model.input_height,
        "input_width": model.input_width,
        "device": str(first.device),
        "seconds": round(time.perf_counter() - t0, 3),
        "class_names": list(first.class_names),
        "results": results_as_json(results, first.class_names),
    }
    print(format_table(report))
    if args.reference == "teacher":
        print(format_table(report, "pixel_accuracy", "agree (%)"))
    if args.reliability:
        report["reliability"] = _reliability(
            args, checkpoint, dataset, distances, input_size,
            [m for m in modes if m in MODES and m != "per_frame"])
    if args.consistency is not None:
        report["consistency"] = _consistency(args, segmenters, dataset)
    for row in report["results"]:
        if row["distance_mismatches"] or row["invalid_outputs"]:
            print(f"warning: {row['mode']}: {row['distance_mismatches']} runs off their "
                  f"distance, {row['invalid_outputs']} non-finite outputs", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        from .plots import plot_pda

        plot_pda(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def open_dataset(kind: str, root: Path, split: str, *, max_distance: int = 9,
                 resize_frames: bool = False):
    """The snippet loader for a data set kind (synthetic data uses the Cityscapes layout)."""
    DATASETS.check("dataset", kind)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data set root {root} is not a folder")
    return DATASETS.get(kind)(Path(root), split, max_distance=max_distance,
                              resize_frames=resize_frames)


def _consistency(args, segmenters, dataset) -> dict:
    """Flicker of each pipeline mode's labels along the motion over whole clips."""
    from .consistency import temporal_consistency
    from .schedule_eval import iter_clips

    segs = {m: s for m, s in segmenters.items() if m in MODES}
    res = temporal_consistency(segs, iter_clips(dataset, clips=args.limit),
                               key_interval=args.consistency)
    print(f"\ntemporal consistency (key frame every {args.consistency}): label flicker "
          "along the motion, % of pixels")
    for mode, f in res.items():
        print(f"{mode:<10}{f.percent:8.2f}")
    return {"key_interval": args.consistency, "modes": {m: f.as_dict() for m, f in res.items()}}


def _reliability(args, checkpoint, dataset, distances, input_size, modes) -> dict:
    from davss_ros.pipeline import VideoSegmenter

    from .reliability import evaluate_reliability, format_reliability

    out = {}
    reference = VideoSegmenter.from_checkpoint(
        checkpoint, mode="per_frame", input_size=input_size,
        key_segmenter=args.key_segmenter, device=args.device)
    for mode in modes:
        seg = VideoSegmenter.from_checkpoint(checkpoint, mode=mode, input_size=input_size,
                                             key_segmenter=args.key_segmenter,
                                             device=args.device)
        res = evaluate_reliability(seg, reference, dataset, distances=distances,
                                   limit=args.limit)
        print(f"\nconfidence calibration, {mode} (agreement with the key segmenter):")
        print(format_reliability(res))
        out[mode] = {str(d): r.as_dict() for d, r in res.items()}
        seg.close()
    reference.close()
    return out


def parse_distances(text: str, *, option: str = "--distances") -> list[int]:
    """'1,5,9', '1-9' or a mix ('1-3,9') -> sorted distinct ints >= 1."""
    out: set[int] = set()
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            if "-" in item:
                lo, hi = (int(v) for v in item.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(item))
        except ValueError:
            raise ValueError(f"{option}: cannot read {item!r} (expected e.g. 1,5,9 or "
                             "1-9)") from None
    if not out or min(out) < 1:
        raise ValueError(f"{option} must name values >= 1, got {text!r}")
    return sorted(out)


def format_table(report: dict, key: str = "miou", title: str = "mIoU (%)") -> str:
    """Rows: modes; columns: ``key`` (mIoU, or pixel_accuracy) in % at each d and the mean
    over d."""
    ds = [str(d) for d in report["distances"]]
    head = f"{title:<10}" + "".join(f"{'d=' + d:>8}" for d in ds) + f"{'mean':>8}"
    lines = [head, "-" * len(head)]
    for row in report["results"]:
        values = [row[key][d] for d in ds]
        finite = [v for v in values if v is not None]
        mean = row["mean_miou"] if key == "miou" else (
            round(float(sum(finite) / len(finite)), 2) if finite else None)
        cells = values + [mean]
        lines.append(f"{row['mode']:<10}" + "".join(
            f"{'-' if v is None else f'{v:.2f}':>8}" for v in cells))
    return "\n".join(lines)


def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in modes if m not in EVAL_MODES]
    if unknown or not modes:
        raise ValueError(f"--modes must be some of {', '.join(EVAL_MODES)}; got {text!r}")
    return list(dict.fromkeys(modes))


def _run_sweep(args: argparse.Namespace) -> int:
    """``--schedule-sweep``: print the sweep's tables, write its JSON."""
    from dataclasses import replace

    from . import schedule_eval as se

    try:
        intervals = parse_distances(args.intervals, option="--intervals")
        thresholds = (se.DEFAULT_THRESHOLDS if args.thresholds is None
                      else parse_floats(args.thresholds, option="--thresholds"))
        oracle = ([] if args.oracle_thresholds is None
                  else parse_floats(args.oracle_thresholds, option="--oracle-thresholds"))
        if args.dataset == "camvid":
            raise ValueError("--schedule-sweep streams clips of the Cityscapes layout "
                             "(--dataset synthetic or cityscapes)")
        input_size = _input_size(args.input_height, args.input_width)
        checkpoint, checkpoint_name = _checkpoint(args)
        dataset = open_dataset(args.dataset, args.root, args.split)
        if len(dataset) == 0:
            raise ValueError(f"no clips in {args.root} split {args.split!r}")
        # iter_clips checks --clips and --frames at once, before any frame is read
        clips = se.iter_clips(dataset, clips=args.clips, frames=args.frames)
        segmenter = se.build_segmenter(checkpoint, input_size=input_size,
                                       key_segmenter=args.key_segmenter, device=args.device)
        base = segmenter.config.schedule
        if args.max_interval is not None:
            base = replace(base, max_interval=args.max_interval)
        if args.schedule_source is not None:
            base = replace(base, source=args.schedule_source)
        segmenter.set_schedule(base)  # validates the base schedule
        reference = None if not oracle else se.build_segmenter(
            checkpoint, mode="per_frame", input_size=input_size,
            key_segmenter=args.key_segmenter, device=args.device)
        if args.costs is not None:
            costs = [float(v) for v in str(args.costs).split(",")] \
                if _is_pair_of_numbers(args.costs) else []
            if len(costs) != 2 or min(costs) < 0:
                raise ValueError(f"--costs expects KEY,NONKEY (two numbers >= 0), got "
                                 f"{args.costs!r}")
            key_cost, nonkey_cost = costs
            units = "given"
        else:
            from davss_ros.flops import frame_cost_table

            table = frame_cost_table(segmenter.config)
            key_cost, nonkey_cost = table["key"], table["non_key"]["davss"]
            units = "GFLOPs"
    except (CheckpointError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"davss eval: error: {exc}", file=sys.stderr)
        return 2

    model = segmenter.config.model
    count = len(dataset) if args.clips is None else min(args.clips, len(dataset))
    print(f"davss eval --schedule-sweep: {args.dataset} {args.split} ({count} clips), "
          f"{checkpoint_name}, input {model.input_height}x{model.input_width}, "
          f"device {segmenter.device}")
    t0 = time.perf_counter()
    try:
        sweep = se.sweep_schedules(
            segmenter, clips, intervals=intervals, thresholds=thresholds, base=base,
            scene_cut=not args.no_scene_cut, oracle_thresholds=oracle, reference=reference,
            progress=not args.no_progress)
    except (ValueError, FileNotFoundError, IndexError) as exc:
        print(f"davss eval: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "dataset": args.dataset,
        "split": args.split,
        "reference": args.reference,
        "checkpoint": checkpoint_name,
        "root": str(args.root),
        "input_height": model.input_height,
        "input_width": model.input_width,
        "device": str(segmenter.device),
        "clips": count,
        "frames_per_clip": args.frames,
        "seconds": round(time.perf_counter() - t0, 3),
        **se.sweep_as_json(sweep, key_cost=key_cost, nonkey_cost=nonkey_cost,
                           cost_units=units),
    }
    print(se.format_sweep(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0


def _is_pair_of_numbers(text: str) -> bool:
    parts = str(text).split(",")
    try:
        [float(v) for v in parts]
    except ValueError:
        return False
    return len(parts) == 2


def parse_floats(text: str, *, option: str) -> list[float]:
    """'0.05,0.1,0.2' -> [0.05, 0.1, 0.2] (order kept, duplicates dropped)."""
    out: list[float] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{option}: cannot read {item!r} as a number") from None
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"{option}: no values in {text!r}")
    return out


def _input_size(height: int | None, width: int | None) -> tuple[int, int] | None:
    if height is None and width is None:
        return None
    if height is None or width is None:
        raise ValueError("give both --input-height and --input-width, or neither")
    return height, width


def _checkpoint(args: argparse.Namespace) -> tuple[Checkpoint, str]:
    """The weights to evaluate and how the report names them."""
    if args.untrained:
        if args.checkpoint is not None:
            raise ValueError("--untrained and --checkpoint exclude each other")
        return untrained_checkpoint(load_config(args.config or "cpu")), "untrained"
    if args.config is not None:
        raise ValueError("--config applies to --untrained only (a checkpoint carries its own "
                         "configuration; --input-height/--input-width change its input size)")
    path = args.checkpoint
    if path is None:
        from davss_ros.weights import default_checkpoint

        path = default_checkpoint()
        if path is None:
            raise ValueError("this install ships no trained checkpoint: pass --checkpoint "
                             "PATH, or --untrained to evaluate untrained weights")
    return load_checkpoint(path), str(path)
