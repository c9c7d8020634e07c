"""results.csv and Table II: one row per evaluation, then mean ± std over seeds.

Every seed of a (method, fraction) cell contributes the evaluation at its best
**validation** iteration (by ``select_by``, earliest on ties); the test figure is the one
at that same iteration (fine-tuning scores the test set once, with the chosen model).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cupre.fileio import write_text_atomic
from cupre.methods import REFERENCES, SELF_TRAIN, base_method, method_label
from cupre.modelfile import MODEL_FILE

FIGURES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
OBJECT_FIGURES = ("AP50", "DSB", "F1")  # at the validated score threshold (cupre.evaluation.matching)
METRICS = tuple(f"{t}_{k}" for t in ("bbox", "segm") for k in FIGURES) + tuple(f"objects_{k}" for k in OBJECT_FIGURES)
KEYS = ("dataset", "method", "fraction", "seed")
COLUMNS = (*KEYS, "iteration", "split", *METRICS)
Key = tuple[str, str, float, int]


def final_metrics(folder: Path) -> dict[str, Any] | None:
    """A finished cell's ``val_metrics.json`` (a cell is finished once it holds it and its
    model file), or a shipped model's scores (:mod:`cupre.experiments.shipped_rows`: no
    model file of its own, ``"shipped"`` names it); None for anything else."""
    path = Path(folder) / "val_metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if (Path(folder) / MODEL_FILE).is_file() or metrics.get("shipped") else None


def collect_results(cells: Iterable[tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    """Rows from finished cells: every history entry of ``val_metrics.json`` (split
    ``val``, and split ``test`` where the entry holds a test score).

    Args:
        cells: ``(key, folder)`` pairs; ``key`` holds dataset, method, fraction, seed.
    """
    rows = []
    for key, folder in cells:
        metrics = final_metrics(folder)
        if metrics is None:
            continue
        for entry in metrics["history"]:
            for split, scores in (("val", entry), ("test", entry.get("test"))):
                if scores is None:
                    continue
                row = {**key, "iteration": entry["iteration"], "split": split}
                for t in ("bbox", "segm"):
                    for k in FIGURES:
                        row[f"{t}_{k}"] = scores.get(t, {}).get(k)
                for k in OBJECT_FIGURES:
                    row[f"objects_{k}"] = scores.get("matching", {}).get(k)
                rows.append(row)
    return rows


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows (metrics as fractions in [0, 1], -1 where undefined) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v)
                         for k, v in row.items() if k in COLUMNS})
    write_text_atomic(path, buf.getvalue())


def _value(row: dict[str, Any] | None, metric: str) -> float | None:
    """A figure x100, or None where missing or undefined (-1)."""
    v = None if row is None else row.get(metric)
    return None if v is None or v < 0 else 100.0 * v


def _score(row: dict[str, Any], metric: str) -> float:
    v = _value(row, metric)
    return -math.inf if v is None else v


def select_best(rows: list[dict[str, Any]], select_by: str = "segm_AP") -> dict[Key, dict[str, Any]]:
    """Per (dataset, method, fraction, seed): the best validation row, and the test row
    at that iteration (None without a test set)."""
    val, test = defaultdict(list), defaultdict(dict)
    for r in rows:
        key = tuple(r[k] for k in KEYS)
        if r["split"] == "val":
            val[key].append(r)
        elif r["split"] == "test":
            test[key][r["iteration"]] = r
    chosen = {}
    for key, rs in val.items():
        best = max(rs, key=lambda r: (_score(r, select_by), -(r["iteration"] or 0)))
        chosen[key] = {"iteration": best["iteration"], "val": best, "test": test[key].get(best["iteration"])}
    return chosen


def summarize(rows: list[dict[str, Any]], select_by: str = "segm_AP") -> dict[tuple[str, str, float], dict]:
    """Per (dataset, method, fraction): per-seed chosen figures (x100) and iterations."""
    out: dict[tuple[str, str, float], dict] = {}
    for (dataset, method, fraction, seed), c in sorted(select_best(rows, select_by).items()):
        s = out.setdefault((dataset, method, fraction), {"seeds": [], "iterations": [],
                                                         **{f"{sp}_{m}": [] for sp in ("val", "test")
                                                            for m in METRICS}})
        s["seeds"].append(seed)
        s["iterations"].append(c["iteration"])
        for m in METRICS:
            s[f"val_{m}"].append(_value(c["val"], m))
            s[f"test_{m}"].append(_value(c["test"], m))
    return out


def mean_std(values: list[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (n-1) and count of the defined values."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def format_mean_std(values: list[float | None]) -> str:
    ms = mean_std(values)
    if ms is None:
        return "n/a"
    mean, std, n = ms
    return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f} (1 seed)"


def ordered(values: Iterable, first: list) -> list:
    """``first`` (those present) in its order, then the rest sorted."""
    present = set(values)
    return [v for v in first if v in present] + sorted(present - set(first))


def format_table2(rows: list[dict[str, Any]], *, methods: list[str], select_by: str = "segm_AP") -> str:
    """Table II in markdown: rows = methods, columns = fractions x (AP_bbox, AP_segm)."""
    summary = summarize(rows, select_by)
    if not summary:
        return "### Table II\n\nno finished cells yet"
    parts = []
    for dataset in ordered((k[0] for k in summary), []):
        cells = {(m, f): s for (d, m, f), s in summary.items() if d == dataset}
        ms = ordered((m for m, _ in cells), methods)
        fs = sorted({f for _, f in cells})
        head = "| method | " + " | ".join(f"{100 * f:g}% AP_bbox | {100 * f:g}% AP_segm" for f in fs) + " |"
        rule = "|---" * (1 + 2 * len(fs)) + "|"
        parts.append(f"### Table II: {dataset}, AP (x100, LIVECell protocol), mean ± std over seeds\n")
        parts.append(f"Validation; each seed at its best validation {select_by.replace('_', ' ')} iteration.\n")
        parts += [head, rule] + [_row(m, fs, cells, "val") for m in ms]
        split = "val"
        if any(x is not None for s in cells.values() for x in s["test_bbox_AP"] + s["test_segm_AP"]):
            split = "test"
            parts += ["", "Test, at the iteration chosen on validation.\n", head, rule]
            parts += [_row(m, fs, cells, "test") for m in ms]
        for ref in [r for r in REFERENCES if r in ms]:
            others = [m for m in ms if m != ref]
            if others:
                name = method_label(ref)
                parts += ["", f"Paired difference against {name} ({split}): per seed, the method's figure minus "
                          f"{name}'s of the same seed, mean ± std over seeds.\n", head, rule]
                parts += [_paired_row(m, ref, fs, cells, split) for m in others]
        learners = [m for m in ms if m.endswith(SELF_TRAIN) and base_method(m) in ms]
        if learners:
            parts += ["", f"Paired difference against the model each self-training started from ({split}).\n",
                      head, rule]
            parts += [_paired_row(m, base_method(m), fs, cells, split) for m in learners]
        parts += ["", "Chosen iteration per seed.\n", "| method | " + " | ".join(f"{100 * f:g}%" for f in fs) + " |",
                  "|---" * (1 + len(fs)) + "|"]
        for m in ms:
            its = [" / ".join(str(i) for i in cells[m, f]["iterations"]) if (m, f) in cells else "–" for f in fs]
            parts.append(f"| {method_label(m)} | " + " | ".join(its) + " |")
        parts.append("")
    parts.append("std: sample standard deviation over seeds (n-1); n/a: no defined figure.")
    return "\n".join(parts)


def _row(method: str, fractions: list[float], cells: dict, split: str) -> str:
    out = []
    for f in fractions:
        s = cells.get((method, f))
        for t in ("bbox", "segm"):
            out.append("–" if s is None else format_mean_std(s[f"{split}_{t}_AP"]))
    return f"| {method_label(method)} | " + " | ".join(out) + " |"


def paired_differences(cells: dict, method: str, ref: str, fraction: float, figure: str) -> list[float]:
    """``method - ref`` per seed that both have (``figure`` e.g. ``test_bbox_AP``)."""
    a, b = cells.get((method, fraction)), cells.get((ref, fraction))
    if a is None or b is None:
        return []
    theirs = dict(zip(b["seeds"], b[figure]))
    return [x - theirs[s] for s, x in zip(a["seeds"], a[figure]) if x is not None and theirs.get(s) is not None]


def _paired_row(method: str, ref: str, fractions: list[float], cells: dict, split: str) -> str:
    out = [format_mean_std(paired_differences(cells, method, ref, f, f"{split}_{t}_AP")) if (method, f) in cells
           else "–" for f in fractions for t in ("bbox", "segm")]
    return f"| {method_label(method)} − {method_label(ref)} | " + " | ".join(out) + " |"


def format_per_kind(cells: Iterable[tuple[dict[str, Any], Path]], *, methods: list[str]) -> str:
    """Test AP per imaging kind (cell type), mean ± std over seeds, at each seed's kept
    (validation-best) iteration; empty when no cell has a per-kind test score.

    Args:
        cells: ``(key, folder)`` of finished cells, as for :func:`collect_results`.
    """
    per: dict[tuple[str, str, float], dict[str, dict[str, list]]] = {}
    for key, folder in cells:
        metrics = final_metrics(folder)
        if metrics is None:
            continue
        kept = metrics.get("best", {}).get("iteration")
        entry = next((h for h in metrics["history"] if h["iteration"] == kept), {})
        kinds = (entry.get("test") or {}).get("per_cell_type") or {}
        slot = per.setdefault((key["dataset"], key["method"], key["fraction"]), {})
        for kind, figures in kinds.items():
            for t in ("bbox", "segm"):
                value = figures.get(t)
                slot.setdefault(kind, {"bbox": [], "segm": []})[t].append(
                    None if value is None or value < 0 else 100.0 * value)
    if not any(per.values()):
        return ""
    parts = []
    for dataset, fraction in sorted({(d, f) for d, _, f in per}):
        rows = {m: per[d, m, f] for d, m, f in per if (d, f) == (dataset, fraction)}
        kinds = sorted({k for slot in rows.values() for k in slot})
        for t in ("bbox", "segm"):
            parts += [f"### Test AP_{t} per imaging kind: {dataset}, {100 * fraction:g}% labels, mean ± std over "
                      "seeds\n", "| method | " + " | ".join(kinds) + " |", "|---" * (1 + len(kinds)) + "|"]
            for m in ordered(rows, methods):
                parts.append(f"| {method_label(m)} | "
                             + " | ".join(format_mean_std(rows[m].get(k, {}).get(t, [])) for k in kinds) + " |")
            parts.append("")
    return "\n".join(parts)
