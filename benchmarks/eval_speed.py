"""Wall time of the LIVECell-protocol evaluation: faster-coco-eval (cupre) vs pycocotools.

A generated LIVECell-sized case: 50 images of 520x704 px, 300 cells each (ellipses of
radius 4..28 px, so all three area ranges are populated) and 1,000 detections per image
(90% of the cells, jittered, plus false positives), masks as compressed RLE. Both
evaluators run the LIVECell protocol (class-agnostic, maxDets 100/500/2000, areas
18^2/31^2) on bbox and segm; the script prints each wall time and the AP each gives.

    python benchmarks/eval_speed.py [--images 50] [--skip-pycocotools]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np
from pycocotools import mask as pycoco_mask

from cupre.evaluation.livecell import evaluate

H, W = 520, 704


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 24) -> list[float]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = cx + rx * np.cos(t) * np.cos(angle) - ry * np.sin(t) * np.sin(angle)
    y = cy + rx * np.cos(t) * np.sin(angle) + ry * np.sin(t) * np.cos(angle)
    return np.stack([np.clip(x, 0, W - 1), np.clip(y, 0, H - 1)], 1).ravel().tolist()


def rle_of_polygon(poly: list[float]) -> dict:
    rle = pycoco_mask.frPyObjects([poly], H, W)[0]
    return {"size": [H, W], "counts": rle["counts"].decode()}


def make_case(n_images: int, n_cells: int, n_dets: int, seed: int) -> tuple[dict, list[dict]]:
    """Ground truth (one category) and results with jittered true positives and false positives."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, n_images + 1):
        cell_type = f"T{image_id % 4}"
        images.append({"id": image_id, "height": H, "width": W, "file_name": f"{image_id}.tif", "cell_type": cell_type})
        for _ in range(n_cells):
            cx, cy, rx, ry, angle = rng.uniform(0, W), rng.uniform(0, H), *rng.uniform(4, 28, 2), rng.uniform(0, np.pi)
            rle = rle_of_polygon(ellipse_polygon(cx, cy, rx, ry, angle))
            bbox = pycoco_mask.toBbox({**rle, "counts": rle["counts"].encode()}).tolist()
            area = float(pycoco_mask.area({**rle, "counts": rle["counts"].encode()}))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                         "area": area, "bbox": bbox, "iscrowd": 0})
            if rng.random() < 0.9:
                jitter = rng.normal(0, 1.5, 2)
                scale = rng.uniform(0.85, 1.15, 2)
                poly = ellipse_polygon(cx + jitter[0], cy + jitter[1], rx * scale[0], ry * scale[1], angle)
                results.append(_result(image_id, poly, rng.uniform(0.3, 1.0)))
        n_true = sum(r["image_id"] == image_id for r in results)
        for _ in range(n_dets - n_true):
            poly = ellipse_polygon(rng.uniform(0, W), rng.uniform(0, H), *rng.uniform(3, 20, 2), rng.uniform(0, np.pi))
            results.append(_result(image_id, poly, rng.uniform(0.0, 0.8)))
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}, results


def _result(image_id: int, poly: list[float], score: float) -> dict:
    rle = rle_of_polygon(poly)
    bbox = pycoco_mask.toBbox({**rle, "counts": rle["counts"].encode()}).tolist()
    return {"image_id": image_id, "category_id": 1, "score": float(score), "bbox": bbox, "segmentation": rle}


def run_pycocotools(gt: dict, results: list[dict], iou_type: str) -> float:
    """LIVECell AP (at 2000 detections) from pycocotools' precision array."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        ev.params.maxDets = [100, 500, 2000]
        ev.params.areaRng = [[0, 1e10], [0, 18**2], [18**2, 31**2], [31**2, 1e10]]
        ev.params.areaRngLbl = ["all", "small", "medium", "large"]
        ev.evaluate()
        ev.accumulate()
    at = ev.eval["precision"][:, :, :, 0, 2]
    return float(np.mean(at[at > -1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--detections", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pycocotools", action="store_true")
    args = parser.parse_args()

    tic = time.perf_counter()
    gt, results = make_case(args.images, args.cells, args.detections, args.seed)
    print(f"case: {len(gt['images'])} images {H}x{W}, {len(gt['annotations'])} cells, {len(results)} detections "
          f"(generated in {time.perf_counter() - tic:.1f} s)")

    tic = time.perf_counter()
    metrics = evaluate(gt, results, protocol="livecell", breakdown=False)
    fast = time.perf_counter() - tic
    print(f"faster-coco-eval (cupre.evaluate, bbox+segm): {fast:7.1f} s   "
          f"AP bbox {metrics['bbox']['AP']:.4f}  segm {metrics['segm']['AP']:.4f}")
    tic = time.perf_counter()
    evaluate(gt, results, protocol="livecell", breakdown=True)
    print(f"  with the per-cell-type breakdown (4 types):  {time.perf_counter() - tic:7.1f} s")

    if not args.skip_pycocotools:
        tic = time.perf_counter()
        ap = {iou_type: run_pycocotools(gt, results, iou_type) for iou_type in ("bbox", "segm")}
        slow = time.perf_counter() - tic
        print(f"pycocotools      (bbox+segm):                 {slow:7.1f} s   "
              f"AP bbox {ap['bbox']:.4f}  segm {ap['segm']:.4f}   ({slow / fast:.1f}x slower)")


if __name__ == "__main__":
    main()
