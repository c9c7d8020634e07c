"""Reading images of every kind the readers accept, and the one intensity normalisation.

Microscopy images come as 8/16-bit integers, floats, grey, RGB or RGBA, PNG, JPEG or
(multi-page) TIFF. :func:`read_image` returns them as a numpy array, :func:`normalize`
maps any of them to a float32 ``3xHxW`` tensor in [0, 1] by per-image percentiles. Every
stage of cupre (COCO warm-up, MoCo, fine-tuning, prediction) uses the same function.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cupre.errors import CupreWarning, file_error
from cupre.fileio import not_regular

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")


# Pillow refuses an image whose header declares more pixels than ``Image.MAX_IMAGE_PIXELS``
# twice over (and warns from once over; an error under ``-W error``): a few KB of PNG can
# declare 20000 x 20000 pixels. Readers catch both and name the file in one line.
DECOMPRESSION_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


# A TIFF's header says how many pixels it holds before any is decoded; a few hundred KB can
# claim 100,000 x 100,000 (tiles left out, or all pointing at one small tile), and the tiled
# path of `cupre predict` would start 10^10 px of work. Two bounds, checked from the header:
# - a plane of more than MAX_PLANE_PIXELS (2^34, 17 Gpx: 131,072 x 131,072) is refused: the
#   largest whole-slide scans (a 40x section, about 150,000 x 100,000 px) stay under it, and a
#   50,000 x 50,000 slide (2.5 Gpx) is far from it;
# - from MAX_RATIO_FROM pixels on (8,192 x 8,192: below, decoding is quick whatever the header
#   says), a file whose declared pixel bytes exceed its own size MAX_RATIO times over is
#   refused. Deflate cannot pass 1,032:1 on any data, LZW about 1,400:1, PackBits 64:1, and
#   images with sensor noise compress 2-10:1 (a mostly empty slide a few hundred to one);
#   only a file whose pixels are almost all one value, or missing, passes 2,000:1.
MAX_PLANE_PIXELS = 1 << 34
MAX_RATIO = 2000
MAX_RATIO_FROM = 1 << 26


def check_declared_size(path: Path, shape: tuple[int, ...], axes: str, itemsize: int,
                        stored: int | None) -> None:
    """Refuse, from its header alone, an image whose size is implausible (see above).

    Args:
        shape, axes: of the whole series (every plane), as the header declares it.
        itemsize: bytes per sample.
        stored: the file's size in bytes (None: not known, e.g. a Zarr folder).

    Raises:
        CupreError: one line naming the file, its declared size and the bound it passes.
    """
    if "Y" not in axes or "X" not in axes:
        return  # tiff_planes names this
    height, width = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    plane = height * width
    if plane > MAX_PLANE_PIXELS:
        raise file_error(path, f"declares a {height:,} x {width:,} px plane, over the {MAX_PLANE_PIXELS:,} px "
                               "cupre reads (2^34; the largest whole-slide scans are under it); not decoded")
    declared = int(np.prod(shape, dtype=object)) * itemsize
    if stored and plane >= MAX_RATIO_FROM and declared > MAX_RATIO * stored:
        raise file_error(path, f"declares {height:,} x {width:,} px ({declared / 2**30:,.1f} GiB of pixels) in "
                               f"{stored / 2**20:,.1f} MiB, a compression ratio of {declared / stored:,.0f}:1; real "
                               f"images stay under {MAX_RATIO:,}:1 (deflate cannot pass 1,032:1): a damaged or "
                               "crafted file, not decoded")


def check_tiff_series(path: Path, series) -> None:
    """:func:`check_declared_size` for a tifffile series of the file ``path``."""
    check_declared_size(path, tuple(series.shape), series.axes, np.dtype(series.dtype).itemsize,
                        path.stat().st_size)


def read_image(path: str | Path, *, page: int | None = None) -> np.ndarray:
    """Read one image as a numpy array ``HxW`` or ``HxWxC`` in its stored dtype.

    Args:
        path: PNG, JPEG, BMP or TIFF file, or OME-Zarr image folder (``name.zarr``).
        page: for multi-page TIFFs, the page (frame) to read; ``None`` reads the first.

    Raises:
        CupreError: the file is missing, truncated or not an image.
    """
    path = Path(path)
    if is_zarr(path):
        array, axes = open_ome_zarr(path)
        try:
            return finite(_tiff_page(array, axes, page), path)
        except ValueError as exc:
            raise file_error(path, str(exc)) from None
    if not path.is_file():
        kind = not_regular(path)
        raise file_error(path, f"{kind}, not an image file" if kind else "image file not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile_said() as said:
                try:
                    arr = _read_tiff(path, page)
                except (OSError, ValueError, IndexError, KeyError, EOFError) as exc:
                    raise file_error(path, f"cannot read image ({exc.__class__.__name__}: {exc}{said_text(said)})"
                                     ) from None
        else:
            with Image.open(path) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("I;16", "I;16B", "I;16L"):
                    return np.array(im, dtype=np.uint16)
                arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, IndexError, KeyError, EOFError,
            *DECOMPRESSION_BOMB) as exc:
        raise file_error(path, f"cannot read image ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise file_error(path, f"unsupported image shape {arr.shape}")
    return finite(arr, path)


def finite(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """A float image whose NaN / inf pixels (a masked or failed acquisition) hold its lowest
    finite value instead, with a warning; other images as they are."""
    if arr.dtype.kind != "f":
        return arr
    bad = ~np.isfinite(arr)
    if not bad.any():
        return arr
    good = arr[~bad]
    low = good.min() if good.size else 0.0
    warnings.warn(f"{path}: {int(bad.sum())} of {arr.size} pixels are NaN or infinite; read as the image's lowest "
                  f"value ({low:g})", CupreWarning, stacklevel=3)
    return np.where(bad, low, arr).astype(arr.dtype, copy=False)


def is_zarr(path: str | Path) -> bool:
    """True for an OME-Zarr image folder (``name.zarr``)."""
    path = Path(path)
    return path.suffix.lower() == ".zarr" and path.is_dir()


def open_ome_zarr(path: Path):
    """Level 0 of an OME-Zarr image (a zarr array, not read) and its axes, upper-case
    (``"CZYX"``; NGFF 0.4 and 0.5 metadata).

    Raises:
        CupreError: not an OME-Zarr image.
    """
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        scales = attrs.get("ome", attrs)["multiscales"][0]  # NGFF 0.5 nests its metadata under "ome"
        array = group[scales["datasets"][0]["path"]]
        names = [a["name"] if isinstance(a, dict) else a for a in scales.get("axes", [])]
    except (KeyError, IndexError, TypeError, ValueError, OSError) as exc:
        raise file_error(path, f"not an OME-Zarr image ({exc.__class__.__name__}: {exc})") from None
    names = names or list("tczyx"[-array.ndim:])
    axes = "".join(n.upper() for n in names)
    check_declared_size(path, tuple(array.shape), axes, array.dtype.itemsize, None)
    return array, axes


def check_zarr_chunks(path: Path, array) -> None:
    """Warn, naming the image, when chunks of its level 0 are not stored: zarr reads them as
    the fill value without a word. A chunk holding only the fill value may be left out on
    purpose (zarr's default), but a copy cut short or a lost file looks the same."""
    try:
        stored, total = int(array.nchunks_initialized), int(array.nchunks)
    except Exception:  # noqa: BLE001 - a store that cannot list its chunks: nothing to say
        return
    if stored < total:
        warnings.warn(f"{path}: {total - stored:,} of the {total:,} chunks of its full-resolution level are not "
                      f"stored; read as the fill value ({array.fill_value}) (zarr leaves out chunks of only that "
                      "value, but a copy cut short looks the same: check the image)", CupreWarning, stacklevel=3)


def _read_tiff(path: Path, page: int | None) -> np.ndarray:
    """Read a TIFF with tifffile; fall back to Pillow for compressions that tifffile
    decodes only with the optional ``imagecodecs`` package (LZW, as in LIVECell)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("no image data in the TIFF")
        series = tif.series[0]
        check_tiff_series(path, series)
        try:
            arr = series.asarray()
        except ValueError as exc:
            try:
                return _read_pil_frame(path, page)
            except (OSError, ValueError, SyntaxError, UnidentifiedImageError, *DECOMPRESSION_BOMB):
                raise exc from None
        return _tiff_page(arr, series.axes, page)


def _read_pil_frame(path: Path, page: int | None) -> np.ndarray:
    """One frame of a (multi-page) image read with Pillow."""
    with Image.open(path) as im:
        if page:
            im.seek(min(page, getattr(im, "n_frames", 1) - 1))
        im.load()
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.array(im, dtype=np.uint16)
        return np.asarray(im)


IMAGE_AXES = {"Y", "X", "S"}  # a plane's rows, columns and samples (colour); every other axis indexes planes
MAX_SAMPLES = 4


def tiff_planes(axes: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the plane index of a TIFF series (``()`` for a single plane).

    Every axis other than Y, X and S (time, depth, channel, ...) indexes planes, each
    predicted or trained on as its own image.

    Raises:
        ValueError: no Y/X plane, or more than four samples per pixel (one line naming
            the axes found).
    """
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"TIFF axes {axes!r} {tuple(shape)} have no Y/X image plane")
    if "S" in axes and shape[axes.index("S")] > MAX_SAMPLES:
        raise ValueError(f"TIFF has {shape[axes.index('S')]} samples per pixel (axes {axes!r} {tuple(shape)}); "
                         f"cupre reads 1-{MAX_SAMPLES} (grey, grey+alpha, RGB, RGBA)")
    return tuple(size for ax, size in zip(axes, shape) if ax not in IMAGE_AXES)


