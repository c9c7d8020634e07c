"""Typed configs, validated by pydantic: unknown keys and wrong types fail with one line
that names the key and the file (and, for an unknown key, the valid ones).

Each config is a pydantic model built from a plain mapping (YAML) with
``DetectorConfig.from_dict({...}, where="file.yaml")``; keys not given keep the
defaults (or a ``base``), nested mappings override only what they name.
"""

from __future__ import annotations

import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from cupre.errors import CupreError
from cupre.methods import METHOD_NAMES

T = TypeVar("T", bound="ConfigBase")
# YAML gives lists; tuples of numbers are accepted from lists, every scalar is strict.
IntTuple = Annotated[tuple[int, ...], Strict(False)]
FloatTuple = Annotated[tuple[float, ...], Strict(False)]
StrTuple = Annotated[tuple[str, ...], Strict(False)]
FloatPair = Annotated[tuple[float, float], Strict(False)]
# Numbers that would make a run meaningless are refused before anything runs.
Count = Annotated[int, Field(ge=1)]  # iterations, batch sizes, rounds, intervals, sizes
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
# Physical bounds: a config (or a model file's metadata) cannot ask for unbounded work or memory.
Channels = Annotated[int, Field(ge=1, le=4096)]  # FPN, MoCo head widths
Detections = Annotated[int, Field(ge=1, le=100_000)]  # proposals, sampled RoIs, detections per image
Iterations = Annotated[int, Field(ge=1, le=100_000_000)]
BatchSize = Annotated[int, Field(ge=1, le=4096)]
Pixels = Annotated[int, Field(ge=1, le=65_536)]  # crop sizes
LearningRate = Annotated[float, Field(gt=0, le=10)]
InitName = typing.Literal[METHOD_NAMES]  # type: ignore[valid-type]  # the paper's methods (cupre.methods)
# bf16 autocast or fp32; auto: bf16 where the GPU or CPU computes it natively (cupre.devices)
Precision = typing.Literal["auto", "bf16", "fp32"]


class ConfigBase(BaseModel):
    """Strict construction from mappings, and back to plain types."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "", base: T | None = None) -> T:
        """Build from a mapping; keys not given keep the values of ``base`` (or the
        defaults), so a partial nested mapping overrides only what it names."""
        where = where or cls.__name__
        if data is not None and not isinstance(data, dict):
            raise CupreError(cut(f"{where}: expected a mapping, got {short_repr(data)}"))
        start = (base if base is not None else cls()).to_dict()
        try:
            return cls.model_validate(_merge(start, dict(data or {})))
        except ValidationError as exc:
            raise CupreError(_one_line(cls, exc, where)) from None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self.model_dump())

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` (validated like a config file's values)."""
        return type(self).from_dict(changes, where=type(self).__name__, base=self)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and base.get(key):
            out[key] = _merge(base[key], value)
        elif isinstance(value, ConfigBase):
            out[key] = value.to_dict()
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config class found by walking ``loc`` (field names and list indices) from ``cls``."""
    model: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
        for arg in (typing.get_args(model) or ()):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _one_line(cls: type[BaseModel], exc: ValidationError, where: str) -> str:
    """The first problem of ``exc`` as one line of at most :data:`LINE` characters, but
    for an unknown key's line, whose list of the valid keys (the schema's, not the
    user's) is given whole."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    if first["type"] == "extra_forbidden":
        parent = loc[:-1]
        unknown = sorted(cut(str(e["loc"][-1]), 40) for e in errors
                         if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent)
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        model = _model_at(cls, parent)
        valid = ", ".join(sorted(model.model_fields)) if model is not None else "?"
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parent)
        return f"{cut(where + at)}: unknown key(s) {', '.join(unknown[:4])}{more}; valid keys: {valid}"
    if first["type"] == "value_error":  # a rule of cupre's own, already a sentence
        return cut(f"{where}{dotted}: {first.get('ctx', {}).get('error', first['msg'])}")
    if first["type"] == "literal_error":
        return cut(f"{where}{dotted}: {short_repr(first['input'])} is not one of {first['ctx']['expected']}")
    return cut(f"{where}{dotted}: {first['msg'].lower()}, got {short_repr(first['input'])}")


LINE = 280  # characters of an error's message: with "cupre: error: " before it, a line under 300
_REPR = reprlib.Repr()  # its limits as attributes: Python 3.11 takes no keyword arguments
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring = _REPR.maxother = 60


