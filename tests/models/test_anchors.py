"""Anchors from the object scale, and the coverage diagnostic."""

from __future__ import annotations

import pytest
import torch

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.models.anchors import anchor_coverage, anchor_grid, dataset_coverage, level_sizes
from cupre.models.detector import build_detector
from tests.helpers import TINY_DETECTOR


def test_auto_sizes_follow_the_object_size():
    assert level_sizes("auto", 20) == ((16,), (32,), (64,), (128,), (256,))
    assert level_sizes("auto", 10, 2) == ((8, 11), (16, 23), (32, 45), (64, 91), (128, 181))
    assert level_sizes((4, 8, 16, 32, 64), None) == ((4,), (8,), (16,), (32,), (64,))
    with pytest.raises(CupreError, match="object_size"):
        level_sizes("auto", None)
    with pytest.raises(CupreError, match="5 sizes"):
        level_sizes((4, 8), 20)


def test_the_grid_is_torchvisions():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = level_sizes("auto", 20, 2)
    generator = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    image = ImageList(torch.zeros(1, 3, 128, 192), [(128, 192)])
    features = [torch.zeros(1, 1, 128 // s, 192 // s) for s in (4, 8, 16, 32, 64)]
    (theirs,) = generator(image, features)
    assert torch.equal(anchor_grid(128, 192, sizes, (0.5, 1.0, 2.0)), theirs)


def test_coverage_counts_best_iou_and_positives():
    sizes = ((16,), (32,), (64,), (128,), (256,))
    exact = torch.tensor([[-8.0, -8.0, 8.0, 8.0], [24.0, 24.0, 40.0, 40.0]])  # two 16 px anchors of P2 exactly
    c = anchor_coverage([((64, 64), exact)], sizes, (1.0,))
    assert c.objects == 2 and c.median_best_iou == pytest.approx(1.0) and c.share_with_positive == 1.0
    tiny = torch.tensor([[30.0, 30.0, 33.0, 33.0]])  # 3 px: no 16 px anchor reaches IoU 0.7
    c = anchor_coverage([((64, 64), tiny)], sizes, (1.0,))
    assert c.share_with_positive == 0.0 and c.median_best_iou < 0.1


def test_dataset_coverage_rescales_to_the_object_scale():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 140.0, 140.0]])  # 40 px objects
    at_20 = dataset_coverage([((200, 200), boxes)], 20, level_sizes("auto", 20, 2), (1.0,))
    native = dataset_coverage([((200, 200), boxes)], None, level_sizes("auto", 20, 2), (1.0,))
    assert at_20.objects == native.objects == 2
    assert at_20.median_best_iou != native.median_best_iou


def test_a_detector_with_two_anchor_sizes_per_level_trains_and_detects():
    model = build_detector(DetectorConfig(**{**TINY_DETECTOR, "anchor_sizes": "auto", "anchors_per_octave": 2,
                                             "object_size": 20}))
    assert model.head.rpn.head.cls_logits.out_channels == 6  # 2 sizes x 3 ratios
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 20:40, 20:40] = 1
    target = {"boxes": torch.tensor([[20.0, 20.0, 40.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}
    losses = model([torch.rand(3, 64, 64)], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    (out,) = model([torch.rand(3, 64, 64)])
    assert out["boxes"].shape[-1] == 4
