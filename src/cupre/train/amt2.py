"""AMT2: alternating multi-task training (the paper's Algorithm 1).

COCO is split into K disjoint, equal, seeded subsets. Round k:

(a) MoCo v2 on the backbone with all unlabeled cell images;
(b) the whole detector trained on COCO subset k, the backbone regularised by L2-SP
    towards ``w0``, the backbone as (a) left it:
    Omega(w) = weight * (alpha*||w - w0||^2 + (1 - alpha)*||w||^2)
    (or, with ``freeze_backbone``, the backbone frozen instead).
"""

from __future__ import annotations

import torch
from torch.utils.data import Subset

from cupre.config import Amt2Config, DetectorConfig
from cupre.data.sample import collate
from cupre.data.transforms import DetectionTrainTransform
from cupre.losses.l2sp import L2SP, relative_drift, snapshot
from cupre.modelfile import MODEL_FILE
from cupre.train import distributed
from cupre.train.moco import build_objective, run_moco_stage
from cupre.train.optim import param_groups
from cupre.train.run import Run
from cupre.train.stage import RunContext, detection_step, run_stage
from cupre.train.weights import save_model


def coco_subsets(n: int, k: int, seed: int) -> list[list[int]]:
    """``k`` disjoint subsets of ``range(n)`` of equal size (within one), seeded."""
    if k < 1 or n < k:
        raise ValueError(f"cannot split {n} COCO images into {k} subsets")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [sorted(order[i::k]) for i in range(k)]


def run_amt2(
    *,
    model: torch.nn.Module,
    coco,
    unlabeled,
    cfg: Amt2Config,
    detector_cfg: DetectorConfig,
    run: Run,
    ctx: RunContext,
    moco_steps: bool = True,
    use_l2sp: bool = True,
    product: str = "cupre",
) -> None:
    """Run all rounds and write ``model.safetensors`` into ``run``. Resumable.

    ``moco_steps=False`` runs the COCO steps alone (the fair ``coco`` baseline: the same
    COCO iterations, subsets and schedule as CUPre); ``use_l2sp=False`` the ablation.
    Each COCO step logs ``drift/backbone`` = ||w - w0|| / ||w0|| at its end (also in
    ``drift.json``), with ``w0`` the backbone as the MoCo step left it.
    """
    if run.path(MODEL_FILE).is_file():
        return
    moco = build_objective(model, cfg.moco).to(ctx.device) if moco_steps else None
    done: set[str] = set()
    w0: dict[str, torch.Tensor] | None = None
    drifts: list[dict] = []

    def extra_state() -> dict:
        return {"model": model.state_dict(), "moco": moco.state_dict() if moco is not None else None, "w0": w0,
                "done": sorted(done), "drifts": drifts}

    ctx = ctx.open(run, extra_state=extra_state)
    seed, device = ctx.seed, ctx.device
    resume = ctx.resume
    if resume is not None:
        model.load_state_dict(resume["model"])
        if moco is not None:
            moco.load_state_dict(resume["moco"])
        done = set(resume["done"])
        drifts = list(resume.get("drifts", []))
        w0 = {k: v.to(device) for k, v in resume["w0"].items()} if resume["w0"] is not None else None

    def finish(stage: str) -> None:
        done.add(stage)
        ctx.state_file.save({"stage": f"{stage}:done", **extra_state()})

    subsets = coco_subsets(len(coco), cfg.rounds, seed)
    for k in range(cfg.rounds):
        name = f"amt2/round{k + 1}"
        if moco is not None and f"{name}/moco" not in done:
            if resume is None or resume.get("stage") != f"{name}/moco":
                moco.sync_key_encoder()  # the COCO step moved the backbone: restart the momentum copy and the queue
            run_moco_stage(stage=f"{name}/moco", moco=moco, unlabeled=unlabeled, cfg=cfg.moco, ctx=ctx,
                           object_size=detector_cfg.object_size)
            w0 = snapshot(model.backbone)
            finish(f"{name}/moco")
        if f"{name}/coco" not in done:
            start = w0 if w0 is not None else snapshot(model.backbone)  # w0: set by the MoCo step
            regularizer = None
            if use_l2sp and moco is not None and not cfg.freeze_backbone:
                regularizer = L2SP(model.backbone, start, alpha=cfg.l2sp.alpha, weight=cfg.l2sp.weight)
            coco_step(stage=f"{name}/coco", model=model, data=Subset(coco, subsets[k]), cfg=cfg,
                      regularizer=regularizer, ctx=ctx)
            drift = relative_drift(model.backbone, start)
            drifts.append({"stage": f"{name}/coco", "drift_backbone": drift, "l2sp": regularizer is not None})
            run.log(f"{name}/coco", cfg.coco.iterations, {"drift/backbone": drift})
            finish(f"{name}/coco")
    run.save_json(drifts, "drift.json")
    save_model(run.path(MODEL_FILE), model, detector_cfg, coco.categories, stage=product)
    ctx.finish()


def coco_step(*, stage: str, model: torch.nn.Module, data, cfg: Amt2Config, regularizer: L2SP | None,
              ctx: RunContext) -> None:
    """AMT2 step (b): the whole detector on one COCO subset, the backbone under L2-SP
    (``regularizer``), or frozen with ``cfg.freeze_backbone``."""
    frozen = cfg.freeze_backbone
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    try:
        run_stage(
            stage=stage,
            step_fn=detection_step(distributed.wrap(model, ctx.device), ctx.device),
            groups=param_groups(model.parts(), weight_decay=cfg.coco.weight_decay),
            cfg=cfg.coco,
            dataset=data,
            transform=DetectionTrainTransform(crop_size=cfg.coco.crop_size, scale_jitter=cfg.coco.scale_jitter),
            collate_fn=collate,
            regularizer=regularizer,
            ctx=ctx,
        )
    finally:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
