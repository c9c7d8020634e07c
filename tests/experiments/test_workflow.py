"""`cupre train`: the whole path (COCO stage, AMT2, fine-tuning, masks) in one command on
tiny synthetic data; held-out validation only from enough labels; a second run continues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tifffile
import yaml

from cupre.cli import main as cli_main
from cupre.config import load_yaml
from cupre.data.synthetic import write_synthetic
from cupre.errors import CupreError
from cupre.experiments.workflow import PRESET_NAMES, load_workflow, preset_path
from tests.helpers import CONFIGS, TINY_DETECTOR

DETECTOR = {**TINY_DETECTOR, "object_size": 10, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
            "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "detections_per_img": 30}


def _optim(iterations: int, batch: int) -> dict:
    return {"iterations": iterations, "batch_size": batch, "optimizer": "adamw", "lr": 1e-3,
            "warmup_iterations": 1, "crop_size": None}


def tiny_workflow(root: Path) -> Path:
    cfg = {
        "synthetic_objects": {"images": 6, "size": 64},
        "pretrain": {"detector": DETECTOR, "warmup": _optim(2, 2),
                     "amt2": {"rounds": 1, "coco": _optim(2, 2),
                              "moco": {"optim": {**_optim(2, 4), "crop_size": 32}, "dim": 16, "hidden_dim": 32,
                                       "queue_size": 16}},
                     "num_workers": 0},
        "finetune": {"optim": _optim(3, 2), "eval_every": 2, "num_workers": 0,
                     "self_train": {"without_validation": True}},  # 4 labels: no validation part
        "timing": {"machine": "test", "warmup": 1.0, "finetune": 1.0},
        "self_train": True,
        "device": "cpu",
    }
    path = root / "workflow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workflow")
    write_synthetic("cells", root / "labeled", n_images=4, size=64, seed=1)
    write_synthetic("cells", root / "unlabeled", n_images=3, size=64, seed=2)
    write_synthetic("cells", root / "many", n_images=12, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def few(data) -> tuple[Path, str]:
    run = data / "run-few"
    args = ["train", "--config", str(tiny_workflow(data)), "--labels", str(data / "labeled" / "annotations.json"),
            "--unlabeled", str(data / "unlabeled" / "images"), "-o", str(run)]
    assert cli_main(args) == 0
    return run, " ".join(args)


def test_one_command_makes_a_model_and_masks_for_the_unlabeled_images(few):
    run, _ = few
    assert (run / "pretrain" / "amt2" / "model.safetensors").is_file()
    assert (run / "data" / "objects" / "annotations.json").is_file()  # no --coco: synthetic objects
    assert (run / "finetune" / "model.safetensors").is_file()
    labels = sorted((run / "masks").glob("*_masks.tif"))
    assert len(labels) == 3
    assert tifffile.imread(labels[0]).shape == (64, 64)
    info = json.loads((run / "masks" / "images.json").read_text())
    assert len(info["images"]) == 3 and not info["failed"]
    summary = json.loads((run / "finetune" / "selftrain" / "summary.json").read_text())  # self-training by default
    assert (run / "finetune" / "selftrain" / "model.safetensors").is_file() and not summary["checked_on_validation"]
    pseudo = json.loads((run / "finetune" / "selftrain" / "round1" / "pseudo_labels.json").read_text())
    assert len(pseudo["images"]) == 3  # the unlabeled images, never the labeled ones


def test_self_training_runs_when_asked_checked_and_within_the_time_limit(data):
    from cupre.experiments.workflow import self_train_plan

    cfg = load_workflow(tiny_workflow(data), labels="x", unlabeled=[str(data / "unlabeled" / "images")])
    plan = {"pretrain": 600.0, "finetune": 600.0, "self-training": 900.0}
    assert self_train_plan(cfg, plan, has_val=True)[0]
    assert self_train_plan(cfg, plan, has_val=False)[0]  # the tiny preset says: even unchecked
    assert not load_workflow(preset_path("cpu"), labels="x", unlabeled=["y"]).self_train  # opt-in: --self-train
    unchecked = cfg.finetune.replace(self_train=cfg.finetune.self_train.replace(without_validation=False))
    on, why = self_train_plan(cfg.replace(finetune=unchecked), plan, has_val=False)
    assert not on and "validation" in why
    assert not self_train_plan(cfg.replace(self_train=False), plan, has_val=True)[0]
    assert not self_train_plan(cfg.replace(unlabeled=[]), plan, has_val=True)[0]
    on, why = self_train_plan(cfg.replace(self_train_within_minutes=30.0), plan, has_val=True)
    assert not on and "35 min" in why and "30 min" in why
    assert self_train_plan(cfg.replace(self_train_within_minutes=40.0), plan, has_val=True)[0]


def test_few_labels_hold_nothing_out_and_the_run_says_so(few, capsys):
    run, _ = few
    train = json.loads((run / "splits" / "train.json").read_text())
    assert len(train["image_ids"]) == 4 and not (run / "splits" / "val.json").exists()
    ft = load_yaml(run / "finetune" / "config.yaml")
    assert ft["init"] == "cupre" and ft["val"] is None
    assert ft["detector"]["object_size"] == 10  # the preset's detector reaches fine-tuning


def test_a_second_run_continues_without_training_again(few, capsys):
    run, command = few
    model = run / "finetune" / "model.safetensors"
    before = model.stat().st_mtime_ns
    assert cli_main(command.split()) == 0
    assert model.stat().st_mtime_ns == before
    assert "estimated" in capsys.readouterr().out


def test_other_inputs_into_the_same_folder_are_refused_other_settings_continue_as_saved(few, data):
    from cupre.experiments.workflow import continued, run_workflow

    run, _ = few
    with pytest.raises(CupreError, match="holds a run on other labels"):
        cfg = load_workflow(tiny_workflow(data), labels=str(data / "many" / "annotations.json"))
        run_workflow(cfg, run)
    same = load_workflow(tiny_workflow(data), labels=str(data / "labeled" / "annotations.json"),
                         unlabeled=[str(data / "unlabeled" / "images")], precision="fp32")
    edited = same.replace(finetune=same.finetune.replace(eval_every=7))  # e.g. a preset changed since
    kept = continued(edited, run)
    assert kept.finetune.eval_every == 2 and kept.precision == "fp32"


def test_enough_labels_hold_out_a_validation_part_kept_out_of_moco(data, tmp_path):
    from cupre.experiments.workflow import finetune_config, hold_out, pretrain_config

    cfg = load_workflow(tiny_workflow(data), labels=str(data / "many" / "annotations.json"),
                        unlabeled=[str(data / "unlabeled" / "images")])
    train, val, held = hold_out(cfg, tmp_path)
    assert len(val) >= 2 and len(train) + len(val) == 12 and not set(train) & set(val)
    assert len(held) == len(val)
    pre = pretrain_config(cfg, tmp_path, held)
    assert sorted(pre.exclude) == sorted(held) and cfg.labels in pre.unlabeled
    ft = finetune_config(cfg, tmp_path, has_val=True)
    assert ft.val == cfg.labels and ft.val_split == str(tmp_path / "splits" / "val.json")


def test_missing_inputs_are_one_line_before_anything_is_written(data, tmp_path):
    code = cli_main(["train", "--config", str(tiny_workflow(data)), "--labels", str(tmp_path / "nope"),
                     "-o", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_are_valid_and_the_shipped_example_is_the_cpu_preset(name):
    cfg = load_workflow(preset_path(name), labels="x")
    assert cfg.timing.machine and cfg.pretrain.detector.object_size
    assert cfg.init == ("nuclei" if name == "cpu" else "cupre")  # the CPU start measured best in 30 min of fp32
    if name == "cpu":
        assert (CONFIGS / "train-cpu.yaml").resolve() == preset_path("cpu")  # one file, linked from configs/
        assert cfg.timing_fp32.machine and cfg.within_minutes == 30


def test_a_schedule_over_its_time_is_shortened_to_fit_and_said_so():
    """fp32 step times over a 20-minute budget: warm-up, COCO steps and fine-tuning
    keep one share of their iterations, MoCo stays whole, the estimate fits; the masks of
    the unlabeled images are not part of the training's budget."""
    from cupre.experiments.workflow import estimate_seconds, fit_schedule, step_times, training_seconds

    cfg = load_workflow(preset_path("cpu"), labels="x")
    pre, ft = cfg.pretrain, cfg.finetune

    def seconds(p, f, timing):
        parts = estimate_seconds(cfg, p, f, n_unlabeled=460, n_val=0, timing=timing)
        assert training_seconds(parts, True) == pytest.approx(sum(parts.values()) - parts["predict"])
        assert parts["predict"] > 0
        return training_seconds(parts, False)

    bf16, fp32 = step_times(cfg, "bf16"), step_times(cfg, "fp32")
    assert bf16 is cfg.timing and fp32 is cfg.timing_fp32
    assert fit_schedule(pre, ft, lambda p, f: seconds(p, f, bf16), 30) == (pre, ft, 1.0)  # fits already
    assert seconds(pre, ft, fp32) <= 30 * 60  # fp32 training alone fits the preset's 30 min (the masks come after)
    assert seconds(pre, ft, fp32) > 20 * 60
    short_pre, short_ft, share = fit_schedule(pre, ft, lambda p, f: seconds(p, f, fp32), 20)
    assert 0.25 <= share < 1.0 and 19 * 60 < seconds(short_pre, short_ft, fp32) <= 20 * 60
    assert short_ft.optim.iterations == round(ft.optim.iterations * share)
    assert short_pre.warmup.iterations == round(pre.warmup.iterations * share)
    assert short_pre.amt2.moco == pre.amt2.moco and short_pre.amt2.rounds == pre.amt2.rounds


