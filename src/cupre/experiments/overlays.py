"""Fig. 8: predicted instance outlines next to the ground truth on held-out images.

One PNG grid: a row per chosen image, a column for the ground truth (green) and one per
method (magenta, detections scoring above ``score_threshold``, as ``cupre predict`` keeps them). Predictions come from each
cell's ``predictions_test.json`` (the kept model on the test part) or, without a test
part, ``predictions_val.json``. Images are chosen round-robin over cell types, so each
imaging kind shows up before any repeats. Every image is scaled to the panel (small ones
enlarged) before its outlines are drawn, so an outline is one sharp pixel line at any
image size, and nothing is filled over the cells. The experiment's panels are 480 px
(``overlays.panel_size``), so a 256 px image shows each nucleus about twice as large as
it is: large enough to judge a mask's outline, not only to count them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from scipy import ndimage

from cupre.data.sample import ImageRecord
from cupre.fileio import atomic_path
from cupre.inference.options import DEFAULTS, kept
from cupre.masks import segmentation_to_rle
from cupre.methods import method_label

GT_COLOR = (0, 255, 0)
PRED_COLOR = (255, 0, 255)
UNSURE_COLOR = (255, 200, 0)
LABEL_HEIGHT = 22
LABEL_FONT_SIZE = 16


def spread(items: list) -> list:
    """``items`` reordered so that any first k of them lie spread over the list: the ends,
    then the middle, then the quarters (a folder sorted by name shows each of its kinds)."""
    n = len(items)
    order: list[int] = []
    step = n - 1
    while len(order) < n and step >= 1:
        order += [i for i in range(0, n, step) if i not in order]
        step //= 2
    order += [i for i in range(n) if i not in order]
    return [items[i] for i in order]


def choose_images(records: list[ImageRecord], n: int) -> list[int]:
    """Up to ``n`` image ids, round-robin over cell types, spread over each type's ids
    (:func:`spread`)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: r.image_id):
        groups[str(rec.cell_type)].append(rec.image_id)
    queues = [spread(groups[k]) for k in sorted(groups)]
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen


def outline(image: np.ndarray, masks: np.ndarray, color: tuple[int, int, int], thickness: int = 1) -> np.ndarray:
    """Draw instance boundaries on a copy of ``image``.

    Args:
        image: uint8 ``HxWx3``.
        masks: bool or uint8 ``NxHxW`` (later instances drawn over earlier ones).
        color: RGB of the outlines.
        thickness: outline width in pixels.

    Returns:
        uint8 ``HxWx3``.
    """
    labels = np.zeros(image.shape[:2], dtype=np.int32)
    for k, m in enumerate(masks, start=1):
        labels[np.asarray(m, dtype=bool)] = k
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        diff = np.diff(labels, axis=axis) != 0
        lead = [slice(None)] * 2
        lead[axis] = slice(1, None)
        trail = [slice(None)] * 2
        trail[axis] = slice(None, -1)
        edge[tuple(lead)] |= diff
        edge[tuple(trail)] |= diff
    edge &= labels > 0
    if thickness > 1:
        edge = ndimage.binary_dilation(edge, iterations=thickness - 1) & (labels > 0)
    out = image.copy()
    out[edge] = color
    return out


def prediction_masks(results: list[dict], height: int, width: int, score_threshold: float) -> np.ndarray:
    """Decoded masks ``NxHxW`` (uint8) of the results scoring above ``score_threshold``."""
    drawn = sorted((r for r in results if kept(r.get("score", 1.0), score_threshold) and "segmentation" in r),
                   key=lambda r: r.get("score", 1.0))
    if not drawn:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = [segmentation_to_rle(r["segmentation"], height, width) for r in drawn]
    return np.moveaxis(mask_utils.decode(rles), -1, 0)


