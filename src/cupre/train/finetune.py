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
from collections import defaultdict
from pathlib import Path

import torch

from cupre.config import FinetuneConfig
from cupre.data.concat import BySource, MixedDataset
from cupre.data.convert import dataset_to_coco
from cupre.data.formats import open_dataset
from cupre.data.sample import collate
from cupre.data.splits import fewshot_split, load_split
from cupre.data.transforms import DetectionTrainTransform
from cupre.devices import pick_device, resolve_precision
from cupre.errors import CupreError, CupreWarning
from cupre.evaluation.livecell import evaluate
from cupre.evaluation.model_eval import predict_dataset
from cupre.losses.l2sp import L2SP, relative_drift, snapshot
from cupre.modelfile import MODEL_FILE, load_model_file
from cupre.train import distributed, loop
from cupre.train.checkpoint import seed_everything
from cupre.train.inits import build_init, continue_model, get_init, product_files
from cupre.train.optim import param_groups
from cupre.train.run import Run
from cupre.train.stage import (
    RunContext,
    Settings,
    detection_step,
    run_stage,
    stage_seed,
)
from cupre.train.weights import save_model


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


def run_finetune(cfg: FinetuneConfig, out_dir: str | Path) -> dict:
    """Fine-tune, evaluate, and write ``model.safetensors``, ``split.json``, ``val_metrics.json``.

    ``model.safetensors`` is the validation-best model (by ``cfg.select_by``, the earliest
    evaluation on ties), saved when it is found; without a validation set it is the
    last iterate. ``state.pt`` holds the last state, for ``--resume`` only.
    Returns the chosen evaluation (empty without a validation set).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if (out / MODEL_FILE).is_file() and (out / "val_metrics.json").is_file():
        return json.loads((out / "val_metrics.json").read_text()).get("best", {})
    # everything that can be wrong with the inputs is found before the run folder is made
    if cfg.from_model is None:
        product_files(cfg.init, cfg.pretrain_dir)
    train = training_images(cfg)
    ids = [r.image_id for r in train.records]
    val = held_out(cfg.val, cfg.val_split)
    test = held_out(cfg.test, cfg.test_split)
    device = pick_device(cfg.device)
    distributed.init(device)
    run = Run(out)
    run.save_config(cfg.to_dict())
    run.save_json({"dataset": str(cfg.train), "image_ids": ids,
                   "files": [str(r.file) for r in train.records]}, "split.json")

    seed_everything(stage_seed(cfg.seed, "init"))  # fresh heads / scratch weights are part of the run
    stage = f"finetune:{'from-model' if cfg.from_model else cfg.init}"  # recorded in the model file
    if cfg.from_model is not None:
        model, det_cfg = continue_model(cfg.from_model, cfg.detector)
    else:
        model, det_cfg = build_init(cfg.init, cfg.pretrain_dir, cfg.detector)
    model.to(device)
    start = {part: snapshot(module) for part, module in model.parts().items()}
    model.precision = resolve_precision(cfg.precision, device)  # training steps and validation alike
    ctx = RunContext.open(run, Settings(device=device, seed=cfg.seed, num_workers=cfg.num_workers,
                                        precision=model.precision,
                                        checkpoint_every=cfg.checkpoint_every,
                                        keep_checkpoints=cfg.keep_checkpoints))
    history: list[dict] = ctx.resume.get("history", []) if ctx.resume else []
    ctx.extra_state = lambda: {"model": model.state_dict(), "history": history}
    if ctx.resume is not None:
        model.load_state_dict(ctx.resume["model"])
        run.drop_after(int(ctx.resume.get("iteration", 0)), ["val", "test"])
    train, transform = training_data(cfg, train, det_cfg.object_size)
    regularizer = build_l2sp(model, start, cfg) if cfg.from_model is None and get_init(cfg.init).l2sp else None
    evaluator = Evaluator(model=model, run=run, device=device, batch_size=cfg.eval_batch_size,
                          val=val, test=test, select_by=cfg.select_by)

    def on_step(iteration: int) -> None:
        if iteration % cfg.eval_every == 0 or iteration == cfg.optim.iterations:
            evaluate_and_keep(evaluator, history, iteration, model, det_cfg)
        elif val is None and iteration % cfg.checkpoint_every == 0 and distributed.is_main():
            # nothing chooses the model: the latest iterate is the usable model if the run stops here
            save_model(run.path(MODEL_FILE), model, det_cfg, CELL, stage=stage, iteration=iteration)

    run_stage(
        stage="finetune",
        step_fn=detection_step(distributed.wrap(model, device), device),
        groups=param_groups(model.parts(), weight_decay=cfg.optim.weight_decay),
        cfg=cfg.optim,
        dataset=train,
        transform=transform,
        collate_fn=collate,
        ctx=ctx,
        on_step=on_step,
        regularizer=regularizer,
    )
    evaluate_and_keep(evaluator, history, cfg.optim.iterations, model, det_cfg)
    test_chosen(evaluator, history, model)
    if val is None:
        save_model(run.path(MODEL_FILE), model, det_cfg, CELL, stage=stage, iteration=cfg.optim.iterations)
    drift = {part: relative_drift(module, start[part]) for part, module in model.parts().items()}
    best = best_entry(history, cfg.select_by)
    if best and best["bbox"]["AP"] <= 0 and best["segm"]["AP"] <= 0:
        warnings.warn(f"{out}: the kept model scores AP 0 on validation: it finds no cell there (train longer, "
                      "check that the labels match the images, or the object size)", CupreWarning, stacklevel=2)
    seconds = {"total": time.perf_counter() - started, **evaluator.seconds}  # this process's share
    seconds["training"] = seconds["total"] - sum(evaluator.seconds.values())
    run.save_json({"history": history, "best": best, "select_by": cfg.select_by, "drift": drift,
                   "last": history[-1] if history else {}, "seconds": seconds}, "val_metrics.json")
    ctx.finish()
    run.close()
    return best


CELL = [{"id": 1, "name": "cell"}]


def training_data(cfg: FinetuneConfig, train, object_size: float | None):
    """The images to train on and their transform: the annotated ones, mixed with the
    pseudo-labelled ones of ``cfg.pseudo_labels`` (a self-training student) when given."""
    def transform(strong: bool = False, background: bool = True) -> DetectionTrainTransform:
        return DetectionTrainTransform(crop_size=cfg.optim.crop_size, object_size=object_size,
                                       scale_jitter=cfg.optim.scale_jitter, strong=strong, background=background)

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


def best_entry(history: list[dict], select_by: str) -> dict:
    """The evaluation with the highest ``select_by`` (``segm_AP``/``bbox_AP``), earliest on ties."""
    if not history:
        return {}
    return max(history, key=lambda h: (selected(h, select_by), -h["iteration"]))


def selected(entry: dict, select_by: str) -> float:
    """An evaluation's ``select_by`` figure (``segm_AP`` -> ``entry["segm"]["AP"]``)."""
    kind, figure = select_by.split("_", 1)
    return entry[kind][figure]


