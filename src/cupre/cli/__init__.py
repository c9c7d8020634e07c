"""The ``cupre`` command line.

Every subcommand is one thin module here, ``cupre.cli.<command>``, exposing
``add_arguments(parser)`` and ``main(args)``: it maps the arguments to one ``run_*`` call
of the library, whose module docstring is the command's description (``DESCRIPTION``).
Library modules never see argparse. The table below is the whole map; modules are
imported only when their command runs, so ``cupre --help`` stays fast; ``train``,
``predict`` and ``finetune`` import their library in ``main`` and read its docstring with
:func:`docstring`, so their ``--help`` does not load torch either.
"""

from __future__ import annotations

import argparse
import ast
import errno
import importlib
import importlib.util
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from cupre.errors import CupreError, CupreWarning

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cupre.cli.train", "your unlabeled + few annotated images -> a model and masks, in one command"),
    "demo": ("cupre.cli.demo", "the whole method on 29 real nuclei images (--synthetic: generated cells), on a laptop"),
    "synth": ("cupre.cli.synth", "write a synthetic cell or natural-object dataset"),
    "convert": ("cupre.cli.convert", "any supported layout -> COCO instances JSON"),
    "split": ("cupre.cli.split", "a deterministic few-shot split of a dataset"),
    "evaluate": ("cupre.cli.evaluate", "COCO AP of results, LIVECell protocol by default"),
    "pretrain": ("cupre.cli.pretrain", "COCO warm-up + AMT2 (the CUPre pre-training)"),
    "finetune": ("cupre.cli.finetune", "few-shot fine-tuning from a named initialisation"),
    "experiment": ("cupre.cli.experiment", "a grid of initialisations x fractions x seeds"),
    "predict": ("cupre.cli.predict", "segment your own images with a trained model"),
    "export": ("cupre.cli.export", "a model file -> a bioimage.io package, a TorchScript program or an ONNX detector"),
    "convert-model": ("cupre.cli.convert_model", "a pickled model file of cupre < 0.2 -> safetensors"),
}

# Commands that run a model: they take --threads and --precision (added here, applied in main).
COMPUTE = ("train", "demo", "pretrain", "finetune", "experiment", "predict")

# Commands that train: they take --keep-checkpoints.
TRAINING = ("train", "demo", "pretrain", "finetune", "experiment")

# Commands that write a run folder (-o): one at a time per folder (cupre.runlock).
LOCKED = ("train", "demo", "pretrain", "finetune", "experiment", "predict")

# What a stopped command offers; commands not named here write nothing half-made.
ON_INTERRUPT = {
    "pretrain": "run it again with --resume and the same -o to continue where it stopped",
    "finetune": "run it again with --resume and the same -o to continue where it stopped",
    "predict": "run it again with --resume to continue with the images not finished",
    "experiment": "run the same command again to continue: finished cells are kept",
    "demo": "run the same command again to continue: finished parts are kept",
    "train": "run the same command again to continue: finished stages are kept, a stopped one resumes",
}


def plain_text(doc: str | None) -> str | None:
    """A module docstring as ``--help`` shows it: reStructuredText roles and literals
    (``:mod:`x```, double backquotes, a paragraph's closing ``::``) and bold as plain text."""
    if doc is None:
        return None
    doc = re.sub(r":(?:mod|func|class|meth|attr|data|obj):`~?([^`]+)`", r"\1", doc)
    doc = re.sub(r"``([^`]+)``", r"\1", doc)
    doc = re.sub(r"\*\*([^*]+)\*\*", r"\1", doc)
    return re.sub(r"(\S)::$", r"\1:", re.sub(r"\s+::$", "", doc, flags=re.MULTILINE), flags=re.MULTILINE)


def docstring(module: str) -> str | None:
    """A module's docstring read from its source, without importing it: a command's
    ``--help`` shows its library module's docstring without loading torch (seconds)."""
    spec = importlib.util.find_spec(module)
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=False)


