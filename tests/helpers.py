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
