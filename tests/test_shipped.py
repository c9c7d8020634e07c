"""The shipped nuclei model: where a model is named (predict with or without one, --model,
the old positional form, export, finetune --from-model), the one-line error where the
install lacks it, and, once the real file is in the package, its digest and safe load.

Until the real model lands, a tiny untrained model stands in for it
(:func:`tests.helpers.install_shipped_model`)."""

from __future__ import annotations

import hashlib
import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import cupre.shipped
from cupre.cli import main
from cupre.errors import CupreError
from cupre.shipped import is_model_argument, resolve_model, shipped_model, shipped_path
from tests.helpers import REPO, install_shipped_model, write_tiny_model


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """A line about a busy machine's threads would stand before the lines tested."""
    import cupre.devices

    monkeypatch.setattr(cupre.devices, "busy_cores", lambda: 0)


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    return install_shipped_model(monkeypatch, tmp_path / "package")


@pytest.fixture
def not_shipped(tmp_path, monkeypatch) -> Path:
    """An install without the model file: the registry's folder is empty."""
    monkeypatch.setattr(cupre.shipped, "PACKAGE", tmp_path / "empty-package")
    return tmp_path / "empty-package" / "presets" / "models" / "nuclei.safetensors"


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def _predict(*args: str) -> int:
    return main(["predict", *args, "--device", "cpu", "--score-threshold", "0"])


@pytest.fixture
def loaded(monkeypatch) -> list[Path]:
    """The model files built into a detector, in order (a spy on the one loader)."""
    import cupre.models.loading

    files, build = [], cupre.models.loading.build_from_file

    def spy(path, **kwargs):
        files.append(Path(path))
        return build(path, **kwargs)

    monkeypatch.setattr(cupre.models.loading, "build_from_file", spy)
    return files


def test_predict_without_a_model_uses_the_shipped_one_and_says_so(shipped, images, tmp_path, capsys, loaded):
    out = tmp_path / "out"
    assert _predict(str(images), "-o", str(out)) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"no model given: using cupre's shipped nuclei model ({shipped})"
    assert sorted(p.name for p in out.glob("*_masks.tif")) == ["a_masks.tif", "b_masks.tif"]
    assert loaded == [shipped]


def test_model_names_the_shipped_model_or_a_path(shipped, images, tmp_path, capsys, loaded):
    other = write_tiny_model(tmp_path / "other.safetensors", detections_per_img=7)
    assert _predict(str(images), "--model", "nuclei", "-o", str(tmp_path / "by-name")) == 0
    assert _predict(str(images), "--model", str(other), "-o", str(tmp_path / "by-path")) == 0
    assert "no model given" not in capsys.readouterr().out
    assert loaded == [shipped, other]


def test_the_old_positional_form_still_takes_a_model_file_or_run_folder(shipped, images, tmp_path, capsys, loaded):
    run = tmp_path / "my-run"
    (run / "finetune").mkdir(parents=True)
    mine = write_tiny_model(run / "finetune" / "model.safetensors", detections_per_img=9)
    assert _predict(str(mine), str(images), "-o", str(tmp_path / "file")) == 0
    assert _predict(str(run), str(images / "a.png"), "-o", str(tmp_path / "folder")) == 0
    assert "no model given" not in capsys.readouterr().out
    assert loaded == [mine, mine]
    assert len(json.loads((tmp_path / "folder" / "images.json").read_text())["images"]) == 1


def test_a_folder_of_images_first_is_read_as_images_never_as_a_model(shipped, images, tmp_path, capsys, loaded):
    (images / "notes.yaml").write_text("not a cupre run\n")  # a stray file is no run folder's config
    one = tmp_path / "one.png"
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(one)
    out = tmp_path / "out"
    assert _predict(str(images), str(one), "-o", str(out)) == 0
    assert "no model given" in capsys.readouterr().out
    names = [Path(e["file"]).name for e in json.loads((out / "images.json").read_text())["images"]]
    assert sorted(names) == ["a.png", "b.png", "one.png"] and loaded == [shipped]


def test_what_is_taken_for_a_model_in_first_place(tmp_path, images):
    run = tmp_path / "unfinished-run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    assert is_model_argument(tmp_path / "model.safetensors")  # even missing: reading it says so
    assert is_model_argument("old-model.pt") and is_model_argument(run)
    assert not is_model_argument(images) and not is_model_argument(images / "a.png")
    assert not is_model_argument("nuclei")  # a shipped name is given with --model


def test_a_run_folder_without_a_model_yet_is_named_not_read_as_images(shipped, images, tmp_path, capsys):
    run = tmp_path / "unfinished-run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    assert _predict(str(run), str(images), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cupre: error: {run}: run folder holds no model.safetensors (nor finetune/model.safetensors, "
                   "as a cupre train run folder would)")


