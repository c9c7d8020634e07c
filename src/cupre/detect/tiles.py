"""Tile geometry: overlapping tiles spaced evenly over an image, each with the *core*
that decides which tile keeps a detection (see :mod:`cupre.detect.tiling`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cupre.errors import CupreError

TILE_SIZE = 1024  # pixels: images larger than this on a side are tiled
TILE_OVERLAP = 128  # pixels between neighbouring tiles, at least the largest cell


@dataclass(frozen=True)
class Tile:
    """One tile of an image and its core (all in image pixels, ends exclusive).

    Attributes:
        y0, x0, y1, x1: the tile window ``image[:, y0:y1, x0:x1]``.
        core: ``(cy0, cx0, cy1, cx1)``; a box centre ``(cy, cx)`` belongs to this tile when
            ``cy0 <= cy < cy1`` and ``cx0 <= cx < cx1`` (image borders are at +-inf).
    """

    y0: int
    x0: int
    y1: int
    x1: int
    core: tuple[float, float, float, float]


def tile_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Evenly spaced tile starts along one axis, neighbours overlapping by >= ``overlap``."""
    if length <= tile_size:
        return [0]
    count = math.ceil((length - overlap) / (tile_size - overlap))
    return [round(i * (length - tile_size) / (count - 1)) for i in range(count)]


def _cores(starts: list[int], size: int) -> list[tuple[float, float]]:
    """Core interval of each tile along one axis: split every overlap at its middle."""
    bounds = [-math.inf] + [(starts[i + 1] + starts[i] + size) / 2 for i in range(len(starts) - 1)] + [math.inf]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def make_tiles(height: int, width: int, *, tile_size: int, overlap: int) -> list[Tile]:
    """Overlapping tiles covering an ``height x width`` image, row by row.

    An image that fits in ``tile_size`` along an axis has one tile of its own size along
    that axis; an image that fits on both axes is a single tile.

    Raises:
        CupreError: ``tile_size`` or ``overlap`` out of range.
    """
    if tile_size < 32:
        raise CupreError(f"--tile-size must be at least 32 pixels, got {tile_size}")
    if not 0 <= overlap < tile_size // 2:
        raise CupreError(f"--tile-overlap must be in 0..{tile_size // 2 - 1} for --tile-size {tile_size}, got {overlap}")
    ys, xs = tile_starts(height, tile_size, overlap), tile_starts(width, tile_size, overlap)
    th, tw = min(tile_size, height), min(tile_size, width)
    tiles = []
    for y0, (cy0, cy1) in zip(ys, _cores(ys, th)):
        for x0, (cx0, cx1) in zip(xs, _cores(xs, tw)):
            tiles.append(Tile(y0, x0, y0 + th, x0 + tw, (cy0, cx0, cy1, cx1)))
    return tiles


def in_core(boxes: np.ndarray, tile: Tile) -> np.ndarray:
    """bool ``N``: the box centre (image pixels) lies in the tile's core."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    cy0, cx0, cy1, cx1 = tile.core
    return (cy >= cy0) & (cy < cy1) & (cx >= cx0) & (cx < cx1)


def scaled_tiling(tile_size: int, overlap: int, factor: float) -> tuple[int, int]:
    """Tile size in image pixels for an image run at ``factor``: the detector still sees
    about ``tile_size`` pixels; the overlap (in image pixels) is kept."""
    if factor == 1.0:
        return tile_size, overlap
    return max(round(tile_size / factor), 2 * overlap + 2), overlap  # make_tiles wants overlap < size // 2
