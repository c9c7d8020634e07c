"""Sample data: a synthetic fluorescence-like cell image (generated, no download)."""

from __future__ import annotations

import numpy as np

from cupre.data.synth_cells import render


def synthetic_cells() -> list[tuple]:
    """One 256 x 256 synthetic cell image as a napari image layer."""
    image = render(np.random.default_rng(0), size=256, index=1, seed=0).image
    return [(image, {"name": "synthetic cells"}, "image")]
