"""Model files carry tensors, not code: safetensors + JSON metadata + digest."""

from __future__ import annotations

import os

import pytest
import torch

from cupre.cli import main as cli
from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.modelfile import (
    convert_legacy,
    half_storage,
    load_model_file,
    write_model_file,
)
from cupre.models.detector import build_detector
from cupre.models.loading import build_from_file
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


def test_half_storage_halves_the_file_and_loads_as_fp32(tmp_path):
    model, cfg = tiny()
    write_model_file(tmp_path / "full.safetensors", model, cfg, CELL)
    write_model_file(tmp_path / "half.safetensors", half_storage(model.state_dict()), cfg, CELL)
    full, half = (tmp_path / f"{n}.safetensors" for n in ("full", "half"))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    as_bf16, _, _ = build_from_file(half, weights_dtype=torch.bfloat16)  # bf16 inference: no fp16 left over
    assert not any(v.dtype == torch.float16 for v in as_bf16.state_dict().values())
    again, _, _ = build_from_file(half)
    for name, value in again.state_dict().items():
        want = model.state_dict()[name]
        assert value.dtype == want.dtype, name  # computed in fp32, whatever the storage
        if want.dtype == torch.float32:
            assert torch.equal(value, want.half().float()), name


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


def _with_metadata(path, tmp_path, name: str, **changes):
    """A copy of the model file ``path`` whose metadata entries ``changes`` replace (the
    tensors and their digest untouched: a file that passes every check but its metadata)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        metadata, state = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    metadata.update({k: json.dumps(v) for k, v in changes.items()})
    save_file(state, str(tmp_path / name), metadata=metadata)
    return tmp_path / name


@pytest.mark.parametrize(("changes", "said"), [
    ({"detector": ["not", "a", "mapping"]}, "the detector config is a list, not a mapping"),
    ({"categories": "cells"}, "categories must be a list of {'id': int, 'name': str}"),
    ({"categories": [{"id": "1", "name": "cell"}]}, "categories must be a list"),
    ({"facts": [1, 2]}, "facts must be a mapping"),
    ({"facts": {"score_threshold": "all"}}, "score_threshold must be a number in [0, 1]"),
    ({"facts": {"score_threshold": 7}}, "score_threshold must be a number in [0, 1]"),
    ({"detector": {**TINY_DETECTOR, "fpn_channels": 10**9}}, "detector config).fpn_channels: input should be less"),
    ({"detector": {**TINY_DETECTOR, "detections_per_img": 10**9}}, "detections_per_img: input should be less"),
    ({"detector": {**TINY_DETECTOR, "backbone": 12}}, "detector config).backbone"),
])
def test_model_metadata_is_checked_like_a_config(tmp_path, capsys, changes, said):
    model, cfg = tiny()
    path = write_model_file(tmp_path / "m.safetensors", model, cfg, CELL)
    bad = _with_metadata(path, tmp_path, "bad.safetensors", **changes)
    with pytest.raises(CupreError, match="bad.safetensors") as caught:
        load_model_file(bad)
    assert said in str(caught.value) and "\n" not in str(caught.value)
    from PIL import Image

    Image.new("L", (32, 32)).save(tmp_path / "img.png")
    assert cli(["predict", str(bad), str(tmp_path / "img.png"), "-o", str(tmp_path / "out")]) == 2
    assert said in capsys.readouterr().err
