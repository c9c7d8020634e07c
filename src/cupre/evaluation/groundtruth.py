"""Compute the COCO AP (box and mask) of a results JSON against ground truth.

The ground truth is a COCO instances JSON file or any dataset folder cupre reads. The
default protocol is LIVECell's: class-agnostic, up to 2000 detections per image, every
AP figure read at 2000 detections, cell-sized area ranges (small < 18^2 px, large >
31^2 px). --protocol coco gives the standard COCO figures. Undefined figures (no
ground truth in an area range) print as ``-`` and are written as -1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from cupre.errors import CupreWarning, file_error
from cupre.fileio import read_json
from cupre.masks import segmentation_problem


def load_ground_truth(path: Path, *, strict: bool = False) -> dict:
    """A COCO instances dict from a ``.json`` file, or from any dataset layout cupre reads.

    Every annotation's segmentation is checked before any evaluator sees it (polygons
    of fewer than 3 points, RLE counts that are truncated, negative or do not cover the
    image): such an annotation is warned about and skipped, or an error with ``strict``.
    """
    path = Path(path)
    if not path.exists():
        raise file_error(path, "ground truth not found")
    if path.is_file() and path.suffix.lower() == ".json":
        gt = read_json(path)
        _check_ground_truth(gt, path)
        gt["annotations"] = _usable_annotations(gt, path, strict=strict)
        return gt
    from cupre.data.convert import dataset_to_coco
    from cupre.data.formats import open_dataset

    return dataset_to_coco(open_dataset(path))


def _check_ground_truth(gt: object, path: Path) -> None:
    if not isinstance(gt, dict):
        raise file_error(path, "not a COCO instances file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise file_error(path, f"not a COCO instances file (no '{key}' list)")
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise file_error(path, f"images[{i}] has no 'id'")
    for i, ann in enumerate(gt["annotations"]):
        missing = [k for k in ("image_id", "category_id", "bbox") if not isinstance(ann, dict) or k not in ann]
        if missing:
            raise file_error(path, f"annotations[{i}] lacks {', '.join(missing)}")


def _usable_annotations(gt: dict, path: Path, *, strict: bool) -> list[dict]:
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in gt["images"]}
    kept, skipped = [], 0
    for i, ann in enumerate(gt["annotations"]):
        segm = ann.get("segmentation")
        height, width = sizes.get(ann["image_id"], (None, None))
        if isinstance(segm, dict) and isinstance(segm.get("size"), list) and (height is None or width is None):
            height, width = segm["size"]
        problem = None if segm is None else (
            segmentation_problem(segm, int(height), int(width)) if height and width
            else "the image has no height/width to check the segmentation against")
        if problem:
            skipped += 1
            if strict:
                raise file_error(path, f"annotations[{i}] (id {ann.get('id')!r}): {problem}")
            if skipped <= 10:
                warnings.warn(f"{path}: annotations[{i}] (id {ann.get('id')!r}): {problem} (skipped)", CupreWarning,
                              stacklevel=2)
            continue
        kept.append(ann)
    if skipped > 10:
        warnings.warn(f"{path}: {skipped - 10} more unusable annotation(s) skipped", CupreWarning, stacklevel=2)
    return kept