def test_a_model_and_no_images_is_one_line(shipped, tmp_path, capsys):
    assert _predict(str(shipped), "-o", str(tmp_path / "out")) == 2
    assert capsys.readouterr().err.strip() == (f"cupre: error: {shipped}: a model, and no images after it "
                                               "(cupre predict MODEL IMAGES... -o OUT)")


def test_a_missing_shipped_model_is_one_line_everywhere_it_is_named(not_shipped, images, tmp_path, capsys):
    said = f"cupre: error: the shipped nuclei model is not in this install ({not_shipped} missing)"
    labels = tmp_path / "labels"
    labels.mkdir()
    for argv in (["predict", str(images), "-o", str(tmp_path / "p1")],
                 ["predict", str(images), "--model", "nuclei", "-o", str(tmp_path / "p2")],
                 ["export", "nuclei", "--format", "torchscript", "-o", str(tmp_path / "m.pt")],
                 ["finetune", "--from-model", "nuclei", "--train", str(images), "--iterations", "1",
                  "-o", str(tmp_path / "ft")],
                 ["train", "--init", "nuclei", "--labels", str(images), "-o", str(tmp_path / "run")]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.strip() == said, argv
    assert not any((tmp_path / name).exists() for name in ("p1", "p2", "m.pt", "ft", "run"))
    with pytest.raises(CupreError, match="'cellpose' is not a model shipped with cupre"):
        shipped_model("cellpose")


def test_a_name_is_a_name_a_path_is_a_path(shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei").mkdir()  # a folder named like the shipped model: written ./nuclei
    assert resolve_model("nuclei") == shipped == shipped_path("nuclei") == shipped_model("nuclei")
    with pytest.raises(CupreError, match="run folder holds no model.safetensors"):
        resolve_model("./nuclei")
    with pytest.raises(CupreError, match="run folder holds no model.safetensors"):
        resolve_model(Path("nuclei"))
    assert cupre.shipped.available() == ["nuclei"]


def test_export_and_finetune_take_the_shipped_name(shipped, tmp_path, capsys):
    from cupre.train.inits import continue_model

    out = tmp_path / "nuclei.pt"
    assert main(["export", "nuclei", "--format", "torchscript", "-o", str(out)]) == 0
    assert "TorchScript model" in capsys.readouterr().out and out.is_file()
    model, cfg = continue_model("nuclei", {})  # what `cupre finetune --from-model nuclei` starts from
    from cupre.modelfile import load_model_file

    want = load_model_file(shipped)["model"]
    assert cfg.detections_per_img == 50 and all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_the_package_data_carries_the_shipped_models_and_their_cards():
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cupre"]
    for relative in cupre.shipped.SHIPPED.values():
        for suffix in (".safetensors", ".md", ".sha256"):
            name = str(Path(relative).with_suffix(suffix))
            assert any(fnmatch(name, g) for g in globs), name


REAL = shipped_path("nuclei")


@pytest.mark.skipif(not REAL.is_file(), reason=f"the shipped nuclei model is not in the package yet ({REAL})")
def test_the_shipped_model_matches_its_digest_and_loads_without_running_code(monkeypatch):
    """The real file: the SHA-256 recorded beside it (``nuclei.sha256``, as ``sha256sum``
    writes it), a safetensors file read by the safe loader while unpickling is made to
    fail, its card beside it, and at most 30 MB."""
    import pickle

    from cupre.modelfile import is_pickle
    from cupre.models.loading import build_from_file

    recorded = REAL.with_suffix(".sha256").read_text().split()[0]
    assert hashlib.sha256(REAL.read_bytes()).hexdigest() == recorded
    assert REAL.with_suffix(".md").is_file() and REAL.stat().st_size <= 30e6 and not is_pickle(REAL)

    def refuse(*args, **kwargs):
        raise AssertionError("the shipped model was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model, cfg, ckpt = build_from_file(resolve_model("nuclei"))
    assert cfg.num_classes == 1 and ckpt["categories"] and sum(p.numel() for p in model.parameters()) > 0


def test_the_shipped_model_segments_the_demos_held_out_nuclei_of_every_kind(tmp_path, capsys):
    """``cupre predict IMAGES -o OUT`` with no model, on the demo's test images (none of
    them seen in training), in the CPU's default precision: every image gets nuclei."""
    test = REPO / "src" / "cupre" / "presets" / "nuclei" / "test"
    kinds = ("fluo", "colour", "bright")
    images = [str(next(p for p in sorted(test.glob(f"{k}_*.png")) if not p.stem.endswith("_masks"))) for k in kinds]
    assert main(["predict", *images, "-o", str(tmp_path / "out"), "--threads", "1"]) == 0
    assert "using cupre's shipped nuclei model" in capsys.readouterr().out
    for image in images:
        labels = tifffile.imread(tmp_path / "out" / f"{Path(image).stem}_masks.tif")
        assert labels.max() >= 3, image
