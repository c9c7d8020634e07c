"""The experiment config: shared pre-training, the labeled datasets, the grid and the report.

Read with :func:`load_experiment`: relative paths resolve against the file's folder, keys
the runner sets itself are refused, and the grid is checked before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from cupre.config import (
    ConfigBase,
    Count,
    FinetuneConfig,
    FloatTuple,
    Fraction,
    NonNegative,
    Precision,
    PretrainConfig,
    load_yaml,
)
from cupre.errors import CupreError
from cupre.inference.options import FALLBACK_SCORE_THRESHOLD
from cupre.methods import METHOD_NAMES, PRODUCTS, SELF_TRAIN, base_method
from cupre.shipped import SHIPPED

PART_NAMES = ("train", "val", "test")


RUNNER_FINETUNE_KEYS = ("init", "pretrain_dir", "train", "split", "fraction", "val", "val_split", "seed",
                        "device", "precision", "eval_every", "select_by")


RUNNER_PRETRAIN_KEYS = ("device", "precision", *(p.setting for p in PRODUCTS.values() if p.setting), "exclude")


class DataConfig(ConfigBase):
    """One labeled target dataset, its seeded partition and (optionally) separate val/test sets."""

    name: str = ""  # label in results.csv and the table (default: the file or folder name)
    labeled: str = ""  # annotated dataset, any supported format (few-shot splits come from its train part)
    partition: FloatTuple = (0.8, 0.2)  # parts train, val[, test], stratified by cell type
    partition_seed: int = 0
    val: str | None = None  # a separate validation dataset (then `partition` has no val part)
    test: str | None = None  # a separate test dataset (then `partition` has no test part)
    fractions: list[float] | None = None  # label fractions for this dataset (default: the experiment's)
    test_groups: list[str] = Field(default_factory=list)  # whole acquisitions as the test part ("KIND-HxW",
    # e.g. "fluo_gray-520x696"): labels never show them; `partition` then splits the rest into train, val
    transductive: bool = False  # the test part's images (never their labels) join pre-training's unlabeled images


class SyntheticConfig(ConfigBase):
    """A synthetic dataset written once into ``OUT/data/<kind>`` (0 images: none)."""

    images: NonNegative = 0
    size: Count = 256
    seed: int = 0


class OverlayConfig(ConfigBase):
    """Fig. 8: predictions next to the ground truth on a few test images (validation images without a test part)."""

    images: NonNegative = 4
    methods: list[str] = Field(default_factory=lambda: ["scratch", "coco", "cupre"])
    score_threshold: Fraction = FALLBACK_SCORE_THRESHOLD  # drawn: scoring above it
    panel_size: Count = 480  # px, each panel's side: a 256 px image shown about twice its size


class ExperimentConfig(ConfigBase):
    """``cupre experiment``: shared pre-training, then the fine-tuning grid."""

    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    synthetic_objects: SyntheticConfig = Field(default_factory=SyntheticConfig)  # appended to the COCO stage
    synthetic_cells: SyntheticConfig = Field(default_factory=SyntheticConfig)  # OUT/data/cells, for "{out}/..." paths
    data: list[DataConfig] = Field(default_factory=list)
    fractions: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = Field(default_factory=lambda: list(METHOD_NAMES))  # initialisations, each optionally `+st`
    shipped: list[str] = Field(default_factory=list)  # models shipped with cupre (cupre.shipped), scored as they
    # are on validation and test before anything trains: the table's first rows (skipped where not installed)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)  # shared by every cell
    eval_every: Count = 500  # validation every this many fine-tuning iterations (and at the end)
    select_by: Literal["segm_AP", "bbox_AP"] = "segm_AP"  # validation figure that picks each seed's iteration
    device: str = "auto"
    precision: Precision = "auto"  # bf16 or fp32 for every training and evaluation of the grid
    parallel: Count = 1  # fine-tuning cells run at once, each in its own process on a share of the threads
    pretrain_per_seed: bool = False  # pre-train once per seed (OUT/pretrain/s<seed>): the spread includes pre-training
    overlays: OverlayConfig = Field(default_factory=OverlayConfig)


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read an experiment YAML; relative paths in it resolve against its folder (a
    symbolic link's: against its target's).

    Raises:
        CupreError: unknown keys (the valid ones listed), keys the runner sets itself,
            or an inconsistent grid.
    """
    path = Path(path)
    raw = load_yaml(path)
    for section, reserved in (("finetune", RUNNER_FINETUNE_KEYS), ("pretrain", RUNNER_PRETRAIN_KEYS)):
        given = raw.get(section) or {}
        clash = sorted(set(given) & set(reserved)) if isinstance(given, dict) else []
        if clash:
            raise CupreError(f"{path}: {section}.{clash[0]} is set by the experiment runner (per cell or from "
                             f"`methods`); remove it (top-level keys: eval_every, device, precision, parallel)")
    if isinstance(raw.get("data"), dict):
        raw["data"] = [raw["data"]]
    cfg = ExperimentConfig.from_dict(raw, where=str(path))
    resolve_paths(cfg, path.resolve().parent)  # a linked preset (configs/demo.yaml) reads beside its target
    validate(cfg, str(path))
    return cfg


