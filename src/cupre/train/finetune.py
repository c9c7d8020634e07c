"""Few-shot fine-tuning of the whole model from a named initialisation.

``cupre finetune --init cupre --from PRETRAIN_DIR --train DATA --fraction 0.1 --val VAL -o OUT``
fine-tunes on a seeded few-shot split of DATA (or the images of ``--split split.json``),
evaluating on VAL every ``eval_every`` iterations and keeping the validation-best model.
With ``--init cupre++`` the backbone is regularised by L2-SP towards its pre-trained
weights (the paper's Eq. 7; ``l2sp.parts`` names another part).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from cupre.config import FinetuneConfig
from cupre.data.concat import BySource, KindBalanced, MixedDataset
from cupre.data.formats import open_dataset
from cupre.data.sample import collate
from cupre.data.splits import fewshot_split, load_split
from cupre.data.transforms import DetectionTrainTransform
from cupre.devices import pick_device, resolve_precision
from cupre.errors import CupreError, CupreWarning
from cupre.evaluation.selection import Validation
from cupre.losses.l2sp import L2SP, relative_drift, snapshot
from cupre.methods import get_method
from cupre.modelfile import MODEL_FILE, load_model_file, write_model_file
from cupre.shipped import resolve_model
from cupre.train import distributed, loop
from cupre.train.checkpoint import seed_everything
from cupre.train.inits import build_init, continue_model, product_files
from cupre.train.optim import param_groups
from cupre.train.run import Run
from cupre.train.stage import RunContext, detection_step, run_stage, stage_seed


def choose_images(cfg: FinetuneConfig, dataset) -> list[int]:
    """The image ids to fine-tune on: a split file, a fraction, or everything."""
    if cfg.split is not None:
        ids = load_split(cfg.split)["image_ids"]
        known = {r.image_id for r in dataset.records}
        missing = [i for i in ids if i not in known]
        if missing:
            raise CupreError(f"{cfg.split}: image ids {missing[:5]} are not in {cfg.train}")
        return ids
    if cfg.fraction is not None:
        return fewshot_split(dataset.records, cfg.fraction, cfg.seed)
    return [r.image_id for r in dataset.records]


def training_images(cfg: FinetuneConfig):
    """The annotated images ``cfg`` fine-tunes on (a subset of ``cfg.train``)."""
    dataset = open_dataset(cfg.train, class_agnostic=True)
    return dataset.subset(choose_images(cfg, dataset))


# What `cupre train` and `cupre finetune` ask of a user's labels: three images with objects
# (the library itself, its tests and the napari widget's corrections, asks for one).
MIN_LABELLED_IMAGES = 3


def count_labelled(train, source: str | Path, *, minimum: int = 1) -> dict[str, int]:
    """How many of the images ``train`` (read from ``source``) have an object to learn from,
    said when fewer than were given (an image whose every annotation a reader skipped
    trains as background).

    Raises:
        CupreError: fewer than ``minimum`` such images.
    """
    counts = [train.count_objects(k) for k in range(len(train))]
    given, usable = len(counts), sum(n > 0 for n in counts)
    if usable < minimum:
        raise CupreError(f"{source}: {usable} of the {given} annotated images to fine-tune on have an object to "
                         f"learn from (the rest have none, or the readers skipped all of theirs: see the warnings "
                         f"above); fine-tuning needs at least {minimum}")
    if usable < given and distributed.is_main():
        empty = next(train.records[k].file for k, n in enumerate(counts) if n == 0)
        print(f"finetune: {labels_said(given, usable)} (first without: {empty}); the others train as background "
              "only", flush=True)
    return {"given": given, "usable": usable}


def labels_said(given: int, usable: int) -> str:
    return f"only {usable} of the {given} annotated images have an object to learn from"


def labels_summary(run_dir: str | Path) -> str | None:
    """The fine-tuning run's 'fewer usable labels than given' line, for a final summary."""
    path = Path(run_dir) / "val_metrics.json"
    labels = json.loads(path.read_text()).get("labels") if path.is_file() else None
    if not labels or labels["usable"] >= labels["given"]:
        return None
    return f"trained on {labels['usable']} of the {labels['given']} annotated images given ({labels_said(**labels)})"


