"""Bad input, third round (#37), through the command line: files that claim more than they
hold, links out of a folder, what was silent, and a beginner's labels and run folders."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cupre.cli import main
from tests.cli.test_bad_input import _cupre, _one_line, quiet_machine, tiny_model  # noqa: F401 - fixtures
from tests.helpers import TINY_DETECTOR, deflate_bomb_tiff


def _image(path: Path, size=(64, 64), seed: int = 0) -> Path:
    Image.fromarray((np.random.default_rng(seed).random(size) * 255).astype(np.uint8)).save(path)
    return path


def test_a_tiff_claiming_10_gpx_in_300_kb_is_refused_from_its_header(tmp_path, tiny_model):
    """A deflate TIFF of 100,000 x 100,000 px whose tiles all point at one small tile: the
    tiled path would start 10^10 px of work. Refused before decoding, in a second."""
    bomb = deflate_bomb_tiff(tmp_path / "bomb.tif")
    assert bomb.stat().st_size < 400_000
    start = time.perf_counter()
    done = _cupre("predict", str(tiny_model), str(bomb), "-o", str(tmp_path / "out"), "--device", "cpu", timeout=90)
    assert done.returncode == 1, done.stderr  # the image skipped, said in one line
    said = [line for line in done.stderr.splitlines() if line.startswith("cupre:")]
    assert said[0].startswith(f"cupre: warning: {bomb}: declares 100,000 x 100,000 px (9.3 GiB of pixels) in "
                              "0.3 MiB, a compression ratio of 32,495:1") and len(said[0]) < 300
    assert time.perf_counter() - start < 60 and "Traceback" not in done.stderr


def test_a_tiff_bomb_as_a_label_image_is_one_line_naming_it(tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    _image(labels / "a.png")
    bomb = deflate_bomb_tiff(labels / "a_masks.tif")
    assert main(["convert", str(labels), "-o", str(tmp_path / "a.json")]) == 2
    assert _one_line(capsys).startswith(f"cupre: error: {bomb}: declares 100,000 x 100,000 px")
    assert not (tmp_path / "a.json").exists()


def test_a_large_well_compressed_slide_is_not_refused(tmp_path):
    """A 9,000 x 9,000 slide of noise over a flat background compresses a few times, far
    under the bound: its header passes."""
    import tifffile

    from cupre.data.imageio import plane_layout

    rng = np.random.default_rng(0)
    slide = np.full((9000, 9000), 10, np.uint8)
    slide[:2000, :2000] = rng.integers(0, 255, (2000, 2000), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "slide.tif", slide, tile=(512, 512), compression="zlib")
    assert plane_layout(tmp_path / "slide.tif").size == (9000, 9000)


def _folder_with_parent_link(tmp_path: Path) -> tuple[Path, Path]:
    """``data/images/`` with one image and ``parent -> ..``; ``data/`` holds another image."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    _image(images / "a.png")
    _image(tmp_path / "data" / "outside.png", seed=1)
    (images / "parent").symlink_to("..", target_is_directory=True)
    return images, images / "parent"


def _warned(recwarn) -> str:
    return "\n".join(str(w.message) for w in recwarn)


def test_a_link_to_the_parent_folder_is_not_walked_out_of_the_input_folder(tmp_path, tiny_model, recwarn):
    images, link = _folder_with_parent_link(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_model), str(images), "-o", str(out), "--device", "cpu"]) == 0
    assert f"{link}: a link to {tmp_path / 'data'}, which holds {images}; not followed" in _warned(recwarn)
    entries = json.loads((out / "images.json").read_text())["images"]
    assert [Path(e["file"]).name for e in entries] == ["a.png"]
    assert not (out / "parent").exists()


def test_a_recursive_pattern_over_a_link_to_the_parent_is_refused(tmp_path, tiny_model, capsys):
    images, link = _folder_with_parent_link(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_model), f"{images}/**/*.png", "-o", str(out), "--device", "cpu"]) == 2
    assert _one_line(capsys).startswith(f"cupre: error: {link}: a link to a folder holding {images}")
    assert not out.exists()


def test_the_unlabeled_images_of_training_skip_a_link_to_the_parent_too(tmp_path, recwarn):
    from cupre.data.unlabeled import UnlabeledImages

    images, link = _folder_with_parent_link(tmp_path)
    assert [f.name for f, _ in UnlabeledImages(images).items] == ["a.png"]
    assert any(f"{link}: a link to" in str(w.message) for w in recwarn)


