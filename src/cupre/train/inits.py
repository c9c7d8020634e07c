"""The paper's initialisations: one table that pre-training saves by and fine-tuning loads by.

=============  ====================================================================
name           weights the fine-tuning starts from
=============  ====================================================================
scratch        Kaiming initialisation (nothing pre-trained)
coco           the COCO warm-up followed by AMT2's K COCO steps without the MoCo steps
               (as many COCO iterations as CUPre, same subsets and schedule)
cells-moco     the backbone of MoCo v2 trained on cells from scratch; fresh neck/head
coco++         the Cells-MoCo backbone with the neck and head of ``coco`` (the COCO model)
cupre          the model after all AMT2 rounds
cupre-nol2sp   the model after AMT2 rounds run without L2-SP
cupre++        ``cupre``, fine-tuned with L2-SP towards the pre-trained backbone
=============  ====================================================================

The class-specific predictor layers are re-initialised for one "cell" class; every other
pre-trained weight is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cupre.config import INIT_NAMES, DetectorConfig
from cupre.errors import CupreError
from cupre.modelfile import check_state, load_model_file
from cupre.models.loading import build_from_file
from cupre.shipped import resolve_model

# What `cupre pretrain` writes, by product name, and the setting that asks for it.
PRODUCTS = {
    "warmup": "warmup/model.safetensors",
    "coco": "coco/model.safetensors",
    "cupre": "amt2/model.safetensors",
    "cupre-nol2sp": "amt2-nol2sp/model.safetensors",
    "cells-moco": "cells-moco/model.safetensors",
}
PRODUCT_SETTING = {"coco": "coco_baseline: true", "cupre-nol2sp": "nol2sp: true", "cells-moco": "cells_moco: true"}


@dataclass(frozen=True)
class Init:
    """One initialisation: which products it loads, and whether L2-SP follows it.

    Attributes:
        model: product whose whole detector is loaded (None: a fresh detector).
        backbone: product whose backbone replaces the loaded (or fresh) one.
        l2sp: fine-tune with L2-SP towards the loaded weights (CUPre++).
    """

    name: str
    model: str | None = None
    backbone: str | None = None
    l2sp: bool = False

    @property
    def products(self) -> list[str]:
        return [p for p in (self.model, self.backbone) if p is not None]


INIT_TABLE = {i.name: i for i in (
    Init("scratch"),
    Init("coco", model="coco"),
    Init("cells-moco", backbone="cells-moco"),
    Init("coco++", model="coco", backbone="cells-moco"),
    Init("cupre", model="cupre"),
    Init("cupre-nol2sp", model="cupre-nol2sp"),
    Init("cupre++", model="cupre", l2sp=True),
)}
INITS = INIT_NAMES  # INIT_TABLE holds exactly these, in this order (tests/train/test_procedures.py)


def get_init(name: str) -> Init:
    if name not in INIT_TABLE:
        raise CupreError(f"unknown initialisation {name!r}; choose one of {', '.join(INITS)}")
    return INIT_TABLE[name]


def product_files(name: str, pretrain_dir: str | Path | None) -> dict[str, Path]:
    """The model files an initialisation loads, by product (none for scratch).

    Raises:
        CupreError: no pretrain folder given, or a product is missing (with the
            setting that makes it).
    """
    init = get_init(name)
    if not init.products:
        return {}
    if pretrain_dir is None:
        raise CupreError(f"--init {name} needs --from PRETRAIN_RUN_DIR (a `cupre pretrain` output folder)")
    files = {p: Path(pretrain_dir) / PRODUCTS[p] for p in init.products}
    for product, path in files.items():
        if not path.is_file():
            hint = f" (pretrain with {PRODUCT_SETTING[product]})" if product in PRODUCT_SETTING else ""
            raise CupreError(f"{path}: not found; has the pretrain run finished?{hint}")
    return files


def pretrain_done(pretrain_dir: Path, methods: list[str]) -> bool:
    """Whether every product the ``methods`` load exists."""
    return all((pretrain_dir / PRODUCTS[p]).is_file() for m in methods for p in get_init(m).products)


def build_init(
    name: str, pretrain_dir: str | Path | None, overrides: dict[str, Any]
) -> tuple[torch.nn.Module, DetectorConfig]:
    """Build the detector for fine-tuning (one foreground class) from initialisation ``name``.

    The detector config is the loaded product's (the warm-up's for scratch when a
    pretrain folder is given), with ``overrides`` on top.
    """
    from cupre.models.detector import build_detector

    init = get_init(name)
    files = product_files(name, pretrain_dir)
    ckpts = {p: load_model_file(f) for p, f in files.items()}
    source = ckpts.get(init.model) or ckpts.get(init.backbone)
    if source is None and pretrain_dir is not None and (Path(pretrain_dir) / PRODUCTS["warmup"]).is_file():
        source = load_model_file(Path(pretrain_dir) / PRODUCTS["warmup"])
    base = dict(source["detector"]) if source is not None else {}
    cfg = DetectorConfig.from_dict({**base, **overrides}, where=f"--init {name} detector")
    try:
        model = build_detector(cfg)
    except CupreError as exc:  # a backbone no library knows: say where the setting came from
        raise CupreError(f"--init {name} detector: {exc}") from None
    if init.model is not None:
        check_state(files[init.model], model, ckpts[init.model]["model"])
        model.load_state_dict(ckpts[init.model]["model"])
    if init.backbone is not None:
        state = ckpts[init.backbone]["model"]
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        check_state(files[init.backbone], model.backbone, backbone, prefix="backbone.")
        model.backbone.load_state_dict(backbone)
    model.reset_predictors(1)
    cfg.num_classes = 1
    return model, cfg


def continue_model(path: str | Path, overrides: dict[str, Any]) -> tuple[torch.nn.Module, DetectorConfig]:
    """A trained cell model to fine-tune further (``from_model``: a model file, a run folder
    or a shipped model's name, :func:`cupre.shipped.resolve_model`): every weight loaded, its
    one-class predictors kept (a model of several classes gets them re-initialised).

    Raises:
        CupreError: no model file there, or not a cupre model.
    """
    model, cfg, _ = build_from_file(resolve_model(path), overrides=overrides)
    if cfg.num_classes != 1:
        model.reset_predictors(1)
        cfg.num_classes = 1
    return model, cfg