def short_repr(value: Any) -> str:
    """``repr`` of a value a user typed, at most a few dozen characters however large the
    value: a YAML of 1 KB whose aliases repeat aliases expands to hundreds of MB, which
    a plain ``repr`` would build in memory before the line could be printed."""
    return _REPR.repr(value)


def cut(line: str, limit: int = LINE) -> str:
    """``line`` cut to ``limit`` characters, an ellipsis saying it was (a path or a value
    the user gave can be of any length)."""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CupreError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CupreError(f"{path}: not a YAML text file (not UTF-8 text)") from None
    except RecursionError:
        raise CupreError(f"{path}: not a config (nested too deeply)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise CupreError(f"{path}: not valid YAML ({where}{problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CupreError(f"{path}: expected a mapping at the top level")
    if expanded_size(data, limit=MAX_VALUES) > MAX_VALUES:
        raise CupreError(f"{path}: not a config (its aliases expand to more than {MAX_VALUES:,} values)")
    return data


MAX_VALUES = 1_000_000  # values in a config, aliases expanded; real configs hold hundreds


def expanded_size(data: Any, *, limit: int) -> int:
    """How many values ``data`` holds when every YAML alias is counted where it is used,
    counted up to just past ``limit`` (so the count takes at most ``limit`` steps).

    ``yaml.safe_load`` shares one object per anchor, so an alias bomb loads small; what
    walks it later (validation, printing, writing the resolved config) walks it whole.
    """
    count, stack = 0, [data]
    while stack and count <= limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.values())
            stack.extend(value.keys())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return count


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
    num_classes: Annotated[int, Field(ge=1, le=10_000)] = 1  # foreground classes (background excluded)
    fpn_channels: Channels = 256
    object_size: Annotated[float, Field(gt=0, le=4096)] | None = None  # typical object diameter (px) the model
    # works at; None: native pixels
    anchor_sizes: IntTuple | typing.Literal["auto"] = (8, 16, 32, 64, 128)  # one size per FPN level P2..P6, or
    # auto: from object_size (0.8 x object_size on P2, doubling per level; cupre.models.anchors)
    anchors_per_octave: Annotated[int, Field(ge=1, le=4)] = 1  # sizes per level, 2^(1/n) apart
    aspect_ratios: FloatTuple = (0.5, 1.0, 2.0)
    invert_bright: bool = False  # an image with a bright background is inverted before the backbone, in
    # training and inference alike (cupre.models.intensity)
    rpn_pre_nms_top_n_train: Detections = 2000
    rpn_post_nms_top_n_train: Detections = 2000
    rpn_pre_nms_top_n_test: Detections = 3000
    rpn_post_nms_top_n_test: Detections = 2000
    rpn_batch_size_per_image: Detections = 256
    box_batch_size_per_image: Detections = 512
    box_score_thresh: Fraction = 0.01
    box_nms_thresh: Fraction = 0.5
    detections_per_img: Annotated[int, Field(ge=1, le=10_000)] = 2000  # LIVECell counts up to 2,000
    cascade_ious: FloatTuple = (0.5, 0.6, 0.7)
    mask_threshold: Fraction = 0.5


class OptimConfig(ConfigBase):
    """One training stage: optimiser, schedule and batches (iteration-based)."""

    iterations: Iterations = 1000
    batch_size: BatchSize = 4
    optimizer: typing.Literal["sgd", "adamw"] = "sgd"
    lr: LearningRate = 0.02
    momentum: Fraction = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    warmup_iterations: NonNegative = 100  # linear warm-up of the learning rate
    schedule: typing.Literal["cosine", "step", "constant"] = "cosine"
    lr_steps: FloatTuple = (0.75, 0.9)  # "step" schedule: fractions of iterations, x0.1 each
    grad_clip: NonNegativeFloat = 10.0  # max gradient norm; 0 disables
    crop_size: Pixels | None = 512  # random crop for training (None: whole images)
    scale_jitter: Annotated[float, Field(ge=1)] = 1.0  # training rescale factor drawn log-uniformly in [1/j, j] (1: none)


class MocoConfig(ConfigBase):
    """MoCo v2 on the backbone (He et al. 2020; Chen et al. 2020)."""

    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(
            iterations=1000, batch_size=32, lr=0.03, weight_decay=1e-4, warmup_iterations=50, crop_size=224
        )
    )
    dim: Channels = 128
    hidden_dim: Annotated[int, Field(ge=1, le=65_536)] = 2048
    queue_size: Annotated[int, Field(ge=1, le=10_000_000)] = 65536
    momentum: Fraction = 0.999
    momentum_schedule: typing.Literal["constant", "cosine"] = "constant"  # cosine: from `momentum` to 1 (BYOL)
    objective: typing.Literal["moco", "densecl"] = "moco"  # densecl: MoCo's global loss mixed with a dense one
    dense_levels: IntTuple = (-1,)  # densecl: backbone maps with a dense head (-1: C5, -2: C4 ...)
    dense_weight: Fraction = 0.5  # densecl: (1 - w) * global + w * dense (Wang et al. 2021)
    temperature: Positive = 0.2
    crop_scale: FloatPair = (0.2, 1.0)  # random-resized views: area fraction of the image
    views: typing.Literal["random-resized", "object-scale"] = "random-resized"  # object-scale: nuclei at the
    # detector's object_size in both views (each image's size estimated once by a blob detector)
    view_jitter: Annotated[float, Field(ge=1)] = 1.5  # object-scale views: log-uniform scale in [1/j, j]


class L2SPConfig(ConfigBase):
    """Decoupled L2-SP (:class:`cupre.losses.l2sp.L2SP`): after each optimiser step
    ``w <- w - lr * weight * (alpha*(w - w0) + (1 - alpha)*w)`` on the named parts.

    ``lr * weight * alpha`` is the fraction of the distance to ``w0`` removed per step.
    """

    alpha: Fraction = 0.99  # |w| >> |w - w0|: at 0.5 the plain-L2 half would act as strong weight decay
    weight: NonNegativeFloat = 1.0  # with SGD at lr 0.02: 2% of the distance to w0 per step; AdamW needs ~100x more
    parts: StrTuple = ("backbone",)  # fine-tuning (cupre++): the paper's Eq. 7 regularises the backbone


class Amt2Config(ConfigBase):
    """Alternating multi-task training: K rounds of (MoCo on cells, COCO subset k with L2-SP)."""

    rounds: Count = 10
    moco: MocoConfig = Field(default_factory=MocoConfig)
    coco: OptimConfig = Field(default_factory=lambda: OptimConfig(iterations=1000))
    l2sp: L2SPConfig = Field(default_factory=L2SPConfig)  # on the backbone, as the paper's step (b): `parts` is
    # fine-tuning's setting (cupre++), refused here rather than ignored
    freeze_backbone: bool = False  # freeze the backbone during the COCO step instead of L2-SP

    @field_validator("l2sp")
    @classmethod
    def _backbone_only(cls, value: L2SPConfig) -> L2SPConfig:
        if tuple(value.parts) != ("backbone",):
            raise ValueError("AMT2's L2-SP regularises the backbone (w0: the backbone after MoCo); "
                             "l2sp.parts is a fine-tuning setting")
        return value


class PretrainConfig(ConfigBase):
    """``cupre pretrain``: COCO warm-up, then AMT2 (plus optional baselines/ablations)."""

    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    coco: list[str] = Field(default_factory=list)  # COCO-format datasets (class-aware)
    unlabeled: list[str] = Field(default_factory=list)  # cell image folders / datasets
    warmup: OptimConfig = Field(default_factory=lambda: OptimConfig(iterations=4000))
    # the COCO stage: "warmup" trains it here from scratch; "imagenet-warmup" trains it from timm's
    # ImageNet weights of the backbone (norm frozen_bn or bn); "torchvision-coco" takes torchvision's
    # COCO-trained Mask R-CNN as the paper takes the released model (detector resnet50 / frozen_bn /
    # fpn_channels 256). Weights: the file start_weights, else the local torch / Hugging Face cache.
    start: typing.Literal["warmup", "imagenet-warmup", "torchvision-coco"] = "warmup"
    start_weights: str | None = None
    download_weights: bool = False  # fetch missing start weights through torchvision / Hugging Face (needs network)
    amt2: Amt2Config = Field(default_factory=Amt2Config)
    cells_moco: bool = False  # also train the Cells-MoCo backbone (MoCo from scratch; --init cells-moco, coco++)
    nol2sp: bool = False  # also run the CUPre-without-L2-SP ablation
    coco_baseline: bool = False  # also run the warm-up plus AMT2's COCO steps without MoCo (--init coco)
    exclude: list[str] = Field(default_factory=list)  # image files kept out of MoCo (held-out val/test images)
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"
    num_workers: NonNegative = 2
    checkpoint_every: Count = 200
    keep_checkpoints: bool = False  # keep each part's state.pt (weights + optimiser) once its model is written


class SelfTrainConfig(ConfigBase):
    """Self-training after fine-tuning (:mod:`cupre.experiments.selftrain`): the kept model
    pseudo-labels the unlabeled images (:mod:`cupre.train.pseudo`) and a student, from the
    same initialisation, trains on the labels plus them; a round is kept only when
    validation improves (without validation: the preset's rounds, unchecked)."""

    rounds: NonNegative = 1  # 0: no self-training
    keep_score: Fraction = 0.7  # kept: the mean score over the views reaches this ...
    agree_iou: Fraction = 0.5  # ... and every flipped view has a mask overlapping it this much
    uncertain_score: Fraction = 0.3  # not kept but scoring this: ignored by the losses (neither object nor background)
    views: StrTuple = ("hflip", "vflip")  # test-time augmentations the masks must agree across
    pseudo_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # share of pseudo-labelled images among the samples
    max_images: Annotated[int, Field(ge=1)] | None = None  # pseudo-label at most this many (seeded choice); None: all
    strong: bool = True  # strong photometric augmentation on the pseudo-labelled images
    transductive: bool = False  # test images may be pseudo-labelled (never their labels): a user's images to segment
    # chosen on validation (docs/benchmarks.md): a student from the teacher, taught by the pseudo-labelled
    # images' objects only, +2.1 AP_bbox; STAC's (from the initialisation, their background learned) -3.3;
    # the same iterations on the labels alone: +5.3, so self-training is opt-in
    student_from: typing.Literal["init", "teacher"] = "teacher"  # the student starts from the teacher, or as it did
    background: typing.Literal["learned", "ignored"] = "ignored"  # pseudo-labelled crops teach only their objects
    without_validation: bool = False  # self-train even where no validation set can check a round


class FinetuneConfig(ConfigBase):
    """``cupre finetune``: few-shot fine-tuning of the whole model from a named initialisation."""

    init: InitName = "cupre"
    pretrain_dir: str | None = None  # the pretrain run folder (all inits but scratch)
    from_model: str | None = None  # or: continue a trained cell model (model file, run folder or shipped name: nuclei)
    detector: dict[str, Any] = Field(default_factory=dict)  # DetectorConfig keys overriding the init's
    train: str = ""  # dataset (any supported format)
    split: str | None = None  # split JSON from `cupre split` (None: the whole train set)
    fraction: Annotated[float, Field(gt=0, le=1)] | None = None  # or: make the split here
    val: str | None = None
    val_split: str | None = None  # split JSON selecting the validation images of `val`
    test: str | None = None  # scored once, with the validation-chosen model (never used to choose)
    test_split: str | None = None
    # defaults sized for a laptop CPU and a handful of images (the CPU recipe, configs/bbbc038-cpu.yaml):
    # about 8 minutes on 2 cores in bf16
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(
        iterations=600, batch_size=2, optimizer="adamw", lr=5e-4, warmup_iterations=40, crop_size=256,
        scale_jitter=1.25))
    l2sp: L2SPConfig = Field(default_factory=lambda: L2SPConfig(weight=100.0))  # cupre++ (AdamW: ~100x SGD's)
    balance_kinds: bool = False  # each imaging kind (cell_type) of the labels seen equally often
    augment: typing.Literal["basic", "acquisition"] = "basic"  # acquisition: grey<->colour, inversion, stain, hue,
    # gamma, blur, noise and median padding as well (cupre.data.transforms.AcquisitionJitter)
    eval_every: Count = 300
    select_by: typing.Literal["segm_AP", "bbox_AP"] = "segm_AP"  # validation figure that picks the kept model
    eval_batch_size: Count = 2
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"
    num_workers: NonNegative = 0  # data-loader processes (0: in the training process; decoded images are cached)
    checkpoint_every: Count = 50  # also the usable model of a run without validation
    keep_checkpoints: bool = False  # keep state.pt (weights + optimiser) once the run has finished
    unlabeled: list[str] = Field(default_factory=list)  # images to self-train on (`self_train`); none: no self-training
    self_train: SelfTrainConfig = Field(default_factory=SelfTrainConfig)
    pseudo_labels: str | None = None  # a student's pseudo-labels (COCO JSON, uncertain objects as crowd), mixed in
