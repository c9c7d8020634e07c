"""A grid of initialisations x label fractions x seeds on shared pre-training (Table II).

``cupre experiment CONFIG -o OUT`` pre-trains once, writes the partition and the few-shot
splits once, fine-tunes every cell (method x fraction x seed) with the same schedule,
evaluates each on validation (and test) under the LIVECell protocol, and writes::

    OUT/config.yaml                          the resolved experiment config
    OUT/data/objects/                        synthetic objects padding COCO (synthetic_objects.images > 0)
    OUT/pretrain/                            one `cupre pretrain` run shared by every cell
    OUT/splits/{train,val,test}.json         the seeded partition of the labeled dataset
    OUT/splits/f<fraction>-s<seed>.json      the few-shot split of the train part
    OUT/cells/<method>/f<fraction>/s<seed>/  one `cupre finetune` run (val and test scored as it goes)
    OUT/results.csv                          every evaluation row, rebuilt from the cells
    OUT/table2.md                            Table II (iteration chosen on validation only)
    OUT/figures/*.png                        Fig. 3, 4, 6 and 8 of the paper

With several datasets under ``data:``, splits and cells get a ``<dataset>/`` level. Running
the same command again continues: finished cells are skipped, an interrupted cell resumes
from its ``state.pt``, pre-training resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cupre.config import ConfigBase, FinetuneConfig, PretrainConfig, load_yaml
from cupre.errors import CupreError
from cupre.train.inits import INITS, pretrain_done
from cupre.train.run import Run, write_text_atomic

Method = Literal["scratch", "coco", "cells-moco", "coco++", "cupre", "cupre-nol2sp", "cupre++"]
PART_NAMES = ("train", "val", "test")
RUNNER_FINETUNE_KEYS = ("init", "pretrain_dir", "train", "split", "fraction", "val", "val_split", "seed",
                        "device", "eval_every", "select_by")
RUNNER_PRETRAIN_KEYS = ("device", "cells_moco", "nol2sp", "coco_baseline", "exclude")
IGNORED_IN_COMPARISON = ("device", "num_workers", "checkpoint_every", "eval_batch_size", "pretrain_dir",
                         "train", "split", "val", "val_split")


@dataclass
class DataConfig(ConfigBase):
    """One labeled target dataset, its seeded partition and (optionally) separate val/test sets."""

    name: str = ""  # label in results.csv and the table (default: the file or folder name)
    labeled: str = ""  # annotated dataset, any supported format (few-shot splits come from its train part)
    partition: tuple[float, ...] = (0.8, 0.2)  # parts train, val[, test], stratified by cell type
    partition_seed: int = 0
    val: str | None = None  # a separate validation dataset (then `partition` has no val part)
    test: str | None = None  # a separate test dataset (then `partition` has no test part)
    fractions: list[float] | None = None  # label fractions for this dataset (default: the experiment's)


@dataclass
class SyntheticObjectsConfig(ConfigBase):
    """Synthetic natural-object scenes appended to the COCO stage (0 images: none)."""

    images: int = 0
    size: int = 256
    seed: int = 0


@dataclass
class OverlayConfig(ConfigBase):
    """Fig. 8: predictions next to the ground truth on a few validation images."""

    images: int = 4
    methods: list[str] = field(default_factory=lambda: ["scratch", "coco", "cupre"])
    score_thresh: float = 0.5


@dataclass
class ExperimentConfig(ConfigBase):
    """``cupre experiment``: shared pre-training, then the fine-tuning grid."""

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    synthetic_objects: SyntheticObjectsConfig = field(default_factory=SyntheticObjectsConfig)
    data: list[DataConfig] = field(default_factory=list)
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[Method] = field(default_factory=lambda: list(INITS))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # shared by every cell
    eval_every: int = 500  # validation every this many fine-tuning iterations (and at the end)
    select_by: Literal["segm_AP", "bbox_AP"] = "segm_AP"  # validation figure that picks each seed's iteration
    device: str = "auto"
    overlays: OverlayConfig = field(default_factory=OverlayConfig)


@dataclass
class Target:
    """A labeled dataset made ready for the grid: its split files and folders."""

    name: str
    labeled: str
    fractions: list[float]
    split_dir: Path
    cell_root: Path
    val: str
    val_split: Path | None
    test: str | None
    test_split: Path | None
    held_out: list[str] = field(default_factory=list)  # image files of val and test, kept out of MoCo


@dataclass
class Cell:
    """One fine-tuning run of the grid."""

    target: Target
    method: str
    fraction: float
    seed: int

    @property
    def folder(self) -> Path:
        return self.target.cell_root / self.method / f"f{self.fraction:g}" / f"s{self.seed}"

    @property
    def split_file(self) -> Path:
        return self.target.split_dir / f"f{self.fraction:g}-s{self.seed}.json"

    @property
    def key(self) -> dict[str, Any]:
        return {"dataset": self.target.name, "method": self.method, "fraction": self.fraction, "seed": self.seed}

    @property
    def finished(self) -> bool:
        return (self.folder / "val_metrics.json").is_file() and (self.folder / "model.pt").is_file()


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read an experiment YAML; relative paths in it resolve against its folder.

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
                             f"`methods`); remove it (top-level keys: eval_every, device)")
    if isinstance(raw.get("data"), dict):
        raw["data"] = [raw["data"]]
    cfg = ExperimentConfig.from_dict(raw, where=str(path))
    resolve_paths(cfg, path.parent)
    validate(cfg, str(path))
    return cfg


def _abs(base: Path, value: str) -> str:
    return os.path.abspath(base / os.path.expanduser(value))


def resolve_paths(cfg: ExperimentConfig, base: Path) -> None:
    """Make every dataset path absolute, relative ones taken from ``base``."""
    cfg.pretrain.coco = [_abs(base, p) for p in cfg.pretrain.coco]
    cfg.pretrain.unlabeled = [_abs(base, p) for p in cfg.pretrain.unlabeled]
    for d in cfg.data:
        d.labeled = _abs(base, d.labeled) if d.labeled else d.labeled
        d.val = _abs(base, d.val) if d.val else None
        d.test = _abs(base, d.test) if d.test else None


def validate(cfg: ExperimentConfig, where: str) -> None:
    """Check that the grid is well formed (one line per problem, raised as CupreError)."""
    def bad(text: str) -> CupreError:
        return CupreError(f"{where}: {text}")

    if not cfg.data:
        raise bad("no labeled dataset given (key `data` with `labeled: PATH`)")
    if not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
        raise bad(f"`methods` must list distinct initialisations from {', '.join(INITS)}")
    if not cfg.seeds or any(s < 0 for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise bad("`seeds` must list distinct non-negative integers")
    if cfg.eval_every < 1:
        raise bad("`eval_every` must be >= 1")
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


def dataset_name(d: DataConfig) -> str:
    """``name``, else the file or folder name (a generic ``annotations.json``: its folder's)."""
    path = Path(d.labeled)
    return d.name or (path.parent.name if path.stem == "annotations" else path.stem) or "data"


def pretrain_config(cfg: ExperimentConfig, methods: list[str], out: Path,
                    targets: list[Target]) -> PretrainConfig | None:
    """The shared pre-training for ``methods`` (None when only ``scratch`` is asked).

    The validation and test images of every labeled set are kept out of MoCo.
    """
    if all(m == "scratch" for m in methods):
        return None
    pre = PretrainConfig.from_dict(cfg.pretrain.to_dict(), where="pretrain")
    pre.cells_moco = any(m in methods for m in ("cells-moco", "coco++"))
    pre.nol2sp = "cupre-nol2sp" in methods
    pre.coco_baseline = "coco" in methods
    pre.exclude = sorted({f for t in targets for f in t.held_out})
    pre.device = cfg.device
    if cfg.synthetic_objects.images > 0:
        pre.coco = [*pre.coco, str(out / "data" / "objects" / "annotations.json")]
    return pre


def write_synthetic_objects(cfg: SyntheticObjectsConfig, folder: Path) -> None:
    """Generate the COCO padding once; refuse a folder made with other settings."""
    from cupre.data.synthetic import write_synthetic

    ann = folder / "annotations.json"
    if ann.is_file():
        data = json.loads(ann.read_text())
        made = (len(data["images"]), data["info"].get("size"), data["info"].get("seed"))
        if made != (cfg.images, cfg.size, cfg.seed):
            raise CupreError(f"{folder}: synthetic objects were made with (images, size, seed) = {made}, the "
                             f"config asks {(cfg.images, cfg.size, cfg.seed)}; use another -o")
        return
    print(f"experiment: writing {cfg.images} synthetic object images to {folder}")
    write_synthetic("objects", folder, n_images=cfg.images, size=cfg.size, seed=cfg.seed)


def write_split(path: Path, content: dict, *, write: bool) -> None:
    """Write a split file once; a later run must produce the same image ids."""
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("image_ids") != content["image_ids"]:
            raise CupreError(f"{path}: differs from the split this config gives (other data, fractions or seed?); "
                             "use another -o")
        return
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(content, indent=1))


