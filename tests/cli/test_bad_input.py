"""Bad input through ``cupre.cli.main``: one line naming the flag or file and the problem,
exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cupre.cli import main


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """The machine's load is not these tests' subject: on a busy machine ``cupre`` says how
    many threads it takes in a line of its own, which would stand before the line tested."""
    import cupre.devices

    monkeypatch.setattr(cupre.devices, "busy_cores", lambda: 0)


def _one_line(capsys) -> str:
    """What cupre printed on stderr, checked to be one line a reader takes in at once."""
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) < 300, err
    return err


@pytest.mark.parametrize("command", ["predict", "finetune", "pretrain", "experiment", "train", "demo"])
@pytest.mark.parametrize(("device", "said"), [
    ("cuda", "PyTorch sees no CUDA GPU on this machine"),
    ("cuda:7", "PyTorch sees no CUDA GPU on this machine"),
    ("nonsense", "is not a device; use auto, cpu, cuda, cuda:N or mps"),
    ("meta", "not on meta"),
])
def test_a_device_the_machine_cannot_use_is_refused_up_front(command, device, said, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = {"predict": ["predict", "model.safetensors", "images"], "finetune": ["finetune", "--train", "x"],
            "pretrain": ["pretrain", "x.yaml"], "experiment": ["experiment", "x.yaml"],
            "train": ["train", "--labels", "x"], "demo": ["demo"]}[command]
    out = tmp_path / "out"
    assert main([*args, "-o", str(out), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cupre: error: device {device!r}") and said in err and "\n" not in err
    assert not out.exists()


def test_a_gpu_index_beyond_the_machines_gpus_is_named(capsys, monkeypatch):
    from cupre.devices import check_device
    from cupre.errors import CupreError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(CupreError, match=r"this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        check_device("cuda:7")
    assert check_device("cuda:1") == torch.device("cuda", 1) and check_device("auto") is None


@pytest.mark.parametrize(("content", "said"), [
    (bytes(range(256)) * 4, "not a YAML text file (not UTF-8 text)"),
    (b"a: " + b"[" * 20000 + b"]" * 20000, "nested too deeply"),
    (b"finetune:\n  optim: {lr: 1.0e+308}\n", "lr: input should be less than or equal to 10"),
    (b"pretrain:\n  detector: {fpn_channels: 1000000000}\n", "fpn_channels: input should be less than or equal to 4096"),
    (b"pretrain:\n  detector: {detections_per_img: 1000000000}\n", "detections_per_img: input should be less"),
])
def test_a_config_that_is_binary_deep_or_absurd_is_one_line(tmp_path, capsys, content, said):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    out = tmp_path / "out"
    assert main(["experiment", str(config), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and "\n" not in err and str(config) in err
    assert not out.exists()


def _laughs(depth: int) -> bytes:
    """A YAML "billion laughs" under a typed key: each list holds ten aliases of the one
    before, so ``depth`` levels expand to 10 ** ``depth`` values from a few hundred bytes."""
    levels = ["&l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    levels += [f"&l{k} [{', '.join([f'*l{k - 1}'] * 10)}]" for k in range(1, depth + 1)]
    return f"finetune:\n  optim: {{iterations: [{', '.join(levels)}]}}\n".encode()


@pytest.mark.parametrize(("depth", "said"), [
    (4, "finetune.optim.iterations: input should be a valid integer, got [['ha', "),  # 10^4 values: said in short
    (9, "not a config (its aliases expand to more than 1,000,000 values)"),  # 10^9: refused as it is read
])
def test_a_yaml_alias_bomb_is_one_short_line_said_at_once(tmp_path, capsys, depth, said):
    import time

    config = tmp_path / "laughs.yaml"
    config.write_bytes(_laughs(depth))
    start = time.perf_counter()
    assert main(["experiment", str(config), "-o", str(tmp_path / "out")]) == 2
    err = _one_line(capsys)
    assert said in err and str(config) in err and time.perf_counter() - start < 20
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flags", "said"), [
    (["--size", "100000"], "size must be from 32 to 8192 pixels, got 100,000"),
    (["--size", "9" * 4000], "size must be from 32 to 8192 pixels, got a 4000-digit number"),
    (["--n", "1000000000"], "n_images must be from 1 to 100,000, got 1,000,000,000"),
])
def test_synth_sizes_a_user_types_are_bounded(tmp_path, capsys, flags, said):
    out = tmp_path / "synth"
    assert main(["synth", "cells", "-o", str(out), "--n", "1", "--size", "64", *flags]) == 2
    assert _one_line(capsys) == f"cupre: error: synthetic cells: {said}"
    assert not out.exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder would go")
    assert main(["synth", "cells", "-o", str(blocker / "cells"), "--n", "1", "--size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cupre: error: {blocker / 'cells'}") and "Not a directory" in err and "\n" not in err


@pytest.fixture()
def tiny_model(tmp_path):
    """An untrained tiny detector (32-channel FPN, GroupNorm) as a model file, at native pixels."""
    from cupre.config import DetectorConfig
    from cupre.modelfile import write_model_file
    from cupre.models.detector import build_detector
    from tests.helpers import TINY_DETECTOR

    torch.manual_seed(0)
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "object_size": None})
    return write_model_file(tmp_path / "m.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])


def test_an_image_too_small_for_the_model_is_skipped_and_the_run_goes_on(tmp_path, tiny_model, capsys):
    """A 1 x 1 px image among good ones: a 32-channel FPN with GroupNorm cannot take it;
    it is skipped with one warning, the other image gets its masks."""
    import json

    import numpy as np
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(images / "a_dot.png")
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(images / "b.png")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_model), str(images), "-o", str(out), "--device", "cpu"]) == 1  # 1: one skipped
    err = capsys.readouterr().err
    assert "a_dot.png: the model cannot segment this 1 x 1 px image" in err and "Traceback" not in err
    index = json.loads((out / "images.json").read_text())
    assert [e.get("error") is None for e in index["images"]] == [False, True]
    assert (out / "b_masks.tif").is_file() and not (out / "a_dot_masks.tif").exists()


def test_nan_and_inf_pixels_are_named_and_read_as_the_lowest_value(tmp_path, tiny_model, capsys):
    import numpy as np
    import tifffile

    from cupre.data.imageio import read_image

    image = np.random.default_rng(0).random((64, 64)).astype(np.float32) + 1.0
    image[:4] = np.nan
    image[10, 10] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", image)
    with pytest.warns(Warning, match=r"nan.tif: 257 of 4096 pixels are NaN or infinite; read as the image's lowest"):
        read = read_image(tmp_path / "nan.tif")
    assert np.isfinite(read).all() and read[0, 0] == image[4:].min() and read[20, 20] == image[20, 20]
    tifffile.imwrite(tmp_path / "inf.tif", np.where(image == image[20, 20], np.inf, image))  # a new file, a new line
    with pytest.warns(Warning, match=r"inf.tif: \d+ of 4096 pixels are NaN or infinite"):
        assert main(["predict", str(tiny_model), str(tmp_path / "inf.tif"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "inf_masks.tif").is_file()


def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, capsys):
    import json
    import subprocess
    import sys

    from cupre.runlock import LOCK_FILE, run_lock

    out = tmp_path / "run"
    with run_lock(out, command="cupre predict"):
        assert main(["predict", "model.safetensors", str(tmp_path), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{out}: another cupre run is writing here (process {__import__('os').getpid()}" in err
        assert "'cupre predict'" in err and "\n" not in err
    assert not out.exists()  # the lock made the folder, nothing else was written: both gone
    # a lock whose process has ended: taken over, then released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    out.mkdir()
    (out / "kept.txt").write_text("a user's file")
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname()}))
    with run_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == __import__("os").getpid()
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]


def test_a_folder_named_like_an_image_is_named_in_a_warning(tmp_path, tiny_model, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / "x.png").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "real.png")
    with pytest.warns(Warning) as said:
        assert main(["predict", str(tiny_model), str(tmp_path / "x.png"), str(tmp_path / "real.png"),
                     "-o", str(tmp_path / "out")]) == 0
    assert f"{tmp_path / 'x.png'}: a folder named like an image file, with no image files in it (skipped)" in \
        [str(w.message) for w in said]


def test_an_empty_folder_as_the_only_input_is_said_once(tmp_path, tiny_model, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tiny_model), str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"cupre: error: {tmp_path / 'empty'}: a folder, with no image files in it\n"


def test_convert_model_trusting_a_zip_that_is_no_torch_file_is_one_line(tmp_path, capsys):
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.pt", "w") as z:
        z.writestr("readme.txt", "not a model")
    assert main(["convert-model", str(tmp_path / "model.pt"), "--trust"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cupre: error: {tmp_path / 'model.pt'}: not a torch model file") and "\n" not in err


def _pairs(folder, suffix: str, n: int = 2) -> None:
    import numpy as np
    import tifffile

    folder.mkdir()
    for i in range(n):
        label = np.zeros((48, 48), np.uint16)
        label[5:15, 5:15], label[25:40, 20:35] = 1, 2
        tifffile.imwrite(folder / f"img{i}.tif", (label * 90).astype(np.uint8))
        tifffile.imwrite(folder / f"img{i}{suffix}.tif", label)


def test_train_names_the_layouts_it_reads_before_writing_anything(tmp_path, capsys):
    _pairs(tmp_path / "labels", "_lbl")
    out = tmp_path / "run"
    assert main(["train", "--labels", str(tmp_path / "labels"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no known dataset layout" in err and "name_masks.tif or name_mask.tif" in err and "\n" not in err
    assert not out.exists()


def test_label_images_named_mask_are_read_like_masks(tmp_path):
    from cupre.data.formats import open_dataset
    from cupre.data.unlabeled import walk_images

    _pairs(tmp_path / "labels", "_mask")
    ds = open_dataset(tmp_path / "labels")
    assert ds.format_name == "label-images" and len(ds) == 2
    _, target = ds[0]
    assert len(target["masks"]) == 2
    assert [p.name for p in walk_images(tmp_path / "labels")] == ["img0.tif", "img1.tif"]  # labels are no images


def test_a_damaged_tiff_is_one_line_with_what_tifffile_said(tmp_path, tiny_model, capsys):
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "good.tif", np.zeros((64, 64), np.uint8))
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:64] + b"\xff" * 16)
    assert main(["predict", str(tiny_model), str(tmp_path / "cut.tif"), str(tmp_path / "good.tif"),
                 "-o", str(tmp_path / "out")]) == 1  # 1: some images failed, the others have their outputs
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    about_cut = [line for line in lines if "cut.tif" in line and "listed above" not in line]
    assert len(about_cut) == 1 and about_cut[0].startswith("cupre: warning:"), lines
    assert not [line for line in lines if "tifffile" in line and not line.startswith("cupre:")], lines
    assert (tmp_path / "out" / "good_masks.tif").is_file()


@pytest.fixture()
def weak_model(tmp_path):
    """A tiny model that finds nothing at score 0.5: every box scores as background."""
    from cupre.config import DetectorConfig
    from cupre.modelfile import write_model_file
    from cupre.models.detector import build_detector
    from tests.helpers import TINY_DETECTOR

    torch.manual_seed(0)
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "object_size": 12})
    net = build_detector(cfg)
    with torch.no_grad():  # every box is background: a model as weak as one trained for a few steps
        net.head.roi_heads.box_predictor.cls_score.weight.zero_()
        net.head.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([20.0, -20.0]))
    return write_model_file(tmp_path / "weak.safetensors", net, cfg, [{"id": 1, "name": "cell"}])


def test_a_bioimageio_export_of_a_model_that_finds_nothing_says_why_in_one_line(tmp_path, weak_model, capsys):
    pytest.importorskip("bioimageio.spec")
    out = tmp_path / "model.zip"
    assert main(["export", str(weak_model), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "finds no cell in the sample image (the built-in sample)" in err and "--sample IMAGE" in err
    assert "\n" not in err and not out.exists()


def test_an_onnx_export_of_a_model_that_finds_nothing_works_and_runs_quietly(tmp_path, weak_model, capsys):
    """No detections on the sample (a 32-channel GroupNorm mask head, zero RoIs): the
    exported network still runs in onnxruntime, and torch's notes on its exporter and
    onnxruntime's log lines stay out of what the user reads."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(weak_model), "--format", "onnx", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.is_file() and captured.err.strip() == "" and "ONNX detector" in captured.out


