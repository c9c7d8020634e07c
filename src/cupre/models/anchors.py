"""RPN anchors sized from the object scale, and how well they cover a dataset's objects.

A detector with ``object_size`` sees every image rescaled so that its median object
measures ``object_size`` px (:mod:`cupre.scale`). Its anchors should then cover objects of
about that size and the spread around it (the objects of one image, and the training
scale jitter): ``anchor_sizes: auto`` puts ``0.8 x object_size`` on P2 (stride 4) and
doubles it per level, detectron2's "8 x stride" ladder shifted to the objects (16..256
at ``object_size`` 20). ``anchors_per_octave: 2`` adds a size ``sqrt(2)`` larger on every
level (RetinaNet's scales per octave).

:func:`anchor_coverage` measures a choice on labels: for every object at the object
scale, the best IoU of any anchor and the number of anchors the RPN would take as
positives (IoU >= 0.7, its ``fg_iou_thresh``) or could (IoU >= 0.5). An object with no
anchor at 0.7 gets one low-quality positive (its best anchor) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torchvision.ops import box_iou

from cupre.errors import CupreError

STRIDES = (4, 8, 16, 32, 64)  # P2..P6
AUTO_BASE = 0.8  # P2's anchor side, in object sizes
RPN_POSITIVE_IOU = 0.7


def level_sizes(anchor_sizes, object_size: float | None, per_octave: int = 1) -> tuple[tuple[int, ...], ...]:
    """Anchor sides per pyramid level P2..P6 (``per_octave`` of them each).

    ``anchor_sizes``: one side per level, or ``"auto"`` (from ``object_size``; see the
    module docstring).
    """
    if anchor_sizes == "auto":
        if object_size is None:
            raise CupreError("anchor_sizes: auto needs object_size (the object scale the anchors are sized from)")
        anchor_sizes = [AUTO_BASE * object_size * 2 ** level for level in range(len(STRIDES))]
    sizes = list(anchor_sizes)
    if len(sizes) != len(STRIDES):
        raise CupreError(f"anchor_sizes: expected {len(STRIDES)} sizes (one per FPN level P2..P6), got {sizes}")
    return tuple(tuple(max(1, round(s * 2 ** (k / per_octave))) for k in range(per_octave)) for s in sizes)


def anchor_grid(height: int, width: int, sizes: tuple[tuple[int, ...], ...],
                aspect_ratios: Iterable[float]) -> torch.Tensor:
    """Every anchor of an image of ``height x width`` px, ``Nx4`` XYXY, as torchvision's
    ``AnchorGenerator`` places them (centred on multiples of each level's stride)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    ratios = tuple(aspect_ratios)
    generator = AnchorGenerator(sizes=sizes, aspect_ratios=(ratios,) * len(sizes))
    generator.set_cell_anchors(torch.float32, torch.device("cpu"))
    grids = [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    strides = [[torch.tensor(s), torch.tensor(s)] for s in STRIDES]
    return torch.cat(generator.grid_anchors(grids, strides))


@dataclass
class Coverage:
    """How the anchors cover ``objects`` objects (see :func:`anchor_coverage`)."""

    objects: int
    median_best_iou: float
    share_with_positive: float  # objects with an anchor at IoU >= 0.7
    positives_per_object: float  # mean anchors at IoU >= 0.7
    median_at_half: float  # median anchors at IoU >= 0.5

    def line(self) -> str:
        return (f"anchors cover {self.objects} objects: median best IoU {self.median_best_iou:.2f}, "
                f"{100 * self.share_with_positive:.0f}% have an anchor at IoU >= {RPN_POSITIVE_IOU} "
                f"({self.positives_per_object:.1f} per object), median {self.median_at_half:.0f} at IoU >= 0.5")


def anchor_coverage(images: Iterable[tuple[tuple[int, int], torch.Tensor]], sizes: tuple[tuple[int, ...], ...],
                    aspect_ratios: Iterable[float], *, chunk: int = 256) -> Coverage:
    """Anchor coverage of objects given as ``((height, width), boxes Nx4 XYXY)`` per image,
    each already at the object scale."""
    ratios = tuple(aspect_ratios)
    best, positives, half = [], [], []
    for (height, width), boxes in images:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if not len(boxes):
            continue
        anchors = anchor_grid(height, width, sizes, ratios)
        for start in range(0, len(boxes), chunk):
            iou = box_iou(boxes[start:start + chunk], anchors)
            best.append(iou.max(dim=1).values)
            positives.append((iou >= RPN_POSITIVE_IOU).sum(dim=1))
            half.append((iou >= 0.5).sum(dim=1))
    if not best:
        return Coverage(0, 0.0, 0.0, 0.0, 0.0)
    b, p, h = torch.cat(best), torch.cat(positives).float(), torch.cat(half).float()
    return Coverage(objects=len(b), median_best_iou=float(b.median()), share_with_positive=float((p > 0).float().mean()),
                    positives_per_object=float(p.mean()), median_at_half=float(h.median()))


def dataset_coverage(samples: Iterable[tuple[tuple[int, int], torch.Tensor]], object_size: float | None,
                     sizes: tuple[tuple[int, ...], ...], aspect_ratios: Iterable[float]) -> Coverage:
    """:func:`anchor_coverage` of labelled images given in their own pixels: each image and
    its boxes rescaled to the object scale first, as training sees them (no jitter)."""
    from cupre.scale import scale_factor, typical_size

    def at_scale():
        for (height, width), boxes in samples:
            boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            f = scale_factor(object_size, typical_size(boxes))
            yield (max(1, round(height * f)), max(1, round(width * f))), boxes * f

    return anchor_coverage(at_scale(), sizes, aspect_ratios)
