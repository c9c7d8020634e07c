"""Object matching figures, as Cellpose, StarDist and the 2018 Data Science Bowl count them.

COCO AP ranks every detection by score; a user sees only the objects above a score
threshold. These figures score those objects: per image, predicted and ground-truth
masks are matched one to one (the assignment of largest total IoU, as StarDist's
``matching``), a match counts as a true positive at IoU threshold ``t`` when its IoU
reaches ``t``, and

* ``AP50`` (Cellpose's and StarDist's "AP" at 0.5): ``TP / (TP + FP + FN)`` at ``t = 0.5``;
* ``DSB``: the Data Science Bowl score, the mean of ``TP / (TP + FP + FN)`` over
  ``t = 0.50, 0.55, ..., 0.95``;
* ``F1``: ``2 TP / (2 TP + FP + FN)`` at ``t = 0.5``.

Each is the mean over images (the Bowl's rule; an image with no objects and no
predictions scores 1). Crowd regions of the ground truth are left out of matching, and
a prediction lying mostly (over half its area) inside one is neither a TP nor an FP.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from cupre.masks import segmentation_to_rle

THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)
FIGURES = ("AP50", "DSB", "F1")


class ImageMatch:
    """One image's predictions (by descending score) against its ground truth: the IoU
    matrix is computed once and every score threshold reads a prefix of its rows."""

    def __init__(self, gt_rles: list, pred_rles: list, pred_scores, crowd_rles: list = ()) -> None:
        order = np.argsort(-np.asarray(pred_scores, dtype=float), kind="stable")
        pred_rles = [pred_rles[i] for i in order]
        self.scores = np.asarray(pred_scores, dtype=float)[order]
        if pred_rles and crowd_rles:  # a prediction mostly inside a crowd region counts neither way
            inside = np.asarray(mask_utils.iou(pred_rles, list(crowd_rles), [1] * len(crowd_rles)))
            keep = inside.reshape(len(pred_rles), -1).max(axis=1) <= 0.5
            pred_rles, self.scores = [r for r, k in zip(pred_rles, keep) if k], self.scores[keep]
        self.n_gt = len(gt_rles)
        self.iou = (np.asarray(mask_utils.iou(pred_rles, gt_rles, [0] * self.n_gt)).reshape(len(pred_rles), self.n_gt)
                    if pred_rles and gt_rles else np.zeros((len(pred_rles), self.n_gt)))

    def counts(self, score_threshold: float) -> np.ndarray:
        """``(len(THRESHOLDS), 3)``: TP, FP, FN at each IoU threshold, for the predictions
        scoring above ``score_threshold``."""
        n_pred = int((self.scores > score_threshold).sum())
        counts = np.zeros((len(THRESHOLDS), 3), dtype=np.int64)
        if not self.n_gt or not n_pred:
            counts[:, 1], counts[:, 2] = n_pred, self.n_gt
            return counts
        iou = self.iou[:n_pred]
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols]
        for k, t in enumerate(THRESHOLDS):
            tp = int((matched >= t - 1e-9).sum())
            counts[k] = (tp, n_pred - tp, self.n_gt - tp)
        return counts


def scores(counts: np.ndarray) -> dict[str, float]:
    """``AP50``, ``DSB`` and ``F1`` of one image's counts."""
    tp, fp, fn = counts[:, 0].astype(float), counts[:, 1].astype(float), counts[:, 2].astype(float)
    total = tp + fp + fn
    ratio = np.where(total > 0, tp / np.maximum(total, 1), 1.0)
    f1 = 1.0 if total[0] == 0 else 2 * tp[0] / (2 * tp[0] + fp[0] + fn[0])
    return {"AP50": float(ratio[0]), "DSB": float(ratio.mean()), "F1": float(f1)}


def match_images(gt: dict, results: list[dict]) -> dict[int, ImageMatch]:
    """An :class:`ImageMatch` per image of ``gt`` (results with masks only)."""
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    objects, crowds = defaultdict(list), defaultdict(list)
    for ann in gt["annotations"]:
        if ann.get("segmentation") and ann["image_id"] in sizes:
            rle = segmentation_to_rle(ann["segmentation"], *sizes[ann["image_id"]])
            (crowds if ann.get("iscrowd") else objects)[ann["image_id"]].append(rle)
    predicted, pred_scores = defaultdict(list), defaultdict(list)
    for r in results:
        if "segmentation" in r and r["image_id"] in sizes:
            predicted[r["image_id"]].append(segmentation_to_rle(r["segmentation"], *sizes[r["image_id"]]))
            pred_scores[r["image_id"]].append(float(r["score"]))
    return {i: ImageMatch(objects[i], predicted[i], pred_scores[i], crowds[i]) for i in sizes}


def matching_figures(gt: dict, results: list[dict], *, score_threshold: float,
                     matches: dict[int, ImageMatch] | None = None) -> dict:
    """The figures of the results scoring above ``score_threshold`` (each the mean over
    images), overall and per ``cell_type`` of the images.

    Returns:
        ``{"score_threshold", "AP50", "DSB", "F1", "per_cell_type": {type: {...}}}``.
    """
    matches = match_images(gt, results) if matches is None else matches
    per_image = {i: scores(m.counts(score_threshold)) for i, m in matches.items()}
    out: dict = {"score_threshold": score_threshold, **_mean(per_image.values())}
    kinds = defaultdict(list)
    for img in gt["images"]:
        if img.get("cell_type") is not None:
            kinds[str(img["cell_type"])].append(per_image[img["id"]])
    out["per_cell_type"] = {k: _mean(v) for k, v in sorted(kinds.items())}
    return out


def _mean(rows) -> dict[str, float]:
    rows = list(rows)
    return {f: float(np.mean([r[f] for r in rows])) if rows else -1.0 for f in FIGURES}


CANDIDATES = tuple(float(t) for t in np.round(np.arange(0.3, 0.96, 0.05), 2))


def best_threshold(gt: dict, results: list[dict], candidates=CANDIDATES, *,
                   matches: dict[int, ImageMatch] | None = None) -> tuple[float, float]:
    """The score threshold whose objects give the highest ``AP50`` (TP / (TP + FP + FN) at
    IoU 0.5) on ``gt``, and that figure: the validated threshold StarDist stores with its
    model. The lowest of equal ones wins."""
    matches = match_images(gt, results) if matches is None else matches
    best = (float(candidates[0]), -1.0)
    for t in candidates:
        figure = matching_figures(gt, results, score_threshold=float(t), matches=matches)["AP50"]
        if figure > best[1] + 1e-12:
            best = (float(t), figure)
    return best
