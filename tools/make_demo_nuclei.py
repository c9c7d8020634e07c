"""Write the demo's embedded nuclei (``src/cupre/presets/nuclei/``) from BBBC038 stage1_train.

    .venv/bin/python tools/make_demo_nuclei.py ../shared/data/bbbc038 [-o src/cupre/presets/nuclei]

Picks images of BBBC038's three imaging kinds with a fixed seed (``summary.json`` names
each image's kind): grey fluorescence at 256 x 256, colour brightfield / H&E at 256 x 320,
and grey bright-background images, of which a 320 x 320 crop is kept (their full 1024 x 1024
would triple the package). Each annotated image is written as ``NAME.png`` plus
``NAME_masks.png`` (uint16, one id per nucleus, 0 background; nuclei cut by a crop to
fewer than ``MIN_AREA`` pixels dropped), into four folders: ``annotated`` (the five
training labels), ``unlabeled`` (images only), ``validation`` and ``test``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

# kind -> (shape, annotated, unlabeled, validation, test)
PLAN = {
    "fluo_gray": ((256, 256), 2, 6, 1, 3),
    "brightfield_color": ((256, 320), 2, 3, 1, 3),
    "gray_brightbg": ((1024, 1024), 1, 3, 1, 3),
}
SHORT = {"fluo_gray": "fluo", "brightfield_color": "colour", "gray_brightbg": "bright"}
PARTS = ("annotated", "unlabeled", "validation", "test")
CROP = 320
MIN_AREA = 20
SEED = 0


def read_image(folder: Path) -> np.ndarray:
    image = np.asarray(Image.open(next((folder / "images").glob("*.png"))))
    if image.ndim == 3:
        image = image[..., :3]
        if (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all():
            image = image[..., 0]  # grey stored as RGB(A)
    return image


def read_labels(folder: Path) -> np.ndarray:
    labels = None
    for k, path in enumerate(sorted((folder / "masks").glob("*.png")), start=1):
        m = np.asarray(Image.open(path)) > 0
        labels = np.zeros(m.shape, np.uint16) if labels is None else labels
        labels[m] = k
    return labels


def crop_busiest(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` x ``size`` window, on a grid of quarter steps, holding the most nucleus pixels."""
    h, w = labels.shape
    step = size // 4
    best = max(((y, x) for y in range(0, h - size + 1, step) for x in range(0, w - size + 1, step)),
               key=lambda yx: int((labels[yx[0]:yx[0] + size, yx[1]:yx[1] + size] > 0).sum()))
    y, x = best
    return image[y:y + size, x:x + size], labels[y:y + size, x:x + size]


def renumber(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in order of first appearance, pieces under ``MIN_AREA`` pixels removed."""
    out = np.zeros_like(labels)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    for new, old in enumerate([i for i, c in zip(ids, counts) if c >= MIN_AREA], start=1):
        out[labels == old] = new
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bbbc038", type=Path, help="folder holding stage1_train/ and summary.json")
    p.add_argument("-o", "--out", type=Path, default=Path("src/cupre/presets/nuclei"))
    args = p.parse_args()
    summary = json.loads((args.bbbc038 / "summary.json").read_text())
    rng = np.random.default_rng(SEED)
    listing = []
    for kind, (shape, *counts) in PLAN.items():
        pool = sorted(d["id"] for d in summary if d["kind"] == kind and tuple(d["shape"][:2]) == shape
                      and d["n"] >= 8)
        picked = list(rng.choice(pool, size=sum(counts), replace=False))
        for part, n in zip(PARTS, counts):
            for image_id in [picked.pop(0) for _ in range(n)]:
                folder = args.bbbc038 / "stage1_train" / image_id
                image, labels = read_image(folder), read_labels(folder)
                if kind == "gray_brightbg":
                    image, labels = crop_busiest(image, labels, CROP)
                labels = renumber(labels)
                name = f"{SHORT[kind]}_{image_id[:8]}"
                (args.out / part).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(image)).save(args.out / part / f"{name}.png", optimize=True)
                if part != "unlabeled":
                    Image.fromarray(labels).save(args.out / part / f"{name}_masks.png", optimize=True)
                listing.append((part, name, image_id, int(labels.max())))
    for part, name, image_id, n in listing:
        print(f"{part:10s} {name:16s} {n:4d} nuclei  stage1_train/{image_id}")
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(listing)} images, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
