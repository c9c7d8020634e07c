"""Optimisers and learning-rate schedules for one stage (see :class:`cupre.config.OptimConfig`)."""

from __future__ import annotations

import math

import torch

from cupre.config import OptimConfig


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over parameter groups (each may set its own weight_decay)."""
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine, step (x0.1 at ``lr_steps``) or constant."""
    total = max(1, cfg.iterations)
    warm = min(cfg.warmup_iterations, total)

    def factor(it: int) -> float:
        f = 1.0
        if it < warm:
            f = 0.001 + (1 - 0.001) * it / warm
        if cfg.schedule == "cosine":
            progress = min(1.0, max(0.0, (it - warm) / max(1, total - warm)))
            f *= 0.5 * (1 + math.cos(math.pi * progress))
        elif cfg.schedule == "step":
            f *= 0.1 ** sum(it >= s * total for s in cfg.lr_steps)
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(
    named: dict[str, torch.nn.Module], *, weight_decay: float
) -> list[dict]:
    """One group per part (e.g. backbone/neck/head), trainable parameters only.

    Every part gets the same weight decay, with or without L2-SP (which is applied
    on top, decoupled: :class:`cupre.losses.l2sp.L2SP`).
    """
    groups = []
    for name, module in named.items():
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": params, "weight_decay": weight_decay, "name": name})
    return groups
