"""Convert an annotated dataset of any supported layout to one COCO instances JSON.

The output holds compressed RLE masks, boxes and areas computed from the masks, the
original category ids, and each image's cell type where the format knows it. Image
file names are relative to the output's folder when the images lie under it, else
absolute. The JSON is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from cupre.data.sample import ImageRecord, InstanceDataset, masks_to_boxes


def encode_masks(masks: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Bool masks ``NxHxW`` -> compressed COCO RLEs (``counts`` as str), areas ``N`` and
    XYWH boxes ``Nx4``."""
    if masks.shape[0] == 0:
        return [], np.zeros(0), np.zeros((0, 4))
    # pycocotools wants HxWxN in Fortran order, i.e. N x W x H in C order: transpose
    # only each mask's box into a zeroed array instead of all N full images.
    n, height, width = masks.shape
    columns = np.zeros((n, width, height), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(masks_to_boxes(masks).astype(int)):
        columns[i, x0:x1, y0:y1] = masks[i, y0:y1, x0:x1].T
    rles = mask_utils.encode(columns.transpose(2, 1, 0))
    # pycocotools 2.0.11's ``area`` overflows on lists of 256 RLEs or more: chunk it.
    areas = np.concatenate([mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)])
    boxes = mask_utils.toBbox(rles)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles, areas, boxes


def dataset_to_coco(
    dataset: InstanceDataset, *, relative_to: str | Path | None = None, progress: bool = False
) -> dict[str, Any]:
    """A COCO instances dict of every image and instance (crowd regions included) of
    ``dataset``.

    Args:
        dataset: any reader.
        relative_to: write ``file_name`` relative to this folder for images under it
            (absolute for the others); all absolute when None.
        progress: show a progress bar.

    Returns:
        ``{"info", "images", "annotations", "categories"}``; images carry ``id``,
        ``file_name``, ``height``, ``width`` (and ``cell_type``, ``page`` when known);
        annotations carry compressed RLE ``segmentation``, ``area``, XYWH ``bbox``,
        ``iscrowd`` and the original ``category_id``.
    """
    if dataset.class_agnostic:
        categories = [dict(c) for c in dataset.categories]
        category_ids = [categories[0]["id"]] * (len(dataset.source_categories) + 1)
    else:
        categories = [dict(c) for c in dataset.source_categories]
        category_ids = [0] + [c["id"] for c in categories]
    images, annotations = [], []
    for index in tqdm(range(len(dataset)), desc="convert", unit="image", disable=None if progress else True):
        rec = dataset.records[index]
        raw = dataset.read_raw(index)
        height, width = raw.masks.shape[1:]
        images.append(_image_entry(rec, height, width, relative_to))
        rles, areas, boxes = encode_masks(raw.masks)
        for rle, area, box, label, crowd in zip(rles, areas, boxes, raw.labels, raw.iscrowd):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": rec.image_id,
                    "category_id": category_ids[int(label)],
                    "segmentation": rle,
                    "area": int(area),
                    "bbox": [float(v) for v in box],
                    "iscrowd": int(crowd),
                }
            )
    source = getattr(dataset, "ann_file", None) or dataset.root or ""
    info = {"description": f"converted by cupre from {dataset.format_name} ({source})"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _image_entry(rec: ImageRecord, height: int, width: int, relative_to: str | Path | None) -> dict[str, Any]:
    file = Path(rec.file).resolve()
    name = str(file)
    if relative_to is not None:
        base = Path(relative_to).resolve()
        if file.is_relative_to(base):
            name = file.relative_to(base).as_posix()
    entry: dict[str, Any] = {"id": rec.image_id, "file_name": name, "height": int(height), "width": int(width)}
    if rec.cell_type is not None:
        entry["cell_type"] = rec.cell_type
    if rec.page is not None:
        entry["page"] = rec.page
    return entry
