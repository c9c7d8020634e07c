"""Intensity normalisation: one function for every image, natural or microscopy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cupre.data.imageio import normalize


def test_percentiles_land_on_zero_and_one_and_grey_fills_three_channels():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 4096, (40, 50)).astype(np.uint16)
    image = normalize(grey)
    assert image.shape == (3, 40, 50) and image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert torch.equal(image[0], image[2])
    lo, hi = np.percentile(grey.astype(np.float32), [1, 99.8])
    expected = np.clip((grey.astype(np.float32) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(image[1].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_grey_view_gives_the_same_values_in_a_third_of_the_memory():
    grey = np.random.default_rng(1).normal(100, 20, (64, 48)).astype(np.float32)
    full, view = normalize(grey), normalize(grey, grey_view=True)
    assert torch.equal(full, view)
    assert view.stride(0) == 0  # one plane seen three times
    assert view.untyped_storage().nbytes() == 64 * 48 * 4
    with pytest.raises(RuntimeError):
        view.add_(1)  # read-only in effect: an in-place write cannot silently change one channel


def test_grey_view_leaves_colour_images_as_they_are():
    rgb = np.random.default_rng(2).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    assert torch.equal(normalize(rgb), normalize(rgb, grey_view=True))
    assert normalize(rgb, grey_view=True).stride(0) != 0