def prepare_target(cfg: ExperimentConfig, d: DataConfig, out: Path, *, single: bool, write: bool) -> Target:
    """Partition the labeled dataset and draw every few-shot split (files written once)."""
    from cupre.data.formats import open_dataset
    from cupre.data.splits import fewshot_split, partition

    name = dataset_name(d)
    level = () if single else (name,)
    split_dir = out.joinpath("splits", *level)
    records = open_dataset(d.labeled, class_agnostic=True).records
    names = PART_NAMES[: len(d.partition)]
    parts = partition(records, d.partition, seed=d.partition_seed, names=names)
    for part, ids in parts.items():
        write_split(split_dir / f"{part}.json", {"dataset": d.labeled, "part": part, "partition": list(d.partition),
                                                 "seed": d.partition_seed, "image_ids": ids}, write=write)
    train = [r for r in records if r.image_id in set(parts["train"])]
    held_out = [str(r.file) for r in records if r.image_id not in set(parts["train"])]
    for extra in (d.val, d.test):
        if extra:
            held_out += [str(r.file) for r in open_dataset(extra, class_agnostic=True).records]
    fractions = list(d.fractions if d.fractions is not None else cfg.fractions)
    for fraction in fractions:
        for seed in cfg.seeds:
            ids = fewshot_split(train, fraction, seed)
            write_split(split_dir / f"f{fraction:g}-s{seed}.json", {"dataset": d.labeled, "fewshot_of": "train",
                        "fraction": fraction, "seed": seed, "image_ids": ids}, write=write)
    print(f"experiment: {name}: " + ", ".join(f"{p} {len(ids)}" for p, ids in parts.items()) + " images")
    return Target(
        name=name, labeled=d.labeled, fractions=fractions, split_dir=split_dir,
        cell_root=out.joinpath("cells", *level),
        val=d.val or d.labeled, val_split=None if d.val else split_dir / "val.json",
        test=d.test or (d.labeled if "test" in parts else None),
        test_split=split_dir / "test.json" if "test" in parts else None,
        held_out=held_out,
    )


