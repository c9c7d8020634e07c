"""CUPre pre-training: COCO warm-up, then AMT2 (and, on request, baselines/ablations).

``cupre pretrain CONFIG.yaml -o RUN_DIR`` writes (names from :data:`cupre.train.inits.PRODUCTS`)::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/warmup/model.pt        COCO warm-up            (with cells-moco: --init coco++)
    RUN_DIR/amt2/model.pt          after K AMT2 rounds     (--init cupre, cupre++)
    RUN_DIR/amt2-nol2sp/model.pt   AMT2 without L2-SP      (--init cupre-nol2sp; nol2sp: true)
    RUN_DIR/coco/model.pt          warm-up + AMT2's COCO steps, no MoCo (--init coco; coco_baseline: true)
    RUN_DIR/cells-moco/model.pt    MoCo on cells only      (--init cells-moco, coco++; cells_moco: true)

Each part keeps its own ``state.pt``; ``--resume`` continues where a killed run stopped.
Images listed in ``exclude`` (a labeled set's validation and test images) never reach
MoCo. Every MoCo step runs at least one epoch over the unlabeled images.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from cupre.config import MocoConfig, PretrainConfig, load_yaml
from cupre.data.concat import MergedDataset
from cupre.data.formats import open_dataset
from cupre.data.unlabeled import UnlabeledImages
from cupre.errors import CupreError
from cupre.train import distributed
from cupre.train.amt2 import run_amt2
from cupre.train.checkpoint import seed_everything
from cupre.train.coco import run_coco_warmup
from cupre.train.inits import PRODUCTS
from cupre.train.moco import build_moco, run_moco_stage
from cupre.train.run import Run
from cupre.train.stage import StateFile, stage_seed
from cupre.train.weights import load_model_file, save_model


def run_pretrain(cfg: PretrainConfig, out_dir: str | Path) -> Path:
    """Run every pre-training part that is not finished yet; returns ``out_dir``."""
    from cupre.models.detector import build_detector

    if not cfg.coco:
        raise CupreError("pretrain: no COCO-format dataset given (config key `coco`)")
    if not cfg.unlabeled:
        raise CupreError("pretrain: no unlabeled cell images given (config key `unlabeled`)")
    device = distributed.pick_device(cfg.device)
    distributed.init(device)
    out = Path(out_dir)
    Run(out, tensorboard=False).save_config(cfg.to_dict())
    coco = MergedDataset([open_dataset(p) for p in cfg.coco])
    unlabeled = UnlabeledImages(cfg.unlabeled, exclude=cfg.exclude)
    moco_cfg = moco_covering(cfg.amt2.moco, len(unlabeled))
    amt2 = dataclasses.replace(cfg.amt2, moco=moco_cfg)
    det_cfg = dataclasses.replace(cfg.detector, num_classes=len(coco.categories))
    common = dict(device=device, seed=cfg.seed, num_workers=cfg.num_workers, checkpoint_every=cfg.checkpoint_every)
    if distributed.is_main():
        print(f"pretrain: {len(coco)} COCO-format images ({len(coco.categories)} classes), "
              f"{len(unlabeled)} unlabeled cell images ({len(cfg.exclude)} held-out files excluded), "
              f"{amt2.rounds} AMT2 rounds of {moco_cfg.optim.iterations} MoCo + {amt2.coco.iterations} COCO "
              f"iterations, device {device}")

    seed_everything(stage_seed(cfg.seed, "init"))  # the Kaiming initialisation is part of the run
    model = build_detector(det_cfg).to(device)
    run_coco_warmup(model=model, dataset=coco, cfg=cfg.warmup, detector_cfg=det_cfg,
                    run=Run(out / "warmup"), **common)
    warm_weights = {k: v.to(device) for k, v in load_model_file(out / PRODUCTS["warmup"])["model"].items()}
    variants = [("cupre", True, True)]
    variants += [("cupre-nol2sp", True, False)] if cfg.nol2sp else []
    variants += [("coco", False, False)] if cfg.coco_baseline else []
    for product, moco_steps, use_l2sp in variants:
        model.load_state_dict(warm_weights)
        run_amt2(model=model, coco=coco, unlabeled=unlabeled, cfg=amt2, detector_cfg=det_cfg,
                 run=Run(out / Path(PRODUCTS[product]).parent), moco_steps=moco_steps, use_l2sp=use_l2sp,
                 product=product, **common)
    if cfg.cells_moco:
        cells_cfg = dataclasses.replace(
            moco_cfg, optim=dataclasses.replace(moco_cfg.optim, iterations=moco_cfg.optim.iterations * amt2.rounds))
        run_cells_moco(moco_cfg=cells_cfg, det_cfg=det_cfg, unlabeled=unlabeled,
                       run=Run(out / Path(PRODUCTS["cells-moco"]).parent), categories=coco.categories, **common)
    distributed.barrier()
    return out


def moco_covering(cfg: MocoConfig, n_images: int) -> MocoConfig:
    """``cfg`` with enough iterations per MoCo step to see every unlabeled image once."""
    per_step = cfg.optim.batch_size * distributed.world_size()
    needed = math.ceil(n_images / per_step)
    if cfg.optim.iterations >= needed:
        return cfg
    if distributed.is_main():
        print(f"pretrain: MoCo steps raised from {cfg.optim.iterations} to {needed} iterations so that each "
              f"sees all {n_images} unlabeled images")
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, iterations=needed))


def run_cells_moco(*, moco_cfg: MocoConfig, det_cfg, unlabeled, run: Run, categories, device, seed,
                   num_workers, checkpoint_every) -> None:
    """The Cells-MoCo baseline: MoCo v2 from scratch on the cells, as many MoCo
    iterations as all AMT2 rounds together (``moco_cfg`` holds that count)."""
    from cupre.models.detector import build_detector

    if run.path("model.pt").is_file():
        return
    seed_everything(stage_seed(seed, "cells-moco/init"))
    model = build_detector(det_cfg).to(device)
    moco = build_moco(model, moco_cfg).to(device)
    state_file = StateFile(run.path("state.pt"))
    resume = state_file.load()
    if resume is not None:
        moco.load_state_dict(resume["moco"])
    run_moco_stage(stage="cells-moco", moco=moco, unlabeled=unlabeled, cfg=moco_cfg, run=run, device=device,
                   seed=seed, state_file=state_file, resume=resume, extra_state=lambda: {"moco": moco.state_dict()},
                   num_workers=num_workers, checkpoint_every=checkpoint_every)
    save_model(run.path("model.pt"), model, det_cfg, categories, stage="cells-moco")


def resolve_paths(data: dict, base: Path) -> dict:
    """Dataset paths in a config file are relative to the file's folder."""
    for key in ("coco", "unlabeled", "exclude"):
        if isinstance(data.get(key), list):
            data[key] = [str(p) if Path(p).is_absolute() else str((base / p).resolve()) for p in data[key]]
    return data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML with PretrainConfig keys (see configs/)")
    p.add_argument("-o", "--out", required=True, help="output run folder")
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    p.add_argument("--device", help="auto, cpu, cuda ...")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.resume:
        if not (out / "config.yaml").is_file():
            raise CupreError(f"{out}: nothing to resume (no config.yaml)")
        data = load_yaml(out / "config.yaml")
    else:
        if out.exists() and any(out.iterdir()):
            raise CupreError(f"{out}: folder exists and is not empty; use --resume or another -o")
        if not args.config:
            raise CupreError("pretrain: give a config YAML (e.g. configs/demo.yaml's `pretrain` part)")
        data = load_yaml(args.config)
        data = resolve_paths(dict(data.get("pretrain", data)), Path(args.config).parent)
    if args.device:
        data["device"] = args.device
    cfg = PretrainConfig.from_dict(data, where=args.config or str(out / "config.yaml"))
    run_pretrain(cfg, out)
    if distributed.is_main():
        made = [f for f in PRODUCTS.values() if (out / f).is_file()]
        print(f"pretrained models in {out}: {', '.join(made)}")
    return 0
