"""Inference and fine-tuning speed, and peak memory, of Mask R-CNN R50-FPN: cupre vs torchvision.

Models (random weights, nothing downloaded), one foreground class:

* ``stock``: torchvision's ``maskrcnn_resnet50_fpn`` (frozen BatchNorm, plain FPN,
  ``TwoMLPHead``), told to keep the image at its size;
* ``cupre frozen_bn``: ``build_detector`` with the same architecture;
* ``cupre gn``: cupre's default GroupNorm model (GN FPN, 4conv1fc box head, GN mask head).

Each (model, precision, task) runs in its own Python process, so that the peak memory
printed is that process's maximum resident set (imports included), one measurement at a
time; "built" is that process's resident set once torch is imported and the model built
(the floor under every figure: about 0.7 GiB of it is importing torch and torchvision; cupre's
rows run as the ``cupre`` command does, without loading triton where there is no GPU:
:func:`cupre.devices.skip_gpu_compiler`, 75 MiB less). Memory is printed in GiB (2^30
bytes) and, for the inference rows, in GB (10^9 bytes) too.

* ``infer``: images/s with 2,000 detections per image (cupre's models loaded from a
  model file, written by another process, as ``cupre predict`` loads them: no gradients,
  bf16-stored weights in bf16, allocations of 8 MiB and more mapped on their own), forced by score threshold 0, no
  NMS (RPN or box) and 2,000 RPN proposals, until binary masks: the stock model's full-image
  probabilities thresholded, cupre's box-local crops as they come. GPU: 704x520, batch 2;
  CPU: 512x512, batch 1. Also the model's GFLOP/s (convolutions and matrix products
  counted by ``torch.utils.flop_counter``) and, for reference, what one 3x3 convolution
  of the mask head's size reaches at the same threads and precision.
* ``train``: fine-tuning images/s of a full SGD step (forward, backward, update) on the
  same images with 150 cells each, batch 2.

Precisions: ``fp32``; ``bf16`` (autocast); cupre's ``auto`` (what ``cupre predict`` and
``cupre finetune`` choose on this machine). The stock model as users run it is fp32.

    python benchmarks/detector_speed.py [--threads N] [--iters 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

DETECTIONS = 2000
CELLS = 150


def build(name: str, height: int, width: int) -> torch.nn.Module:
    """One of the three models, with the inference settings that force 2,000 detections."""
    from cupre.models import PIXEL_MEAN, PIXEL_STD
    from cupre.models.detector import build_detector

    if name == "stock":
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        return maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=2, min_size=min(height, width),
            max_size=max(height, width), image_mean=list(PIXEL_MEAN), image_std=list(PIXEL_STD),
            rpn_pre_nms_top_n_test=3000, rpn_post_nms_top_n_test=DETECTIONS, rpn_nms_thresh=1.0, box_score_thresh=0.0,
            box_nms_thresh=1.0, box_detections_per_img=DETECTIONS)
    return no_rpn_nms(build_detector(cupre_config(name)))


def cupre_config(name: str):
    from cupre.config import DetectorConfig

    return DetectorConfig(backbone="resnet50", norm=name.split()[-1], rpn_pre_nms_top_n_test=3000,
                          rpn_post_nms_top_n_test=DETECTIONS, box_score_thresh=0.0, box_nms_thresh=1.0,
                          detections_per_img=DETECTIONS)


def no_rpn_nms(model):
    model.head.rpn.nms_thresh = 1.0  # not part of the config: every proposal reaches the heads
    return model


def load_as_predict(name: str, device: torch.device, precision: str) -> torch.nn.Module:
    """A cupre model as ``cupre predict`` has it: loaded from a model file for inference
    at ``precision``. The file is written by another process, so that building and
    writing it leave no mark on this one's peak."""
    import tempfile
    from pathlib import Path

    from cupre.inference.predict import load_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        subprocess.run([sys.executable, __file__, "--make-file", name, str(path)], check=True)
        model, _ = load_model(path, device=device, precision=precision)
    return no_rpn_nms(model)


