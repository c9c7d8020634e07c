"""Images per second of ``cupre predict`` on 512x512 images, CPU and (when present) GPU.

A randomly initialised detector (no weights are downloaded) with the score threshold at 0
and 2,000 detections per image, so every image carries the full detection load of a
crowded cell image. Two figures per device: the model plus tile merging
(:func:`cupre.detect.tiling.predict_images`), and the whole ``run_predict`` including
the label TIFF, overlay PNG, CSV and COCO results it writes.

``--large 4000`` instead runs the ``cupre predict`` command in a child process on one
4,000 x 4,000 image (tiled, 2,000 detections allowed per tile, score threshold 0) and
prints that process's peak resident memory, its wall time and what it ran with; the
image is a PNG, or with ``--format tif`` a tiled TIFF (read a tile at a time);
``--workers N`` spreads its tiles over a local Dask cluster of N processes (the peak is
then the largest of the processes).

Usage: python benchmarks/predict_speed.py [--backbone resnet50] [--images 4] [--batch-size 2] [--threads N]
       python benchmarks/predict_speed.py --large 4000 [--tile-size 1024] [--threads N] [--precision auto]
                                          [--format png|tif] [--workers N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from cupre.config import DetectorConfig
from cupre.detect.tiling import predict_images
from cupre.devices import resolve_precision, set_threads
from cupre.inference.predict import PredictOptions, run_predict
from cupre.models.detector import build_detector


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 grey images with bright blobs on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        img = rng.normal(30, 8, (size, size))
        for cy, cx, r in zip(rng.uniform(0, size, 150), rng.uniform(0, size, 150), rng.uniform(4, 12, 150)):
            img += 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def bench_device(device: torch.device, args: argparse.Namespace, arrays: list[np.ndarray]) -> None:
    torch.manual_seed(0)
    cfg = DetectorConfig.from_dict({"backbone": args.backbone, "detections_per_img": args.max_detections,
                                    "box_score_thresh": 0.0})
    model = build_detector(cfg).eval().to(device)
    model.precision = resolve_precision(args.precision, device)
    images = [torch.from_numpy(a).float().div(255)[None].expand(3, -1, -1).contiguous() for a in arrays]
    kwargs = dict(tile_size=1024, overlap=128, batch_size=args.batch_size, device=device)
    predict_images(model, images[: args.batch_size], **kwargs)  # warm-up (allocator, cuDNN autotune)
    start = time.perf_counter()
    found = predict_images(model, images, **kwargs)
    model_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        for k, a in enumerate(arrays):
            Image.fromarray(a).save(Path(tmp) / f"img{k:03d}.png")
        start = time.perf_counter()
        options = PredictOptions(score_threshold=0.0, max_detections=args.max_detections,
                                 batch_size=args.batch_size, device=str(device), precision=args.precision)
        summary = run_predict(model, [tmp], out=Path(tmp) / "out", options=options, progress=False)
        full_s = time.perf_counter() - start
    n = len(images)
    per_image = np.mean([len(o) for o in found])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{device.type:4s} {n / model_s:6.2f} images/s model + merge | {n / full_s:6.2f} images/s whole predict "
          f"(files written) | {per_image:.0f} detections/image ({summary.objects / n:.0f} in label images) | "
          f"{args.backbone}, batch {args.batch_size}, {n} images {args.size}x{args.size}, {name}, {model.precision}")


# cupre predict in a child that reports its own peak resident set (VmHWM). The rusage of a
# child is no use here: Linux carries the parent's peak into a child started by vfork.
CHILD = ("import sys; from cupre.cli import main; rc = main(sys.argv[1:]); "
         "print('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(rc)")


def bench_large(args: argparse.Namespace) -> None:
    """Peak memory of ``cupre predict`` on one ``--large`` x ``--large`` image, in a child process."""
    from cupre.train.weights import save_model

    with tempfile.TemporaryDirectory() as tmp:
        (image,) = synthetic_images(1, args.large)
        source = Path(tmp) / f"large.{args.format}"
        if args.format == "tif":
            tifffile.imwrite(source, image, tile=(512, 512), compression="zlib")
        else:
            Image.fromarray(image).save(source)
        del image
        cfg = DetectorConfig.from_dict({"backbone": args.backbone})
        torch.manual_seed(0)
        save_model(Path(tmp) / "model.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
        cmd = [sys.executable, "-c", CHILD, "predict", str(Path(tmp) / "model.safetensors"),
               str(source), "-o", str(Path(tmp) / "out"), "--score-threshold", "0",
               "--max-detections", str(args.max_detections), "--device", "cpu", "--precision", args.precision,
               "--tile-size", str(args.tile_size)]
        cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--workers", str(args.workers)] if args.workers else []
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        *_, said, high_water = done.stdout.strip().splitlines()
        peak = int(high_water.split()[1]) / 1024**2  # kB -> GiB
        print(said)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    print(f"cupre predict, one {args.large}x{args.large} {args.format} image: peak {peak:.2f} GiB = {peak * 1.073741824:.2f} GB (its process"
          f"{'; the Dask workers not counted' if args.workers else ''}), "
          f"{seconds:.0f} s | {args.backbone} (default GN model, random weights), "
          f"tiles {args.tile_size} px / 128 overlap, batch {args.batch_size or 'default'}, score threshold 0, "
          f"up to {args.max_detections} detections per tile, cpu, "
          f"{args.threads or 'all'} threads, {precision}, "
          + (f"{args.workers} Dask worker processes" if args.workers else "one process"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", help="timm backbone (resnet18, resnet50 ...)")
    parser.add_argument("--images", type=int, default=4, help="images per device")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 2, and with --large cupre predict's own (1 on a CPU)")
    parser.add_argument("--max-detections", type=int, default=2000)
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when absent")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--large", type=int, default=None, metavar="SIDE",
                        help="peak memory of cupre predict on one SIDE x SIDE image instead")
    parser.add_argument("--tile-size", type=int, default=1024, help="with --large: cupre predict's --tile-size")
    parser.add_argument("--format", default="png", choices=("png", "tif"), help="with --large: the image's format")
    parser.add_argument("--workers", type=int, default=None, help="with --large: cupre predict --workers N")
    args = parser.parse_args()
    if args.large:
        bench_large(args)
        return
    set_threads(args.threads)
    args.batch_size = args.batch_size or 2
    arrays = synthetic_images(args.images, args.size)
    for name in args.devices.split(","):
        if name.startswith("cuda") and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        bench_device(torch.device(name), args, arrays)


if __name__ == "__main__":
    main()
