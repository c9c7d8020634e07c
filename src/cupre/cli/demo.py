"""``cupre demo``: arguments in, one call to the library out (see :mod:`cupre.experiments.demo`)."""

from __future__ import annotations

import argparse

import cupre.experiments.demo as _lib
from cupre.experiments.demo import run_demo

DESCRIPTION = _lib.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default=None, help="output folder (default: cupre-demo, or cupre-demo-synthetic)")
    p.add_argument("--synthetic", action="store_true", help="generated cells instead of the real nuclei")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def output_folder(args: argparse.Namespace) -> str:
    return args.out or ("cupre-demo-synthetic" if args.synthetic else "cupre-demo")


def main(args: argparse.Namespace) -> int:
    run_demo(output_folder(args), synthetic=args.synthetic, seed=args.seed, device=args.device,
             precision=args.precision or "auto", keep_checkpoints=bool(args.keep_checkpoints))
    return 0
