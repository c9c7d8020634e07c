"""Frozen-backbone detection probe: how much a pre-trained backbone alone gives the detector.

The detection analogue of a linear probe. For every backbone, the same fresh neck and
heads (one seed) are trained on the same few-shot split with the backbone frozen, for a
short fixed budget, and scored on validation (LIVECell protocol, AP_bbox / AP_segm). Only
the backbone differs between rows, so a row above ``fresh`` means the pre-training put
something into the backbone that the detector can read. Evaluation runs each image at
its labels' object scale (one pass): the probe measures the backbone, not the scale
estimate.

Backbones: a fresh (Kaiming) one, and every product each ``cupre pretrain`` folder holds
(warmup, cupre = after AMT2, cupre-nol2sp, coco, cells-moco); name the folders to compare
pre-training settings side by side (each row is labelled ``folder:product``; ``--only``
keeps the rows whose label contains a given text, ``--no-fresh`` leaves the fresh row out).

    python benchmarks/detection_probe.py PRETRAIN_DIR [PRETRAIN_DIR ...] \\
        --data ../shared/data/bbbc038/stage1_train --train-split SPLITS/f0.05-s0.json \\
        --val-split SPLITS/val.json [--iterations 200] [--threads 2]

e.g. after ``cupre experiment configs/bbbc038-cpu.yaml -o runs/cpu``: ``--train-split
runs/cpu/splits/f0.05-s0.json --val-split runs/cpu/splits/val.json``. Choices are read on
validation, never on test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cupre.config import DetectorConfig, OptimConfig
from cupre.data.convert import dataset_to_coco
from cupre.data.formats import open_dataset
from cupre.data.sample import collate
from cupre.data.splits import load_split
from cupre.data.transforms import DetectionTrainTransform
from cupre.devices import cpu_name, set_threads
from cupre.evaluation.livecell import evaluate
from cupre.evaluation.model_eval import predict_dataset
from cupre.experiments.overlays import choose_images
from cupre.methods import PRODUCTS
from cupre.modelfile import load_model_file
from cupre.models.detector import build_detector
from cupre.train.optim import param_groups
from cupre.train.run import Run
from cupre.train.stage import RunContext, detection_step, run_stage


def backbone_sources(folders: list[Path]) -> tuple[list[tuple[str, dict | None]], DetectorConfig]:
    """``(label, backbone state or None for fresh)`` for every product, and the detector
    config of the first product found (one-class heads, as fine-tuning builds them)."""
    rows: list[tuple[str, dict | None]] = []
    cfg = None
    for folder in folders:
        for name, product in PRODUCTS.items():
            path = folder / product.file
            if not path.is_file():
                continue
            loaded = load_model_file(path)
            cfg = cfg or DetectorConfig.from_dict(dict(loaded["detector"]), where=str(path))
            state = {k[len("backbone."):]: v for k, v in loaded["model"].items() if k.startswith("backbone.")}
            rows.append((f"{folder}:{name}", state))
    if cfg is None:
        raise SystemExit(f"{', '.join(map(str, folders))}: no pre-training products "
                         f"(expected e.g. {PRODUCTS['cupre'].file})")
    cfg.num_classes = 1
    return [("fresh", None), *rows], cfg


def score(model, dataset, gt) -> dict:
    """Validation AP with every image at its labels' object scale (one pass each)."""
    results = predict_dataset(model, dataset, device=torch.device("cpu"), progress=False, scale="labels")
    return evaluate(gt, results, protocol="livecell")


def probe(state: dict | None, cfg: DetectorConfig, train, val, gt, *, optim: OptimConfig, seed: int) -> dict:
    """Fresh neck and heads on ``state``'s frozen backbone, trained on ``train``, scored on ``val``."""
    torch.manual_seed(seed)
    model = build_detector(cfg)  # the same fresh neck/heads for every row (same seed)
    if state is not None:
        model.backbone.load_state_dict(state)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(tmp, tensorboard=False)
        ctx = RunContext(device=torch.device("cpu"), seed=seed, checkpoint_every=10**9).open(run)
        run_stage(stage="probe", step_fn=detection_step(model, torch.device("cpu")),
                  groups=param_groups({"neck": model.neck, "head": model.head}, weight_decay=optim.weight_decay),
                  cfg=optim, dataset=train,
                  transform=DetectionTrainTransform(crop_size=optim.crop_size, object_size=cfg.object_size,
                                                    scale_jitter=optim.scale_jitter),
                  collate_fn=collate, ctx=ctx)
        run.close()
    return score(model, val, gt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pretrain", type=Path, nargs="+", help="`cupre pretrain` output folders")
    parser.add_argument("--data", required=True, help="the labeled dataset (any layout cupre reads)")
    parser.add_argument("--train-split", required=True, help="split JSON of the few-shot training images")
    parser.add_argument("--val-split", required=True, help="split JSON of the validation images")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=40,
                        help="validation images scored, every imaging kind in turn (0: all)")
    parser.add_argument("--only", action="append", help="probe only rows whose label contains this (repeatable)")
    parser.add_argument("--no-fresh", action="store_true", help="leave out the fresh backbone's row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    data = open_dataset(args.data, class_agnostic=True)
    train = data.subset(load_split(args.train_split)["image_ids"])
    val = data.subset(load_split(args.val_split)["image_ids"])
    if args.val_images:
        val = val.subset(choose_images(val.records, args.val_images))
    gt = dataset_to_coco(val)
    rows, cfg = backbone_sources(args.pretrain)
    if args.only:
        rows = [r for r in rows if r[0] == "fresh" or any(o in r[0] for o in args.only)]
    if args.no_fresh:
        rows = [r for r in rows if r[0] != "fresh"]
    optim = OptimConfig(iterations=args.iterations, batch_size=2, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                        warmup_iterations=20, crop_size=256, scale_jitter=1.25)
    print(f"# detection probe: backbone frozen, fresh FPN + heads, {args.iterations} iterations (batch 2, AdamW "
          f"lr {optim.lr}) on {len(train)} images, scored on {len(val)} validation images at their labels' scale "
          "(AP x100, LIVECell protocol)")
    print(f"# {cpu_name()}, {threads} threads, fp32, seed {args.seed}")
    print("| backbone | AP_bbox | AP_segm | AP50_bbox | seconds |")
    print("|---|---|---|---|---|")
    for label, state in rows:
        t0 = time.perf_counter()
        m = probe(state, cfg, train, val, gt, optim=optim, seed=args.seed)
        print(f"| {label} | {100 * m['bbox']['AP']:.1f} | {100 * m['segm']['AP']:.1f} | {100 * m['bbox']['AP50']:.1f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
