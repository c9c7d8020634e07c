"""Self-training: what is pseudo-labelled, what the student trains on, which round is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cupre.experiments.selftrain as selftrain
from cupre.cli import main as cli
from cupre.config import FinetuneConfig
from cupre.data.coco import CocoDataset
from cupre.data.synthetic import write_synthetic
from cupre.fileio import write_json_atomic
from tests.helpers import FAST_OPTIM, TINY_DETECTOR

ALL_AT_ZERO = {"keep_score": 0.0, "agree_iou": 0.0, "uncertain_score": 0.0}


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("st")
    write_synthetic("cells", tmp / "cells", n_images=10, size=96, seed=0)
    for name, ids in (("train", [1, 2, 3, 4]), ("val", [5, 6]), ("test", [7])):
        write_json_atomic(tmp / f"{name}.json", {"image_ids": ids})
    return tmp


def config(tmp: Path, **over) -> FinetuneConfig:
    ann = str(tmp / "cells" / "annotations.json")
    data = {"init": "scratch", "detector": TINY_DETECTOR, "train": ann, "split": str(tmp / "train.json"),
            "val": ann, "val_split": str(tmp / "val.json"), "test": ann, "test_split": str(tmp / "test.json"),
            "optim": {**FAST_OPTIM, "iterations": 2}, "eval_every": 2, "device": "cpu",
            "unlabeled": [str(tmp / "cells" / "images")], "self_train": {"rounds": 1, **ALL_AT_ZERO}}
    data.update(over)
    return FinetuneConfig.from_dict(data)


def test_pseudo_labels_never_come_from_training_validation_or_test_images(cells, tmp_path, capsys):
    args = ["finetune", "--init", "scratch", "--train", str(cells / "cells" / "annotations.json"),
            "--split", str(cells / "train.json"), "--iterations", "2", "--device", "cpu",
            "--unlabeled", str(cells / "cells" / "images"), "-o", str(tmp_path / "ft")]
    config_file = tmp_path / "st.yaml"
    config_file.write_text(json.dumps({"detector": TINY_DETECTOR, "optim": FAST_OPTIM, "self_train": ALL_AT_ZERO,
                                       "val": str(cells / "cells" / "annotations.json"),
                                       "val_split": str(cells / "val.json"),
                                       "test": str(cells / "cells" / "annotations.json"),
                                       "test_split": str(cells / "test.json")}))
    assert cli([*args, "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    pseudo = tmp_path / "ft" / "selftrain" / "round1" / "pseudo_labels.json"
    names = sorted(Path(i["file_name"]).name for i in json.loads(pseudo.read_text())["images"])
    assert names == ["000008.png", "000009.png", "000010.png"]  # 1-4 train, 5-6 validation, 7 test
    assert "pseudo-labels on 3 images" in out and "model (after self-training)" in out
    assert (pseudo.parent / "pseudo_labels.png").is_file()
    student = json.loads((pseudo.parent / "student" / "split.json").read_text())
    assert student["image_ids"] == [1, 2, 3, 4]  # the same annotated images, plus the pseudo-labelled ones
    summary = json.loads((tmp_path / "ft" / "selftrain" / "summary.json").read_text())
    assert summary["checked_on_validation"] and len(summary["rounds"]) == 1


def test_the_student_trains_on_labels_and_pseudo_labels(cells, tmp_path, monkeypatch):
    seen = []
    real = selftrain.run_finetune

    def spy(cfg, out, **kwargs):
        seen.append(cfg.pseudo_labels)
        return real(cfg, out, **kwargs)

    monkeypatch.setattr(selftrain, "run_finetune", spy)
    selftrain.run_selftrain(config(cells), tmp_path, tmp_path / "selftrain")
    assert seen[0] is None and seen[1] == str(tmp_path / "selftrain" / "round1" / "pseudo_labels.json")
    from cupre.train.finetune import training_data

    mixed, _ = training_data(config(cells, pseudo_labels=seen[1]), CocoDataset(cells / "cells" / "annotations.json")
                             .subset([1, 2, 3, 4]), 20.0)
    sources = [mixed[i][1]["pseudo"] for i in range(len(mixed))]
    assert sources.count(True) == 3 and sources.count(False) == 4  # half of the samples each, at least every label


def fake_finetune(scores: list[float | None]):
    """run_finetune that writes a model file and returns the next validation score."""
    calls = []

    def run(cfg, out, **kwargs):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        calls.append(out)
        (out / "model.safetensors").write_bytes(f"model {len(calls)}".encode())
        score = scores[len(calls) - 1]
        return {} if score is None else {"segm": {"AP": score}, "bbox": {"AP": score}}

    return run, calls


def fake_label_images(*args):
    return {"images": [{"id": 1}], "annotations": [{"iscrowd": 0}], "categories": []}


@pytest.mark.parametrize("student, kept", [(0.30, False), (0.50, True)])
def test_a_round_is_kept_only_when_validation_improves(cells, tmp_path, monkeypatch, student, kept):
    run, calls = fake_finetune([0.40, student, student])
    monkeypatch.setattr(selftrain, "run_finetune", run)
    monkeypatch.setattr(selftrain, "label_images", fake_label_images)
    monkeypatch.setattr(selftrain, "render_pseudo_labels", lambda *a: None)
    out = tmp_path / "st"
    model = selftrain.run_selftrain(config(cells, self_train={"rounds": 2}), tmp_path / "teacher", out)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["student_kept"] for r in summary["rounds"]] == ([True, False] if kept else [False])
    source = out / "round1" / "student" if kept else tmp_path / "teacher"
    assert summary["model_from"] == str(source) and model == out / "model.safetensors"
    assert model.read_bytes() == (source / "model.safetensors").read_bytes()
    assert json.loads((out / "val_metrics.json").read_text())["selftrain"] == summary
    assert len(calls) == (3 if kept else 2)  # a round not kept ends the rounds


def test_without_validation_the_round_is_kept_and_the_run_says_nothing_checked_it(cells, tmp_path, monkeypatch,
                                                                                   capsys):
    run, _ = fake_finetune([None, None, None])
    monkeypatch.setattr(selftrain, "run_finetune", run)
    monkeypatch.setattr(selftrain, "label_images", fake_label_images)
    monkeypatch.setattr(selftrain, "render_pseudo_labels", lambda *a: None)
    unchecked = config(cells, val=None, val_split=None)
    model = selftrain.run_selftrain(unchecked, tmp_path / "teacher", tmp_path / "st")
    assert model == tmp_path / "teacher" / "model.safetensors" and not (tmp_path / "st").exists()
    assert "no validation set could check it" in capsys.readouterr().out  # not without the preset's say-so
    unchecked = unchecked.replace(self_train=unchecked.self_train.replace(without_validation=True))
    selftrain.run_selftrain(unchecked, tmp_path / "teacher", tmp_path / "st")
    summary = json.loads((tmp_path / "st" / "summary.json").read_text())
    assert summary["model_from"] == str(tmp_path / "st" / "round1" / "student")
    assert not summary["checked_on_validation"]
    assert "no validation set checked it" in capsys.readouterr().out


def test_a_student_from_the_teacher_starts_from_its_model(cells, tmp_path):
    cfg = config(cells, self_train={"student_from": "teacher"})
    student = selftrain.student_config(cfg, tmp_path / "pseudo.json", tmp_path / "teacher")
    assert student.from_model == str(tmp_path / "teacher" / "model.safetensors")
    assert student.pseudo_labels == str(tmp_path / "pseudo.json") and not student.unlabeled
    stac = config(cells, self_train={"student_from": "init"})
    assert selftrain.student_config(stac, tmp_path / "p.json", tmp_path / "t").from_model is None