def test_a_setting_amt2_would_ignore_is_refused(tmp_path, capsys):
    config = tmp_path / "pre.yaml"
    config.write_text("amt2: {l2sp: {parts: [neck]}}\n")
    assert main(["pretrain", str(config), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "amt2.l2sp: AMT2's L2-SP regularises the backbone" in err and "\n" not in err


def test_a_model_file_whose_metadata_is_not_json_or_names_unknown_code_is_named(tmp_path, tiny_model, capsys):
    """Metadata entries that are not JSON name the entry; a backbone no library knows (a
    code string, say) names the model file, not only the backbone."""
    import json

    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_model), framework="pt") as fh:
        metadata, state = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    Image.new("L", (32, 32)).save(tmp_path / "img.png")
    code = {**json.loads(metadata["detector"]), "backbone": "__import__('os').system('id')"}
    for name, entry, said in [("notjson.safetensors", "{oops", "its 'detector' entry is not JSON"),
                              ("code.safetensors", json.dumps(code), "is not a timm model")]:
        save_file(state, str(tmp_path / name), metadata={**metadata, "detector": entry})
        assert main(["predict", str(tmp_path / name), str(tmp_path / "img.png"), "-o", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"cupre: error: {tmp_path / name}") and said in err and "\n" not in err


def test_an_output_folder_that_is_a_file_or_lies_under_one_is_named(tmp_path, capsys):
    """-o naming a file, or a folder under a file: one line saying which file is in the way,
    before the model is read."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    for out, said in [(blocker, "the output folder is a file"), (blocker / "run", f"{blocker} is a file")]:
        assert main(["predict", str(tmp_path / "none.safetensors"), str(tmp_path), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_sample_the_model_cannot_take_is_one_line(tmp_path, tiny_model, capsys, fmt):
    """A 1 x 1 px --sample: the 32-channel GroupNorm model cannot take it; one line names
    the sample, and nothing is written."""
    from PIL import Image

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    Image.new("L", (1, 1)).save(tmp_path / "dot.png")
    out = tmp_path / f"m.{fmt}"
    assert main(["export", str(tiny_model), "--format", fmt, "--sample", str(tmp_path / "dot.png"),
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cupre: error: {tmp_path / 'dot.png'}: the model cannot segment this 1 x 1 px sample")
    assert "\n" not in err and not out.exists()


def test_the_pages_of_a_file_that_fail_alike_are_said_once(tmp_path, tiny_model, capsys):
    """A 6-D TIFF of 16 planes of 16 x 16 px, each too small for the model: one warning
    for the first page and one line counting the other 15, not 16 warnings."""
    import tifffile

    tifffile.imwrite(tmp_path / "six_d.tif", np.zeros((2, 2, 2, 2, 16, 16), np.uint8))
    assert main(["predict", str(tiny_model), str(tmp_path / "six_d.tif"), "-o", str(tmp_path / "out")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cupre:")]
    assert len(lines) == 2 and "cannot segment this 16 x 16 px image" in lines[0]
    assert lines[1].startswith("cupre: warning: 15 more page(s) skipped for the same reason")


def test_library_notices_go_to_the_log_and_cupre_warnings_to_the_user(caplog):
    """torch's notes on its own future are for developers: logged under cupre.notices and
    printed as nothing; cupre's own warnings (and other libraries' real warnings) are
    printed as ``cupre: warning: ...``."""
    import logging

    from cupre.cli import format_warning
    from cupre.errors import CupreWarning

    torch_file = str(Path(torch.__file__).parent / "jit" / "_script.py")
    with caplog.at_level(logging.DEBUG, logger="cupre.notices"):
        shown = [format_warning("`torch.jit.script` is deprecated. Please switch to torch.compile",
                                DeprecationWarning, "/work/x/cupre/export/torchscript.py", 1),
                 format_warning("a future default changes", FutureWarning, torch_file, 1),
                 format_warning("x.tif: NaN pixels", CupreWarning, "/work/x/cupre/data/imageio.py", 1),
                 format_warning("image too large", UserWarning, str(Path(torch.__file__).parent / "x.py"), 1)]
    assert shown == ["", "", "cupre: warning: x.tif: NaN pixels\n", "cupre: warning: image too large\n"]
    assert len([r for r in caplog.records if r.name == "cupre.notices"]) == 2


@pytest.fixture()
def coco_pair(tmp_path):
    """A ground-truth COCO file and a results file of the same objects."""
    import json

    from tests.evaluation.test_livecell import gt_as_results, make_gt

    gt = make_gt(seed=3, n_images=2, n_objects=5, cell_types=["SHSY5Y"])
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(gt_as_results(gt)))
    return gt_path, dt_path



def test_evaluate_out_replaces_a_file_only_with_overwrite_and_never_its_inputs(tmp_path, coco_pair, capsys):
    gt, dt = coco_pair
    before = {p: p.read_bytes() for p in (gt, dt)}
    mine = tmp_path / "notes.json"
    mine.write_text("my notes")
    evaluate = ["evaluate", "--gt", str(gt), "--dt", str(dt), "--no-breakdown", "--out"]
    assert main([*evaluate, str(mine)]) == 2
    assert _one_line(capsys) == f"cupre: error: {mine}: exists; pass --overwrite to replace it"
    assert mine.read_text() == "my notes"
    for own, flag in [(gt, "--gt"), (dt, "--dt")]:
        assert main([*evaluate, str(own), "--overwrite"]) == 2
        assert f"{own}: is the command's own input ({flag})" in _one_line(capsys)
    assert {p: p.read_bytes() for p in (gt, dt)} == before
    assert main([*evaluate, str(mine), "--overwrite"]) == 0
    assert '"segm"' in mine.read_text()


def test_evaluate_never_writes_over_the_results_of_a_predict_folder(tmp_path, coco_pair, capsys):
    gt, dt = coco_pair
    folder = tmp_path / "predicted"
    folder.mkdir()
    (folder / "results_coco.json").write_bytes(dt.read_bytes())
    assert main(["evaluate", "--gt", str(gt), "--dt", str(folder), "--out", str(folder / "results_coco.json"),
                 "--overwrite"]) == 2
    assert "is the command's own input (--dt)" in _one_line(capsys)
    assert (folder / "results_coco.json").read_bytes() == dt.read_bytes()


def test_convert_and_split_replace_a_file_only_with_overwrite_and_never_their_input(tmp_path, capsys):
    from cupre.data.synthetic import write_synthetic

    gt = write_synthetic("cells", tmp_path / "cells", n_images=2, size=64, seed=0)
    data = gt.read_bytes()
    mine = tmp_path / "mine.json"
    mine.write_text("mine")
    for command in (["convert", str(gt), "-o"], ["split", str(gt), "--fraction", "0.5", "-o"]):
        assert main([*command, str(mine)]) == 2
        assert _one_line(capsys) == f"cupre: error: {mine}: exists; pass --overwrite to replace it"
        assert main([*command, str(gt), "--overwrite"]) == 2
        assert f"{gt}: is the command's own input" in _one_line(capsys)
        assert mine.read_text() == "mine" and gt.read_bytes() == data
        assert main([*command, str(mine), "--overwrite"]) == 0
        assert mine.read_text().startswith("{")
        mine.write_text("mine")


def test_convert_model_keeps_an_existing_model_file(tmp_path, capsys):
    old, new = tmp_path / "model.pt", tmp_path / "model.safetensors"
    old.write_bytes(b"an old model")
    new.write_bytes(b"a model of mine")
    assert main(["convert-model", str(old)]) == 2
    assert _one_line(capsys) == f"cupre: error: {new}: exists; pass --overwrite to replace it"
    assert main(["convert-model", str(old), "-o", str(old), "--overwrite"]) == 2
    assert "is the command's own input (MODEL)" in _one_line(capsys)
    assert new.read_bytes() == b"a model of mine" and old.read_bytes() == b"an old model"


@pytest.mark.parametrize("on", [255, 1])
def test_a_binary_mask_given_as_a_label_image_is_split_into_its_regions(tmp_path, capsys, on):
    """A beginner's 0/255 (or 0/1) PNG of four nuclei as ``name_masks.png``: read as four
    objects, not one, with one warning that says so and what to save instead."""
    import json

    from PIL import Image

    folder = tmp_path / "labels"
    folder.mkdir()
    yy, xx = np.mgrid[:64, :64]
    mask = np.zeros((64, 64), np.uint8)
    for cy, cx in [(12, 12), (12, 48), (48, 12), (46, 46)]:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = on
    Image.fromarray(mask).save(folder / "a_masks.png")
    Image.fromarray((mask > 0).astype(np.uint8) * 120 + 20).save(folder / "a.png")
    out = tmp_path / "a.json"
    with pytest.warns(Warning) as said:
        assert main(["convert", str(folder), "-o", str(out)]) == 0
    lines = [str(w.message) for w in said if "binary mask" in str(w.message)]
    assert lines == [f"{folder / 'a_masks.png'}: a binary mask (one value, {on}, over 4 separate regions), not a "
                     "label image; read as 4 objects, one per region (save a label image, one id per cell, to keep "
                     "touching cells apart)"]
    assert len(json.loads(out.read_text())["annotations"]) == 4


def test_a_label_image_of_one_connected_object_or_of_several_ids_is_read_as_it_is(tmp_path, recwarn):
    from cupre.data.label_images import binary_as_objects

    one = np.zeros((32, 32), np.uint16)
    one[4:12, 4:12] = 7
    two = one.copy()
    two[20:28, 20:28] = 9
    assert binary_as_objects(one, "one.tif") is one and binary_as_objects(two, "two.tif") is two
    assert not [w for w in recwarn if "binary mask" in str(w.message)]


@pytest.mark.parametrize(("argv", "said"), [
    (["train", "--lables", "my_labels"], "cupre train: error: unrecognized arguments: --lables my_labels"),
    (["evaluate", "--gtt", "gt.json", "--dt", "r.json"], "cupre evaluate: error: unrecognized arguments: --gtt gt.json"),
    (["train"], "cupre train: error: the following arguments are required: --labels, -o/--out"),
])
def test_a_misspelt_flag_is_named_before_a_missing_one(tmp_path, capsys, argv, said):
    """argparse alone says "--labels is required" for ``--lables``, hiding the typo."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == said