def make_file(name: str, path: str) -> None:
    from cupre.train.weights import save_model

    torch.manual_seed(0)
    save_model(path, build(name, 0, 0), cupre_config(name), [{"id": 1, "name": "cell"}])


def make_batch(batch: int, height: int, width: int, device: torch.device, seed: int = 0):
    """Random images with ``CELLS`` rectangular cells (4..40 px) each, and their targets."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.arange(height)[None, :, None]
    xs = torch.arange(width)[None, None, :]
    images, targets = [], []
    for _ in range(batch):
        size = 4 + torch.rand(CELLS, 2, generator=gen) * 36
        corner = torch.rand(CELLS, 2, generator=gen) * (torch.tensor([width, height]) - size)
        boxes = torch.cat([corner, corner + size], dim=1).floor()
        x1, y1, x2, y2 = (v[:, None, None] for v in boxes.unbind(1))
        masks = ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).to(torch.uint8)
        images.append(torch.rand(3, height, width, generator=gen).to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.ones(CELLS, dtype=torch.int64, device=device),
                        "masks": masks.to(device)})
    return images, targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def binary_masks(model, outputs) -> list:
    """What a user gets: bool masks (stock: N x H x W thresholded; cupre: box-local crops)."""
    if "mask_crops" in outputs[0]:
        return [out["mask_crops"] for out in outputs]
    return [out["masks"][:, 0] > 0.5 for out in outputs]


def measure_infer(model, images, device, precision: str, iters: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from cupre.devices import autocast

    model.eval()
    use_autocast = not hasattr(model, "precision")  # cupre's detector applies its own
    if not use_autocast:
        model.precision = precision  # loaded as cupre predict loads it (load_as_predict)

    def once():
        with torch.no_grad(), autocast(device, precision if use_autocast else "fp32"):
            return binary_masks(model, model(images))

    once()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        masks = once()
    sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # before the counting pass below
    counter = FlopCounterMode(display=False)
    with counter:
        once()
    flops = counter.get_total_flops()
    return {"images_per_s": len(images) / seconds, "seconds_per_batch": seconds,
            "detections": sum(len(m) for m in masks) / len(masks), "gflops_per_s": flops / seconds / 1e9,
            "gflop_per_image": flops / len(images) / 1e9, "peak_rss_gb": peak}


def measure_train(model, images, targets, device, precision: str, iters: int) -> dict:
    from cupre.devices import autocast

    model.train()
    if hasattr(model, "precision"):
        model.precision = precision
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    for step in range(iters + 1):
        if step == 1:
            sync(device)
            start = time.perf_counter()
        with autocast(device, precision):
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    sync(device)
    return {"images_per_s": iters * len(images) / (time.perf_counter() - start)}


def conv_reference(device, precision: str) -> float:
    """GFLOP/s of one mask-head-sized 3x3 convolution (256 -> 256 channels, 256 RoIs of 14x14)."""
    from cupre.devices import autocast

    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device)
    x = torch.randn(256, 256, 14, 14, device=device)
    flops = 2 * 256 * 256 * 9 * 14 * 14 * 256
    best = float("inf")
    with torch.no_grad(), autocast(device, precision):
        for _ in range(5):
            sync(device)
            start = time.perf_counter()
            conv(x)
            sync(device)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def one(args: argparse.Namespace) -> None:
    """Child process: one measurement, printed as a JSON line."""
    from cupre.devices import map_large_allocations, pick_device, resolve_precision, set_threads, skip_gpu_compiler

    set_threads(args.threads)
    if args.model.startswith("cupre"):
        skip_gpu_compiler()  # as the cupre command runs: no triton without a GPU (before torchvision's import)
    if args.model.startswith("cupre") and args.task == "infer":
        map_large_allocations()  # as cupre predict runs: large blocks mapped on their own, returned when freed
    device = pick_device("auto" if not args.cpu else "cpu")
    cuda = device.type == "cuda"
    height, width, infer_batch = (520, 704, 2) if cuda else (512, 512, 1)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    if args.model.startswith("cupre") and args.task == "infer":
        model = load_as_predict(args.model, device, precision)
    else:
        model = build(args.model, height, width).to(device)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # imports and weights
    if args.task == "infer":
        images = [torch.rand(3, height, width, generator=torch.Generator().manual_seed(k)).to(device)
                  for k in range(infer_batch)]
        result = measure_infer(model, images, device, precision, args.iters)
        result["conv_gflops_per_s"] = conv_reference(device, precision)
    else:
        images, targets = make_batch(2, height, width, device)
        result = measure_train(model, images, targets, device, precision, args.iters)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result.update(model=args.model, task=args.task, asked=args.precision, precision=precision,
                  device=torch.cuda.get_device_name(device) if cuda else "cpu", threads=torch.get_num_threads(),
                  size=f"{width}x{height}", batch=infer_batch if args.task == "infer" else 2,
                  baseline_rss_gb=baseline)
    if cuda:
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    print(json.dumps(result))


PLAN = [  # (model, precision, task)
    ("stock", "fp32", "infer"), ("stock", "bf16", "infer"),
    ("cupre frozen_bn", "fp32", "infer"), ("cupre frozen_bn", "bf16", "infer"), ("cupre frozen_bn", "auto", "infer"),
    ("cupre gn", "fp32", "infer"), ("cupre gn", "auto", "infer"),
    ("stock", "fp32", "train"), ("cupre frozen_bn", "fp32", "train"), ("cupre frozen_bn", "auto", "train"),
    ("cupre gn", "auto", "train"),
]
QUICK = [("stock", "fp32", "infer"), ("cupre frozen_bn", "auto", "infer"),
         ("stock", "fp32", "train"), ("cupre frozen_bn", "auto", "train")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every core available)")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations after one warm-up (default 2)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is there")
    parser.add_argument("--quick", action="store_true", help="only stock fp32 and cupre frozen_bn auto")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "PRECISION", "TASK"), help=argparse.SUPPRESS)
    parser.add_argument("--make-file", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_file:
        make_file(*args.make_file)
        return
    if args.one:
        args.model, args.precision, args.task = args.one
        one(args)
        return
    rows = []
    for model, precision, task in QUICK if args.quick else PLAN:
        cmd = [sys.executable, __file__, "--one", model, precision, task, "--iters", str(args.iters)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--cpu"] if args.cpu else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{model} {precision} {task}: failed\n{done.stderr[-2000:]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        if len(rows) == 1:
            print(f"device {row['device']}, {row['threads']} threads, images {row['size']}, "
                  f"{DETECTIONS} detections/image, {args.iters} timed iterations after 1 warm-up, "
                  f"one process per row (peak = its max RSS)")
        if task == "infer":
            print(f"infer  {model:16s} {precision:4s}->{row['precision']:4s} {row['images_per_s']:7.3f} img/s "
                  f"({row['seconds_per_batch']:.2f} s/batch of {row['batch']}) "
                  f"peak {row['peak_rss_gb']:.3f} GiB = {row['peak_rss_gb'] * 2**30 / 1e9:.3f} GB "
                  f"(built: {row['baseline_rss_gb']:.2f}) "
                  f"| {row['gflops_per_s']:.0f} GFLOP/s ({row['gflop_per_image']:.0f} GFLOP/image; one 3x3 conv: "
                  f"{row['conv_gflops_per_s']:.0f}) | {row['detections']:.0f} dets", flush=True)
        else:
            print(f"train  {model:16s} {precision:4s}->{row['precision']:4s} {row['images_per_s']:7.3f} img/s "
                  f"(batch 2) peak {row['peak_rss_gb']:.2f} GiB (built: {row['baseline_rss_gb']:.2f})", flush=True)
    base = {r["task"]: r for r in rows if r["model"] == "stock" and r["asked"] == "fp32"}
    for r in rows:
        if r["task"] in base and r is not base[r["task"]]:
            print(f"ratio {r['task']:5s} {r['model']:16s} {r['asked']:4s} vs stock fp32: "
                  f"{r['images_per_s'] / base[r['task']]['images_per_s']:.2f}x speed, "
                  f"{r['peak_rss_gb'] / base[r['task']]['peak_rss_gb']:.2f}x peak memory")


if __name__ == "__main__":
    main()
