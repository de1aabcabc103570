"""``davss bench``: per-frame latency of each mode, measured in one run on the same frames.

For every input size and mode, a VideoSegmenter (untrained weights unless --checkpoint)
segments the same rendered driving clip with a fixed key interval; the medians of the
key-frame and non-key-frame latencies give the mean cost per frame at propagation
distance D as (key + D * nonkey) / (D + 1), the paper's Eq. 8 with measured times.
Speed claims are these ratios, taken in one run, not absolute numbers.

``--key-segmenter FILE`` (ONNX or TorchScript, repeatable) times each mode once more with
that file segmenting the key frames, in the same run on the same frames, so onnxruntime
and torch eager compare directly (the ``key`` column says which ran).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .config import MODES, ScheduleConfig, load_config
from .pipeline import VideoSegmenter
from .threads import available_cores, set_threads

DISTANCES = tuple(range(1, 10))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="cpu", help="preset name or YAML (default: cpu)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to time (default: "
                        "untrained weights of --config; latency does not depend on weights)")
    parser.add_argument("--sizes", default="256x512,512x1024",
                        help="comma-separated HxW network input sizes (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    parser.add_argument("--key-segmenter", action="append", default=[], type=Path,
                        metavar="FILE", help="also time with this ONNX / TorchScript key "
                        "segmenter (repeatable; its declared input size must be each --sizes)")
    parser.add_argument("--flow", default=None, choices=("dis", "learned"),
                        help="flow provider (default: the config's)")
    parser.add_argument("--frames", type=int, default=30, help="frames timed per mode and size")
    parser.add_argument("--key-interval", type=int, default=5,
                        help="fixed key interval while timing (default: %(default)s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of torch, OpenCV and onnxruntime (0 = half the "
                        "cores, at most 4: davss_ros.threads)")
    parser.add_argument("--hog", type=int, default=0, metavar="N",
                        help="also time every native-key mode with N busy processes beside "
                        "the benchmark, and print the slowdown against quiet (same frames, "
                        "same run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--peak", action="store_true",
                        help="with --node: the highest camera rate the node holds with under "
                        "5%% of frames dropped (open-loop, rising rates)")
    parser.add_argument("--camera", default="640x480", metavar="WxH",
                        help="with --node: the camera's frame size (default: %(default)s)")
    parser.add_argument("--node", action="store_true",
                        help="instead: node overhead (end-to-end minus pipeline latency) at "
                             "640x480 through real rclpy/FastDDS")


def bench_frames(height: int, width: int, count: int, seed: int = 0) -> np.ndarray:
    """A rendered driving clip (T x H x W x 3 uint8) for timing."""
    from .data.synthetic import SceneConfig, render_clip

    clip = render_clip(SceneConfig(height=height, width=width, frames=count, seed=seed))
    return clip.images


def time_mode(frames: np.ndarray, *, config, mode: str, checkpoint=None, device="auto",
              key_interval: int = 5, flow: str | None = None, key_segmenter=None,
              reference: list[np.ndarray] | None = None, keep_labels: bool = False) -> dict:
    """Median key / non-key latency of ``mode`` on ``frames``; with ``reference`` labels
    (another run over the same frames) also the share of equal labels (``agreement``, %).
    ``keep_labels``: this run's labels in ``result['labels']`` (not JSON)."""
    seg = VideoSegmenter.from_checkpoint(
        checkpoint, preset=config, mode=mode, input_size=frames.shape[1:3], flow=flow,
        schedule=ScheduleConfig(policy="fixed", key_interval=key_interval),
        key_segmenter=key_segmenter, device=device)
    seg.warmup()
    key, nonkey, stages, labels = [], [], {}, []
    for rgb in frames:
        r = seg.step(rgb)
        labels.append(r.labels)
        (key if r.is_key else nonkey).append(r.timings_ms["total"])
        kind = "key" if r.is_key else "nonkey"
        for name, ms in r.timings_ms.items():
            stages.setdefault(kind, {}).setdefault(name, []).append(ms)
    key_ms = statistics.median(key)
    nonkey_ms = statistics.median(nonkey) if nonkey else key_ms
    seg_kind = seg.key_segmenter.kind
    seg.close()
    agreement = None if reference is None else round(100.0 * float(np.mean(
        [np.mean(a == b) for a, b in zip(labels, reference, strict=True)])), 3)
    out = {
        "agreement": agreement,
        "height": int(frames.shape[1]), "width": int(frames.shape[2]), "mode": mode,
        "key": seg_kind,
        "flow": "-" if mode == "per_frame" else seg.config.model.flow.provider,
        "key_ms": round(key_ms, 3), "nonkey_ms": round(nonkey_ms, 3),
        "nonkey_over_key": round(nonkey_ms / key_ms, 4),
        "mean_ms": {str(d): round((key_ms + d * nonkey_ms) / (d + 1), 3) for d in DISTANCES},
        "key_frames": len(key), "nonkey_frames": len(nonkey),
        "stages_median_ms": {kind: {k: round(statistics.median(v), 3) for k, v in st.items()}
                             for kind, st in stages.items()},
    }
    if keep_labels:
        out["labels"] = labels
    return out