def evaluate_and_keep(evaluator: "Evaluator", history: list[dict], iteration: int, model, det_cfg) -> None:
    """Score validation once per iteration; save ``model.safetensors`` when it is the best so far."""
    if evaluator.val is None or not distributed.is_main() or any(h["iteration"] == iteration for h in history):
        return
    entry = evaluator.score(iteration)
    history.append(entry)
    if best_entry(history, evaluator.select_by) is entry:
        save_model(evaluator.run.path(MODEL_FILE), model, det_cfg, CELL, stage="finetune", iteration=iteration,
                   select_by=evaluator.select_by)
        evaluator.keep_predictions()


def test_chosen(evaluator: "Evaluator", history: list[dict], model) -> None:
    """Score the test set once, with the validation-chosen model (``model.safetensors``),
    into that history entry; the model ends with the chosen weights."""
    if evaluator.test is None or not history or not distributed.is_main():
        return
    best = best_entry(history, evaluator.select_by)
    if best is not history[-1]:
        model.load_state_dict(load_model_file(evaluator.run.path(MODEL_FILE))["model"])
    best["test"] = evaluator.split_scores("test", evaluator.test, best["iteration"])
    evaluator.run.save_json(evaluator.latest["test"], "predictions_test.json")


class Evaluator:
    """Scores the model on validation (or test) under the LIVECell protocol."""

    def __init__(self, *, model, run: Run, device, batch_size: int, val, test, select_by: str) -> None:
        self.model, self.run, self.device, self.batch_size = model, run, device, batch_size
        self.val, self.test, self.select_by = val, test, select_by
        self.gt = {"val": dataset_to_coco(val) if val is not None else None,
                   "test": dataset_to_coco(test) if test is not None else None}
        self.latest: dict[str, list] = {}
        self.seconds: dict[str, float] = defaultdict(float)  # per split, prediction and scoring

    def split_scores(self, split: str, dataset, iteration: int) -> dict:
        start = time.perf_counter()
        results = predict_dataset(self.model, dataset, device=self.device, batch_size=self.batch_size,
                                  progress=loop.SHOW_PROGRESS)
        metrics = evaluate(self.gt[split], results, protocol="livecell")
        self.run.log(split, iteration, {f"{t}/{k}": v for t in ("bbox", "segm") for k, v in metrics[t].items()})
        self.latest[split] = results
        self.seconds[split] += time.perf_counter() - start
        return {"bbox": metrics["bbox"], "segm": metrics["segm"], "per_cell_type": metrics["per_cell_type"]}

    def score(self, iteration: int) -> dict:
        return {"iteration": iteration, **self.split_scores("val", self.val, iteration)}

    def keep_predictions(self) -> None:
        """Write the latest validation predictions as the kept model's (``predictions_val.json``)."""
        self.run.save_json(self.latest["val"], "predictions_val.json")


def held_out(path: str | None, split: str | None):
    """A validation or test set: a dataset, optionally restricted to a split file's images."""
    if path is None:
        return None
    dataset = open_dataset(path, class_agnostic=True)
    return dataset.subset(load_split(split)["image_ids"]) if split is not None else dataset