def plane_index(axes: str, shape: tuple[int, ...], page: int | None) -> tuple[tuple, int]:
    """The index of plane ``page`` (counted over all non-image axes, C order; None: the
    first) into an array of ``axes`` / ``shape``, and how many planes it holds.

    Raises:
        ValueError: no Y/X plane, too many samples, or ``page`` out of range.
    """
    planes = tiff_planes(axes, shape)
    count = int(np.prod(planes)) if planes else 1
    if page is not None and not 0 <= page < count:
        raise ValueError(f"plane {page} requested, the image has {count} (axes {axes!r})")
    where = iter(np.unravel_index(page or 0, planes) if planes else ())
    return tuple(slice(None) if ax in IMAGE_AXES else int(next(where)) for ax in axes), count


def _tiff_page(arr, axes: str, page: int | None) -> np.ndarray:
    """Plane ``page`` of a TIFF series (or of a zarr array: only that plane is read)."""
    index, _ = plane_index(axes, tuple(arr.shape), page)
    out = arr[index]
    kept = [ax for ax in axes if ax in IMAGE_AXES]
    return np.moveaxis(out, kept.index("S"), -1) if "S" in kept else out


def count_pages(path: str | Path) -> int:
    """Number of 2-D planes in an image file (1 for anything but a multi-plane TIFF or
    OME-Zarr).

    Raises:
        CupreError: the TIFF cannot be read, or its axes hold no plane cupre reads.
    """
    return plane_layout(path).count


