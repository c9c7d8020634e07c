"""Write the demo's embedded nuclei (``src/cupre/presets/nuclei/``) from BBBC038 stage1_train.

    .venv/bin/python tools/make_demo_nuclei.py ../shared/data/bbbc038 [-o src/cupre/presets/nuclei]

The images come from the CPU recipe's partition of stage1_train (``configs/bbbc038-cpu.yaml``:
70/15/15 by imaging kind, partition seed 0; the shipped nuclei model's partition too, read
by :func:`cupre.experiments.grid.target_parts`, the rule ``cupre experiment`` uses): the
``annotated`` and ``unlabeled`` images from its TRAIN part, the ``validation`` and ``test``
images from its TEST part only, so that the shipped model, which trained on the train part
and chose its iteration on the val part, never saw the images the demo scores it on.

Picks images of BBBC038's three imaging kinds with a fixed seed (``summary.json`` names
each image's kind): grey fluorescence at 256 x 256, colour brightfield / H&E at 256 x 320,
and grey bright-background images, of which a 320 x 320 crop is kept (their full 1024 x 1024
would triple the package). The test part holds only two bright-background images: the
first gives the validation crop, the second the three test crops (its three busiest
non-overlapping windows, named ``bright_ID-1`` .. ``-3``). Each annotated image is written
as ``NAME.png`` plus ``NAME_masks.png`` (uint16, one id per nucleus, 0 background; nuclei
cut by a crop to fewer than ``MIN_AREA`` pixels dropped), into four folders: ``annotated``
(the five training labels), ``unlabeled`` (images only), ``validation`` and ``test``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "bbbc038-cpu.yaml"
# kind -> (shape, annotated, unlabeled, validation, test)
PLAN = {
    "fluo_gray": ((256, 256), 2, 6, 1, 3),
    "brightfield_color": ((256, 320), 2, 3, 1, 3),
    "gray_brightbg": ((1024, 1024), 1, 3, 1, 3),
}
SHORT = {"fluo_gray": "fluo", "brightfield_color": "colour", "gray_brightbg": "bright"}
PARTS = ("annotated", "unlabeled", "validation", "test")
SOURCE = {"annotated": "train", "unlabeled": "train", "validation": "test", "test": "test"}  # the recipe's part
CROPPED = {"gray_brightbg"}
CROP = 320
MIN_AREA = 20
SEED = 0


def recipe_parts(stage1_train: Path, recipe: Path = RECIPE) -> dict[str, set[str]]:
    """The recipe's partition of ``stage1_train`` as ``{part: BBBC038 image ids}``."""
    from cupre.data.formats import open_dataset
    from cupre.experiments.config import load_experiment
    from cupre.experiments.grid import target_parts

    [data] = load_experiment(recipe).data
    records = open_dataset(stage1_train, class_agnostic=True).records
    by_id = {r.image_id: r.extra["id"] for r in records}
    return {part: {by_id[i] for i in ids} for part, ids in target_parts(data, records).items()}


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


def busiest_windows(labels: np.ndarray, size: int, n: int) -> list[tuple[int, int]]:
    """Top-left corners of the ``n`` non-overlapping ``size`` x ``size`` windows, on a grid
    of quarter steps, holding the most nucleus pixels (greedy, busiest first)."""
    h, w = labels.shape
    step = size // 4
    corners = [(y, x) for y in range(0, h - size + 1, step) for x in range(0, w - size + 1, step)]
    count = {yx: int((labels[yx[0]:yx[0] + size, yx[1]:yx[1] + size] > 0).sum()) for yx in corners}
    chosen: list[tuple[int, int]] = []
    for y, x in sorted(corners, key=lambda yx: (-count[yx], yx)):
        if len(chosen) < n and all(abs(y - cy) >= size or abs(x - cx) >= size for cy, cx in chosen):
            chosen.append((y, x))
    return chosen


def renumber(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in order of first appearance, pieces under ``MIN_AREA`` pixels removed."""
    out = np.zeros_like(labels)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    for new, old in enumerate([i for i, c in zip(ids, counts) if c >= MIN_AREA], start=1):
        out[labels == old] = new
    return out


def assign(pool: list[str], counts: dict[str, int], rng: np.random.Generator,
           cropped: bool) -> list[tuple[str, str, int]]:
    """``(demo part, image id, crops)`` for the demo parts drawing on ``pool``. A pool too
    small for one image each (the test part's two bright-background images) gives the
    earlier parts their images and the last part several crops of each image left."""
    need = sum(counts.values())
    picked = list(rng.choice(sorted(pool), size=min(need, len(pool)), replace=False))
    parts = [p for p, n in counts.items() if n > 0]
    if len(picked) < need and not (cropped and len(picked) >= len(parts)):
        raise SystemExit(f"only {len(pool)} images for {need} ({', '.join(parts)})")
    out = []
    for part in parts:
        n = counts[part]
        if part == parts[-1] and len(picked) < n:
            out += [(part, image_id, math.ceil(n / len(picked))) for image_id in picked]
        else:
            out += [(part, picked.pop(0), 1) for _ in range(n)]
    return out


def write_pair(out: Path, part: str, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    (out / part).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(out / part / f"{name}.png", optimize=True)
    if part != "unlabeled":
        Image.fromarray(np.ascontiguousarray(labels)).save(out / part / f"{name}_masks.png", optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bbbc038", type=Path, help="folder holding stage1_train/ and summary.json")
    p.add_argument("-o", "--out", type=Path, default=REPO / "src" / "cupre" / "presets" / "nuclei")
    p.add_argument("--recipe", type=Path, default=RECIPE, help="the config whose partition is used")
    args = p.parse_args()
    summary = json.loads((args.bbbc038 / "summary.json").read_text())
    recipe = recipe_parts(args.bbbc038 / "stage1_train", args.recipe)
    for part in PARTS:
        for old in (args.out / part).glob("*.png"):
            old.unlink()
    rng = np.random.default_rng(SEED)
    listing = []
    for kind, (shape, *counts) in PLAN.items():
        wanted = dict(zip(PARTS, counts))
        for source in ("train", "test"):
            pool = [d["id"] for d in summary if d["kind"] == kind and tuple(d["shape"][:2]) == shape
                    and d["n"] >= 8 and d["id"] in recipe[source]]
            share = {part: n for part, n in wanted.items() if SOURCE[part] == source}
            for part, image_id, crops in assign(pool, share, rng, kind in CROPPED):
                folder = args.bbbc038 / "stage1_train" / image_id
                image, labels = read_image(folder), read_labels(folder)
                take = min(crops, share[part])
                share[part] -= take
                corners = busiest_windows(labels, CROP, take) if kind in CROPPED else [(0, 0)]
                size = CROP if kind in CROPPED else max(image.shape[:2])
                for k, (y, x) in enumerate(corners, start=1):
                    name = f"{SHORT[kind]}_{image_id[:8]}" + (f"-{k}" if take > 1 else "")
                    crop_labels = renumber(labels[y:y + size, x:x + size])
                    write_pair(args.out, part, name, image[y:y + size, x:x + size], crop_labels)
                    listing.append((part, name, image_id, int(crop_labels.max()), source))
    for part, name, image_id, n, source in listing:
        print(f"{part:10s} {name:18s} {n:4d} nuclei  stage1_train/{image_id} (recipe's {source} part)")
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(listing)} images, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