def test_init_nuclei_fine_tunes_and_self_trains_from_the_shipped_model_with_no_pre_training(data, tmp_path,
                                                                                            monkeypatch, capsys):
    """``cupre train --init nuclei``: no COCO stage, no AMT2, no synthetic objects; the
    fine-tuning starts from the shipped weights with the shipped detector config, and
    self-training (on in the tiny preset) from the fine-tuned model."""
    import cupre.train.pretrain
    from cupre.modelfile import load_model_file
    from tests.helpers import install_shipped_model, write_tiny_model

    shipped = install_shipped_model(monkeypatch, tmp_path / "package")

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pre-training ran")

    monkeypatch.setattr(cupre.train.pretrain, "run_pretrain", no_pretraining)
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(tiny_workflow(data)), "--init", "nuclei",
                     "--labels", str(data / "labeled" / "annotations.json"),
                     "--unlabeled", str(data / "unlabeled" / "images"), "-o", str(run)]) == 0
    said = capsys.readouterr().out
    assert f"fine-tuning from cupre's shipped nuclei model ({shipped}), no pre-training" in said
    [estimate] = [line for line in said.splitlines() if line.startswith("train: estimated")]
    assert "pretrain" not in estimate and "finetune" in estimate
    assert not (run / "pretrain").exists() and not (run / "data").exists()
    ft = load_yaml(run / "finetune" / "config.yaml")
    assert ft["from_model"] == "nuclei" and ft["detector"] == {}
    start = load_model_file(shipped)["model"]
    for model in (run / "finetune" / "model.safetensors", run / "finetune" / "selftrain" / "model.safetensors"):
        ckpt = load_model_file(model)
        assert ckpt["detector"]["detections_per_img"] == 50  # the shipped model's config, not the preset's 30
        assert 0 < _largest_change(ckpt["model"], start) < 0.02, model  # a few AdamW steps at 1e-3 from it
    other = load_model_file(write_tiny_model(tmp_path / "other.safetensors", seed=1))["model"]
    assert _largest_change(other, start) > 0.1  # another start would be told apart


