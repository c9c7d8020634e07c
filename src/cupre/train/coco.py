"""COCO warm-up: the whole detector trained on natural images, L_cls + L_box + L_mask."""

from __future__ import annotations

import torch

from cupre.config import DetectorConfig, OptimConfig
from cupre.data.sample import collate
from cupre.data.transforms import DetectionTrainTransform
from cupre.errors import CupreError
from cupre.modelfile import MODEL_FILE
from cupre.train import distributed
from cupre.train.optim import param_groups
from cupre.train.run import Run
from cupre.train.stage import RunContext, detection_step, run_stage
from cupre.train.weights import save_model


def run_coco_warmup(
    *,
    model: torch.nn.Module,
    dataset,
    cfg: OptimConfig,
    detector_cfg: DetectorConfig,
    run: Run,
    ctx: RunContext,
) -> None:
    """Train ``model`` on ``dataset`` (class-aware) and write ``run/model.safetensors``.

    Resumes from ``run/state.pt`` when it exists; does nothing when ``model.safetensors`` exists.
    """
    product = run.path(MODEL_FILE)
    if product.is_file():
        return
    ctx = ctx.open(run, extra_state=lambda: {"model": model.state_dict()})
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
    ctx.finish()


TORCHVISION_ARCHITECTURE = {"arch": "maskrcnn", "backbone": "resnet50", "norm": "frozen_bn", "fpn_channels": 256}


def start_from_torchvision_coco(
    *,
    model: torch.nn.Module,
    detector_cfg: DetectorConfig,
    categories: list[dict],
    run: Run,
    weights: str | None,
    download: bool = False,
) -> None:
    """The COCO stage as the paper starts it: torchvision's COCO-trained Mask R-CNN, written
    as ``run/model.safetensors`` in place of a warm-up (does nothing when it exists).

    The class-specific predictors stay freshly initialised when ``categories`` is not
    COCO's 90 (AMT2's COCO steps train them); every other weight is torchvision's, with
    ImageNet standardisation folded into the stem.

    Raises:
        CupreError: ``detector_cfg`` is not torchvision's architecture, or the weights
            are not on this machine.
    """
    from cupre.models.pretrained import build_torchvision_coco_detector

    product = run.path(MODEL_FILE)
    if product.is_file():
        return
    wrong = {k: v for k, v in TORCHVISION_ARCHITECTURE.items() if getattr(detector_cfg, k) != v}
    if wrong:
        raise CupreError("pretrain.start torchvision-coco needs torchvision's architecture in pretrain.detector "
                         f"({', '.join(f'{k}: {v}' for k, v in TORCHVISION_ARCHITECTURE.items())}); "
                         f"the config has {', '.join(f'{k}: {getattr(detector_cfg, k)}' for k in wrong)}")
    source, _ = build_torchvision_coco_detector(weights, download=download)
    state = source.state_dict()
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    save_model(product, model, detector_cfg, categories, stage="warmup:torchvision-coco",
               kept=len(fitting), of=len(own))
