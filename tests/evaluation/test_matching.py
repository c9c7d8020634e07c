"""AP@0.5, the Data Science Bowl score and the validated score threshold."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cupre.evaluation.matching import THRESHOLDS, best_threshold, matching_figures


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode()
    return out


def square(y: int, x: int, side: int = 10, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y:y + side, x:x + side] = True
    return m


def coco(objects: list[np.ndarray], kind: str = "a", image_id: int = 1) -> dict:
    return {"images": [{"id": image_id, "height": 64, "width": 64, "cell_type": kind}],
            "annotations": [{"id": k + 1, "image_id": image_id, "category_id": 1, "segmentation": rle(m),
                             "iscrowd": 0} for k, m in enumerate(objects)],
            "categories": [{"id": 1, "name": "cell"}]}


def result(mask: np.ndarray, score: float, image_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": 1, "segmentation": rle(mask), "score": score}


def test_counts_as_the_bowl_does():
    gt = coco([square(0, 0), square(30, 30), square(50, 0)])
    shifted = square(32, 30)  # IoU 80/120 = 0.667 with the second object
    results = [result(square(0, 0), 0.9), result(shifted, 0.8), result(square(0, 50), 0.7)]
    figures = matching_figures(gt, results, score_threshold=0.5)
    assert figures["AP50"] == pytest.approx(2 / 4)  # TP 2, FP 1, FN 1
    assert figures["F1"] == pytest.approx(4 / 6)
    # the exact match counts at every threshold, the shifted one up to 0.65
    tps = [2 if t <= 0.65 else 1 for t in THRESHOLDS]
    expected = [tp / (tp + (3 - tp) + (3 - tp)) for tp in tps]
    assert figures["DSB"] == pytest.approx(np.mean(expected))
    assert figures["per_cell_type"]["a"]["AP50"] == pytest.approx(0.5)
    # a higher threshold drops the false positive and the shifted object
    assert matching_figures(gt, results, score_threshold=0.85)["AP50"] == pytest.approx(1 / 3)


def test_an_empty_image_with_no_predictions_scores_one():
    assert matching_figures(coco([]), [], score_threshold=0.5)["DSB"] == 1.0
    assert matching_figures(coco([square(0, 0)]), [], score_threshold=0.5)["AP50"] == 0.0


def test_the_best_threshold_drops_confident_enough_false_positives():
    gt = coco([square(0, 0), square(30, 30)])
    results = [result(square(0, 0), 0.95), result(square(30, 30), 0.9), result(square(0, 50), 0.6),
               result(square(50, 50), 0.4)]
    threshold, figure = best_threshold(gt, results)
    assert 0.6 <= threshold < 0.9 and figure == pytest.approx(1.0)
