"""AP and time of a trained model evaluated in fp32 and in bf16, on the same images.

The evaluation is the one fine-tuning validates with (the object-scale rule, LIVECell
protocol): ``cupre.evaluation.model_eval.predict_dataset`` then
``cupre.evaluation.livecell.evaluate``; only ``model.precision`` differs between the runs.

    python benchmarks/precision_ap.py MODEL DATA [--split SPLIT.json] [--limit N] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from cupre.data.convert import dataset_to_coco
from cupre.data.formats import open_dataset
from cupre.data.splits import load_split
from cupre.devices import set_threads
from cupre.evaluation.livecell import evaluate
from cupre.evaluation.model_eval import predict_dataset
from cupre.models.loading import build_from_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model.safetensors")
    parser.add_argument("data", help="an annotated dataset (any layout cupre reads)")
    parser.add_argument("--split", help="split JSON whose image_ids select the images")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    data = open_dataset(args.data, class_agnostic=True)
    ids = load_split(args.split)["image_ids"] if args.split else [r.image_id for r in data.records]
    data = data.subset(ids[: args.limit] if args.limit else ids)
    gt = dataset_to_coco(data)
    model, _, _ = build_from_file(args.model)
    model.eval()
    print(f"{args.model}: {len(data)} images, cpu, {threads} threads")
    for precision in ("fp32", "bf16"):
        model.precision = precision
        start = time.perf_counter()
        with torch.no_grad():
            results = predict_dataset(model, data, device=torch.device("cpu"))
        seconds = time.perf_counter() - start
        metrics = evaluate(gt, results)
        print(f"{precision}: AP_bbox {100 * metrics['bbox']['AP']:.2f}  AP_segm {100 * metrics['segm']['AP']:.2f}  "
              f"({seconds:.1f} s, {len(results)} detections)", flush=True)


if __name__ == "__main__":
    main()
