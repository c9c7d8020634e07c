"""COCO warm-up: the whole detector trained on natural images, L_cls + L_box + L_mask."""

from __future__ import annotations

import torch

from cupre.config import DetectorConfig, OptimConfig
from cupre.data.sample import collate
from cupre.data.transforms import DetectionTrainTransform
from cupre.modelfile import MODEL_FILE
from cupre.train import distributed
from cupre.train.optim import param_groups
from cupre.train.run import Run
from cupre.train.stage import RunContext, Settings, detection_step, run_stage
from cupre.train.weights import save_model


def run_coco_warmup(
    *,
    model: torch.nn.Module,
    dataset,
    cfg: OptimConfig,
    detector_cfg: DetectorConfig,
    run: Run,
    settings: Settings,
) -> None:
    """Train ``model`` on ``dataset`` (class-aware) and write ``run/model.safetensors``.

    Resumes from ``run/state.pt`` when it exists; does nothing when ``model.safetensors`` exists.
    """
    product = run.path(MODEL_FILE)
    if product.is_file():
        return
    ctx = RunContext.open(run, settings, extra_state=lambda: {"model": model.state_dict()})
    if ctx.resume is not None:
        model.load_state_dict(ctx.resume["model"])
    run_stage(
        stage="warmup",
        step_fn=detection_step(distributed.wrap(model, ctx.device), ctx.device),
        groups=param_groups(model.parts(), weight_decay=cfg.weight_decay),
        cfg=cfg,
        dataset=dataset,
        transform=DetectionTrainTransform(crop_size=cfg.crop_size, scale_jitter=cfg.scale_jitter),
        collate_fn=collate,
        ctx=ctx,
    )
    save_model(product, model, detector_cfg, dataset.categories, stage="warmup")
