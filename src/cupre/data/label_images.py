"""Image + instance label image pairs (the Cellpose / StarDist convention).

A folder holds ``name.tif`` (or ``.tiff``, ``.png``, ``.jpg``) next to
``name_masks.tif`` or ``name_mask.tif`` (or ``.tiff``, ``.png``): an integer image (uint8, uint16 or uint32)
in which every nonzero value is one instance and 0 is background. A binary mask (one
value over several separate regions) is read as one object per region, with a
warning. The Cellpose GUI's ``name_cp_masks.png`` (or ``.tif``) is read the same way
(its ``name_seg.npy`` is a pickle and is never read); when an image has both,
``name_masks`` is used. Images
without a ``_masks`` file are not part of the labeled dataset (use
:class:`cupre.data.unlabeled.UnlabeledImages` for them).

The helpers :func:`label_image_to_masks` and :func:`image_size` are shared with the
Cell Tracking Challenge reader, whose ``man_seg`` files are label images too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from cupre.data.imageio import DECOMPRESSION_BOMB, TIFF_SUFFIXES, Normalization, count_pages, read_image
from cupre.data.sample import (
    CELL_CATEGORIES,
    ImageRecord,
    InstanceDataset,
    RawInstances,
)
from cupre.errors import CupreWarning, file_error, warn_or_raise
from cupre.fileio import not_regular

MASK_SUFFIXES = ("_masks", "_mask")  # the label image's name: the image's stem with one of these
CELLPOSE_SUFFIX = "_cp_masks"  # what the Cellpose GUI saves
LABEL_SUFFIXES = (".tif", ".tiff", ".png")
MIN_MEAN_AREA = 4  # pixels per instance id, at the least: more ids than that is no label image
PAIR_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image, read from its header (no pixel decoding).

    Raises:
        CupreError: the file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        kind = not_regular(path)
        raise file_error(path, f"{kind}, not an image file" if kind else "image file not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                dims = dict(zip(series.axes, series.shape))
                return int(dims["Y"]), int(dims["X"])
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError, KeyError, IndexError, UnidentifiedImageError, *DECOMPRESSION_BOMB) as exc:
        raise file_error(path, f"cannot read image header ({exc.__class__.__name__}: {exc})") from None


def label_image_to_masks(label: np.ndarray, path: str | Path) -> np.ndarray:
    """Split an instance label image into one bool mask per nonzero id.

    Args:
        label: integer ``HxW`` label image (any nonzero value is an instance).
        path: the file it came from (for error messages).

    Returns:
        bool ``NxHxW``, instances in increasing label order.

    Raises:
        CupreError: the label image is not 2-D, holds non-integer values, or more distinct
            ids than one per ``MIN_MEAN_AREA`` pixels (no label image: its mask stack would
            not fit in memory).
    """
    label = np.asarray(label)
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise file_error(path, f"label image must be 2-D (HxW), got shape {label.shape}")
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise file_error(path, "label image holds non-integer values (expected instance ids)")
        label = label.astype(np.int64)
    elif label.dtype.kind == "b":
        label = label.astype(np.uint8)
    elif label.dtype.kind not in "iu":
        raise file_error(path, f"label image has unsupported dtype {label.dtype}")
    if label.size and label.min() < 0:
        raise file_error(path, "label image holds negative values (expected instance ids >= 0)")
    ids, dense = np.unique(label, return_inverse=True)
    dense = dense.reshape(label.shape)
    # ``dense`` numbers the distinct values 0..K-1 in sorted order; shift so 0 is background.
    has_background = ids.size > 0 and ids[0] == 0
    if not has_background:
        dense = dense + 1
    n = int(ids.size) - int(has_background)
    if n > label.size // MIN_MEAN_AREA:  # one bool plane per id: 70,000 ids of 300x300 would be 5.9 GiB
        h, w = label.shape
        raise file_error(path, f"label image holds {n} distinct ids in {h}x{w} pixels, more than one per "
                               f"{MIN_MEAN_AREA} pixels: not instance labels (an intensity image saved as one?)")
    masks = np.zeros((n, *label.shape), dtype=bool)
    for i, window in enumerate(ndimage.find_objects(dense, max_label=n)):
        if window is not None:
            masks[i][window] = dense[window] == i + 1
    return masks


def binary_as_objects(label: np.ndarray, path: str | Path) -> np.ndarray:
    """A label image whose one non-zero value covers several separate regions, as a label
    image with one id per region.

    Such a file is a binary mask (0/255 or 0/1, as thresholding or a paint program saves
    it), not a label image: read as it is, every nucleus in it would be one object. Its
    regions (8-connected) become the objects, said in a warning; touching cells stay one
    object, which only a label image keeps apart. A label image of two or more ids, or of
    one connected region, is returned as it is.
    """
    label = np.asarray(label)
    plane = label[..., 0] if label.ndim == 3 and label.shape[-1] == 1 else label
    if plane.ndim != 2 or plane.dtype.kind not in "iub":
        return label  # label_image_to_masks names what is wrong with it
    values = plane[plane != 0]
    if values.size == 0 or np.any(values != values[0]):  # one pass, no sort: one value or several
        return label
    regions, n = ndimage.label(plane != 0, structure=np.ones((3, 3), bool))
    if n < 2:
        return label
    warnings.warn(f"{path}: a binary mask (one value, {values[0]}, over {n} separate regions), not a label "
                  f"image; read as {n} objects, one per region (save a label image, one id per cell, to keep "
                  "touching cells apart)", CupreWarning, stacklevel=2)
    return regions


def find_label_pairs(root: Path, *, recursive: bool = False) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(image, label)`` pairs under ``root``, sorted by image path, and the label
    files that have no image."""
    pattern = "**/*" if recursive else "*"
    found: dict[Path, Path] = {}
    orphans = []
    labels = [p for p in root.glob(pattern)
              if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES and p.stem.endswith(MASK_SUFFIXES)]
    order = {s: i for i, s in enumerate(MASK_SUFFIXES)}
    for label in sorted(labels, key=lambda p: (p.stem.endswith(CELLPOSE_SUFFIX), order[_suffix(p)], str(p))):
        stems = [label.stem[: -len(CELLPOSE_SUFFIX)]] if label.stem.endswith(CELLPOSE_SUFFIX) else []
        stems.append(label.stem[: -len(_suffix(label))])  # also "x_cp" + "_masks"
        candidates = [label.with_name(stem + s) for stem in stems for s in PAIR_IMAGE_SUFFIXES]
        candidates += [label.with_name(stem + s.upper()) for stem in stems for s in PAIR_IMAGE_SUFFIXES]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            orphans.append(label)
        else:
            found.setdefault(image, label)
    pairs = sorted(found.items(), key=lambda p: str(p[0]))
    return pairs, sorted(orphans)


