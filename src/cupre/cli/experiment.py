"""``cupre experiment``: arguments in, one call to the library out (see :mod:`cupre.experiments.runner`)."""

from __future__ import annotations

import argparse

import cupre.experiments.runner as _lib
from cupre.experiments.config import load_experiment
from cupre.experiments.runner import run_experiment

DESCRIPTION = _lib.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/bbbc038-fewshot.yaml)")
    p.add_argument("-o", "--out", required=True, help="experiment folder (run again to continue)")
    p.add_argument("--device", help="auto, cpu, cuda ... (overrides the config's `device`)")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="fine-tune N cells at once, each process on threads/N (overrides the config's `parallel`)")
    p.add_argument("--only-method", action="append", metavar="M", help="run only this method (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is done; write nothing")


def main(args: argparse.Namespace) -> int:
    cfg = load_experiment(args.config)
    if args.device:
        cfg.device = args.device
    if args.precision:
        cfg.precision = args.precision
    if args.keep_checkpoints:
        cfg.pretrain.keep_checkpoints = cfg.finetune.keep_checkpoints = True
    if args.parallel is not None:
        cfg = cfg.replace(parallel=args.parallel)  # validated as the config's `parallel`
    run_experiment(cfg, args.out, only_methods=args.only_method, dry_run=args.dry_run)
    return 0
