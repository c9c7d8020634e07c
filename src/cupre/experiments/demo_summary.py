"""What ``cupre demo`` tells the person who ran it: the rows in words, what AP means, the
caveat, where the models are, what to run next on their own images, and how long it took.

It is markdown (readable in a terminal as printed; rendered at the top of ``report.html``),
built from the rows the runner collected (:func:`cupre.experiments.table.summarize`: each
method at its validation-chosen iteration), so it shows the same figures as Table II.
"""

from __future__ import annotations

import json
from pathlib import Path

from cupre.experiments.config import ExperimentConfig, in_folder
from cupre.experiments.progress import duration
from cupre.experiments.shipped_rows import shipped_method
from cupre.experiments.table import summarize

# method -> (its name in the summary, one sentence on what it is)
ROWS = {
    shipped_method("nuclei"): (
        "cupre's nuclei model, no training",
        "the model shipped inside cupre (trained on 465 other BBBC038 images, none of these), run on the "
        "images as `cupre predict` runs it; no training here, it took seconds."),
    "scratch": (
        "scratch: {n} labels, random start",
        "a detector fine-tuned for {steps} steps on the {n} annotated images, starting from random weights."),
    "coco": (
        "coco: {n} labels, from the object warm-up",
        "the same fine-tuning, starting from a detector warmed up on generated natural-object images "
        "(the demo's stand-in for COCO; nothing is downloaded)."),
    "cupre": (
        "cupre: {n} labels, from CUPre pre-training",
        "the same fine-tuning, starting from CUPre's pre-training: the object warm-up, then AMT2 (MoCo on the "
        "demo's unlabeled and annotated images, no labels used, alternating with object steps under L2-SP)."),
}

AP_MEANING = (
    "**What AP means.** AP (average precision, 0 to 100) compares the predicted nuclei with the hand-drawn "
    "ones: a prediction counts as a hit when its box (AP_bbox) or its mask (AP_segm) overlaps a drawn nucleus "
    "by at least half of their union, then by 55%, ... up to 95%, and AP averages the ten; confident wrong "
    "predictions and missed nuclei both lower it. AP@0.5 counts hits at the 50% bar alone (TP / (TP + FP + FN) "
    "at the score threshold chosen on the validation images), as Cellpose and StarDist report it. 100 is "
    "every nucleus found with a perfect outline. For scale, on BBBC038's held-out images a model trained for "
    "600 steps on 24 annotated images scores about 41 AP_bbox and 66-70 AP@0.5 (docs/benchmarks.md): masks "
    "you can count and measure with. A few AP, as minutes of training on 5 images give, means most nuclei "
    "are missed or badly outlined: the overlays show which.")

CAVEAT = (
    "**One seed.** Each row is one training run with one random seed; another seed moves a fine-tuned row by "
    "a few AP, so differences of a few AP between the fine-tuned rows are noise, not a ranking.")


def held_out_count(cfg: ExperimentConfig, out: Path, split: str) -> int:
    """How many images the ``split`` (``test`` or ``val``) figures are read on."""
    from cupre.train.finetune import held_out

    d = cfg.data[0]
    path = d.test if split == "test" else d.val
    part = out / "splits" / f"{split}.json"
    return len(held_out(path or d.labeled, str(part) if part.is_file() and not path else None))


def labels_count(cfg: ExperimentConfig, out: Path) -> int:
    """How many annotated images the cells trained on (the first fraction and seed's split)."""
    split = out / "splits" / f"f{min(cfg.data[0].fractions or cfg.fractions):g}-s{cfg.seeds[0]}.json"
    return len(json.loads(split.read_text())["image_ids"]) if split.is_file() else 0


