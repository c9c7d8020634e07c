"""Detections of one image kept box-local: :class:`Objects` holds each mask cropped to
its own extent (never a full-size mask), and :func:`crop_output` turns a detector's
output into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from cupre.masks import crop_rle, masks_to_results


@dataclass
class Objects:
    """Detections of one image, each mask cropped to its own extent.

    Attributes:
        boxes: float32 ``Nx4`` XYXY boxes from the detector, in image pixels.
        scores: float32 ``N``.
        labels: int64 ``N`` model labels (1..C).
        origins: int64 ``Nx2`` ``(y0, x0)`` of each crop in the image.
        crops: ``N`` bool arrays ``h_i x w_i``; object ``i`` covers
            ``image[y0 + r, x0 + c]`` where ``crops[i][r, c]``.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    origins: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    crops: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crops)

    def select(self, index: np.ndarray) -> "Objects":
        """The objects at ``index`` (int indices or a bool mask), in that order."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        return Objects(self.boxes[index], self.scores[index], self.labels[index], self.origins[index],
                       [self.crops[i] for i in index.tolist()])

    def areas(self) -> np.ndarray:
        """int64 ``N`` pixel counts of the masks."""
        return np.array([int(c.sum()) for c in self.crops], dtype=np.int64)

    @staticmethod
    def concat(parts: Sequence["Objects"]) -> "Objects":
        if not parts:
            return Objects()
        return Objects(
            np.concatenate([p.boxes for p in parts]).astype(np.float32),
            np.concatenate([p.scores for p in parts]).astype(np.float32),
            np.concatenate([p.labels for p in parts]).astype(np.int64),
            np.concatenate([p.origins for p in parts]).astype(np.int64),
            [c for p in parts for c in p.crops],
        )


def crop_output(out: dict, *, origin: tuple[int, int] = (0, 0)) -> Objects:
    """One detector output -> :class:`Objects` in image coordinates.

    Args:
        out: ``boxes`` ``Nx4`` XYXY, ``scores`` ``N``, ``labels`` ``N`` and either the
            detector's box-local ``mask_crops`` / ``mask_origins`` or (any other detector)
            ``masks`` ``NxHxW`` (uint8/bool, or ``Nx1xHxW``) over the tile.
        origin: ``(y0, x0)`` of the tile in the image.

    Empty masks are dropped; scores were already thresholded in the RoI heads
    (:func:`cupre.inference.options.kept`).
    """
    if "mask_crops" in out:
        return _from_crops(out, origin=origin)
    masks = out["masks"]
    if masks.dim() == 4:
        masks = masks[:, 0]
    rows, cols = masks.any(dim=2).bool(), masks.any(dim=1).bool()  # NxH, NxW
    keep = torch.nonzero(rows.any(dim=1)).flatten()
    rows, cols = rows[keep], cols[keep]
    if keep.numel() == 0:
        return Objects()
    y0 = rows.byte().argmax(dim=1)
    y1 = rows.shape[1] - rows.flip(1).byte().argmax(dim=1)
    x0 = cols.byte().argmax(dim=1)
    x1 = cols.shape[1] - cols.flip(1).byte().argmax(dim=1)
    ext = torch.stack([y0, x0, y1, x1], dim=1).cpu().numpy()
    rows_in = keep.tolist()
    flat = torch.cat([masks[i, a:c, b:d].reshape(-1) for i, (a, b, c, d) in zip(rows_in, ext.tolist())])
    flat = flat.cpu().numpy() != 0
    sizes = (ext[:, 2] - ext[:, 0]) * (ext[:, 3] - ext[:, 1])
    pieces = np.split(flat, np.cumsum(sizes)[:-1])
    crops = [p.reshape(c - a, d - b) for p, (a, b, c, d) in zip(pieces, ext.tolist())]
    oy, ox = origin
    boxes = out["boxes"][keep].float().cpu().numpy() + np.array([ox, oy, ox, oy], np.float32)
    return Objects(
        boxes=boxes.astype(np.float32),
        scores=out["scores"][keep].float().cpu().numpy(),
        labels=out["labels"][keep].cpu().numpy().astype(np.int64),
        origins=(ext[:, :2] + np.array([oy, ox])).astype(np.int64),
        crops=crops,
    )


def _from_crops(out: dict, *, origin: tuple[int, int]) -> Objects:
    """Box-local detector masks, each trimmed to its own non-empty extent."""
    oy, ox = origin
    keep, origins, crops = [], [], []
    scores = out["scores"].float().cpu().numpy()
    starts = out["mask_origins"].cpu().numpy()
    for i, crop in enumerate(out["mask_crops"]):
        crop = crop.cpu().numpy()
        rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
        if rows.size == 0:
            continue
        keep.append(i)
        crops.append(crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy())  # frees the box window
        origins.append((starts[i][0] + rows[0] + oy, starts[i][1] + cols[0] + ox))
    if not keep:
        return Objects()
    index = torch.tensor(keep)
    boxes = out["boxes"][index].float().cpu().numpy() + np.array([ox, oy, ox, oy], np.float32)
    return Objects(
        boxes=boxes.astype(np.float32),
        scores=scores[keep].astype(np.float32),
        labels=out["labels"][index].cpu().numpy().astype(np.int64),
        origins=np.array(origins, dtype=np.int64).reshape(-1, 2),
        crops=crops,
    )


def objects_to_results(objs: Objects, kept: np.ndarray, *, image_id: int, height: int, width: int,
                       category_ids: Mapping[int, int] | None = None) -> list[dict]:
    """COCO results (``cupre evaluate --dt``) of the objects in the label image.

    Entry ``k - 1`` is label id ``k`` (also stored as ``object_id``); its mask is the
    detector's whole mask (overlaps allowed, as COCO evaluation expects), its ``bbox``
    the detector's box (XYWH). Model label ``l`` is written as ``category_ids[l]``
    (``l`` itself when missing).
    """
    sel = objs.select(kept)
    mapping = {int(v): int((category_ids or {}).get(int(v), v)) for v in np.unique(sel.labels)}
    results = masks_to_results(image_id, sel.boxes, sel.scores, sel.labels, None, category_ids=mapping)
    for k, (res, crop, origin) in enumerate(zip(results, sel.crops, sel.origins), start=1):
        res["segmentation"] = crop_rle(crop, tuple(origin), height, width)
        res["object_id"] = k
    return results
