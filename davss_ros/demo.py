"""``davss demo`` (what ``make demo`` runs): the segmenter node on a sample bag, scored.

1. Makes the sample bag (or reuses it from an earlier run): a synthetic driving clip from
   the project's own generator with ground-truth labels (nothing is downloaded), written
   as a rosbag2 with ``/camera/image_raw`` and ``/camera/labels_gt``.
2. Starts the ``davss_segmenter`` lifecycle node in this process with the model shipped
   with the package (``davss_ros/weights/davss_cpu.pt``), or ``--checkpoint``; untrained
   weights, with a warning, for ``--config`` or where no model is shipped.
3. Replays the bag closed-loop through the node over real ROS 2 topics, records the outputs
   into a bag and writes the report: mIoU overall and per propagation distance, latency,
   throughput, figures and a contact sheet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bag.io import BagError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="folder for the sample bag and the replay outputs")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7, help="synthetic scene seed")
    parser.add_argument("--mode", default="davss", choices=("per_frame", "dff", "accel", "davss"))
    parser.add_argument("--checkpoint", default=None,
                        help="default: the model shipped with the package (without one: "
                        "untrained weights of the cpu preset)")
    parser.add_argument("--config", default=None,
                        help="run UNTRAINED weights of this model preset or YAML instead "
                        "of the shipped model (plumbing and timing checks); not with "
                        "--checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--key-segmenter", default=None, metavar="FILE",
                        help="key-frame segmenter: an ONNX or TorchScript file with its "
                        "declaration (sidecar <file>.yaml or metadata); default: the "
                        "checkpoint's own")
    parser.add_argument("--rate", type=float, default=None, metavar="R",
                        help="replay in real time at R x 30 Hz instead of closed-loop")
    parser.add_argument("--record-images", action="store_true",
                        help="also record the colour labels and overlay")
    parser.add_argument("-p", "--param", dest="params", action="append", default=[],
                        metavar="NAME:=VALUE", help="a node parameter override")
    parser.add_argument("--no-progress", action="store_true")


def sample_bag_path(out: Path, frames: int, height: int, width: int, seed: int) -> Path:
    """Where the sample bag of these settings lives (reused while it exists)."""
    return out / "bags" / f"synthetic_{width}x{height}_{frames}f_seed{seed}"


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BagError as exc:
        print(f"davss demo: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from .bag.make import synthetic_frames, write_bag
    from .bag.replay import ReplayOptions, replay
    from .weights import UNTRAINED, default_checkpoint, default_checkpoint_path

    if args.frames < 1:
        raise BagError(f"--frames must be >= 1, got {args.frames}")
    if args.height < 64 or args.width < 64:
        raise BagError(f"--height and --width must be >= 64, got {args.width}x{args.height}")
    if args.checkpoint and args.config:
        raise BagError("--config applies to untrained weights only: a checkpoint carries "
                       "its own architecture")
    progress = not args.no_progress
    bag = sample_bag_path(args.out, args.frames, args.height, args.width, args.seed)
    if bag.exists():
        print(f"sample bag: {bag} (reused)")
    else:
        print(f"sample bag: rendering {args.frames} synthetic frames "
              f"{args.width}x{args.height} (seed {args.seed}) into {bag}")
        write_bag(bag, synthetic_frames(args.frames, args.height, args.width, args.seed),
                  rate=30.0, start_ns=1_700_000_000 * 1_000_000_000, total=args.frames,
                  progress=progress)

    checkpoint = args.checkpoint or (None if args.config else default_checkpoint())
    if checkpoint is None:
        why = (f"--config {args.config} without --checkpoint" if args.config else
               f"no trained model is shipped yet ({default_checkpoint_path()} is missing)")
        print(f"WARNING: {why}: the node runs UNTRAINED random weights, so its labels (and "
              "the mIoU below) are meaningless. The ROS pipeline, timings and outputs are "
              "real. Pass --checkpoint to use a trained model.", file=sys.stderr)
    else:
        print(f"model: {checkpoint}")
    params = [f"model.device:={args.device}"]
    if args.config and checkpoint is None:
        params.append(f"model.config:={args.config}")
    # The network at the frame size when it suits it (multiples of 64), else the model's.
    if args.height % 64 == 0 and args.width % 64 == 0:
        params += [f"input.height:={args.height}", f"input.width:={args.width}"]
    if args.key_segmenter:
        params.append(f"model.key_segmenter:={args.key_segmenter}")
    params += list(args.params)
    opts = ReplayOptions(
        bag=bag, out=args.out / "replay", rate=args.rate, record_images=args.record_images,
        checkpoint=str(checkpoint) if checkpoint else UNTRAINED, mode=args.mode, params=params,
        overwrite=True, progress=progress)
    report = replay(opts)

    print()
    print(report["table"])
    for w in report.get("warnings", []):
        print(f"  warning: {w}")
    if checkpoint is None:
        print("  (untrained weights: the mIoU is that of random labels)")
    print()
    print(f"{'input bag:':<15}{bag}")
    print(f"{'output bag:':<15}{report['output_bag']}  "
          f"({', '.join(f'{Path(t).name} {n}' for t, n in report['output_counts'].items())})")
    print(f"{'report:':<15}{report['report']}")
    names = {"miou_plot": "mIoU plot", "latency_plot": "latency plot",
             "contact_sheet": "contact sheet"}
    for key, path in report["files"].items():
        print(f"{names.get(key, key) + ':':<15}{path}")
    return 0
