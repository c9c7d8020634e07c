"""Screen changes to the training recipe on validation: scratch, 5% labels, one fixed budget.

Each variant is the CPU recipe (``configs/bbbc038-cpu.yaml``: BBBC038 stage1_train,
partition 70/15/15 by imaging kind, 5% of the train part) with the ``scratch`` method
only, ``--iterations`` fine-tuning steps scored on validation at the end, and a few keys
changed. Every variant runs ``cupre experiment`` in a folder of its own under ``--work``
(run again to continue: finished cells are skipped, stopped ones resume), ``--jobs``
processes at a time on ``--threads`` threads each. The table is read on validation only;
the test figures of a cell are in its own folder and are not printed here.

Usage::

    python benchmarks/recipe_ablation.py --work runs/ablation --variants base anchors \\
        [--seeds 0 1] [--iterations 600] [--jobs 2] [--threads 1] [--precision auto]
    python benchmarks/recipe_ablation.py --work runs/ablation --table   # the table of what has run

A variant's seconds per step are its cell's training time over its steps (validation
and test excluded), with the precision and threads it ran under.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "bbbc038-cpu.yaml"

# one change -> (what it is, {dotted key: value}); a variant is "base" or changes joined by "+"
CHANGES: dict[str, tuple[str, dict]] = {
    "anchors": ("anchors from the object scale (16..256)", {"pretrain.detector.anchor_sizes": "auto"}),
    "anchors2": ("anchors from the object scale, two per octave",
                 {"pretrain.detector.anchor_sizes": "auto", "pretrain.detector.anchors_per_octave": 2}),
    "rois512": ("512 sampled RoIs per image (detectron2)", {"pretrain.detector.box_batch_size_per_image": 512}),
    "jitter2": ("scale jitter up to 2x", {"finetune.optim.scale_jitter": 2.0}),
    "acquisition": ("augmentation for other acquisitions (grey<->colour, inversion, stain/hue, gamma, blur, "
                    "noise, median padding)", {"finetune.augment": "acquisition"}),
    "balanced": ("imaging kinds sampled equally often", {"finetune.balance_kinds": True}),
    "invert": ("a bright background inverted before the backbone", {"pretrain.detector.invert_bright": True}),
}
SCREEN_ITERATIONS = 600
# "base" is the CPU recipes as they were before these changes, whatever the config files say now
OLD_RECIPE = {"pretrain.detector.anchor_sizes": [4, 8, 16, 32, 64], "pretrain.detector.invert_bright": False}
BASE_WHAT = "the CPU recipe as it was (anchors 4..64, 256 RoIs, jitter 1.25, mild intensity, no inversion)"


def changes_of(variant: str) -> list[str]:
    if variant == "base":
        return []
    names = variant.split("+")
    unknown = [n for n in names if n not in CHANGES]
    if unknown:
        raise SystemExit(f"unknown change {unknown[0]!r}: choose from base, {', '.join(CHANGES)} (joined by +)")
    return names


def describe(variant: str) -> str:
    return " + ".join(CHANGES[n][0] for n in changes_of(variant)) or BASE_WHAT


def set_key(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        cfg = cfg.setdefault(key, {})
    cfg[last] = value


def absolute(cfg: dict, base: Path) -> dict:
    """The base config's relative dataset paths made absolute (the variant's file lives elsewhere)."""
    cfg["data"]["labeled"] = str((base / cfg["data"]["labeled"]).resolve())
    for key in ("coco", "unlabeled"):
        cfg["pretrain"][key] = [str((base / p).resolve()) for p in cfg["pretrain"].get(key, [])]
    return cfg


def variant_config(name: str, seeds: list[int], iterations: int, eval_every: int, recipe: Path = BASE) -> dict:
    cfg = absolute(yaml.safe_load(recipe.read_text()), recipe.resolve().parent)
    cfg.update(methods=["scratch"], seeds=seeds, eval_every=eval_every, parallel=1)
    cfg["finetune"]["optim"]["iterations"] = iterations
    cfg["overlays"] = {"images": 0}
    for change in [OLD_RECIPE] + [CHANGES[c][1] for c in changes_of(name)]:
        for key, value in change.items():
            set_key(cfg, key, value)
    return cfg


def folder_name(variant: str, iterations: int) -> str:
    """A variant's folder: its name, with ``@ITERATIONS`` unless the screening budget."""
    return variant if iterations == SCREEN_ITERATIONS else f"{variant}@{iterations}"


