"""``cupre predict``: arguments in, one call to the library out (see :mod:`cupre.inference.predict`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cupre.cli import docstring
from cupre.cli.detection import add_detection_arguments, detection_options
from cupre.inference.outputs import OPTIONAL, OUTPUTS

DESCRIPTION = docstring("cupre.inference.predict")  # the library is imported by main: --help needs no torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (recursive) or globs; without --model, a first INPUT that is a "
                             "*.safetensors (or cupre < 0.2 *.pt) file or a run folder (holding model.safetensors, "
                             "finetune/model.safetensors or a cupre run's config.yaml) is the model, as in "
                             "`cupre predict MODEL INPUT...`; a folder of images never is")
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help="a shipped model's name (nuclei), a model file (model.safetensors) or a run folder: a "
                             "cupre finetune run's, or a cupre train run's (its finetune/ model); a file or folder "
                             "named like a shipped model is written ./nuclei (default: the first INPUT when it is a "
                             "model, else cupre's shipped nuclei model)")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    add_detection_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images or tiles per forward pass (default: 1 on a CPU, 2 on a GPU)")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    parser.add_argument("--channel", type=int, default=None, metavar="C",
                        help="of images with a channel axis (TIFF hyperstacks, OME-TIFF, OME-Zarr), predict only "
                             "channel C (from 0; e.g. the nuclear stain); default: every channel, each as its own image")
    for kind in OUTPUTS:
        if kind.optional:
            parser.add_argument(kind.flag, dest=kind.name, action="store_true", help=kind.help)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="spread the images, and the tiles of large ones, over a running Dask cluster "
                             "(address, e.g. tcp://host:8786); workers write into -o, so it must be reachable")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="spread the images, and the tiles of large ones, over a local Dask cluster of N processes")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in -o (same model, options and inputs)")


def main(args: argparse.Namespace) -> int:
    from cupre.inference.predict import PredictOptions, run_predict

    options = PredictOptions(
        **detection_options(args), batch_size=args.batch_size, device=args.device, channel=args.channel,
        precision=args.precision or "auto", outputs=tuple(name for name in OPTIONAL if getattr(args, name)),
        overwrite=args.overwrite, resume=args.resume, cluster=args.cluster, workers=args.workers,
    )
    model, inputs = model_and_images(args.model, args.inputs)
    summary = run_predict(model, inputs, out=args.out, options=options)
    print(f"predicted {summary.predicted} image(s), {summary.objects} objects -> {summary.out}")
    if summary.failed:
        print(f"{len(summary.failed)} image(s) failed (listed above and in {summary.out / 'images.json'})")
        return 1
    return 0


def model_and_images(model: str | None, inputs: list[str]) -> tuple[str | Path, list[str]]:
    """The model and the images of ``cupre predict [--model M] INPUT...``: ``--model``, else
    a first INPUT that is a model (:func:`cupre.shipped.is_model_argument`), else the
    shipped default, said in one line."""
    from cupre.errors import CupreError
    from cupre.shipped import DEFAULT_MODEL, is_model_argument, shipped_model

    if model is not None:
        return model, inputs
    if is_model_argument(inputs[0]):
        if len(inputs) == 1:
            raise CupreError(f"{inputs[0]}: a model, and no images after it (cupre predict MODEL IMAGES... -o OUT)")
        return Path(inputs[0]), inputs[1:]
    path = shipped_model(DEFAULT_MODEL)
    print(f"no model given: using cupre's shipped {DEFAULT_MODEL} model ({path})", flush=True)
    return path, inputs
