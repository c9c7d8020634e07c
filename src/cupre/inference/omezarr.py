"""``cupre predict --ome-zarr``: each image and its labels as one OME-Zarr (NGFF) image.

``name.ome.zarr`` holds the image as it was read (raw intensities; colour as a ``c``
axis) and, in its ``labels/masks`` group, the label image of ``name_masks.tif``, both
with a resolution pyramid (halving while the smaller level keeps 256 px on its longer
side) so that napari (with napari-ome-zarr), Fiji (MoBIE, n5-viewer) and QuPath open large
ones quickly. It is written by ome-zarr-py from Dask arrays whose blocks are read from
the image file and painted from the objects on demand, one block at a time, so a large
image is never held whole; the folder appears under its name only once complete.
cupre reads it back as an input like any image.

Needs ``ome-zarr`` (``pip install 'cupre[ome]'``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from cupre.errors import CupreError

CHUNK = 512  # chunk side of every level
MIN_LEVEL_SIDE = 256  # pyramid levels stop before the longer side falls below this
LABEL_NAME = "masks"

Window = Callable[[int, int, int, int], np.ndarray]  # (y0, y1, x0, x1) -> that window of a plane


def check_available() -> None:
    """Raise a one-line CupreError when ome-zarr is not installed."""
    if importlib.util.find_spec("ome_zarr") is None:
        raise CupreError("--ome-zarr needs ome-zarr: pip install 'cupre[ome]'")


def pyramid_factors(height: int, width: int) -> tuple[int, ...]:
    """Downsampling factors 2, 4, ... while the level's longer side stays >= 256 px."""
    side = max(height, width)
    return tuple(2**k for k in range(1, 16) if side // 2**k >= MIN_LEVEL_SIDE)


def _blocks(read: Window, shape: tuple[int, int], dtype, channels: int | None):
    """A Dask array of the plane whose blocks call ``read`` (``c`` first when colour)."""
    import dask.array as da

    chunks = tuple(tuple(min(CHUNK, n - s) for s in range(0, n, CHUNK)) for n in shape)

    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][-2:]
        window = np.asarray(read(y0, y1, x0, x1), dtype=dtype)
        return np.moveaxis(window, -1, 0) if channels else window

    return da.map_blocks(block, dtype=dtype, chunks=((channels,), *chunks) if channels else chunks)


def write_ome_zarr(path: Path, *, shape: tuple[int, int], read_image: Window, read_label: Window,
                   label_dtype) -> None:
    """Write ``path`` (``name.ome.zarr``): the image and its ``labels/masks``.

    Args:
        shape: ``(height, width)`` of the image.
        read_image: a window of the raw image (``hxw`` or ``hxwxC``, its stored dtype).
        read_label: a window of the label image.
        label_dtype: the label image's dtype.
    """
    import dask
    import zarr
    from ome_zarr.writer import write_image, write_labels

    sample = np.asarray(read_image(0, 1, 0, 1))
    channels = sample.shape[-1] if sample.ndim == 3 else None
    factors = pyramid_factors(*shape)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    root = zarr.open_group(partial, mode="w")
    with dask.config.set(scheduler="synchronous"):  # one block at a time, in this thread
        write_image(_blocks(read_image, shape, sample.dtype, channels), root, scale_factors=factors,
                    axes="cyx" if channels else "yx",
                    storage_options={"chunks": ((channels,) if channels else ()) + (CHUNK, CHUNK)})
        write_labels(_blocks(read_label, shape, np.dtype(label_dtype), None), root, name=LABEL_NAME, scaler=None,
                     scale_factors=factors, axes="yx", storage_options={"chunks": (CHUNK, CHUNK)})
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial, path)
