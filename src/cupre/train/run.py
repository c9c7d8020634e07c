"""A run folder: resolved config, metrics (CSV and TensorBoard), checkpoints.

Every procedure writes into one :class:`Run`; a result can be reproduced from its folder.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from cupre.fileio import write_text_atomic
from cupre.train import distributed


class Run:
    """One run folder.

    Args:
        root: the folder (created).
        tensorboard: also write TensorBoard event files under ``root/tb``.
    """

    def __init__(self, root: str | Path, *, tensorboard: bool = True) -> None:
        self.root = Path(root)
        self.main = distributed.is_main()
        if self.main:
            self.root.mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._tensorboard = tensorboard and self.main

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def save_config(self, config: dict[str, Any], name: str = "config.yaml") -> None:
        """Write the resolved config (every default filled in) next to the results."""
        if self.main:
            write_text_atomic(self.path(name), yaml.safe_dump(config, sort_keys=False))

    def save_json(self, obj: Any, name: str) -> None:
        if self.main:
            write_text_atomic(self.path(name), json.dumps(obj, indent=2))

    def log(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Append scalars to ``metrics.csv`` (long format) and TensorBoard."""
        if not self.main:
            return
        path = self.path("metrics.csv")
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["stage", "step", "name", "value"])
            for name, value in values.items():
                writer.writerow([stage, step, name, f"{float(value):.6g}"])
        if self._tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path("tb")))
            for name, value in values.items():
                self._tb.add_scalar(f"{stage}/{name}", float(value), step)

    def drop_after(self, step: int, stages: Iterable[str]) -> None:
        """Forget the ``metrics.csv`` rows of ``stages`` logged after ``step``: a resumed
        run logs those iterations again, so each (stage, step, name) stays unique."""
        path = self.path("metrics.csv")
        if not self.main or not path.is_file():
            return
        stages = set(stages)
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        kept = [r for r in rows[1:] if not (r[0] in stages and int(r[1]) > step)]
        if len(kept) == len(rows) - 1:
            return
        buf = io.StringIO()
        csv.writer(buf).writerows([rows[0], *kept])
        write_text_atomic(path, buf.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
