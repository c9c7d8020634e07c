"""`cupre demo` (the experiment runner on its embedded preset) end to end at toy sizes,
and the shipped pretrain config."""

from __future__ import annotations

from pathlib import Path

from cupre.config import PretrainConfig, load_yaml
from cupre.experiments.demo import PRESET, demo_config, run_demo
from cupre.train.pretrain import resolve_paths
from tests.helpers import REPO

ROOT = REPO


def tiny_demo():
    cfg = demo_config(device="cpu")
    cfg.synthetic_objects.images, cfg.synthetic_cells.images = 6, 12
    cfg.pretrain.warmup.iterations = 3
    cfg.pretrain.amt2.moco.optim.iterations = 2
    cfg.pretrain.amt2.coco.iterations = 2
    cfg.finetune.optim.iterations = 3
    cfg.eval_every = 3
    cfg.overlays.images = 1
    return cfg


def test_demo_runs_every_stage_and_prints_the_table(tmp_path, capsys):
    table = run_demo(tmp_path, cfg=tiny_demo())
    assert all(f"| {m} " in table for m in ("scratch", "coco", "cupre"))
    for method in ("scratch", "coco", "cupre"):
        assert (tmp_path / "cells" / method / "f0.1" / "s0" / "model.safetensors").is_file()
    assert (tmp_path / "table2.md").read_text().strip() == table.strip()
    assert table.strip() in capsys.readouterr().out
    for part in ("warmup/model.safetensors", "coco/model.safetensors", "amt2/model.safetensors"):
        assert (tmp_path / "pretrain" / part).is_file()
    assert (tmp_path / "data" / "cells" / "annotations.json").is_file()
    # a second run reuses every finished part
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.safetensors")}
    assert run_demo(tmp_path, cfg=tiny_demo()) == table
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.safetensors")} == before


def test_demo_preset_is_shipped_in_the_package_and_in_configs():
    assert PRESET.is_file() and (ROOT / "configs" / "demo.yaml").resolve() == PRESET
    cfg = demo_config()
    assert cfg.data[0].labeled == "{out}/data/cells/annotations.json" and cfg.methods == ["scratch", "coco", "cupre"]


def test_shipped_pretrain_config_parses():
    path = ROOT / "configs" / "pretrain-coco-mini.yaml"
    cfg = PretrainConfig.from_dict(resolve_paths(load_yaml(path), path.parent))
    assert cfg.coco[0].endswith("instances_train2017.json") and Path(cfg.coco[0]).is_absolute()
    assert cfg.amt2.rounds == 2 and cfg.detector.backbone == "resnet18"
