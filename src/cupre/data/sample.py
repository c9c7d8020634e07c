"""The one sample type every reader yields.

A reader lists :class:`ImageRecord` s and implements :meth:`InstanceDataset.read_raw`.
Indexing a dataset gives ``(image, target)``:

* ``image``: float32 tensor ``3xHxW`` in [0, 1] (see :func:`cupre.data.imageio.normalize`).
* ``target``: dict with
    - ``boxes``: float32 ``Nx4``, XYXY in pixels (``x2``/``y2`` exclusive: a one-pixel
      object at column 5 spans 5..6);
    - ``labels``: int64 ``N``, contiguous 1..C (0 is background; ``dataset.categories[l-1]``
      is the category of label ``l``);
    - ``masks``: uint8 ``NxHxW``;
    - ``ignore_masks``: uint8 ``KxHxW``, the crowd regions (``K`` may be 0): neither
      objects nor background in training (:mod:`cupre.models.heads.ignore`);
    - ``image_id``: int (the COCO image id; 1..N in sorted file order for other formats);
    - ``file``: str, the source image file;
    - ``cell_type``: str or None, where the format or a summary file knows it.

Crowd regions (``iscrowd=1``) are never training targets: they become ``ignore_masks``,
regions that training counts neither as objects nor as background (pseudo-labels mark
the teacher's unsure objects so). :meth:`read_raw` keeps them, flagged, for conversion
and for evaluation ignore regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cupre.data.imageio import Normalization, normalize

CELL_CATEGORIES = [{"id": 1, "name": "cell"}]


@dataclass
class ImageRecord:
    """One image of a dataset, before anything is read from disk.

    Attributes:
        image_id: COCO image id (positive int).
        file: the image file.
        cell_type: cell type / imaging kind, where known (used to stratify splits and
            to break metrics down).
        height, width: image size where known without reading the file.
        page: frame index inside a multi-page TIFF, or None.
        extra: reader-specific details (annotation list, mask folder, label file ...).
    """

    image_id: int
    file: Path
    cell_type: str | None = None
    height: int | None = None
    width: int | None = None
    page: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RawInstances:
    """Instances of one image as read from disk (numpy, crowd kept).

    Attributes:
        masks: bool ``NxHxW``.
        labels: int64 ``N``, contiguous 1..C.
        iscrowd: bool ``N``.
    """

    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray

    @staticmethod
    def empty(height: int, width: int) -> "RawInstances":
        return RawInstances(
            masks=np.zeros((0, height, width), dtype=bool),
            labels=np.zeros((0,), dtype=np.int64),
            iscrowd=np.zeros((0,), dtype=bool),
        )


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight XYXY boxes (exclusive max) of bool masks ``NxHxW`` -> float32 ``Nx4``."""
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    for i in range(n):
        ys = np.flatnonzero(rows[i])
        xs = np.flatnonzero(cols[i])
        if ys.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


class InstanceDataset(torch.utils.data.Dataset):
    """Base class of every annotated reader.

    Subclasses fill ``self.records`` and ``self.categories`` and implement
    :meth:`read_image_array` and :meth:`read_raw`.

    Args:
        records: the images.
        categories: COCO-style category dicts ``{"id", "name"}``; label ``l`` is
            ``categories[l - 1]``.
        transforms: optional callable ``(image, target) -> (image, target)``.
        norm: intensity normalisation.
        class_agnostic: map every category to the single category "cell".
    """

    format_name = "base"

    def __init__(
        self,
        records: list[ImageRecord],
        categories: list[dict],
        *,
        transforms: Callable | None = None,
        norm: Normalization = Normalization(),
        class_agnostic: bool = False,
        root: Path | None = None,
    ) -> None:
        self.records = records
        self.source_categories = categories
        self.categories = CELL_CATEGORIES if class_agnostic else categories
        self.class_agnostic = class_agnostic
        self.transforms = transforms
        self.norm = norm
        self.root = root

    def __len__(self) -> int:
        return len(self.records)

    def read_image_array(self, index: int) -> np.ndarray:
        """The stored image as a numpy array (``HxW`` or ``HxWxC``)."""
        raise NotImplementedError

    def read_raw(self, index: int) -> RawInstances:
        """All instances of image ``index``, crowd regions included, labels 1..C of
        ``self.source_categories`` (class-agnostic mapping is applied by the caller)."""
        raise NotImplementedError

    def count_objects(self, index: int) -> int:
        """How many objects (crowd regions aside) image ``index`` has, after the reader's
        checks skipped what they skip."""
        return int((~self.read_raw(index).iscrowd).sum())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        rec = self.records[index]
        arr = self.read_image_array(index)
        image = normalize(arr, self.norm)
        raw = self.read_raw(index)
        keep = ~raw.iscrowd
        masks = raw.masks[keep]
        labels = raw.labels[keep]
        if self.class_agnostic:
            labels = np.ones_like(labels)
        target = {
            "boxes": torch.from_numpy(masks_to_boxes(masks)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
            "ignore_masks": torch.from_numpy(raw.masks[raw.iscrowd].astype(np.uint8)),
            "image_id": rec.image_id,
            "file": str(rec.file),
            "cell_type": rec.cell_type,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def subset(self, image_ids: list[int]) -> "InstanceDataset":
        """A shallow copy restricted to ``image_ids`` (in the given order)."""
        import copy

        by_id = {r.image_id: r for r in self.records}
        missing = [i for i in image_ids if i not in by_id]
        if missing:
            raise ValueError(f"image ids not in dataset: {missing[:5]}")
        out = copy.copy(self)
        out.records = [by_id[i] for i in image_ids]
        return out


def collate(batch: list) -> tuple:
    """Detection collate: lists, not stacked tensors (images differ in size)."""
    return tuple(zip(*batch))
