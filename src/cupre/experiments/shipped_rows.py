"""The table's first rows: the models shipped with cupre, scored as they are, before anything trains.

An experiment that lists ``shipped: [nuclei]`` scores each of those models (``cupre.shipped``)
on every target's validation and test images first (seconds: no training), by the very
evaluation a fine-tuning cell ends with (:class:`~cupre.evaluation.selection.Validation`):
validation at iteration 0, where the score threshold is chosen, then the test images once
at that threshold. Each writes, like a cell::

    OUT/shipped/<name>/val_metrics.json      its evaluation ("shipped": the model file it scored)
    OUT/shipped/<name>/predictions_{val,test}.json

(with a ``<dataset>/`` level when the experiment has several datasets), so results.csv,
Table II, the per-kind table and the overlays read it as they read a cell, under the
method name ``<name> (shipped)``. A model this install lacks is skipped with one line
saying why: the rest of the experiment runs as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cupre.experiments.grid import Target
from cupre.fileio import write_json_atomic

METRICS_FILE = "val_metrics.json"


def shipped_method(name: str) -> str:
    """The method name a shipped model's row carries in results.csv and the tables."""
    return f"{name} (shipped)"


@dataclass
class ShippedRow:
    """One shipped model on one target."""

    name: str
    target: Target
    folder: Path

    @property
    def method(self) -> str:
        return shipped_method(self.name)

    @property
    def finished(self) -> bool:
        return (self.folder / METRICS_FILE).is_file()

    def keys(self, seeds: list[int]) -> list[tuple[dict[str, Any], Path]]:
        """``(key, folder)`` for every fraction and seed of the grid: the same figures in
        each column, so that paired differences against it read per seed."""
        return [({"dataset": self.target.name, "method": self.method, "fraction": f, "seed": s}, self.folder)
                for f in self.target.fractions for s in seeds]


def plan_shipped(names: list[str], targets: list[Target], out: Path) -> list[ShippedRow]:
    """A row per shipped model and target (folders under ``OUT/shipped``)."""
    single = len(targets) == 1
    return [ShippedRow(name=name, target=t, folder=out.joinpath("shipped", *(() if single else (t.name,)), name))
            for t in targets for name in names]


def score_shipped(rows: list[ShippedRow], *, device: str, precision: str, batch_size: int,
                  select_by: str) -> None:
    """Score each row not scored before; one line per row (its figures, or why it is skipped)."""
    from cupre.shipped import available, shipped_path

    for row in rows:
        what = f"experiment: cupre's {row.name} model, no training"
        if row.finished:
            print(f"{what}: scored before", flush=True)
        elif row.name not in available():
            print(f"{what}: skipped, the model is not in this install ({shipped_path(row.name)} missing)", flush=True)
        else:
            started = time.perf_counter()
            best = score_model(shipped_path(row.name), row.folder, val=row.target.val,
                               val_split=row.target.val_split, test=row.target.test, test_split=row.target.test_split,
                               device=device, precision=precision, batch_size=batch_size, select_by=select_by)
            scores = best.get("test") or best
            split = "test" if best.get("test") else "validation"
            print(f"{what}: {split} AP_bbox {100 * scores['bbox']['AP']:.1f}, AP_segm {100 * scores['segm']['AP']:.1f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)


def score_model(model_file: Path, folder: Path, *, val: str, val_split: Path | None, test: str | None,
                test_split: Path | None, device: str, precision: str, batch_size: int, select_by: str) -> dict:
    """Score the model in ``model_file`` as a fine-tuning cell's kept model is scored
    (validation, its threshold, then test), into ``folder``; returns the evaluation (with
    ``test`` where there is a test part)."""
    from cupre.devices import pick_device, resolve_precision
    from cupre.evaluation.selection import Validation
    from cupre.models.loading import build_from_file
    from cupre.train.finetune import held_out

    started = time.perf_counter()
    torch_device = pick_device(device)
    model, _, _ = build_from_file(model_file)
    model.to(torch_device)
    model.precision = resolve_precision(precision, torch_device)
    validation = Validation(model, val=held_out(val, str(val_split) if val_split else None),
                            test=held_out(test, str(test_split) if test_split else None), device=torch_device,
                            batch_size=batch_size, select_by=select_by)
    validation.score(0)
    validation.test()
    folder.mkdir(parents=True, exist_ok=True)
    for split, results in validation.predictions.items():
        write_json_atomic(folder / f"predictions_{split}.json", results)
    best = validation.best()
    write_json_atomic(folder / METRICS_FILE, {
        "history": validation.history, "best": best, "select_by": select_by, "shipped": str(model_file),
        "seconds": {"total": time.perf_counter() - started, **validation.seconds}})
    return best
