"""The paper's result figures from results.csv rows (matplotlib's Agg canvas, no display).

* Fig. 3 ``fig3_ap_vs_iterations.png``: validation AP against fine-tuning iterations, one
  column per label fraction, one line per method (mean over seeds, ± std band);
* Fig. 4 ``fig4_ap_vs_fraction.png``: AP at each seed's validation-chosen iteration
  against the label fraction (mean ± std error bars);
* Fig. 6 ``fig6_ablations.png``: the ablations (:data:`cupre.methods.ABLATIONS`) as bars
  next to the first of them, coco, for each fraction, the difference to coco written above
  each bar (needs coco and at least one of the others).

With several datasets each file name gets a ``_<dataset>`` suffix. Figures are AP x100.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cupre.experiments.table import mean_std, ordered, summarize
from cupre.fileio import atomic_path
from cupre.methods import ABLATIONS, METHOD_NAMES, method_label

IOU_TYPES = (("bbox", "AP$_{bbox}$"), ("segm", "AP$_{segm}$"))


def method_colors(methods: list[str]) -> dict[str, Any]:
    """One fixed colour per initialisation, the same in every figure."""
    palette = [f"C{i}" for i in range(10)]
    names = list(METHOD_NAMES) + [m for m in methods if m not in METHOD_NAMES]
    return {m: palette[i % len(palette)] for i, m in enumerate(names)}


def make_figures(rows: list[dict[str, Any]], out_dir: Path, *, methods: list[str],
                 select_by: str = "segm_AP") -> list[Path]:
    """Write Fig. 3, 4 and 6 for every dataset in ``rows``, each only where it has
    something to show: a curve needs two points, error bars two seeds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = sorted({r["dataset"] for r in rows})
    summary = summarize(rows, select_by)
    written = []
    for dataset in datasets:
        suffix = "" if len(datasets) == 1 else f"_{dataset}"
        mine = [r for r in rows if r["dataset"] == dataset]
        cells = {(m, f): s for (d, m, f), s in summary.items() if d == dataset}
        ms = ordered((r["method"] for r in mine), methods)
        written.append(plot_ap_vs_iterations(mine, out_dir / f"fig3_ap_vs_iterations{suffix}.png", methods=ms))
        written.append(plot_ap_vs_fraction(cells, out_dir / f"fig4_ap_vs_fraction{suffix}.png", methods=ms))
        written.append(plot_ablations(cells, out_dir / f"fig6_ablations{suffix}.png", methods=ms))
    return [p for p in written if p is not None]


def plot_ap_vs_iterations(rows: list[dict[str, Any]], path: Path, *, methods: list[str]) -> Path | None:
    """Fig. 3: validation AP vs iteration; rows bbox/segm, columns fractions (None, nothing
    written, when no curve has two points)."""
    curves: dict[tuple[str, float, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["split"] != "val":
            continue
        for t, _ in IOU_TYPES:
            v = r.get(f"{t}_AP")
            if v is not None and v >= 0:
                curves[r["method"], r["fraction"], t][r["iteration"]].append(100.0 * v)
    if not any(len(points) >= 2 for points in curves.values()):
        return None
    fractions = sorted({r["fraction"] for r in rows})
    colors = method_colors(methods)
    fig = Figure(figsize=(4.0 * max(1, len(fractions)), 6.0), layout="constrained")
    axes = fig.subplots(2, max(1, len(fractions)), squeeze=False)
    for j, fraction in enumerate(fractions):
        for i, (t, label) in enumerate(IOU_TYPES):
            ax = axes[i][j]
            for m in methods:
                points = curves.get((m, fraction, t))
                if not points:
                    continue
                its = sorted(points)
                stats = [mean_std(points[k]) for k in its]
                mean = np.array([s[0] for s in stats])
                std = np.array([s[1] for s in stats])
                ax.plot(its, mean, marker="o", markersize=3, color=colors[m], label=method_label(m))
                ax.fill_between(its, mean - std, mean + std, color=colors[m], alpha=0.15, linewidth=0)
            ax.set_title(f"{100 * fraction:g}% labels")
            ax.set_xlabel("fine-tuning iteration")
            ax.set_ylabel(f"validation {label}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def plot_ap_vs_fraction(cells: dict[tuple[str, float], dict], path: Path, *, methods: list[str]) -> Path | None:
    """Fig. 4: AP at the validation-chosen iteration vs label fraction (mean ± std); None
    (nothing written) with fewer than two fractions."""
    if len({f for _, f in cells}) < 2:
        return None
    colors = method_colors(methods)
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, (t, label) in zip(axes, IOU_TYPES):
        for m in methods:
            fs = sorted(f for mm, f in cells if mm == m)
            stats = [(f, mean_std(cells[m, f][f"val_{t}_AP"])) for f in fs]
            stats = [(f, s) for f, s in stats if s is not None]
            if not stats:
                continue
            x = [100 * f for f, _ in stats]
            ax.errorbar(x, [s[0] for _, s in stats], yerr=[s[1] for _, s in stats], marker="o", capsize=3,
                        color=colors[m], label=method_label(m))
        ax.set_xlabel("labeled training images (%)")
        ax.set_ylabel(f"validation {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def plot_ablations(cells: dict[tuple[str, float], dict], path: Path, *, methods: list[str]) -> Path | None:
    """Fig. 6: the ablations as bars next to coco, with their spread over seeds; None
    (nothing written) without them or with one seed (no spread to draw)."""
    base = ABLATIONS[0]
    present = [m for m in ABLATIONS if m in methods and any(mm == m for mm, _ in cells)]
    if base not in present or len(present) < 2:
        return None
    seeds = [s[2] for (m, _), c in cells.items() if m in present for s in [mean_std(c["val_segm_AP"])] if s]
    if not seeds or max(seeds) < 2:
        return None
    colors = method_colors(methods)
    fractions = sorted({f for _, f in cells})
    width = 0.8 / len(present)
    fig = Figure(figsize=(max(6.0, 2.5 * len(fractions)), 7.0), layout="constrained")
    axes = fig.subplots(2, 1, squeeze=False)[:, 0]
    for ax, (t, label) in zip(axes, IOU_TYPES):
        for k, m in enumerate(present):
            for j, f in enumerate(fractions):
                stats = mean_std(cells[m, f][f"val_{t}_AP"]) if (m, f) in cells else None
                if stats is None:
                    continue
                x = j - 0.4 + width * (k + 0.5)
                ax.bar(x, stats[0], width, yerr=stats[1], capsize=2, color=colors[m],
                       label=method_label(m) if j == 0 else None)
                ref = mean_std(cells[base, f][f"val_{t}_AP"]) if (base, f) in cells else None
                if m != base and ref is not None:
                    ax.annotate(f"{stats[0] - ref[0]:+.1f}", (x, stats[0] + stats[1]), ha="center",
                                va="bottom", fontsize="x-small")
        ax.set_xticks(range(len(fractions)), [f"{100 * f:g}%" for f in fractions])
        ax.set_ylabel(f"validation {label}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", ncols=len(present))
    axes[0].set_title(f"ablations vs {method_label(base)} (difference to {method_label(base)} above each bar)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
