"""Prediction on images of any size: overlapping tiles, merged so each cell comes out once.

An image larger than ``tile_size`` is cut into overlapping tiles (:func:`make_tiles`),
spaced evenly so that neighbours overlap by at least ``overlap`` pixels. Every tile is
run through the detector and its detections are merged in two steps:

1. **Core rule.** The tiles' *cores* partition the image: a core is its tile minus half of
   the overlap with each neighbour (the boundary sits at the middle of the overlap). A
   detection is kept only by the tile whose core holds its box centre. When every object
   is at most ``overlap`` pixels across, the tile that keeps it sees it whole, and a cut
   fragment at a tile edge has its centre outside that tile's core.
2. **Duplicates.** Objects that straddle a core boundary can still be kept twice (the
   centre of two slightly different boxes falls on either side). Objects near a boundary
   from different tiles are compared by mask overlap and the lower-scored of a
   duplicate pair is dropped (greedy, in score order, like NMS).

Memory. Kept objects are stored as :class:`Objects`: a box plus a bool mask cropped to
the mask's own extent, never a full-size mask, so a 4,000 x 4,000 image with thousands
of cells needs little more than its label image. The detector's per-tile output (one
``uint8`` mask per detection over the tile) is cropped as soon as the tile is done.

Scale. Every image runs at the model's object scale (:mod:`cupre.scale`), the rule
training and evaluation use: :func:`predict_at_object_scale`. A tile of an image run at
factor ``f`` spans ``tile_size / f`` image pixels, so the detector always sees tiles of
about ``tile_size`` pixels; outputs come back in image pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from cupre.errors import CupreError
from cupre.scale import estimated_factor, scale_factor, snap

Detector = Callable[[list[torch.Tensor]], list[dict]]


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


@dataclass
class Objects:
    """Detections of one image, each mask cropped to its own extent.

    Attributes:
        boxes: float32 ``Nx4`` XYXY boxes from the detector, in image pixels.
        scores: float32 ``N``.
        labels: int64 ``N`` model labels (1..C).
        origins: int64 ``Nx2`` ``(y0, x0)`` of each crop in the image.
        crops: ``N`` bool arrays ``h_i x w_i``; object ``i`` covers
            ``image[y0 + r, x0 + c]`` where ``crops[i][r, c]``.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    origins: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    crops: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crops)

    def select(self, index: np.ndarray) -> "Objects":
        """The objects at ``index`` (int indices or a bool mask), in that order."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        return Objects(self.boxes[index], self.scores[index], self.labels[index], self.origins[index],
                       [self.crops[i] for i in index.tolist()])

    def areas(self) -> np.ndarray:
        """int64 ``N`` pixel counts of the masks."""
        return np.array([int(c.sum()) for c in self.crops], dtype=np.int64)

    @staticmethod
    def concat(parts: Sequence["Objects"]) -> "Objects":
        if not parts:
            return Objects()
        return Objects(
            np.concatenate([p.boxes for p in parts]).astype(np.float32),
            np.concatenate([p.scores for p in parts]).astype(np.float32),
            np.concatenate([p.labels for p in parts]).astype(np.int64),
            np.concatenate([p.origins for p in parts]).astype(np.int64),
            [c for p in parts for c in p.crops],
        )


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


def crop_output(out: dict, *, origin: tuple[int, int] = (0, 0), score_threshold: float = 0.0) -> Objects:
    """One detector output (full-tile masks) -> :class:`Objects` in image coordinates.

    Args:
        out: ``boxes`` ``Nx4`` XYXY, ``scores`` ``N``, ``labels`` ``N``, ``masks``
            ``NxHxW`` (uint8/bool, or ``Nx1xHxW``) over the tile.
        origin: ``(y0, x0)`` of the tile in the image.
        score_threshold: detections scoring below it are dropped; so are empty masks.
    """
    masks = out["masks"]
    if masks.dim() == 4:
        masks = masks[:, 0]
    keep = torch.nonzero(out["scores"] >= score_threshold).flatten()
    if keep.numel() < masks.shape[0]:
        masks = masks[keep]  # N x H x W, still on the model's device (no copy when all pass)
    rows, cols = masks.any(dim=2).bool(), masks.any(dim=1).bool()  # NxH, NxW
    nonempty = torch.nonzero(rows.any(dim=1)).flatten()
    keep, rows, cols = keep[nonempty], rows[nonempty], cols[nonempty]
    if keep.numel() == 0:
        return Objects()
    y0 = rows.byte().argmax(dim=1)
    y1 = rows.shape[1] - rows.flip(1).byte().argmax(dim=1)
    x0 = cols.byte().argmax(dim=1)
    x1 = cols.shape[1] - cols.flip(1).byte().argmax(dim=1)
    ext = torch.stack([y0, x0, y1, x1], dim=1).cpu().numpy()
    rows_in = nonempty.tolist()
    flat = torch.cat([masks[i, a:c, b:d].reshape(-1) for i, (a, b, c, d) in zip(rows_in, ext.tolist())])
    flat = flat.cpu().numpy() != 0
    sizes = (ext[:, 2] - ext[:, 0]) * (ext[:, 3] - ext[:, 1])
    pieces = np.split(flat, np.cumsum(sizes)[:-1])
    crops = [p.reshape(c - a, d - b) for p, (a, b, c, d) in zip(pieces, ext.tolist())]
    oy, ox = origin
    boxes = out["boxes"][keep].float().cpu().numpy() + np.array([ox, oy, ox, oy], np.float32)
    return Objects(
        boxes=boxes.astype(np.float32),
        scores=out["scores"][keep].float().cpu().numpy(),
        labels=out["labels"][keep].cpu().numpy().astype(np.int64),
        origins=(ext[:, :2] + np.array([oy, ox])).astype(np.int64),
        crops=crops,
    )


def in_core(boxes: np.ndarray, tile: Tile) -> np.ndarray:
    """bool ``N``: the box centre (image pixels) lies in the tile's core."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    cy0, cx0, cy1, cx1 = tile.core
    return (cy >= cy0) & (cy < cy1) & (cx >= cx0) & (cx < cx1)


