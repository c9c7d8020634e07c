"""Large images a tile at a time: read lazily, spread over workers, written window by window.

An image larger than ``--tile-size`` on either side is a *slide*, and is never loaded
whole:

1. its normalisation range is gathered window by window (:func:`cupre.data.lazy.intensity_range`);
2. its tiles are cut into tasks of ``batch_size`` tiles; a task opens the file, reads its
   tiles' windows, normalises them with the image's range and keeps each tile's objects
   that the core rule keeps (:func:`tile_task`). The tasks run in this process one after
   another, or on the workers of a Dask cluster (``cupre predict --workers/--cluster``):
   the same tasks either way, so the same objects;
3. the tiles' objects (box-local masks) are merged here, duplicates across tiles removed
   (:func:`cupre.detect.tiling.merge_tiles`);
4. all of it under the object-scale rule (:mod:`cupre.scale`): first looks at native
   pixels and at half size (a slide is not cut for the look at double size) to estimate
   the factor unless ``--diameter`` gives it, then the rescaled pass;
5. its files are written window by window (:mod:`cupre.inference.windows`): the label
   image as a tiled TIFF, the table, the overlay (subsampled beyond 4,096 px), the ROIs,
   GeoJSON outlines and OME-Zarr (block by block).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from cupre.data.imageio import intensities, stretch
from cupre.data.lazy import LazyImage, intensity_range
from cupre.detect.objects import Objects, objects_to_results
from cupre.detect.tiles import Tile, make_tiles, scaled_tiling
from cupre.detect.tiling import merge_tiles, run_tiles
from cupre.inference import windows, writers
from cupre.inference.outputs import write_all
from cupre.scale import at_object_scale

MapTasks = Callable[[Callable, list], Iterable]  # map_tasks(fn, items) -> fn(net, item, device=...) per item, in order


@dataclass(frozen=True)
class Slide:
    """A large image plane and its normalisation range (what a tile task needs to read it)."""

    file: Path
    page: int | None
    height: int
    width: int
    value_range: tuple[float, float]

    @staticmethod
    def open(file: Path, page: int | None) -> "Slide":
        with LazyImage(file, page) as image:
            return Slide(Path(file), page, *image.shape, intensity_range(image))


def tile_task(net, item: tuple[Slide, list[Tile], float | None, bool], *, device: torch.device) -> list[Objects]:
    """One task: read and normalise ``tiles`` of the slide, run them as one forward pass.

    ``item``: (the slide, its tiles, the object-scale factor or None for native pixels,
    whether the image has more than one tile at this factor).
    """
    slide, tiles, factor, tiled = item
    with LazyImage(slide.file, slide.page) as image:
        crops = [stretch(intensities(image.read(t.y0, t.y1, t.x0, t.x1)), *slide.value_range, grey_view=True)
                 for t in tiles]
    return run_tiles(net, crops, tiles, scales=None if factor is None else [factor] * len(tiles), tiled=tiled,
                     device=device)


def tile_pass(slide: Slide, factor: float | None, *, map_tasks: MapTasks, tile_size: int, overlap: int,
              batch_size: int) -> Objects:
    """All tiles of the slide at ``factor`` (None: native pixels), merged."""
    size, margin = scaled_tiling(tile_size, overlap, 1.0 if factor is None else factor)
    tiles = make_tiles(slide.height, slide.width, tile_size=size, overlap=margin)
    items = [(slide, tiles[k:k + batch_size], factor, len(tiles) > 1) for k in range(0, len(tiles), batch_size)]
    found = [objs for part in map_tasks(tile_task, items) for objs in part]
    return merge_tiles(found, tiles)


def predict_slide(slide: Slide, *, map_tasks: MapTasks, object_size: float | None,
                  diameter: float | None, tile_size: int, overlap: int, batch_size: int) -> tuple[Objects, float]:
    """The slide's objects under the object-scale rule, and the factor it ran at."""
    def run(slides: list[Slide], scales: list[float] | None) -> list[Objects]:
        return [tile_pass(s, None if scales is None else scales[k], map_tasks=map_tasks, tile_size=tile_size,
                          overlap=overlap, batch_size=batch_size) for k, s in enumerate(slides)]

    (objs,), (factor,) = at_object_scale(run, [slide], object_size,
                                         diameters=None if diameter is None else [diameter],
                                         measure=lambda o: (o.boxes, o.scores),
                                         size=lambda s: (s.height, s.width), crop=None)
    return objs, factor


class SlideImage:
    """A large image's prediction read window by window (a
    :class:`cupre.inference.outputs.Predicted`): the label image is painted per window
    (:class:`cupre.inference.windows.LabelPainter`) and never held whole."""

    def __init__(self, objs: Objects, slide: Slide, image: LazyImage, categories: list[dict]) -> None:
        self.painter = windows.LabelPainter(objs, slide.height, slide.width)
        self.stats = self.painter.measure(image)
        self.rows = windows.object_rows(self.stats, self.painter, writers.category_names(categories))
        self.kept = self.painter.kept
        self.shape, self.label_dtype = image.shape, windows.label_dtype(self.painter)
        self.slide, self.image = slide, image
        self._outlines: list | None = None

    def write_label(self, path: Path) -> None:
        windows.write_label_tiles(path, self.painter)

    def write_overlay(self, path: Path) -> None:
        windows.write_overlay(path, self.painter, self.image, self.slide.value_range, self.rows)

    def outlines(self) -> list:
        if self._outlines is None:
            self._outlines = list(windows.label_outlines(self.painter, self.stats))
        return self._outlines

    def read_image(self, y0: int, y1: int, x0: int, x1: int):
        return self.image.read(y0, y1, x0, x1)

    def read_label(self, y0: int, y1: int, x0: int, x1: int):
        return self.painter.window(y0, y1, x0, x1).astype(self.label_dtype)


def write_slide_outputs(paths: dict[str, Path], objs: Objects, slide: Slide, *, image_id: int,
                        categories: list[dict]) -> tuple[list[dict], int]:
    """All files of one slide (:func:`cupre.inference.outputs.write_all`), window by
    window; returns its COCO results and object count."""
    with LazyImage(slide.file, slide.page) as image:
        predicted = SlideImage(objs, slide, image, categories)
        write_all(paths, predicted)
    results = objects_to_results(objs, predicted.kept, image_id=image_id, height=slide.height,
                                 width=slide.width, category_ids=writers.category_ids(categories))
    return results, len(predicted.kept)
