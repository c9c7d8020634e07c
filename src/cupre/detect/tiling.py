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
of cells needs little more than its label image. The detector's per-tile masks are
box-local already (a stand-in detector's full masks are cropped as soon as the tile is
done), and the detector makes masks only for detections the core rule keeps.

Scale. Every image runs at the model's object scale (:mod:`cupre.scale`), the rule
training and evaluation use: :func:`predict_at_object_scale`. A tile of an image run at
factor ``f`` spans ``tile_size / f`` image pixels, so the detector always sees tiles of
about ``tile_size`` pixels; outputs come back in image pixels.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from cupre.detect.objects import Objects, crop_output
from cupre.detect.tiles import TILE_OVERLAP, TILE_SIZE, Tile, in_core, make_tiles, scaled_tiling
from cupre.devices import release_freed_memory
from cupre.scale import PROBE_FACTORS, at_object_scale

Detector = Callable[[list[torch.Tensor]], list[dict]]
PAIR_CHUNK = 256  # boxes compared against all candidates at a time in duplicate removal


def _shift(tile: Tile) -> np.ndarray:
    """Adds a tile's origin to ``x1, y1, x2, y2`` boxes in tile pixels."""
    return np.array([tile.x0, tile.y0, tile.x0, tile.y0], dtype=np.float32)


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
    neighbours: dict[int, list[int]] = {}
    for start in range(0, len(cand), PAIR_CHUNK):  # box pairs a chunk at a time: no list of all pairs
        iou = box_iou(boxes[start:start + PAIR_CHUNK], boxes)  # chunk x C
        hit = (iou > 0) & (tile_c[start:start + PAIR_CHUNK, None] != tile_c[None, :])
        ii, jj = torch.nonzero(hit, as_tuple=True)
        del iou, hit
        ii = ii + start
        sel = ii < jj
        for i, j in zip(cand[ii[sel].numpy()].tolist(), cand[jj[sel].numpy()].tolist()):
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


@torch.no_grad()
def predict_images(
    model: Detector,
    images: Sequence[torch.Tensor],
    *,
    tile_size: int = TILE_SIZE,
    overlap: int = TILE_OVERLAP,
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    scales: Sequence[float] | None = None,
) -> list[Objects]:
    """Run the detector over whole images of any size, tiling the large ones.

    Tiles of all ``images`` are run ``batch_size`` at a time, then merged per image
    (core rule, then duplicate removal; see the module docstring).

    Args:
        model: the detector in eval mode: ``model(list of 3xhxw float tensors in [0, 1],
            scales=..., select=...)`` -> list of dicts with ``boxes``, ``scores``,
            ``labels`` and masks (``masks``, or ``mask_origins`` + ``mask_crops``) in the
            input's pixels; ``select(i, boxes)`` says which detections of input ``i`` to
            keep before masks are made (the core rule; passed for tiled images only).
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
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        found = run_tiles(model, [images[k][:, t.y0:t.y1, t.x0:t.x1] for k, t in chunk], [t for _, t in chunk],
                          scales=None if scales is None else [factors[k] for k, _ in chunk],
                          tiled=any(len(layouts[k]) > 1 for k, _ in chunk), device=device)
        for (k, _), objs in zip(chunk, found):
            parts[k].append(objs)
    return [merge_tiles(found, tiles) for found, tiles in zip(parts, layouts)]


def run_tiles(model: Detector, crops: list[torch.Tensor], tiles: list[Tile], *, scales: list[float] | None,
              tiled: bool, device: torch.device | str) -> list[Objects]:
    """One forward pass over tiles: each tile's objects that the core rule keeps.

    Args:
        crops: the tiles' pixels, float ``3xhxw`` in [0, 1]; tiles: where they lie.
        scales: each tile's object-scale factor (None: native pixels).
        tiled: the tiles belong to tiled images (masks are made only for detections
            whose box centre lies in their tile's core); False for whole images.

    Returns:
        One :class:`Objects` per tile, in image pixels.
    """
    kwargs: dict = {} if scales is None else {"scales": scales}
    if tiled:  # no masks for what the core rule drops
        kwargs["select"] = lambda i, boxes: in_core(boxes.cpu().numpy() + _shift(tiles[i]), tiles[i])
    outputs = model([c.to(device) for c in crops], **kwargs)
    found = []
    for tile, out in zip(tiles, outputs):
        objs = crop_output(out, origin=(tile.y0, tile.x0))
        found.append(objs.select(in_core(objs.boxes, tile)))
    del outputs
    release_freed_memory()  # the pass's working set, before the next tile and the writers
    return found


def merge_tiles(found: list[Objects], tiles: list[Tile]) -> Objects:
    """The objects of one image from its tiles' (``found[k]`` from ``tiles[k]``): duplicates
    across tiles removed, sorted by descending score."""
    objs = Objects.concat(found)
    if len(tiles) > 1 and len(objs):
        tile_of = np.concatenate([np.full(len(o), k, dtype=np.int64) for k, o in enumerate(found)])
        objs = objs.select(remove_duplicates(objs, tile_of, tiles))
    return objs.select(np.argsort(-objs.scores, kind="stable"))


def predict_at_object_scale(
    model: Detector,
    images: Sequence[torch.Tensor],
    *,
    diameter: float | None = None,
    diameters: Sequence[float | None] | None = None,
    probe_factors: Sequence[float] = PROBE_FACTORS,
    **tiling,
) -> tuple[list[Objects], list[float]]:
    """:func:`predict_images` under the object-scale rule (:mod:`cupre.scale`): the one
    way cupre runs a model over images, for ``cupre predict``, validation, the napari
    widget and the exports.

    A model without ``object_size`` runs at native pixels. Otherwise each image runs at
    ``model.object_size / diameter`` when the user gives ``diameter`` (the typical cell
    diameter in the images, pixels; ``diameters``: one per image), or at the factor
    estimated from its first looks at ``probe_factors``.

    Returns:
        (objects per image, the factor each image ran at).
    """
    if diameters is None and diameter is not None:
        diameters = [diameter] * len(images)
    return at_object_scale(lambda batch, scales: predict_images(model, batch, scales=scales, **tiling), images,
                           getattr(model, "object_size", None), diameters=diameters, probe_factors=probe_factors,
                           measure=lambda objs: (objs.boxes, objs.scores))
