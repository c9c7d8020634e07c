"""``cupre evaluate``: arguments in, one call to the library out (see :mod:`cupre.evaluation.groundtruth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import cupre.evaluation.groundtruth as _lib
from cupre.cli.outfile import check_output_file
from cupre.evaluation.groundtruth import load_ground_truth
from cupre.errors import CupreError
from cupre.evaluation.livecell import PROTOCOLS, evaluate, format_table
from cupre.evaluation.matching import matching_figures
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file (never --gt or --dt)")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the per-category and per-cell-type AP (faster)"
    )
    parser.add_argument("--score-threshold", type=float, default=0.0,
                        help="objects scoring above this count for AP@0.5, the Data Science Bowl score and F1 "
                             "(default 0: every result, as cupre predict kept them)")
    parser.add_argument("--strict", action="store_true",
                        help="a malformed annotation or result is an error (default: warned about and skipped)")


def main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.score_threshold <= 1.0:
        raise CupreError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    dt = args.dt / "results_coco.json" if args.dt.is_dir() else args.dt
    if args.out is not None:
        index = args.dt / "images.json" if args.dt.is_dir() else None  # a predict folder's names, read too
        check_output_file(args.out, overwrite=args.overwrite,
                          inputs=[("--gt", args.gt), ("--dt", dt), ("--dt", index)])
    gt = load_ground_truth(args.gt, strict=args.strict)
    results = load_results(dt, gt, strict=args.strict)
    metrics = evaluate(gt, results, protocol=args.protocol, breakdown=not args.no_breakdown)
    if any("segmentation" in r for r in results):
        metrics["matching"] = matching_figures(gt, results, score_threshold=args.score_threshold)
    print(format_table(metrics))
    if args.out is not None:
        write_json_atomic(args.out, metrics, indent=2)
        print(f"metrics written to {args.out}")
    return 0
