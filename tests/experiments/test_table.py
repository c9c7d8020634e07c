"""Per-kind test AP in Table II's report: read at each seed's kept iteration."""

from __future__ import annotations

import json

from cupre.experiments.table import format_per_kind
from cupre.modelfile import MODEL_FILE


def _cell(folder, best_iteration, per_kind_by_iteration):
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(b"")
    history = [{"iteration": it, "bbox": {"AP": 0.1}, "segm": {"AP": 0.1},
                "test": {"bbox": {"AP": 0.1}, "segm": {"AP": 0.1}, "per_cell_type": kinds}}
               for it, kinds in per_kind_by_iteration.items()]
    (folder / "val_metrics.json").write_text(json.dumps({"history": history, "best": {"iteration": best_iteration}}))


def test_per_kind_table_uses_the_kept_iteration_of_every_seed(tmp_path):
    cells = []
    for seed, (kept, other) in enumerate([(0.30, 0.90), (0.40, 0.90)]):
        folder = tmp_path / f"s{seed}"
        _cell(folder, 300, {300: {"fluo": {"bbox": kept, "segm": kept / 2}, "he": {"bbox": -1.0, "segm": 0.2}},
                            600: {"fluo": {"bbox": other, "segm": other}}})
        cells.append(({"dataset": "d", "method": "scratch", "fraction": 0.05, "seed": seed}, folder))
    text = format_per_kind(cells, methods=["scratch"])
    lines = text.splitlines()
    bbox_row = lines[lines.index("| method | fluo | he |") + 2]
    assert bbox_row == "| scratch | 35.0 ± 7.1 | n/a |"  # iteration 300 of both seeds; -1 is undefined
    assert "| scratch | 17.5 ± 3.5 | 20.0 ± 0.0 |" in lines
    assert format_per_kind([], methods=["scratch"]) == ""