def test_a_config_without_step_times_says_it_cannot_estimate_instead_of_zero(data, tmp_path, monkeypatch, capsys):
    from tests.helpers import install_shipped_model

    install_shipped_model(monkeypatch, tmp_path / "package")
    cfg = yaml.safe_load(tiny_workflow(tmp_path).read_text())
    del cfg["timing"]
    cfg.update(self_train=False)
    config = tmp_path / "no_timing.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--config", str(config), "--init", "nuclei", "--labels",
                     str(data / "labeled" / "annotations.json"), "-o", str(tmp_path / "run")]) == 0
    said = capsys.readouterr().out
    assert ("train: no time estimate: the config holds no seconds per step (`timing`, as in configs/train-cpu.yaml)"
            in said.splitlines())
    assert "train: estimated" not in said and (tmp_path / "run" / "finetune" / "model.safetensors").is_file()


def test_the_cpu_preset_starts_from_the_shipped_model_so_a_coco_stage_asks_for_init_cupre(data, tmp_path, capsys):
    labels = str(data / "labeled" / "annotations.json")
    run = tmp_path / "run"
    assert cli_main(["train", "--preset", "cpu", "--labels", labels, "--coco", labels, "-o", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        "cupre: error: train: --coco feeds the COCO stage, which --init nuclei skips (it fine-tunes the shipped "
        "model); drop --coco, or use --init cupre")
    assert not run.exists()


def _largest_change(state: dict, start: dict) -> float:
    return max((state[k].float() - start[k].float()).abs().max().item() for k in start)


def test_without_pre_training_the_estimate_and_the_fitting_are_the_fine_tuning_alone():
    from cupre.experiments.workflow import estimate_seconds, fit_schedule, step_times, training_seconds

    cfg = load_workflow(preset_path("cpu"), labels="x")
    fp32 = step_times(cfg, "fp32")

    def seconds(p, f):
        return training_seconds(estimate_seconds(cfg, p, f, n_unlabeled=460, n_val=0, timing=fp32), False)

    parts = estimate_seconds(cfg, None, cfg.finetune, n_unlabeled=460, n_val=0, timing=fp32)
    assert "pretrain" not in parts and parts["finetune"] == cfg.finetune.optim.iterations * fp32.finetune
    assert seconds(None, cfg.finetune) < seconds(cfg.pretrain, cfg.finetune)
    pre, ft, share = fit_schedule(None, cfg.finetune, seconds, 5)
    assert pre is None and 0.25 <= share < 1.0 and 4.5 * 60 < seconds(None, ft) <= 5 * 60
    assert ft.optim.iterations == round(cfg.finetune.optim.iterations * share)
    assert fit_schedule(None, cfg.finetune, seconds, 30) == (None, cfg.finetune, 1.0)


def test_a_run_continues_only_from_the_start_it_began_with(few, data):
    from cupre.experiments.workflow import continued

    run, _ = few
    cfg = load_workflow(tiny_workflow(data), labels=str(data / "labeled" / "annotations.json"),
                        unlabeled=[str(data / "unlabeled" / "images")])
    assert continued(cfg, run).init == "cupre"
    with pytest.raises(CupreError, match="holds a run on other init"):
        continued(cfg.replace(init="nuclei"), run)
    with pytest.raises(CupreError, match="init"):
        load_workflow(tiny_workflow(data), labels="x", init="cellpose")