def _suffix(label: Path) -> str:
    return next(s for s in MASK_SUFFIXES if label.stem.endswith(s))


class LabelImageDataset(InstanceDataset):
    """Pairs ``name.(tif|tiff|png)`` + ``name_masks.(tif|tiff|png)`` in one folder.

    Every nonzero value of a label image is one instance of the single category
    "cell". Image ids are 1..N in sorted file order. Pairs whose sizes differ, and
    label files without an image, are skipped with a warning (errors when ``strict``).

    Args:
        root: the folder.
        recursive: also look in sub-folders.
        strict: turn skipped-item warnings into errors.
        norm: intensity normalisation of the images.
        transforms: optional ``(image, target) -> (image, target)``.
        class_agnostic: accepted for symmetry (there is one category anyway).
    """

    format_name = "label-images"

    def __init__(
        self,
        root: str | Path,
        *,
        recursive: bool = False,
        strict: bool = False,
        norm: Normalization = Normalization(),
        transforms: Callable | None = None,
        class_agnostic: bool = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise file_error(root, "label-image folder not found")
        self.strict = strict
        pairs, orphans = find_label_pairs(root, recursive=recursive)
        for label in orphans:
            warn_or_raise(label, "label image without a matching image file", strict=strict)
        if not pairs and not orphans:
            raise file_error(root, "no label images found (name_masks.tif or name_mask.tif; .tiff, .png too)")
        records = []
        for image, label in pairs:
            pages = count_pages(label)
            if pages > 1:
                warn_or_raise(label, f"label image has {pages} planes; only the first is read", strict=strict,
                              skipped=False)
            size = _checked_pair_size(image, label, strict=strict)
            if size is not None:
                rec = ImageRecord(len(records) + 1, image, height=size[0], width=size[1], extra={"label": label})
                records.append(rec)
        super().__init__(
            records,
            list(CELL_CATEGORIES),
            transforms=transforms,
            norm=norm,
            class_agnostic=class_agnostic,
            root=root,
        )

    def read_image_array(self, index: int) -> np.ndarray:
        return read_image(self.records[index].file)

    def read_raw(self, index: int) -> RawInstances:
        rec = self.records[index]
        label_file = rec.extra["label"]
        masks = label_image_to_masks(binary_as_objects(read_image(label_file), label_file), label_file)
        if masks.shape[1:] != (rec.height, rec.width):
            h, w = masks.shape[1:]
            raise file_error(label_file, f"label image is {h}x{w} but its image is {rec.height}x{rec.width}")
        n = masks.shape[0]
        return RawInstances(masks=masks, labels=np.ones(n, dtype=np.int64), iscrowd=np.zeros(n, dtype=bool))


def _checked_pair_size(image: Path, label: Path, *, strict: bool) -> tuple[int, int] | None:
    """The common size of an image and its label image, or None (warned) if they differ."""
    size = image_size(image)
    label_size = image_size(label)
    if size != label_size:
        warn_or_raise(
            label,
            f"label image is {label_size[0]}x{label_size[1]} but its image {image.name} is {size[0]}x{size[1]}",
            strict=strict,
        )
        return None
    return size


__all__ = ["LabelImageDataset", "binary_as_objects", "label_image_to_masks", "image_size", "find_label_pairs"]
