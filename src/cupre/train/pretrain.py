"""CUPre pre-training: COCO warm-up, then AMT2 (and, on request, baselines/ablations).

``cupre pretrain CONFIG.yaml -o RUN_DIR`` writes (names from :data:`cupre.methods.PRODUCTS`)::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/warmup/model.safetensors        COCO warm-up
    RUN_DIR/amt2/model.safetensors          after K AMT2 rounds     (--init cupre, cupre++)
    RUN_DIR/amt2-nol2sp/model.safetensors   AMT2 without L2-SP      (--init cupre-nol2sp; nol2sp: true)
    RUN_DIR/coco/model.safetensors          warm-up + AMT2's COCO steps, no MoCo (--init coco, coco++; coco_baseline: true)
    RUN_DIR/cells-moco/model.safetensors    MoCo on cells only      (--init cells-moco, coco++; cells_moco: true)

Each part keeps its own ``state.pt``; ``--resume`` continues where a killed run stopped.
Images listed in ``exclude`` (a labeled set's validation and test images) never reach
MoCo. Every MoCo step runs at least one epoch over the unlabeled images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cupre.config import MocoConfig, PretrainConfig
from cupre.data.concat import MergedDataset
from cupre.data.formats import open_dataset
from cupre.data.unlabeled import UnlabeledImages
from cupre.devices import pick_device, resolve_precision
from cupre.errors import CupreError
from cupre.methods import PRODUCTS, Product
from cupre.modelfile import MODEL_FILE, load_model_file
from cupre.train import distributed
from cupre.train.amt2 import run_amt2
from cupre.train.checkpoint import seed_everything
from cupre.train.coco import run_coco_warmup, start_from_torchvision_coco
from cupre.train.moco import build_objective, run_moco_stage
from cupre.train.run import Run
from cupre.train.stage import RunContext, stage_seed
from cupre.train.weights import save_model


def run_pretrain(cfg: PretrainConfig, out_dir: str | Path) -> Path:
    """Run every pre-training part that is not finished yet; returns ``out_dir``."""
    from cupre.models.detector import build_detector

    if not cfg.coco:
        raise CupreError("pretrain: no COCO-format dataset given (config key `coco`)")
    if not cfg.unlabeled:
        raise CupreError("pretrain: no unlabeled cell images given (config key `unlabeled`)")
    device = pick_device(cfg.device)
    distributed.init(device)
    out = Path(out_dir)
    coco = MergedDataset([open_dataset(p) for p in cfg.coco])
    unlabeled = UnlabeledImages(cfg.unlabeled, exclude=cfg.exclude)
    check_exclusion(cfg, unlabeled)
    Run(out, tensorboard=False).save_config(cfg.to_dict())  # only once the inputs are known to be readable
    moco_cfg = moco_covering(cfg.amt2.moco, len(unlabeled))
    amt2 = cfg.amt2.replace(moco=moco_cfg)
    det_cfg = cfg.detector.replace(num_classes=len(coco.categories))
    ctx = RunContext(device=device, seed=cfg.seed, num_workers=cfg.num_workers,
                     checkpoint_every=cfg.checkpoint_every, precision=resolve_precision(cfg.precision, device),
                     keep_checkpoints=cfg.keep_checkpoints)
    if distributed.is_main():
        left_out = f" ({unlabeled.excluded} validation and test images left out)" if unlabeled.excluded else ""
        print(f"pretrain: {len(coco)} COCO-format images ({len(coco.categories)} classes), "
              f"{len(unlabeled)} unlabeled cell images{left_out}, "
              f"{amt2.rounds} AMT2 rounds of {moco_cfg.optim.iterations} MoCo + {amt2.coco.iterations} COCO "
              f"iterations, device {device}, {ctx.precision}, {torch.get_num_threads()} threads")

    seed_everything(stage_seed(cfg.seed, "init"))  # the Kaiming initialisation is part of the run
    model = build_detector(det_cfg).to(device)
    if cfg.start == "imagenet-warmup" and not (out / PRODUCTS["warmup"].file).is_file():
        from cupre.models.pretrained import timm_imagenet_backbone

        body = timm_imagenet_backbone(det_cfg.backbone, norm=det_cfg.norm, file=cfg.start_weights,
                                      download=cfg.download_weights)
        model.backbone.load_state_dict(body.state_dict())
    if cfg.start == "torchvision-coco":
        start_from_torchvision_coco(model=model, detector_cfg=det_cfg, categories=coco.categories,
                                    run=Run(out / "warmup"), weights=cfg.start_weights,
                                    download=cfg.download_weights)
    else:
        run_coco_warmup(model=model, dataset=coco, cfg=cfg.warmup, detector_cfg=det_cfg,
                        run=Run(out / "warmup"), ctx=ctx)
    warm_weights = {k: v.to(device) for k, v in load_model_file(out / PRODUCTS["warmup"].file)["model"].items()}
    for product in [p for p in PRODUCTS.values() if p.amt2 and asked(cfg, p)]:
        model.load_state_dict(warm_weights)
        run_amt2(model=model, coco=coco, unlabeled=unlabeled, cfg=amt2, detector_cfg=det_cfg,
                 run=Run(out / Path(product.file).parent), moco_steps=product.moco_steps, use_l2sp=product.l2sp,
                 product=product.name, ctx=ctx)
    if cfg.cells_moco:
        cells_cfg = moco_cfg.replace(optim=moco_cfg.optim.replace(iterations=moco_cfg.optim.iterations * amt2.rounds))
        run_cells_moco(moco_cfg=cells_cfg, det_cfg=det_cfg, unlabeled=unlabeled,
                       run=Run(out / Path(PRODUCTS["cells-moco"].file).parent), categories=coco.categories,
                       ctx=ctx)
    distributed.barrier()
    return out


def asked(cfg: PretrainConfig, product: Product) -> bool:
    """Whether ``cfg`` makes ``product`` (its flag set, or one made always)."""
    return product.setting is None or getattr(cfg, product.setting)


def check_exclusion(cfg: PretrainConfig, unlabeled: UnlabeledImages) -> None:
    """Stop when held-out images were named but none was removed from the unlabeled
    sources although some of them lie there: the paths do not match (a copy, a link
    outside), and validation images would reach MoCo."""
    if not cfg.exclude or unlabeled.excluded:
        return
    sources = [Path(p).resolve() for p in cfg.unlabeled]
    inside = [f for f in cfg.exclude if any(s in Path(f).resolve().parents for s in sources)]
    if inside:
        raise CupreError(f"pretrain: {inside[0]} is held out (validation/test) and lies under an unlabeled source, "
                         "but the exclusion removed no image; check that the paths match")


def moco_covering(cfg: MocoConfig, n_images: int) -> MocoConfig:
    """``cfg`` with enough iterations per MoCo step to see every unlabeled image once."""
    per_step = cfg.optim.batch_size * distributed.world_size()
    needed = math.ceil(n_images / per_step)
    if cfg.optim.iterations >= needed:
        return cfg
    if distributed.is_main():
        print(f"pretrain: MoCo steps raised from {cfg.optim.iterations} to {needed} iterations so that each "
              f"sees all {n_images} unlabeled images")
    return cfg.replace(optim=cfg.optim.replace(iterations=needed))


def run_cells_moco(*, moco_cfg: MocoConfig, det_cfg, unlabeled, run: Run, categories,
                   ctx: RunContext) -> None:
    """The Cells-MoCo baseline: MoCo v2 from scratch on the cells, as many MoCo
    iterations as all AMT2 rounds together (``moco_cfg`` holds that count)."""
    from cupre.models.detector import build_detector

    if run.path(MODEL_FILE).is_file():
        return
    seed_everything(stage_seed(ctx.seed, "cells-moco/init"))
    model = build_detector(det_cfg).to(ctx.device)
    moco = build_objective(model, moco_cfg).to(ctx.device)
    ctx = ctx.open(run, extra_state=lambda: {"moco": moco.state_dict()})
    if ctx.resume is not None:
        moco.load_state_dict(ctx.resume["moco"])
    run_moco_stage(stage="cells-moco", moco=moco, unlabeled=unlabeled, cfg=moco_cfg, ctx=ctx,
                   object_size=det_cfg.object_size)
    save_model(run.path(MODEL_FILE), model, det_cfg, categories, stage="cells-moco")
    ctx.finish()


def resolve_paths(data: dict, base: Path) -> dict:
    """Dataset paths in a config file are relative to the file's folder."""
    for key in ("coco", "unlabeled", "exclude"):
        if isinstance(data.get(key), list):
            data[key] = [str(p) if Path(p).is_absolute() else str((base / p).resolve()) for p in data[key]]
    if isinstance(data.get("start_weights"), str) and not Path(data["start_weights"]).is_absolute():
        data["start_weights"] = str((base / data["start_weights"]).resolve())
    return data
