"""``cupre export``: a model file as a bioimage.io package, a TorchScript program or an ONNX
detector (see :mod:`cupre.export.bioimageio`, :mod:`cupre.export.torchscript` and
:mod:`cupre.export.onnx`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cupre.export.bioimageio as _bioimageio
import cupre.export.onnx as _onnx
import cupre.export.torchscript as _torchscript
from cupre.cli.detection import add_detection_arguments, detection_options
from cupre.errors import file_error
from cupre.export.bioimageio import export_bioimageio
from cupre.inference.options import DetectionOptions
from cupre.shipped import resolve_model

# each format's module docstring, first paragraph: what the file holds
DESCRIPTION = "\n\n".join(m.__doc__.split("\n\n")[0] for m in (_bioimageio, _torchscript, _onnx))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a shipped model's name (nuclei), a model file (model.safetensors) or a run "
                                      "folder holding one")
    parser.add_argument("--format", default="bioimageio", choices=("bioimageio", "torchscript", "onnx"),
                        help="bioimageio: a bioimage.io model package (zip, with TorchScript weights beside the "
                             "state dict); torchscript: one TorchScript file, raw image in, label image out; "
                             "onnx: the detector network only (normalised image in, boxes, scores, labels and "
                             "28 x 28 mask probabilities out; see cupre.export.onnx for what stays outside)")
    parser.add_argument("-o", "--out", required=True, type=Path, help="the file to write (name.zip, name.pt, "
                                                                         "name.onnx)")
    parser.add_argument("--sample", type=Path, help="the image the export is checked on, and the package's test image "
                                                    "(default: a synthetic cell image)")
    add_detection_arguments(parser, tiles=False)
    parser.add_argument("--name", help="the model's name in the package")
    parser.add_argument("--author", default="cupre user", help="author named in the package")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")


def main(args: argparse.Namespace) -> int:
    model = resolve_model(args.model)
    if args.out.exists() and not args.overwrite:
        raise file_error(args.out, "exists; pass --overwrite to replace it")
    options = DetectionOptions(**detection_options(args))
    options.check()
    start = time.perf_counter()
    if args.format == "torchscript":
        from cupre.export.torchscript import export_torchscript

        out = export_torchscript(model, args.out, options=options, sample=args.sample)
        what = "TorchScript model (checked: the same label image as cupre predict on the sample)"
    elif args.format == "onnx":
        from cupre.export.onnx import export_onnx

        out = export_onnx(model, args.out, options=options, sample=args.sample)
        what = "ONNX detector (checked: onnxruntime gives PyTorch's outputs on two image sizes)"
    else:
        out = export_bioimageio(model, args.out, sample=args.sample, options=options, name=args.name,
                                author=args.author)
        what = "bioimage.io package"
    print(f"{what}: {out} ({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.0f} s)")
    return 0
