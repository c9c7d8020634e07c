"""``cupre evaluate``: arguments in, one call to the library out (see :mod:`cupre.evaluation.groundtruth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import cupre.evaluation.groundtruth as _lib
from cupre.evaluation.groundtruth import load_ground_truth
from cupre.evaluation.livecell import PROTOCOLS, evaluate, format_table
from cupre.evaluation.results import load_results
from cupre.fileio import write_json_atomic

DESCRIPTION = _lib.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, help="ground truth: COCO instances JSON or a dataset folder")
    parser.add_argument("--dt", required=True, type=Path,
                        help="results: COCO results JSON, or a cupre predict folder (its results_coco.json, paired "
                             "with the ground truth by image name)")
    parser.add_argument(
        "--protocol", choices=sorted(PROTOCOLS), default="livecell", help="evaluation protocol (default: livecell)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON to this file")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the per-category and per-cell-type AP (faster)"
    )
    parser.add_argument("--strict", action="store_true",
                        help="a malformed annotation or result is an error (default: warned about and skipped)")


def main(args: argparse.Namespace) -> int:
    gt = load_ground_truth(args.gt, strict=args.strict)
    dt = args.dt / "results_coco.json" if args.dt.is_dir() else args.dt
    results = load_results(dt, gt, strict=args.strict)
    metrics = evaluate(gt, results, protocol=args.protocol, breakdown=not args.no_breakdown)
    print(format_table(metrics))
    if args.out is not None:
        write_json_atomic(args.out, metrics, indent=2)
        print(f"metrics written to {args.out}")
    return 0
