"""The outputs of a large image, written a window at a time.

:class:`LabelPainter` paints any window of the label image that
:func:`cupre.inference.writers.paint_labels` would paint for the whole image (same ids,
same overlap rule: the higher score wins), from the objects' cropped masks, so a
whole-slide label image is never held in memory. It works in two passes:

1. :meth:`LabelPainter.measure` scans the image window by window with provisional ids
   (score ranks), reads the raw image under each window and sums what the object table
   needs (area, centroid, box, intensity) per visible object; objects with no visible
   pixel get no id, exactly as in ``paint_labels``;
2. every output is then made from windows with the final ids: the label TIFF tile by
   tile (:func:`write_label_tiles`), the overlay at a resolution that fits
   (:func:`write_overlay`), each object's outline (ROIs, GeoJSON) from its own window
   (:func:`label_outlines`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import tifffile

from cupre.data.imageio import intensities, stretch
from cupre.data.lazy import LazyImage
from cupre.detect.objects import Objects
from cupre.fileio import atomic_path
from cupre.inference import writers

BIN = 256  # side of the grid cells that index objects by position
TIFF_TILE = 512  # tile side of the label TIFF of a large image
OVERLAY_SIDE = 4096  # longest overlay side; larger images get a subsampled overlay


class LabelPainter:
    """Windows of the label image of ``objs`` over an ``height x width`` image.

    After :meth:`measure`: ``kept`` (as returned by ``paint_labels``) and per-id sums.
    """

    def __init__(self, objs: Objects, height: int, width: int) -> None:
        self.objs, self.height, self.width = objs, height, width
        self.order = np.argsort(-objs.scores, kind="stable")  # rank -> object index
        self.bins: dict[tuple[int, int], list[int]] = defaultdict(list)
        for rank, i in enumerate(self.order.tolist()):
            (y0, x0), (h, w) = objs.origins[i], objs.crops[i].shape
            for by in range(y0 // BIN, (y0 + h - 1) // BIN + 1):
                for bx in range(x0 // BIN, (x0 + w - 1) // BIN + 1):
                    self.bins[by, bx].append(rank)
        self.lut: np.ndarray | None = None  # provisional id (rank + 1) -> final id

    def ranks(self, y0: int, y1: int, x0: int, x1: int) -> list[int]:
        """Ranks of the objects whose crop may touch the window, in score order."""
        found: set[int] = set()
        for by in range(y0 // BIN, (y1 - 1) // BIN + 1):
            for bx in range(x0 // BIN, (x1 - 1) // BIN + 1):
                found.update(self.bins.get((by, bx), ()))
        return sorted(found)

    def provisional(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint32 window of provisional ids (score rank + 1; 0 background)."""
        out = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
        for rank in self.ranks(y0, y1, x0, x1):
            i = int(self.order[rank])
            (oy, ox), crop = self.objs.origins[i], self.objs.crops[i]
            a, b = max(y0, oy), min(y1, oy + crop.shape[0])
            c, d = max(x0, ox), min(x1, ox + crop.shape[1])
            if a >= b or c >= d:
                continue
            region = out[a - y0:b - y0, c - x0:d - x0]
            free = crop[a - oy:b - oy, c - ox:d - ox] & (region == 0)  # higher scores were painted first
            region[free] = rank + 1
        return out

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint32 window of the final label image (after :meth:`measure`)."""
        return self.lut[self.provisional(y0, y1, x0, x1)]

    def measure(self, image: LazyImage, *, side: int = 1024) -> dict[str, np.ndarray]:
        """Pass 1 over ``image``'s windows: sets ``kept`` and the final ids; returns, per
        id (in id order), ``area``, ``sum_y``, ``sum_x``, ``y0``, ``x0``, ``y1``, ``x1``
        (exclusive) and ``sum_intensity`` (of the raw image, as in the object table)."""
        n = len(self.order)
        sums = {k: np.zeros(n, np.float64) for k in ("area", "sum_y", "sum_x", "sum_intensity")}
        lows = {k: np.full(n, np.iinfo(np.int64).max, np.int64) for k in ("y0", "x0")}
        highs = {k: np.full(n, -1, np.int64) for k in ("y1", "x1")}
        for y0, y1, x0, x1 in image.windows(side):
            ids = self.provisional(y0, y1, x0, x1)
            ys, xs = np.nonzero(ids)
            if ys.size == 0:
                continue
            plane = writers.intensity_plane(image.read(y0, y1, x0, x1))[ys, xs].astype(np.float64)
            present, inv = np.unique(ids[ys, xs].astype(np.int64) - 1, return_inverse=True)
            sums["area"][present] += np.bincount(inv)
            sums["sum_y"][present] += np.bincount(inv, weights=ys + y0)
            sums["sum_x"][present] += np.bincount(inv, weights=xs + x0)
            sums["sum_intensity"][present] += np.bincount(inv, weights=plane)
            for key, values, ufunc in (("y0", ys + y0, np.minimum), ("x0", xs + x0, np.minimum),
                                       ("y1", ys + y0 + 1, np.maximum), ("x1", xs + x0 + 1, np.maximum)):
                table = lows if key in lows else highs
                ufunc.at(table[key], present[inv], values)
        visible = np.flatnonzero(sums["area"] > 0)
        self.kept = self.order[visible]
        self.lut = np.zeros(n + 1, dtype=np.uint32)
        self.lut[visible + 1] = np.arange(1, len(visible) + 1, dtype=np.uint32)
        return {k: v[visible] for k, v in {**sums, **lows, **highs}.items()}


def object_rows(stats: dict[str, np.ndarray], painter: LabelPainter,
                categories: Mapping[int, str] | None = None) -> list[dict]:
    """The object table (:data:`cupre.inference.writers.CSV_COLUMNS`) from :meth:`measure`."""
    objs, rows = painter.objs, []
    for k, i in enumerate(painter.kept.tolist()):
        area = stats["area"][k]
        rows.append({
            "id": k + 1,
            "score": round(float(objs.scores[i]), 6),
            "area": int(area),
            "centroid_y": round(float(stats["sum_y"][k] / area), 3),
            "centroid_x": round(float(stats["sum_x"][k] / area), 3),
            "bbox_x0": int(stats["x0"][k]), "bbox_y0": int(stats["y0"][k]),
            "bbox_x1": int(stats["x1"][k]), "bbox_y1": int(stats["y1"][k]),
            "mean_intensity": round(float(stats["sum_intensity"][k] / area), 4),
            "category": (categories or {}).get(int(objs.labels[i]), str(int(objs.labels[i]))),
        })
    return rows


def label_dtype(painter: LabelPainter) -> type:
    return np.uint16 if len(painter.kept) <= writers.UINT16_MAX_OBJECTS else np.uint32


def write_label_tiles(path: Path, painter: LabelPainter) -> None:
    """The label image as a tiled, zlib-compressed TIFF, painted tile by tile (atomic)."""
    dtype = label_dtype(painter)
    height, width = painter.height, painter.width

    def tiles():
        for y0 in range(0, height, TIFF_TILE):
            for x0 in range(0, width, TIFF_TILE):
                yield painter.window(y0, min(y0 + TIFF_TILE, height), x0, min(x0 + TIFF_TILE, width)).astype(dtype)

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=(height, width), dtype=dtype, tile=(TIFF_TILE, TIFF_TILE),
                         compression="zlib", photometric="minisblack")


def overlay_step(height: int, width: int) -> int:
    """Row and column step of the overlay of an image (1: full resolution)."""
    return max(1, math.ceil(max(height, width) / OVERLAY_SIDE))


def write_overlay(path: Path, painter: LabelPainter, image: LazyImage, value_range: tuple[float, float],
                  rows: list[dict], *, side: int = 1024) -> int:
    """Outlines and ids over the normalised image, every ``s``-th row and column
    (:func:`overlay_step`; at ``s = 1`` the same picture as for a small image), painted
    window by window: each window's outlines from its labels with one (subsampled) row
    and column of its neighbours, so no whole label image is held. Returns ``s``."""
    step = overlay_step(painter.height, painter.width)
    canvas = np.zeros((math.ceil(painter.height / step), math.ceil(painter.width / step), 3), dtype=np.uint8)
    colours = writers.palette(len(painter.kept))
    for y0, y1, x0, x1 in image.windows(side, step=step):
        tile = stretch(intensities(image.read(y0, y1, x0, x1)), *value_range)
        rgb = writers.normalised_rgb(tile[:, ::step, ::step])
        at = canvas[y0 // step:y0 // step + rgb.shape[0], x0 // step:x0 // step + rgb.shape[1]]
        at[:] = rgb
        ya, xa = max(0, y0 - step), max(0, x0 - step)  # on the same grid: windows start on multiples of step
        label = painter.window(ya, min(painter.height, y1 + step), xa, min(painter.width, x1 + step))[::step, ::step]
        core = (slice((y0 - ya) // step, (y0 - ya) // step + rgb.shape[0]),
                slice((x0 - xa) // step, (x0 - xa) // step + rgb.shape[1]))
        edge = writers.outlines(label)[core]
        at[edge] = colours[label[core][edge]]
    writers.write_ids(path, canvas, writers.scale_rows(rows, 1 / step))
    return step


def label_outlines(painter: LabelPainter,
                   stats: dict[str, np.ndarray]) -> Iterator[tuple[int, list[list[np.ndarray]]]]:
    """:func:`cupre.inference.writers.label_outlines` of the whole label image, each id
    traced in its own window."""
    for k in range(len(painter.kept)):
        y0, y1, x0, x1 = (int(stats[key][k]) for key in ("y0", "y1", "x0", "x1"))
        shift = np.array([x0, y0])
        polys = [[ring + shift for ring in poly]
                 for poly in writers.outline_parts(painter.window(y0, y1, x0, x1) == k + 1)]
        if polys:
            yield k + 1, polys
