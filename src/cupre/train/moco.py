"""MoCo v2 on the detector's backbone with unlabeled cell images (AMT2 step (a))."""

from __future__ import annotations

import torch

from cupre.config import MocoConfig
from cupre.data.transforms import TwoViews
from cupre.models.moco import MoCo
from cupre.train import distributed
from cupre.train.stage import RunContext, run_stage


def build_moco(model: torch.nn.Module, cfg: MocoConfig) -> MoCo:
    """MoCo whose query encoder is ``model.backbone`` itself (no key renaming, ever)."""
    return MoCo(
        backbone=model.backbone,
        in_channels=model.backbone_out_channels,
        dim=cfg.dim,
        hidden_dim=cfg.hidden_dim,
        queue_size=cfg.queue_size,
        momentum=cfg.momentum,
        temperature=cfg.temperature,
    )


def moco_step(moco: torch.nn.Module, device: torch.device):
    """``step_fn``: two views -> ``moco/loss`` (summed) and ``metric/moco_acc`` (logged)."""

    def step(batch) -> dict[str, torch.Tensor]:
        view_q, view_k = batch
        out = moco(view_q.to(device, non_blocking=True), view_k.to(device, non_blocking=True))
        return {"moco/loss": out["moco/loss"], "metric/moco_acc": out["moco/acc"]}

    return step


def run_moco_stage(*, stage: str, moco: MoCo, unlabeled, cfg: MocoConfig, ctx: RunContext) -> dict[str, float]:
    """Train the backbone and projection head only; the rest of the detector is untouched."""
    return run_stage(
        stage=stage,
        step_fn=moco_step(distributed.wrap(moco, ctx.device), ctx.device),
        groups=[{"params": list(moco.trainable_parameters()), "weight_decay": cfg.optim.weight_decay}],
        cfg=cfg.optim,
        dataset=unlabeled,
        transform=TwoViews(cfg.optim.crop_size or 224, scale=cfg.crop_scale),
        collate_fn=None,
        ctx=ctx,
    )
