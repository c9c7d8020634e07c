"""COCO results: reading and checking a results JSON, and writing model outputs as results.

A COCO *results* file is a JSON list with one dict per detection::

    {"image_id": int, "category_id": int, "score": float,
     "bbox": [x, y, w, h],                                  # XYWH, pixels
     "segmentation": {"size": [H, W], "counts": "RLE..."}}  # compressed RLE

:func:`load_results` checks every entry against the ground truth and fails with one
line naming the file, the entry and the problem; :func:`cupre.masks.masks_to_results` turns one
image's model output (XYXY boxes, binary masks) into such entries. Polygons and
uncompressed RLE are accepted on reading and normalised to compressed RLE; a result
without ``bbox`` gets the box of its mask.
"""

from __future__ import annotations

import math
import reprlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_api
from pycocotools import mask as pycoco_mask

from cupre.errors import CupreError, CupreWarning, file_error
from cupre.evaluation.pairing import pair_by_name, result_names
from cupre.fileio import read_json
from cupre.masks import compressed, polygon_range_problem, rle_problem

REQUIRED_KEYS = ("image_id", "category_id", "score")


class SegmentationProblem(CupreError):
    """A result's segmentation cannot be used (skipped unless strict)."""


def load_results(path: str | Path, gt: dict, *, strict: bool = True) -> list[dict]:
    """Read a COCO results JSON file and check it against the ground truth; results of a
    ``cupre predict`` run (``images.json`` beside them) are paired with it by image name
    (:mod:`cupre.evaluation.pairing`).

    Args:
        path: JSON file holding a list of result dicts.
        gt: the COCO instances dict the results refer to (its ``images`` give the
            valid ``image_id`` values and each image's ``height``/``width``).

    Returns:
        New result dicts with ``image_id``, ``category_id``, ``score``, ``bbox`` (XYWH
        floats) and, when the file has one, ``segmentation`` as compressed RLE with a
        ``str`` counts.

    Raises:
        CupreError: one line naming ``path`` and the problem: missing file, not JSON,
            not a list, a missing key, an unknown ``image_id``, a bad ``bbox`` or
            ``score``, or a malformed segmentation.
    """
    path = Path(path)
    data = read_json(path, missing="results file not found")
    if not isinstance(data, list):
        raise file_error(path, f"a COCO results file is a JSON list of detections, found a {type(data).__name__}")
    names = result_names(path)
    if names is not None:
        data = pair_by_name(data, names, gt, source=path)
    return check_results(data, gt, source=path, strict=strict)


def check_results(results: Sequence[Any], gt: dict, *, source: str | Path = "results",
                  strict: bool = True) -> list[dict]:
    """Check result dicts against the ground truth; see :func:`load_results`.

    Args:
        results: the decoded results list.
        gt: COCO instances dict.
        source: the name used in error messages (the file).
        strict: a result whose segmentation is unusable is an error; otherwise it is
            warned about (the first ten, then a count) and skipped. Other problems (keys,
            ids, boxes, scores) are always errors.
    """
    sizes = {img["id"]: _image_size(img) for img in gt.get("images", [])}
    out, skipped = [], 0
    for i, r in enumerate(results):
        try:
            checked = _check_one(i, r, sizes, source)
            if "segmentation" in checked:
                h, w = checked["segmentation"]["size"]
                problem = rle_problem(checked["segmentation"], h, w)
                if problem:
                    raise SegmentationProblem(f"{_where(source, i, r)}: segmentation {problem}")
        except SegmentationProblem as exc:
            if strict:
                raise
            skipped += 1
            if skipped <= 10:
                warnings.warn(f"{exc} (skipped)", CupreWarning, stacklevel=2)
            continue
        out.append(checked)
    if skipped > 10:
        warnings.warn(f"{source}: {skipped - 10} more malformed result(s) skipped", CupreWarning, stacklevel=2)
    for r in out:
        if "bbox" not in r:
            r["bbox"] = [float(v) for v in mask_api.toBbox(r["segmentation"])]
    return out


