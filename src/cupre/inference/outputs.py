"""The files ``cupre predict`` writes per image: one row per kind.

A new format is one row of :data:`OUTPUTS` and one writer. The row names the kind, its
file suffix, its flag (optional kinds are written on request only) and its writer; the
command-line flags, :class:`cupre.inference.predict.PredictOptions`' ``outputs``, the
ledger's fingerprint, the check for existing files and the writing itself are all read
from the table.

A writer takes the file's path and a :class:`Predicted` image, which gives the same
things for a small image held whole (:class:`WholeImage`) and for a large one read window
by window (:class:`cupre.inference.slides.SlideImage`). A writer reads the image and its
labels through that interface only, so no writer holds a large image whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

import numpy as np

from cupre.errors import CupreError
from cupre.inference import omezarr, writers

if TYPE_CHECKING:  # for annotations: torch is not imported for the flags of --help
    from cupre.detect.objects import Objects


class Predicted(Protocol):
    """One predicted image, as the writers see it."""

    rows: list[dict]  # the object table (:data:`cupre.inference.writers.CSV_COLUMNS`)
    shape: tuple[int, int]  # (height, width)
    label_dtype: np.dtype

    def write_label(self, path: Path) -> None: ...  # the label image as a TIFF
    def write_overlay(self, path: Path) -> None: ...  # the outlines over the image, as a PNG
    def outlines(self) -> Iterable[tuple[int, list[list[np.ndarray]]]]: ...  # writers.label_outlines, once
    def read_image(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...  # a window of the raw image
    def read_label(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...  # a window of the labels


@dataclass(frozen=True)
class OutputKind:
    """One kind of file per image.

    Attributes:
        name: the kind's key (in a job's paths and in ``PredictOptions.outputs``).
        suffix: the file is ``<image name><suffix>`` in the output folder.
        write: ``write(path, predicted)``.
        help: the flag's help; None for a kind always written.
        needs: raises a one-line error when the writer's library is missing.
    """

    name: str
    suffix: str
    write: Callable[[Path, Predicted], object]
    help: str | None = None
    needs: Callable[[], None] | None = None

    @property
    def optional(self) -> bool:
        return self.help is not None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OUTPUTS = (
    OutputKind("masks", "_masks.tif", lambda path, p: p.write_label(path)),
    OutputKind("overlay", "_overlay.png", lambda path, p: p.write_overlay(path)),
    OutputKind("objects", "_objects.csv", lambda path, p: writers.write_csv(path, p.rows)),
    OutputKind("roi_zip", "_rois.zip", lambda path, p: writers.write_roi_zip(path, p.outlines()),
               help="also write an ImageJ ROI zip per image"),
    OutputKind("geojson", "_objects.geojson", lambda path, p: writers.write_geojson(path, p.outlines(), p.rows),
               help="also write name_objects.geojson per image: polygons with their measurements, for QuPath"),
    OutputKind("ome_zarr", ".ome.zarr",
               lambda path, p: omezarr.write_ome_zarr(path, shape=p.shape, read_image=p.read_image,
                                                      read_label=p.read_label, label_dtype=p.label_dtype),
               help="also write name.ome.zarr per image: the image with its labels (NGFF), for napari, Fiji and "
                    "QuPath; needs pip install 'cupre[ome]'",
               needs=omezarr.check_available),
)
BY_NAME = {kind.name: kind for kind in OUTPUTS}
OPTIONAL = tuple(kind.name for kind in OUTPUTS if kind.optional)


def chosen(outputs: Iterable[str]) -> list[OutputKind]:
    """The kinds written: every kind always written, and the optional ones in ``outputs``."""
    asked = set(outputs)
    return [kind for kind in OUTPUTS if not kind.optional or kind.name in asked]


def check(outputs: Iterable[str]) -> None:
    """Refuse an unknown kind; run the ``needs`` check of each kind asked for."""
    for name in outputs:
        if name not in BY_NAME:
            raise CupreError(f"unknown output kind {name!r}; known: {', '.join(BY_NAME)}")
        if BY_NAME[name].needs is not None:
            BY_NAME[name].needs()


def write_all(paths: dict[str, Path], predicted: Predicted) -> None:
    """Every file of ``paths`` (kind name -> path), in the table's order."""
    next(iter(paths.values())).parent.mkdir(parents=True, exist_ok=True)
    for kind in OUTPUTS:
        if kind.name in paths:
            kind.write(paths[kind.name], predicted)


class WholeImage:
    """A small image's prediction held whole in memory (a :class:`Predicted`): the objects
    painted into a label image, highest score first, and their table."""

    def __init__(self, objs: Objects, raw: np.ndarray, image, categories: list[dict]) -> None:
        height, width = image.shape[-2:]
        self.label, self.kept = writers.paint_labels(objs, height, width)
        self.rows = writers.object_rows(self.label, self.kept, objs, raw, writers.category_names(categories))
        self.shape, self.label_dtype = self.label.shape, self.label.dtype
        self.raw, self.image = raw, image
        self._outlines: list | None = None

    def write_label(self, path: Path) -> None:
        writers.write_label_tiff(path, self.label)

    def write_overlay(self, path: Path) -> None:
        writers.write_overlay(path, writers.normalised_rgb(self.image), self.label, self.rows)

    def outlines(self) -> list:
        if self._outlines is None:
            self._outlines = list(writers.label_outlines(self.label))
        return self._outlines

    def read_image(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.raw[y0:y1, x0:x1]

    def read_label(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.label[y0:y1, x0:x1]
