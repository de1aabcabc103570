"""``davss train``: train the DAVSS networks stage by stage from a YAML configuration.

    davss train --config config/train/synthetic_quick.yaml --out out/train/quick
    torchrun --nproc_per_node 2 -m davss_ros.train --config ... --out ...

Re-running the same command skips finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import load_train_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="training YAML (e.g. config/train/synthetic_quick.yaml)")
    parser.add_argument("--out", required=True, help="output folder (stages, logs, final.pt)")
    parser.add_argument("--force", action="store_true",
                        help="retrain every stage, even those finished in --out")
    parser.add_argument("--from-stage", type=int, choices=range(5), default=None,
                        metavar="N", help="retrain stage N and the stages after it")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop (resumably) after this many optimiser steps in this run")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="start from these weights (same architecture), e.g. a "
                             "pretrained segmenter with stages.0.enabled: false")
    parser.add_argument("--reuse", default=None, metavar="DIR",
                        help="take finished stages from another run's folder where their "
                             "settings match (e.g. ablations that change stage 3 only)")
    parser.add_argument("--device", default=None,
                        help="auto, cpu or cuda (overrides the config's device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .engine import setup_context, teardown_context
    from .runner import Trainer

    try:
        cfg = load_train_config(args.config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"davss train: {exc}", file=sys.stderr)
        return 2
    if args.device is not None:
        cfg.device = args.device
    if args.stop_after is not None and args.stop_after < 0:
        print("davss train: --stop-after must be >= 0", file=sys.stderr)
        return 2
    ctx = setup_context(cfg.device, cfg.threads, progress=not args.no_progress)
    t0 = time.perf_counter()
    try:
        trainer = Trainer(cfg, Path(args.out), ctx, force=args.force,
                          from_stage=args.from_stage, stop_after=args.stop_after,
                          init=args.init, reuse=args.reuse)
        final = trainer.run()
    except (FileNotFoundError, ValueError) as exc:
        print(f"davss train: {exc}", file=sys.stderr)
        return 1
    finally:
        teardown_context(ctx)
    if ctx.is_main:
        took = time.perf_counter() - t0
        if final is None:
            print(f"davss train: stopped after the requested steps ({took:.0f} s); "
                  f"run again to continue")
        else:
            print(f"davss train: {final} ({took:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="davss train", description="Train the DAVSS networks stage by stage.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
