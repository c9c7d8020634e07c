"""One resumable training stage: optimiser, schedule, batches, loop and checkpoints.

Every procedure (COCO warm-up, each AMT2 step, fine-tuning) is a sequence of stages
with unique names such as ``amt2/round3/coco``. A procedure keeps one ``state.pt``; it
names the stage in progress and the iteration reached, so ``--resume`` continues there.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from cupre.config import OptimConfig
from cupre.losses.l2sp import L2SP
from cupre.train import distributed
from cupre.train.batches import batch_stream, hash_seed
from cupre.train.checkpoint import (
    atomic_save,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from cupre.train.loop import train_loop
from cupre.train.optim import build_optimizer, build_scheduler
from cupre.train.run import Run


class StateFile:
    """The resumable state of one procedure (``state.pt`` in its run folder)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        return load_checkpoint(self.path) if self.path.is_file() else None

    def save(self, state: dict[str, Any]) -> None:
        if distributed.is_main():
            atomic_save(state, self.path)


def stage_seed(seed: int, stage: str) -> int:
    return hash_seed(seed, zlib.crc32(stage.encode()))


@dataclass(frozen=True)
class RunContext:
    """How a procedure runs, and, once :meth:`open` has bound it to a run folder, what
    every stage of it shares.

    Attributes:
        device: where training runs.
        seed: the procedure's seed (each stage derives its own from it and its name).
        num_workers: data-loader worker processes.
        checkpoint_every: iterations between checkpoints.
        precision: ``bf16`` (autocast) or ``fp32`` for the training steps (resolved).
        keep_checkpoints: keep ``state.pt`` once the procedure has written its model.
        run: the run folder (metrics, TensorBoard, JSON outputs); set by :meth:`open`.
        state_file: the procedure's ``state.pt``; resume: its content when resuming.
        extra_state: what the procedure adds to every checkpoint (model weights ...).
    """

    device: torch.device
    seed: int
    num_workers: int = 0
    checkpoint_every: int = 200
    precision: str = "fp32"
    keep_checkpoints: bool = False
    run: Run | None = None
    state_file: StateFile | None = None
    resume: dict[str, Any] | None = None
    extra_state: Callable[[], dict[str, Any]] = dict

    def open(self, run: Run, extra_state: Callable[[], dict[str, Any]] = dict) -> "RunContext":
        """This context bound to ``run``, its ``state.pt`` read when a stopped run left one.
        ``extra_state`` is called at each checkpoint, so it may name what is restored after."""
        state_file = StateFile(run.path("state.pt"))
        return replace(self, run=run, state_file=state_file, resume=state_file.load(), extra_state=extra_state)

    def finish(self) -> None:
        """The procedure has written its model: its ``state.pt`` (weights and optimiser,
        about three model files) goes, unless ``keep_checkpoints``. A finished procedure
        is known by its model file, so nothing needs the state any more."""
        if not self.keep_checkpoints and distributed.is_main():
            self.state_file.path.unlink(missing_ok=True)


def run_stage(
    *,
    stage: str,
    step_fn: Callable[[Any], dict[str, torch.Tensor]],
    groups: list[dict],
    cfg: OptimConfig,
    dataset: Dataset,
    transform: Callable | None,
    collate_fn: Callable | None,
    ctx: RunContext,
    on_step: Callable[[int], None] | None = None,
    regularizer: L2SP | None = None,
) -> dict[str, float]:
    """Train one stage, resuming from ``ctx.resume`` when it names this stage.

    The caller restores model weights (and anything else in ``ctx.extra_state``) before
    calling; this function restores the optimiser, the schedule, the RNG and the
    position in the data stream.
    """
    optimizer = build_optimizer(groups, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    resume = ctx.resume
    resuming = resume is not None and resume.get("stage") == stage
    start = int(resume["iteration"]) if resuming else 0
    if not resuming:
        seed_everything(stage_seed(ctx.seed, stage) % (2**31))
    batches = batch_stream(  # creating the loader draws from the global RNG: restore it after
        dataset,
        batch_size=cfg.batch_size,
        seed=stage_seed(ctx.seed, stage),
        start_iteration=start,
        transform=transform,
        collate_fn=collate_fn,
        num_workers=ctx.num_workers,
    )
    if resuming:
        ctx.run.drop_after(start, [stage])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])

    def save(iteration: int) -> None:
        state = {
            "stage": stage,
            "iteration": iteration,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        }
        state.update(ctx.extra_state())
        ctx.state_file.save(state)

    if start >= cfg.iterations:
        return {}
    return train_loop(
        stage=stage,
        step_fn=step_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=batches,
        start=start,
        iterations=cfg.iterations,
        run=ctx.run,
        save_fn=save,
        checkpoint_every=ctx.checkpoint_every,
        grad_clip=cfg.grad_clip,
        device=ctx.device,
        precision=ctx.precision,
        on_step=on_step,
        regularizer=regularizer,
    )


TARGET_KEYS = ("boxes", "labels", "masks", "ignore_boxes")  # what the detector reads of a target


def detection_step(model: torch.nn.Module, device: torch.device):
    """``step_fn`` for a detector: images + targets -> the detector's named losses."""

    def step(batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: t[k].to(device, non_blocking=True) for k in TARGET_KEYS if k in t} for t in targets]
        return dict(model(images, targets))

    return step
