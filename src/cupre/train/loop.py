"""The training loop every procedure shares: one visible ``for`` over iterations."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from tqdm import tqdm

from cupre.devices import autocast
from cupre.errors import CupreError
from cupre.losses.l2sp import L2SP
from cupre.train import distributed
from cupre.train.run import Run

SHOW_PROGRESS = True  # off in worker processes that run beside others (experiments.parallel)
PENALTY_EVERY = 20  # iterations between logged values of the L2-SP penalty (one pass over its weights)

def train_loop(
    *,
    stage: str,
    step_fn: Callable[[object], dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterator,
    start: int,
    iterations: int,
    run: Run,
    save_fn: Callable[[int], None],
    checkpoint_every: int,
    grad_clip: float = 0.0,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
    on_step: Callable[[int], None] | None = None,
    regularizer: L2SP | None = None,
) -> dict[str, float]:
    """Run iterations ``start .. iterations-1`` of one stage.

    ``step_fn(batch)`` returns a dict of named scalar losses (and, optionally, metrics
    whose names start with ``metric/``, which are logged but not summed). The total loss
    is their sum; a non-finite total stops the run with the losses named. ``save_fn(i)``
    is called every ``checkpoint_every`` iterations and at the end, with the number of
    iterations done. Steps run under ``precision`` (``bf16`` autocast or ``fp32``).
    ``regularizer`` (decoupled L2-SP) takes its step right after the optimiser's, at the
    same learning rate. Returns the last step's logged values.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = tqdm(
        range(start, iterations),
        initial=start,
        total=iterations,
        desc=stage,
        disable=not (SHOW_PROGRESS and distributed.is_main()),
        dynamic_ncols=True,
        leave=False,
    )
    values: dict[str, float] = {}
    for it in bar:
        batch = next(batches)
        with autocast(device, precision):
            out = step_fn(batch)
        losses = {k: v for k, v in out.items() if not k.startswith("metric/")}
        total = sum(losses.values())
        if not torch.isfinite(total):
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise CupreError(f"{stage}: non-finite loss at iteration {it} ({shown}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if regularizer is not None:
            regularizer.step(optimizer.param_groups[0]["lr"])
        scheduler.step()
        if on_step is not None:
            on_step(it + 1)
        values = {k: float(v.detach()) for k, v in out.items()}
        values["loss"] = float(total.detach())
        values["lr"] = optimizer.param_groups[0]["lr"]
        if regularizer is not None and (it + 1) % PENALTY_EVERY == 0:
            values["l2sp/penalty"] = float(regularizer.value())
        run.log(stage, it + 1, values)
        bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2g}")
        if (it + 1) % checkpoint_every == 0 or it + 1 == iterations:
            save_fn(it + 1)
    bar.close()
    return values