OUT = "{out}"  # stands for the experiment folder in dataset paths (synthetic data lives there)


def _abs(base: Path, value: str) -> str:
    if value.startswith(OUT):
        return value
    return os.path.abspath(base / os.path.expanduser(value))


def resolve_paths(cfg: ExperimentConfig, base: Path) -> None:
    """Make every dataset path absolute, relative ones taken from ``base`` (``{out}/...``
    paths stay as they are until :func:`in_folder` names the experiment folder)."""
    cfg.pretrain.coco = [_abs(base, p) for p in cfg.pretrain.coco]
    cfg.pretrain.unlabeled = [_abs(base, p) for p in cfg.pretrain.unlabeled]
    for d in cfg.data:
        d.labeled = _abs(base, d.labeled) if d.labeled else d.labeled
        d.val = _abs(base, d.val) if d.val else None
        d.test = _abs(base, d.test) if d.test else None


def in_folder(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """A copy of ``cfg`` whose ``{out}/...`` dataset paths point into ``out``."""
    new = ExperimentConfig.from_dict(cfg.to_dict())

    def sub(value: str | None) -> str | None:
        return str(out.resolve()) + value[len(OUT):] if value and value.startswith(OUT) else value

    new.pretrain.coco = [sub(p) for p in new.pretrain.coco]
    new.pretrain.unlabeled = [sub(p) for p in new.pretrain.unlabeled]
    for d in new.data:
        d.labeled, d.val, d.test = sub(d.labeled), sub(d.val), sub(d.test)
    return new


def validate(cfg: ExperimentConfig, where: str) -> None:
    """Check that the grid is well formed (one line per problem, raised as CupreError)."""
    def bad(text: str) -> CupreError:
        return CupreError(f"{where}: {text}")

    if not cfg.data:
        raise bad("no labeled dataset given (key `data` with `labeled: PATH`)")
    unknown = [m for m in cfg.methods if base_method(m) not in METHOD_NAMES]
    if unknown:
        raise bad(f"methods: {unknown[0]!r} is not one of {', '.join(METHOD_NAMES)} (each optionally with "
                  f"{SELF_TRAIN}: self-training after it)")
    unknown = [m for m in cfg.shipped if m not in SHIPPED]
    if unknown or len(set(cfg.shipped)) != len(cfg.shipped):
        raise bad(f"shipped: {(unknown or cfg.shipped)[0]!r}: list distinct models shipped with cupre "
                  f"({', '.join(SHIPPED)})")
    if not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
        raise bad(f"`methods` must list distinct initialisations from {', '.join(METHOD_NAMES)}")
    if not cfg.seeds or any(s < 0 for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise bad("`seeds` must list distinct non-negative integers")
    names = [dataset_name(d) for d in cfg.data]
    if len(set(names)) != len(names):
        raise bad(f"two datasets share a name ({', '.join(names)}); give each a `name`")
    for d, name in zip(cfg.data, names):
        fractions = d.fractions if d.fractions is not None else cfg.fractions
        if not fractions or any(not 0 < f <= 1 for f in fractions):
            raise bad(f"data {name}: fractions must be in (0, 1], got {fractions}")
        if not d.labeled:
            raise bad(f"data {name}: `labeled` (the annotated dataset) is missing")
        if not 1 <= len(d.partition) <= 3:
            raise bad(f"data {name}: `partition` needs 1 to 3 fractions (train, val, test)")
        if (len(d.partition) >= 2) == (d.val is not None):
            raise bad(f"data {name}: give a validation set either as a partition part or as `val`, exactly once")
        if len(d.partition) == 3 and d.test is not None:
            raise bad(f"data {name}: `test` given twice (partition part and `test`)")
        if d.test_groups and (len(d.partition) == 3 or d.test is not None):
            raise bad(f"data {name}: `test_groups` is the test part; give `partition` as train, val only and no `test`")
        if d.transductive and not (d.test_groups or d.test or len(d.partition) == 3):
            raise bad(f"data {name}: `transductive` needs a test part")


def check_inputs_exist(cfg: ExperimentConfig, *, pretraining: bool) -> None:
    """Every dataset path the run will read exists (``{out}/...`` paths are made by the
    run itself), so that a typo is found before anything is written or trained."""
    paths = [("data.labeled", d.labeled) for d in cfg.data]
    paths += [("data.val", d.val) for d in cfg.data if d.val] + [("data.test", d.test) for d in cfg.data if d.test]
    if pretraining:
        paths += [("pretrain.coco", p) for p in cfg.pretrain.coco]
        paths += [("pretrain.unlabeled", p) for p in cfg.pretrain.unlabeled]
    for key, path in paths:
        if not path.startswith(OUT) and not Path(path).exists():
            raise CupreError(f"{key}: {path} not found")


def dataset_name(d: DataConfig) -> str:
    """``name``, else the file or folder name (a generic ``annotations.json``: its folder's)."""
    path = Path(d.labeled)
    return d.name or (path.parent.name if path.stem == "annotations" else path.stem) or "data"
