"""Compute the COCO AP (box and mask) of a results JSON against ground truth.

The ground truth is a COCO instances JSON file or any dataset folder cupre reads. The
default protocol is LIVECell's: class-agnostic, up to 2000 detections per image, every
AP figure read at 2000 detections, cell-sized area ranges (small < 18^2 px, large >
31^2 px). --protocol coco gives the standard COCO figures. Undefined figures (no
ground truth in an area range) print as ``-`` and are written as -1.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from cupre.errors import file_error
from cupre.fileio import read_json
from cupre.evaluation.livecell import PROTOCOLS, evaluate, format_table
from cupre.evaluation.results import load_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, help="ground truth: COCO instances JSON or a dataset folder")
    parser.add_argument("--dt", required=True, type=Path, help="results: COCO results JSON (list of detections)")
    parser.add_argument(
        "--protocol", choices=sorted(PROTOCOLS), default="livecell", help="evaluation protocol (default: livecell)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON to this file")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the per-category and per-cell-type AP (faster)"
    )


def main(args: argparse.Namespace) -> int:
    gt = load_ground_truth(args.gt)
    results = load_results(args.dt, gt)
    metrics = evaluate(gt, results, protocol=args.protocol, breakdown=not args.no_breakdown)
    print(format_table(metrics))
    if args.out is not None:
        write_json_atomic(args.out, metrics)
        print(f"metrics written to {args.out}")
    return 0


def load_ground_truth(path: Path) -> dict:
    """A COCO instances dict from a ``.json`` file, or from any dataset layout cupre reads."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, "ground truth not found")
    if path.is_file() and path.suffix.lower() == ".json":
        gt = read_json(path)
        _check_ground_truth(gt, path)
        return gt
    from cupre.data.convert import dataset_to_coco
    from cupre.data.formats import open_dataset

    return dataset_to_coco(open_dataset(path))


def _check_ground_truth(gt: object, path: Path) -> None:
    if not isinstance(gt, dict):
        raise file_error(path, "not a COCO instances file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise file_error(path, f"not a COCO instances file (no '{key}' list)")
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise file_error(path, f"images[{i}] has no 'id'")
    for i, ann in enumerate(gt["annotations"]):
        missing = [k for k in ("image_id", "category_id", "bbox") if not isinstance(ann, dict) or k not in ann]
        if missing:
            raise file_error(path, f"annotations[{i}] lacks {', '.join(missing)}")


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise file_error(path, f"cannot write metrics ({exc.strerror or exc})") from None
