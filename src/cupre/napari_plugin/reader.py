"""Opens ``cupre predict`` outputs in napari: ``name_masks.tif`` as a Labels layer whose
features are ``name_objects.csv`` (one row per id, after a background row)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import tifffile

from cupre.napari_plugin.features import features_table

SUFFIX = "_masks.tif"


def get_reader(path: str | list[str]) -> Callable | None:
    """The reader for one ``*_masks.tif`` path (None for anything else)."""
    if isinstance(path, list) or not str(path).endswith(SUFFIX):
        return None
    return read_masks


def read_masks(path: str | list[str]) -> list[tuple]:
    """The label image, with the object table beside it (when there) as features."""
    path = Path(path[0] if isinstance(path, list) else path)
    label = tifffile.imread(path)
    table = path.with_name(path.name[: -len(SUFFIX)] + "_objects.csv")
    meta: dict = {"name": path.name[: -len(".tif")]}
    if table.is_file():
        with open(table, newline="") as fh:
            meta["features"] = features_table(list(csv.DictReader(fh)))
    return [(label, meta, "labels")]
