"""The grid of an experiment: each labeled dataset's partition and few-shot splits
(:class:`Target`), one fine-tuning run per method x fraction x seed (:class:`Cell`), and
the configs of the shared pre-training and of every cell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cupre.config import FinetuneConfig, PretrainConfig, load_yaml
from cupre.errors import CupreError
from cupre.experiments.config import PART_NAMES, DataConfig, ExperimentConfig, SyntheticConfig, dataset_name
from cupre.fileio import write_text_atomic
from cupre.methods import PRODUCTS, SELF_TRAIN, base_method, get_method, needed_products
from cupre.modelfile import MODEL_FILE

IGNORED_IN_COMPARISON = ("device", "num_workers", "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                         "pretrain_dir",
                         "train", "split", "val", "val_split")


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
    test_files: list[str] = field(default_factory=list)  # image files of the test part
    transductive: bool = False  # the test part's images are pre-training's unlabeled images too


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
        return (self.folder / "val_metrics.json").is_file() and (self.folder / MODEL_FILE).is_file()

    @property
    def teacher(self) -> "Cell | None":
        """For a self-training cell (``cupre+st``), the cell it starts from (``cupre``)."""
        if not self.method.endswith(SELF_TRAIN):
            return None
        return Cell(target=self.target, method=base_method(self.method), fraction=self.fraction, seed=self.seed)


def pretrain_config(cfg: ExperimentConfig, methods: list[str], out: Path,
                    targets: list[Target], *, seed: int | None = None) -> PretrainConfig | None:
    """The pre-training for ``methods`` (None when they load no product: ``scratch`` alone), with
    ``seed`` (None: the config's).

    The validation and test images of every labeled set are kept out of MoCo, but for a
    transductive target's test images, which join the unlabeled images instead.
    """
    needed = needed_products(methods)
    if not needed:
        return None
    pre = PretrainConfig.from_dict(cfg.pretrain.to_dict(), where="pretrain")
    pre = pre.replace(**{p.setting: p.name in needed for p in PRODUCTS.values() if p.setting})
    shown = {f for t in targets if t.transductive for f in t.test_files}
    pre.exclude = sorted({f for t in targets for f in t.held_out} - shown)
    sources = [Path(u).resolve() for u in pre.unlabeled]
    pre.unlabeled = [*pre.unlabeled, *sorted(f for f in shown if not any(s in Path(f).resolve().parents
                                                                         for s in sources))]
    pre.device, pre.precision = cfg.device, cfg.precision
    pre.seed = pre.seed if seed is None else seed
    if cfg.synthetic_objects.images > 0:
        pre.coco = [*pre.coco, str(out / "data" / "objects" / "annotations.json")]
    return pre


def pretrain_dirs(cfg: ExperimentConfig, out: Path) -> dict[int, Path]:
    """The pre-training folder each seed's cells start from: one shared, or one per seed."""
    if cfg.pretrain_per_seed:
        return {s: out / "pretrain" / f"s{s}" for s in cfg.seeds}
    return {s: out / "pretrain" for s in cfg.seeds}


def image_group(record) -> str:
    """``KIND-HxW``: an acquisition of a dataset, by imaging kind and image size."""
    height, width = record.height, record.width
    if height is None or width is None:
        from PIL import Image

        with Image.open(record.file) as im:
            width, height = im.size
    return f"{record.cell_type or 'all'}-{height}x{width}"


def write_synthetic_data(kind: str, cfg: SyntheticConfig, folder: Path) -> None:
    """Generate a synthetic dataset once; refuse a folder made with other settings."""
    from cupre.data.synthetic import write_synthetic

    ann = folder / "annotations.json"
    if ann.is_file():
        data = json.loads(ann.read_text())
        made = (len(data["images"]), data["info"].get("size"), data["info"].get("seed"))
        if made != (cfg.images, cfg.size, cfg.seed):
            raise CupreError(f"{folder}: synthetic {kind} were made with (images, size, seed) = {made}, the "
                             f"config asks {(cfg.images, cfg.size, cfg.seed)}; use another -o")
        return
    print(f"experiment: writing {cfg.images} synthetic {kind} images to {folder}")
    write_synthetic(kind, folder, n_images=cfg.images, size=cfg.size, seed=cfg.seed)


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


def target_parts(d: DataConfig, records: list) -> dict[str, list[int]]:
    """The seeded partition of ``d``'s labeled images: ``{part: sorted image ids}`` for
    train, val (and test) as ``d.partition`` names them; with ``test_groups``, those whole
    acquisitions are the test part and the rest is partitioned. The one rule every run of a
    config (and tools/make_demo_nuclei.py, which draws the demo's held-out images from the
    CPU recipe's test part) reads its parts by.

    Args:
        d: the dataset's config.
        records: its images (``open_dataset(d.labeled).records``).
    """
    from cupre.data.splits import partition

    names = PART_NAMES[: len(d.partition)]
    if not d.test_groups:
        return partition(records, d.partition, seed=d.partition_seed, names=names)
    # whole acquisitions are the test part; the rest is partitioned into train, val
    groups = {r.image_id: image_group(r) for r in records}
    missing = sorted(set(d.test_groups) - set(groups.values()))
    if missing:
        raise CupreError(f"data {dataset_name(d)}: test group {missing[0]} has no image; groups: "
                         f"{', '.join(sorted(set(groups.values())))}")
    parts = partition([r for r in records if groups[r.image_id] not in d.test_groups], d.partition,
                      seed=d.partition_seed, names=names)
    parts["test"] = sorted(i for i, g in groups.items() if g in d.test_groups)
    return parts


def prepare_target(cfg: ExperimentConfig, d: DataConfig, out: Path, *, single: bool, write: bool) -> Target:
    """Partition the labeled dataset and draw every few-shot split (files written once)."""
    from cupre.data.formats import open_dataset
    from cupre.data.splits import fewshot_split

    name = dataset_name(d)
    level = () if single else (name,)
    split_dir = out.joinpath("splits", *level)
    records = open_dataset(d.labeled, class_agnostic=True).records
    parts = target_parts(d, records)
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
    test_files = [str(r.file) for r in records if r.image_id in set(parts.get("test", []))]
    if d.test:
        test_files += [str(r.file) for r in open_dataset(d.test, class_agnostic=True).records]
    print(f"experiment: {name}: " + ", ".join(f"{p} {len(ids)}" for p, ids in parts.items()) + " images"
          + (f" (test: {', '.join(d.test_groups)})" if d.test_groups else ""))
    return Target(
        name=name, labeled=d.labeled, fractions=fractions, split_dir=split_dir,
        cell_root=out.joinpath("cells", *level),
        val=d.val or d.labeled, val_split=None if d.val else split_dir / "val.json",
        test=d.test or (d.labeled if "test" in parts else None),
        test_split=split_dir / "test.json" if "test" in parts else None,
        held_out=held_out,
        test_files=test_files,
        transductive=d.transductive,
    )


def cell_config(cfg: ExperimentConfig, cell: Cell, pretrain_dir: Path) -> FinetuneConfig:
    """The fine-tuning config of one cell: the shared schedule plus the cell's data and seed
    (a self-training cell: its teacher's, with the labeled dataset's images as the
    unlabeled ones; what is labeled, validation or test among them is never used)."""
    detector = {k: v for k, v in cfg.pretrain.detector.to_dict().items() if k != "num_classes"}
    data = cfg.finetune.to_dict()
    init = base_method(cell.method)
    if cell.teacher is not None:
        data.update(unlabeled=[cell.target.labeled],
                    self_train={**data["self_train"], "transductive": cell.target.transductive})
    data.update(
        init=init, pretrain_dir=str(pretrain_dir) if get_method(init).products else None,
        train=cell.target.labeled, split=str(cell.split_file), fraction=None, val=cell.target.val,
        val_split=str(cell.target.val_split) if cell.target.val_split else None,
        test=cell.target.test, test_split=str(cell.target.test_split) if cell.target.test_split else None,
        seed=cell.seed, select_by=cfg.select_by,
        device=cfg.device, precision=cfg.precision, eval_every=cfg.eval_every,
        detector={**detector, **cfg.finetune.detector},
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
    """Every cell of ``methods``, the teacher cells of self-training methods included,
    teachers first."""
    teachers = [base_method(m) for m in methods if m.endswith(SELF_TRAIN) and base_method(m) not in methods]
    ordered = [m for m in [*teachers, *methods] if not m.endswith(SELF_TRAIN)]
    ordered += [m for m in methods if m.endswith(SELF_TRAIN)]
    return [Cell(target=t, method=m, fraction=f, seed=s)
            for t in targets for m in ordered for f in t.fractions for s in cfg.seeds]
