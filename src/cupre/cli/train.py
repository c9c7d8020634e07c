"""``cupre train``: arguments in, one call to the library out (see :mod:`cupre.experiments.workflow`)."""

from __future__ import annotations

import argparse

from cupre.cli import docstring
from cupre.shipped import TRAIN_INIT, TRAIN_INITS

DESCRIPTION = docstring("cupre.experiments.workflow")  # the library is imported by main: --help needs no torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, metavar="DATA",
                   help="your annotated images: a folder of name.tif + name_masks.tif pairs (Cellpose / StarDist / "
                        "napari), a COCO JSON, a BBBC038 or Cell Tracking Challenge folder")
    p.add_argument("--unlabeled", nargs="+", default=None, metavar="DIR",
                   help="folders or files of unlabeled images: they get masks at the end; --init cupre pre-trains "
                        "on them (MoCo), --self-train learns from them")
    p.add_argument("-o", "--out", required=True, help="run folder (run the same command again to continue)")
    p.add_argument("--val", metavar="DATA", help="a separate annotated validation set (default: held out of "
                   "--labels when it has at least 10 images, else none)")
    p.add_argument("--coco", nargs="+", default=None, metavar="JSON",
                   help="COCO-format data for the COCO stage (default: synthetic natural objects, written into "
                        "the run folder)")
    p.add_argument("--preset", default="auto", help="cpu (a laptop), gpu (one GPU) or auto (gpu when CUDA is "
                   "there; default)")
    p.add_argument("--config", help="your own YAML of workflow keys instead of a preset (see configs/train-cpu.yaml)")
    p.add_argument("--seed", type=int, default=None, help="seed of the splits and of training (default 0)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--init", default=None, choices=TRAIN_INITS,
                   help=f"where training starts: cupre (the COCO stage and AMT2 on your images, then fine-tuning) or "
                        f"a model shipped with cupre ({', '.join(TRAIN_INITS[1:])}: fine-tuning, and --self-train, "
                        f"from it, no pre-training); default: the preset's, nuclei on a CPU (it scored higher on "
                        f"held-out nuclei within 30 min in fp32), {TRAIN_INIT} on a GPU")
    p.add_argument("--self-train", action="store_true", help="then self-train: the fine-tuned model pseudo-labels "
                   "the --unlabeled images and a student learns from them, kept only if validation improves (needs a "
                   "validation set)")


def main(args: argparse.Namespace) -> int:
    from cupre.experiments.workflow import INPUT_KEYS, load_workflow, preset_path, run_workflow

    source = args.config or preset_path(args.preset)
    cfg = load_workflow(source, labels=args.labels, unlabeled=args.unlabeled, val=args.val, coco=args.coco,
                        init=args.init, seed=args.seed, device=args.device, precision=args.precision,
                        self_train=True if args.self_train else None)
    if args.keep_checkpoints:
        cfg.pretrain.keep_checkpoints = cfg.finetune.keep_checkpoints = True
    typed = [k for k in INPUT_KEYS if getattr(args, k) is not None]  # each input key is also its flag's name
    model = run_workflow(cfg, args.out, config=args.config, given=typed)
    print(f"your model: {model}  (masks for new images: cupre predict {model} IMAGES... -o OUT)")
    return 0