@dataclass(frozen=True)
class PlaneLayout:
    """The planes of an image file, from its header.

    Attributes:
        size: ``(height, width)`` of a plane; None where the header was not read (PNG,
            JPEG, BMP).
        planes: the sizes of the axes that index planes (every axis but Y, X and S), in
            stored order (``()``: one plane).
        axes: their names (``"TZC"``), upper-case.
    """

    size: tuple[int, int] | None = None
    planes: tuple[int, ...] = ()
    axes: str = ""

    @property
    def count(self) -> int:
        """How many 2-D planes the file holds."""
        return max(1, int(np.prod(self.planes)))

    @property
    def channels(self) -> int | None:
        """The size of the channel (C) axis; None without one."""
        return self.planes[self.axes.index("C")] if "C" in self.axes else None

    def pages(self, channel: int | None = None) -> list[int]:
        """The planes to read (C order), all of them or those of one ``channel`` (a file
        without a C axis keeps all its planes).

        Raises:
            ValueError: ``channel`` beyond the C axis.
        """
        if channel is None or "C" not in self.axes:
            return list(range(self.count))
        if not 0 <= channel < self.channels:
            raise ValueError(f"channel {channel} requested, the image has {self.channels} (axes {self.axes!r})")
        index = np.indices(self.planes)[self.axes.index("C")].reshape(-1)
        return np.flatnonzero(index == channel).tolist()