def _reach(tiles: list[Tile]) -> float:
    """How far a tile reaches past its core's interior boundaries (half the overlap)."""
    gaps = [g for t in tiles
            for g in (t.core[0] - t.y0, t.y1 - t.core[2], t.core[1] - t.x0, t.x1 - t.core[3])
            if math.isfinite(g)]
    return max(gaps, default=0.0)


def _near_boundaries(objs: Objects, tiles: list[Tile]) -> np.ndarray:
    """Indices of objects whose box reaches into the overlap band around an interior core
    boundary; a duplicate pair's two boxes overlap, and each lies inside its own tile, so
    both must reach into that band."""
    band = _reach(tiles) + 1.0
    lines_y = sorted({v for t in tiles for v in t.core[0::2] if math.isfinite(v)})
    lines_x = sorted({v for t in tiles for v in t.core[1::2] if math.isfinite(v)})
    near = np.zeros(len(objs), dtype=bool)
    b = objs.boxes
    for v in lines_x:
        near |= (b[:, 0] < v + band) & (b[:, 2] > v - band)
    for v in lines_y:
        near |= (b[:, 1] < v + band) & (b[:, 3] > v - band)
    return np.flatnonzero(near)


def mask_overlap(objs: Objects, i: int, j: int) -> tuple[int, int, int]:
    """``(intersection, area_i, area_j)`` of two cropped masks, in pixels."""
    (ay, ax), (by, bx) = objs.origins[i], objs.origins[j]
    a, b = objs.crops[i], objs.crops[j]
    y0, x0 = max(ay, by), max(ax, bx)
    y1, x1 = min(ay + a.shape[0], by + b.shape[0]), min(ax + a.shape[1], bx + b.shape[1])
    inter = 0
    if y1 > y0 and x1 > x0:
        inter = int((a[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & b[y0 - by:y1 - by, x0 - bx:x1 - bx]).sum())
    return inter, int(a.sum()), int(b.sum())


def remove_duplicates(
    objs: Objects,
    tile_of: np.ndarray,
    tiles: list[Tile],
    *,
    iou_threshold: float = 0.5,
    containment: float = 0.8,
) -> np.ndarray:
    """Greedy suppression of objects kept twice by neighbouring tiles.

    Two objects from different tiles are duplicates when their mask IoU exceeds
    ``iou_threshold`` or one covers more than ``containment`` of the other; of a pair the
    higher-scored survives (in score order, as in NMS). Only objects that reach into the
    overlap around a core boundary are compared.

    Args:
        objs: the objects kept by the core rule, from all tiles of one image.
        tile_of: int64 ``N``: the tile (index into ``tiles``) each object came from.
        tiles: the image's tiles.

    Returns:
        bool ``N``: objects to keep.
    """
    keep = np.ones(len(objs), dtype=bool)
    cand = _near_boundaries(objs, tiles)
    if cand.size < 2:
        return keep
    boxes = torch.from_numpy(objs.boxes[cand])
    tile_c = torch.from_numpy(tile_of[cand])
    pairs = []
    for start in range(0, len(cand), 1024):
        iou = box_iou(boxes[start:start + 1024], boxes)  # chunk x C
        hit = (iou > 0) & (tile_c[start:start + 1024, None] != tile_c[None, :])
        ii, jj = torch.nonzero(hit, as_tuple=True)
        ii = ii + start
        sel = ii < jj
        pairs += list(zip(cand[ii[sel].numpy()].tolist(), cand[jj[sel].numpy()].tolist()))
    neighbours: dict[int, list[int]] = {}
    for i, j in pairs:
        inter, ai, aj = mask_overlap(objs, i, j)
        if inter / max(ai + aj - inter, 1) > iou_threshold or inter / max(min(ai, aj), 1) > containment:
            neighbours.setdefault(i, []).append(j)
            neighbours.setdefault(j, []).append(i)
    for i in sorted(neighbours, key=lambda k: -float(objs.scores[k])):
        if keep[i]:
            for j in neighbours[i]:
                if objs.scores[j] <= objs.scores[i]:
                    keep[j] = False
    return keep


def scaled_tiling(tile_size: int, overlap: int, factor: float) -> tuple[int, int]:
    """Tile size in image pixels for an image run at ``factor``: the detector still sees
    about ``tile_size`` pixels; the overlap (in image pixels) is kept."""
    if factor == 1.0:
        return tile_size, overlap
    return max(round(tile_size / factor), 2 * overlap + 1), overlap


@torch.no_grad()
def predict_images(
    model: Detector,
    images: Sequence[torch.Tensor],
    *,
    tile_size: int = 1024,
    overlap: int = 128,
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    scales: Sequence[float] | None = None,
) -> list[Objects]:
    """Run the detector over whole images of any size, tiling the large ones.

    Tiles of all ``images`` are run ``batch_size`` at a time, then merged per image
    (core rule, then duplicate removal; see the module docstring).

    Args:
        model: the detector in eval mode: ``model(list of 3xhxw float tensors in [0, 1],
            scales=...)`` -> list of dicts with ``boxes``, ``scores``, ``labels``, ``masks``
            in the input's pixels.
        images: float ``3xHxW`` tensors in [0, 1] (any device).
        tile_size, overlap: tile side and minimum overlap in pixels (``overlap`` should
            be at least the largest object's size).
        batch_size: tiles per forward pass.
        device: where the model runs (the detector's own score threshold filters).
        scales: each image's object-scale factor (None: native pixels); a tile of an
            image run at ``f`` spans ``tile_size / f`` image pixels.

    Returns:
        One :class:`Objects` per image, sorted by descending score.
    """
    factors = [1.0] * len(images) if scales is None else [float(f) for f in scales]
    tilings = [scaled_tiling(tile_size, overlap, f) for f in factors]
    layouts = [make_tiles(img.shape[-2], img.shape[-1], tile_size=t, overlap=o)
               for img, (t, o) in zip(images, tilings)]
    jobs = [(k, tile) for k, tiles in enumerate(layouts) for tile in tiles]
    parts: list[list[Objects]] = [[] for _ in images]
    tile_ids: list[list[np.ndarray]] = [[] for _ in images]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        crops = [images[k][:, t.y0:t.y1, t.x0:t.x1].to(device) for k, t in chunk]
        if scales is None:
            outputs = model(crops)
        else:
            outputs = model(crops, scales=[factors[k] for k, _ in chunk])
        for (k, tile), out in zip(chunk, outputs):
            objs = crop_output(out, origin=(tile.y0, tile.x0))
            objs = objs.select(in_core(objs.boxes, tile))
            parts[k].append(objs)
            tile_ids[k].append(np.full(len(objs), len(parts[k]) - 1, dtype=np.int64))
        del outputs
    results = []
    for k, tiles in enumerate(layouts):
        objs = Objects.concat(parts[k])
        if len(tiles) > 1 and len(objs):
            keep = remove_duplicates(objs, np.concatenate(tile_ids[k]), tiles)
            objs = objs.select(keep)
        results.append(objs.select(np.argsort(-objs.scores, kind="stable")))
    return results


def predict_at_object_scale(
    model: Detector,
    images: Sequence[torch.Tensor],
    *,
    object_size: float | None = None,
    **tiling,
) -> tuple[list[Objects], list[float]]:
    """:func:`predict_images` under the object-scale rule (:mod:`cupre.scale`).

    A model without ``object_size`` runs at native pixels. Otherwise each image runs at
    ``model.object_size / object_size`` when the user gives ``object_size`` (the typical
    object side in the images, pixels), or at the factor estimated from a first
    native-pixel pass, exactly as in evaluation.

    Returns:
        (objects per image, the factor each image ran at).
    """
    target = getattr(model, "object_size", None)
    if target is None:
        return predict_images(model, images, **tiling), [1.0] * len(images)
    if object_size is not None:
        factors = [snap(scale_factor(target, object_size))] * len(images)
        return predict_images(model, images, scales=factors, **tiling), factors
    found = predict_images(model, images, **tiling)
    factors = [estimated_factor(target, objs.boxes, objs.scores) for objs in found]
    redo = [i for i, f in enumerate(factors) if f != 1.0]
    if redo:
        again = predict_images(model, [images[i] for i in redo], scales=[factors[i] for i in redo], **tiling)
        for i, objs in zip(redo, again):
            found[i] = objs
    return found, factors
