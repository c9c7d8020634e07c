"""What the object-scale rule costs a model: one native look against three, against the labels' scale.

A model with ``object_size`` sees each image rescaled so its cells measure that size; the
factor comes from the model's own looks at the image (:mod:`cupre.scale`). This scores a
model file on a labeled split three ways (LIVECell protocol) and counts the images that
hold nuclei but get no object scoring 0.5 or more:

* ``native``: one look at native pixels (the rule before three looks);
* ``three looks``: native pixels, half and double size (the rule of ``cupre predict``);
* ``labels``: each image at its annotations' size (the oracle no user has).

    python benchmarks/scale_looks.py MODEL DATA --split SPLIT.json [--threads N]

e.g. ``python benchmarks/scale_looks.py runs/ft/model.safetensors
../shared/data/bbbc038/stage1_train --split runs/cpu/splits/test.json``.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch

from cupre.data.convert import dataset_to_coco
from cupre.data.formats import open_dataset
from cupre.data.splits import load_split
from cupre.devices import cpu_has_bf16, set_threads
from cupre.evaluation.livecell import evaluate
from cupre.evaluation.model_eval import predict_dataset
from cupre.models.loading import build_from_file

WAYS = {"native": ("estimate", (1.0,)), "three looks": ("estimate", (1.0, 0.5, 2.0)), "labels": ("labels", (1.0,))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model file (model.safetensors)")
    parser.add_argument("data", help="a labeled dataset (any layout cupre reads)")
    parser.add_argument("--split", help="split JSON whose image_ids select the images")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    data = open_dataset(args.data, class_agnostic=True)
    if args.split:
        data = data.subset(load_split(args.split)["image_ids"])
    gt = dataset_to_coco(data)
    model, cfg, _ = build_from_file(args.model)
    model.eval()
    annotated = {img["id"] for img in gt["images"]} & {a["image_id"] for a in gt["annotations"]}
    print(f"# {args.model}: object size {cfg.object_size} px; {len(data)} images ({len(annotated)} with nuclei)")
    print(f"# {'bf16' if cpu_has_bf16() else 'no bf16'} CPU, {threads} threads, fp32")
    print("| scale from | AP_bbox | AP_segm | images with nuclei and no object >= 0.5 | seconds |")
    print("|---|---|---|---|---|")
    for name, (scale, looks) in WAYS.items():
        t0 = time.perf_counter()
        results = predict_dataset(model, data, device=torch.device("cpu"), progress=False, scale=scale,
                                  probe_factors=looks)
        found = Counter(r["image_id"] for r in results if r["score"] >= 0.5)
        m = evaluate(gt, results, protocol="livecell")
        print(f"| {name} | {100 * m['bbox']['AP']:.1f} | {100 * m['segm']['AP']:.1f} | "
              f"{sum(1 for i in annotated if not found[i])} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
