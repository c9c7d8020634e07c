"""``cupre convert-model``: turn a pickled model file of cupre < 0.2 into a safetensors one."""

from __future__ import annotations

import argparse
from pathlib import Path

from cupre.cli.outfile import check_output_file
from cupre.modelfile import convert_legacy

DESCRIPTION = """Convert a pickled cupre model file (model.pt, cupre < 0.2) into a safetensors model file.

The pickle is read as plain tensors (torch.load with weights_only=True), which runs no
code from the file. A file that needs more is refused unless you pass --trust, which
unpickles it fully: only do that for a file you made yourself."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="the old model.pt")
    p.add_argument("-o", "--out", type=Path, help="the new file (default: model.safetensors beside the old one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing new file (never the old one)")
    p.add_argument("--trust", action="store_true", help="allow a full unpickling (can run code in the file)")


def main(args: argparse.Namespace) -> int:
    out = args.out or args.model.with_name("model.safetensors")
    check_output_file(out, overwrite=args.overwrite, inputs=[("MODEL", args.model)])
    convert_legacy(args.model, out, trust=args.trust)
    print(f"{args.model} -> {out}")
    return 0
