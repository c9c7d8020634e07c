"""COCO warm-up, AMT2, fine-tuning from every initialisation, resume, and the CLI on top."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch

from cupre.cli import main as cli
from cupre.config import Amt2Config, FinetuneConfig, PretrainConfig
from cupre.data.formats import open_dataset
from cupre.data.synthetic import write_synthetic
from cupre.errors import CupreError
from cupre.modelfile import load_model_file
from cupre.train import stage as stage_module
from cupre.train.finetune import run_finetune
from cupre.train.inits import build_init
from cupre.train.pretrain import run_pretrain
from tests.helpers import FAST_OPTIM, TINY_DETECTOR

DETECTOR = TINY_DETECTOR
FAST = FAST_OPTIM


def pretrain_cfg(tmp: Path, **over) -> PretrainConfig:
    data = {
        "detector": DETECTOR,
        "coco": [str(tmp / "objects" / "annotations.json")],
        "unlabeled": [str(tmp / "cells" / "images")],
        "warmup": {"iterations": 3, **FAST},
        # alpha near 1: the plain L2 term (pulling every weight to zero by lr * weight * (1 - alpha)
        # a step) would otherwise move the narrow test backbone as far as two Adam steps do
        "amt2": {"rounds": 2, "l2sp": {"alpha": 0.999, "weight": 800.0},
                 "moco": {"optim": {**FAST, "iterations": 2, "batch_size": 4, "crop_size": 48},
                          "dim": 16, "hidden_dim": 32, "queue_size": 16},
                 "coco": {**FAST, "iterations": 2}},
        "num_workers": 0, "checkpoint_every": 2, "device": "cpu",
    }
    data.update(over)
    return PretrainConfig.from_dict(data)


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("domains")
    write_synthetic("objects", tmp / "objects", n_images=6, size=96, seed=0)
    write_synthetic("cells", tmp / "cells", n_images=8, size=96, seed=0)
    return tmp


@pytest.fixture(scope="module")
def pretrained(domains, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    run_pretrain(pretrain_cfg(domains, cells_moco=True, nol2sp=True, coco_baseline=True), out)
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_model_file(path)["model"]


def _same(a: dict, b: dict, prefix: str) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_pretrain_writes_every_initialisation(pretrained):
    cupre, nol2sp = _state(pretrained / "amt2/model.safetensors"), _state(pretrained / "amt2-nol2sp/model.safetensors")
    assert not _same(cupre, nol2sp, "backbone.")
    assert (pretrained / "cells-moco/model.safetensors").is_file()
    rows = list(csv.DictReader(open(pretrained / "amt2/metrics.csv")))
    stages = {r["stage"] for r in rows}
    assert stages == {"amt2/round1/moco", "amt2/round1/coco", "amt2/round2/moco", "amt2/round2/coco"}


def test_coco_baseline_gets_cupres_coco_steps_without_moco(pretrained):
    rows = list(csv.DictReader(open(pretrained / "coco/metrics.csv")))
    assert {r["stage"] for r in rows} == {"amt2/round1/coco", "amt2/round2/coco"}  # same COCO budget, no MoCo
    steps = [r for r in rows if r["name"] == "loss"]
    cupre_steps = [r for r in csv.DictReader(open(pretrained / "amt2/metrics.csv"))
                   if r["name"] == "loss" and r["stage"].endswith("/coco")]
    assert len(steps) == len(cupre_steps)
    assert not _same(_state(pretrained / "warmup/model.safetensors"), _state(pretrained / "coco/model.safetensors"), "head.")


def test_l2sp_at_least_halves_the_backbone_drift(pretrained):
    with_l2sp = json.loads((pretrained / "amt2/drift.json").read_text())
    without = json.loads((pretrained / "amt2-nol2sp/drift.json").read_text())
    assert [d["stage"] for d in with_l2sp] == ["amt2/round1/coco", "amt2/round2/coco"]
    assert all(d["l2sp"] for d in with_l2sp) and not any(d["l2sp"] for d in without)
    assert with_l2sp[0]["drift_backbone"] <= 0.5 * without[0]["drift_backbone"]


def test_l2sp_leaves_the_optimisers_weight_decay_as_it_is(tmp_path):
    """With L2-SP the optimiser's own weight decay acts exactly as without it: one AdamW
    step with L2-SP equals the step without it followed by the decoupled pull alone."""
    from cupre.losses.l2sp import L2SP, snapshot
    from cupre.train.loop import train_loop
    from cupre.train.optim import param_groups
    from cupre.train.run import Run

    def one_step(l2sp_weight):
        torch.manual_seed(0)
        part = torch.nn.Linear(4, 3)
        start = snapshot(part)
        with torch.no_grad():
            part.weight.add_(0.5)  # away from w0, so that the pull has something to do
        opt = torch.optim.AdamW(param_groups({"backbone": part}, weight_decay=0.3), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        reg = L2SP(part, start, alpha=0.9, weight=l2sp_weight) if l2sp_weight is not None else None
        batches = iter([torch.ones(2, 4)] * 2)
        train_loop(stage="s", step_fn=lambda x: {"loss": part(x).pow(2).sum()}, optimizer=opt, scheduler=sched,
                   batches=batches, start=0, iterations=1, run=Run(tmp_path / str(l2sp_weight), tensorboard=False),
                   save_fn=lambda i: None, checkpoint_every=10, regularizer=reg)
        return part, start, opt

    plain, _, plain_opt = one_step(None)
    regularised, start, opt = one_step(2.0)
    assert [g["weight_decay"] for g in opt.param_groups] == [g["weight_decay"] for g in plain_opt.param_groups] == [0.3]
    with torch.no_grad():  # the decoupled pull, applied by hand to the plain step's weights
        w = plain.weight
        expected = w - 0.1 * 2.0 * (0.9 * (w - start["weight"]) + 0.1 * w)
    assert torch.allclose(regularised.weight, expected, atol=1e-6)
    assert not torch.allclose(regularised.weight, plain.weight)


@pytest.mark.parametrize("settings", [{}, {"objective": "densecl", "dense_levels": [-2, -1], "views": "object-scale",
                                           "momentum": 0.99, "momentum_schedule": "cosine"}])
def test_moco_step_moves_only_the_backbone(domains, tmp_path, settings):
    from cupre.data.unlabeled import UnlabeledImages
    from cupre.models.detector import build_detector
    from cupre.train.moco import build_objective, run_moco_stage
    from cupre.train.run import Run
    from cupre.train.stage import RunContext

    cfg = pretrain_cfg(domains)
    moco_cfg = cfg.amt2.moco.replace(**settings)
    model = build_detector(cfg.detector)
    before = copy.deepcopy(model.state_dict())
    moco = build_objective(model, moco_cfg)
    ctx = RunContext(device=torch.device("cpu"), seed=0).open(Run(tmp_path, tensorboard=False))
    logged = run_moco_stage(stage="moco", moco=moco, unlabeled=UnlabeledImages([domains / "cells" / "images"]),
                            cfg=moco_cfg, ctx=ctx, object_size=cfg.detector.object_size or 16)
    after = model.state_dict()
    assert not _same(before, after, "backbone.")
    assert _same(before, after, "neck.") and _same(before, after, "head.")
    dense = settings.get("objective") == "densecl"
    assert ("dense/loss" in logged) == dense and ("metric/dense_acc" in logged) == dense
    # the last of 2 steps runs halfway along the cosine from 0.99 to 1; the constant stays at 0.999
    assert logged["metric/moco_momentum"] == pytest.approx(0.995 if dense else 0.999)


def test_frozen_backbone_does_not_move_in_the_coco_step(domains, tmp_path):
    from cupre.data.concat import MergedDataset
    from cupre.models.detector import build_detector
    from cupre.train.amt2 import coco_step
    from cupre.train.run import Run
    from cupre.train.stage import RunContext

    cfg = pretrain_cfg(domains)
    coco = MergedDataset([open_dataset(domains / "objects" / "annotations.json")])
    cfg.detector.num_classes = len(coco.categories)
    model = build_detector(cfg.detector)
    before = copy.deepcopy(model.state_dict())
    amt2 = Amt2Config.from_dict({"freeze_backbone": True, "coco": {**FAST, "iterations": 2}})
    ctx = RunContext(device=torch.device("cpu"), seed=0).open(Run(tmp_path, tensorboard=False))
    coco_step(stage="s", model=model, data=coco, cfg=amt2, regularizer=None, ctx=ctx)
    after = model.state_dict()
    assert _same(before, after, "backbone.")
    assert not _same(before, after, "head.")
    assert all(p.requires_grad for p in model.backbone.parameters())  # unfrozen again afterwards


@pytest.mark.parametrize("init", ["scratch", "coco", "cells-moco", "coco++", "cupre", "cupre-nol2sp", "cupre++"])
def test_every_initialisation_builds_a_one_class_model(pretrained, init):
    model, cfg = build_init(init, pretrained, {})
    assert cfg.num_classes == 1
    assert model.head.roi_heads.box_predictor.cls_score.out_features == 2
    state = model.state_dict()
    sources = {"coco": "coco", "cupre": "amt2", "cupre++": "amt2", "cupre-nol2sp": "amt2-nol2sp"}
    if init in sources:
        source = _state(pretrained / sources[init] / "model.safetensors")
        assert _same(source, state, "backbone.") and _same(source, state, "neck.")
    if init in ("cells-moco", "coco++"):
        assert _same(_state(pretrained / "cells-moco/model.safetensors"), state, "backbone.")
    if init == "coco++":  # the paper's: Cells-MoCo backbone, the COCO model's neck and head
        coco = _state(pretrained / "coco/model.safetensors")
        assert _same(coco, state, "neck.") and _same(coco, state, "head.rpn.")
        assert not _same(coco, state, "backbone.")
        assert not _same(_state(pretrained / "warmup/model.safetensors"), state, "neck.")


def test_unknown_or_unfinished_initialisation_is_a_clear_error(tmp_path):
    with pytest.raises(CupreError, match="unknown initialisation"):
        build_init("imagenet", tmp_path, {})
    with pytest.raises(CupreError, match="has the pretrain run finished"):
        build_init("cupre", tmp_path, {})


def _finetune_cfg(domains, pretrained, **over) -> FinetuneConfig:
    data = {"init": "cupre++", "pretrain_dir": str(pretrained), "train": str(domains / "cells" / "annotations.json"),
            "fraction": 0.5, "val": str(domains / "cells" / "annotations.json"),
            "optim": {**FAST, "iterations": 6}, "eval_every": 3, "num_workers": 0, "checkpoint_every": 2,
            "device": "cpu", "detector": {"detections_per_img": 50}, "l2sp": {"alpha": 0.99, "weight": 200.0}}
    data.update(over)
    return FinetuneConfig.from_dict(data)


def test_kept_model_is_the_validation_best(domains, pretrained, tmp_path):
    from cupre.evaluation.model_eval import predict_dataset
    from cupre.models.loading import build_from_file

    cells = str(domains / "cells" / "annotations.json")
    cfg = _finetune_cfg(domains, pretrained, init="cupre", eval_every=2, select_by="bbox_AP", test=cells)
    best = run_finetune(cfg, tmp_path)
    metrics = json.loads((tmp_path / "val_metrics.json").read_text())
    history = metrics["history"]
    assert [h["iteration"] for h in history] == [2, 4, 6]
    top = max(h["bbox"]["AP"] for h in history)
    assert best["iteration"] == min(h["iteration"] for h in history if h["bbox"]["AP"] == top)  # earliest on ties
    assert metrics["best"] == best
    model, _, ckpt = build_from_file(tmp_path / "model.safetensors")
    assert ckpt["iteration"] == best["iteration"]
    assert not (tmp_path / "state.pt").exists()  # finished: the training state went (no --keep-checkpoints)
    # the predictions kept beside the model (overlays, Table II) are the kept model's own
    val = open_dataset(domains / "cells" / "annotations.json", class_agnostic=True)
    again = predict_dataset(model, val, device=torch.device("cpu"))
    kept = json.loads((tmp_path / "predictions_val.json").read_text())
    assert len(again) == len(kept)
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in kept], abs=1e-4)
    # the test set (here the validation images again) is scored once, by the kept model
    assert [h["iteration"] for h in history if "test" in h] == [best["iteration"]]
    assert best["test"]["bbox"]["AP"] == pytest.approx(best["bbox"]["AP"], abs=1e-6)
    tested = json.loads((tmp_path / "predictions_test.json").read_text())
    assert [r["score"] for r in tested] == pytest.approx([r["score"] for r in kept], abs=1e-4)
    # the kept model knows the score threshold of its best AP@0.5 on validation; test is read there too
    from cupre.evaluation.matching import best_threshold
    from cupre.inference.options import DetectionOptions

    threshold = best["matching"]["score_threshold"]
    assert ckpt["score_threshold"] == threshold == model.score_threshold
    assert best["test"]["matching"]["score_threshold"] == threshold
    from cupre.data.convert import dataset_to_coco

    assert best_threshold(dataset_to_coco(val), kept)[0] == threshold
    assert DetectionOptions().for_model(model).score_threshold == threshold
    assert DetectionOptions(score_threshold=0.9).for_model(model).score_threshold == 0.9


def test_finetune_evaluates_and_uses_l2sp_for_cupre_plus_plus(domains, pretrained, tmp_path):
    best = run_finetune(_finetune_cfg(domains, pretrained), tmp_path)
    assert best["iteration"] in (3, 6) and 0.0 <= best["bbox"]["AP"] <= 1.0
    metrics = json.loads((tmp_path / "val_metrics.json").read_text())
    assert [h["iteration"] for h in metrics["history"]] == [3, 6]
    names = {r["name"] for r in csv.DictReader(open(tmp_path / "metrics.csv"))}
    assert "bbox/AP" in names
    plain = run_finetune(_finetune_cfg(domains, pretrained, init="cupre"), tmp_path / "plain")
    del plain
    drift = metrics["drift"]["backbone"]
    plain_drift = json.loads((tmp_path / "plain" / "val_metrics.json").read_text())["drift"]["backbone"]
    assert 0 < drift < plain_drift  # L2-SP pulls the backbone towards the pre-trained weights
    split = json.loads((tmp_path / "split.json").read_text())
    from cupre.data.splits import fewshot_split

    records = open_dataset(domains / "cells" / "annotations.json").records
    assert split["image_ids"] == fewshot_split(records, 0.5, 0) and 0 < len(split["image_ids"]) < 8
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "predictions_val.json").is_file()


def test_killed_finetune_resumes_with_the_same_losses(domains, pretrained, tmp_path, monkeypatch):
    cfg = _finetune_cfg(domains, pretrained, init="cupre", val=None, eval_every=100)
    run_finetune(cfg, tmp_path / "straight")

    real_loop = stage_module.train_loop

    def killed_loop(**kw):
        step_fn, calls = kw["step_fn"], []

        def dying(batch):
            if len(calls) == 3:  # mid-epoch, one iteration after the checkpoint at 2
                raise KeyboardInterrupt
            calls.append(1)
            return step_fn(batch)

        return real_loop(**{**kw, "step_fn": dying})

    monkeypatch.setattr(stage_module, "train_loop", killed_loop)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(cfg, tmp_path / "killed")
    monkeypatch.setattr(stage_module, "train_loop", real_loop)
    run_finetune(cfg, tmp_path / "killed")

    def losses(folder):
        rows = csv.DictReader(open(tmp_path / folder / "metrics.csv"))
        return {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "loss"}

    straight, resumed = losses("straight"), losses("killed")
    assert set(resumed) == set(straight)
    rows = [(r["stage"], r["step"], r["name"]) for r in csv.DictReader(open(tmp_path / "killed" / "metrics.csv"))]
    assert len(rows) == len(set(rows))  # the iterations run again after the resume are logged once
    for step in (3, 4, 5, 6):  # steps 3.. were run again after the resume
        assert resumed[step] == pytest.approx(straight[step], rel=1e-4)


def test_finetune_cli_and_refusal_to_overwrite(domains, pretrained, tmp_path, capsys):
    """(Half of the 8 images: `cupre finetune` asks for 3 with objects, MIN_LABELLED_IMAGES.)"""
    args = ["finetune", "--init", "coco", "--from", str(pretrained), "--train",
            str(domains / "cells" / "annotations.json"), "--fraction", "0.5", "--iterations", "2",
            "--batch-size", "2", "--device", "cpu", "-o", str(tmp_path / "ft")]
    assert cli(args) == 0
    assert "no validation set checked it" in capsys.readouterr().out
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    assert cli(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli(["finetune", "--init", "coco", "-o", str(tmp_path / "x"), "--resume"]) == 2

    # a trained cell model fine-tuned further (predict -> correct -> fine-tune): every weight is its start
    more = ["finetune", "--from-model", str(tmp_path / "ft"), "--train", str(domains / "cells" / "annotations.json"),
            "--fraction", "0.5", "--iterations", "1", "--lr", "1e-12", "--batch-size", "2", "--device", "cpu"]
    assert cli([*more, "-o", str(tmp_path / "again")]) == 0
    before, after = _state(tmp_path / "ft" / "model.safetensors"), _state(tmp_path / "again" / "model.safetensors")
    assert before.keys() == after.keys()  # one step at lr 1e-12: the start is the trained model, not a fresh one
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-9) for k in before)
    assert cli([*more, "--init", "coco", "-o", str(tmp_path / "both")]) == 2
    assert "not both" in capsys.readouterr().err


def test_killed_pretrain_resumes_to_the_same_cupre_weights(domains, tmp_path, tmp_path_factory, monkeypatch):
    threads = torch.get_num_threads()  # the straight run and the resumed one at the same threads: other
    torch.set_num_threads(1)  # tests' commands set them, and fp32 sums differ with them
    try:
        straight_run = tmp_path_factory.mktemp("straight")
        run_pretrain(pretrain_cfg(domains), straight_run)
        _killed_then_resumed(domains, tmp_path, monkeypatch, straight_run)
    finally:
        torch.set_num_threads(threads)


def _killed_then_resumed(domains, tmp_path, monkeypatch, pretrained):
    real_loop = stage_module.train_loop

    def killed_loop(**kw):
        if kw["stage"] == "amt2/round2/coco":  # between AMT2 steps: round 2's MoCo step is done
            raise KeyboardInterrupt
        return real_loop(**kw)

    monkeypatch.setattr(stage_module, "train_loop", killed_loop)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(pretrain_cfg(domains), tmp_path)
    assert not (tmp_path / "amt2" / "model.safetensors").exists()
    assert torch.load(tmp_path / "amt2" / "state.pt", weights_only=False)["stage"] == "amt2/round2/moco:done"
    monkeypatch.setattr(stage_module, "train_loop", real_loop)
    run_pretrain(pretrain_cfg(domains), tmp_path)
    resumed, straight = _state(tmp_path / "amt2/model.safetensors"), _state(pretrained / "amt2/model.safetensors")
    assert all(torch.allclose(resumed[k].float(), straight[k].float(), atol=1e-5) for k in straight)


def test_warmup_can_start_from_imagenet_weights_of_the_backbone(domains, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    classifier = timm.create_model(DETECTOR["backbone"], pretrained=False)
    with torch.no_grad():
        for name, buffer in classifier.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)  # statistics a frozen BatchNorm keeps as they are
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(tmp_path / "imagenet.safetensors"))
    cfg = pretrain_cfg(domains, detector={**DETECTOR, "norm": "frozen_bn"}, start="imagenet-warmup",
                       start_weights=str(tmp_path / "imagenet.safetensors"),
                       amt2={"rounds": 1, "moco": {"optim": {**FAST, "iterations": 1, "batch_size": 4,
                                                              "crop_size": 48}, "dim": 16, "hidden_dim": 32,
                                                    "queue_size": 16}, "coco": {**FAST, "iterations": 1}})
    run_pretrain(cfg, tmp_path / "pre")
    warm = _state(tmp_path / "pre" / "warmup" / "model.safetensors")
    theirs = classifier.state_dict()
    kept = [k for k in theirs if k.startswith("layer") and k.endswith("running_var")]
    assert kept and all(torch.equal(warm[f"backbone.{k}"], theirs[k]) for k in kept)
    with pytest.raises(CupreError, match="need a BatchNorm backbone"):
        run_pretrain(pretrain_cfg(domains, start="imagenet-warmup",
                                  start_weights=str(tmp_path / "imagenet.safetensors")), tmp_path / "gn")


def test_the_initialisations_are_named_once():
    from cupre.config import FinetuneConfig
    from cupre.errors import CupreError
    from cupre.experiments.config import ExperimentConfig
    from cupre.methods import METHOD_NAMES

    assert ExperimentConfig().methods == list(METHOD_NAMES)
    with pytest.raises(CupreError, match="cupre-nol2sp"):  # the config's error lists the same names
        FinetuneConfig.from_dict({"init": "imagenet"})
