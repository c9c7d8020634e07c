"""The fine-tuning step users run, timed and taken apart: where a step of the recipe model goes.

The model is a config's detector (default: the CPU recipe, ``configs/bbbc038-cpu.yaml``:
ResNet-18, GroupNorm, 64-channel FPN; ``--config src/cupre/presets/train-gpu.yaml`` for the
GPU preset's ResNet-50) with random weights, one foreground class. The batch is what
fine-tuning feeds it: real nuclei from the package's demo images (BBBC038, all three
imaging kinds) through the fine-tuning transform (256 px crops at the object scale, batch
2). A step is forward, backward, gradient clipping and the AdamW update, as
``cupre finetune`` runs it; each precision (fp32, and bf16 where the CPU has it) is timed
over ``--steps`` steps after ``--warmup``.

Printed per precision:

* seconds per step (median) and the data pipeline's seconds per batch, apart;
* the forward pass per part (backbone, neck, RPN, RoI box head, RoI mask head; module
  hooks, wall time), then backward, clipping and the optimiser;
* the operators that take the most time (torch.profiler, self CPU time, one step);
* the step's counted FLOPs (``torch.utils.flop_counter``: convolutions and matrix
  products, forward and backward) over its time, against one 3x3 convolution of the
  FPN's width on a 64 x 64 map at the same threads and precision: the distance to the
  bound.

    python benchmarks/train_step.py [--threads 2] [--steps 10] [--config CONFIG] [--precisions fp32 bf16]
        [--set anchor_sizes=[4,8,16,32,64] ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NUCLEI = REPO / "src" / "cupre" / "presets" / "nuclei" / "annotated"


def detector_config(path: Path, overrides: list[str] = ()):
    """The config's detector, with ``KEY=VALUE`` overrides (values read as YAML)."""
    from cupre.config import DetectorConfig

    raw = yaml.safe_load(path.read_text())
    det = dict((raw.get("pretrain") or {}).get("detector") or raw.get("detector") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        det[key] = yaml.safe_load(value)
    return DetectorConfig.from_dict({**det, "num_classes": 1}, where=str(path))


def samples() -> list[tuple[torch.Tensor, dict]]:
    """The demo's annotated nuclei as (image, target) pairs, as the readers give them."""
    from cupre.data.imageio import normalize, read_image
    from cupre.data.sample import masks_to_boxes

    out = []
    for file in sorted(p for p in NUCLEI.glob("*.png") if not p.stem.endswith("_masks")):
        label = np.array(Image.open(file.with_name(file.stem + "_masks.png")))
        ids = [i for i in np.unique(label) if i]
        masks = np.stack([label == i for i in ids])
        out.append((normalize(read_image(file)), {
            "boxes": torch.from_numpy(masks_to_boxes(masks)), "labels": torch.ones(len(ids), dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8))}))
    return out


def batches(cfg, crop: int, batch_size: int, n: int, seed: int = 0):
    from cupre.data.transforms import DetectionTrainTransform

    torch.manual_seed(seed)
    transform = DetectionTrainTransform(crop_size=crop, object_size=cfg.object_size, scale_jitter=1.25)
    data = samples()
    made, seconds = [], []
    for k in range(n):
        start = time.perf_counter()
        pairs = [transform(*data[(k * batch_size + j) % len(data)]) for j in range(batch_size)]
        seconds.append(time.perf_counter() - start)
        made.append(([p[0] for p in pairs], [p[1] for p in pairs]))
    return made, statistics.median(seconds)


