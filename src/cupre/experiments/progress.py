"""Progress of cells that train in other processes, read from their ``metrics.csv``.

Cells run side by side (:mod:`cupre.experiments.parallel`) have their progress bars off;
each appends every training step to its ``metrics.csv``. :class:`CellProgress` reads the
last step of each file's tail now and then and makes a line each time the cells together
pass another tenth of their steps, e.g. (one line)::

    experiment: cells 40% (300 of 750 steps: scratch 101/250, coco 99/250, cupre 100/250), 2 min 5 s,
    about 3 min of training left

so a log holds about ten lines per wave of cells, never a line per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TAIL_BYTES = 8192  # enough for the last few steps' rows of a metrics.csv
TRAINING_STAGES = ("finetune",)  # the stage names a cell logs its training steps under


def last_step(folder: Path) -> int:
    """The latest training step logged under ``folder`` (its newest ``metrics.csv``, the
    cell's own or a self-training round's); 0 when none yet."""
    files = [p for p in (folder / "metrics.csv", *folder.glob("*/metrics.csv")) if p.is_file()]
    if not files:
        return 0
    path = max(files, key=lambda p: p.stat().st_mtime)
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - TAIL_BYTES))
        tail = fh.read().decode("utf-8", errors="replace").splitlines()[1:]  # the first line may be cut
    steps = [int(cols[1]) for cols in (line.split(",") for line in tail)
             if len(cols) >= 2 and cols[0] in TRAINING_STAGES and cols[1].isdigit()]
    return max(steps, default=0)


def duration(seconds: float) -> str:
    """``"3 min 5 s"``, ``"42 s"``, ``"1 h 2 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


@dataclass
class _Cell:
    label: str
    folder: Path
    iterations: int
    step: int = 0
    finished: bool = False


class CellProgress:
    """A line each time the cells of a wave together pass another ``every`` of their steps.

    Args:
        cells: ``(label, folder, iterations)`` of each cell of the wave.
        every: the share of all steps between two lines.
        clock: seconds (monotonic), for the elapsed time and the estimate.
    """

    def __init__(self, cells: list[tuple[str, Path, int]], *, every: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cells = {Path(folder): _Cell(label, Path(folder), max(1, int(n))) for label, folder, n in cells}
        self.every, self.clock = every, clock
        self.started = clock()
        self.first = self.done_share()  # steps done before (a resumed run) count for no speed
        self.shown = self.tenths(self.first)

    def finished(self, folder: Path) -> None:
        """Count ``folder``'s cell as done (all its steps)."""
        cell = self.cells.get(Path(folder))
        if cell is not None:
            cell.finished = True

    def tenths(self, share: float) -> int:
        """How many ``every`` steps ``share`` has passed (0.7 / 0.1 is 6.999...: rounded first)."""
        return int(share / self.every + 1e-9)

    def done_share(self) -> float:
        total = sum(c.iterations for c in self.cells.values())
        return sum(c.iterations if c.finished else min(c.step, c.iterations) for c in self.cells.values()) / total

    def poll(self) -> str | None:
        """Read every running cell's step; the line to show, or None when the cells have
        not passed another ``every`` of their steps since the last line."""
        for cell in self.cells.values():
            if not cell.finished:
                cell.step = max(cell.step, last_step(cell.folder))
        share = self.done_share()
        if self.tenths(share) <= self.shown or share >= 1.0:
            return None
        self.shown = self.tenths(share)
        elapsed = self.clock() - self.started
        done = sum(c.iterations if c.finished else min(c.step, c.iterations) for c in self.cells.values())
        total = sum(c.iterations for c in self.cells.values())
        parts = ", ".join(f"{c.label} {'done' if c.finished else f'{c.step}/{c.iterations}'}"
                          for c in self.cells.values())
        line = f"experiment: cells {100 * share:.0f}% ({done} of {total} steps: {parts}), {duration(elapsed)}"
        if share > self.first:
            line += f", about {duration(elapsed * (1 - share) / (share - self.first))} of training left"
        return line