def test_predict_takes_a_train_run_folder_and_finds_its_model(tmp_path, tiny_model, capsys):
    """``cupre predict my-run ...`` with the folder ``cupre train`` wrote: its model is
    ``finetune/model.safetensors`` (or, after self-training, ``finetune/selftrain/``'s)."""
    import shutil

    from PIL import Image

    from cupre.modelfile import resolve_model_file

    run = tmp_path / "my-run"
    (run / "finetune").mkdir(parents=True)
    (run / "pretrain").mkdir()
    shutil.copy(tiny_model, run / "finetune" / "model.safetensors")
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "new.png")
    assert main(["predict", str(run), str(tmp_path / "new.png"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "new_masks.tif").is_file()
    capsys.readouterr()  # the progress bar
    (run / "finetune" / "selftrain").mkdir()
    shutil.copy(tiny_model, run / "finetune" / "selftrain" / "model.safetensors")
    assert resolve_model_file(run) == run / "finetune" / "selftrain" / "model.safetensors"
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text("seed: 0\n")  # a run that has not written its model yet
    assert main(["predict", str(empty), str(tmp_path / "new.png"), "-o", str(tmp_path / "out2")]) == 2
    assert "empty-run: run folder holds no model.safetensors (nor finetune/model.safetensors" in _one_line(capsys)


def _cupre(*args: str, timeout: float = 120) -> "subprocess.CompletedProcess":
    """``python -m cupre.cli ...`` in its own process, so that a hang fails the test (the
    timeout) instead of stopping the suite."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "cupre.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("layout", ["bbbc038", "ctc"])
def test_a_named_pipe_named_like_a_mask_is_skipped_not_opened(tmp_path, layout):
    """Opening a named pipe waits for a writer forever: the readers skip it with a warning
    (``--strict``: one line naming it) and read the rest."""
    import json

    from tests.helpers import fifo_dataset

    root = tmp_path / ("stage1_train" if layout == "bbbc038" else "Fluo-N2DH-X")
    pipe = fifo_dataset(root, layout)
    what = "mask file" if layout == "bbbc038" else "label image"
    done = _cupre("convert", str(root), "-o", str(tmp_path / "a.json"))
    assert done.returncode == 0, done.stderr
    assert f"cupre: warning: {pipe}: a named pipe, not a {what} (skipped" in done.stderr
    assert len(json.loads((tmp_path / "a.json").read_text())["annotations"]) == 1
    done = _cupre("convert", str(root), "-o", str(tmp_path / "b.json"), "--strict")
    assert done.returncode == 2 and done.stderr.strip() == f"cupre: error: {pipe}: a named pipe, not a {what}"
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("layout", ["label-images", "bbbc038"])
def test_a_png_decompression_bomb_as_a_label_image_or_mask_is_one_line(tmp_path, capsys, layout):
    """A 1-bit PNG of 20000 x 20000 zeros is a few tens of KB and declares 4e8 pixels, over
    Pillow's limit: one line naming the file, no traceback, nothing written."""
    from PIL import Image

    if layout == "label-images":
        root = tmp_path / "labels"
        root.mkdir()
        Image.new("L", (16, 16)).save(root / "a.png")
        bomb = root / "a_masks.png"
    else:
        root = tmp_path / "stage1_train"
        (root / "s1" / "images").mkdir(parents=True)
        (root / "s1" / "masks").mkdir()
        Image.new("L", (16, 16)).save(root / "s1" / "images" / "s1.png")
        bomb = root / "s1" / "masks" / "m.png"
    Image.new("1", (20000, 20000)).save(bomb)
    assert bomb.stat().st_size < 200_000
    out = tmp_path / "a.json"
    assert main(["convert", str(root), "-o", str(out)]) == 2
    err = _one_line(capsys)
    assert err.startswith(f"cupre: error: {bomb}: cannot read ") and "DecompressionBombError" in err
    assert not out.exists()


def test_pillows_decompression_bomb_warning_made_an_error_is_one_line_too(tmp_path):
    """Between one and two times ``Image.MAX_IMAGE_PIXELS`` Pillow only warns; where that
    warning is an error (``-W error``) the readers name the file all the same."""
    import warnings

    from PIL import Image

    from cupre.data.bbbc038 import read_mask_png
    from cupre.data.imageio import read_image
    from cupre.data.label_images import image_size
    from cupre.errors import CupreError

    path = tmp_path / "big.png"
    Image.new("1", (16, 16)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = 200  # 256 pixels: over once, under twice
        try:
            for read in (read_mask_png, read_image, image_size):
                with pytest.raises(CupreError, match=r"big\.png: cannot read .*DecompressionBombWarning"):
                    read(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old


@pytest.mark.parametrize("layout", ["label-images", "ctc"])
def test_a_label_image_of_more_ids_than_it_can_hold_is_refused_before_its_mask_stack(tmp_path, capsys, layout):
    """300 x 300 pixels of 70,000 distinct ids would be a 70,000 x 300 x 300 mask stack
    (5.9 GiB): refused in one line, as no label image, before anything is allocated."""
    import tifffile

    label = (np.arange(300 * 300, dtype=np.uint32).reshape(300, 300) % 70000) + 1
    image = np.zeros((300, 300), np.uint8)
    if layout == "label-images":
        root = tmp_path / "labels"
        root.mkdir()
        tifffile.imwrite(root / "a.tif", image)
        bad = root / "a_masks.tif"
    else:
        root = tmp_path / "Fluo-N2DH-X"
        (root / "01").mkdir(parents=True)
        (root / "01_GT" / "SEG").mkdir(parents=True)
        tifffile.imwrite(root / "01" / "t000.tif", image)
        bad = root / "01_GT" / "SEG" / "man_seg000.tif"
    tifffile.imwrite(bad, label)
    out = tmp_path / "a.json"
    assert main(["convert", str(root), "-o", str(out)]) == 2
    assert _one_line(capsys) == (f"cupre: error: {bad}: label image holds 70000 distinct ids in 300x300 pixels, more "
                                 "than one per 4 pixels: not instance labels (an intensity image saved as one?)")
    assert not out.exists()


@pytest.fixture()
def far_polygon(tmp_path):
    """A COCO file of a 32 x 32 image with a good polygon and one with a point at 1e9
    (pycocotools' rasteriser crashes on it: SIGSEGV in ``cupre convert``, ``vector::reserve``
    in ``cupre evaluate``); and a results file holding both polygons."""
    import json

    from PIL import Image

    Image.new("L", (32, 32)).save(tmp_path / "a.png")
    good, far = [10, 10, 20, 10, 20, 20, 10, 20], [10, 10, 1e9, 10, 20, 20, 10, 20]
    ann = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10], "area": 100, "iscrowd": 0}
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
          "categories": [{"id": 1, "name": "cell"}],
          "annotations": [{**ann, "id": 1, "segmentation": [good]}, {**ann, "id": 2, "segmentation": [far]}]}
    paths = {name: tmp_path / f"{name}.json" for name in ("gt", "gt_ok", "dt")}
    paths["gt"].write_text(json.dumps(gt))
    paths["gt_ok"].write_text(json.dumps({**gt, "annotations": gt["annotations"][:1]}))
    paths["dt"].write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": s, "segmentation": [p]}
                                       for s, p in ((0.9, good), (0.8, far))]))
    return paths


