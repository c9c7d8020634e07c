"""Write a synthetic cell or natural-object dataset as COCO instances JSON + PNG images.

``cells`` are microscopy-like images (phase contrast, fluorescence, H&E-like brightfield)
with one dominant cell type per image; ``objects`` are cluttered RGB scenes of ten
textured shape classes, a small stand-in for COCO. Both have exact, disjoint
visible-part instance masks. The same seed always writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from cupre.errors import CupreError

KINDS = ("cells", "objects")
MIN_AREA = 10  # visible pixels below which an occluded instance is dropped
_IMAGE_NAME = re.compile(r"^\d{6}\.png$")


@dataclass
class SynthImage:
    """One rendered image and its instances, before encoding.

    Attributes:
        image: uint8 ``HxW`` (grey) or ``HxWx3`` (RGB).
        labels: int32 ``HxW`` instance map; 0 is background, ``k`` is instance ``k``
            (later instances overwrite earlier ones, so this is the visible part).
        category_ids: int ``K``; ``category_ids[k-1]`` is the COCO category of instance ``k``.
        meta: extra fields stored in the COCO ``images`` entry (``cell_type``, ``style``).
    """

    image: np.ndarray
    labels: np.ndarray
    category_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Frame:
    """The clipped bounding-box region around one object, in object coordinates.

    Attributes:
        region: ``(slice_y, slice_x)`` into the image.
        u, v: float32 ``hxw`` coordinates rotated into the object's frame (``u`` along
            its major axis), in pixels from its centre.
    """

    region: tuple[slice, slice]
    u: np.ndarray
    v: np.ndarray


def local_frame(cy: float, cx: float, half: float, angle: float, shape: tuple[int, int]) -> Frame | None:
    """The box ``[cy-half, cy+half] x [cx-half, cx+half]`` clipped to the image, with
    rotated coordinates; ``None`` when the box lies outside the image."""
    h, w = shape
    y0, y1 = max(0, int(np.floor(cy - half))), min(h, int(np.ceil(cy + half)) + 1)
    x0, x1 = max(0, int(np.floor(cx - half))), min(w, int(np.ceil(cx + half)) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return Frame(region=(slice(y0, y1), slice(x0, x1)), u=dx * c + dy * s, v=dy * c - dx * s)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int, channels: int = 0) -> np.ndarray:
    """Smooth random field ``HxW`` (or ``HxWxC``), roughly unit variance, with features
    about ``cell`` pixels wide (bicubic upsampling of a coarse Gaussian grid)."""
    h, w = shape
    gh, gw = h // cell + 2, w // cell + 2
    planes = []
    for _ in range(max(1, channels)):
        coarse = rng.standard_normal((gh, gw)).astype(np.float32)
        img = Image.fromarray(coarse).resize((gw * cell, gh * cell), Image.BICUBIC)
        planes.append(np.asarray(img)[:h, :w])
    out = np.stack(planes, axis=-1) if channels else planes[0]
    return out.astype(np.float32, copy=False)


def illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """Uneven illumination ``HxW``: a random linear gradient times a vignette, mean ~1."""
    h, w = shape
    yy = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, :]
    gy, gx = rng.uniform(-strength, strength, size=2)
    vig = rng.uniform(0.0, strength)
    cy, cx = rng.uniform(-0.2, 0.2, size=2)
    field_ = 1.0 + gy * yy + gx * xx - vig * 2.0 * ((yy - cy) ** 2 + (xx - cx) ** 2)
    return field_.astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (clipped, rounded)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_image(kind: str, *, index: int, size: int = 256, seed: int = 0) -> SynthImage:
    """Render image ``index`` (1-based) of a synthetic set; independent of how many
    images the set has, so image 3 of seed 0 is the same in a set of 5 or of 500."""
    module = _generator(kind)
    rng = np.random.default_rng([int(seed), int(index)])
    return module.render(rng, size=size, index=index, seed=seed)


def _generator(kind: str):
    if kind == "cells":
        from cupre.data import synth_cells

        return synth_cells
    if kind == "objects":
        from cupre.data import synth_objects

        return synth_objects
    raise CupreError(f"unknown synthetic kind {kind!r}; choose one of {', '.join(KINDS)}")


def encode_instances(sample: SynthImage, *, image_id: int, first_ann_id: int) -> list[dict]:
    """COCO annotations (compressed RLE, XYWH box, area) of the visible instances with at
    least :data:`MIN_AREA` pixels, ids counting from ``first_ann_id``."""
    labels = sample.labels
    h, w = labels.shape
    anns = []
    for k, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        crop = labels[region] == k
        if int(crop.sum()) < MIN_AREA:
            continue
        full = np.zeros((h, w), dtype=np.uint8, order="F")
        full[region] = crop
        rle = mask_utils.encode(full)
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": int(sample.category_ids[k - 1]),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return anns


def write_synthetic(kind: str, out_dir: str | Path, *, n_images: int, size: int = 256, seed: int = 0) -> Path:
    """Write ``out_dir/images/NNNNNN.png`` and ``out_dir/annotations.json`` (COCO).

    Files this function wrote before (``annotations.json`` and numbered PNGs in
    ``images/``) are replaced; nothing else in ``out_dir`` is touched.

    Args:
        kind: ``"cells"`` or ``"objects"``.
        out_dir: output folder (created).
        n_images: number of images (>= 1).
        size: image height and width in pixels (>= 32). Cells keep their pixel size
            (a larger image holds more cells); objects scale with the image.
        seed: random seed; the same seed writes byte-identical files.

    Returns:
        The path of the annotations JSON.
    """
    module = _generator(kind)
    if n_images < 1:
        raise CupreError(f"synthetic {kind}: n_images must be >= 1, got {n_images}")
    if size < 32:
        raise CupreError(f"synthetic {kind}: size must be >= 32 pixels, got {size}")
    if seed < 0:
        raise CupreError(f"synthetic {kind}: seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in img_dir.glob("*.png"):
        if _IMAGE_NAME.match(old.name):
            old.unlink()
    images, annotations = [], []
    for index in range(1, n_images + 1):
        sample = render_image(kind, index=index, size=size, seed=seed)
        name = f"images/{index:06d}.png"
        Image.fromarray(sample.image).save(out_dir / name, compress_level=1)
        images.append({"id": index, "file_name": name, "height": size, "width": size, **sample.meta})
        annotations += encode_instances(sample, image_id=index, first_ann_id=len(annotations) + 1)
    coco = {
        "info": {"description": f"cupre synthetic {kind}", "seed": int(seed), "size": int(size)},
        "images": images,
        "annotations": annotations,
        "categories": module.CATEGORIES,
    }
    json_path = out_dir / "annotations.json"
    json_path.write_text(json.dumps(coco, separators=(",", ":")))
    return json_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="cell microscopy images or natural-object scenes")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CupreError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CupreError(f"{out}: output folder is not empty (pass --overwrite to write into it)")
    json_path = write_synthetic(args.kind, out, n_images=args.n, size=args.size, seed=args.seed)
    coco = json.loads(json_path.read_text())
    print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} instances, "
          f"{len(coco['categories'])} categories")
    types: dict[str, int] = {}
    for im in coco["images"]:
        if "cell_type" in im:
            types[im["cell_type"]] = types.get(im["cell_type"], 0) + 1
    if types:
        print("cell types: " + ", ".join(f"{t} {n}" for t, n in sorted(types.items())))
    print(json_path)
    return 0
