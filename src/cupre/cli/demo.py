"""``cupre demo``: arguments in, one call to the library out (see :mod:`cupre.experiments.demo`)."""

from __future__ import annotations

import argparse

import cupre.experiments.demo as _lib
from cupre.experiments.demo import run_demo

DESCRIPTION = _lib.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="cupre-demo", help="output folder (default: cupre-demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def main(args: argparse.Namespace) -> int:
    run_demo(args.out, seed=args.seed, device=args.device, precision=args.precision or "auto")
    return 0