class PartTimer:
    """Wall time of each named module's forward (pre- and post-hooks)."""

    def __init__(self, parts: dict[str, torch.nn.Module]) -> None:
        self.seconds = {name: 0.0 for name in parts}
        self.started: dict[str, float] = {}
        for name, module in parts.items():
            module.register_forward_pre_hook(lambda m, a, name=name: self.started.__setitem__(name, time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, name=name: self._stop(name))

    def _stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self.started.pop(name)


def step_fn(model, optimizer):
    def step(images, targets):
        losses = model(images, targets)
        loss = sum(losses.values())
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        t2 = time.perf_counter()
        optimizer.step()
        return {"backward": t1 - t0, "clip": t2 - t1, "optimizer": time.perf_counter() - t2}
    return step


def conv_rate(channels: int, precision: str, side: int = 64, repeats: int = 10) -> float:
    """GFLOP/s of one 3x3 convolution (``channels`` in and out, batch 2, ``side`` px), forward."""
    from cupre.devices import autocast

    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(2, channels, side, side)
    flops = 2 * 2 * channels * channels * 9 * side * side
    with torch.no_grad(), autocast("cpu", precision):
        for _ in range(3):
            conv(x)
        start = time.perf_counter()
        for _ in range(repeats):
            conv(x)
    return flops * repeats / (time.perf_counter() - start) / 1e9


def measure(cfg, precision: str, steps: int, warmup: int, crop: int, batch_size: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from cupre.models.detector import build_detector
    from cupre.train.optim import param_groups

    torch.manual_seed(0)
    model = build_detector(cfg)
    model.precision = precision
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model.parts(), weight_decay=1e-4), lr=5e-4)
    heads = model.head.roi_heads
    parts = {"backbone": model.backbone, "neck": model.neck, "rpn": model.head.rpn}
    for name in ("box_head", "box_predictor", "mask_head", "mask_predictor"):
        if hasattr(heads, name):
            parts[name] = getattr(heads, name)
    timer = PartTimer(parts)
    step = step_fn(model, optimizer)
    data, data_seconds = batches(cfg, crop, batch_size, warmup + steps + 1)
    for images, targets in data[:warmup]:
        step(images, targets)
    timer.seconds = dict.fromkeys(timer.seconds, 0.0)
    totals, rest = [], {"backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    for images, targets in data[warmup:warmup + steps]:
        start = time.perf_counter()
        for k, v in step(images, targets).items():
            rest[k] += v
        totals.append(time.perf_counter() - start)
    per_step = statistics.median(totals)
    forward = dict(timer.seconds)  # the timed steps' alone
    images, targets = data[-1]
    with FlopCounterMode(display=False) as counter:
        step(images, targets)
    gflop = counter.get_total_flops() / 1e9
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(images, targets)
    rate = conv_rate(cfg.fpn_channels, precision)
    bound = gflop / rate
    print(f"\n{precision}: {per_step:.3f} s a step (median of {steps}; min {min(totals):.3f}, max {max(totals):.3f}); "
          f"data {data_seconds:.3f} s a batch (not in the step)")
    print(f"  counted {gflop:.1f} GFLOP a step -> {gflop / per_step:.1f} GFLOP/s; one 3x3 conv of {cfg.fpn_channels} "
          f"channels: {rate:.1f} GFLOP/s, so the bound is {bound:.3f} s and the step is {per_step / bound:.2f}x it")
    spent = {**{f"forward: {k}": v / steps for k, v in forward.items()},
             **{k: v / steps for k, v in rest.items()}}
    forward_other = statistics.mean(totals) - sum(spent.values())
    spent["forward: the rest (transform, proposals, sampling, RoIAlign, losses)"] = forward_other
    print("  where a step goes (seconds, mean over the timed steps; share of the median step):")
    for name, seconds in spent.items():
        print(f"    {name:<66} {seconds:7.3f}  {100 * seconds / per_step:5.1f}%")
    print("  operators by self CPU time (one step):")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48)
    print("\n".join("    " + line for line in table.splitlines()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "bbbc038-cpu.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="detector keys changed, e.g. anchor_sizes=[4,8,16,32,64] box_batch_size_per_image=512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32, and bf16 where the CPU has it")
    args = parser.parse_args()
    from cupre.devices import cpu_has_bf16, cpu_name

    torch.set_num_threads(args.threads)
    cfg = detector_config(args.config, args.set)
    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    print(f"CPU: {cpu_name()}; {args.threads} threads; torch {torch.__version__}; model of {args.config.name}: "
          f"{cfg.backbone}, {cfg.norm}, FPN {cfg.fpn_channels}, anchors {cfg.anchor_sizes} x{cfg.anchors_per_octave}, "
          f"{cfg.box_batch_size_per_image} RoIs; batch {args.batch_size} x {args.crop} px crops of real nuclei")
    for precision in precisions:
        measure(cfg, precision, args.steps, args.warmup, args.crop, args.batch_size)


if __name__ == "__main__":
    main()
