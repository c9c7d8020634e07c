"""Unlabeled cell images for MoCo: files, folders and the images of labeled datasets.

Every frame is one item: a multi-page TIFF gives one item per page. Walking a folder
skips what is a label rather than an image: ``*_masks.*`` files (Cellpose / StarDist),
``masks/`` folders (BBBC038), and ``man_seg*`` / ``man_track*`` files (Cell Tracking
Challenge truth). A COCO ``.json`` among the paths stands for the images it lists.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import Dataset

from cupre.data.imageio import (
    IMAGE_SUFFIXES,
    Normalization,
    count_pages,
    normalize,
    read_image,
)
from cupre.data.label_images import MASK_SUFFIXES
from cupre.errors import CupreError, CupreWarning, file_error, warn_or_raise
from cupre.fileio import link_above

LABEL_FOLDERS = {"masks"}
LABEL_PREFIXES = ("man_seg", "man_track")


def is_label_file(path: Path) -> bool:
    """True for files that hold labels, not images, in the layouts cupre reads."""
    stem = path.stem.lower()
    return stem.endswith(MASK_SUFFIXES) or stem.startswith(LABEL_PREFIXES) or path.parent.name in LABEL_FOLDERS


def walk_images(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Image files (and OME-Zarr image folders) under ``folder`` (sorted), label files and
    hidden entries skipped; linked folders are followed, but not a link to a folder that
    holds ``folder`` (:func:`cupre.fileio.link_above`: a warning says it)."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):  # linked folders are walked too (once each)
        real = os.path.realpath(root)
        for name in [d for d in dirs if link_above(Path(root) / d, folder)]:
            dirs.remove(name)
            warnings.warn(f"{Path(root) / name}: a link to {os.path.realpath(Path(root) / name)}, which holds "
                          f"{folder}; not followed (it would walk out of the folder)", CupreWarning, stacklevel=2)
        zarrs = [d for d in dirs if d.lower().endswith(".zarr") and not d.startswith(".")]  # OME-Zarr images
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in zarrs] \
            if recursive and real not in seen else []
        if real in seen:
            continue
        seen.add(real)
        found += [Path(root) / d for d in zarrs if not is_label_file(Path(root) / d)]
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() \
                    and not is_label_file(path):
                found.append(path)
    return sorted(found)


class UnlabeledImages(Dataset):
    """Image tensors from files and folders, one item per frame.

    Args:
        paths: image files, folders (walked, see :func:`walk_images`) or COCO JSON files.
        recursive: walk sub-folders too.
        norm: intensity normalisation (:func:`cupre.data.imageio.normalize`).
        transform: optional callable applied to the ``3xHxW`` tensor (e.g. MoCo's
            two-view augmentation).
        strict: a file that cannot be read while listing frames is an error instead
            of a warning and a skip.
        exclude: image files never to use (e.g. a labeled set's validation and test
            images, which must stay unseen by pre-training).

    Items are float32 tensors ``3xHxW`` in [0, 1] (or whatever ``transform`` returns).

    Attributes:
        items: ``(file, page)`` per item; ``page`` is None for single-frame files.
        excluded: how many of the listed files ``exclude`` removed.
    """

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        *,
        recursive: bool = True,
        norm: Normalization = Normalization(),
        transform: Callable | None = None,
        strict: bool = False,
        exclude: Iterable[str | Path] = (),
    ) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        files: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                files += walk_images(p, recursive=recursive)
            elif p.is_file() and p.suffix.lower() == ".json":
                files += _coco_files(p)
            elif p.is_file():
                files.append(p)
            else:
                raise file_error(p, "image file or folder not found")
        held_out = {Path(p).resolve() for p in exclude}
        kept = [f for f in files if f.resolve() not in held_out]
        self.excluded = len(files) - len(kept)  # files the exclusion removed
        files = kept
        self.items = _expand_pages(files, strict=strict)
        if not self.items:
            raise file_error(", ".join(map(str, paths)), "no images found")
        self.norm = norm
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        path, page = self.items[index]
        image = normalize(read_image(path, page=page), self.norm).to(torch.float32)
        if self.transform is not None:
            image = self.transform(image)
        return image


def _expand_pages(files: list[Path], *, strict: bool) -> list[tuple[Path, int | None]]:
    """``(file, page)`` for every frame; unreadable files are warned about and skipped."""
    items: list[tuple[Path, int | None]] = []
    for path in files:
        try:
            pages = count_pages(path)
        except CupreError as exc:
            warn_or_raise(path, str(exc).removeprefix(f"{path}: "), strict=strict)
            continue
        except IndexError:  # imageio.count_pages on a TIFF without any image
            warn_or_raise(path, "cannot read TIFF (no image data)", strict=strict)
            continue
        items += [(path, None)] if pages == 1 else [(path, k) for k in range(pages)]
    return items


def _coco_files(ann_file: Path) -> list[Path]:
    """The image files a COCO JSON lists (found as :class:`CocoDataset` finds them)."""
    from cupre.data.coco import CocoDataset

    return [r.file for r in CocoDataset(ann_file).records]


__all__ = ["UnlabeledImages", "walk_images", "is_label_file"]
