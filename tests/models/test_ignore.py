"""Ignore regions: anchors and proposals inside them are never sampled as background."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.rpn import RegionProposalNetwork

from cupre.config import DetectorConfig
from cupre.models.detector import build_detector
from cupre.models.heads.ignore import IGNORE_IOF, ignore_background, inside_fraction
from tests.helpers import TINY_DETECTOR

OBJECT = [4.0, 4.0, 24.0, 24.0]
UNSURE = [40.0, 40.0, 64.0, 64.0]


def grid_boxes(side: int, step: int, size: int = 96) -> torch.Tensor:
    """Square boxes of ``side`` px every ``step`` px over a ``size`` px image."""
    starts = torch.arange(0, size - side + 1, step, dtype=torch.float32)
    y, x = torch.meshgrid(starts, starts, indexing="ij")
    return torch.stack([x, y, x + side, y + side], dim=-1).reshape(-1, 4)


def target(with_ignore: bool = True) -> dict:
    masks = torch.zeros((1, 96, 96), dtype=torch.uint8)
    masks[0, 4:24, 4:24] = 1
    out = {"boxes": torch.tensor([OBJECT]), "labels": torch.tensor([1]), "masks": masks}
    if with_ignore:
        out["ignore_boxes"] = torch.tensor([UNSURE])
    return out


def inside_unsure(boxes: torch.Tensor) -> torch.Tensor:
    return inside_fraction(boxes, torch.tensor([UNSURE])) >= IGNORE_IOF


def test_only_background_inside_a_region_is_ignored():
    boxes = torch.tensor([[42.0, 42.0, 50.0, 50.0], [42.0, 42.0, 50.0, 50.0], [0.0, 0.0, 8.0, 8.0],
                          [30.0, 30.0, 50.0, 50.0]])
    labels = torch.tensor([0, 1, 0, 0])
    got = ignore_background(labels, boxes, torch.tensor([UNSURE]))
    assert got.tolist() == [-1, 1, 0, 0]  # the last box is only a quarter inside
    assert ignore_background(labels, boxes, None).tolist() == labels.tolist()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(DetectorConfig.from_dict(TINY_DETECTOR)).train()


def test_rpn_never_labels_an_anchor_inside_an_unsure_region_background(model):
    anchors = grid_boxes(16, 4)
    assert int(inside_unsure(anchors).sum()) > 10
    plain, _ = RegionProposalNetwork.assign_targets_to_anchors(model.head.rpn, [anchors], [target(False)])
    assert bool((plain[0][inside_unsure(anchors)] == 0).all())  # without the region they are background
    labels, _ = model.head.rpn.assign_targets_to_anchors([anchors], [target()])
    assert bool((labels[0][inside_unsure(anchors)] == -1).all())
    assert bool((labels[0][~inside_unsure(anchors)] == plain[0][~inside_unsure(anchors)]).all())


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade"])
def test_roi_heads_never_sample_a_proposal_inside_an_unsure_region_as_background(arch):
    torch.manual_seed(0)
    heads = build_detector(DetectorConfig.from_dict({**TINY_DETECTOR, "arch": arch})).head.roi_heads.train()
    proposals = [torch.cat([grid_boxes(12, 3), grid_boxes(20, 6)])]

    def background_inside(with_ignore: bool) -> int:
        """Background samples inside the unsure region over a few draws of the sampler."""
        found = 0
        for _ in range(5):
            if arch == "cascade":
                boxes, _, labels, _ = heads._label_and_sample(0, proposals, [target(with_ignore)])
            else:
                boxes, _, labels, _ = heads.select_training_samples(proposals, [target(with_ignore)])
            found += int(inside_unsure(boxes[0][labels[0] == 0]).sum())
        return found

    assert background_inside(False) > 0
    assert background_inside(True) == 0


def test_a_training_step_with_ignore_regions_gives_finite_losses(model):
    image = torch.rand(3, 96, 96)
    losses = model([image], [target()])
    assert all(torch.isfinite(v) for v in losses.values())
