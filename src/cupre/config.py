"""Typed configs. Unknown or wrongly typed keys fail with the valid keys listed.

Each config is a frozen-free dataclass that can be built from a plain dict (YAML):
``DetectorConfig.from_dict({...})``. Nested configs are dataclasses too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cupre.errors import CupreError

T = TypeVar("T", bound="ConfigBase")


class ConfigBase:
    """Mixin: strict construction from dicts, and back."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "", base: T | None = None) -> T:
        """Build from a mapping; keys not given keep the values of ``base`` (or the
        defaults), so a partial nested mapping overrides only what it names."""
        data = dict(data or {})
        base = cls() if base is None else base
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        where = where or cls.__name__
        if unknown:
            raise CupreError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
            )
        kwargs = {}
        for name, value in data.items():
            hint = hints[name]
            if isinstance(hint, type) and issubclass(hint, ConfigBase) and isinstance(value, dict):
                kwargs[name] = hint.from_dict(value, where=f"{where}.{name}", base=getattr(base, name))
            else:
                kwargs[name] = _coerce(hint, value, f"{where}.{name}")
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise CupreError(f"{where}: expected a mapping, got {value!r}")
        return hint.from_dict(value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except CupreError as exc:
                errors.append(str(exc))
        raise CupreError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise CupreError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CupreError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise CupreError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        inner = args[0] if args else Any
        seq = [_coerce(inner, v, where) for v in value]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise CupreError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise CupreError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise CupreError(f"{where}: expected int, got {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CupreError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CupreError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CupreError(f"{path}: expected a mapping at the top level")
    return data


@dataclass
class DetectorConfig(ConfigBase):
    """Mask R-CNN / Cascade Mask R-CNN: backbone (timm) + neck (FPN) + head (RPN + RoI).

    Defaults suit crowded cell images: small anchors, many proposals, up to 2,000
    detections per image.

    ``object_size`` is the one object-scale rule (:mod:`cupre.scale`): every
    image is rescaled so that its typical object (median box side) measures
    ``object_size`` pixels, in fine-tuning (from the labels), in evaluation and in
    prediction (estimated by the model itself, or given by the user). ``None`` feeds
    images at native pixels everywhere (the COCO stage).
    """

    arch: typing.Literal["maskrcnn", "cascade"] = "maskrcnn"
    backbone: str = "resnet50"  # any timm ResNet/ResNeSt: resnet18, resnet50, resnest14d, resnest50d, resnest200e
    norm: typing.Literal["gn", "frozen_bn", "bn", "syncbn"] = "gn"
    num_classes: int = 1  # foreground classes (background excluded)
    fpn_channels: int = 256
    object_size: float | None = None  # typical object diameter (px) the model works at; None: native pixels
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)  # one size per FPN level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 3000
    rpn_post_nms_top_n_test: int = 2000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.01
    box_nms_thresh: float = 0.5
    detections_per_img: int = 2000
    cascade_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    mask_threshold: float = 0.5


@dataclass
class OptimConfig(ConfigBase):
    """One training stage: optimiser, schedule and batches (iteration-based)."""

    iterations: int = 1000
    batch_size: int = 4
    optimizer: typing.Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = 100  # linear warm-up of the learning rate
    schedule: typing.Literal["cosine", "step", "constant"] = "cosine"
    lr_steps: tuple[float, ...] = (0.75, 0.9)  # "step" schedule: fractions of iterations, x0.1 each
    grad_clip: float = 10.0  # max gradient norm; 0 disables
    crop_size: int | None = 512  # random crop for training (None: whole images)
    scale_jitter: float = 1.0  # training rescale factor drawn log-uniformly in [1/j, j] (1: none)


@dataclass
class MocoConfig(ConfigBase):
    """MoCo v2 on the backbone (He et al. 2020; Chen et al. 2020)."""

    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            iterations=1000, batch_size=32, lr=0.03, weight_decay=1e-4, warmup_iterations=50, crop_size=224
        )
    )
    dim: int = 128
    hidden_dim: int = 2048
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    crop_scale: tuple[float, float] = (0.2, 1.0)


@dataclass
class L2SPConfig(ConfigBase):
    """Decoupled L2-SP (:class:`cupre.losses.l2sp.L2SP`): after each optimiser step
    ``w <- w - lr * weight * (alpha*(w - w0) + (1 - alpha)*w)`` on the named parts.

    ``lr * weight * alpha`` is the fraction of the distance to ``w0`` removed per step.
    """

    alpha: float = 0.99  # |w| >> |w - w0|: at 0.5 the plain-L2 half would act as strong weight decay
    weight: float = 1.0  # with SGD at lr 0.02: 2% of the distance to w0 per step; AdamW needs ~100x more
    parts: tuple[str, ...] = ("backbone",)  # fine-tuning (cupre++): the paper's Eq. 7 regularises the backbone


@dataclass
class Amt2Config(ConfigBase):
    """Alternating multi-task training: K rounds of (MoCo on cells, COCO subset k with L2-SP)."""

    rounds: int = 10
    moco: MocoConfig = field(default_factory=MocoConfig)
    coco: OptimConfig = field(default_factory=lambda: OptimConfig(iterations=1000))
    l2sp: L2SPConfig = field(default_factory=L2SPConfig)
    freeze_backbone: bool = False  # freeze the backbone during the COCO step instead of L2-SP


@dataclass
class PretrainConfig(ConfigBase):
    """``cupre pretrain``: COCO warm-up, then AMT2 (plus optional baselines/ablations)."""

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    coco: list[str] = field(default_factory=list)  # COCO-format datasets (class-aware)
    unlabeled: list[str] = field(default_factory=list)  # cell image folders / datasets
    warmup: OptimConfig = field(default_factory=lambda: OptimConfig(iterations=4000))
    amt2: Amt2Config = field(default_factory=Amt2Config)
    cells_moco: bool = False  # also train the Cells-MoCo backbone (MoCo from scratch; --init cells-moco, coco++)
    nol2sp: bool = False  # also run the CUPre-without-L2-SP ablation
    coco_baseline: bool = False  # also run the warm-up plus AMT2's COCO steps without MoCo (--init coco)
    exclude: list[str] = field(default_factory=list)  # image files kept out of MoCo (held-out val/test images)
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2
    checkpoint_every: int = 200


@dataclass
class FinetuneConfig(ConfigBase):
    """``cupre finetune``: few-shot fine-tuning of the whole model from a named initialisation."""

    init: typing.Literal["scratch", "coco", "cells-moco", "coco++", "cupre", "cupre-nol2sp", "cupre++"] = "cupre"
    pretrain_dir: str | None = None  # the pretrain run folder (all inits but scratch)
    detector: dict[str, Any] = field(default_factory=dict)  # DetectorConfig keys overriding the init's
    train: str = ""  # dataset (any supported format)
    split: str | None = None  # split JSON from `cupre split` (None: the whole train set)
    fraction: float | None = None  # or: make the split here
    val: str | None = None
    val_split: str | None = None  # split JSON selecting the validation images of `val`
    test: str | None = None  # scored at every evaluation too (never used to choose anything)
    test_split: str | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(iterations=2000))
    l2sp: L2SPConfig = field(default_factory=L2SPConfig)  # cupre++
    eval_every: int = 500
    select_by: typing.Literal["segm_AP", "bbox_AP"] = "segm_AP"  # validation figure that picks the kept model
    eval_batch_size: int = 2
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2
    checkpoint_every: int = 200
