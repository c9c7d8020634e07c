"""`cupre demo` end to end at toy sizes, and the shipped pretrain config."""

from __future__ import annotations

import copy
from pathlib import Path

from cupre.config import PretrainConfig, load_yaml
from cupre.experiments.demo import DEMO, run_demo
from cupre.train.pretrain import resolve_paths

ROOT = Path(__file__).resolve().parents[1]


def tiny_demo() -> dict:
    d = copy.deepcopy(DEMO)
    d["objects"]["n_images"], d["cells"]["n_images"] = 8, 20
    d["pretrain"]["warmup"]["iterations"] = 3
    d["pretrain"]["amt2"]["moco"]["optim"]["iterations"] = 2
    d["pretrain"]["amt2"]["coco"]["iterations"] = 2
    d["finetune"]["optim"]["iterations"] = 3
    d["finetune"]["eval_every"] = 3
    return d


def test_demo_runs_every_stage_and_prints_the_table(tmp_path, capsys):
    table = run_demo(tmp_path, demo=tiny_demo(), device="cpu")
    assert set(table) == {"scratch", "coco", "cupre"}
    for init, metrics in table.items():
        assert 0.0 <= metrics["bbox"]["AP"] <= 1.0 and 0.0 <= metrics["segm"]["AP"] <= 1.0
        assert (tmp_path / "finetune" / init / "model.pt").is_file()
    text = (tmp_path / "results.md").read_text()
    assert all(f"| {init} |" in text for init in table)
    assert "| init |" in capsys.readouterr().out
    for part in ("warmup/model.pt", "coco/model.pt", "amt2/model.pt"):
        assert (tmp_path / "pretrain" / part).is_file()
    # a second run reuses every finished part
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.pt")}
    assert run_demo(tmp_path, demo=tiny_demo(), device="cpu") == table
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.pt")} == before


def test_shipped_pretrain_config_parses():
    path = ROOT / "configs" / "pretrain-coco-mini.yaml"
    cfg = PretrainConfig.from_dict(resolve_paths(load_yaml(path), path.parent))
    assert cfg.coco[0].endswith("instances_train2017.json") and Path(cfg.coco[0]).is_absolute()
    assert cfg.amt2.rounds == 2 and cfg.detector.backbone == "resnet18"
