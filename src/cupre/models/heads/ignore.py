"""Ignore regions: objects that count neither as objects nor as background.

A training target may carry ``ignore_boxes`` (float ``Kx4`` XYXY): regions whose content
is unknown, such as a pseudo-label the teacher was unsure of, or a COCO crowd region.
An anchor (RPN) or proposal (RoI heads) that would be sampled as background but lies at
least ``IGNORE_IOF`` inside such a box (intersection over its own area, mmdetection's
``ignore_iof_thr``) is labelled -1 instead: the samplers then draw it neither as a
positive nor as a negative, so no loss teaches the model that an unsure object is
background. Positives are left as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

IGNORE_IOF = 0.5


def inside_fraction(boxes: Tensor, regions: Tensor) -> Tensor:
    """For ``boxes`` ``Nx4`` and ``regions`` ``Kx4`` (XYXY): the largest fraction of each
    box's area inside one region -> float ``N``."""
    if boxes.numel() == 0 or regions.numel() == 0:
        return boxes.new_zeros(len(boxes))
    boxes, regions = boxes.float(), regions.float().to(boxes.device)
    lt = torch.maximum(boxes[:, None, :2], regions[None, :, :2])  # N x K x 2
    rb = torch.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)  # N x K
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1).clamp(min=1e-6)  # N
    return (inter / area[:, None]).max(dim=1).values


def ignore_background(labels: Tensor, boxes: Tensor, regions: Tensor | None, iof: float = IGNORE_IOF) -> Tensor:
    """``labels`` (``N``; 0 background, -1 discarded, positive otherwise) with the
    background entries whose ``boxes`` lie at least ``iof`` inside ``regions`` set to -1."""
    if regions is None or regions.numel() == 0:
        return labels
    hidden = (labels == 0) & (inside_fraction(boxes, regions) >= iof)
    return torch.where(hidden, torch.full_like(labels, -1), labels)


class IgnoringRPN(RegionProposalNetwork):
    """torchvision's RPN whose anchor labels respect the targets' ``ignore_boxes``."""

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]):
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        labels = [ignore_background(lab, a, t.get("ignore_boxes")) for lab, a, t in zip(labels, anchors, targets)]
        return labels, matched


class IgnoringRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` whose proposal labels respect the targets' ``ignore_boxes``.

    torchvision matches proposals to targets in ``assign_targets_to_proposals``, which
    sees the boxes but not the targets; ``select_training_samples`` (which sees both)
    hands it the ignore regions of the batch it is labelling."""

    _ignore: list[Tensor | None] | None = None

    def select_training_samples(self, proposals, targets):
        self._ignore = [t.get("ignore_boxes") for t in targets] if targets is not None else None
        try:
            return super().select_training_samples(proposals, targets)
        finally:
            self._ignore = None

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        matched, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if self._ignore is not None:
            labels = [ignore_background(lab, p, r) for lab, p, r in zip(labels, proposals, self._ignore)]
        return matched, labels
