"""Write a synthetic cell or natural-object dataset as COCO instances JSON + PNG images.

``cells`` are microscopy-like images (phase contrast, fluorescence, H&E-like brightfield)
with one dominant cell type per image; ``objects`` are cluttered RGB scenes of ten
textured shape classes, a small stand-in for COCO. Both have exact, disjoint
visible-part instance masks. The same seed always writes the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from cupre.data.synth_common import MIN_AREA, SynthImage
from cupre.errors import CupreError
from cupre.fileio import write_json_atomic

KINDS = ("cells", "objects")
_IMAGE_NAME = re.compile(r"^\d{6}\.png$")
# Bounds on what a typed number can ask for: 8192 px is 64 MP per image (GBs of arrays
# while drawing), 100,000 images a dataset far beyond any use here (and below the
# six-digit names' 999,999).
MAX_SIZE = 8192
MAX_IMAGES = 100_000


def _typed(number: int) -> str:
    """A number as typed, kept short: a 4,000-digit one is named by its length."""
    return f"{number:,}" if abs(number) < 10**15 else f"a {len(str(abs(number)))}-digit number"


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
        n_images: number of images (1 to :data:`MAX_IMAGES`).
        size: image height and width in pixels (32 to :data:`MAX_SIZE`). Cells keep their pixel size
            (a larger image holds more cells); objects scale with the image.
        seed: random seed; the same seed writes byte-identical files.

    Returns:
        The path of the annotations JSON.
    """
    module = _generator(kind)
    if not 1 <= n_images <= MAX_IMAGES:
        raise CupreError(f"synthetic {kind}: n_images must be from 1 to {MAX_IMAGES:,}, got {_typed(n_images)}")
    if not 32 <= size <= MAX_SIZE:
        raise CupreError(f"synthetic {kind}: size must be from 32 to {MAX_SIZE} pixels, got {_typed(size)}")
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
    write_json_atomic(json_path, coco)
    return json_path
