"""How well each anchor choice covers the nuclei of the CPU recipe's 5% split, at the object scale.

BBBC038 stage1_train, partition 70/15/15 by imaging kind (seed 0), 5% of the train part
(seed 0): the labels the recipe fine-tunes on (``configs/bbbc038-cpu.yaml``). Every image
and its boxes are rescaled to the object scale (median box side = ``object_size``), as
training sees them without jitter; also at half and double that, the ends of a 2x scale
jitter. For each anchor choice: the median best anchor IoU per nucleus, the share of
nuclei with an anchor at IoU >= 0.7 (the RPN's positive threshold) and the positives per
nucleus, and the median number of anchors at IoU >= 0.5.

Usage: python benchmarks/anchor_coverage.py [--data ../shared/data] [--object-size 20] [--split val]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cupre.data.formats import open_dataset
from cupre.data.sample import masks_to_boxes
from cupre.data.splits import fewshot_split, partition
from cupre.models.anchors import dataset_coverage, level_sizes

CHOICES = {
    "4..64 (the recipe before)": ((4, 8, 16, 32, 64), 1),
    "8..128 (cupre's default)": ((8, 16, 32, 64, 128), 1),
    "auto (0.8 x object size, doubling)": ("auto", 1),
    "auto, two per octave": ("auto", 2),
    "auto, three per octave": ("auto", 3),
    "0.6 x object size, two per octave": ((12, 24, 48, 96, 192), 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--object-size", type=float, default=20.0)
    parser.add_argument("--split", default="fewshot", choices=("fewshot", "train", "val"),
                        help="the 5%% few-shot split (default), or the whole train or validation part")
    args = parser.parse_args()
    dataset = open_dataset(Path(args.data) / "bbbc038" / "stage1_train", class_agnostic=True)
    parts = partition(dataset.records, (0.7, 0.15, 0.15), seed=0, names=("train", "val", "test"))
    by_id = {r.image_id: r for r in dataset.records}
    ids = parts["val"] if args.split == "val" else parts["train"]
    if args.split == "fewshot":
        ids = fewshot_split([by_id[i] for i in ids], 0.05, seed=0)
    index = {r.image_id: k for k, r in enumerate(dataset.records)}
    samples = []
    for i in ids:
        raw = dataset.read_raw(index[i])
        masks = raw.masks[~raw.iscrowd]
        samples.append(((masks.shape[1], masks.shape[2]), masks_to_boxes(masks)))
    print(f"{args.split}: {len(samples)} images, {sum(len(b) for _, b in samples)} nuclei; object_size "
          f"{args.object_size:g}; aspect ratios 0.5, 1, 2")
    print(f"{'anchors':<38} {'scale':>5} {'median best IoU':>15} {'with IoU>=0.7':>13} "
          f"{'per nucleus':>11} {'median IoU>=0.5':>15}")
    for name, (sizes, per_octave) in CHOICES.items():
        levels = level_sizes(sizes, args.object_size, per_octave)
        for jitter in (1.0, 0.5, 2.0):
            c = dataset_coverage(samples, args.object_size * jitter, levels, (0.5, 1.0, 2.0))
            print(f"{name:<38} {jitter:>4g}x {c.median_best_iou:>15.2f} {100 * c.share_with_positive:>12.0f}% "
                  f"{c.positives_per_object:>11.1f} {c.median_at_half:>15.0f}")
        print(f"{'':<38} sizes per level: {[list(s) for s in levels]}")


if __name__ == "__main__":
    main()
