"""COCO instances JSON: COCO itself, LIVECell, EVICAN and the output of ``cupre convert``.

Segmentations may be polygons, uncompressed RLE (``counts`` a list) or compressed RLE
(``counts`` a string); all are decoded with :mod:`pycocotools.mask`, lazily, one image
at a time. Crowd regions (``iscrowd=1``) are kept by :meth:`CocoDataset.read_raw`,
flagged, and dropped from training targets by the base class. Original category ids
map to contiguous labels ``1..C`` in the order of the JSON's ``categories`` list, which
is kept as is so that a conversion round-trips.

Image files are looked up, in order: as an absolute path; under ``image_root``; next
to the JSON; in the COCO layout (``<root>/annotations/instances_val2017.json`` ->
``<root>/val2017/``); in ``images/`` next to the JSON or next to its folder.

The cell type of an image is its ``cell_type`` field when present; otherwise, only when
every file name follows the LIVECell pattern (``A172_Phase_C7_1_00d00h00m_1.tif``),
the part before the first underscore.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pycocotools import mask as mask_utils

from cupre.data.imageio import Normalization, read_image
from cupre.data.label_images import image_size
from cupre.data.sample import ImageRecord, InstanceDataset, RawInstances
from cupre.errors import file_error, warn_or_raise
from cupre.fileio import read_json
from cupre.masks import clean_polygons, is_number, rle_problem

LIVECELL_NAME = re.compile(r"^([A-Za-z0-9]+)_Phase_[A-Z]\d+_\d+_\d+d\d+h\d+m_\d+\.tiff?$")


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances JSON with one-line errors for every way it can be wrong."""
    path = Path(path)
    data = read_json(path, missing="annotation file not found")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise file_error(path, "not a COCO instances file (expected an object with an 'images' list)")
    if "annotations" not in data:
        warn_or_raise(path, "has no 'annotations': every image is read without instances", strict=False,
                      skipped=False)
    anns = data.get("annotations", [])
    if isinstance(anns, dict):  # LIVECell stores annotations as {id: annotation}
        anns = list(anns.values())
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise file_error(path, "'annotations' must be a list of objects")
    data["annotations"] = anns
    return data


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One COCO segmentation (polygons or RLE) -> bool ``HxW`` mask.

    Raises:
        ValueError: the segmentation cannot be decoded.
    """
    try:
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2: a harmless copy= warning
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"cannot decode segmentation ({exc})") from None


class CocoDataset(InstanceDataset):
    """A COCO instances JSON file and its images.

    Args:
        ann_file: the JSON file.
        image_root: folder the ``file_name`` s are relative to (found automatically in
            the usual layouts, see the module docstring).
        class_agnostic: map every category to the single category "cell".
        strict: turn skipped-item warnings (missing images, degenerate polygons, boxes
            outside the image, empty masks ...) into errors.
        norm: intensity normalisation of the images.
        transforms: optional ``(image, target) -> (image, target)``.
        cell_type_from_name: take the cell type from LIVECell-style file names: ``None``
            when every file name matches the LIVECell pattern, or always / never.

    Attributes:
        ann_file: the JSON file.
        info: the JSON's ``info`` entry (or None).
    """

    format_name = "coco"

    def __init__(
        self,
        ann_file: str | Path,
        *,
        image_root: str | Path | None = None,
        class_agnostic: bool = False,
        strict: bool = False,
        norm: Normalization = Normalization(),
        transforms: Callable | None = None,
        cell_type_from_name: bool | None = None,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.strict = strict
        data = load_coco_json(self.ann_file)
        self.info = data.get("info")
        categories = _categories(data.get("categories"), self.ann_file)
        entries = _image_entries(data["images"], self.ann_file)
        names_livecell = bool(entries) and all(LIVECELL_NAME.match(Path(e["file_name"]).name) for e in entries)
        use_names = names_livecell if cell_type_from_name is None else cell_type_from_name
        resolver = ImageResolver(self.ann_file, image_root)
        records = self._records(entries, resolver, use_names)
        self._index_annotations(data["annotations"], entries, records, categories)
        super().__init__(
            records,
            categories,
            transforms=transforms,
            norm=norm,
            class_agnostic=class_agnostic,
            root=resolver.found_dir,
        )

    def _records(self, entries: list[dict], resolver: "ImageResolver", use_names: bool) -> list[ImageRecord]:
        """One record per image whose file exists; the missing ones are warned about."""
        records, missing = [], []
        for entry in entries:
            name = entry["file_name"]
            cell_type = entry.get("cell_type")
            if not isinstance(cell_type, str) and use_names:
                match = LIVECELL_NAME.match(Path(name).name)
                cell_type = match.group(1) if match else Path(name).name.split("_")[0]
            elif not isinstance(cell_type, str):
                cell_type = None
            path = resolver.resolve(name, subfolder=cell_type)
            if path is None:
                missing.append(name)
                continue
            height, width = entry.get("height"), entry.get("width")
            if not (isinstance(height, int) and isinstance(width, int)):
                height, width = image_size(path)
            extra = {"annotations": [], "file_name": name}
            records.append(ImageRecord(entry["id"], path, cell_type, height, width, entry.get("page"), extra))
        if missing and not records:
            raise file_error(
                self.ann_file,
                f"none of the {len(missing)} image files found (e.g. {missing[0]}); looked in "
                f"{', '.join(str(d) for d in resolver.dirs)}; pass the image folder as image_root",
            )
        if missing:
            warn_or_raise(
                self.ann_file,
                f"{len(missing)} image file(s) not found (first: {missing[0]}); their annotations are skipped",
                strict=self.strict,
            )
        return records

    def _index_annotations(
        self, anns: list[dict], entries: list[dict], records: list[ImageRecord], categories: list[dict]
    ) -> None:
        """Check every annotation once and attach the valid ones to their image record."""
        by_id = {r.image_id: r for r in records}
        known_ids = {e["id"] for e in entries}
        checker = AnnotationChecker(self.ann_file, {c["id"] for c in categories}, strict=self.strict)
        seen: dict[tuple, Any] = {}
        for ann in anns:
            image_id = ann.get("image_id")
            if image_id not in known_ids:
                checker.problem(ann, f"points at image id {image_id!r}, which is not in 'images'")
                continue
            rec = by_id.get(image_id)
            if rec is None:  # image file missing: already warned about
                continue
            ann = checker.check(ann, rec.height, rec.width)
            if ann is None:
                continue
            key = (image_id, json.dumps(ann["segmentation"], sort_keys=True, default=str))
            if key in seen:
                checker.problem(ann, f"the same segmentation as annotation id {seen[key]!r} of image {image_id!r}")
                continue
            seen[key] = ann.get("id")
            rec.extra["annotations"].append(ann)
        checker.flush()
        self._label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}

    def read_image_array(self, index: int) -> np.ndarray:
        rec = self.records[index]
        arr = read_image(rec.file, page=rec.page)
        if arr.shape[:2] != (rec.height, rec.width):
            raise file_error(
                rec.file,
                f"image is {arr.shape[0]}x{arr.shape[1]} but {self.ann_file.name} says {rec.height}x{rec.width}",
            )
        return arr

    def read_raw(self, index: int) -> RawInstances:
        rec = self.records[index]
        masks, labels, crowd = [], [], []
        for ann in rec.extra["annotations"]:
            try:
                mask = decode_segmentation(ann["segmentation"], rec.height, rec.width)
            except ValueError as exc:
                warn_or_raise(self.ann_file, f"annotation id {ann.get('id')!r}: {exc}", strict=self.strict)
                continue
            if not mask.any():
                warn_or_raise(self.ann_file, f"annotation id {ann.get('id')!r}: mask is empty", strict=self.strict)
                continue
            masks.append(mask)
            labels.append(self._label_of[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        if not masks:
            return RawInstances.empty(rec.height, rec.width)
        return RawInstances(
            masks=np.stack(masks), labels=np.asarray(labels, dtype=np.int64), iscrowd=np.asarray(crowd, dtype=bool)
        )


class ImageResolver:
    """Finds the image file of a ``file_name``, remembering the folder that worked."""

    def __init__(self, ann_file: Path, image_root: str | Path | None) -> None:
        here = ann_file.resolve().parent
        dirs = [Path(image_root)] if image_root is not None else []
        dirs.append(here)
        split = ann_file.stem.split("_")[-1]  # instances_val2017 -> val2017
        if here.name == "annotations":
            dirs.append(here.parent / split)
        dirs += [here / "images", here.parent / "images", here.parent]
        self.dirs = list(dict.fromkeys(dirs))
        self.found_dir: Path | None = None

    def resolve(self, file_name: str, *, subfolder: str | None = None) -> Path | None:
        """The existing file for ``file_name`` (also tried in ``<dir>/<subfolder>/``), or None."""
        path = Path(file_name)
        if path.is_absolute():
            return path if path.is_file() else None
        dirs = ([self.found_dir] if self.found_dir is not None else []) + self.dirs
        for d in dirs:
            candidates = [d / path] + ([d / subfolder / path] if subfolder else [])
            for candidate in candidates:
                if candidate.is_file():
                    self.found_dir = d
                    return candidate
        return None


class AnnotationChecker:
    """Checks each annotation once, at load time, against its image.

    Problems are reported with :func:`warn_or_raise` (the annotation is skipped); after
    the first ``MAX_REPORTED`` the rest are only counted, and :meth:`flush` reports the
    count, so a systematically broken file does not print thousands of lines.
    """

    MAX_REPORTED = 10

    def __init__(self, path: Path, category_ids: set[int], *, strict: bool) -> None:
        self.path = path
        self.category_ids = category_ids
        self.strict = strict
        self.skipped = 0

    def problem(self, ann: dict, text: str) -> None:
        self.skipped += 1
        if self.strict or self.skipped <= self.MAX_REPORTED:
            warn_or_raise(self.path, f"annotation id {ann.get('id')!r}: {text}", strict=self.strict)

    def flush(self) -> None:
        extra = self.skipped - self.MAX_REPORTED
        if extra > 0:
            warn_or_raise(self.path, f"{extra} more annotation(s) with problems", strict=self.strict)

    def check(self, ann: dict, height: int, width: int) -> dict | None:
        """The annotation (polygons cleaned of degenerate parts), or None if skipped."""
        if ann.get("category_id") not in self.category_ids:
            self.problem(ann, f"unknown category_id {ann.get('category_id')!r}")
            return None
        if ann.get("iscrowd", 0) not in (0, 1):
            self.problem(ann, f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
            return None
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            seg, text = clean_polygons(seg, height, width)
        elif isinstance(seg, dict):
            text = rle_problem(seg, height, width)
        else:
            text = "has no segmentation (polygons or RLE)"
        text = text or _bbox_problem(ann.get("bbox"), height, width)
        if text:
            self.problem(ann, text)
            return None
        if seg is not ann["segmentation"]:
            ann = {**ann, "segmentation": seg}
        return ann


def _bbox_problem(bbox: Any, height: int, width: int) -> str | None:
    if bbox is None:
        return None
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        return f"bbox {bbox!r} is not [x, y, width, height]"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox {list(bbox)} has a negative size"
    if x >= width or y >= height or x + w < 0 or y + h < 0:
        return f"bbox {list(bbox)} lies outside the {width}x{height} image"
    return None


def _categories(categories: Any, path: Path) -> list[dict]:
    """The JSON's categories, validated, in their original order."""
    if not isinstance(categories, list) or not categories:
        raise file_error(path, "no 'categories' list (a COCO instances file names at least one category)")
    seen = set()
    for cat in categories:
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and not isinstance(cat.get("id"), bool)):
            raise file_error(path, f"category {cat!r} has no integer 'id'")
        if cat["id"] in seen:
            raise file_error(path, f"category id {cat['id']} appears twice")
        seen.add(cat["id"])
        cat.setdefault("name", str(cat["id"]))
    return categories


def _image_entries(images: list, path: Path) -> list[dict]:
    """The JSON's image entries, validated (integer id, string file_name, unique ids)."""
    seen = set()
    for entry in images:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise file_error(path, f"image entry {str(entry)[:80]} has no integer 'id'")
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            raise file_error(path, f"image id {entry['id']} has no 'file_name'")
        if entry["id"] in seen:
            raise file_error(path, f"image id {entry['id']} appears twice")
        seen.add(entry["id"])
    return images


