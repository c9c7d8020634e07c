"""``cupre synth``: arguments in, one call to the library out (see :mod:`cupre.data.synthetic`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cupre.data.synthetic as _lib
from cupre.data.synthetic import KINDS, write_synthetic
from cupre.errors import CupreError

DESCRIPTION = _lib.__doc__


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
