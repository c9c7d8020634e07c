"""`cupre experiment`: the Table II grid end to end on tiny synthetic data, resuming,
the table's statistics, the figures and the shipped configs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cupre.cli import main as cli_main
from cupre.data.synthetic import write_synthetic
from cupre.errors import CupreError
from cupre.experiments.config import ExperimentConfig, OverlayConfig, load_experiment
from cupre.experiments.grid import pretrain_config
from cupre.experiments.overlays import choose_images, outline
from cupre.experiments.table import format_table2, select_best
from tests.helpers import CONFIGS, TINY_DETECTOR, read_results_csv

METHODS = ["scratch", "coco", "cupre"]
FRACTIONS = [0.2, 0.5]
SEEDS = [0, 1]
DETECTOR = {**TINY_DETECTOR, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
            "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "detections_per_img": 30}


def _optim(iterations: int, batch: int) -> dict:
    return {"iterations": iterations, "batch_size": batch, "optimizer": "adamw", "lr": 1e-3,
            "warmup_iterations": 1, "crop_size": None}


def tiny_config(root: Path) -> Path:
    """Synthetic cells (10 images of 64 px) and a grid config using them."""
    write_synthetic("cells", root / "cells", n_images=10, size=64, seed=0)
    cfg = {
        "pretrain": {
            "detector": DETECTOR, "coco": [], "unlabeled": ["cells/images"], "warmup": _optim(2, 2),
            "amt2": {"rounds": 1, "coco": _optim(2, 2),
                     "moco": {"optim": {**_optim(2, 4), "crop_size": 32}, "dim": 16, "hidden_dim": 32,
                              "queue_size": 16}},
            "num_workers": 0,
        },
        "synthetic_objects": {"images": 6, "size": 64},  # the COCO stage is synthetic objects only
        "data": {"labeled": "cells/annotations.json", "partition": [0.6, 0.2, 0.2]},
        "fractions": FRACTIONS, "seeds": SEEDS, "methods": METHODS,
        "finetune": {"optim": _optim(2, 2), "num_workers": 0},
        "eval_every": 1, "device": "cpu", "overlays": {"images": 2, "methods": ["scratch", "cupre"]},
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grid")
    config = tiny_config(root)
    assert cli_main(["experiment", str(config), "-o", str(root / "out")]) == 0
    return config, root / "out"


def cell_dir(out: Path, method: str, fraction: float, seed: int) -> Path:
    return out / "cells" / method / f"f{fraction:g}" / f"s{seed}"


def model_mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("cells/*/*/*/model.safetensors"))}


def test_results_csv_has_every_evaluation(grid):
    _, out = grid
    rows = read_results_csv(out / "results.csv")
    got = {(r["method"], r["fraction"], r["seed"], r["split"], r["iteration"]) for r in rows}
    want = {(m, f, s, "val", i) for m in METHODS for f in FRACTIONS for s in SEEDS for i in (1, 2)}
    for m, f, s in itertools.product(METHODS, FRACTIONS, SEEDS):  # test: once, at the validation-chosen iteration
        chosen = json.loads((cell_dir(out, m, f, s) / "val_metrics.json").read_text())["best"]["iteration"]
        want.add((m, f, s, "test", chosen))
    assert got == want and len(rows) == len(want)
    assert {r["dataset"] for r in rows} == {"cells"}
    for r in rows:  # the CSV holds exactly what the cells' metric files say
        history = json.loads((cell_dir(out, r["method"], r["fraction"], r["seed"]) / "val_metrics.json").read_text())
        entry = next(h for h in history["history"] if h["iteration"] == r["iteration"])
        entry = entry if r["split"] == "val" else entry["test"]
        assert r["segm_AP"] == pytest.approx(entry["segm"]["AP"], abs=1e-6)
        assert r["bbox_AP50"] == pytest.approx(entry["bbox"]["AP50"], abs=1e-6)
        assert -1 <= r["bbox_AP"] <= 1


def test_splits_are_written_once_and_used_by_the_cells(grid):
    _, out = grid
    ids = {p: json.loads((out / "splits" / f"{p}.json").read_text())["image_ids"] for p in ("train", "val", "test")}
    assert sorted(sum(ids.values(), [])) == list(range(1, 11))  # disjoint and covering
    for seed in SEEDS:
        small, large = (set(json.loads((out / "splits" / f"f{f:g}-s{seed}.json").read_text())["image_ids"])
                        for f in FRACTIONS)
        assert small and small <= large <= set(ids["train"])
        for method in METHODS:
            used = json.loads((cell_dir(out, method, 0.2, seed) / "split.json").read_text())["image_ids"]
            assert set(used) == small
    cfg = yaml.safe_load((cell_dir(out, "coco", 0.5, 1) / "config.yaml").read_text())
    assert cfg["init"] == "coco" and cfg["seed"] == 1 and cfg["eval_every"] == 1
    assert cfg["detector"]["backbone"] == DETECTOR["backbone"] and cfg["val_split"].endswith("val.json")
    assert (out / "data" / "objects" / "annotations.json").is_file()  # synthetic_objects padding
    assert not (out / "pretrain" / "cells-moco").exists()  # not requested by `methods`


def test_table2_has_every_method_and_fraction(grid):
    _, out = grid
    text, per_kind = (out / "table2.md").read_text().split("### Test AP_bbox per imaging kind", 1)
    assert "20% AP_bbox" in text and "50% AP_segm" in text and "Test" in text
    assert per_kind.count("per imaging kind") == 3  # segm at 20%, bbox and segm at 50%
    for method in METHODS:
        lines = [line for line in text.splitlines() if line.startswith(f"| {method} |")]
        assert len(lines) == 3  # validation, test, chosen iterations
        cells = [c.strip() for c in lines[0].strip("|").split("|")[1:]]
        assert len(cells) == 4 and all("±" in c for c in cells)


def test_figures_are_pngs(grid):
    _, out = grid
    for name in ("fig3_ap_vs_iterations", "fig4_ap_vs_fraction", "fig6_ablations", "fig8_overlays"):
        with Image.open(out / "figures" / f"{name}.png") as im:
            im.load()
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    with Image.open(out / "figures" / "fig8_overlays.png") as im:
        assert im.width == 3 * OverlayConfig().panel_size  # ground truth + two methods


def test_rerun_skips_finished_cells(grid):
    config, out = grid
    before = model_mtimes(out)
    splits = {p: p.read_bytes() for p in (out / "splits").glob("*.json")}
    csv_before = (out / "results.csv").read_text()
    assert len(before) == len(METHODS) * len(FRACTIONS) * len(SEEDS)
    assert cli_main(["experiment", str(config), "-o", str(out)]) == 0
    assert model_mtimes(out) == before
    assert {p: p.read_bytes() for p in (out / "splits").glob("*.json")} == splits
    assert (out / "results.csv").read_text() == csv_before


def test_interrupted_cell_is_the_only_one_rerun(grid):
    config, out = grid
    victim = cell_dir(out, "cupre", 0.5, 1)
    assert not (victim / "state.pt").exists()  # a finished cell keeps its model, not its training state
    for name in ("val_metrics.json", "model.safetensors"):
        (victim / name).unlink()
    before = model_mtimes(out)
    assert cli_main(["experiment", str(config), "-o", str(out)]) == 0
    after = model_mtimes(out)
    assert (victim / "model.safetensors") in after and (victim / "val_metrics.json").is_file()
    assert {p: t for p, t in after.items() if p != victim / "model.safetensors"} == before
    rows = read_results_csv(out / "results.csv")
    assert sum(r["method"] == "cupre" and r["fraction"] == 0.5 and r["seed"] == 1 for r in rows) == 3  # 2 val + 1 test


def test_dry_run_writes_nothing(grid, tmp_path, capsys):
    config, _ = grid
    assert cli_main(["experiment", str(config), "-o", str(tmp_path / "new"), "--dry-run"]) == 0
    assert not (tmp_path / "new").exists()
    assert capsys.readouterr().out.count(": to run") == len(METHODS) * len(FRACTIONS) * len(SEEDS)


def test_bad_configs_fail_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("fractionz: [0.1]\ndata: {labeled: x.json}\n")
    with pytest.raises(CupreError) as err:
        load_experiment(path)
    assert "fractionz" in str(err.value) and "valid keys" in str(err.value) and "fractions" in str(err.value)
    assert cli_main(["experiment", str(path), "-o", str(tmp_path / "o")]) == 2
    assert "fractionz" in capsys.readouterr().err
    path.write_text("data: {labeled: x.json}\nfinetune: {seed: 3}\n")
    with pytest.raises(CupreError, match="finetune.seed is set by the experiment runner"):
        load_experiment(path)
    path.write_text("data: {labeled: x.json, partition: [1.0]}\n")
    with pytest.raises(CupreError, match="validation set"):
        load_experiment(path)
    path.write_text("data: {labeled: x.json}\nmethods: [scratch, moco]\n")
    with pytest.raises(CupreError, match="'moco' is not one of"):
        load_experiment(path)


def test_pretrain_parts_follow_the_methods(tmp_path):
    cfg = ExperimentConfig.from_dict({"synthetic_objects": {"images": 5}, "pretrain": {"coco": ["c.json"]}})
    assert pretrain_config(cfg, ["scratch"], tmp_path, []) is None
    pre = pretrain_config(cfg, ["scratch", "cells-moco", "cupre"], tmp_path, [])
    assert pre.cells_moco and not pre.nol2sp and not pre.coco_baseline
    assert pre.coco == ["c.json", str(tmp_path / "data" / "objects" / "annotations.json")]
    assert pretrain_config(cfg, ["cupre-nol2sp"], tmp_path, []).nol2sp
    assert pretrain_config(cfg, ["coco"], tmp_path, []).coco_baseline  # the fair COCO baseline is trained
    coco_pp = pretrain_config(cfg, ["coco++"], tmp_path, [])
    assert coco_pp.cells_moco and coco_pp.coco_baseline  # coco++: the Cells-MoCo backbone on the COCO model


def _row(method, seed, iteration, split, bbox, segm):
    return {"dataset": "d", "method": method, "fraction": 0.1, "seed": seed, "iteration": iteration,
            "split": split, "bbox_AP": bbox, "segm_AP": segm}


def test_table_selects_on_validation_and_averages_seeds():
    rows = []
    for seed, (early, late) in enumerate([(0.30, 0.20), (0.10, 0.40), (0.50, 0.50)]):
        rows += [_row("cupre", seed, 100, "val", 0.9, early), _row("cupre", seed, 200, "val", 0.0, late)]
        rows += [_row("cupre", seed, 100, "test", 0.60 + 0.1 * seed, 0.05), _row("cupre", seed, 200, "test", 0.2, 0.05)]
    best = select_best(rows, "segm_AP")
    assert [best["d", "cupre", 0.1, s]["iteration"] for s in range(3)] == [100, 200, 100]  # tie: earliest
    text = format_table2(rows, methods=["cupre"], select_by="segm_AP")
    val, test, its = [line for line in text.splitlines() if line.startswith("| cupre |")]
    # segm at the chosen iterations: 30, 40, 50 -> 40.0 ± 10.0; bbox there: 90, 0, 90
    assert "| 60.0 ± 52.0 | 40.0 ± 10.0 |" in val
    assert "| 53.3 ± 30.6 | 5.0 ± 0.0 |" in test  # test bbox at the chosen iterations: 60, 20, 80
    assert "100 / 200 / 100" in its


def test_outline_and_image_choice():
    image = np.zeros((9, 9, 3), dtype=np.uint8)
    mask = np.zeros((1, 9, 9), dtype=bool)
    mask[0, 2:7, 2:7] = True
    drawn = outline(image, mask, (255, 0, 255))
    painted = drawn.any(axis=2)
    ring = mask[0] & ~np.pad(mask[0, 1:-1, 1:-1] & mask[0, :-2, 1:-1] & mask[0, 2:, 1:-1]
                             & mask[0, 1:-1, :-2] & mask[0, 1:-1, 2:], 1)
    assert np.array_equal(painted, ring) and painted.sum() == 16

    class Rec:
        def __init__(self, i, t):
            self.image_id, self.cell_type = i, t

    recs = [Rec(1, "a"), Rec(2, "a"), Rec(3, "b"), Rec(4, "a"), Rec(5, "c")]
    assert choose_images(recs, 4) == [1, 3, 5, 4]  # each type first, then spread within a type
    untyped = [Rec(i, None) for i in range(1, 10)]  # a folder sorted by name: bright_*, colour_*, fluo_*
    assert choose_images(untyped, 3) == [1, 9, 5]


def test_paper_config_parses_and_builds():
    from cupre.models.detector import CupreDetector, build_detector

    cfg = load_experiment(CONFIGS / "paper-livecell.yaml")
    det = cfg.pretrain.detector
    assert (det.arch, det.backbone) == ("cascade", "resnest200e")
    warmup = cfg.pretrain.warmup
    assert cfg.pretrain.amt2.rounds == 10 and warmup.iterations * warmup.batch_size >= 4 * 118_000
    assert [d.name for d in cfg.data] == ["livecell", "bbbc038"]
    assert cfg.fractions == [0.05, 0.1, 0.15, 0.2] and cfg.data[1].partition == (0.8, 0.1, 0.1)
    assert cfg.data[0].test.endswith("livecell_coco_test.json") and len(cfg.methods) == 7
    assert len(cfg.pretrain.unlabeled) >= 9 and all(Path(p).is_absolute() for p in cfg.pretrain.unlabeled)
    # BBBC038 is the paper's external validation: never an unlabeled source of pre-training
    assert not any("bbbc038" in p.lower() for p in cfg.pretrain.unlabeled)
    assert isinstance(build_detector(det), CupreDetector)


def test_bbbc038_configs_point_at_the_shared_data(shared_data):
    for name, methods in (("bbbc038-fewshot", 7), ("bbbc038-cpu", 5), ("bbbc038-transfer-cpu", 5)):
        cfg = load_experiment(CONFIGS / f"{name}.yaml")
        assert Path(cfg.data[0].labeled).resolve() == (shared_data / "bbbc038" / "stage1_train").resolve()
        assert all(Path(p).exists() for p in cfg.pretrain.coco + cfg.pretrain.unlabeled)
        assert len(cfg.methods) == methods


def test_validation_and_test_images_never_reach_moco(tmp_path):
    from cupre.data.unlabeled import UnlabeledImages
    from cupre.experiments.grid import prepare_target

    write_synthetic("cells", tmp_path / "cells", n_images=10, size=64, seed=0)
    labeled = str(tmp_path / "cells" / "annotations.json")
    cfg = ExperimentConfig.from_dict({"data": [{"labeled": labeled, "partition": [0.6, 0.2, 0.2]}],
                                      "fractions": [0.5], "seeds": [0],
                                      "pretrain": {"coco": ["c.json"], "unlabeled": [str(tmp_path / "cells")]}})
    target = prepare_target(cfg, cfg.data[0], tmp_path / "exp", single=True, write=True)
    sizes = [len(json.loads((tmp_path / "exp" / "splits" / f"{p}.json").read_text())["image_ids"])
             for p in ("val", "test")]
    assert len(target.held_out) == sum(sizes) == 4
    pre = pretrain_config(cfg, ["cupre"], tmp_path / "exp", [target])
    assert sorted(pre.exclude) == sorted(target.held_out)
    seen = {str(f) for f, _ in UnlabeledImages(pre.unlabeled, exclude=pre.exclude).items}
    assert len(seen) == 6 and not seen & set(target.held_out)  # the training part stays: CUPre's premise


def test_parallel_cells_match_the_sequential_run(grid, tmp_path, capsys):
    """Two worker processes on one thread each: the same cells, the same scores (up to the
    rounding a different thread count makes)."""
    config, out = grid
    args = ["experiment", str(config), "-o", str(tmp_path / "par"), "--only-method", "scratch", "--parallel", "2"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "4 cells to run, 2 at a time on" in printed
    done = [line for line in printed.splitlines() if ": done after" in line]  # where each cell's time went
    assert len(done) == 4 and all(all(f"{k} " in line for k in ("training", "val", "test")) for line in done)
    key = ("method", "fraction", "seed", "split", "iteration")
    ours = {tuple(r[k] for k in key): r for r in read_results_csv(tmp_path / "par" / "results.csv")}
    theirs = {tuple(r[k] for k in key): r for r in read_results_csv(out / "results.csv") if r["method"] == "scratch"}
    assert ours.keys() == theirs.keys() and len(ours) == 4 * 3  # 2 val + 1 test per cell
    for k, r in ours.items():
        assert r["bbox_AP"] == pytest.approx(theirs[k]["bbox_AP"], abs=0.02), k
        assert r["segm_AP"] == pytest.approx(theirs[k]["segm_AP"], abs=0.02), k
    assert cli_main(["experiment", str(config), "-o", str(tmp_path / "par"), "--parallel", "0"]) == 2


def test_ctrl_c_stops_parallel_cells_cleanly_and_keeps_their_checkpoints(tmp_path):
    """Ctrl-C in a terminal signals the whole process group: `cupre experiment --parallel 2`
    and its cell processes. It exits 130 with one line, no traceback and no warning about
    leaked semaphores, and each interrupted cell keeps its state.pt to resume from."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tiny_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["finetune"]["optim"]["iterations"] = 10_000  # still training when the signal comes
    cfg["finetune"]["checkpoint_every"], cfg["eval_every"] = 2, 10_000
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cupre.cli", "experiment", str(config), "-o", str(out), "--only-method", "scratch",
            "--parallel", "2", "--threads", "2"]
    with open(tmp_path / "stderr.txt", "w") as err:
        run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal
        try:
            deadline = time.monotonic() + 120
            while len(list(out.glob("cells/scratch/*/*/state.pt"))) < 2 and run.poll() is None:
                assert time.monotonic() < deadline, "the cells never checkpointed"
                time.sleep(0.2)
            os.killpg(run.pid, signal.SIGINT)
            run.wait(timeout=60)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert run.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr and "leaked" not in stderr, stderr[-2000:]
    assert len(list(out.glob("cells/scratch/*/*/state.pt"))) == 2 and not list(out.rglob("model.safetensors"))


