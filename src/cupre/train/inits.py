"""Build the detector fine-tuning starts from: a method's products loaded into it
(which ones: the table in :mod:`cupre.methods`), or a trained cell model to continue.

The class-specific predictor layers are re-initialised for one "cell" class; every other
pre-trained weight is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.methods import PRODUCTS, get_method
from cupre.modelfile import check_state, load_model_file
from cupre.models.loading import build_from_file
from cupre.shipped import resolve_model


def product_files(name: str, pretrain_dir: str | Path | None) -> dict[str, Path]:
    """The model files an initialisation loads, by product (none for scratch).

    Raises:
        CupreError: no pretrain folder given, or a product is missing (with the
            setting that makes it).
    """
    init = get_method(name)
    if not init.products:
        return {}
    if pretrain_dir is None:
        raise CupreError(f"--init {name} needs --from PRETRAIN_RUN_DIR (a `cupre pretrain` output folder)")
    files = {p: Path(pretrain_dir) / PRODUCTS[p].file for p in init.products}
    for product, path in files.items():
        if not path.is_file():
            setting = PRODUCTS[product].setting
            hint = f" (pretrain with {setting}: true)" if setting else ""
            raise CupreError(f"{path}: not found; has the pretrain run finished?{hint}")
    return files


def pretrain_done(pretrain_dir: Path, methods: list[str]) -> bool:
    """Whether every product the ``methods`` load exists."""
    return all((pretrain_dir / PRODUCTS[p].file).is_file() for m in methods for p in get_method(m).products)


def build_init(
    name: str, pretrain_dir: str | Path | None, overrides: dict[str, Any]
) -> tuple[torch.nn.Module, DetectorConfig]:
    """Build the detector for fine-tuning (one foreground class) from initialisation ``name``.

    The detector config is the loaded product's (the warm-up's for scratch when a
    pretrain folder is given), with ``overrides`` on top.
    """
    from cupre.models.detector import build_detector

    init = get_method(name)
    files = product_files(name, pretrain_dir)
    ckpts = {p: load_model_file(f) for p, f in files.items()}
    source = ckpts.get(init.model) or ckpts.get(init.backbone)
    warmup = None if pretrain_dir is None else Path(pretrain_dir) / PRODUCTS["warmup"].file
    if source is None and warmup is not None and warmup.is_file():
        source = load_model_file(warmup)
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