def launch(work: Path, name: str, seed: int, iterations: int, eval_every: int, threads: int,
           precision: str, recipe: Path) -> subprocess.Popen:
    folder = work / folder_name(name, iterations)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"s{seed}.yaml"
    config.write_text(yaml.safe_dump(variant_config(name, [seed], iterations, eval_every, recipe), sort_keys=False))
    log = open(folder / f"s{seed}.log", "a")
    cmd = [sys.executable, "-m", "cupre.cli", "experiment", str(config), "-o", str(folder / f"s{seed}"),
           "--threads", str(threads), "--parallel", "1", "--precision", precision]
    print("$ " + " ".join(cmd[2:]), flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def cell_rows(folder: Path, split: str = "val") -> list[dict]:
    results = folder / "results.csv"
    if not results.is_file():
        return []
    with open(results, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def seconds_per_step(folder: Path, iterations: int) -> float | None:
    """Training seconds per step of the run's cell (its val_metrics.json), validation excluded."""
    for metrics in folder.glob("cells/scratch/*/s*/val_metrics.json"):
        training = json.loads(metrics.read_text()).get("seconds", {}).get("training")
        if training:
            return training / iterations
    return None


def kind_figures(folder: Path, iteration: str, split: str) -> dict[str, float]:
    """AP_bbox x100 per imaging kind of the run's cell at ``iteration`` (its val_metrics.json)."""
    for metrics in folder.glob("cells/scratch/*/s*/val_metrics.json"):
        for entry in json.loads(metrics.read_text()).get("history", []):
            if str(entry.get("iteration")) == iteration:
                kinds = (entry.get("test") or {}) if split == "test" else entry
                return {k: 100 * v["bbox"] for k, v in kinds.get("per_cell_type", {}).items()}
    return {}


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f}" + (f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else "")


def table(work: Path, split: str = "val") -> None:
    """Per variant: validation AP at the end of training (mean ± std over seeds), AP@0.5
    of the objects above the validated threshold, training seconds per step; and for runs
    scored more than once, validation AP_bbox at each scored iteration."""
    print(f"{split} figures of each seed's validation-chosen model (test: once, never used for choices)")
    print(f"{'variant':<26} {'seeds':<6} {'AP_bbox':>12} {'AP_segm':>12} {'AP@0.5':>8} {'s/step':>7}  what")
    curves, per_kind = [], []
    for folder in sorted(p for p in work.iterdir() if p.is_dir()):
        name, what = folder.name, describe(folder.name.split("@")[0])
        bbox, segm, ap50, steps, kinds = [], [], [], [], {}
        for run in sorted(p for p in folder.glob("s*") if p.is_dir()):
            rows = sorted((r for r in cell_rows(run) if r["iteration"]), key=lambda r: int(r["iteration"]))
            if not rows:
                continue
            chosen = max(rows, key=lambda r: (float(r["segm_AP"]), -int(r["iteration"])))  # the runner's select_by
            tested = {r["iteration"]: r for r in cell_rows(run, "test")}
            last = chosen if split == "val" else tested.get(chosen["iteration"])
            if last is None:
                continue
            bbox.append(100 * float(last["bbox_AP"]))
            segm.append(100 * float(last["segm_AP"]))
            if last.get("objects_AP50"):
                ap50.append(100 * float(last["objects_AP50"]))
            steps.append(seconds_per_step(run, int(rows[-1]["iteration"])))
            for kind, ap in kind_figures(run, chosen["iteration"], split).items():
                kinds.setdefault(kind, []).append(ap)
            if len(rows) > 1:
                curves.append(f"  {name} {run.name}: " + ", ".join(
                    f"{r['iteration']}: {100 * float(r['bbox_AP']):.1f}" for r in rows))
        if not bbox:
            continue
        sps = [s for s in steps if s]
        print(f"{name:<26} {len(bbox):<6} {spread(bbox):>12} {spread(segm):>12} {spread(ap50) if ap50 else '-':>8} "
              f"{(statistics.mean(sps) if sps else float('nan')):>7.2f}  {what}")
        if kinds:
            per_kind.append(f"  {name}: " + ", ".join(f"{k} {spread(v)}" for k, v in sorted(kinds.items())))
    if per_kind:
        print("AP_bbox per imaging kind:")
        print("\n".join(per_kind))
    if curves:
        print("validation AP_bbox at each scored iteration:")
        print("\n".join(curves))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "ablation")
    parser.add_argument("--variants", nargs="+", default=["base"],
                        help=f"base, or changes joined by + ({', '.join(CHANGES)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--iterations", type=int, default=SCREEN_ITERATIONS)
    parser.add_argument("--recipe", type=Path, default=BASE,
                        help="the experiment config varied (default configs/bbbc038-cpu.yaml; e.g. "
                             "configs/bbbc038-transfer-cpu.yaml, with another --work)")
    parser.add_argument("--eval-every", type=int, default=None, help="validation interval (default: at the end)")
    parser.add_argument("--jobs", type=int, default=2, help="cells at once")
    parser.add_argument("--threads", type=int, default=1, help="threads per cell")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--table", action="store_true", help="print the table of what has run, run nothing")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="the table's figures")
    args = parser.parse_args()
    for variant in args.variants:
        changes_of(variant)
    if not args.table:
        from cupre.devices import cpu_name

        print(f"CPU: {cpu_name()}; {args.jobs} cells at a time on {args.threads} thread(s) each; "
              f"precision {args.precision}; {args.iterations} steps", flush=True)
        queue = [(v, s) for s in args.seeds for v in args.variants]
        running: list[subprocess.Popen] = []
        start = time.time()
        while queue or running:
            while queue and len(running) < args.jobs:
                running.append(launch(args.work, *queue.pop(0), args.iterations, args.eval_every or args.iterations,
                                      args.threads, args.precision, args.recipe))
            time.sleep(5)
            for p in [p for p in running if p.poll() is not None]:
                running.remove(p)
                if p.returncode:
                    print(f"a cell failed (exit {p.returncode}); see its log under {args.work}", flush=True)
        print(f"ran in {(time.time() - start) / 60:.1f} min")
    table(args.work, args.split)


if __name__ == "__main__":
    main()