def test_cpu_cells_fork_from_a_server_and_gpu_cells_start_afresh():
    import multiprocessing

    import torch

    from cupre.devices import device_kind
    from cupre.experiments.parallel import _context

    assert device_kind("cpu") == "cpu" and device_kind("cuda:1") == "cuda"
    assert device_kind("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert _context(on_cpu=False).get_start_method() == "spawn"  # CUDA never meets a forked process
    fork_server = "forkserver" in multiprocessing.get_all_start_methods()
    assert _context(on_cpu=True).get_start_method() == ("forkserver" if fork_server else "spawn")


def test_a_failing_parallel_cell_is_named_and_stops_the_grid(tmp_path):
    from cupre.config import FinetuneConfig
    from cupre.experiments.parallel import run_cells

    bad = FinetuneConfig.from_dict({"init": "scratch", "train": str(tmp_path / "missing.json"), "device": "cpu"})
    finished = []
    with pytest.raises(CupreError, match=r"cell .*c1: .*missing\.json"):
        run_cells([("a", bad, tmp_path / "c1", None)], parallel=2, threads=1, on_done=finished.append)
    assert finished == []


def test_transfer_recipe_tests_on_whole_acquisitions_and_shows_their_images_transductively(shared_data, tmp_path):
    from cupre.data.formats import open_dataset
    from cupre.experiments.grid import image_group, prepare_target
    from cupre.experiments.runner import protocol

    labeled = str(shared_data / "bbbc038" / "stage1_train")
    group = "gray_brightbg-1024x1024"
    base = {"data": [{"labeled": labeled, "partition": [0.8, 0.2], "test_groups": [group]}], "fractions": [0.05],
            "seeds": [0], "pretrain": {"coco": ["c.json"], "unlabeled": [labeled]}}
    for transductive in (False, True):
        base["data"][0]["transductive"] = transductive
        cfg = ExperimentConfig.from_dict(base)
        target = prepare_target(cfg, cfg.data[0], tmp_path / f"exp{transductive}", single=True, write=True)
        split = {p: json.loads((tmp_path / f"exp{transductive}" / "splits" / f"{p}.json").read_text())["image_ids"]
                 for p in ("train", "val", "test")}
        records = {r.image_id: r for r in open_dataset(labeled, class_agnostic=True).records}
        assert split["test"] and all(image_group(records[i]) == group for i in split["test"])
        assert not any(image_group(records[i]) == group for i in split["train"] + split["val"])
        pre = pretrain_config(cfg, ["cupre"], tmp_path, [target])
        test_files = {str(records[i].file) for i in split["test"]}
        val_files = {str(records[i].file) for i in split["val"]}
        assert val_files <= set(pre.exclude)  # validation never reaches pre-training
        assert (test_files <= set(pre.exclude)) != transductive  # the test images only where transductive
        assert pre.unlabeled == [labeled]  # already a source: not listed twice
        assert ("transductive" in protocol(cfg)) == transductive and group in protocol(cfg)
    with pytest.raises(CupreError, match="test group"):
        base["data"][0]["test_groups"] = ["fluo_gray-1x1"]
        cfg = ExperimentConfig.from_dict(base)
        prepare_target(cfg, cfg.data[0], tmp_path / "bad", single=True, write=False)


def test_pretraining_per_seed_has_its_own_folder_and_seed(tmp_path):
    from cupre.experiments.grid import pretrain_dirs

    cfg = ExperimentConfig.from_dict({"synthetic_objects": {"images": 5}, "pretrain": {"coco": ["c.json"]},
                                      "seeds": [0, 3]})
    assert pretrain_dirs(cfg, tmp_path) == {0: tmp_path / "pretrain", 3: tmp_path / "pretrain"}
    assert pretrain_config(cfg, ["cupre"], tmp_path, []).seed == cfg.pretrain.seed
    cfg.pretrain_per_seed = True
    assert pretrain_dirs(cfg, tmp_path) == {0: tmp_path / "pretrain" / "s0", 3: tmp_path / "pretrain" / "s3"}
    assert pretrain_config(cfg, ["cupre"], tmp_path, [], seed=3).seed == 3


def test_table_pairs_each_method_with_coco_and_scratch_seed_by_seed():
    rows = []
    for seed, (scratch, coco, cupre) in enumerate([(0.20, 0.25, 0.30), (0.10, 0.20, 0.26), (0.30, 0.31, 0.40)]):
        for method, value in (("scratch", scratch), ("coco", coco), ("cupre", cupre)):
            rows += [_row(method, seed, 100, "val", value, value), _row(method, seed, 100, "test", value, value)]
    text = format_table2(rows, methods=["scratch", "coco", "cupre"], select_by="segm_AP")
    # cupre - coco per seed: 5, 6, 9 -> 6.7 ± 2.1; cupre - scratch: 10, 16, 10 -> 12.0 ± 3.5
    assert "| cupre − coco | 6.7 ± 2.1 | 6.7 ± 2.1 |" in text
    assert "| cupre − scratch | 12.0 ± 3.5 | 12.0 ± 3.5 |" in text
    assert "| coco − scratch | 5.3 ± 4.5 |" in text


def test_a_self_training_method_starts_from_its_teachers_cell(tmp_path):
    config = tiny_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg.update(methods=["cupre+st"], fractions=[0.5], seeds=[0], overlays={"images": 0},
               finetune={**cfg["finetune"], "self_train": {"keep_score": 0.0, "agree_iou": 0.0,
                                                           "uncertain_score": 0.0}})
    config.write_text(yaml.safe_dump(cfg))
    assert cli_main(["experiment", str(config), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    teacher, learner = cell_dir(out, "cupre", 0.5, 0), cell_dir(out, "cupre+st", 0.5, 0)
    assert (teacher / "model.safetensors").is_file()  # the cell it starts from ran first
    assert json.loads((learner / "val_metrics.json").read_text())["selftrain"]["rounds"]
    pseudo = json.loads((learner / "round1" / "pseudo_labels.json").read_text())
    never = set()
    for part in ("val", "test", "f0.5-s0"):
        never |= set(json.loads((out / "splits" / f"{part}.json").read_text())["image_ids"])
    names = {Path(i["file_name"]).name for i in pseudo["images"]}
    assert names and not names & {f"{i:06d}.png" for i in never}  # only the train part's unlabeled images
    table = (out / "table2.md").read_text()
    assert "| cupre+st |" in table and "| cupre+st − cupre |" in table
    assert {r["method"] for r in read_results_csv(out / "results.csv")} == {"cupre", "cupre+st"}


def test_figures_without_a_second_point_or_seed_are_not_drawn(tmp_path):
    """One fraction: no AP-vs-fraction curve; one seed: no ablation bars (no spread);
    one validation pass per cell: no AP-vs-iteration curve."""
    from cupre.experiments.plots import make_figures
    from cupre.experiments.table import METRICS

    def rows(seeds, iterations):
        return [{"dataset": "d", "method": m, "fraction": 0.1, "seed": s, "iteration": it, "split": "val",
                 **{k: 0.1 * (1 + s) + 0.01 * it for k in METRICS}}
                for m in ("coco", "cupre-nol2sp") for s in seeds for it in iterations]

    assert make_figures(rows([0], [10]), tmp_path / "a", methods=["coco", "cupre-nol2sp"]) == []
    written = make_figures(rows([0, 1], [10, 20]), tmp_path / "b", methods=["coco", "cupre-nol2sp"])
    assert sorted(p.name for p in written) == ["fig3_ap_vs_iterations.png", "fig6_ablations.png"]