def os_problem(exc: OSError) -> str:
    """One line for an operating-system error: the file, the problem, and what to do about a full disk."""
    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or exc}"
    if exc.errno == errno.ENOSPC:
        text += " (free some space, then run the same command again: finished parts are kept)"
    return " ".join(text.split())


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cupre", description="Few-shot cell instance segmentation with CUPre pre-training."
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=plain_text(module.DESCRIPTION),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        if name in COMPUTE:
            add_compute_arguments(p, training=name in TRAINING)
        p.set_defaults(_module=module)
    return parser


def version_line() -> str:
    """cupre's version, and the torch / torchvision it runs on (read without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    from cupre import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"cupre {__version__} (torch {installed('torch')}, torchvision {installed('torchvision')})"


def add_compute_arguments(parser: argparse.ArgumentParser, *, training: bool = False) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for the model (default: every core this process may use; "
                             "give each of several heavy processes its share)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                        help="bf16 autocast or fp32 (default auto: bf16 on GPUs and on CPUs with native bf16 "
                             "such as avx512_bf16 / AMX, fp32 elsewhere; overrides the config's `precision`)")
    if training:
        parser.add_argument("--keep-checkpoints", action="store_const", const=True, default=None,
                            help="keep each finished part's state.pt (weights and optimiser state, about three "
                                 "model files each); by default it goes once the part has written its model")


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str], *, command: str) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but a misspelt flag is named before a missing one.

    argparse checks a subcommand's required arguments before it looks at the words it
    did not know, so ``cupre train --lables X`` would say "--labels is required", hiding
    the typo. A first pass with nothing required finds the unknown words and says them.
    """
    sub = next((a.choices.get(command) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    required = [a for a in (sub._actions if sub is not None else ()) if a.required]
    for action in required:
        action.required = False
    try:
        _, unknown = parser.parse_known_args(argv)
    finally:
        for action in required:
            action.required = True
    if unknown:
        (sub or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    return parser.parse_args(argv)


LIBRARY_NOTICE = re.compile(r"`torch\.jit\.\w+` is deprecated")
LIBRARIES = ("torch", "torchvision", "timm")


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as users read it, ``cupre: warning: ...``. The libraries' notices about
    their own future (torch.jit's deprecation, FutureWarnings from torch, torchvision and
    timm) are for developers: they go to the ``cupre.notices`` log (``CUPRE_LOG=debug``
    shows it) and print nothing. (The formatter, not ``showwarning``, decides, so that
    ``warnings.catch_warnings(record=True)`` still records every warning.)"""
    parts = Path(filename).parts
    library = any(name in parts for name in LIBRARIES) and not issubclass(category, CupreWarning)
    if LIBRARY_NOTICE.search(str(message)) or (library and issubclass(category, (FutureWarning, DeprecationWarning))):
        logging.getLogger("cupre.notices").debug("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        return ""
    return f"cupre: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    only = first if first in COMMANDS else "__none__"
    asks_help = any(a in ("-h", "--help") for a in argv)
    if (only in COMPUTE or only == "export") and not asks_help:  # help needs no torch (cupre.devices imports it)
        from cupre.devices import skip_gpu_compiler

        skip_gpu_compiler()  # before the command's module imports torchvision
    parser = build_parser(only=only)
    args = parse_arguments(parser, argv, command=only)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    warnings.simplefilter("default", CupreWarning)
    warnings.formatwarning = format_warning
    if os.environ.get("CUPRE_LOG", "").lower() == "debug":  # the libraries' notices too, on stderr
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        if args.command in COMPUTE:
            from cupre.devices import check_device, set_threads

            set_threads(args.threads)
            if getattr(args, "device", None):
                check_device(args.device)  # before anything is read or written
        out = getattr(args._module, "output_folder", lambda a: getattr(a, "out", None))(args)
        main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 holds the folder for all
        if args.command in LOCKED and out and main_rank and not getattr(args, "dry_run", False):
            from cupre.runlock import run_lock

            with run_lock(out, command=f"cupre {args.command}"):
                code = args._module.main(args)
        else:
            code = args._module.main(args)
    except CupreError as exc:
        print(f"cupre: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be made, a full disk: the file and the system's word for it
        print(f"cupre: error: {os_problem(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cupre: interrupted ({ON_INTERRUPT.get(args.command, 'no output was left half-written')})",
              file=sys.stderr)
        return 130
    return int(code or 0)

