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
from cupre.train import stage as stage_module
from cupre.train.finetune import run_finetune
from cupre.train.inits import build_init
from cupre.train.pretrain import run_pretrain
from cupre.train.weights import load_model_file

DETECTOR = {
    "backbone": "resnet18", "fpn_channels": 32, "min_size": 96, "max_size": 96,
    "anchor_sizes": [4, 8, 16, 32, 64], "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100, "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32, "detections_per_img": 50,
}
FAST = {"batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "warmup_iterations": 1, "crop_size": None}


def pretrain_cfg(tmp: Path, **over) -> PretrainConfig:
    data = {
        "detector": DETECTOR,
        "coco": [str(tmp / "objects" / "annotations.json")],
        "unlabeled": [str(tmp / "cells" / "images")],
        "warmup": {"iterations": 3, **FAST},
        "amt2": {"rounds": 2, "l2sp": {"alpha": 0.5, "weight": 0.01},
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
    run_pretrain(pretrain_cfg(domains, cells_moco=True, nol2sp=True), out)
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_model_file(path)["model"]


def _same(a: dict, b: dict, prefix: str) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_pretrain_writes_every_initialisation(pretrained):
    warm, coco_pp = _state(pretrained / "warmup/model.pt"), _state(pretrained / "amt2/coco++.pt")
    cupre, nol2sp = _state(pretrained / "amt2/model.pt"), _state(pretrained / "amt2-nol2sp/model.pt")
    # coco++ = MoCo backbone + the COCO warm-up neck and head
    assert not _same(warm, coco_pp, "backbone.")
    assert _same(warm, coco_pp, "neck.") and _same(warm, coco_pp, "head.")
    assert not _same(cupre, nol2sp, "backbone.")
    assert (pretrained / "cells-moco/model.pt").is_file()
    rows = list(csv.DictReader(open(pretrained / "amt2/metrics.csv")))
    stages = {r["stage"] for r in rows}
    assert stages == {"amt2/round1/moco", "amt2/round1/coco", "amt2/round2/moco", "amt2/round2/coco"}
    assert any(r["name"] == "l2sp" and float(r["value"]) > 0 for r in rows)
    rows = list(csv.DictReader(open(pretrained / "amt2-nol2sp/metrics.csv")))
    assert not any(r["name"] == "l2sp" for r in rows)


def test_moco_step_moves_only_the_backbone(domains, tmp_path):
    from cupre.data.unlabeled import UnlabeledImages
    from cupre.models.detector import build_detector
    from cupre.train.moco import build_moco, run_moco_stage
    from cupre.train.run import Run
    from cupre.train.stage import StateFile

    cfg = pretrain_cfg(domains)
    model = build_detector(cfg.detector)
    before = copy.deepcopy(model.state_dict())
    moco = build_moco(model, cfg.amt2.moco)
    run_moco_stage(stage="moco", moco=moco, unlabeled=UnlabeledImages([domains / "cells" / "images"]),
                   cfg=cfg.amt2.moco, run=Run(tmp_path, tensorboard=False), device=torch.device("cpu"), seed=0,
                   state_file=StateFile(tmp_path / "state.pt"), resume=None, extra_state=dict)
    after = model.state_dict()
    assert not _same(before, after, "backbone.")
    assert _same(before, after, "neck.") and _same(before, after, "head.")


def test_frozen_backbone_does_not_move_in_the_coco_step(domains, tmp_path):
    from cupre.data.concat import MergedDataset
    from cupre.models.detector import build_detector
    from cupre.train.amt2 import _coco_step
    from cupre.train.run import Run
    from cupre.train.stage import StateFile

    cfg = pretrain_cfg(domains)
    coco = MergedDataset([open_dataset(domains / "objects" / "annotations.json")])
    cfg.detector.num_classes = len(coco.categories)
    model = build_detector(cfg.detector)
    before = copy.deepcopy(model.state_dict())
    amt2 = Amt2Config.from_dict({"freeze_backbone": True, "coco": {**FAST, "iterations": 2}})
    _coco_step(stage="s", model=model, data=coco, cfg=amt2, w0=None, use_l2sp=True,
               run=Run(tmp_path, tensorboard=False), device=torch.device("cpu"), seed=0,
               state_file=StateFile(tmp_path / "state.pt"), resume=None, extra_state=dict, num_workers=0,
               checkpoint_every=10)
    after = model.state_dict()
    assert _same(before, after, "backbone.")
    assert not _same(before, after, "head.")
    assert all(p.requires_grad for p in model.backbone.parameters())  # unfrozen again afterwards


@pytest.mark.parametrize("init", ["scratch", "coco", "cells-moco", "coco++", "cupre", "cupre-nol2sp", "cupre++"])
def test_every_initialisation_builds_a_one_class_model(pretrained, init):
    model, cfg, reference = build_init(init, pretrained, {})
    assert cfg.num_classes == 1
    assert model.head.roi_heads.box_predictor.cls_score.out_features == 2
    assert (reference is not None) == (init == "cupre++")
    if init in ("coco", "cupre"):
        source = _state(pretrained / ("warmup" if init == "coco" else "amt2") / "model.pt")
        assert _same(source, model.state_dict(), "backbone.") and _same(source, model.state_dict(), "neck.")
    if init == "cells-moco":
        source = _state(pretrained / "cells-moco/model.pt")
        assert _same(source, model.state_dict(), "backbone.")


def test_unknown_or_unfinished_initialisation_is_a_clear_error(tmp_path):
    with pytest.raises(CupreError, match="unknown initialisation"):
        build_init("imagenet", tmp_path, {})
    with pytest.raises(CupreError, match="has the pretrain run finished"):
        build_init("cupre", tmp_path, {})


def _finetune_cfg(domains, pretrained, **over) -> FinetuneConfig:
    data = {"init": "cupre++", "pretrain_dir": str(pretrained), "train": str(domains / "cells" / "annotations.json"),
            "fraction": 0.5, "val": str(domains / "cells" / "annotations.json"),
            "optim": {**FAST, "iterations": 6}, "eval_every": 3, "num_workers": 0, "checkpoint_every": 2,
            "device": "cpu", "detector": {"detections_per_img": 50}}
    data.update(over)
    return FinetuneConfig.from_dict(data)


def test_finetune_evaluates_and_uses_l2sp_for_cupre_plus_plus(domains, pretrained, tmp_path):
    last = run_finetune(_finetune_cfg(domains, pretrained), tmp_path)
    assert last["iteration"] == 6 and 0.0 <= last["bbox"]["AP"] <= 1.0
    history = json.loads((tmp_path / "val_metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [3, 6]
    names = {r["name"] for r in csv.DictReader(open(tmp_path / "metrics.csv"))}
    assert "l2sp" in names and "bbox/AP" in names
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
    for step in (3, 4, 5, 6):  # steps 3.. were run again after the resume
        assert resumed[step] == pytest.approx(straight[step], rel=1e-4)


def test_finetune_cli_and_refusal_to_overwrite(domains, pretrained, tmp_path, capsys):
    args = ["finetune", "--init", "coco", "--from", str(pretrained), "--train",
            str(domains / "cells" / "annotations.json"), "--fraction", "0.25", "--iterations", "2",
            "--batch-size", "2", "--device", "cpu", "-o", str(tmp_path / "ft")]
    assert cli(args) == 0
    assert "model:" in capsys.readouterr().out
    assert (tmp_path / "ft" / "model.pt").is_file()
    assert cli(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli(["finetune", "--init", "coco", "-o", str(tmp_path / "x"), "--resume"]) == 2


def test_killed_pretrain_resumes_to_the_same_cupre_weights(domains, pretrained, tmp_path, monkeypatch):
    real_loop = stage_module.train_loop

    def killed_loop(**kw):
        if kw["stage"] == "amt2/round2/coco":  # between AMT2 steps: round 2's MoCo step is done
            raise KeyboardInterrupt
        return real_loop(**kw)

    monkeypatch.setattr(stage_module, "train_loop", killed_loop)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(pretrain_cfg(domains), tmp_path)
    assert not (tmp_path / "amt2" / "model.pt").exists()
    assert torch.load(tmp_path / "amt2" / "state.pt", weights_only=False)["stage"] == "amt2/round2/moco:done"
    monkeypatch.setattr(stage_module, "train_loop", real_loop)
    run_pretrain(pretrain_cfg(domains), tmp_path)
    resumed, straight = _state(tmp_path / "amt2/model.pt"), _state(pretrained / "amt2/model.pt")
    assert all(torch.allclose(resumed[k].float(), straight[k].float(), atol=1e-5) for k in straight)
