"""``davss make-data``: render synthetic labelled driving clips in the Cityscapes layout."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="root folder to write into")
    parser.add_argument("--train", type=int, default=100, help="training clips (default 100)")
    parser.add_argument("--val", type=int, default=20, help="validation clips (default 20)")
    parser.add_argument("--test", type=int, default=0, help="test clips (default 0)")
    parser.add_argument("--look", default="day", choices=("day", "dusk"),
                        help="day (the training look) or dusk (dim, warm, hazy, noisier: a "
                             "domain shift; labels and motion are the same as day's)")
    parser.add_argument("--pan", type=float, default=0.0, metavar="DEG",
                        help="a sudden pan in every clip: the view turns by DEG degrees "
                             "(direction drawn) from a frame in the clip's middle third and "
                             "stays turned; motion that changes within a clip (default 0: "
                             "none, the clips are those rendered without the option)")
    parser.add_argument("--pan-frames", type=int, default=3, metavar="N",
                        help="frames the pan takes (default 3)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--frames", type=int, default=30,
                        help="frames per clip, > 19 (frame 19 is the annotated one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                        help="processes (default: all cores)")
    parser.add_argument("--city", default="synth", help="city name in the file names")
    parser.add_argument("--no-dense-labels", action="store_true",
                        help="skip gtFine_sequence/ (every frame's label)")
    parser.add_argument("--flows", action="store_true",
                        help="also write the true backward flow per frame (flow_sequence/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from davss_ros.data.synthetic import SceneConfig, write_cityscapes_layout

    if args.train < 0 or args.val < 0 or args.test < 0:
        raise SystemExit("--train, --val and --test must be >= 0")
    try:  # the scene options, checked before anything is written
        SceneConfig(height=args.height, width=args.width, frames=args.frames,
                    pan_deg=args.pan, pan_frames=args.pan_frames)
    except ValueError as exc:
        print(f"davss make-data: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    for split, n in (("train", args.train), ("val", args.val), ("test", args.test)):
        if n == 0:
            continue
        write_cityscapes_layout(
            args.out, split, n, args.height, args.width, args.seed, frames=args.frames,
            city=args.city, all_labels=not args.no_dense_labels, workers=args.workers,
            progress=not args.quiet, flows=args.flows, look=args.look,
            **({"pan_deg": args.pan, "pan_frames": args.pan_frames} if args.pan else {}))
    n_frames = (args.train + args.val + args.test) * args.frames
    dt = time.perf_counter() - t0
    print(f"wrote {args.train} train + {args.val} val + {args.test} test clips, {args.look} "
          f"look{f', a {args.pan:g} degree pan in each' if args.pan else ''} ({n_frames} "
          f"frames, {args.height}x{args.width}) to {args.out} in {dt:.1f} s")
    return 0
