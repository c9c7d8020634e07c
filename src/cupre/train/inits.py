"""The paper's initialisations by name, from a ``cupre pretrain`` run folder.

=============  =====================================================================
name           weights the fine-tuning starts from
=============  =====================================================================
scratch        Kaiming initialisation (nothing pre-trained)
coco           the COCO warm-up model (backbone, neck, head)
cells-moco     the backbone of MoCo v2 trained on cells from scratch; fresh neck/head
coco++         the first AMT2 MoCo backbone with the COCO warm-up neck and head
cupre          the model after all AMT2 rounds
cupre-nol2sp   the model after AMT2 rounds run without L2-SP
cupre++        ``cupre``, fine-tuned with L2-SP towards the pre-trained backbone and neck
=============  =====================================================================

The class-specific predictor layers are re-initialised for one "cell" class; every other
pre-trained weight is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.losses.l2sp import snapshot
from cupre.train.weights import load_model_file

INIT_FILES = {
    "coco": "warmup/model.pt",
    "cells-moco": "cells-moco/model.pt",
    "coco++": "amt2/coco++.pt",
    "cupre": "amt2/model.pt",
    "cupre-nol2sp": "amt2-nol2sp/model.pt",
    "cupre++": "amt2/model.pt",
}
INITS = ("scratch", *INIT_FILES)


def init_file(name: str, pretrain_dir: str | Path | None) -> Path | None:
    """The model file an initialisation loads (None for scratch)."""
    if name not in INITS:
        raise CupreError(f"unknown initialisation {name!r}; choose one of {', '.join(INITS)}")
    if name == "scratch":
        return None
    if pretrain_dir is None:
        raise CupreError(f"--init {name} needs --from PRETRAIN_RUN_DIR (a `cupre pretrain` output folder)")
    path = Path(pretrain_dir) / INIT_FILES[name]
    if not path.is_file():
        hint = {"cells-moco": " (pretrain with cells_moco: true)", "cupre-nol2sp": " (pretrain with nol2sp: true)"}
        raise CupreError(f"{path}: not found; has the pretrain run finished?{hint.get(name, '')}")
    return path


def build_init(
    name: str, pretrain_dir: str | Path | None, overrides: dict[str, Any]
) -> tuple[torch.nn.Module, DetectorConfig, dict[str, dict[str, torch.Tensor]] | None]:
    """Build the detector for fine-tuning (one foreground class).

    Returns:
        (model, its config, the L2-SP reference for ``cupre++`` else None). The L2-SP
        reference maps part names ("backbone", "neck") to snapshots of their
        pre-trained parameters.
    """
    from cupre.models.detector import build_detector

    path = init_file(name, pretrain_dir)
    if path is None:
        base: dict[str, Any] = {}
        if pretrain_dir is not None and (Path(pretrain_dir) / INIT_FILES["coco"]).is_file():
            base = load_model_file(Path(pretrain_dir) / INIT_FILES["coco"])["detector"]
        cfg = DetectorConfig.from_dict({**base, **overrides, "num_classes": 1}, where="detector")
        return build_detector(cfg), cfg, None
    ckpt = load_model_file(path)
    cfg = DetectorConfig.from_dict({**ckpt["detector"], **overrides}, where=f"{path} detector")
    model = build_detector(cfg)
    if name == "cells-moco":  # only the backbone is pre-trained
        backbone = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
        model.backbone.load_state_dict(backbone)
    else:
        model.load_state_dict(ckpt["model"])
    model.reset_predictors(1)
    cfg.num_classes = 1
    reference = None
    if name == "cupre++":
        reference = {"backbone": snapshot(model.backbone), "neck": snapshot(model.neck)}
    return model, cfg, reference