def plane_layout(path: str | Path) -> PlaneLayout:
    """The planes of an image file from one header read (TIFF, OME-Zarr; other files
    hold one plane and are not opened here).

    Raises:
        CupreError: the TIFF cannot be read, or its axes hold no plane cupre reads.
    """
    path = Path(path)
    if is_zarr(path):
        array, axes = open_ome_zarr(path)
        check_zarr_chunks(path, array)  # here, once per file: the tile readers open it again and again
        return _layout(path, axes, tuple(array.shape))
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return PlaneLayout()
    import tifffile

    with tifffile_said() as said:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, shape = series.axes, tuple(series.shape)
                check_tiff_series(path, series)
        except (OSError, ValueError, IndexError) as exc:
            raise file_error(path, f"cannot read TIFF ({exc}{said_text(said)})") from None
    return _layout(path, axes, shape)


@contextlib.contextmanager
def tifffile_said() -> Iterator[list[str]]:
    """What tifffile logs while the block runs, collected instead of printed: it becomes
    part of cupre's own line about the file (a library's log line is not a second one)."""
    logger = logging.getLogger("tifffile")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(" ".join(record.getMessage().split()))  # type: ignore[method-assign]
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def said_text(said: list[str]) -> str:
    return f"; tifffile: {'; '.join(dict.fromkeys(said))[:300]}" if said else ""


def _layout(path: Path, axes: str, shape: tuple[int, ...]) -> PlaneLayout:
    try:
        planes = tiff_planes(axes, shape)
    except ValueError as exc:
        raise file_error(path, str(exc)) from None
    return PlaneLayout((int(shape[axes.index("Y")]), int(shape[axes.index("X")])), planes,
                       "".join(ax for ax in axes if ax not in IMAGE_AXES))


@dataclass(frozen=True)
class Normalization:
    """Per-image percentile normalisation.

    Attributes:
        low: lower percentile mapped to 0.
        high: upper percentile mapped to 1.
    """

    low: float = 1.0
    high: float = 99.8


def normalize(arr: np.ndarray, norm: Normalization = Normalization(), *, grey_view: bool = False) -> torch.Tensor:
    """Map any image array to a float32 ``3xHxW`` tensor in [0, 1].

    Grey images are replicated to three channels, alpha is dropped, and intensities are
    stretched so that the ``norm.low`` and ``norm.high`` percentiles (over all channels
    together, which keeps colour balance) land on 0 and 1.

    ``grey_view``: a grey image's three channels are one plane seen three times (an
    expanded, read-only view: a third of the memory, for inference on large images).
    """
    a = intensities(arr)
    return stretch(a, *percentile_range(a, norm), grey_view=grey_view)


def intensities(arr: np.ndarray) -> np.ndarray:
    """The values :func:`normalize` stretches: float32 ``HxW`` (grey) or ``HxWx3`` (colour,
    alpha dropped), non-finite values set to 0; always a new array."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim == 3 and a.shape[-1] == 2:
        a = a[..., 0]
    return np.nan_to_num(a.astype(np.float32), copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # our own copy


def percentile_range(a: np.ndarray, norm: Normalization = Normalization()) -> tuple[float, float]:
    """``(lo, hi)``: the ``norm.low`` and ``norm.high`` percentiles of :func:`intensities`
    (``hi`` kept at least 1e-6 above ``lo``)."""
    lo, hi = (float(v) for v in np.percentile(a, [norm.low, norm.high]))
    return lo, (lo + 1.0 if hi - lo < 1e-6 else hi)


def stretch(a: np.ndarray, lo: float, hi: float, *, grey_view: bool = False) -> torch.Tensor:
    """:func:`intensities` ``a`` (changed in place) mapped so ``lo`` -> 0 and ``hi`` -> 1,
    clipped, as a float32 ``3xHxW`` tensor (``grey_view``: see :func:`normalize`). A tile
    stretched with its image's range equals the same tile of the stretched image."""
    a -= lo  # in place: a whole-slide image is not copied again at every step
    a /= hi - lo
    np.clip(a, 0.0, 1.0, out=a)
    if grey_view and a.ndim == 2:
        return torch.from_numpy(a)[None].expand(3, -1, -1)
    out = np.empty((3, *a.shape[:2]), dtype=np.float32)
    out[:] = a if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(out)
