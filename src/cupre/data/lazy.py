"""Images read a window at a time: large TIFFs and OME-Zarr without loading a whole plane.

:class:`LazyImage` is one plane of an image file: ``read(y0, y1, x0, x1)`` returns the
window exactly as :func:`cupre.data.imageio.read_image` would return the whole plane cut
there (``hxw`` or ``hxwxC`` in the stored dtype). TIFFs are read through tifffile's Zarr
view of their strips or tiles, OME-Zarr through zarr (level 0 of its multiscales; its
t, c and z axes index planes, as a TIFF's non-image axes do); other
files (PNG, JPEG, BMP) are decoded whole once, as they cannot be read in parts.

:func:`intensity_range` is the normalisation range of a whole plane (the percentiles of
:func:`cupre.data.imageio.normalize`), gathered window by window: exact up to
:data:`EXACT_PIXELS` pixels, beyond that from a regular subsample (every ``s``-th row and
column), so that a tile can be normalised alone with its image's range
(:func:`cupre.data.imageio.stretch`) and a whole-slide image is never held in memory.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from cupre.data.imageio import (
    IMAGE_AXES,
    TIFF_SUFFIXES,
    Normalization,
    check_tiff_series,
    intensities,
    is_zarr,
    open_ome_zarr,
    percentile_range,
    plane_index,
    read_image,
)
from cupre.errors import CupreError, file_error

EXACT_PIXELS = 1 << 24  # planes up to 16.8 Mpx (4096 x 4096) get exact percentiles
WINDOW = 2048  # side of the windows a plane is scanned in


class LazyImage:
    """One plane of an image file, read a window at a time (see the module docstring).

    Use as a context manager (or call :meth:`close`) to release the open file.

    Attributes:
        path, page: the file and its plane (``None``: the first).
        shape: ``(height, width)`` of the plane.
        planes: how many planes the file holds (every axis but Y, X and colour counts).
    """

    def __init__(self, path: str | Path, page: int | None = None) -> None:
        self.path, self.page = Path(path), page
        self._tif = None
        self._array, self._index, self._axes, self.planes = None, None, "", 1
        if is_zarr(self.path):
            self._open_zarr()
        elif self.path.suffix.lower() in TIFF_SUFFIXES:
            self._open_tiff()
        else:
            self._array = _decoded(self.path, page)  # decoded whole: the plane itself
            self._index, self._axes = (slice(None),) * self._array.ndim, "YXS"[:self._array.ndim]
        sizes = [s for s, i in zip(self._array.shape, self._index) if isinstance(i, slice)]
        self.shape = int(sizes[self._axes.index("Y")]), int(sizes[self._axes.index("X")])

    def _open_tiff(self) -> None:
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            check_tiff_series(self.path, series)  # before a window of an implausible plane is read
            self._array = zarr.open(series.aszarr(level=0), mode="r")
            self._set_plane(series.axes, tuple(series.shape))
        except CupreError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile and zarr raise many kinds on broken files
            self.close()
            raise file_error(self.path, f"cannot read TIFF ({exc.__class__.__name__}: {exc})") from None

    def _open_zarr(self) -> None:
        self._array, axes = open_ome_zarr(self.path)
        self._set_plane(axes, tuple(self._array.shape))

    def _set_plane(self, axes: str, shape: tuple[int, ...]) -> None:
        """The index of plane ``page`` over every axis but Y, X and S (as read_image)."""
        try:
            self._index, self.planes = plane_index(axes, shape, self.page)
        except ValueError as exc:
            raise file_error(self.path, str(exc)) from None
        self._axes = "".join(ax for ax in axes if ax in IMAGE_AXES)  # the plane's axes, in stored order

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window ``[y0:y1, x0:x1]`` of the plane (``hxw`` or ``hxwxC``, stored dtype)."""
        window = {"Y": slice(y0, y1), "X": slice(x0, x1)}
        axes = iter(self._axes)
        index = tuple(window.get(next(axes), i) if isinstance(i, slice) else i for i in self._index)
        try:
            out = np.asarray(self._array[index])
        except Exception as exc:  # noqa: BLE001 - decoding errors of a damaged file
            raise file_error(self.path, f"cannot read window {y0}:{y1}, {x0}:{x1} "
                                        f"({exc.__class__.__name__}: {exc})") from None
        kept = list(self._axes)
        if "S" in kept:
            out = np.moveaxis(out, kept.index("S"), -1)
            kept.remove("S")
        return out if kept == ["Y", "X"] else np.swapaxes(out, 0, 1)

    def windows(self, side: int = WINDOW, *, step: int = 1) -> Iterator[tuple[int, int, int, int]]:
        """``(y0, y1, x0, x1)`` of the windows that tile the plane, row by row; every
        window starts on a multiple of ``step``."""
        side = max(step, side // step * step)
        height, width = self.shape
        for y0 in range(0, height, side):
            for x0 in range(0, width, side):
                yield y0, min(y0 + side, height), x0, min(x0 + side, width)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> "LazyImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@functools.lru_cache(maxsize=1)
def _decoded_at(path: Path, page: int | None, stamp: tuple[int, int]) -> np.ndarray:
    return read_image(path, page=page)


def _decoded(path: Path, page: int | None) -> np.ndarray:
    """A file that cannot be read in parts, decoded once for all its tiles (the last one
    is kept, keyed by its size and modification time)."""
    try:
        st = path.stat()
    except OSError:
        return read_image(path, page=page)  # reports the missing file
    return _decoded_at(path, page, (st.st_size, st.st_mtime_ns))


def release_decoded() -> None:
    """Drop the decoded image :func:`_decoded` keeps (after its last tile)."""
    _decoded_at.cache_clear()


def image_size(path: str | Path, page: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image plane from its header (the pixels are not read).

    Raises:
        CupreError or what the readers raise on a broken file.
    """
    path = Path(path)
    if is_zarr(path) or path.suffix.lower() in TIFF_SUFFIXES:
        with LazyImage(path, page) as image:
            return image.shape
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def subsample_step(height: int, width: int, limit: int = EXACT_PIXELS) -> int:
    """The row and column step that keeps at most about ``limit`` pixels (1: all)."""
    return max(1, math.ceil(math.sqrt(height * width / limit)))


def intensity_range(image: LazyImage, norm: Normalization = Normalization(), *,
                    limit: int = EXACT_PIXELS) -> tuple[float, float]:
    """``(lo, hi)``: the plane's ``norm.low`` / ``norm.high`` percentiles, as
    :func:`cupre.data.imageio.normalize` computes them on the whole plane (exactly, up to
    ``limit`` pixels; beyond, over every ``s``-th row and column,
    ``s = ceil(sqrt(pixels / limit))``)."""
    step = subsample_step(*image.shape, limit)
    if step == 1:
        return percentile_range(intensities(image.read(0, image.shape[0], 0, image.shape[1])), norm)
    parts = [intensities(image.read(*w))[::step, ::step].reshape(-1) for w in image.windows(step=step)]
    return percentile_range(np.concatenate(parts), norm)
