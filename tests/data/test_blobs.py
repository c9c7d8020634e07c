"""The model-free cell-size guess, and MoCo views at the detector's object scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cupre.data.blobs import blob_size
from cupre.data.transforms import ObjectScaleViews


def discs(size: int = 200, diameter: int = 10, step: int = 40, dark: bool = False) -> torch.Tensor:
    """A grid of discs (bright on dark, or dark on bright), as a grey ``3xHxW`` image."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for cy in range(step // 2, size, step):
        for cx in range(step // 2, size, step):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = 1.0
    if dark:
        img = 1.0 - img
    return torch.from_numpy(img).expand(3, -1, -1).clone()


def largest_diameter(view: torch.Tensor) -> float:
    """Equivalent diameter of the largest bright component (the discs the view cuts are smaller)."""
    labels, n = ndimage.label(view[0].numpy() > 0.5)
    return float(2 * np.sqrt(np.bincount(labels.ravel())[1:].max() / np.pi))


@pytest.mark.parametrize("diameter", [8, 14, 30])
@pytest.mark.parametrize("dark", [False, True])
def test_blob_size_measures_the_discs(diameter, dark):
    assert blob_size(discs(diameter=diameter, step=max(40, 2 * diameter), dark=dark)) == pytest.approx(diameter,
                                                                                                    rel=0.15)


def test_blob_size_of_a_flat_image_is_none():
    assert blob_size(torch.full((3, 64, 64), 0.5)) is None


def test_object_scale_views_show_cells_at_the_object_size():
    torch.manual_seed(0)
    image = discs(size=400, diameter=10, step=20)
    views = ObjectScaleViews(96, object_size=20, jitter=1.0, brightness=0, contrast=0, gamma=(1, 1),
                             noise_sigma=0, blur_sigma=(0.01, 0.01))
    for _ in range(5):
        a, b = views(image)
        assert a.shape == b.shape == (3, 96, 96)
        for view in (a, b):
            assert largest_diameter(view) == pytest.approx(20, rel=0.2)  # 10 px discs seen at 2x
    assert len(views.sizes) == 1  # the image was measured once
