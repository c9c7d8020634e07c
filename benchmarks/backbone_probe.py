"""Nearest-neighbour probe of pre-trained backbones: nucleus crops against background crops.

Does a backbone's representation already tell a nucleus from the background around it,
before any fine-tuning? For every image of a labeled split, at the detector's object
scale (the image resized so its median nucleus side is ``object_size``), up to
``--per-image`` windows centred on nuclei and as many centred on points with no nucleus
pixel within ``object_size / 2``; each window goes through the backbone alone (no neck,
no head) and is average-pooled at C4 and C5. The score is the leave-one-out accuracy of a
``k``-nearest-neighbour vote (cosine similarity) over all windows of the split, balanced
(chance: 50%), overall and per imaging kind; the same windows for every backbone.

Backbones: a fresh (Kaiming) one, and every product a ``cupre pretrain`` folder holds
(warmup, coco, cupre = after AMT2, cupre-nol2sp, cells-moco).

    python benchmarks/backbone_probe.py PRETRAIN_DIR DATA --split SPLIT.json [--threads N]

e.g. after ``cupre experiment configs/bbbc038-cpu.yaml -o runs/cpu``:
``python benchmarks/backbone_probe.py runs/cpu/pretrain ../shared/data/bbbc038/stage1_train
--split runs/cpu/splits/val.json`` (validation images: choices are never read on test).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from cupre.data.formats import open_dataset
from cupre.data.splits import load_split
from cupre.devices import set_threads
from cupre.modelfile import build_from_file
from cupre.models.detector import build_detector
from cupre.scale import resize_image, scale_factor, typical_size
from cupre.train.inits import PRODUCTS

WINDOW = 64  # px at the object scale: a nucleus (~20 px) and its surroundings


def windows(dataset, *, object_size: float, per_image: int, seed: int):
    """``(crops Nx3xWxW, labels N (1 nucleus, 0 background), kinds N)``."""
    g = torch.Generator().manual_seed(seed)
    crops, labels, kinds = [], [], []
    half, clear = WINDOW // 2, max(1, round(object_size / 2))
    for i in range(len(dataset)):
        image, target = dataset[i]
        f = scale_factor(object_size, typical_size(target["boxes"]))
        image = resize_image(image, f)
        fg = target["masks"].amax(dim=0, keepdim=True)[None].float() if len(target["masks"]) else None
        h, w = image.shape[-2:]
        fg = F.interpolate(fg, size=(h, w), mode="nearest")[0, 0] if fg is not None else torch.zeros(h, w)
        near = F.max_pool2d(fg[None, None], 2 * clear + 1, stride=1, padding=clear)[0, 0] > 0  # within `clear` px
        boxes = target["boxes"] * f
        centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).round().long()
        centres = centres[torch.randperm(len(centres), generator=g)[:per_image]]
        free = (~near).nonzero()
        empty = free[torch.randperm(len(free), generator=g)[: len(centres)]].flip(1)  # (x, y)
        padded = F.pad(image, (half, half, half, half))
        for label, points in ((1, centres), (0, empty)):
            for x, y in points.tolist():
                crops.append(padded[:, y : y + WINDOW, x : x + WINDOW])
                labels.append(label)
                kinds.append(target.get("cell_type") or "all")
    return torch.stack(crops), torch.tensor(labels), kinds


@torch.no_grad()
def features(model, crops: torch.Tensor, batch: int = 64) -> dict[str, torch.Tensor]:
    """Average-pooled C4 and C5 of every crop, L2-normalised."""
    out = defaultdict(list)
    for start in range(0, len(crops), batch):
        x = torch.stack([model.transform.normalize(c) for c in crops[start : start + batch]])
        maps = model.backbone(x)
        out["C4"].append(maps[-2].float().mean(dim=(2, 3)))
        out["C5"].append(maps[-1].float().mean(dim=(2, 3)))
    return {k: F.normalize(torch.cat(v), dim=1) for k, v in out.items()}


def knn_correct(feats: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out k-NN vote (ties: nucleus) -> bool N, correct or not."""
    sim = feats @ feats.T
    sim.fill_diagonal_(-2.0)
    votes = labels[sim.topk(k, dim=1).indices].float().mean(dim=1)
    return (votes >= 0.5).long() == labels


def backbones(pretrain: Path, seed: int) -> tuple[list[tuple[str, torch.nn.Module]], float]:
    """``(name, model)`` for a fresh detector and every product the folder holds, and
    their object size."""
    found = [(name, pretrain / rel) for name, rel in PRODUCTS.items() if (pretrain / rel).is_file()]
    if not found:
        raise SystemExit(f"{pretrain}: no pre-training products (expected e.g. {PRODUCTS['cupre']})")
    models, cfg = [], None
    for name, path in found:
        model, cfg, _ = build_from_file(path)
        models.append((name, model.eval()))
    torch.manual_seed(seed)
    return [("fresh", build_detector(cfg).eval()), *models], cfg.object_size or 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pretrain", type=Path, help="a `cupre pretrain` output folder")
    parser.add_argument("data", help="a labeled dataset (any layout cupre reads)")
    parser.add_argument("--split", help="split JSON whose image_ids select the images (use validation)")
    parser.add_argument("--per-image", type=int, default=16, help="nucleus windows per image (as many background)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    data = open_dataset(args.data, class_agnostic=True)
    if args.split:
        data = data.subset(load_split(args.split)["image_ids"])
    t0 = time.perf_counter()
    models, object_size = backbones(args.pretrain, args.seed)
    crops, labels, kinds = windows(data, object_size=object_size, per_image=args.per_image, seed=args.seed)
    rows = []
    for name, model in models:
        feats = features(model, crops)
        rows.append((name, {level: knn_correct(f, labels, args.k) for level, f in feats.items()}))
    names = sorted(set(kinds))
    print(f"# backbone probe: {len(data)} images, {int(labels.sum())} nucleus + {int((labels == 0).sum())} "
          f"background windows of {WINDOW} px, {args.k}-NN leave-one-out accuracy (%), chance 50")
    print(f"# cpu, {threads} threads, fp32; {time.perf_counter() - t0:.0f} s")
    kinds_t = [torch.tensor([k == n for k in kinds]) for n in names]
    print("| backbone | level | all | " + " | ".join(f"{n} (n={int(m.sum())})" for n, m in zip(names, kinds_t)) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for name, by_level in rows:
        for level, correct in by_level.items():
            cells = [100 * correct.float().mean()] + [100 * correct[m].float().mean() for m in kinds_t]
            print(f"| {name} | {level} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
