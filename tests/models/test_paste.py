"""Batched mask pasting: agreement with torchvision, exactness of windows/chunks, edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import masks_to_boxes, roi_align

from cupre.models.paste import PIXEL_OFFSET, paste_masks

M = 28


def _ellipses(num: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """bool ``num x H x W`` random ellipse-shaped cells (3-28 px radii), none empty."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cx, cy = torch.rand(num, generator=gen) * width, torch.rand(num, generator=gen) * height
    ax, ay = 3 + torch.rand(num, generator=gen) * 25, 3 + torch.rand(num, generator=gen) * 25
    inside = ((xx - cx[:, None, None]) / ax[:, None, None]) ** 2 + ((yy - cy[:, None, None]) / ay[:, None, None]) ** 2
    masks = inside <= 1
    return masks[masks.flatten(1).any(dim=1)]


def _targets(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (x2/y2 exclusive) and MxM targets made the way torchvision's mask loss makes them."""
    boxes = masks_to_boxes(masks)
    boxes[:, 2:] += 1
    rois = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None], boxes], dim=1)
    return boxes, roi_align(masks[:, None].float(), rois, (M, M), 1.0)


def _full_image_reference(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Straightforward full-image grid_sample with the same geometry (no windows, no chunks)."""
    height, width = size
    num = probs.shape[0]
    x1, y1, x2, y2 = boxes.unbind(1)
    xs = torch.arange(width, dtype=torch.float32) + PIXEL_OFFSET
    ys = torch.arange(height, dtype=torch.float32) + PIXEL_OFFSET
    gx = (xs[None] - x1[:, None]) / (x2 - x1).clamp(min=1.0)[:, None] * 2 - 1
    gy = (ys[None] - y1[:, None]) / (y2 - y1).clamp(min=1.0)[:, None] * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(num, height, width), gy[:, :, None].expand(num, height, width)], 3)
    return F.grid_sample(probs.reshape(num, 1, M, M).float(), grid, align_corners=False)[:, 0]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).clamp(min=1).float()
    return (inter / union).mean().item()


def test_agrees_with_torchvision_and_recovers_ground_truth():
    size = (180, 240)
    gt = _ellipses(60, *size)
    boxes, probs = _targets(gt)
    ours = paste_masks(probs, boxes, size)
    theirs = paste_masks_in_image(probs, boxes, size)[:, 0] > 0.5
    agreement = (ours == theirs).float().mean().item()
    print(f"pixel agreement with torchvision: {agreement:.5f}; fg IoU {_iou(ours, theirs):.3f}")
    assert agreement >= 0.99
    assert _iou(ours, theirs) > 0.8
    # the targets were made from `gt`: pasting them back must give `gt` at least as well as torchvision
    assert _iou(ours, gt) > 0.95
    assert _iou(ours, gt) >= _iou(theirs, gt)


@pytest.mark.parametrize("chunk_pixels", [1 << 25, 20_000])
def test_windows_and_chunks_are_exact(chunk_pixels):
    size = (90, 130)
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(40, 1, M, M, generator=gen)
    xy = torch.rand(40, 2, generator=gen) * torch.tensor([130.0, 90.0])
    wh = 1 + torch.rand(40, 2, generator=gen) * 40
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    boxes[0] = torch.tensor([-40.0, -30.0, 200.0, 150.0])  # larger than the image
    boxes[1] = torch.tensor([120.0, 80.0, 160.0, 120.0])  # partly outside
    boxes[2] = torch.tensor([10.0, 10.0, 10.2, 10.1])  # degenerate: treated as 1 px
    expected = _full_image_reference(probs, boxes, size) > 0.5
    got = paste_masks(probs, boxes, size, chunk_pixels=chunk_pixels)
    assert got.dtype == torch.bool and got.shape == (40, *size)
    assert torch.equal(got, expected)
    assert got[0].float().mean() > 0.3  # the huge box covers the image


def test_shapes_threshold_and_empty():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 50.0]])
    probs = torch.full((1, M, M), 0.9)
    high = paste_masks(probs, boxes, (64, 48), threshold=0.95)
    low = paste_masks(probs, boxes, (64, 48), threshold=0.5)
    assert high.shape == (1, 64, 48) and not high.any()
    ys, xs = torch.nonzero(low[0], as_tuple=True)
    # a constant mask fills its box: columns 10..29, rows 20..49 (x2/y2 exclusive)
    assert (xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()) == (10, 29, 20, 49)
    assert low[0].sum().item() == 20 * 30
    empty = paste_masks(torch.zeros(0, 1, M, M), torch.zeros(0, 4), (64, 48))
    assert empty.shape == (0, 64, 48) and empty.dtype == torch.bool


def test_box_local_pasting_equals_full_image_pasting():
    from cupre.models.paste import paste_masks_in_boxes

    torch.manual_seed(0)
    n, height, width = 40, 70, 90
    xy = torch.rand(n, 2) * torch.tensor([width, height]) - 5
    boxes = torch.cat([xy, xy + 3 + torch.rand(n, 2) * 30], dim=1)
    probs = torch.rand(n, 1, 28, 28)
    full = paste_masks(probs, boxes, (height, width))
    origins, crops = paste_masks_in_boxes(probs, boxes, (height, width))
    for k in range(n):
        y0, x0 = origins[k].tolist()
        rebuilt = torch.zeros(height, width, dtype=torch.bool)
        rebuilt[y0:y0 + crops[k].shape[0], x0:x0 + crops[k].shape[1]] = crops[k]
        assert torch.equal(rebuilt, full[k])
    # memory grows with the boxes, not with N x H x W
    assert sum(c.numel() for c in crops) < 0.25 * n * height * width
