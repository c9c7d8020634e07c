"""The whole CUPre method on synthetic data, sized for a laptop CPU (about 10 minutes).

Generates a natural-object stand-in for COCO and a synthetic cell domain, warms a
Mask R-CNN up on the objects, runs AMT2 rounds (MoCo on all cell images, then an object
subset under L2-SP), fine-tunes ``scratch``, ``coco`` and ``cupre`` on 10% of the
labeled training cells, evaluates each on held-out cells (LIVECell protocol) and prints
the AP table. Everything lands in one folder; running again reuses what is finished.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from cupre.config import FinetuneConfig, PretrainConfig
from cupre.data.formats import open_dataset
from cupre.data.splits import fewshot_split, partition
from cupre.data.synthetic import write_synthetic
from cupre.fileio import write_text_atomic
from cupre.train.finetune import run_finetune
from cupre.train.pretrain import run_pretrain

DETECTOR = {
    "arch": "maskrcnn", "backbone": "resnet18", "norm": "gn", "fpn_channels": 64,
    "anchor_sizes": [4, 8, 16, 32, 64],
    "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 600, "rpn_post_nms_top_n_test": 300,
    "box_batch_size_per_image": 128, "detections_per_img": 200,
}
DEMO = {
    "objects": {"n_images": 64, "size": 128},
    "cells": {"n_images": 100, "size": 128},
    "fraction": 0.1,
    "inits": ["scratch", "coco", "cupre"],
    "pretrain": {
        "detector": DETECTOR,
        "warmup": {"iterations": 200, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
                   "warmup_iterations": 20, "crop_size": None},
        "amt2": {
            "rounds": 2,
            "moco": {"optim": {"iterations": 40, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
                               "warmup_iterations": 5, "crop_size": 64},
                     "dim": 64, "hidden_dim": 256, "queue_size": 512},
            "coco": {"iterations": 50, "batch_size": 4, "optimizer": "adamw", "lr": 5e-4, "warmup_iterations": 5,
                     "crop_size": None},
            "l2sp": {"alpha": 0.99, "weight": 200.0},
        },
        "coco_baseline": True,
        "num_workers": 0,
        "checkpoint_every": 50,
    },
    "finetune": {
        "optim": {"iterations": 250, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "warmup_iterations": 20,
                  "crop_size": None},
        "eval_every": 125,
        "num_workers": 0,
        "checkpoint_every": 50,
    },
}


def make_data(out: Path, demo: dict, seed: int) -> dict[str, Path]:
    """Write the synthetic domains and the cell partition/split files (once)."""
    data = out / "data"
    paths = {}
    for kind in ("objects", "cells"):
        folder = data / kind
        if not (folder / "annotations.json").is_file():
            write_synthetic(kind, folder, n_images=demo[kind]["n_images"], size=demo[kind]["size"], seed=seed)
        paths[kind] = folder / "annotations.json"
    cells = open_dataset(paths["cells"])
    parts = partition(cells.records, fractions=(0.8, 0.2), seed=seed, names=("train", "val"))
    train_records = [r for r in cells.records if r.image_id in set(parts["train"])]
    few = fewshot_split(train_records, demo["fraction"], seed)
    for name, ids in (("val", parts["val"]), ("train-few", few)):
        path = data / f"split-{name}.json"
        write_text_atomic(path, json.dumps({"dataset": str(paths["cells"]), "image_ids": ids}))
        paths[f"split-{name}"] = path
    return paths


def run_demo(out: str | Path, *, demo: dict = DEMO, seed: int = 0, device: str = "auto") -> dict[str, dict]:
    """Run the demo into ``out``; returns {init: last validation metrics}."""
    out = Path(out)
    t0 = time.time()
    paths = make_data(out, demo, seed)
    pre = copy.deepcopy(demo["pretrain"])
    pre.update(coco=[str(paths["objects"])], unlabeled=[str(paths["cells"].parent / "images")], seed=seed,
               device=device)
    run_pretrain(PretrainConfig.from_dict(pre, where="demo.pretrain"), out / "pretrain")
    print(f"demo: pre-training done after {time.time() - t0:.0f} s")
    table = {}
    for init in demo["inits"]:
        ft = copy.deepcopy(demo["finetune"])
        ft.update(init=init, pretrain_dir=str(out / "pretrain"), train=str(paths["cells"]),
                  split=str(paths["split-train-few"]), val=str(paths["cells"]), val_split=str(paths["split-val"]),
                  seed=seed, device=device)
        table[init] = run_finetune(FinetuneConfig.from_dict(ft, where=f"demo.finetune.{init}"), out / "finetune" / init)
        print(f"demo: {init} fine-tuned after {time.time() - t0:.0f} s")
    text = format_ap_table(table, title=f"Few-shot cells ({100 * demo['fraction']:.0f}% labels), LIVECell-protocol AP")
    write_text_atomic(out / "results.md", text + "\n")
    print(text)
    print(f"demo: everything is in {out} ({time.time() - t0:.0f} s)")
    return table


def format_ap_table(table: dict[str, dict], *, title: str) -> str:
    """Markdown table: one row per initialisation, AP figures x100."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = [f"### {title}", "", "| init | " + " | ".join(f"bbox {k}" for k in keys) + " | segm AP | segm AP50 |",
             "|---" * (len(keys) + 3) + "|"]
    for init, m in table.items():
        row = [f"{100 * m['bbox'][k]:.1f}" if m["bbox"][k] >= 0 else "-" for k in keys]
        row += [f"{100 * m['segm'][k]:.1f}" for k in ("AP", "AP50")]
        lines.append(f"| {init} | " + " | ".join(row) + " |")
    return "\n".join(lines)
