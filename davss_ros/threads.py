"""How many CPU threads the networks use, and the default that behaves on a shared machine.

A robot's computer runs other nodes beside the segmenter. torch's default (one thread per
core) makes each operation wait for its slowest thread: with every core shared, a
per-frame latency of 80 ms was measured at about 1000 ms, and a 7 ms DMNet at 440 ms
(``davss bench --hog``). Fewer threads than cores leave room for the neighbours and lose
little on a quiet machine, because most of a frame's work is small operations that do not
parallelise well. ``default_threads`` is half the cores, at most 4; ``threads`` in the
node (``model.threads``), the API and the CLIs overrides it (0 = this default).
"""

from __future__ import annotations

import os

MAX_DEFAULT_THREADS = 4


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Half the available cores, at least 1 and at most MAX_DEFAULT_THREADS."""
    return max(1, min(MAX_DEFAULT_THREADS, available_cores() // 2))


def set_threads(threads: int = 0) -> int:
    """Use ``threads`` (0 = :func:`default_threads`) in torch and OpenCV (DIS flow, resizes)
    for this process; returns the number set. onnxruntime sessions made afterwards take the
    same number (``davss_ros.segmenters.onnx``)."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = default), got {threads}")
    import cv2
    import torch

    n = threads or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    cv2.setNumThreads(n)
    return n
