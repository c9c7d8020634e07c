"""Model files carry tensors, not code: safetensors + JSON metadata + digest."""

from __future__ import annotations

import os

import pytest
import torch

from cupre.cli import main as cli
from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.modelfile import (
    build_from_file,
    convert_legacy,
    load_model_file,
    write_model_file,
)
from cupre.models.detector import build_detector
from tests.helpers import TINY_DETECTOR

CELL = [{"id": 1, "name": "cell"}]


def tiny(**over) -> tuple[torch.nn.Module, DetectorConfig]:
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "object_size": 20, **over})
    torch.manual_seed(0)
    return build_detector(cfg), cfg


class Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile model file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_keeps_tensors_config_categories_and_facts(tmp_path):
    model, cfg = tiny()
    write_model_file(tmp_path / "m.safetensors", model, cfg, CELL, stage="finetune", iteration=7)
    again, loaded_cfg, ckpt = build_from_file(tmp_path / "m.safetensors")
    assert loaded_cfg == cfg and ckpt["categories"] == CELL and ckpt["iteration"] == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_model_file_crafted_to_run_code_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"kind": "cupre-detector", "model": {}, "detector": {}, "x": Payload(marker)}, evil)
    with pytest.raises(CupreError, match="pickled model file"):
        load_model_file(evil)
    with pytest.raises(CupreError, match="cannot be read as plain tensors"):
        convert_legacy(evil, tmp_path / "new.safetensors")  # weights_only=True refuses the payload
    (tmp_path / "img.png").write_bytes(b"")
    assert cli(["predict", str(evil), str(tmp_path / "img.png"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pickled model file" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


def test_altered_bytes_and_foreign_files_are_one_line_errors(tmp_path):
    model, cfg = tiny()
    path = write_model_file(tmp_path / "m.safetensors", model, cfg, CELL)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor's bytes
    (tmp_path / "bit.safetensors").write_bytes(bytes(data))
    with pytest.raises(CupreError, match="bit.safetensors: the tensors do not match the digest"):
        load_model_file(tmp_path / "bit.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(CupreError, match="cut.safetensors: not a readable model file"):
        load_model_file(tmp_path / "cut.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(CupreError, match="text.safetensors: not a readable model file"):
        load_model_file(tmp_path / "text.safetensors")
    with pytest.raises(CupreError, match="missing.safetensors: model file not found"):
        load_model_file(tmp_path / "missing.safetensors")


def test_tensors_that_do_not_fit_their_config_are_named(tmp_path):
    model, cfg = tiny()
    wrong = cfg.replace(backbone="resnet34")
    write_model_file(tmp_path / "m.safetensors", model, wrong, CELL)
    with pytest.raises(CupreError, match=r"m.safetensors: the tensors do not fit .*missing.*wrong backbone"):
        build_from_file(tmp_path / "m.safetensors")


def test_a_legacy_pickle_converts_without_unpickling_code(tmp_path):
    model, cfg = tiny()
    old = {"kind": "cupre-detector", "model": model.state_dict(), "categories": CELL, "stage": "finetune",
           "detector": {**cfg.to_dict(), "min_size": 512, "max_size": 1024}}
    torch.save(old, tmp_path / "model.pt")
    assert cli(["convert-model", str(tmp_path / "model.pt")]) == 0
    again, loaded_cfg, ckpt = build_from_file(tmp_path / "model.safetensors")
    assert loaded_cfg == cfg and ckpt["stage"] == "finetune"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