def test_a_missing_ome_zarr_chunk_is_said_naming_the_image(tmp_path, tiny_model, recwarn):
    from tests.data.test_lazy import write_ome_zarr

    image = tmp_path / "plate.zarr"
    write_ome_zarr(image, (np.random.default_rng(0).random((128, 128)) * 200 + 20).astype(np.uint8), "yx")
    (image / "0" / "c" / "1" / "1").unlink()  # one of the four 64 x 64 chunks lost in a copy
    assert main(["predict", str(tiny_model), str(image), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert f"{image}: 1 of the 4 chunks of its full-resolution level are not stored; read as the fill value (0)" \
        in _warned(recwarn)


def test_an_image_1_px_tall_is_skipped_with_one_line(tmp_path, tiny_model, capsys):
    line = tmp_path / "line.tif"
    import tifffile

    tifffile.imwrite(line, (np.random.default_rng(0).random((1, 100000)) * 255).astype(np.uint8))
    good = _image(tmp_path / "good.png")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_model), str(line), str(good), "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"cupre: warning: {line}: the model cannot segment this 1 x 100000 px image (a side under 8 px" in err
    assert (out / "good_masks.tif").is_file() and not (out / "line_masks.tif").exists()


def test_diameter_for_a_model_without_object_size_is_said(tmp_path, tiny_model, recwarn):
    image = _image(tmp_path / "a.png")
    assert main(["predict", str(tiny_model), str(image), "-o", str(tmp_path / "out"), "--device", "cpu",
                 "--diameter", "30"]) == 0
    assert f"{tiny_model}: --diameter 30 is not used: this model has no object_size" in _warned(recwarn)


def _bbbc038_with_a_copied_mask(tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    root = tmp_path / "stage1_train"
    (root / "s1" / "images").mkdir(parents=True)
    (root / "s1" / "masks").mkdir()
    img = np.zeros((32, 32), np.uint8)
    img[4:10, 4:10] = 200
    img[20:26, 20:26] = 200
    Image.fromarray(img).save(root / "s1" / "images" / "s1.png")
    for name, (y, x) in (("m1.png", (4, 4)), ("m2.png", (20, 20))):
        mask = np.zeros((32, 32), np.uint8)
        mask[y:y + 6, x:x + 6] = 255
        Image.fromarray(mask).save(root / "s1" / "masks" / name)
    shutil.copy(root / "s1" / "masks" / "m1.png", root / "s1" / "masks" / "m1_copy.png")
    return root, root / "s1" / "masks" / "m1.png"


def test_a_duplicated_bbbc038_mask_is_one_nucleus_said_or_refused(tmp_path, capsys, recwarn):
    root, first = _bbbc038_with_a_copied_mask(tmp_path)
    copy = first.with_name("m1_copy.png")
    assert main(["convert", str(root), "-o", str(tmp_path / "a.json")]) == 0
    assert f"{copy}: the same mask as m1.png (skipped" in _warned(recwarn)
    capsys.readouterr()
    assert len(json.loads((tmp_path / "a.json").read_text())["annotations"]) == 2
    assert main(["convert", str(root), "-o", str(tmp_path / "b.json"), "--strict"]) == 2
    assert _one_line(capsys) == f"cupre: error: {copy}: the same mask as m1.png"


def _coco_with_bad_annotations(tmp_path: Path, bad_images: int, n_images: int = 4) -> Path:
    """A COCO file of ``n_images`` images of two squares each; every annotation of the first
    ``bad_images`` names a category the file does not have (the reader skips them)."""
    folder = tmp_path / "coco"
    folder.mkdir(parents=True)
    images, anns = [], []
    for k in range(n_images):
        img = np.full((64, 64), 20, np.uint8)
        img[8:20, 8:20] = img[36:50, 30:44] = 200
        Image.fromarray(img).save(folder / f"i{k}.png")
        images.append({"id": k + 1, "file_name": f"i{k}.png", "height": 64, "width": 64})
        for j, (x, y, s) in enumerate(((8, 8, 12), (30, 36, 14))):
            poly = [x, y, x + s, y, x + s, y + s, x, y + s]
            anns.append({"id": 10 * k + j + 1, "image_id": k + 1, "category_id": 7 if k < bad_images else 1,
                         "segmentation": [poly], "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}))
    return path


def _tiny_finetune(tmp_path: Path, train: Path) -> list[str]:
    import yaml

    from tests.helpers import FAST_OPTIM

    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump({"init": "scratch", "train": str(train), "detector": TINY_DETECTOR,
                                      "optim": {**FAST_OPTIM, "iterations": 1}}))
    return ["finetune", "--config", str(config), "--device", "cpu"]


def test_a_finetuning_whose_every_annotation_was_skipped_is_refused(tmp_path, capsys):
    train = _coco_with_bad_annotations(tmp_path, bad_images=4)
    out = tmp_path / "ft"
    assert main([*_tiny_finetune(tmp_path, train), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"cupre: error: {train}: 0 of the 4 annotated images to fine-tune on have an object to "
                          "learn from") and err.endswith("fine-tuning needs at least 3") and len(err) < 300
    assert not (out / "model.safetensors").exists()
    train = _coco_with_bad_annotations(tmp_path / "two", bad_images=2)  # 2 usable of 4: under the 3 asked for
    assert main([*_tiny_finetune(tmp_path, train), "-o", str(tmp_path / "ft2")]) == 2
    assert "2 of the 4 annotated images to fine-tune on have an object" in capsys.readouterr().err


def test_fewer_usable_labels_than_given_are_said_at_the_start_and_in_the_summary(tmp_path, capsys):
    train = _coco_with_bad_annotations(tmp_path, bad_images=1)
    out = tmp_path / "ft"
    assert main([*_tiny_finetune(tmp_path, train), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    start = said.index("finetune: only 3 of the 4 annotated images have an object to learn from (first without: ")
    end = said.index("finetune: trained on 3 of the 4 annotated images given")
    assert start < end and (out / "model.safetensors").is_file()
    assert json.loads((out / "val_metrics.json").read_text())["labels"] == {"given": 4, "usable": 3}


def _train_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A ``cupre train`` run folder as its first call leaves it (its resolved config), the
    config file it was started with, and its labels."""
    import yaml

    from cupre.experiments.workflow import load_workflow
    from cupre.train.run import Run

    labels = _coco_with_bad_annotations(tmp_path, bad_images=0)
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"finetune": {"optim": {"iterations": 300}}}))
    run = tmp_path / "run"
    Run(run, tensorboard=False).save_config(load_workflow(config, labels=str(labels)).to_dict())
    return run, config, labels


def test_a_changed_config_for_an_existing_train_run_is_refused(tmp_path, capsys):
    import yaml

    run, config, labels = _train_run(tmp_path)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({"finetune": {"optim": {"iterations": 600}}}))
    before = (run / "config.yaml").read_bytes()
    assert main(["train", "--config", str(changed), "--labels", str(labels), "-o", str(run)]) == 2
    assert _one_line(capsys) == (f"cupre: error: {changed}: finetune.optim.iterations is 600, the run in {run} "
                                 "started with 300; a run continues as it started: give its --config (or none), "
                                 "or use another -o")
    assert (run / "config.yaml").read_bytes() == before


def test_the_same_config_or_none_continues_an_existing_train_run(tmp_path):
    from cupre.errors import CupreError
    from cupre.experiments.workflow import continued, load_workflow, preset_path

    run, config, labels = _train_run(tmp_path)
    same = load_workflow(config, labels=str(labels), device="cpu", precision="fp32")
    assert continued(same, run, config=config).finetune.optim.iterations == 300
    preset = load_workflow(preset_path("cpu"), labels=str(labels))  # no --config: the saved one goes on
    assert preset.init == "nuclei"  # the CPU preset's start, not the run's
    went_on = continued(preset, run, given=["labels"])  # as `cupre train --labels L -o RUN` calls it
    assert went_on.finetune.optim.iterations == 300 and went_on.init == "cupre"  # the run's own start
    with pytest.raises(CupreError, match=r"holds a run on other init "):  # a start typed is checked
        continued(preset, run, given=["labels", "init"])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["finetune", "--help"]])
def test_help_answers_without_importing_torch(argv):
    code = ("import sys\nfrom cupre.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]\n" % argv)
    src = str(Path(__file__).parents[2] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "usage: cupre" in done.stdout
