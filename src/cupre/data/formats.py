"""One entry point for every annotated layout: :func:`open_dataset` detects the format.

=================  ==========================================================
format             layout
=================  ==========================================================
``coco``           a ``.json`` COCO instances file (COCO, LIVECell, EVICAN)
``bbbc038``        a folder of ``<id>/images/<id>.png`` (+ ``<id>/masks/*.png``)
``ctc``            a folder of ``NN`` frame folders + ``NN_GT`` / ``NN_ST`` truth
``label-images``   a folder of ``name.tif`` + ``name_masks.tif`` (or ``name_mask.tif``) pairs
=================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cupre.data.imageio import Normalization
from cupre.data.sample import InstanceDataset
from cupre.errors import CupreError, file_error

FORMATS = ("coco", "bbbc038", "ctc", "label-images")
LOOKED_FOR = (  # said in an error line with a path and a hint: kept short, so that line stays under 300
    "coco (a .json file), bbbc038 (<id>/images + <id>/masks), ctc (NN + NN_GT or NN_ST), "
    "label-images (name.tif/.png/.jpg + name_masks.tif or name_mask.tif/.png, or name_cp_masks.png)"
)


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its layout (see the module docstring).

    Raises:
        CupreError: the path does not exist or matches no layout.
    """
    from cupre.data.ctc import find_sequences
    from cupre.data.label_images import find_label_pairs

    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        raise file_error(path, f"not a dataset file (looked for {LOOKED_FOR})")
    if not path.is_dir():
        raise file_error(path, "dataset not found")
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if any(_is_bbbc038_sample(d) for d in subdirs):
        return "bbbc038"
    names = {d.name for d in subdirs}
    if any(s.name + "_GT" in names or s.name + "_ST" in names for s in find_sequences(path)):
        return "ctc"
    pairs, orphans = find_label_pairs(path)
    if pairs or orphans:
        return "label-images"
    hint = ""
    jsons = sorted(path.glob("*.json")) + sorted(path.glob("annotations/*.json"))
    if jsons:
        hint = f"; to read COCO annotations pass the JSON file, e.g. {jsons[0]}"
    raise file_error(path, f"no known dataset layout (looked for {LOOKED_FOR}){hint}")


def _is_bbbc038_sample(folder: Path) -> bool:
    """``<id>/images/`` with ``<id>/masks/`` (or, unlabeled, ``<id>/images/<id>.png``)."""
    images = folder / "images"
    return images.is_dir() and ((folder / "masks").is_dir() or (images / f"{folder.name}.png").is_file())


def open_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    class_agnostic: bool = False,
    strict: bool = False,
    norm: Normalization = Normalization(),
    transforms: Callable | None = None,
    image_root: str | Path | None = None,
) -> InstanceDataset:
    """Open an annotated dataset of any supported format.

    Args:
        path: a COCO JSON file or a dataset folder.
        format: one of ``coco``, ``bbbc038``, ``ctc``, ``label-images``; detected from
            the layout when None.
        class_agnostic: map every category to the single category "cell".
        strict: turn skipped-item warnings into errors.
        norm: intensity normalisation of the images.
        transforms: optional ``(image, target) -> (image, target)``.
        image_root: COCO only: the folder its ``file_name`` s are relative to.

    Raises:
        CupreError: unknown format, missing path, or a layout that matches nothing.
    """
    path = Path(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise CupreError(f"{path}: unknown format {format!r}; valid formats: {', '.join(FORMATS)}")
    if not path.exists():
        raise file_error(path, "dataset not found")
    common = dict(class_agnostic=class_agnostic, strict=strict, norm=norm, transforms=transforms)
    if format == "coco":
        from cupre.data.coco import CocoDataset

        if path.is_dir():
            raise file_error(path, "the coco format needs the JSON file, not a folder")
        return CocoDataset(path, image_root=image_root, **common)
    if format == "bbbc038":
        from cupre.data.bbbc038 import Bbbc038Dataset

        return Bbbc038Dataset(path, **common)
    if format == "ctc":
        from cupre.data.ctc import CtcDataset

        return CtcDataset(path, **common)
    from cupre.data.label_images import LabelImageDataset

    return LabelImageDataset(path, **common)


__all__ = ["open_dataset", "detect_format", "FORMATS"]
