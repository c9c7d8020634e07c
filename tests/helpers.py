"""What many tests share: the tiny detector and the fast optimiser settings."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# A detector on timm's narrow test ResNet (0.4 M backbone weights against ResNet-18's 11 M): it
# trains a few iterations in a second on a CPU, and its model file holds 3 MB, not 46.
TINY_DETECTOR = {
    "backbone": "test_resnet", "fpn_channels": 32, "anchor_sizes": [4, 8, 16, 32, 64],
    "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100, "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32, "detections_per_img": 50,
}
# AdamW, one warm-up iteration, whole images: a stage that moves in two iterations.
FAST_OPTIM = {"batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "warmup_iterations": 1, "crop_size": None}


def read_results_csv(path: Path) -> list[dict]:
    """The rows of an experiment's results.csv, typed as the runner's rows are (fraction
    float, seed / iteration int, figures float or None)."""
    import csv

    from cupre.experiments.table import METRICS

    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {"dataset": raw["dataset"], "method": raw["method"], "split": raw["split"],
                   "fraction": float(raw["fraction"]), "seed": int(raw["seed"]),
                   "iteration": int(raw["iteration"]) if raw["iteration"] else None}
            row.update({m: float(raw[m]) if raw.get(m) else None for m in METRICS})
            rows.append(row)
    return rows


def write_tiny_model(path: Path, *, seed: int = 0, **detector) -> Path:
    """An untrained tiny detector (at native pixels, ``detector`` keys on top; weights drawn
    with ``seed``) as a model file."""
    import torch

    from cupre.config import DetectorConfig
    from cupre.models.detector import build_detector
    from cupre.train.weights import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "object_size": None, **detector})
    torch.manual_seed(seed)
    save_model(path, build_detector(cfg), cfg, [{"id": 1, "name": "nucleus"}], stage="tiny-test")
    return path


def install_shipped_model(monkeypatch, package: Path, **detector) -> Path:
    """A tiny model (:func:`write_tiny_model`) as the shipped ``nuclei`` model: written where
    the registry (:mod:`cupre.shipped`) looks once its package folder is ``package``."""
    import cupre.shipped

    path = write_tiny_model(package / cupre.shipped.SHIPPED["nuclei"], **detector)
    monkeypatch.setattr(cupre.shipped, "PACKAGE", package)
    return path


def deflate_bomb_tiff(path: Path, side: int = 100_000, tile: int = 512) -> Path:
    """A grey 8-bit TIFF declaring ``side`` x ``side`` px, deflate-compressed in tiles that
    all point at the same few hundred bytes: about 300 KB claiming 10 GB of pixels (a
    crafted file, or the header of one cut short)."""
    import struct
    import zlib

    data = zlib.compress(bytes(tile * tile), 9)
    n = (-(-side // tile)) ** 2
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (277, 3, 1, 1), (322, 3, 1, tile), (323, 3, 1, tile), (324, 4, n, None), (325, 4, n, None)]
    ifd = 8
    tables = ifd + 2 + 12 * len(entries) + 4
    offsets, counts, tile_at = tables, tables + 4 * n, tables + 8 * n
    head = struct.pack("<2sHI", b"II", 42, ifd) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {324: offsets, 325: counts}.get(tag, value)
        head += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                          else struct.pack("<I", value))
    head += struct.pack("<I", 0)
    path.write_bytes(head + struct.pack(f"<{n}I", *[tile_at] * n) + struct.pack(f"<{n}I", *[len(data)] * n) + data)
    return path


def fifo_dataset(root: Path, layout: str) -> Path:
    """A BBBC038 (``layout="bbbc038"``) or Cell Tracking Challenge (``"ctc"``) dataset of
    one object at ``root``, plus a named pipe named like a mask or label image beside the
    real one (opening it would wait for a writer forever); returns the pipe."""
    import os

    import numpy as np
    import tifffile
    from PIL import Image

    img = np.zeros((32, 32), np.uint8)
    img[4:10, 4:10] = 200
    if layout == "bbbc038":
        (root / "s1" / "images").mkdir(parents=True)
        (root / "s1" / "masks").mkdir()
        Image.fromarray(img).save(root / "s1" / "images" / "s1.png")
        Image.fromarray((img > 0).astype(np.uint8) * 255).save(root / "s1" / "masks" / "m1.png")
        pipe = root / "s1" / "masks" / "m2.png"
    else:
        (root / "01").mkdir(parents=True)
        (root / "01_GT" / "SEG").mkdir(parents=True)
        for t in range(2):
            tifffile.imwrite(root / "01" / f"t00{t}.tif", img)
        tifffile.imwrite(root / "01_GT" / "SEG" / "man_seg000.tif", (img > 0).astype(np.uint16))
        pipe = root / "01_GT" / "SEG" / "man_seg001.tif"
    os.mkfifo(pipe)
    return pipe
