"""`cupre demo` (the experiment runner on its embedded preset) end to end at toy sizes,
and the shipped pretrain config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cupre.config import PretrainConfig, load_yaml
from cupre.experiments.config import load_experiment
from cupre.experiments.demo import PRESET, PRESETS, SYNTHETIC, demo_config, run_demo
from cupre.train.pretrain import resolve_paths
from tests.helpers import REPO

ROOT = REPO


def tiny(cfg):
    cfg.synthetic_objects.images = 6
    cfg.pretrain.warmup.iterations = 3
    cfg.pretrain.amt2.moco.optim.iterations = 2
    cfg.pretrain.amt2.coco.iterations = 2
    cfg.finetune.optim.iterations = 3
    cfg.eval_every = 3
    cfg.overlays.images = 1
    detector = cfg.pretrain.detector  # fewer proposals and detections: the held-out images predict in a blink
    detector.backbone = "test_resnet"  # timm's narrow test ResNet: each step and model file a fraction of R18's
    detector.rpn_pre_nms_top_n_test, detector.rpn_post_nms_top_n_test, detector.detections_per_img = 100, 50, 30
    return cfg


def tiny_demo(**kwargs):
    cfg = tiny(demo_config(synthetic=True, device="cpu", **kwargs))
    cfg.synthetic_cells.images = 12
    return cfg


def test_the_real_nuclei_demo_scores_held_out_images_and_writes_its_report(tmp_path, capsys, monkeypatch):
    """`cupre demo` through the command line, its schedule cut to a few steps: the embedded
    nuclei (5 annotated, 3 validation, 9 test images); MoCo sees the annotated and
    unlabeled images only; the report holds the table and the overlays."""
    import base64

    import cupre.experiments.demo as demo
    import cupre.shipped
    from cupre.cli import main

    shipped = demo.demo_config
    monkeypatch.setattr(demo, "demo_config", lambda **kw: tiny(shipped(**kw)))
    monkeypatch.setattr(cupre.shipped, "PACKAGE", tmp_path / "no-models")  # an install without the nuclei model
    assert main(["demo", "-o", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("cupre's nuclei model, no training: skipped, the model is not in this install") == 1

    assert "nuclei (shipped)" not in (tmp_path / "table2.md").read_text()
    table = (tmp_path / "table2.md").read_text()
    assert "test part = a separate set" in table and all(f"| {m} " in table for m in ("scratch", "coco", "cupre"))
    assert json.loads((tmp_path / "splits" / "f1-s0.json").read_text())["image_ids"] == [1, 2, 3, 4, 5]
    pretrain = yaml.safe_load((tmp_path / "pretrain" / "config.yaml").read_text())
    held_out = {p.name for part in ("validation", "test") for p in (PRESETS / "nuclei" / part).glob("*.png")
                if not p.stem.endswith("_masks")}
    assert {Path(f).name for f in pretrain["exclude"]} == held_out and len(held_out) == 12
    page = (tmp_path / "report.html").read_text()
    assert "Where the time went" in page and "pre-training (pretrain)" in page and "cupre f1 s0: training" in page
    [png] = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)  # the overlays; one point: no curve
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report.html" in out and "What the demo found" in out and "wall clock" in out
    assert not list(tmp_path.rglob("state.pt"))  # finished parts keep their models, not their training states


def test_demo_runs_every_stage_and_prints_the_table(tmp_path, capsys):
    table = run_demo(tmp_path, cfg=tiny_demo(keep_checkpoints=True))
    assert all(f"| {m} " in table for m in ("scratch", "coco", "cupre"))
    for method in ("scratch", "coco", "cupre"):
        assert (tmp_path / "cells" / method / "f0.1" / "s0" / "model.safetensors").is_file()
    assert (tmp_path / "table2.md").read_text().strip() == table.strip()
    out = capsys.readouterr().out  # the summary, not the paper's table: the figures of each row, in words
    assert re.search(r"AP x100 on \d+ validation images \(no test part\)", out) and "SYNTHETIC" in out
    assert all(re.search(rf"\| {m}: \d+ labels", out) for m in ("scratch", "coco", "cupre"))
    assert "cupre's nuclei model" not in out.split("What the demo found")[1]  # no shipped model scored here
    for part in ("warmup/model.safetensors", "coco/model.safetensors", "amt2/model.safetensors"):
        assert (tmp_path / "pretrain" / part).is_file()
    assert (tmp_path / "data" / "cells" / "annotations.json").is_file()
    states = {p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("state.pt")}
    assert {"pretrain/warmup", "pretrain/amt2", "pretrain/coco", "cells/cupre/f0.1/s0"} <= states  # kept
    # a second run reuses every finished part
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.safetensors")}
    assert run_demo(tmp_path, cfg=tiny_demo(keep_checkpoints=True)) == table
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.safetensors")} == before


def test_demo_presets_are_shipped_in_the_package_and_in_configs():
    assert PRESET.is_file() and (ROOT / "configs" / "demo.yaml").resolve() == PRESET
    assert SYNTHETIC.is_file() and (ROOT / "configs" / "demo-synthetic.yaml").resolve() == SYNTHETIC
    cfg = demo_config(synthetic=True)
    assert cfg.data[0].labeled == "{out}/data/cells/annotations.json" and cfg.methods == ["scratch", "coco", "cupre"]
    real = load_experiment(ROOT / "configs" / "demo.yaml")  # a linked preset reads its data beside its target
    assert real.data[0].labeled == str(PRESETS / "nuclei" / "annotated")


def test_the_embedded_nuclei_are_small_licensed_and_of_every_kind():
    files = [p for p in (PRESETS / "nuclei").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 3_000_000
    assert "CC0" in (PRESETS / "nuclei" / "README.md").read_text()
    for part, count in (("annotated", 5), ("unlabeled", 12), ("validation", 3), ("test", 9)):
        images = [p for p in (PRESETS / "nuclei" / part).glob("*.png") if not p.stem.endswith("_masks")]
        assert len(images) == count and {p.name.split("_")[0] for p in images} == {"fluo", "colour", "bright"}
        assert all((p.parent / f"{p.stem}_masks.png").is_file() == (part != "unlabeled") for p in images)


def test_shipped_pretrain_config_parses():
    path = ROOT / "configs" / "pretrain-coco-mini.yaml"
    cfg = PretrainConfig.from_dict(resolve_paths(load_yaml(path), path.parent))
    assert cfg.coco[0].endswith("instances_train2017.json") and Path(cfg.coco[0]).is_absolute()
    assert cfg.amt2.rounds == 2 and cfg.detector.backbone == "resnet18"


def test_the_demo_scores_the_shipped_model_first_and_says_what_each_row_is(tmp_path, capsys, monkeypatch):
    """With a nuclei model in the install (a tiny stand-in), the demo scores it on the held-out
    images before anything trains; it is the first row of the table, of the summary and of
    the overlays, and the summary says what each row is, what AP means, the caveat, where the
    models are, the next commands and the wall time."""
    from PIL import Image

    from cupre.experiments.config import OverlayConfig
    from tests.helpers import install_shipped_model

    install_shipped_model(monkeypatch, tmp_path / "package")
    cfg = tiny(demo_config(device="cpu"))
    out = tmp_path / "demo"
    run_demo(out, cfg=cfg)
    printed = capsys.readouterr().out
    scored = printed.index("cupre's nuclei model, no training: test AP_bbox")
    assert scored < printed.index("experiment: pre-training pretrain done") < printed.index("What the demo found")
    summary = printed[printed.index("## What the demo found"):]
    table = [line for line in summary.splitlines() if line.startswith("| ") and "AP_bbox" not in line]
    assert [line.split("|")[1].strip() for line in table] == [
        "cupre's nuclei model, no training", "scratch: 5 labels, random start",
        "coco: 5 labels, from the object warm-up", "cupre: 5 labels, from CUPre pre-training"]
    assert "AP x100 on 9 held-out test images" in summary and "What AP means" in summary
    assert "differences of a few AP" in summary and "cupre predict IMAGES -o OUT" in summary
    assert "cupre train --labels" in summary and str(out / "cells" / "cupre" / "f1" / "s0") in summary
    assert re.search(r"This run took \d+ (s|min)", summary)
    t2 = (out / "table2.md").read_text()
    assert t2.index("| nuclei (shipped) |") < t2.index("| scratch |")
    metrics = json.loads((out / "shipped" / "nuclei" / "val_metrics.json").read_text())
    assert metrics["best"]["iteration"] == 0 and "test" in metrics["best"] and metrics["shipped"]
    assert (out / "shipped" / "nuclei" / "predictions_test.json").is_file()
    assert not (out / "shipped" / "nuclei" / "model.safetensors").exists()  # the package's own file is scored
    with Image.open(out / "figures" / "fig8_overlays.png") as im:  # ground truth, shipped, three methods
        assert im.width == 5 * OverlayConfig().panel_size
    page = (out / "report.html").read_text()
    assert page.index("What the demo found") < page.index("fig8") < page.index("The full tables")
    assert "wall time of this run" in page and "nuclei (shipped): val" in page
    # a second run scores nothing again
    run_demo(out, cfg=cfg)
    assert "cupre's nuclei model, no training: scored before" in capsys.readouterr().out
