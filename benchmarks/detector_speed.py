"""Training and inference speed of Mask R-CNN R50-FPN: cupre vs torchvision's stock model.

Models: ``build_detector`` with backbone resnet50 and ``frozen_bn`` (same architecture as
torchvision's stock model: plain FPN, TwoMLPHead) or ``gn`` (GroupNorm everywhere,
4conv1fc box head), and torchvision's ``maskrcnn_resnet50_fpn(weights=None,
weights_backbone=None)`` with one foreground class. All keep the images at their size
(cupre never resizes; the stock model gets ``min_size``/``max_size`` = H/W).

* Training: images/s of a full SGD step (forward, backward, update) on generated
  LIVECell-sized images (704x520) with 300 cells each, batch 8; fp32, and bf16 autocast
  on CUDA.
* Inference: images/s with 2,000 detections per image, forced by score threshold 0, no
  box NMS (threshold 1.0), ``detections_per_img`` 2,000 and 2,000 RPN proposals; the
  time includes turning masks into binary full-image masks (cupre pastes in batches,
  torchvision pastes one mask at a time; its probabilities are then thresholded).
* Pasting alone: 2,000 masks (300 on CPU) into one 704x520 image, ``paste_masks`` vs
  ``paste_masks_in_image`` (thresholded).

Without CUDA a small CPU run (smaller images, fewer cells and detections, 2 iterations)
is made instead, and the script says so. It prints figures only; nothing is asserted.

    python benchmarks/detector_speed.py [--iters 10] [--cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.roi_heads import paste_masks_in_image

from cupre.config import DetectorConfig
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.detector import build_detector
from cupre.models.paste import paste_masks


@dataclass
class Setting:
    height: int
    width: int
    cells: int
    batch: int
    infer_batch: int
    detections: int
    iters: int
    warmup: int
    paste_masks: int  # masks pasted into one 704x520 image in the pasting-only timing


PASTE_IMAGE = (520, 704)  # LIVECell image size (H, W)
CUDA_SETTING = Setting(height=520, width=704, cells=300, batch=8, infer_batch=2, detections=2000, iters=10, warmup=3,
                       paste_masks=2000)
CPU_SETTING = Setting(height=192, width=256, cells=30, batch=2, infer_batch=1, detections=200, iters=2, warmup=1,
                      paste_masks=300)


def make_batch(s: Setting, batch: int, device: torch.device, seed: int = 0) -> tuple[list, list]:
    """Random images and ``s.cells`` rectangular cells (4..40 px) per image."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    ys = torch.arange(s.height, device=device)[None, :, None]
    xs = torch.arange(s.width, device=device)[None, None, :]
    for _ in range(batch):
        size = 4 + torch.rand(s.cells, 2, generator=gen) * 36
        corner = torch.rand(s.cells, 2, generator=gen) * (torch.tensor([s.width, s.height]) - size)
        boxes = torch.cat([corner, corner + size], dim=1).floor().to(device)
        x1, y1, x2, y2 = (v[:, None, None] for v in boxes.unbind(1))
        masks = ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).to(torch.uint8)
        labels = torch.ones(s.cells, dtype=torch.int64, device=device)
        images.append(torch.rand(3, s.height, s.width, device=device))
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def model_builders(s: Setting) -> dict[str, Callable[[], torch.nn.Module]]:
    """Constructors of the three models, with the inference settings that force detections."""
    common = dict(rpn_pre_nms_top_n_test=max(3000, s.detections),
                  rpn_post_nms_top_n_test=s.detections, box_score_thresh=0.0, box_nms_thresh=1.0,
                  detections_per_img=s.detections)

    def cupre(norm: str) -> torch.nn.Module:
        return build_detector(DetectorConfig(backbone="resnet50", norm=norm, **common))

    def stock() -> torch.nn.Module:
        return maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=2, min_size=s.height, max_size=s.width,
            image_mean=list(PIXEL_MEAN), image_std=list(PIXEL_STD),
            rpn_pre_nms_top_n_test=common["rpn_pre_nms_top_n_test"], rpn_post_nms_top_n_test=s.detections,
            box_score_thresh=0.0, box_nms_thresh=1.0, box_detections_per_img=s.detections,
        )

    return {"cupre frozen_bn": lambda: cupre("frozen_bn"), "cupre gn": lambda: cupre("gn"),
            "torchvision stock": stock}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_speed(model, images, targets, s: Setting, device: torch.device, bf16: bool) -> float:
    """Images per second of forward + backward + SGD step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    for step in range(s.warmup + s.iters):
        if step == s.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, bf16):
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    sync(device)
    return s.iters * len(images) / (time.perf_counter() - start)


@torch.no_grad()
def infer_speed(model, images, s: Setting, device: torch.device, bf16: bool) -> tuple[float, float]:
    """Images per second until binary full-image masks, and mean detections per image."""
    model.eval()
    counts = []
    for step in range(s.warmup + s.iters):
        if step == s.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, bf16):
            outputs = model(images)
        binary = [out["masks"] if out["masks"].dtype == torch.uint8 else out["masks"][:, 0] > 0.5 for out in outputs]
        counts += [len(b) for b in binary]
    sync(device)
    return s.iters * len(images) / (time.perf_counter() - start), sum(counts) / len(counts)


def paste_speed(s: Setting, device: torch.device) -> dict[str, float]:
    """Seconds to paste ``s.paste_masks`` 28x28 masks into one 704x520 image, both pasters."""
    height, width = PASTE_IMAGE
    gen = torch.Generator().manual_seed(1)
    size = 4 + torch.rand(s.paste_masks, 2, generator=gen) * 36
    corner = torch.rand(s.paste_masks, 2, generator=gen) * torch.tensor([width, height])
    boxes = torch.cat([corner, corner + size], dim=1).to(device)
    probs = torch.rand(s.paste_masks, 1, 28, 28, generator=gen).to(device)
    pasters = {
        "cupre paste_masks": lambda: paste_masks(probs, boxes, (height, width)),
        "torchvision paste_masks_in_image": lambda: paste_masks_in_image(probs, boxes, (height, width)) > 0.5,
    }
    times = {}
    for name, paste in pasters.items():
        paste()
        sync(device)
        start = time.perf_counter()
        for _ in range(s.iters):
            paste()
        sync(device)
        times[name] = (time.perf_counter() - start) / s.iters
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 10 CUDA, 2 CPU)")
    parser.add_argument("--cpu", action="store_true", help="force the small CPU run")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    s = CUDA_SETTING if cuda else CPU_SETTING
    if args.iters:
        s.iters = args.iters
    if cuda:
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}")
    else:
        print("device: CPU (no CUDA) - small run: figures are NOT the CUDA setting's")
    print(f"{s.width}x{s.height} px, {s.cells} cells/image, train batch {s.batch}, "
          f"{s.detections} detections/image, {s.iters} timed iterations after {s.warmup} warm-up")
    images, targets = make_batch(s, s.batch, device)
    precisions = [False, True] if cuda else [False]
    for name, build in model_builders(s).items():
        model = build().to(device)
        for bf16 in precisions:
            tag = "bf16" if bf16 else "fp32"
            train = train_speed(model, images, targets, s, device, bf16)
            infer, dets = infer_speed(model, images[: s.infer_batch], s, device, bf16)
            print(f"{name:18s} {tag}: train {train:7.2f} img/s | inference {infer:7.2f} img/s "
                  f"({dets:.0f} detections/image)")
        del model
        if cuda:
            torch.cuda.empty_cache()
    for name, seconds in paste_speed(s, device).items():
        print(f"paste {s.paste_masks} masks into 704x520, {name}: {seconds * 1000:.1f} ms")


if __name__ == "__main__":
    main()
