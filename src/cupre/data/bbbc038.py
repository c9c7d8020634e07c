"""BBBC038 / Data Science Bowl 2018 layout: one folder per image.

::

    stage1_train/
      <id>/images/<id>.png      grey, RGB or RGBA
      <id>/masks/<hash>.png     one binary PNG per nucleus
    summary.json                optional: [{"id", "shape", "kind", "n"}, ...]

The imaging kind in ``summary.json`` (``fluo_gray``, ``brightfield_color``,
``gray_brightbg``) becomes the cell type of each image. Records are sorted by id and
numbered 1..N. Folders without ``masks/`` (the stage-1 test set) have no instances.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from cupre.data.imageio import DECOMPRESSION_BOMB, IMAGE_SUFFIXES, Normalization, read_image
from cupre.data.label_images import image_size
from cupre.data.sample import (
    CELL_CATEGORIES,
    ImageRecord,
    InstanceDataset,
    RawInstances,
)
from cupre.errors import file_error, warn_or_raise
from cupre.fileio import not_regular, read_json

SUMMARY_NAME = "summary.json"


def load_summary(path: str | Path) -> dict[str, dict]:
    """``summary.json`` as ``{id: {"shape", "kind", "n", ...}}``.

    Raises:
        CupreError: the file is missing, not JSON, or not a list of ``{"id", "kind"}``.
    """
    path = Path(path)
    entries = read_json(path, missing="summary file not found")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
        raise file_error(path, "expected a JSON list of objects with 'id' and 'kind'")
    return {str(e["id"]): e for e in entries}


def find_summary(root: Path) -> Path | None:
    """``summary.json`` next to the image folder (``root.parent``) or inside it."""
    for candidate in (root.parent / SUMMARY_NAME, root / SUMMARY_NAME):
        if candidate.is_file():
            return candidate
    return None


def read_mask_png(path: Path) -> np.ndarray:
    """One binary mask file -> bool ``HxW`` (any nonzero pixel is foreground)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("1", "L", "I", "I;16", "F"):
                im = im.convert("L")
            return np.asarray(im) > 0
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, *DECOMPRESSION_BOMB) as exc:
        raise file_error(path, f"cannot read mask ({exc.__class__.__name__}: {exc})") from None


class Bbbc038Dataset(InstanceDataset):
    """The BBBC038 (DSB2018) layout; one category ("cell", shared by every cell reader).

    Args:
        root: the folder of ``<id>`` folders (e.g. ``stage1_train``).
        summary: ``summary.json`` giving each image's imaging kind; by default looked
            for next to ``root`` and inside it (no cell types when absent).
        class_agnostic: accepted for symmetry (there is one category anyway).
        strict: turn skipped-item warnings (empty, mis-sized or duplicated masks,
            folders without an image) into errors.
        norm: intensity normalisation of the images.
        transforms: optional ``(image, target) -> (image, target)``.
    """

    format_name = "bbbc038"

    def __init__(
        self,
        root: str | Path,
        *,
        summary: str | Path | None = None,
        class_agnostic: bool = False,
        strict: bool = False,
        norm: Normalization = Normalization(),
        transforms: Callable | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise file_error(root, "BBBC038 folder not found")
        self.strict = strict
        summary_path = Path(summary) if summary is not None else find_summary(root)
        self.summary = load_summary(summary_path) if summary_path is not None else {}
        records = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            image = _image_of(folder)
            if image is None:
                warn_or_raise(folder, f"no image in {folder.name}/images/", strict=strict)
                continue
            info = self.summary.get(folder.name, {})
            shape = info.get("shape") or (None, None)
            masks_dir = folder / "masks"
            if masks_dir.is_dir() and not any(masks_dir.iterdir()):
                warn_or_raise(masks_dir, "masks/ is empty: the image is read without nuclei", strict=strict,
                              skipped=False)
            extra = {"id": folder.name, "masks_dir": masks_dir if masks_dir.is_dir() else None}
            records.append(ImageRecord(len(records) + 1, image, info.get("kind"), shape[0], shape[1], None, extra))
        if not records:
            raise file_error(root, "no '<id>/images/<id>.png' folders found (not a BBBC038 layout)")
        super().__init__(
            records, list(CELL_CATEGORIES), transforms=transforms, norm=norm, class_agnostic=class_agnostic, root=root
        )

    def mask_files(self, index: int) -> list[Path]:
        """The mask PNGs of image ``index`` in sorted order (no decoding)."""
        masks_dir = self.records[index].extra["masks_dir"]
        if masks_dir is None:
            return []
        files = []
        for p in sorted(masks_dir.iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            kind = not_regular(p)
            if kind is not None:  # a named pipe would block the reader
                warn_or_raise(p, f"{kind}, not a mask file", strict=self.strict)
            else:
                files.append(p)
        return files

    def read_image_array(self, index: int) -> np.ndarray:
        return read_image(self.records[index].file)

    def read_raw(self, index: int) -> RawInstances:
        rec = self.records[index]
        height, width = image_size(rec.file)
        files = self.mask_files(index)
        masks = np.zeros((len(files), height, width), dtype=bool)
        keep = np.zeros(len(files), dtype=bool)
        seen: dict[bytes, Path] = {}  # a mask file copied twice is one nucleus, not two (as the COCO reader)
        for i, path in enumerate(files):
            mask = read_mask_png(path)
            if mask.shape != (height, width):
                problem = f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is {height}x{width}"
                warn_or_raise(path, problem, strict=self.strict)
            elif not mask.any():
                warn_or_raise(path, "mask is empty", strict=self.strict)
            elif (key := hashlib.sha1(np.packbits(mask)).digest()) in seen:
                warn_or_raise(path, f"the same mask as {seen[key].name}", strict=self.strict)
            else:
                seen[key] = path
                masks[i] = mask
                keep[i] = True
        masks = masks[keep] if not keep.all() else masks
        n = masks.shape[0]
        return RawInstances(masks=masks, labels=np.ones(n, dtype=np.int64), iscrowd=np.zeros(n, dtype=bool))


def _image_of(folder: Path) -> Path | None:
    """``<id>/images/<id>.png``, or the only image in ``<id>/images/``."""
    images = folder / "images"
    if not images.is_dir():
        return None
    preferred = images / f"{folder.name}.png"
    if preferred.is_file():
        return preferred
    found = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return found[0] if len(found) == 1 else None


__all__ = ["Bbbc038Dataset", "load_summary", "find_summary", "read_mask_png"]
