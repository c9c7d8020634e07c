"""``cupre train`` as a biologist would run it, on real nuclei, then scored on held-out images.

BBBC038 stage1_train is partitioned 70/15/15 by imaging kind (seed 0, the CPU recipe's
partition). From the train part a handful of images (``--labeled``, default 5; a seeded
few-shot split, so every imaging kind has one) become "my annotated images" and every
other train image becomes "my unlabeled images"; the COCO stage reads ``coco-mini`` (100
real COCO images). Then, timed, one command::

    cupre train --labels LABELED --unlabeled UNLABELED -o RUN --preset cpu [--init cupre --coco COCO]

and afterwards (not timed) the model's masks on the 99 test images (and the self-trained
model's, where ``--self-train`` made one) are scored against their ground truth with
``cupre evaluate`` (LIVECell protocol). Inputs are symbolic links
into the shared data; nothing is copied. Prints the wall time, the AP and where the
overlays are. A second run with the same ``--work`` continues where the first stopped.

Without ``--init`` training starts where the CPU preset starts, from cupre's shipped nuclei
model (no pre-training); ``--init cupre`` runs the CUPre path, its COCO stage on coco-mini;
``--unlabeled 0`` gives ``cupre train`` no unlabeled images (no MoCo, no masks at the end),
only the annotated ones.

Usage: python benchmarks/train_bbbc038.py [--data ../shared/data] [--work runs/train-bbbc038] [--labeled 5]
       [--unlabeled N] [--init cupre|nuclei] [--threads 2] [--precision fp32] [--config MY_WORKFLOW.yaml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cupre.data.formats import open_dataset
from cupre.data.splits import fewshot_split, partition


def link_samples(records, folder: Path) -> None:
    """BBBC038 sample folders (``<id>/images``, ``<id>/masks``) linked into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for rec in records:
        sample = Path(rec.file).parents[1]
        target = folder / sample.name
        if not target.exists():
            target.symlink_to(sample.resolve(), target_is_directory=True)


def link_images(records, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rec in records:
        target = folder / Path(rec.file).name
        if not target.exists():
            target.symlink_to(Path(rec.file).resolve())


def cupre(*args: str) -> None:
    cmd = [sys.executable, "-m", "cupre.cli", *args]
    print("$ cupre " + " ".join(args), flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(f"cupre {args[0]} failed with exit status {done.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--work", default="runs/train-bbbc038", help="where the inputs and the run go")
    parser.add_argument("--labeled", type=int, default=5, help="annotated images to train on")
    parser.add_argument("--unlabeled", type=int, default=None,
                        help="unlabeled images given to cupre train (default: every other train image; 0: none)")
    parser.add_argument("--init", default=None, help="passed to cupre train (cupre, nuclei)")
    parser.add_argument("--threads", default=None, help="passed to cupre (default: every core)")
    parser.add_argument("--precision", default=None, choices=("auto", "bf16", "fp32"), help="passed to cupre")
    parser.add_argument("--config", default=None, help="a workflow YAML instead of --preset cpu")
    args = parser.parse_args()
    data, work = Path(args.data), Path(args.work)
    records = open_dataset(data / "bbbc038" / "stage1_train", class_agnostic=True).records
    parts = partition(records, (0.7, 0.15, 0.15), seed=0, names=("train", "val", "test"))
    by_id = {r.image_id: r for r in records}
    train = [by_id[i] for i in parts["train"]]
    labeled = [by_id[i] for i in fewshot_split(train, args.labeled / len(train), seed=0)]  # every kind
    while len(labeled) > args.labeled:  # rounding per kind can give one more: drop one of the commonest kind
        kinds = [r.cell_type for r in labeled]
        labeled.remove(next(r for r in reversed(labeled) if r.cell_type == max(kinds, key=kinds.count)))
    chosen = {r.image_id for r in labeled}
    unlabeled = [r for r in train if r.image_id not in chosen][:args.unlabeled]
    test = [by_id[i] for i in parts["test"]]
    link_samples(labeled, work / "labeled")
    if unlabeled:
        link_images(unlabeled, work / "unlabeled")
    link_samples(test, work / "test")
    kinds = sorted({r.cell_type for r in labeled})
    print(f"{len(labeled)} annotated images ({', '.join(kinds)}), {len(unlabeled)} unlabeled, "
          f"{len(test)} held-out test images")
    threads = ["--threads", args.threads] if args.threads else []
    precision = ["--precision", args.precision] if args.precision else []
    preset = ["--config", args.config] if args.config else ["--preset", "cpu"]
    init = ["--init", args.init] if args.init else []
    inputs = ["--unlabeled", str(work / "unlabeled")] if unlabeled else []
    if args.init == "cupre":  # the CPU preset starts from the shipped model: no COCO stage
        inputs += ["--coco", str(data / "coco-mini" / "annotations" / "instances_train2017.json")]
    run = work / "run"
    start = time.perf_counter()
    cupre("train", "--labels", str(work / "labeled"), *inputs, "-o", str(run), *preset, *init, *threads, *precision)
    minutes = (time.perf_counter() - start) / 60
    cupre("convert", str(work / "test"), "-o", str(work / "test.json"), "--overwrite")  # a rerun continues
    models = {"fine-tuned": run / "finetune" / "model.safetensors"}
    if (run / "finetune" / "selftrain" / "model.safetensors").is_file():
        models["after self-training"] = run / "finetune" / "selftrain" / "model.safetensors"
    scores = []
    for name, model in models.items():
        masks = work / ("test-masks" if name == "fine-tuned" else "test-masks-selftrained")
        if not (masks / "images.json").is_file():
            cupre("predict", str(model), str(work / "test"), "-o", str(masks), *threads, *precision)
        out = masks.with_name(masks.name + "-metrics.json")
        cupre("evaluate", "--gt", str(work / "test.json"), "--dt", str(masks / "results_coco.json"), "--out", str(out),
              "--overwrite")
        metrics = json.loads(out.read_text())
        scores.append(f"{name}: test AP_bbox {100 * metrics['bbox']['AP']:.1f}, AP_segm {100 * metrics['segm']['AP']:.1f}")
    print(f"cupre train: {minutes:.1f} min wall (this call; a continued run counts only what it ran) | "
          + " | ".join(scores) + f" (on {len(test)} images) | overlays: {work}/test-masks*/*_overlay.png, "
          f"{run}/masks/*_overlay.png, pseudo-labels: {run}/finetune/selftrain/round*/pseudo_labels.png")

if __name__ == "__main__":
    main()