def figures_table(summary: dict, methods: list[str], split: str, names: dict[str, str]) -> list[str]:
    """The markdown table: one row per method present, AP_bbox, AP_segm, AP@0.5 of ``split``."""
    lines = ["| model | AP_bbox | AP_segm | AP@0.5 |", "|---|---|---|---|"]
    for method in methods:
        s = next((v for (_, m, _), v in summary.items() if m == method), None)
        if s is None:
            continue
        figures = [s[f"{split}_{m}"][0] if s[f"{split}_{m}"] else None
                   for m in ("bbox_AP", "segm_AP", "objects_AP50")]
        lines.append(f"| {names[method]} | " + " | ".join("n/a" if v is None else f"{v:.1f}" for v in figures) + " |")
    return lines


def demo_summary(cfg: ExperimentConfig, out: Path, rows: list[dict], wall_seconds: float) -> str:
    """The demo's summary as markdown (see the module docstring)."""
    from cupre.shipped import available, shipped_path

    out = Path(out)
    cfg = in_folder(cfg, out)
    summary = summarize(rows, cfg.select_by)
    present = {m for _, m, _ in summary}
    methods = [m for m in [*(shipped_method(n) for n in cfg.shipped), *cfg.methods] if m in present]
    split = "test" if any(s["test_bbox_AP"] and s["test_bbox_AP"][0] is not None for s in summary.values()) else "val"
    n, steps = labels_count(cfg, out), cfg.finetune.optim.iterations
    names = {m: ROWS.get(m, (m, ""))[0].format(n=n, steps=steps) for m in methods}
    where = (f"{held_out_count(cfg, out, split)} held-out test images (no model trained on them)"
             if split == "test" else f"{held_out_count(cfg, out, split)} validation images (no test part)")
    lines = ["## What the demo found", "", f"AP x100 on {where}; higher is better.", "",
             *figures_table(summary, methods, split, names), ""]
    lines += [f"- **{names[m]}**: {ROWS[m][1].format(n=n, steps=steps)}" for m in methods if m in ROWS]
    missing = [name for name in cfg.shipped if name not in available()]
    lines += [f"- cupre's {name} model is not in this install ({shipped_path(name)} missing): its row is skipped."
              for name in missing]
    lines += ["", AP_MEANING, "", CAVEAT, "", *next_steps(cfg, out, missing), "",
              f"**Time.** This run took {duration(wall_seconds)} from start to end (wall clock; a run that "
              "continues an earlier one reuses what was finished). Each model's masks on the held-out images: "
              f"{out / 'figures' / 'fig8_overlays.png'}; they, this summary and the full tables are in the report."]
    return "\n".join(lines)


def next_steps(cfg: ExperimentConfig, out: Path, missing: list[str]) -> list[str]:
    """Where the models are, and the commands to run on one's own images."""
    from cupre.shipped import shipped_path

    fraction, seed = min(cfg.data[0].fractions or cfg.fractions), cfg.seeds[0]
    cells = [(m, out / "cells" / m / f"f{fraction:g}" / f"s{seed}") for m in cfg.methods]
    best = cells[-1][1] if cells else out
    lines = ["**Where the models are.**"]
    if "nuclei" in cfg.shipped and "nuclei" not in missing:
        lines.append(f"- cupre's nuclei model: in the installed package (`{shipped_path('nuclei')}`); `cupre predict` "
                     "uses it when no model is given (`--model nuclei` names it).")
    lines += [f"- {m}: `{folder / 'model.safetensors'}`" for m, folder in cells]
    lines += ["", "**Next, on your own images.**"]
    if "nuclei" in cfg.shipped and "nuclei" not in missing:
        lines.append("- Nuclei: `cupre predict IMAGES -o OUT` (a folder or files; writes label images, a table "
                     "per image and overlays that napari, Fiji and QuPath open).")
    else:
        lines.append(f"- With a model of this demo: `cupre predict --model {best} IMAGES -o OUT`.")
    lines.append("- Other cells, or better masks of yours: annotate about 5 images (a label image per image, e.g. "
                 "napari or the Cellpose GUI), then `cupre train --labels ANNOTATED/ --unlabeled IMAGES/ -o RUN`"
                 + (" (`--init nuclei` starts from cupre's nuclei model)" if "nuclei" in cfg.shipped else "")
                 + ", then `cupre predict --model RUN NEW_IMAGES -o OUT`.")
    return lines
