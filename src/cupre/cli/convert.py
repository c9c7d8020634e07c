"""``cupre convert``: arguments in, one call to the library out (see :mod:`cupre.data.convert`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import cupre.data.convert as _lib
from cupre.cli.outfile import check_output_file
from cupre.data.convert import dataset_to_coco
from cupre.data.formats import FORMATS, open_dataset
from cupre.fileio import write_json_atomic

DESCRIPTION = _lib.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a COCO JSON file or a dataset folder (bbbc038, ctc, label-images)")
    parser.add_argument("-o", "--output", required=True, help="the COCO JSON file to write")
    parser.add_argument("--format", choices=FORMATS, default=None, help="input format (default: detected)")
    parser.add_argument("--strict", action="store_true", help="stop at the first problem instead of skipping")
    parser.add_argument("--class-agnostic", action="store_true", help="write every instance as category 'cell'")
    parser.add_argument("--image-root", default=None, help="COCO input: the folder its file names are relative to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file (never the input)")


def main(args: argparse.Namespace) -> int:
    out = Path(args.output)
    check_output_file(out, overwrite=args.overwrite, inputs=[("INPUT", Path(args.input))])
    dataset = open_dataset(
        args.input,
        format=args.format,
        class_agnostic=args.class_agnostic,
        strict=args.strict,
        image_root=args.image_root,
    )
    coco = dataset_to_coco(dataset, relative_to=out.resolve().parent, progress=True)
    write_json_atomic(out, coco)
    n_crowd = sum(a["iscrowd"] for a in coco["annotations"])
    crowd = f" ({n_crowd:,} crowd)" if n_crowd else ""
    print(
        f"{args.input} ({dataset.format_name}): {len(coco['images']):,} images, "
        f"{len(coco['annotations']):,} instances{crowd} -> {out}"
    )
    return 0