class Hogs:
    """N busy-looping processes (a neighbour that takes CPU), started and stopped here."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Hogs:
        for _ in range(self.count):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # let them reach their loop
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def _hog_pass(args: argparse.Namespace, config, modes: list[str],
              sizes: list[tuple[int, int]], quiet: list[dict]) -> list[dict]:
    """Every native-key mode again with ``args.hog`` busy processes; slowdowns printed."""
    out = []
    print(f"\nwith {args.hog} busy processes beside it (same frames; slowdown = hogged / "
          f"quiet):")
    print(f"{'size':>9} {'mode':>9} {'key_ms':>8} {'nonkey':>8} {'D=5':>7} {'slowdown':>9}")
    for h, w in sizes:
        frames = bench_frames(h, w, args.frames, args.seed)
        for mode in modes:
            ref = next(r for r in quiet if r["key"] == "native" and r["mode"] == mode
                       and (r["height"], r["width"]) == (h, w))
            with Hogs(args.hog):
                r = time_mode(frames, config=config, mode=mode, checkpoint=args.checkpoint,
                              device=args.device, key_interval=args.key_interval,
                              flow=args.flow)
            r["slowdown_d5"] = round(r["mean_ms"]["5"] / ref["mean_ms"]["5"], 3)
            out.append(r)
            print(f"{h:>4}x{w:<4} {mode:>9} {r['key_ms']:8.1f} {r['nonkey_ms']:8.1f} "
                  f"{r['mean_ms']['5']:7.1f} {r['slowdown_d5']:8.2f}x")
    return out


def run(args: argparse.Namespace) -> int:
    if args.node:
        from .tools.node_bench import main_from_args

        return main_from_args(args)
    threads = set_threads(args.threads)
    config = load_config(args.config)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; expected some of {', '.join(MODES)}")
    sizes = []
    for item in args.sizes.split(","):
        h, w = (int(v) for v in item.lower().split("x"))
        sizes.append((h, w))
    results = []
    print(f"davss bench: {threads} threads ({available_cores()} cores), device {args.device}, "
          f"{args.frames} frames per mode, key interval {args.key_interval}, "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'untrained weights'}")
    header = (f"{'size':>9} {'mode':>9} {'key':>11} {'flow':>7} {'key_ms':>8} {'nonkey':>8} "
              f"{'ratio':>6} "
              + " ".join(f"{'D=' + str(d):>6}" for d in DISTANCES))
    print(header)
    for h, w in sizes:
        frames = bench_frames(h, w, args.frames, args.seed)
        per_frame_ms = None
        native_labels: dict[str, list[np.ndarray]] = {}
        for key_file in [None, *args.key_segmenter]:
            for mode in modes:
                r = time_mode(frames, config=config, mode=mode, checkpoint=args.checkpoint,
                              device=args.device, key_interval=args.key_interval,
                              flow=args.flow, key_segmenter=key_file,
                              reference=native_labels.get(mode),
                              keep_labels=key_file is None and bool(args.key_segmenter))
                if "labels" in r:
                    native_labels[mode] = r.pop("labels")
                if mode == "per_frame" and key_file is None:
                    per_frame_ms = r["key_ms"]  # the reference: torch eager, every frame
                if per_frame_ms:
                    r["mean_over_per_frame"] = {d: round(v / per_frame_ms, 4)
                                                for d, v in r["mean_ms"].items()}
                results.append(r)
                print(f"{h:>4}x{w:<4} {mode:>9} {r['key']:>11} {r['flow']:>7} "
                      f"{r['key_ms']:8.1f} {r['nonkey_ms']:8.1f} {r['nonkey_over_key']:6.2f} "
                      + " ".join(f"{r['mean_ms'][str(d)]:6.1f}" for d in DISTANCES)
                      + (f"  labels = native: {r['agreement']:.2f}%"
                         if r["agreement"] is not None else ""))
        eager = {r["mode"]: r["key_ms"] for r in results
                 if r["key"] == "native" and (r["height"], r["width"]) == (h, w)}
        for r in results:
            if (r["height"], r["width"]) == (h, w) and r["key"] != "native" \
                    and r["mode"] in eager:
                r["key_over_native"] = round(r["key_ms"] / eager[r["mode"]], 4)
    for r in results:
        if r["mode"] != "per_frame" and "mean_over_per_frame" in r:
            print(f"{r['height']}x{r['width']} {r['mode']} ({r['key']} key): non-key/key "
                  f"{r['nonkey_over_key']:.2f}, mean at D=5 / per_frame (native) "
                  f"{r['mean_over_per_frame']['5']:.2f}")
        if "key_over_native" in r:
            print(f"{r['height']}x{r['width']} {r['mode']}: {r['key']} key frame / native "
                  f"(torch eager) {r['key_over_native']:.2f}")
    hogged = []
    if args.hog:
        hogged = _hog_pass(args, config, modes, sizes, results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": {"cpu": platform.processor() or platform.machine(),
                               "torch_threads": torch.get_num_threads(),
                               "torch": torch.__version__, "device": args.device},
                   "config": args.config, "frames": args.frames,
                   "key_interval": args.key_interval, "results": results,
                   "hog": {"processes": args.hog, "results": hogged} if args.hog else None}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0
