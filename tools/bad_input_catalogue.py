"""Run every subcommand on bad input, as a careful user or a hostile file would, and print
the catalogue: case, exit code, seconds, the first line cupre printed on stderr.

    python tools/bad_input_catalogue.py [--work DIR] [--only WORD] [--timeout 120]

Each case is its own ``python -m cupre.cli ...`` process on files this script makes in
``--work`` (a tiny untrained model, a few images, configs). A case passes when the
command ends within the timeout, prints no traceback, exits with the code the case
expects (2: refused; 1: an image skipped, the rest done; 0: done with a warning), says what
it must say (a case that says nothing of its problem is *silent*), prints no error or
warning line over 300 characters (a list of the valid keys aside) and leaves every file
outside its ``-o`` folder as it was. Exit status: 1 if any case fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers (input makers) of this checkout

LINE = 300  # characters: the longest error or warning line a case may print


@dataclass
class Case:
    name: str
    args: list[str]
    expect: int = 2
    env: dict | None = None
    says: str | None = None  # what stderr must hold (else the case is silent)
    absent: str | None = None  # what stderr must not hold
    python: tuple[str, ...] = ()  # flags of python itself (-X importtime)


def tiny_models(work: Path) -> None:
    """model.safetensors (untrained, 32-channel FPN) and weak.safetensors (finds nothing)."""
    import torch

    from cupre.config import DetectorConfig
    from cupre.modelfile import write_model_file
    from cupre.models.detector import build_detector

    tiny = {"backbone": "resnet18", "fpn_channels": 32, "anchor_sizes": [4, 8, 16, 32, 64],
            "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100, "detections_per_img": 50}
    torch.manual_seed(0)
    cfg = DetectorConfig.from_dict({**tiny, "object_size": None})
    net = build_detector(cfg)
    write_model_file(work / "model.safetensors", net, cfg, [{"id": 1, "name": "cell"}])
    with torch.no_grad():  # every box background: as weak as a model trained for a few steps
        net.head.roi_heads.box_predictor.cls_score.weight.zero_()
        net.head.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([20.0, -20.0]))
    write_model_file(work / "weak.safetensors", net, cfg, [{"id": 1, "name": "cell"}])
    torch.save({"model": net.state_dict()}, work / "pickled.pt")


def altered_metadata(src: Path, dst: Path, change) -> None:
    """A copy of a safetensors file whose JSON metadata ``change(meta)`` rewrote."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = {k: json.loads(v) if v[:1] in "[{" else v for k, v in header["__metadata__"].items()}
    change(meta)
    header["__metadata__"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def make_inputs(work: Path) -> None:
    import tifffile
    from PIL import Image

    from cupre.data.synthetic import write_synthetic

    rng = np.random.default_rng(0)
    write_synthetic("cells", work / "cells", n_images=4, size=96, seed=0)
    good = work / "images"
    good.mkdir()
    for k in range(2):
        Image.fromarray((rng.random((96, 96)) * 255).astype(np.uint8)).save(good / f"good{k}.png")
    odd = work / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(odd / "one_pixel.png")
    tifffile.imwrite(odd / "six_d.tif", np.zeros((2, 2, 2, 2, 16, 16), np.uint8))
    tifffile.imwrite(odd / "nan.tif", np.full((96, 96), np.nan, np.float32))
    tifffile.imwrite(odd / "inf.tif", np.where(rng.random((96, 96)) > 0.5, np.inf, 1.0).astype(np.float32))
    tifffile.imwrite(odd / "damaged.tif", (rng.random((64, 64)) * 255).astype(np.uint8))
    data = (odd / "damaged.tif").read_bytes()
    (odd / "damaged.tif").write_bytes(data[: len(data) // 3])
    (odd / "text.png").write_text("not an image\n")
    (odd / "empty.tif").write_bytes(b"")
    (odd / "folder.png").mkdir()
    Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(odd / "good_rgb.png")
    (work / "plain.txt").write_text("hello\n")
    (work / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (work / "deep.yaml").write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    (work / "python.yaml").write_text("lr: !!python/object/apply:os.system ['echo owned']\n")
    (work / "not.json").write_text("{ this is not json")
    (work / "wrong.json").write_text(json.dumps({"images": "none"}))
    (work / "results_list.json").write_text(json.dumps([{"image_id": 999, "score": "high"}]))
    with zipfile.ZipFile(work / "notorch.pt", "w") as zf:
        zf.writestr("hello.txt", "no torch here")
    (work / "blocker").write_text("a file where a folder should be\n")
    binary = work / "binary_labels"  # a beginner's 0/255 mask of four nuclei as a label image
    binary.mkdir()
    yy, xx = np.mgrid[:64, :64]
    mask = np.zeros((64, 64), np.uint8)
    for cy, cx in [(12, 12), (12, 48), (48, 12), (46, 46)]:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 255
    Image.fromarray(mask).save(binary / "a_masks.png")
    Image.fromarray(mask // 2 + 20).save(binary / "a.png")
    if hasattr(os, "mkfifo"):  # named pipes named like a mask (BBBC038) or label image (CTC)
        from tests.helpers import fifo_dataset

        fifo_dataset(work / "fifo_bbbc038", "bbbc038")
        fifo_dataset(work / "fifo_ctc", "ctc")
    bomb = work / "bomb_labels"  # a 1-bit PNG of 20000 x 20000 zeros: a few tens of KB, 4e8 pixels
    bomb.mkdir()
    Image.new("L", (16, 16)).save(bomb / "a.png")
    Image.new("1", (20000, 20000)).save(bomb / "a_masks.png")
    bomb = work / "bomb_bbbc038" / "s1"
    (bomb / "images").mkdir(parents=True)
    (bomb / "masks").mkdir()
    Image.new("L", (16, 16)).save(bomb / "images" / "s1.png")
    Image.new("1", (20000, 20000)).save(bomb / "masks" / "m.png")
    many = work / "many_ids"  # 70,000 ids in 300 x 300 pixels: a 5.9 GiB mask stack if read
    many.mkdir()
    tifffile.imwrite(many / "a.tif", np.zeros((300, 300), np.uint8))
    tifffile.imwrite(many / "a_masks.tif", np.arange(90000, dtype=np.uint32).reshape(300, 300) % 70000 + 1)
    far = work / "far_polygon"  # a polygon point at 1e9 in a 32 x 32 image (pycocotools: SIGSEGV)
    far.mkdir()
    Image.new("L", (32, 32)).save(far / "a.png")
    good, wild = [10, 10, 20, 10, 20, 20, 10, 20], [10, 10, 1e9, 10, 20, 20, 10, 20]
    ann = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10], "area": 100, "iscrowd": 0}
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
          "categories": [{"id": 1, "name": "cell"}],
          "annotations": [{**ann, "id": 1, "segmentation": [good]}, {**ann, "id": 2, "segmentation": [wild]}]}
    (far / "gt.json").write_text(json.dumps(gt))
    (far / "gt_ok.json").write_text(json.dumps({**gt, "annotations": gt["annotations"][:1]}))
    (far / "dt.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": s, "segmentation": [q]}
                                             for s, q in ((0.9, good), (0.8, wild))]))
    round3_inputs(work)
    layout = work / "unknown_layout"
    layout.mkdir()
    for k in range(2):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(layout / f"img{k}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(layout / f"img{k}_outline.png")


def round3_inputs(work: Path) -> None:
    """Issue 37's last cases: a TIFF claiming 10 Gpx, a link to the parent folder, a lost
    OME-Zarr chunk, a 1 px tall image, a copied BBBC038 mask, labels a reader skips."""
    import tifffile
    from PIL import Image

    from tests.data.test_lazy import write_ome_zarr
    from tests.helpers import deflate_bomb_tiff

    rng = np.random.default_rng(1)
    for folder in ("tiff_bomb", "tiff_bomb_labels", "line"):
        (work / folder).mkdir()
    deflate_bomb_tiff(work / "tiff_bomb" / "bomb.tif")
    Image.new("L", (16, 16)).save(work / "tiff_bomb_labels" / "a.png")
    deflate_bomb_tiff(work / "tiff_bomb_labels" / "a_masks.tif")
    tifffile.imwrite(work / "line" / "line.tif", (rng.random((1, 100000)) * 255).astype(np.uint8))
    linked = work / "linked" / "images"  # images/parent -> .. : the walk would take linked/outside.png
    linked.mkdir(parents=True)
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(linked / "a.png")
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(work / "linked" / "outside.png")
    (linked / "parent").symlink_to("..", target_is_directory=True)
    write_ome_zarr(work / "lost_chunk.zarr", (rng.random((128, 128)) * 200 + 20).astype(np.uint8), "yx")
    (work / "lost_chunk.zarr" / "0" / "c" / "1" / "1").unlink()
    dup = work / "dup_bbbc038" / "s1"
    (dup / "images").mkdir(parents=True)
    (dup / "masks").mkdir()
    img = np.zeros((32, 32), np.uint8)
    img[4:10, 4:10] = 200
    Image.fromarray(img).save(dup / "images" / "s1.png")
    Image.fromarray((img > 0).astype(np.uint8) * 255).save(dup / "masks" / "m1.png")
    Image.fromarray((img > 0).astype(np.uint8) * 255).save(dup / "masks" / "m1_copy.png")
    for bad in (4, 2, 1):  # COCO files of 4 images, the annotations of `bad` of them naming no category
        skipped = work / f"skipped{bad}"
        skipped.mkdir()
        images, anns = [], []
        for k in range(4):
            cell = np.full((64, 64), 20, np.uint8)
            cell[8:20, 8:20] = cell[36:50, 30:44] = 200
            Image.fromarray(cell).save(skipped / f"i{k}.png")
            images.append({"id": k + 1, "file_name": f"i{k}.png", "height": 64, "width": 64})
            for j, (x, y, n) in enumerate(((8, 8, 12), (30, 36, 14))):
                anns.append({"id": 10 * k + j + 1, "image_id": k + 1, "category_id": 7 if k < bad else 1,
                             "segmentation": [[x, y, x + n, y, x + n, y + n, x, y + n]], "bbox": [x, y, n, n],
                             "area": n * n, "iscrowd": 0})
        (skipped / "annotations.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}))


def train_run(work: Path) -> None:
    """A `cupre train` run folder as its first call left it (its resolved config), and the
    config it was started with beside a changed one."""
    import yaml

    from cupre.experiments.workflow import load_workflow
    from cupre.train.run import Run

    (work / "train_started.yaml").write_text(yaml.safe_dump({"finetune": {"optim": {"iterations": 300}}}))
    (work / "train_changed.yaml").write_text(yaml.safe_dump({"finetune": {"optim": {"iterations": 600}}}))
    cfg = load_workflow(work / "train_started.yaml", labels=str(work / "skipped1" / "annotations.json"))
    Run(work / "train_run", tensorboard=False).save_config(cfg.to_dict())


def configs(work: Path) -> None:
    import yaml

    cells = str(work / "cells" / "annotations.json")

    def write(name: str, data: dict) -> None:
        (work / name).write_text(yaml.safe_dump(data))

    write("ft_lr.yaml", {"init": "scratch", "train": cells, "optim": {"lr": 1e308}})
    write("ft_fpn.yaml", {"init": "scratch", "train": cells, "detector": {"fpn_channels": 10**9}})
    write("ft_dets.yaml", {"init": "scratch", "train": cells, "detector": {"detections_per_img": 10**9}})
    write("ft_unknown.yaml", {"init": "scratch", "train": cells, "learning_rate": 0.1})
    write("ft_type.yaml", {"init": "scratch", "train": cells, "optim": {"iterations": "many"}})
    write("ft_neg.yaml", {"init": "scratch", "train": cells, "optim": {"iterations": -5}})
    write("ft_backbone.yaml", {"init": "scratch", "train": cells, "detector": {"backbone": "__import__('os')"}})
    write("pre_nococo.yaml", {"unlabeled": [str(work / "images")]})
    write("pre_nounlabeled.yaml", {"coco": [cells]})
    write("pre_missing.yaml", {"coco": [cells], "unlabeled": [str(work / "nowhere")]})
    write("pre_parts.yaml", {"coco": [cells], "unlabeled": [str(work / "images")], "amt2": {"l2sp": {"parts": ["neck"]}}})
    write("exp_method.yaml", {"data": {"labeled": cells}, "methods": ["cupre", "magic"]})
    write("exp_empty.yaml", {})
    write("exp_fraction.yaml", {"data": {"labeled": cells}, "methods": ["scratch"], "fractions": [1.5]})
    (work / "list.yaml").write_text("- just\n- a list\n")
    for depth in (4, 9):  # "billion laughs": lists of ten aliases of the list before, under finetune.optim
        levels = ["&l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
        levels += [f"&l{k} [{', '.join([f'*l{k - 1}'] * 10)}]" for k in range(1, depth + 1)]
        (work / f"laughs{depth}.yaml").write_text(f"finetune:\n  optim: {{iterations: [{', '.join(levels)}]}}\n")


def cases(work: Path) -> list[Case]:
    w = str(work)
    m, weak, cells = f"{w}/model.safetensors", f"{w}/weak.safetensors", f"{w}/cells/annotations.json"
    imgs, odd, o = f"{w}/images", f"{w}/odd", f"{w}/out"
    c: list[Case] = []
    add = lambda name, *args, expect=2, env=None: c.append(Case(name, list(args), expect, env))  # noqa: E731
    # predict: the model
    add("predict: model path missing", "predict", f"{w}/none.safetensors", imgs, "-o", f"{o}/p1")
    # (given first without --model, a folder or file that is no model is an input: the shipped model segments it)
    add("predict: --model folder without a model file", "predict", "--model", f"{w}/cells", imgs, "-o", f"{o}/p2")
    add("predict: --model a text file", "predict", "--model", f"{w}/plain.txt", imgs, "-o", f"{o}/p3")
    add("predict: truncated safetensors", "predict", f"{w}/cut.safetensors", imgs, "-o", f"{o}/p4")
    add("predict: pickled .pt model", "predict", f"{w}/pickled.pt", imgs, "-o", f"{o}/p5")
    add("predict: metadata detector not a mapping", "predict", f"{w}/meta_detector.safetensors", imgs, "-o", f"{o}/p6")
    add("predict: metadata categories of the wrong shape", "predict", f"{w}/meta_cats.safetensors", imgs, "-o",
        f"{o}/p7")
    add("predict: metadata fpn_channels 10^9", "predict", f"{w}/meta_fpn.safetensors", imgs, "-o", f"{o}/p8")
    add("predict: metadata detections_per_img 10^9", "predict", f"{w}/meta_dets.safetensors", imgs, "-o", f"{o}/p9")
    add("predict: metadata backbone as code", "predict", f"{w}/meta_code.safetensors", imgs, "-o", f"{o}/p10")
    add("predict: metadata not JSON", "predict", f"{w}/meta_json.safetensors", imgs, "-o", f"{o}/p11")
    # predict: the inputs
    add("predict: input path missing", "predict", m, f"{w}/nowhere", "-o", f"{o}/i1")
    add("predict: empty folder", "predict", m, f"{w}/empty_folder", "-o", f"{o}/i2")
    add("predict: glob matching nothing", "predict", m, f"{w}/*.nothing", "-o", f"{o}/i3")
    add("predict: 1 x 1 px image among good ones", "predict", m, f"{odd}/one_pixel.png", f"{imgs}/good0.png",
        "-o", f"{o}/i4", expect=1)
    add("predict: 6-D TIFF", "predict", m, f"{odd}/six_d.tif", "-o", f"{o}/i5", expect=1)
    add("predict: all-NaN float TIFF", "predict", m, f"{odd}/nan.tif", "-o", f"{o}/i6", expect=0)
    add("predict: NaN/inf float TIFF", "predict", m, f"{odd}/inf.tif", "-o", f"{o}/i7", expect=0)
    add("predict: damaged TIFF", "predict", m, f"{odd}/damaged.tif", "-o", f"{o}/i8", expect=1)
    add("predict: text file named .png", "predict", m, f"{odd}/text.png", "-o", f"{o}/i9", expect=1)
    add("predict: zero-byte .tif", "predict", m, f"{odd}/empty.tif", "-o", f"{o}/i10", expect=1)
    add("predict: a folder named x.png", "predict", m, f"{odd}/folder.png", f"{imgs}/good0.png", "-o", f"{o}/i11",
        expect=0)
    add("predict: a text file as input", "predict", m, f"{w}/plain.txt", "-o", f"{o}/i12", expect=1)
    # predict: the options
    for i, (name, flags) in enumerate([
            ("--device cuda without a GPU", ["--device", "cuda"]), ("--device cuda:7", ["--device", "cuda:7"]),
            ("--device meta", ["--device", "meta"]), ("--device nonsense", ["--device", "nonsense"]),
            ("--score-threshold 2", ["--score-threshold", "2"]), ("--score-threshold -1", ["--score-threshold", "-1"]),
            ("--score-threshold nan", ["--score-threshold", "nan"]),
            ("--max-detections 0", ["--max-detections", "0"]), ("--max-detections 10^9", ["--max-detections", "1e9"]),
            ("--max-detections 10^7", ["--max-detections", "10000000"]),
            ("--tile-size 0", ["--tile-size", "0"]), ("--tile-overlap above the tile size", ["--tile-overlap", "4096"]),
            ("--diameter -5", ["--diameter", "-5"]), ("--diameter 1e9", ["--diameter", "1e9"]),
            ("--diameter inf", ["--diameter", "inf"]),
            ("--batch-size 0", ["--batch-size", "0"]), ("--channel -1", ["--channel", "-1"]),
            ("--workers 0", ["--workers", "0"]), ("--workers with --cluster", ["--workers", "2", "--cluster", "x:1"]),
            ("--precision fp8", ["--precision", "fp8"]), ("--threads 0", ["--threads", "0"]),
            ("--threads -3", ["--threads", "-3"])]):
        add(f"predict: {name}", "predict", m, imgs, "-o", f"{o}/f{i}", *flags)
    add("predict: --channel 5 of a grey image", "predict", m, imgs, "-o", f"{o}/c5", "--channel", "5", expect=0)
    add("predict: -o is a file", "predict", m, imgs, "-o", f"{w}/plain.txt")
    add("predict: -o under a file", "predict", m, imgs, "-o", f"{w}/blocker/out")
    add("predict: outputs exist, no --overwrite", "predict", m, imgs, "-o", f"{w}/done")
    add("predict: --resume with nothing to resume", "predict", m, imgs, "-o", f"{o}/r1", "--resume")
    add("predict: unknown flag", "predict", m, imgs, "-o", f"{o}/u1", "--colour", "red")
    # finetune
    ft = ["finetune", "--init", "scratch", "--iterations", "1"]
    add("finetune: --train missing", *ft, "--train", f"{w}/nowhere", "-o", f"{o}/t1")
    add("finetune: --train a folder of unknown layout", *ft, "--train", f"{w}/unknown_layout", "-o", f"{o}/t2")
    add("finetune: --train not JSON", *ft, "--train", f"{w}/not.json", "-o", f"{o}/t3")
    add("finetune: --train a COCO file of the wrong shape", *ft, "--train", f"{w}/wrong.json", "-o", f"{o}/t4")
    add("finetune: --init unknown", "finetune", "--init", "magic", "--train", cells, "-o", f"{o}/t5")
    add("finetune: --init cupre without --from", "finetune", "--init", "cupre", "--train", cells, "-o", f"{o}/t6")
    add("finetune: --from a folder without products", "finetune", "--init", "cupre", "--from", f"{w}/images",
        "--train", cells, "-o", f"{o}/t7")
    add("finetune: --fraction 0", *ft, "--train", cells, "--fraction", "0", "-o", f"{o}/t8")
    add("finetune: --fraction 2", *ft, "--train", cells, "--fraction", "2", "-o", f"{o}/t9")
    add("finetune: --iterations -1", "finetune", "--init", "scratch", "--train", cells, "--iterations", "-1",
        "-o", f"{o}/t10")
    add("finetune: --config binary file", "finetune", "--config", f"{w}/binary.yaml", "-o", f"{o}/t11")
    add("finetune: --config 20,000-deep nesting", "finetune", "--config", f"{w}/deep.yaml", "-o", f"{o}/t12")
    add("finetune: --config with a !!python tag", "finetune", "--config", f"{w}/python.yaml", "-o", f"{o}/t13")
    add("finetune: --config a YAML list", "finetune", "--config", f"{w}/list.yaml", "-o", f"{o}/t14")
    add("finetune: config lr 1e308", "finetune", "--config", f"{w}/ft_lr.yaml", "-o", f"{o}/t15")
    add("finetune: config fpn_channels 10^9", "finetune", "--config", f"{w}/ft_fpn.yaml", "-o", f"{o}/t16")
    add("finetune: config detections_per_img 10^9", "finetune", "--config", f"{w}/ft_dets.yaml", "-o", f"{o}/t17")
    add("finetune: config unknown key", "finetune", "--config", f"{w}/ft_unknown.yaml", "-o", f"{o}/t18")
    add("finetune: config iterations 'many'", "finetune", "--config", f"{w}/ft_type.yaml", "-o", f"{o}/t19")
    add("finetune: config iterations -5", "finetune", "--config", f"{w}/ft_neg.yaml", "-o", f"{o}/t20")
    add("finetune: config backbone as code", "finetune", "--config", f"{w}/ft_backbone.yaml", "-o", f"{o}/t21")
    add("finetune: -o under a file", *ft, "--train", cells, "-o", f"{w}/blocker/ft")
    add("finetune: --resume with nothing to resume", "finetune", "-o", f"{o}/t22", "--resume")
    add("finetune: --from-model a pickled .pt", "finetune", "--from-model", f"{w}/pickled.pt", "--train", cells,
        "--iterations", "1", "-o", f"{o}/t23")
    add("finetune: --split file missing", *ft, "--train", cells, "--split", f"{w}/nosplit.json", "-o", f"{o}/t24")
    add("finetune: --device cuda without a GPU", *ft, "--train", cells, "--device", "cuda", "-o", f"{o}/t25")
    # pretrain
    add("pretrain: config missing", "pretrain", f"{w}/none.yaml", "-o", f"{o}/q1")
    add("pretrain: config binary", "pretrain", f"{w}/binary.yaml", "-o", f"{o}/q2")
    add("pretrain: no COCO dataset", "pretrain", f"{w}/pre_nococo.yaml", "-o", f"{o}/q3")
    add("pretrain: no unlabeled images", "pretrain", f"{w}/pre_nounlabeled.yaml", "-o", f"{o}/q4")
    add("pretrain: unlabeled folder missing", "pretrain", f"{w}/pre_missing.yaml", "-o", f"{o}/q5")
    add("pretrain: amt2.l2sp.parts (not a setting)", "pretrain", f"{w}/pre_parts.yaml", "-o", f"{o}/q6")
    add("pretrain: --resume with nothing to resume", "pretrain", f"{w}/pre_nococo.yaml", "-o", f"{o}/q7",
        "--resume")
    # experiment
    add("experiment: config missing", "experiment", f"{w}/none.yaml", "-o", f"{o}/e1")
    add("experiment: unknown method", "experiment", f"{w}/exp_method.yaml", "-o", f"{o}/e2")
    add("experiment: empty config", "experiment", f"{w}/exp_empty.yaml", "-o", f"{o}/e3")
    add("experiment: fraction 1.5", "experiment", f"{w}/exp_fraction.yaml", "-o", f"{o}/e4")
    add("experiment: binary config", "experiment", f"{w}/binary.yaml", "-o", f"{o}/e5")
    add("experiment: YAML alias bomb, 10^4 values under a typed key", "experiment", f"{w}/laughs4.yaml", "-o",
        f"{o}/e6")
    add("experiment: YAML alias bomb, 10^9 values", "experiment", f"{w}/laughs9.yaml", "-o", f"{o}/e7")
    # train
    add("train: --labels missing", "train", "--labels", f"{w}/nowhere", "-o", f"{o}/w1")
    add("train: --labels of unknown layout", "train", "--labels", f"{w}/unknown_layout", "-o", f"{o}/w2")
    add("train: --unlabeled missing", "train", "--labels", cells, "--unlabeled", f"{w}/nowhere", "-o", f"{o}/w3")
    add("train: --lables (misspelt), so no --labels", "train", "--lables", cells, "-o", f"{o}/w6")
    add("train: --preset unknown", "train", "--labels", cells, "--preset", "huge", "-o", f"{o}/w4")
    add("train: --config binary", "train", "--config", f"{w}/binary.yaml", "--labels", cells, "-o", f"{o}/w5")
    # evaluate
    add("evaluate: --gt missing", "evaluate", "--gt", f"{w}/none.json", "--dt", f"{w}/results_list.json")
    add("evaluate: --dt missing", "evaluate", "--gt", cells, "--dt", f"{w}/none.json")
    add("evaluate: --dt not JSON", "evaluate", "--gt", cells, "--dt", f"{w}/not.json")
    add("evaluate: --dt of the wrong shape", "evaluate", "--gt", cells, "--dt", f"{w}/wrong.json")
    add("evaluate: results for no ground-truth image", "evaluate", "--gt", cells, "--dt", f"{w}/results_list.json")
    add("evaluate: --out exists, no --overwrite", "evaluate", "--gt", cells, "--dt", f"{w}/results_list.json",
        "--out", f"{w}/plain.txt")
    add("evaluate: --out is its own --gt, --overwrite", "evaluate", "--gt", cells, "--dt", f"{w}/results_list.json",
        "--out", cells, "--overwrite")
    add("evaluate: --out is its own --dt, --overwrite", "evaluate", "--gt", cells, "--dt", f"{w}/results_list.json",
        "--out", f"{w}/results_list.json", "--overwrite")
    add("evaluate: --protocol unknown", "evaluate", "--gt", cells, "--dt", f"{w}/results_list.json",
        "--protocol", "mine")
    add("evaluate: a result polygon point at 1e9", "evaluate", "--gt", f"{w}/far_polygon/gt_ok.json", "--dt",
        f"{w}/far_polygon/dt.json", expect=0)
    add("evaluate: a ground-truth polygon point at 1e9", "evaluate", "--gt", f"{w}/far_polygon/gt.json", "--dt",
        f"{w}/far_polygon/dt.json", expect=0)
    # export
    add("export: model missing", "export", f"{w}/none.safetensors", "-o", f"{o}/x1.zip")
    add("export: bioimage.io of a model that finds nothing", "export", weak, "-o", f"{o}/x2.zip")
    add("export: ONNX of a model that finds nothing (32-channel FPN)", "export", weak, "--format", "onnx",
        "-o", f"{o}/x3.onnx", expect=0)
    add("export: TorchScript with a 1 x 1 px sample", "export", m, "--format", "torchscript", "--sample",
        f"{odd}/one_pixel.png", "-o", f"{o}/x4.pt")
    add("export: TorchScript with a damaged sample", "export", m, "--format", "torchscript", "--sample",
        f"{odd}/damaged.tif", "-o", f"{o}/x5.pt")
    add("export: -o exists, no --overwrite", "export", m, "--format", "torchscript", "-o", f"{w}/plain.txt")
    add("export: pickled .pt model", "export", f"{w}/pickled.pt", "--format", "onnx", "-o", f"{o}/x6.onnx")
    add("export: --score-threshold 5", "export", m, "--format", "torchscript", "--score-threshold", "5",
        "-o", f"{o}/x7.pt")
    # convert, convert-model, split, synth
    add("convert: input missing", "convert", f"{w}/nowhere", "-o", f"{o}/v1.json")
    add("convert: folder of unknown layout", "convert", f"{w}/unknown_layout", "-o", f"{o}/v2.json")
    add("convert: COCO file of the wrong shape", "convert", f"{w}/wrong.json", "-o", f"{o}/v3.json")
    add("convert: a 0/255 binary mask as a label image", "convert", f"{w}/binary_labels", "-o", f"{o}/v4.json",
        expect=0)
    add("convert: a named pipe as a BBBC038 mask", "convert", f"{w}/fifo_bbbc038", "-o", f"{o}/v5.json", expect=0)
    add("convert: a named pipe as a BBBC038 mask, --strict", "convert", f"{w}/fifo_bbbc038", "-o", f"{o}/v6.json",
        "--strict")
    add("convert: a named pipe as a CTC label image", "convert", f"{w}/fifo_ctc", "-o", f"{o}/v7.json", expect=0)
    add("convert: a PNG decompression bomb as a label image", "convert", f"{w}/bomb_labels", "-o", f"{o}/v8.json")
    add("convert: a PNG decompression bomb as a BBBC038 mask", "convert", f"{w}/bomb_bbbc038", "-o", f"{o}/v9.json")
    add("convert: a label image of 70,000 ids in 300 x 300 px", "convert", f"{w}/many_ids", "-o", f"{o}/v10.json")
    add("convert: a polygon point at 1e9", "convert", f"{w}/far_polygon/gt.json", "-o", f"{o}/v11.json", expect=0)
    add("convert: a polygon point at 1e9, --strict", "convert", f"{w}/far_polygon/gt.json", "-o", f"{o}/v12.json",
        "--strict")
    add("convert: -o exists, no --overwrite", "convert", cells, "-o", f"{w}/plain.txt")
    add("convert: -o is its own input, --overwrite", "convert", cells, "-o", cells, "--overwrite")
    add("convert-model: a zip that is no torch file, --trust", "convert-model", f"{w}/notorch.pt", "--trust",
        "-o", f"{o}/cm1.safetensors")
    add("convert-model: a pickle without --trust", "convert-model", f"{w}/pickled.pt", "-o", f"{o}/cm2.safetensors")
    add("convert-model: file missing", "convert-model", f"{w}/none.pt", "-o", f"{o}/cm3.safetensors")
    add("convert-model: model.safetensors beside it exists", "convert-model", f"{w}/pickled.pt", "--trust")
    add("convert-model: -o is its own input, --overwrite", "convert-model", f"{w}/pickled.pt", "-o",
        f"{w}/pickled.pt", "--overwrite", "--trust")
    add("split: dataset missing", "split", f"{w}/nowhere", "-o", f"{o}/s1.json", "--fraction", "0.5")
    add("split: --fraction 3", "split", cells, "-o", f"{o}/s2.json", "--fraction", "3")
    add("split: -o exists, no --overwrite", "split", cells, "-o", f"{w}/plain.txt", "--fraction", "0.5")
    add("split: -o is its own input, --overwrite", "split", cells, "-o", cells, "--fraction", "0.5", "--overwrite")
    add("synth: -o under a file", "synth", "cells", "-o", f"{w}/blocker/s", "--n", "1", "--size", "64")
    add("synth: --n -1", "synth", "cells", "-o", f"{o}/y1", "--n", "-1")
    add("synth: --size 0", "synth", "cells", "-o", f"{o}/y2", "--n", "1", "--size", "0")
    add("synth: --size 100000", "synth", "cells", "-o", f"{o}/y3", "--n", "1", "--size", "100000")
    add("synth: --size of 4,000 digits", "synth", "cells", "-o", f"{o}/y4", "--n", "1", "--size", "9" * 4000)
    add("synth: --n 10^9", "synth", "cells", "-o", f"{o}/y5", "--n", "1000000000", "--size", "64")
    add("demo: --device cuda without a GPU", "demo", "-o", f"{o}/d1", "--device", "cuda")
    add("unknown subcommand", "segment", imgs)
    c += round3_cases(work)
    return c


def round3_cases(work: Path) -> list[Case]:
    """Issue 37's hangs, silent cases and a beginner's labels; each says what it must say."""
    w, o = str(work), f"{work}/out"
    m = f"{w}/model.safetensors"
    ft = ["finetune", "--init", "scratch", "--iterations", "1", "--batch-size", "1", "--device", "cpu"]
    c = [
        Case("predict: a deflate TIFF of 300 KB claiming 100,000 x 100,000 px", ["predict", m,
             f"{w}/tiff_bomb/bomb.tif", "-o", f"{o}/r1"], 1, says="a compression ratio of 32,495:1"),
        Case("convert: a TIFF claiming 100,000 x 100,000 px as a label image", ["convert", f"{w}/tiff_bomb_labels",
             "-o", f"{o}/r2.json"], 2, says="declares 100,000 x 100,000 px"),
        Case("predict: a folder holding a parent -> .. link", ["predict", m, f"{w}/linked/images", "-o", f"{o}/r3"],
             0, says="not followed (it would walk out of the folder)"),
        Case("predict: a ** pattern over a parent -> .. link", ["predict", m, f"{w}/linked/images/**/*.png", "-o",
             f"{o}/r4"], 2, says="'**' would walk out of it"),
        Case("predict: an OME-Zarr image with a chunk lost", ["predict", m, f"{w}/lost_chunk.zarr", "-o", f"{o}/r6"],
             0, says="1 of the 4 chunks of its full-resolution level are not stored"),
        Case("predict: a 1 x 100000 px image", ["predict", m, f"{w}/line/line.tif", "-o", f"{o}/r7"], 1,
             says="cannot segment this 1 x 100000 px image"),
        Case("predict: --diameter for a model without object_size", ["predict", m, f"{w}/images/good0.png", "-o",
             f"{o}/r8", "--diameter", "30"], 0, says="--diameter 30 is not used"),
        Case("convert: a BBBC038 mask file copied twice", ["convert", f"{w}/dup_bbbc038", "-o", f"{o}/r9.json"], 0,
             says="the same mask as m1.png (skipped"),
        Case("convert: a BBBC038 mask file copied twice, --strict", ["convert", f"{w}/dup_bbbc038", "-o",
             f"{o}/r10.json", "--strict"], 2, says="the same mask as m1.png"),
        Case("finetune: every annotation skipped by the reader", [*ft, "--train", f"{w}/skipped4/annotations.json",
             "-o", f"{o}/r11"], 2, says="0 of the 4 annotated images to fine-tune on have an object"),
        Case("finetune: 2 of 4 images with usable labels", [*ft, "--train", f"{w}/skipped2/annotations.json",
             "-o", f"{o}/r12"], 2, says="fine-tuning needs at least 3"),
        Case("train: 2 of 4 images with usable labels", ["train", "--labels", f"{w}/skipped2/annotations.json",
             "-o", f"{o}/r13"], 2, says="fine-tuning needs at least 3"),
        Case("train: a changed --config for an existing run folder", ["train", "--config",
             f"{w}/train_changed.yaml", "--labels", f"{w}/skipped1/annotations.json", "-o", f"{w}/train_run"], 2,
             says="finetune.optim.iterations is 600, the run in"),
    ]
    for argv in (["--help"], ["train", "--help"], ["predict", "--help"], ["finetune", "--help"]):
        c.append(Case(f"cupre {' '.join(argv)} imports no torch", argv, 0, absent="torch",
                      python=("-X", "importtime")))
    return c


def fingerprint(root: Path, outside: Path) -> dict[str, str]:
    """sha-256 of every file under ``root`` but those under ``outside`` (the outputs)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and outside not in path.parents:
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_case(case: Case, work: Path, timeout: float) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "default", **(case.env or {})}
    before = fingerprint(work, work / "out")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *case.python, "-m", "cupre.cli", *case.args], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=work)
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = None, (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
    seconds = time.perf_counter() - start
    after = fingerprint(work, work / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("cupre: error:", "cupre: warning:"))]
    first = said[0] if said else next((line for line in lines if line.startswith("cupre:") or "error" in line.lower()),
                                      lines[0] if lines else "")
    problems = []
    if code is None:
        problems.append("hang")
    elif code != case.expect:
        problems.append(f"exit {code}, expected {case.expect}")
    if "Traceback (most recent call last)" in err:
        problems.append("traceback")
    if any(len(line.split("; valid keys: ")[0]) > LINE for line in said):  # the schema's key list is whole
        problems.append(f"a line over {LINE} characters")
    if case.says is not None and case.says not in err:
        problems.append(f"silent (no {case.says!r})")
    if case.absent is not None and case.absent in err:
        problems.append(f"said {case.absent!r}")
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))
        problems.append(f"files outside -o changed: {changed[0][0]}")
    longest = max((len(line.split("; valid keys: ")[0]) for line in said), default=0)
    return {"case": case.name, "exit": code, "seconds": seconds, "first": first, "problems": problems,
            "stderr": err, "longest": longest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="where the inputs are made (default: a temporary folder)")
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, help="also write every case's record, whole stderr included")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cupre-bad-input-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "model.safetensors").is_file():
        tiny_models(work)
        make_inputs(work)
        configs(work)
        raw = (work / "model.safetensors").read_bytes()
        (work / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
        for name, change in [("detector", lambda m: m.update(detector=[1, 2])),
                             ("cats", lambda m: m.update(categories="cell")),
                             ("fpn", lambda m: m["detector"].update(fpn_channels=10**9)),
                             ("dets", lambda m: m["detector"].update(detections_per_img=10**9)),
                             ("code", lambda m: m["detector"].update(backbone="__import__('os').system('id')"))]:
            altered_metadata(work / "model.safetensors", work / f"meta_{name}.safetensors", change)
        altered_metadata(work / "model.safetensors", work / "meta_json.safetensors",
                         lambda m: m.update(detector="{oops"))
        (work / "empty_folder").mkdir()
        train_run(work)
        subprocess.run([sys.executable, "-m", "cupre.cli", "predict", str(work / "model.safetensors"),
                        str(work / "images"), "-o", str(work / "done"), "--device", "cpu"],
                       capture_output=True, check=True)
    chosen = [c for c in cases(work) if not args.only or args.only in c.name]
    records = []
    print(f"# {len(chosen)} cases, each `python -m cupre.cli ...` with a {args.timeout:g} s limit; inputs in {work}")
    print("| # | case | exit | s | first line on stderr | problems |")
    print("|---|---|---|---|---|---|")
    for k, case in enumerate(chosen, start=1):
        rec = run_case(case, work, args.timeout)
        records.append(rec)
        first = rec["first"].replace("|", "\\|")
        first = first if len(first) <= 160 else first[:157] + "..."
        print(f"| {k} | {case.name} | {rec['exit']} | {rec['seconds']:.1f} | {first} | "
              f"{'; '.join(rec['problems']) or 'ok'} |", flush=True)
    failed = [r for r in records if r["problems"]]

    def count(word: str) -> int:
        return sum(any(p.startswith(word) for p in r["problems"]) for r in records)

    longest = max(records, key=lambda r: r["longest"]) if records else None
    print(f"\n{len(records) - len(failed)} of {len(records)} cases ok; tracebacks: {count('traceback')}; hangs: "
          f"{count('hang')}; silent: {count('silent')}; files changed outside -o: {count('files outside')}; "
          f"longest error or warning line: {longest['longest'] if longest else 0} characters"
          + (f" ({longest['case']})" if longest else ""))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
