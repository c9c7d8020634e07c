"""What ``cupre predict`` writes: label TIFF, overlay PNG, object table, COCO results, ROIs,
GeoJSON.

Everything starts from :func:`paint_labels`, which turns an image's :class:`Objects`
(cropped masks) into one label image: object ``k`` (1-based) is the ``k``-th highest
scoring, and where masks overlap the higher-scoring object wins. Objects left with no
visible pixel are dropped from every output, so the ids of the label image, the rows of
the CSV table, the COCO results (``object_id``) and the ROI names are the same set.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

import numpy as np
import roifile
import tifffile
from PIL import Image, ImageDraw
from scipy import ndimage

from cupre.fileio import atomic_path

if TYPE_CHECKING:  # for annotations: torch is not imported for the flags of --help
    from cupre.detect.objects import Objects

CSV_COLUMNS = ("id", "score", "area", "centroid_y", "centroid_x", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
               "mean_intensity", "category")
UINT16_MAX_OBJECTS = 65535


def paint_labels(objs: Objects, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint objects into an instance label image, highest score first.

    Args:
        objs: an image's objects (any order).
        height, width: the image size.

    Returns:
        label: ``HxW`` uint16 (uint32 past 65,535 objects); 0 is background, id ``k`` is
            the ``k``-th highest-scoring object that kept at least one pixel.
        kept: int64 ``K``: ``kept[k - 1]`` is the index into ``objs`` of id ``k``.
    """
    order = np.argsort(-objs.scores, kind="stable")
    label = np.zeros((height, width), dtype=np.uint32)
    painted = np.zeros(len(order), dtype=bool)
    next_id = 1
    for n, i in enumerate(order.tolist()):
        (y0, x0), crop = objs.origins[i], objs.crops[i]
        region = label[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
        free = crop & (region == 0)  # overlaps go to the higher score, painted before
        if free.any():
            region[free] = next_id
            painted[n] = True
            next_id += 1
    kept = order[painted]
    dtype = np.uint16 if len(kept) <= UINT16_MAX_OBJECTS else np.uint32
    return label.astype(dtype, copy=False), kept


def intensity_plane(raw: np.ndarray) -> np.ndarray:
    """The raw image as one intensity per pixel: grey as is, colour averaged over its
    channels (alpha dropped, as in :func:`cupre.data.imageio.normalize`). Returns a view
    or a float32 ``HxW`` array."""
    a = np.asarray(raw)
    if a.ndim == 2:
        return a
    if a.shape[-1] in (2, 1):
        return a[..., 0]
    return a[..., :3].astype(np.float32).mean(axis=-1)


def object_rows(label: np.ndarray, kept: np.ndarray, objs: Objects, raw: np.ndarray,
                categories: Mapping[int, str] | None = None) -> list[dict]:
    """One row per id of ``label``: the columns of :data:`CSV_COLUMNS`.

    Area, centroid, box (XYXY, ``x1``/``y1`` exclusive) and mean intensity describe the
    object's pixels in the label image (its visible part); ``score`` and ``category``
    are the detector's. ``mean_intensity`` is read from the raw (not normalised) image.
    """
    plane = intensity_plane(raw)
    rows = []
    for k, sl in enumerate(ndimage.find_objects(label), start=1):
        if sl is None:
            continue
        inside = label[sl] == k
        ys, xs = np.nonzero(inside)
        i = int(kept[k - 1])
        rows.append({
            "id": k,
            "score": round(float(objs.scores[i]), 6),
            "area": int(ys.size),
            "centroid_y": round(float(ys.mean() + sl[0].start), 3),
            "centroid_x": round(float(xs.mean() + sl[1].start), 3),
            "bbox_x0": sl[1].start, "bbox_y0": sl[0].start, "bbox_x1": sl[1].stop, "bbox_y1": sl[0].stop,
            "mean_intensity": round(float(plane[sl][inside].astype(np.float64).mean()), 4),
            "category": (categories or {}).get(int(objs.labels[i]), str(int(objs.labels[i]))),
        })
    return rows


def write_label_tiff(path: Path, label: np.ndarray) -> None:
    """The label image as a zlib-compressed TIFF (uint16 or uint32), written atomically."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, label, compression="zlib", photometric="minisblack")


def write_csv(path: Path, rows: list[dict]) -> None:
    """The per-object table, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def palette(n: int) -> np.ndarray:
    """``(n + 1) x 3`` uint8 distinct bright colours (golden-ratio hues); row 0 unused."""
    hue = (np.arange(n + 1) * 0.618033988749895) % 1.0
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6) % 6
    rgb = 1 - np.clip(np.minimum(k, 4 - k), 0, 1)  # HSV -> RGB with S = V = 1
    return (rgb * 255).astype(np.uint8)