def run_finetune(cfg: FinetuneConfig, out_dir: str | Path, *, min_labelled: int = 1) -> dict:
    """Fine-tune, evaluate, and write ``model.safetensors``, ``split.json``, ``val_metrics.json``.

    ``model.safetensors`` is the validation-best model (by ``cfg.select_by``, the earliest
    evaluation on ties), saved when it is found; without a validation set it is the
    last iterate. ``state.pt`` holds the last state, for ``--resume`` only.
    ``min_labelled``: refuse (before the run folder is made) when fewer training images
    have an object (:func:`count_labelled`).
    Returns the chosen evaluation (empty without a validation set).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if (out / MODEL_FILE).is_file() and (out / "val_metrics.json").is_file():
        return json.loads((out / "val_metrics.json").read_text()).get("best", {})
    # everything that can be wrong with the inputs is found before the run folder is made
    if cfg.from_model is None:
        product_files(cfg.init, cfg.pretrain_dir)
    else:
        resolve_model(cfg.from_model)  # a missing file, or a shipped model this install lacks
    train = training_images(cfg)
    labels = count_labelled(train, cfg.train, minimum=min_labelled)
    val, test = held_out(cfg.val, cfg.val_split), held_out(cfg.test, cfg.test_split)
    device = pick_device(cfg.device)
    distributed.init(device)
    run = Run(out)
    run.save_config(cfg.to_dict())
    run.save_json({"dataset": str(cfg.train), "image_ids": [r.image_id for r in train.records],
                   "files": [str(r.file) for r in train.records]}, "split.json")

    model, det_cfg, stage = starting_model(cfg, device)
    start = {part: snapshot(module) for part, module in model.parts().items()}
    validation = Validation(model, val=val, test=test, device=device, batch_size=cfg.eval_batch_size,
                            select_by=cfg.select_by, log=run.log, progress=loop.SHOW_PROGRESS)
    ctx = RunContext(device=device, seed=cfg.seed, num_workers=cfg.num_workers, precision=model.precision,
                     checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints)
    ctx = ctx.open(run, extra_state=lambda: {"model": model.state_dict(), "history": validation.history})
    if ctx.resume is not None:
        model.load_state_dict(ctx.resume["model"])
        validation.history = ctx.resume.get("history", [])
        run.drop_after(int(ctx.resume.get("iteration", 0)), ["val", "test"])
    keeper = Keeper(run, model, det_cfg, stage, validation)
    if run.main and ctx.resume is None:
        report_anchor_coverage(train, det_cfg, run)
    data, transform = training_data(cfg, train, det_cfg.object_size)
    run_stage(
        stage="finetune",
        step_fn=detection_step(distributed.wrap(model, device), device),
        groups=param_groups(model.parts(), weight_decay=cfg.optim.weight_decay),
        cfg=cfg.optim,
        dataset=data,
        transform=transform,
        collate_fn=collate,
        ctx=ctx,
        on_step=lambda it: keeper.step(it, cfg.eval_every, cfg.checkpoint_every, cfg.optim.iterations),
        regularizer=build_l2sp(model, start, cfg) if cfg.from_model is None and get_method(cfg.init).l2sp else None,
    )
    best = keeper.finish(cfg.optim.iterations)
    drift = {part: relative_drift(module, start[part]) for part, module in model.parts().items()}
    seconds = {"total": time.perf_counter() - started, **validation.seconds}  # this process's share
    seconds["training"] = seconds["total"] - sum(validation.seconds.values())
    run.save_json({"history": validation.history, "best": best, "select_by": cfg.select_by, "drift": drift,
                   "last": validation.history[-1] if validation.history else {}, "seconds": seconds,
                   "labels": labels},
                  "val_metrics.json")
    ctx.finish()
    run.close()
    return best


def report_anchor_coverage(train, det_cfg, run: Run, *, max_images: int = 50) -> None:
    """Print (and log) how the RPN's anchors cover the training labels at the object scale
    (:mod:`cupre.models.anchors`): objects no anchor overlaps at IoU 0.7 teach the RPN from
    one low-quality match each."""
    from cupre.data.sample import masks_to_boxes
    from cupre.models.anchors import dataset_coverage, level_sizes

    samples = []
    for k in range(min(len(train), max_images)):
        raw = train.read_raw(k)
        masks = raw.masks[~raw.iscrowd]
        samples.append(((masks.shape[1], masks.shape[2]), masks_to_boxes(masks)))
    sizes = level_sizes(det_cfg.anchor_sizes, det_cfg.object_size, det_cfg.anchors_per_octave)
    coverage = dataset_coverage(samples, det_cfg.object_size, sizes, det_cfg.aspect_ratios)
    print(f"finetune: {coverage.line()} (sizes {[list(s) for s in sizes]})", flush=True)
    run.log("anchors", 0, {"median_best_iou": coverage.median_best_iou,
                           "share_with_positive": coverage.share_with_positive})


def starting_model(cfg: FinetuneConfig, device: torch.device):
    """The model fine-tuning starts from, on ``device`` in the precision it trains and
    validates in; its detector config; the stage name its model file records."""
    seed_everything(stage_seed(cfg.seed, "init"))  # fresh heads / scratch weights are part of the run
    if cfg.from_model is not None:
        model, det_cfg = continue_model(cfg.from_model, cfg.detector)
    else:
        model, det_cfg = build_init(cfg.init, cfg.pretrain_dir, cfg.detector)
    model.to(device)
    model.precision = resolve_precision(cfg.precision, device)
    return model, det_cfg, f"finetune:{'from-model' if cfg.from_model else cfg.init}"


class Keeper:
    """Writes the model a fine-tuning run keeps: the validation-best one when it is found
    (with its validation predictions), else the latest iterate at each checkpoint."""

    def __init__(self, run: Run, model: torch.nn.Module, det_cfg, stage: str, validation: Validation) -> None:
        self.run, self.model, self.det_cfg, self.stage, self.validation = run, model, det_cfg, stage, validation

    def step(self, iteration: int, eval_every: int, checkpoint_every: int, iterations: int) -> None:
        if self.validation.active:
            if iteration % eval_every == 0 or iteration == iterations:
                self.score(iteration)
        elif iteration % checkpoint_every == 0:
            # nothing chooses the model: the latest iterate is the usable model if the run stops here
            self.save(iteration)

    def score(self, iteration: int) -> None:
        """Validation on rank 0; the model file is written there alone (no barrier: the
        other ranks are training)."""
        if distributed.is_main() and self.validation.score(iteration):
            write_model_file(self.run.path(MODEL_FILE), self.model, self.det_cfg, CELL, stage=self.stage,
                             iteration=iteration, select_by=self.validation.select_by,
                             score_threshold=self.validation.best()["matching"]["score_threshold"])
            self.run.save_json(self.validation.predictions["val"], "predictions_val.json")

    def save(self, iteration: int) -> None:
        if distributed.is_main():
            write_model_file(self.run.path(MODEL_FILE), self.model, self.det_cfg, CELL, stage=self.stage,
                             iteration=iteration)

    def finish(self, iterations: int) -> dict:
        """Score the last iterate, test the chosen model once (the model ends with its
        weights), and return the chosen evaluation. Without validation the last iterate is kept."""
        self.score(iterations)
        validation = self.validation
        if not validation.active:
            self.save(iterations)
        best = validation.best()
        if validation.data["test"] is not None and best and distributed.is_main():
            if best is not validation.history[-1]:
                self.model.load_state_dict(load_model_file(self.run.path(MODEL_FILE))["model"])
            validation.test()
            self.run.save_json(validation.predictions["test"], "predictions_test.json")
        distributed.barrier()
        if best and best["bbox"]["AP"] <= 0 and best["segm"]["AP"] <= 0:
            warnings.warn(f"{self.run.root}: the kept model scores AP 0 on validation: it finds no cell there "
                          "(train longer, check that the labels match the images, or the object size)",
                          CupreWarning, stacklevel=3)
        return best


CELL = [{"id": 1, "name": "cell"}]


def training_data(cfg: FinetuneConfig, train, object_size: float | None):
    """The images to train on and their transform: the annotated ones, mixed with the
    pseudo-labelled ones of ``cfg.pseudo_labels`` (a self-training student) when given."""
    def transform(strong: bool = False, background: bool = True) -> DetectionTrainTransform:
        return DetectionTrainTransform(crop_size=cfg.optim.crop_size, object_size=object_size,
                                       scale_jitter=cfg.optim.scale_jitter, strong=strong, background=background,
                                       acquisition=cfg.augment == "acquisition")

    if cfg.balance_kinds:
        train = KindBalanced(train)
    if cfg.pseudo_labels is None:
        return train, transform()
    st = cfg.self_train
    pseudo = open_dataset(cfg.pseudo_labels, format="coco", class_agnostic=True)
    mixed = MixedDataset(train, pseudo, pseudo_fraction=st.pseudo_fraction)
    return mixed, BySource(labeled=transform(), pseudo=transform(st.strong, st.background == "learned"))


def build_l2sp(model: torch.nn.Module, start: dict[str, dict[str, torch.Tensor]], cfg: FinetuneConfig) -> L2SP:
    """CUPre++: L2-SP towards the pre-trained weights of ``cfg.l2sp.parts`` (Eq. 7: the backbone)."""
    parts = model.parts()
    unknown = [p for p in cfg.l2sp.parts if p not in parts]
    if unknown or not cfg.l2sp.parts:
        raise CupreError(f"l2sp.parts: {list(cfg.l2sp.parts)}; name parts among {', '.join(parts)}")
    chosen = torch.nn.ModuleDict({p: parts[p] for p in cfg.l2sp.parts})
    reference = {f"{p}.{k}": v for p in cfg.l2sp.parts for k, v in start[p].items()}
    return L2SP(chosen, reference, alpha=cfg.l2sp.alpha, weight=cfg.l2sp.weight)


def held_out(path: str | None, split: str | None):
    """A validation or test set: a dataset, optionally restricted to a split file's images."""
    if path is None:
        return None
    dataset = open_dataset(path, class_agnostic=True)
    return dataset.subset(load_split(split)["image_ids"]) if split is not None else dataset
