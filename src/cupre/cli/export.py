"""``cupre export``: a model file as a bioimage.io package (see :mod:`cupre.export.bioimageio`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import cupre.export.bioimageio as _lib
from cupre.errors import CupreError, file_error
from cupre.export.bioimageio import export_bioimageio
from cupre.modelfile import resolve_model_file

DESCRIPTION = _lib.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (model.safetensors) or a run folder holding one")
    parser.add_argument("--format", default="bioimageio", choices=("bioimageio", "torchscript", "onnx"),
                        help="bioimageio: a bioimage.io model package (zip); torchscript and onnx are refused "
                             "with the reason (see the description above)")
    parser.add_argument("-o", "--out", required=True, type=Path, help="the package to write (name.zip)")
    parser.add_argument("--sample", type=Path, help="test image of the package (default: a synthetic cell image)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="minimum detection score (default 0.5)")
    parser.add_argument("--object-size", "--diameter", type=float, default=None, metavar="PX",
                        help="typical cell diameter in pixels of the images it will get (default: estimated)")
    parser.add_argument("--name", help="the model's name in the package")
    parser.add_argument("--author", default="cupre user", help="author named in the package")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")


def main(args: argparse.Namespace) -> int:
    if args.format != "bioimageio":
        raise CupreError(f"--format {args.format}: not offered; cupre's detector decides per image, in Python, which "
                         "tiles, scales and detections get masks, and neither TorchScript nor ONNX export keeps that "
                         "(use --format bioimageio: the same masks as cupre predict)")
    model = resolve_model_file(args.model)
    if args.out.exists() and not args.overwrite:
        raise file_error(args.out, "exists; pass --overwrite to replace it")
    out = export_bioimageio(model, args.out, sample=args.sample, score_threshold=args.score_threshold,
                            object_size=args.object_size, name=args.name, author=args.author)
    print(f"bioimage.io package: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