def cell_config(cfg: ExperimentConfig, cell: Cell, pretrain_dir: Path) -> FinetuneConfig:
    """The fine-tuning config of one cell: the shared schedule plus the cell's data and seed."""
    detector = {k: v for k, v in cfg.pretrain.detector.to_dict().items() if k != "num_classes"}
    data = cfg.finetune.to_dict()
    data.update(
        init=cell.method, pretrain_dir=None if cell.method == "scratch" else str(pretrain_dir),
        train=cell.target.labeled, split=str(cell.split_file), fraction=None, val=cell.target.val,
        val_split=str(cell.target.val_split) if cell.target.val_split else None,
        test=cell.target.test, test_split=str(cell.target.test_split) if cell.target.test_split else None,
        seed=cell.seed, select_by=cfg.select_by,
        device=cfg.device, eval_every=cfg.eval_every, detector={**detector, **cfg.finetune.detector},
    )
    return FinetuneConfig.from_dict(data, where=f"cell {cell.folder}")


def check_same_config(cell: Cell, ft: FinetuneConfig) -> None:
    """Refuse to mix a cell trained under another schedule into this grid."""
    saved = cell.folder / "config.yaml"
    if not saved.is_file():
        return
    old = FinetuneConfig.from_dict(load_yaml(saved), where=str(saved)).to_dict()
    new = ft.to_dict()
    diff = sorted(k for k in new if k not in IGNORED_IN_COMPARISON and old.get(k) != new[k])
    if diff:
        raise CupreError(f"{saved}: this cell was run with other settings ({', '.join(diff)}); "
                         "use another -o or delete the cell folder")


