"""The unsupervised objective on the detector's backbone with unlabeled cell images (AMT2
step (a), and the Cells-MoCo baseline).

One interface whatever the objective (``MocoConfig.objective``): :func:`build_objective`
gives a module whose ``forward(view_q, view_k)`` returns named losses (``*/loss``) and
metrics, ``sync_key_encoder()`` restarts it after the backbone was trained elsewhere, and
``query_parameters()`` is what it trains; :func:`run_moco_stage` chooses its views and
runs it. A new objective is one model file and one line in :func:`build_objective`.
"""

from __future__ import annotations

import torch

from cupre.config import MocoConfig
from cupre.data.transforms import ObjectScaleViews, TwoViews
from cupre.models.densecl import DenseCL
from cupre.models.moco import MoCo
from cupre.train import distributed
from cupre.train.stage import RunContext, run_stage


def build_objective(model: torch.nn.Module, cfg: MocoConfig) -> MoCo:
    """MoCo v2 or DenseCL whose query encoder is ``model.backbone`` itself (no key renaming, ever)."""
    common = dict(backbone=model.backbone, in_channels=model.backbone_out_channels, dim=cfg.dim,
                  hidden_dim=cfg.hidden_dim, queue_size=cfg.queue_size, momentum=cfg.momentum,
                  temperature=cfg.temperature, invert_bright=model.transform.invert_bright)
    if cfg.objective == "densecl":
        return DenseCL(level_channels=list(model.backbone.feature_info.channels()), levels=cfg.dense_levels,
                       dense_weight=cfg.dense_weight, **common)
    return MoCo(**common)


def moco_module(moco: torch.nn.Module) -> MoCo:
    """The MoCo inside a DDP wrapper (or itself)."""
    return getattr(moco, "module", moco)


def moco_step(moco: torch.nn.Module, device: torch.device):
    """``step_fn``: two views -> the objective's losses (summed) and metrics (``metric/moco_acc`` ..., logged)."""

    def step(batch) -> dict[str, torch.Tensor]:
        view_q, view_k = batch
        out = moco(view_q.to(device, non_blocking=True), view_k.to(device, non_blocking=True))
        losses = {k: v for k, v in out.items() if k.endswith("/loss")}  # summed by the loop
        metrics = {f"metric/{k.replace('/', '_')}": v for k, v in out.items() if not k.endswith("/loss")}
        return {**losses, **metrics, "metric/moco_momentum": torch.tensor(moco_module(moco).momentum)}

    return step


def run_moco_stage(*, stage: str, moco: MoCo, unlabeled, cfg: MocoConfig, ctx: RunContext,
                   object_size: float | None = None) -> dict[str, float]:
    """Train the backbone and projection head only; the rest of the detector is untouched.

    ``cfg.views`` chooses the views: MoCo v2's random resized crops, or crops in which the
    cells measure the detector's ``object_size`` (as fine-tuning and prediction see them).
    """
    crop = cfg.optim.crop_size or 224
    if cfg.views == "object-scale" and object_size is not None:
        transform = ObjectScaleViews(crop, object_size=object_size, jitter=cfg.view_jitter)
    else:
        transform = TwoViews(crop, scale=cfg.crop_scale)
    resume = ctx.resume
    start = int(resume["iteration"]) if resume is not None and resume.get("stage") == stage else 0
    moco.set_progress(start / cfg.optim.iterations, cfg.momentum_schedule)
    return run_stage(
        stage=stage,
        step_fn=moco_step(distributed.wrap(moco, ctx.device), ctx.device),
        groups=[{"params": moco.query_parameters(), "weight_decay": cfg.optim.weight_decay}],
        cfg=cfg.optim,
        dataset=unlabeled,
        transform=transform,
        collate_fn=None,
        ctx=ctx,
        on_step=lambda it: moco.set_progress(it / cfg.optim.iterations, cfg.momentum_schedule),
    )
