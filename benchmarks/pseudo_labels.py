"""Which pseudo-labels to keep: the self-training thresholds read on validation images.

A trained model pseudo-labels annotated validation images exactly as it pseudo-labels
unlabeled ones in self-training (:mod:`cupre.train.pseudo`: its object scale, flips), once,
with every object kept; then, for each pair of thresholds (the mean score over the views,
and the lowest mask IoU with a flipped view), the objects that pair keeps are matched to
the ground truth (mask IoU >= 0.5, best score first). Printed per pair: how many objects are
kept, their precision (kept objects that are real nuclei) and recall (nuclei kept), and F1.
The validation images are only scored here; self-training never trains on them.

    python benchmarks/pseudo_labels.py MODEL DATA --split VAL.json [--images 40] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_api

from cupre.data.formats import open_dataset
from cupre.data.splits import load_split
from cupre.data.unlabeled import UnlabeledImages
from cupre.devices import cpu_has_bf16, set_threads
from cupre.models.loading import build_from_file
from cupre.train.pseudo import Thresholds, pseudo_label

SCORES = (0.5, 0.6, 0.7, 0.8, 0.9)
AGREEMENTS = (0.0, 0.3, 0.5, 0.7)


def matched(kept: list[dict], truth: list[dict]) -> int:
    """Kept objects (best score first) that match a not yet matched ground-truth mask at IoU >= 0.5."""
    if not kept or not truth:
        return 0
    kept = sorted(kept, key=lambda a: -a["score"])
    iou = np.asarray(mask_api.iou([a["segmentation"] for a in kept], truth, [0] * len(truth)))
    iou = iou.reshape(len(kept), len(truth))
    used, hits = np.zeros(len(truth), dtype=bool), 0
    for row in iou:
        row = np.where(used, -1.0, row)
        j = int(row.argmax())
        if row[j] >= 0.5:
            used[j], hits = True, hits + 1
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model file (model.safetensors)")
    parser.add_argument("data", help="an annotated dataset (any layout cupre reads)")
    parser.add_argument("--split", help="split JSON selecting the validation images")
    parser.add_argument("--images", type=int, default=40, help="at most this many images (the first of the split)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    data = open_dataset(args.data, class_agnostic=True)
    if args.split:
        data = data.subset(load_split(args.split)["image_ids"][: args.images])
    model, cfg, _ = build_from_file(args.model)
    model.eval()
    t0 = time.perf_counter()
    every = pseudo_label(model, UnlabeledImages([r.file for r in data.records]), device=torch.device("cpu"), progress=False,
                         thresholds=Thresholds(keep_score=0.0, agree_iou=0.0, uncertain_score=0.0))
    seconds = time.perf_counter() - t0
    truth = {}
    for k in range(len(data)):
        masks = data[k][1]["masks"].numpy()
        truth[k + 1] = [mask_api.encode(np.asfortranarray(m)) for m in masks]  # pseudo_label numbers images 1..n
    n_truth = sum(len(t) for t in truth.values())
    print(f"# {args.model}: {len(data)} images, {n_truth} annotated objects; pseudo-labelling took {seconds:.0f} s")
    print(f"# {'bf16' if cpu_has_bf16() else 'no bf16'} CPU, {threads} threads, fp32; views hflip, vflip")
    print("| mean score >= | agreement >= | kept | precision | recall | F1 |")
    print("|---|---|---|---|---|---|")
    for score in SCORES:
        for agree in AGREEMENTS:
            kept = [a for a in every["annotations"] if a["mean_score"] >= score and a["agreement"] >= agree]
            hits = sum(matched([a for a in kept if a["image_id"] == i], t) for i, t in truth.items())
            precision, recall = hits / max(1, len(kept)), hits / max(1, n_truth)
            f1 = 2 * precision * recall / max(1e-9, precision + recall)
            print(f"| {score:.1f} | {agree:.1f} | {len(kept)} | {100 * precision:.1f} | {100 * recall:.1f} | "
                  f"{100 * f1:.1f} |")


if __name__ == "__main__":
    main()
