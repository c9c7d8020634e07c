"""Pseudo-labels: a trained model's confident masks on unlabeled images, as a COCO dataset.

The teacher segments every unlabeled image at its object scale (:func:`cupre.scale.detect`,
the rule of ``cupre predict``) and again flipped (``views``), at the same scale. An object
of the plain view is **kept** when its score, averaged over the views (0 for a view that
did not find it), reaches ``keep_score`` and each flipped view holds a mask overlapping
it by ``agree_iou`` (mask IoU) or more: score and mask agree across the augmentations,
as STAC and Unbiased Teacher filter by score and Noisy Student by agreement. An object
scoring ``uncertain_score`` or more that is not kept (and whose mask is not empty) is **uncertain**: it is written as
a crowd region (``iscrowd: 1``), which training counts neither as an object nor as
background (:mod:`cupre.models.heads.ignore`). Everything else the teacher left is
background.

The output is a COCO instances file whose ``file_name`` s are the images' absolute paths
(``page`` for a frame of a multi-page file), so any cupre reader opens it and a user can
look at it in the tools that read COCO.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_api
from tqdm import tqdm

from cupre.fileio import write_json_atomic
from cupre.masks import crop_rle
from cupre.scale import detect

VIEWS = ("hflip", "vflip")


@dataclass(frozen=True)
class Thresholds:
    """What makes a pseudo-label (see the module docstring)."""

    keep_score: float = 0.7
    agree_iou: float = 0.5
    uncertain_score: float = 0.3


def flip(image: torch.Tensor, view: str) -> torch.Tensor:
    """``image`` (``...xHxW``) as ``view`` shows it; flips are their own inverse."""
    return image.flip(-1) if view == "hflip" else image.flip(-2)


def unflip(out: dict, view: str, height: int, width: int) -> dict:
    """Detections of the ``view`` of an ``height x width`` image, in the image's pixels."""
    boxes = out["boxes"].float().cpu().clone()
    origins = out["mask_origins"].cpu().clone()
    crops = []
    for k, crop in enumerate(out["mask_crops"]):
        crop = crop.cpu()
        if view == "hflip":
            boxes[k, [0, 2]] = width - boxes[k, [2, 0]]
            origins[k, 1] = width - origins[k, 1] - crop.shape[1]
        else:
            boxes[k, [1, 3]] = height - boxes[k, [3, 1]]
            origins[k, 0] = height - origins[k, 0] - crop.shape[0]
        crops.append(flip(crop, view))
    return {"boxes": boxes, "scores": out["scores"].float().cpu(), "mask_origins": origins, "mask_crops": crops}


def encode(out: dict, height: int, width: int) -> list[dict]:
    """Each detection's mask as compressed RLE (from its box-local crop)."""
    return [crop_rle(c.cpu().numpy(), o, height, width) for c, o in zip(out["mask_crops"], out["mask_origins"].tolist())]


def agreement(plain: list[dict], scores: np.ndarray, views: list[tuple[list[dict], np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per object of the plain view: its score averaged over all views (a view's score
    is that of its best-overlapping mask, 0 without one) and the lowest, over the flipped
    views, of its best mask IoU. ``views``: (RLEs, scores) of each flipped view."""
    n = len(plain)
    total, lowest = scores.astype(np.float64).copy(), np.ones(n)
    for rles, view_scores in views:
        if not n:
            break
        if not rles:
            lowest[:] = 0.0
            continue
        iou = np.asarray(mask_api.iou(plain, rles, [0] * len(rles))).reshape(n, len(rles))
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(n), best]
        total += np.where(best_iou > 0, view_scores[best], 0.0)
        lowest = np.minimum(lowest, best_iou)
    return total / (1 + len(views)), lowest


@torch.no_grad()
def pseudo_label(model: torch.nn.Module, images, *, device: torch.device, thresholds: Thresholds = Thresholds(),
                 views: Sequence[str] = VIEWS, batch_size: int = 2, progress: bool = True) -> dict:
    """Pseudo-labels of every item of ``images`` (:class:`cupre.data.unlabeled.UnlabeledImages`).

    Returns:
        A COCO instances dict: ``images`` (absolute ``file_name``, ``page``, size),
        ``annotations`` (RLE ``segmentation``, ``bbox``, ``area``, ``iscrowd`` 1 for the
        uncertain ones, and the ``score`` and ``agreement`` they were judged on),
        ``categories`` (one: cell).
    """
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"views: {unknown} unknown; choose among {', '.join(VIEWS)}")
    was_training = model.training
    model.eval()
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    for start in tqdm(range(0, len(images), batch_size), desc="pseudo-labels", leave=False, dynamic_ncols=True,
                      disable=not progress):
        ids = range(start, min(start + batch_size, len(images)))
        batch = [images[i].to(device) for i in ids]
        outs, factors = detect(model, batch)
        flipped = {v: model([flip(im, v) for im in batch], scales=factors) for v in views}
        for k, (i, image, out) in enumerate(zip(ids, batch, outs)):
            height, width = (int(s) for s in image.shape[-2:])
            path, page = images.items[i]
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": str(Path(path).resolve()), "height": height,
                                   "width": width, **({"page": page} if page is not None else {})})
            scores = out["scores"].float().cpu().numpy()
            has_mask = np.array([bool(c.any()) for c in out["mask_crops"]], dtype=bool).reshape(-1)
            candidates = np.flatnonzero((scores >= thresholds.uncertain_score) & has_mask)
            plain = encode({"mask_origins": out["mask_origins"][candidates],
                            "mask_crops": [out["mask_crops"][j] for j in candidates]}, height, width)
            others = []
            for v in views:
                seen = unflip(flipped[v][k], v, height, width)
                others.append((encode(seen, height, width), seen["scores"].numpy()))
            mean_score, agree = agreement(plain, scores[candidates], others)
            for j, rle, s, a in zip(candidates, plain, mean_score, agree):
                kept = s >= thresholds.keep_score and a >= thresholds.agree_iou
                x0, y0, w, h = (float(v) for v in mask_api.toBbox(rle))
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                    "segmentation": rle, "bbox": [x0, y0, w, h], "area": float(mask_api.area(rle)),
                    "iscrowd": 0 if kept else 1, "score": float(scores[j]), "agreement": round(float(a), 4),
                    "mean_score": round(float(s), 4)})
    model.train(was_training)
    return coco


def counts(coco: dict) -> dict[str, int]:
    """How many images, kept and uncertain objects a pseudo-label dict holds."""
    kept = sum(1 for a in coco["annotations"] if not a["iscrowd"])
    return {"images": len(coco["images"]), "kept": kept, "uncertain": len(coco["annotations"]) - kept}


def write_pseudo_labels(coco: dict, path: str | Path) -> Path:
    """Write the pseudo-label dict atomically (a COCO instances JSON)."""
    return write_json_atomic(path, coco)
