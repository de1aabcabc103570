"""The ``davss`` command: one entry point, a subcommand per job.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so
``davss bench`` never imports rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("davss_ros.demo", "segment the embedded sample and write outputs (make demo)"),
    "bench": ("davss_ros.bench", "latency of key / non-key frames and mean per frame, per mode"),
    "flops": ("davss_ros.flops", "FLOPs per module and per frame type (the paper's Table II)"),
    "train": ("davss_ros.train.cli", "train the DAVSS networks stage by stage"),
    "adapt": ("davss_ros.train.adapt", "learn the non-key networks on your own unlabelled "
              "video, with the key segmenter as teacher"),
    "eval": ("davss_ros.evaluate.cli", "PDA evaluation (mIoU per propagation distance)"),
    "make-data": ("davss_ros.data.cli", "render synthetic labelled driving clips"),
    "node": ("davss_ros.ros.node", "run the davss_segmenter lifecycle node"),
    "make-bag": ("davss_ros.bag.make", "write a rosbag2 of camera images (and labels)"),
    "replay": ("davss_ros.bag.replay", "replay a bag through the node and score it"),
    "report": ("davss_ros.report", "evaluate, benchmark and write docs/RESULTS.md (PDA, "
               "CCA, ablations, scheduling, upper bound)"),
    "export": ("davss_ros.export", "write a deployable (float16) copy of a checkpoint, or "
               "its segmenter as ONNX / TorchScript, checked against the source"),
    "soak": ("davss_ros.tools.soak", "run the node for minutes under a camera stream: memory, "
             "latency drift, frame accounting"),
    "shm": ("davss_ros.ros.shm", "FastDDS's shared memory in /dev/shm: room left; --clean "
            "removes what dead processes left"),
    "import-authors": ("davss_ros.importers.authors", "the DAVSS authors' model as a checkpoint"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="davss", description="Fast video semantic segmentation (DAVSS) for ROS 2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