FAR = "polygon point (1e+09, 10) lies far outside the 32x32 image"


def test_a_polygon_point_far_outside_its_image_is_a_malformed_annotation_in_convert(tmp_path, far_polygon):
    import json

    gt = far_polygon["gt"]
    done = _cupre("convert", str(gt), "-o", str(tmp_path / "a.json"))
    assert done.returncode == 0, done.stderr
    assert f"cupre: warning: {gt}: annotation id 2: {FAR} (skipped" in done.stderr
    assert [a["id"] for a in json.loads((tmp_path / "a.json").read_text())["annotations"]] == [1]
    done = _cupre("convert", str(gt), "-o", str(tmp_path / "b.json"), "--strict")
    assert done.returncode == 2 and done.stderr.strip() == f"cupre: error: {gt}: annotation id 2: {FAR}"


def test_a_polygon_point_far_outside_its_image_is_a_malformed_result_or_annotation_in_evaluate(far_polygon):
    gt, gt_ok, dt = far_polygon["gt"], far_polygon["gt_ok"], far_polygon["dt"]
    done = _cupre("evaluate", "--gt", str(gt_ok), "--dt", str(dt))
    assert done.returncode == 0, done.stderr
    assert f"cupre: warning: {dt}: result #1 (image_id 1): {FAR} (skipped)" in done.stderr
    done = _cupre("evaluate", "--gt", str(gt_ok), "--dt", str(dt), "--strict")
    assert done.returncode == 2 and done.stderr.strip() == f"cupre: error: {dt}: result #1 (image_id 1): {FAR}"
    done = _cupre("evaluate", "--gt", str(gt), "--dt", str(dt))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"cupre: warning: {gt}: annotations[1] (id 2): {FAR} (skipped)" in done.stderr