def plan_cells(cfg: ExperimentConfig, targets: list[Target], methods: list[str]) -> list[Cell]:
    return [Cell(target=t, method=m, fraction=f, seed=s)
            for t in targets for m in methods for f in t.fractions for s in cfg.seeds]


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, only_methods: list[str] | None = None,
                   dry_run: bool = False) -> str:
    """Run (or continue) the grid into ``out``; returns the Table II markdown.

    Args:
        cfg: a config from :func:`load_experiment` (paths absolute).
        out: the experiment folder.
        only_methods: run only these methods (the table still shows every finished cell).
        dry_run: print the plan and what is already done; write nothing.
    """
    from cupre.experiments.table import collect_results, write_results_csv
    from cupre.train import distributed
    from cupre.train.finetune import run_finetune
    from cupre.train.pretrain import run_pretrain

    out = Path(out)
    methods = list(only_methods or cfg.methods)
    unknown = [m for m in methods if m not in cfg.methods]
    if unknown:
        raise CupreError(f"--only-method {unknown[0]}: not among the config's methods ({', '.join(cfg.methods)})")
    if not dry_run:
        Run(out, tensorboard=False).save_config(cfg.to_dict())
    targets = [prepare_target(cfg, d, out, single=len(cfg.data) == 1, write=not dry_run) for d in cfg.data]
    cells = plan_cells(cfg, targets, methods)
    pre = pretrain_config(cfg, methods, out, targets)
    pre_state = "not needed" if pre is None else "done" if pretrain_done(out / "pretrain", methods) else "to run"
    print(f"experiment: pre-training {pre_state}; {len(cells)} cells, {sum(c.finished for c in cells)} finished")
    if dry_run:
        for c in cells:
            state = "done" if c.finished else "partial" if (c.folder / "state.pt").is_file() else "to run"
            print(f"  {c.folder.relative_to(out)}: {state}")
        return ""
    t0 = time.time()
    if pre is not None and pre_state != "done":
        if cfg.synthetic_objects.images > 0:
            write_synthetic_objects(cfg.synthetic_objects, out / "data" / "objects")
        run_pretrain(pre, out / "pretrain")
        print(f"experiment: pre-training done after {time.time() - t0:.0f} s")
    everything = plan_cells(cfg, targets, list(cfg.methods))  # results.csv covers the whole grid
    for i, cell in enumerate(cells, start=1):
        ft = cell_config(cfg, cell, out / "pretrain")
        check_same_config(cell, ft)
        label = f"experiment: cell {i}/{len(cells)} {cell.target.name} {cell.method} f{cell.fraction:g} s{cell.seed}"
        if cell.finished:
            print(f"{label}: finished before")
        else:
            run_finetune(ft, cell.folder)
            print(f"{label}: done after {time.time() - t0:.0f} s")
        if distributed.is_main():
            write_results_csv(collect_results([(c.key, c.folder) for c in everything]), out / "results.csv")
    if not distributed.is_main():
        return ""
    return report(cfg, out, everything)


def report(cfg: ExperimentConfig, out: Path, cells: list[Cell]) -> str:
    """results.csv, table2.md and the figures from every finished cell of the grid."""
    from cupre.experiments.overlays import render_overlays
    from cupre.experiments.plots import make_figures
    from cupre.experiments.table import collect_results, format_table2, write_results_csv

    rows = collect_results([(c.key, c.folder) for c in cells])
    write_results_csv(rows, out / "results.csv")
    text = format_table2(rows, methods=list(cfg.methods), select_by=cfg.select_by)
    write_text_atomic(out / "table2.md", text + "\n")
    make_figures(rows, out / "figures", methods=list(cfg.methods), select_by=cfg.select_by)
    for target in {c.target.name: c.target for c in cells}.values():
        chosen = [c for c in cells if c.target is target and c.method in cfg.overlays.methods and c.finished
                  and c.fraction == min(target.fractions) and c.seed == cfg.seeds[0]]
        if chosen and cfg.overlays.images > 0:
            suffix = "" if len(cfg.data) == 1 else f"_{target.name}"
            render_overlays(target.val, target.val_split, {c.method: c.folder / "predictions_val.json" for c in chosen},
                            out / "figures" / f"fig8_overlays{suffix}.png", n_images=cfg.overlays.images,
                            score_thresh=cfg.overlays.score_thresh)
    print(text)
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/bbbc038-fewshot.yaml)")
    p.add_argument("-o", "--out", required=True, help="experiment folder (run again to continue)")
    p.add_argument("--device", help="auto, cpu, cuda ... (overrides the config's `device`)")
    p.add_argument("--only-method", action="append", metavar="M", help="run only this method (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is done; write nothing")


def main(args: argparse.Namespace) -> int:
    cfg = load_experiment(args.config)
    if args.device:
        cfg.device = args.device
    run_experiment(cfg, args.out, only_methods=args.only_method, dry_run=args.dry_run)
    return 0