def _image_size(image: dict) -> tuple[int, int] | None:
    height, width = image.get("height"), image.get("width")
    return (int(height), int(width)) if height and width else None


def _where(source: str | Path, index: int, result: Any) -> str:
    image = result.get("image_id") if isinstance(result, dict) else None
    return f"{source}: result #{index}" + (f" (image_id {image})" if image is not None else "")


def _check_one(index: int, result: Any, sizes: dict[int, tuple[int, int] | None], source: str | Path) -> dict:
    """Check and normalise one result dict (RLE counts are checked later, in bulk)."""
    where = _where(source, index, result)
    if not isinstance(result, dict):
        raise CupreError(f"{where}: expected a dict, found {type(result).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if "bbox" not in result and "segmentation" not in result:
        missing.append("bbox or segmentation")
    if missing:
        raise CupreError(f"{where}: missing key(s) {', '.join(missing)}")
    image_id, category_id = result["image_id"], result["category_id"]
    if not _is_int(image_id) or int(image_id) not in sizes:
        raise CupreError(f"{where}: image_id {image_id!r} is not an image of the ground truth")
    if not _is_int(category_id):
        raise CupreError(f"{where}: category_id {category_id!r} is not an integer")
    score = result["score"]
    if not _is_number(score) or not math.isfinite(score):
        raise CupreError(f"{where}: score {score!r} is not a finite number")
    out: dict = {"image_id": int(image_id), "category_id": int(category_id), "score": float(score)}
    if "bbox" in result:
        out["bbox"] = _check_bbox(result["bbox"], where)
    if "segmentation" in result:
        out["segmentation"] = _check_segmentation(result["segmentation"], sizes[int(image_id)], where)
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_bbox(bbox: Any, where: str) -> list[float]:
    ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
    if not ok or not all(math.isfinite(v) for v in bbox):
        raise CupreError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], found {reprlib.repr(bbox)}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise CupreError(f"{where}: bbox {list(bbox)} has a negative width or height (expected XYWH)")
    return [float(v) for v in bbox]


def _check_segmentation(segm: Any, size: tuple[int, int] | None, where: str) -> dict:
    """Normalise a result's segmentation to compressed RLE of the image's size."""
    if size is None:
        raise SegmentationProblem(f"{where}: the ground-truth image has no height/width to check the segmentation against")
    h, w = size
    if isinstance(segm, list):  # polygons
        polys_ok = all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_is_number(v) for v in p) for p in segm
        )
        if not segm or not polys_ok:
            raise SegmentationProblem(f"{where}: segmentation is neither an RLE dict nor a list of polygons [x1, y1, x2, ...]")
        problem = polygon_range_problem(segm, h, w)
        if problem:
            raise SegmentationProblem(f"{where}: {problem}")
        return compressed(pycoco_mask.merge(pycoco_mask.frPyObjects(segm, h, w)))
    if not isinstance(segm, dict) or "size" not in segm or "counts" not in segm:
        raise SegmentationProblem(f"{where}: segmentation must be an RLE dict with 'size' and 'counts'")
    rle_size = segm["size"]
    if not (isinstance(rle_size, (list, tuple)) and len(rle_size) == 2 and all(_is_int(v) for v in rle_size)):
        raise SegmentationProblem(f"{where}: segmentation size {rle_size!r} is not [height, width]")
    if [int(v) for v in rle_size] != [h, w]:
        raise SegmentationProblem(f"{where}: segmentation size {list(rle_size)} is not the image's [height, width] {[h, w]}")
    counts = segm["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts}
    if isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts):
        if sum(counts) != h * w:
            raise SegmentationProblem(f"{where}: uncompressed RLE counts cover {sum(counts)} pixels, the image has {h * w}")
        return compressed(pycoco_mask.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w))
    raise SegmentationProblem(f"{where}: segmentation counts must be an RLE string or a list of run lengths")
