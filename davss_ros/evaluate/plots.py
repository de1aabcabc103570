"""Figures of the evaluation: the PDA curve (Fig. 10 style) and the CCA curve (Fig. 11 style).

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so they
work headless and inside other programs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# One look per mode across both figures.
STYLES = {
    "per_frame": {"color": "0.3", "linestyle": "--", "marker": "s"},
    "dff": {"color": "tab:blue", "linestyle": "-", "marker": "o"},
    "accel": {"color": "tab:green", "linestyle": "-", "marker": "^"},
    "davss": {"color": "tab:red", "linestyle": "-", "marker": "D"},
    # davss report's extra rows: ablations dashed, ground-truth upper bounds dotted
    "davss, without DDS": {"color": "tab:purple", "linestyle": "--", "marker": "v"},
    "davss, without DGFL": {"color": "tab:orange", "linestyle": "--", "marker": "<"},
    "davss, without DGFC": {"color": "tab:brown", "linestyle": "--", "marker": ">"},
    "davss*": {"color": "tab:red", "linestyle": ":", "marker": None},
    "accel*": {"color": "tab:green", "linestyle": ":", "marker": None},
    # scheduling comparison
    "fixed": {"color": "0.3", "linestyle": "-", "marker": "s"},
    "adaptive": {"color": "tab:red", "linestyle": "-", "marker": "D"},
}
LABELS = {"per_frame": "Per-frame", "dff": "DFF", "accel": "Accel", "davss": "DAVSS",
          "davss*": "DAVSS* (ground-truth distortion)",
          "accel*": "Accel* (ground-truth distortion)"}


def plot_pda(result: dict, path: str | Path, *, title: str | None = None) -> Path:
    """mIoU against propagation distance, one line per mode, from ``davss eval``'s JSON.

    Args:
        result: the JSON object written by ``davss eval`` (``results[*].miou`` maps "d" to
            mIoU in percent; None for no value).
        path: PNG to write (parent folders are made).
    """
    rows = result.get("results")
    if not rows:
        raise ValueError("plot_pda expects an evaluation result with a non-empty 'results'")
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    all_d: set[int] = set()
    for row in rows:
        points = sorted((int(d), v) for d, v in row["miou"].items() if v is not None)
        if not points:
            continue
        ds = [d for d, _ in points]
        values = [v for _, v in points]
        all_d.update(ds)
        mode = row["mode"]
        ax.plot(ds, values, label=LABELS.get(mode, mode), **STYLES.get(mode, {}))
    ax.set_xlabel("propagation distance d (frames)")
    ax.set_ylabel("mIoU (%)")
    if all_d:
        ax.set_xticks(sorted(all_d))
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or _default_title(result))
    return _save(fig, path)


def plot_cca(points: Iterable[tuple[str, float, float]], path: str | Path, *,
             cost_label: str = "mean cost per frame (GFLOPs)", title: str | None = None) -> Path:
    """mIoU against mean cost per frame: the paper's CCA curve.

    Args:
        points: (mode, cost, miou) triples; the points of one mode are joined in order of
            cost (e.g. one point per propagation distance, C_mean from Eq. 8).
        path: PNG to write.
    """
    by_mode: dict[str, list[tuple[float, float]]] = {}
    for mode, cost, miou in points:
        by_mode.setdefault(str(mode), []).append((float(cost), float(miou)))
    if not by_mode:
        raise ValueError("plot_cca expects at least one (mode, cost, miou) point")
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for mode, pts in by_mode.items():
        pts.sort()
        ax.plot([c for c, _ in pts], [m for _, m in pts], label=LABELS.get(mode, mode),
                **STYLES.get(mode, {}))
    ax.set_xlabel(cost_label)
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "Accuracy against cost")
    return _save(fig, path)


def _default_title(result: dict) -> str:
    parts = [str(result[k]) for k in ("dataset", "split") if result.get(k)]
    return "PDA: " + " ".join(parts) if parts else "PDA"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return path
