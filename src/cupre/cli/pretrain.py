"""``cupre pretrain``: arguments in, one call to the library out (see :mod:`cupre.train.pretrain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import cupre.train.pretrain as _lib
from cupre.config import PretrainConfig, load_yaml
from cupre.errors import CupreError
from cupre.methods import PRODUCTS
from cupre.runlock import only_lock_in
from cupre.train import distributed
from cupre.train.pretrain import resolve_paths, run_pretrain

DESCRIPTION = _lib.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML with PretrainConfig keys (see configs/)")
    p.add_argument("-o", "--out", required=True, help="output run folder")
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    p.add_argument("--device", help="auto, cpu, cuda ...")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.resume:
        if args.config:
            raise CupreError(f"--resume continues with {out / 'config.yaml'}; {args.config} would be ignored "
                             "(drop it, or start a new run with another -o)")
        if not (out / "config.yaml").is_file():
            raise CupreError(f"{out}: nothing to resume (no config.yaml)")
        data = load_yaml(out / "config.yaml")
    else:
        if out.exists() and not only_lock_in(out):
            raise CupreError(f"{out}: folder exists and is not empty; use --resume or another -o")
        if not args.config:
            raise CupreError("pretrain: give a config YAML (e.g. configs/pretrain-coco-mini.yaml)")
        data = load_yaml(args.config)
        data = resolve_paths(dict(data.get("pretrain", data)), Path(args.config).parent)
    if args.device:
        data["device"] = args.device
    if args.precision:
        data["precision"] = args.precision
    if args.keep_checkpoints:
        data["keep_checkpoints"] = True
    cfg = PretrainConfig.from_dict(data, where=args.config or str(out / "config.yaml"))
    run_pretrain(cfg, out)
    if distributed.is_main():
        made = [p.file for p in PRODUCTS.values() if (out / p.file).is_file()]
        print(f"pretrained models in {out}: {', '.join(made)}")
    return 0