def to_panel_scale(rgb: np.ndarray, size: int, *mask_sets: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``rgb`` resized (bilinear) so its longer side is ``size``, and each ``NxHxW`` mask
    set resized with it (nearest), so that outlines are drawn at the panel's resolution."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == (w, h):
        return rgb, list(mask_sets)
    small = np.asarray(Image.fromarray(rgb).resize(new, Image.BILINEAR))
    scaled = [np.stack([np.asarray(Image.fromarray(np.asarray(m, np.uint8)).resize(new, Image.NEAREST))
                        for m in masks]) if len(masks) else np.zeros((0, new[1], new[0]), np.uint8)
              for masks in mask_sets]
    return small, scaled


def _panel(image: np.ndarray, title: str, size: int) -> Image.Image:
    h, w = image.shape[:2]
    scale = size / max(h, w)
    pic = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    panel = Image.new("RGB", (size, size + LABEL_HEIGHT), (255, 255, 255))
    panel.paste(pic, (0, LABEL_HEIGHT))
    ImageDraw.Draw(panel).text((3, 2), title, fill=(0, 0, 0), font=_font())
    return panel


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=LABEL_FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the small bitmap font only
        return ImageFont.load_default()


def render_overlays(data: str | Path, split: str | Path | None, predictions: dict[str, Path], path: Path, *,
                    panel_size: int, n_images: int = 4, score_threshold: float = DEFAULTS.score_threshold) -> Path:
    """Write the Fig. 8 grid for ``n_images`` held-out images.

    Args:
        data: the held-out dataset (any supported format).
        split: split JSON selecting its held-out images (None: all of them).
        predictions: method name -> a COCO results JSON on those images.
        path: the PNG to write.
        n_images: rows of the grid.
        score_threshold: detections scoring above it are drawn.
        panel_size: side of each panel in pixels.
    """
    from cupre.data.formats import open_dataset
    from cupre.data.splits import load_split

    ds = open_dataset(data, class_agnostic=True)
    if split is not None:
        ds = ds.subset(load_split(split)["image_ids"])
    by_method = {}
    for method, file in predictions.items():
        grouped = defaultdict(list)
        for r in json.loads(Path(file).read_text()) if Path(file).is_file() else []:
            grouped[r["image_id"]].append(r)
        by_method[method] = grouped
    index = {r.image_id: i for i, r in enumerate(ds.records)}
    rows = []
    for image_id in choose_images(ds.records, n_images):
        image, target = ds[index[image_id]]
        rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        h, w = rgb.shape[:2]
        found = [prediction_masks(grouped.get(image_id, []), h, w, score_threshold) for grouped in by_method.values()]
        small, (gt, *found) = to_panel_scale(rgb, panel_size, target["masks"].numpy(), *found)
        panels = [_panel(outline(small, gt, GT_COLOR), f"ground truth ({len(gt)})", panel_size)]
        for method, masks in zip(by_method, found):
            title = f"{method_label(method)} ({len(masks)})"
            panels.append(_panel(outline(small, masks, PRED_COLOR), title, panel_size))
        rows.append(panels)
    cols = 1 + len(by_method)
    sheet = Image.new("RGB", (cols * panel_size, max(1, len(rows)) * (panel_size + LABEL_HEIGHT)), (255, 255, 255))
    for i, panels in enumerate(rows):
        for j, panel in enumerate(panels):
            sheet.paste(panel, (j * panel_size, i * (panel_size + LABEL_HEIGHT)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def render_pseudo_labels(pseudo_labels: str | Path, path: Path, *, n_images: int = 4, panel_size: int = 320) -> Path:
    """A row of ``n_images`` pseudo-labelled images (spread over the file's images): the
    kept objects outlined in magenta, the uncertain ones (ignored in training) in amber."""
    from cupre.data.coco import CocoDataset

    ds = CocoDataset(pseudo_labels)
    raw_by_id = {r.image_id: i for i, r in enumerate(ds.records)}
    ids = sorted(raw_by_id)
    step = max(1, len(ids) // max(1, n_images))
    panels = []
    for image_id in ids[::step][:n_images]:
        index = raw_by_id[image_id]
        image, _ = ds[index]
        rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        raw = ds.read_raw(index)
        small, (kept, unsure) = to_panel_scale(rgb, panel_size, raw.masks[~raw.iscrowd], raw.masks[raw.iscrowd])
        drawn = outline(outline(small, unsure, UNSURE_COLOR), kept, PRED_COLOR)
        panels.append(_panel(drawn, f"{len(kept)} kept, {len(unsure)} uncertain", panel_size))
    sheet = Image.new("RGB", (max(1, len(panels)) * panel_size, panel_size + LABEL_HEIGHT), (255, 255, 255))
    for j, panel in enumerate(panels):
        sheet.paste(panel, (j * panel_size, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
