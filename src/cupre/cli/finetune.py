"""``cupre finetune``: arguments in, one call to the library out (see :mod:`cupre.train.finetune`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cupre.cli import docstring
from cupre.config import FinetuneConfig, load_yaml
from cupre.errors import CupreError
from cupre.methods import METHOD_NAMES
from cupre.runlock import only_lock_in

DESCRIPTION = docstring("cupre.train.finetune")  # the library is imported by main: --help needs no torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = FinetuneConfig()
    p.add_argument("--config", help="YAML with FinetuneConfig keys (flags below override it; see "
                   "configs/finetune-cpu.yaml)")
    p.add_argument("--init", help=f"{', '.join(METHOD_NAMES[:-1])} or {METHOD_NAMES[-1]} (default {d.init})")
    p.add_argument("--from", dest="pretrain_dir", help="the `cupre pretrain` output folder (every --init but scratch)")
    p.add_argument("--from-model", help="or: continue a trained cell model (model file, run folder, or a shipped "
                   "model's name: nuclei), e.g. after correcting its masks; --init and --from are not used")
    p.add_argument("--train", help="annotated dataset (any supported format)")
    p.add_argument("--split", help="split JSON from `cupre split` (default: every image of --train)")
    p.add_argument("--fraction", type=float, help="fraction of --train to fine-tune on (seeded; default: all)")
    p.add_argument("--val", help="validation dataset: it picks the kept model (default: none; the last "
                   "iterate is kept)")
    p.add_argument("--val-split", help="split JSON selecting the validation images of --val")
    p.add_argument("--test", help="test dataset, scored once with the validation-chosen model (never used for choices)")
    p.add_argument("--test-split", help="split JSON selecting the test images of --test")
    p.add_argument("--iterations", type=int, help=f"training steps (default {d.optim.iterations})")
    p.add_argument("--batch-size", type=int, help=f"images per step (default {d.optim.batch_size}, "
                   f"random {d.optim.crop_size} px crops at the object scale)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.optim.lr:g}, {d.optim.optimizer}, "
                   f"{d.optim.warmup_iterations} warm-up steps, {d.optim.schedule} decay)")
    p.add_argument("--seed", type=int, help=f"seed of the split and of training (default {d.seed})")
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:1 ... (default {d.device})")
    p.add_argument("--unlabeled", nargs="+", metavar="DIR", help="then self-train: the model pseudo-labels these "
                   "images (folders or files) and a student trains on labels + pseudo-labels; a round is kept only "
                   f"when validation improves ({d.self_train.rounds} round by default; `self_train` keys in --config)")
    p.add_argument("-o", "--out", required=True, help="output run folder")
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")


def main(args: argparse.Namespace) -> int:
    from cupre.experiments.selftrain import run_selftrain
    from cupre.train import distributed
    from cupre.train.finetune import MIN_LABELLED_IMAGES, run_finetune

    out = Path(args.out)
    if args.resume:
        ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
                   if k not in ("out", "resume", "device", "precision", "threads", "keep_checkpoints", "_module",
                                "command")
                   and v is not None]
        if ignored:
            raise CupreError(f"--resume continues with {out / 'config.yaml'}; {', '.join(ignored)} would be ignored "
                             "(drop them, or start a new run with another -o)")
        if not (out / "config.yaml").is_file():
            raise CupreError(f"{out}: nothing to resume (no config.yaml)")
        cfg = FinetuneConfig.from_dict(load_yaml(out / "config.yaml"), where=str(out / "config.yaml"))
        if args.device:
            cfg.device = args.device
        if args.precision:
            cfg.precision = args.precision
        cfg.keep_checkpoints = cfg.keep_checkpoints or bool(args.keep_checkpoints)
    else:
        if out.exists() and not only_lock_in(out):
            raise CupreError(f"{out}: folder exists and is not empty; use --resume or another -o")
        data = load_yaml(args.config) if args.config else {}
        if args.from_model and (args.init or args.pretrain_dir):
            raise CupreError("give --from-model, or --init/--from, not both")
        flat = {"init": args.init, "pretrain_dir": args.pretrain_dir, "from_model": args.from_model,
                "train": args.train, "split": args.split, "fraction": args.fraction, "val": args.val,
                "val_split": args.val_split, "test": args.test, "test_split": args.test_split, "seed": args.seed,
                "device": args.device, "precision": args.precision, "unlabeled": args.unlabeled,
                "keep_checkpoints": args.keep_checkpoints}
        data.update({k: v for k, v in flat.items() if v is not None})
        optim = dict(data.get("optim", {}))
        for key, value in (("iterations", args.iterations), ("batch_size", args.batch_size), ("lr", args.lr)):
            if value is not None:
                optim[key] = value
        data["optim"] = optim
        cfg = FinetuneConfig.from_dict(data, where=args.config or "finetune")
    if not cfg.train:
        raise CupreError("finetune: --train DATA is required")
    if cfg.unlabeled:
        model = run_selftrain(cfg, out, out / "selftrain", min_labelled=MIN_LABELLED_IMAGES)
        if distributed.is_main():
            print(f"model (after self-training): {model}")
            print_labels_summary(out)
        return 0
    last = run_finetune(cfg, out, min_labelled=MIN_LABELLED_IMAGES)
    if not distributed.is_main():
        return 0
    print_labels_summary(out)
    if last:
        print(f"{cfg.init}: AP_bbox {100 * last['bbox']['AP']:.1f}  AP_segm {100 * last['segm']['AP']:.1f} "
              f"(validation-best iteration {last['iteration']} by {cfg.select_by}, {out / 'val_metrics.json'})")
        print(f"model (validation-best): {out / 'model.safetensors'}")
    else:
        print(f"model (last iteration; no validation set checked it): {out / 'model.safetensors'}")
    return 0


def print_labels_summary(out: Path) -> None:
    from cupre.train.finetune import labels_summary

    said = labels_summary(out)
    if said:
        print(f"finetune: {said}")
