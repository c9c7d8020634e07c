"""Masks as COCO run-length encodings, shared by evaluation, prediction and the reports.

Compressed RLE (``{"size": [H, W], "counts": str}``) is what COCO results files and
faster-coco-eval / pycocotools read. :func:`masks_to_results` encodes a detector's masks,
:func:`crop_rle` a box-local mask crop without building the full-size mask, and
:func:`segmentation_to_rle` reads any COCO segmentation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import faster_coco_eval.mask_api_new_cpp as rle_api  # the C++ RLE codec: run lengths without masks
import numpy as np
from pycocotools import mask as pycoco_mask


def masks_to_results(
    image_id: int,
    boxes: Any,
    scores: Any,
    labels: Any,
    masks: Any | None,
    category_ids: Sequence[int] | Mapping[int, int] | None = None,
) -> list[dict]:
    """Encode one image's detections as COCO result dicts (compressed RLE masks).

    Args:
        image_id: the COCO ``id`` of the image.
        boxes: ``Nx4`` XYXY boxes in pixels (tensor or ndarray).
        scores: ``N`` confidences.
        labels: ``N`` integer class labels of the model.
        masks: ``NxHxW`` (or ``Nx1xHxW``) masks: bool/integer masks are used as they
            are, float masks are thresholded at 0.5; ``None`` writes box-only results.
        category_ids: COCO ``category_id`` of each label. A sequence is read in the
            torchvision convention, label 0 being the background: label ``l`` is
            written as ``category_ids[l - 1]``; a mapping is read as
            ``category_ids[l]``; ``None`` writes the label itself.

    Returns:
        ``N`` dicts with ``image_id``, ``category_id``, ``score``, ``bbox`` (XYWH) and,
        with masks, ``segmentation`` ``{"size": [H, W], "counts": str}``.
    """
    boxes = _numpy(boxes).reshape(-1, 4).astype(np.float64)
    scores, labels = _numpy(scores).reshape(-1), _numpy(labels).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes, scores and labels differ in length: {len(boxes)}, {len(scores)}, {len(labels)}")
    rles = _encode_masks(masks, len(boxes)) if masks is not None else None
    out = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        result = {
            "image_id": int(image_id),
            "category_id": _category_id(int(labels[i]), category_ids),
            "score": float(scores[i]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        out.append(result)
    return out


def _category_id(label: int, category_ids: Sequence[int] | Mapping[int, int] | None) -> int:
    if category_ids is None:
        return label
    if isinstance(category_ids, Mapping):
        if label not in category_ids:
            raise ValueError(f"label {label} has no entry in category_ids {dict(category_ids)}")
        return int(category_ids[label])
    if not 1 <= label <= len(category_ids):
        raise ValueError(f"label {label} outside 1..{len(category_ids)} (0 is the background)")
    return int(category_ids[label - 1])


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _encode_masks(masks: Any, n: int) -> list[dict]:
    masks = _numpy(masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[0] != n:
        raise ValueError(f"masks must be {n}xHxW, found shape {masks.shape}")
    binary = masks > 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
    if n == 0:
        return []
    encoded = pycoco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    return [compressed(rle) for rle in encoded]


def compressed(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def crop_rle(crop: np.ndarray, origin: tuple[int, int], height: int, width: int) -> dict:
    """Compressed COCO RLE of a cropped mask placed at ``origin = (y0, x0)`` in an
    ``height x width`` image, without building the full-size mask.

    RLE runs go down the columns (Fortran order); the crop's foreground pixels in that
    order have image indices ``(x0 + c) * H + (y0 + r)``, increasing, so runs are where
    consecutive indices differ by one.
    """
    y0, x0 = int(origin[0]), int(origin[1])
    cols, rows = np.nonzero(crop.T)  # Fortran order of the crop
    pos = (cols.astype(np.int64) + x0) * height + rows + y0
    if pos.size == 0:
        counts = [height * width]
    else:
        breaks = np.flatnonzero(np.diff(pos) != 1) + 1
        starts = pos[np.concatenate([[0], breaks])]
        ends = pos[np.concatenate([breaks - 1, [pos.size - 1]])] + 1
        gaps = starts - np.concatenate([[0], ends[:-1]])
        runs = np.stack([gaps, ends - starts], axis=1).reshape(-1)
        counts = runs.tolist() + [int(height * width - ends[-1])]
    rle = pycoco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        return pycoco_mask.merge(pycoco_mask.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return pycoco_mask.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why a COCO segmentation cannot be used on a ``height x width`` image, or None."""
    if isinstance(segmentation, list):
        return clean_polygons(segmentation, height, width)[1]
    if isinstance(segmentation, dict):
        return rle_problem(segmentation, height, width)
    return "segmentation is neither polygons nor an RLE"


def clean_polygons(seg: list, height: int | None = None, width: int | None = None) -> tuple[list, str | None]:
    """Drop polygon parts with fewer than 3 points or zero area; problem if none is left,
    or (given the image's size) if a point lies far outside the image."""
    parts = []
    for poly in seg:
        if not isinstance(poly, list) or not all(is_number(v) for v in poly):
            return seg, "segmentation is neither a list of polygons nor an RLE"
    if height is not None and width is not None:
        problem = polygon_range_problem(seg, height, width)
        if problem:
            return seg, problem
    for poly in seg:
        if len(poly) >= 6 and len(poly) % 2 == 0:
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1)))
            if area > 0:
                parts.append(poly)
    if not parts:
        return seg, "degenerate polygon (fewer than 3 points or zero area)"
    return (seg if len(parts) == len(seg) else parts), None


def polygon_range_problem(seg: list, height: int, width: int) -> str | None:
    """A point of the polygons (lists of finite numbers ``[x1, y1, x2, ...]``) beyond the
    ``height x width`` image by more than its size, or None. pycocotools rasterises
    polygons at their coordinates' scale: a point at 1e9 makes it crash (SIGSEGV, or
    ``vector::reserve``), not clip."""
    for poly in seg:
        xy = np.asarray(poly, dtype=np.float64)
        xs, ys = xy[0::2], xy[1::2]
        bad = (xs < -width) | (xs > 2 * width)
        bad[: ys.size] |= (ys < -height) | (ys > 2 * height)
        if bad.any():
            k = int(np.argmax(bad))
            y = ys[k] if k < ys.size else float("nan")
            return f"polygon point ({xs[k]:g}, {y:g}) lies far outside the {height}x{width} image"
    return None


def rle_problem(seg: dict, height: int, width: int) -> str | None:
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        return "RLE has no 'size' [height, width]"
    if list(size) != [height, width]:
        return f"RLE size {list(size)} differs from the image size [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, expected {height * width}"
    elif isinstance(counts, (str, bytes)):
        runs = compressed_runs({"size": [height, width], "counts": counts})
        if runs is None:
            return "RLE counts string cannot be decoded (truncated or corrupt)"
        if sum(runs) != height * width:
            return f"RLE counts string covers {sum(runs)} pixels, the image {height * width}"
    else:
        return "RLE 'counts' is neither a list nor a string"
    return None


def compressed_runs(rle: dict) -> list[int] | None:
    """The run lengths of a compressed RLE (decoded in C++, no mask made), or None when
    the string is malformed."""
    counts = rle["counts"]
    text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
    try:
        return list(rle_api.toUncompressedRLE([{"size": list(rle["size"]), "counts": text}])[0]["counts"])
    except (RuntimeError, ValueError):
        return None