def outlines(label: np.ndarray) -> np.ndarray:
    """bool ``HxW``: object pixels with a 4-neighbour of another id (or background)."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    return edge & (label > 0)


OVERLAY_MIN_SIDE = 768  # smaller images are drawn enlarged (by a whole factor) so outlines and ids stay legible
ID_HEIGHT = 11  # pixels of an id drawn in PIL's default font


POSITION_KEYS = ("centroid_x", "centroid_y", "bbox_x0", "bbox_x1", "bbox_y0", "bbox_y1")


def scale_rows(rows: list[dict], factor: float) -> list[dict]:
    """Object-table rows with their centroid and box multiplied by ``factor`` (the
    overlay's scale against the image)."""
    return [{**r, **{k: r[k] * factor for k in POSITION_KEYS if k in r}} for r in rows]


def overlay_factor(height: int, width: int) -> int:
    """The whole factor a small image is enlarged by in its overlay (1: drawn as it is)."""
    return max(1, OVERLAY_MIN_SIDE // max(1, height, width))


def write_overlay(path: Path, image: np.ndarray, label: np.ndarray, rows: list[dict]) -> None:
    """Outlines (no fill) and, where they fit inside their object, ids over the image;
    an image under :data:`OVERLAY_MIN_SIDE` px is enlarged first, so a 256 px image
    becomes 768 px with one-pixel outlines around its nuclei.

    Args:
        image: uint8 ``HxWx3`` (the normalised image the model saw).
        label: the label image; rows: its object table (for the id positions).
    """
    f = overlay_factor(*label.shape)
    if f > 1:
        size = (label.shape[1] * f, label.shape[0] * f)
        image = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(size, Image.BILINEAR))
        label = np.repeat(np.repeat(label, f, axis=0), f, axis=1)
        rows = scale_rows(rows, f)
    canvas = np.array(image, dtype=np.uint8, copy=True)
    draw_outlines(canvas, label, palette(int(label.max()) if label.size else 0))
    write_ids(path, canvas, rows)


def draw_outlines(canvas: np.ndarray, label: np.ndarray, colours: np.ndarray) -> None:
    """Paint each object's :func:`outlines` on ``canvas`` (uint8 ``HxWx3``, in place) in
    its id's colour (``colours``: :func:`palette` of at least the largest id)."""
    edge = outlines(label)
    canvas[edge] = colours[label[edge]]


def id_fits(row: dict, text: str) -> bool:
    """Whether ``text`` fits inside the row's box (rows without a box: always drawn)."""
    if "bbox_x0" not in row:
        return True
    return (row["bbox_x1"] - row["bbox_x0"] >= 6 * len(text) + 2) and (row["bbox_y1"] - row["bbox_y0"] >= ID_HEIGHT)


def write_ids(path: Path, canvas: np.ndarray, rows: list[dict]) -> None:
    """Write ``canvas`` as the overlay PNG with each row's id at its centroid, where the id
    fits inside the object (a crowd of small nuclei keeps its outlines readable)."""
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    for row in rows:
        text = str(row["id"])
        if id_fits(row, text):
            draw.text((row["centroid_x"], row["centroid_y"]), text, fill=(255, 255, 255), anchor="mm",
                      stroke_width=1, stroke_fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", compress_level=1)


def trace_outline(mask: np.ndarray) -> np.ndarray:
    """Outer boundary of the largest 8-connected part of a bool mask, along pixel edges.

    The walk keeps the object on its right (clockwise on screen) and turns left whenever
    it can, so diagonal neighbours stay connected; vertices are pixel corners, as in
    ImageJ's traced ROIs (pixel ``(r, c)`` spans corners ``(c, r)``..``(c + 1, r + 1)``).

    Returns:
        int64 ``Kx2`` polygon vertices ``(x, y)`` in the mask's corner coordinates (only
        the corners where the direction changes).
    """
    parts, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if n > 1:
        mask = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1)
    fg = np.pad(mask, 1)
    r, c = np.argwhere(fg)[0]  # first pixel in raster order: walk right along its top edge
    start = (int(c), int(r), 1, 0)
    x, y, dx, dy = start
    vertices = []
    while True:
        x, y = x + dx, y + dy
        # the two pixels ahead: left and right of the edge (x, y) -> (x + dx, y + dy)
        left = fg[y + (dy - dx - 1) // 2, x + (dx + dy - 1) // 2]
        right = fg[y + (dx + dy - 1) // 2, x + (dx - dy - 1) // 2]
        if left:
            ndx, ndy = dy, -dx
        elif right:
            ndx, ndy = dx, dy
        else:
            ndx, ndy = -dy, dx
        if (ndx, ndy) != (dx, dy):
            vertices.append((x - 1, y - 1))
        dx, dy = ndx, ndy
        if (x, y, dx, dy) == start:
            break
    return np.array(vertices, dtype=np.int64)


def polygon_roi(polygon: np.ndarray, name: str) -> roifile.ImagejRoi:
    """An ImageJ polygon ROI (encoded by ``roifile``) of a traced outline.

    The vertices are pixel corners, so the ROI's right/bottom bounds are the largest
    corner coordinates (the exclusive pixel bounds), as in ImageJ's traced ROIs.
    """
    roi = roifile.ImagejRoi.frompoints(polygon)
    roi.roitype = roifile.ROI_TYPE.POLYGON
    roi.right, roi.bottom = int(polygon[:, 0].max()), int(polygon[:, 1].max())
    roi.name = name
    return roi


def outline_parts(mask: np.ndarray) -> list[list[np.ndarray]]:
    """The outline of every 8-connected part of a bool mask, largest part first, each as
    its rings: the outer boundary (:func:`trace_outline`), then one ring per hole (a
    4-connected background region the part encloses)."""
    parts, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(parts.ravel())[1:]
    polygons = []
    for k in np.argsort(-sizes, kind="stable").tolist():
        part = parts == k + 1
        rings = [trace_outline(part)]
        holes, count = ndimage.label(ndimage.binary_fill_holes(part) & ~part)
        rings += [trace_outline(holes == j) for j in range(1, count + 1)]
        polygons.append([r for r in rings if len(r) >= 3])
    return [p for p in polygons if p and len(p[0]) >= 3]


def label_outlines(label: np.ndarray) -> Iterator[tuple[int, list[list[np.ndarray]]]]:
    """``(id, polygons)`` per id of ``label``: each part's rings (:func:`outline_parts`,
    largest part first, outer ring then holes) as ``Kx2`` ``(x, y)`` pixel-corner
    coordinates in the image; ids whose outline has fewer than 3 vertices are left out."""
    for k, sl in enumerate(ndimage.find_objects(label), start=1):
        if sl is None:
            continue
        shift = np.array([sl[1].start, sl[0].start])
        polys = [[ring + shift for ring in poly] for poly in outline_parts(label[sl] == k)]
        if polys:
            yield k, polys


def write_roi_zip(path: Path, outlines: Iterable[tuple[int, list[list[np.ndarray]]]]) -> int:
    """One ImageJ polygon ROI per id, its largest part's outer ring (:func:`label_outlines`;
    entries ``00001.roi`` ...), zipped as the ImageJ ROI Manager reads them. Returns the
    number written."""
    written = 0
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, polys in outlines:
            zf.writestr(f"{k:05d}.roi", polygon_roi(polys[0][0], f"{k:05d}").tobytes())
            written += 1
    return written


def write_geojson(path: Path, outlines: Iterable[tuple[int, list[list[np.ndarray]]]], rows: list[dict]) -> int:
    """The objects as GeoJSON for QuPath (*File > Import objects*): a FeatureCollection of
    one Feature per id (:func:`label_outlines`, pixel-corner coordinates, rings closed,
    holes as inner rings): a Polygon, or a MultiPolygon for an object in several parts;
    each a QuPath detection
    named by its id, classified by its category and carrying its table row
    (:func:`object_rows`) as measurements. Returns the number written (atomic)."""
    by_id = {row["id"]: row for row in rows}
    features = []
    for k, polys in outlines:
        row = by_id[k]
        rings = [[np.concatenate([r, r[:1]]).tolist() for r in poly] for poly in polys]
        geometry = {"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1 else \
            {"type": "MultiPolygon", "coordinates": rings}
        features.append({
            "type": "Feature",
            "geometry": geometry,
            "properties": {
                "objectType": "detection",
                "name": str(k),
                "classification": {"name": str(row["category"])},
                "measurements": {key: row[key] for key in CSV_COLUMNS if key != "category"},
            },
        })
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump({"type": "FeatureCollection", "features": features}, fh, separators=(",", ":"))
    return len(features)


def category_names(categories: list[dict]) -> dict[int, str]:
    """Model label (1..C, in the order of ``categories``) -> category name."""
    return {k: c["name"] for k, c in enumerate(categories, start=1)}


def category_ids(categories: list[dict]) -> dict[int, int]:
    """Model label (1..C) -> the category's id in the results file."""
    return {k: int(c["id"]) for k, c in enumerate(categories, start=1)}


def normalised_rgb(image) -> np.ndarray:
    """uint8 ``HxWx3`` of a float ``3xHxW`` tensor in [0, 1]."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    out = np.empty((*arr.shape[1:], 3), dtype=np.uint8)
    for c in range(3):  # one plane at a time: no float copy of the whole image
        out[..., c] = np.clip(arr[c], 0, 1) * 255 + 0.5
    return out

