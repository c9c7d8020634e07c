"""A first guess at an unlabeled image's cell size, without a model.

Otsu's threshold splits the (grey) image into foreground and background; the smaller side
is taken as the cells (bright nuclei on a dark background, or dark nuclei on a bright
one), and the typical size is the median equivalent diameter ``2 * sqrt(area / pi)`` of
its connected components, the diameter of a disc of the same area, about the side of
its box (the measure :func:`cupre.scale.typical_size` takes of boxes). Touching cells
merge into one component and inflate the guess; it only has to put cells near the
detector's object size, within the views' scale jitter.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

MIN_AREA = 16  # px: smaller components are noise
MAX_SIDE = 512  # px: larger images are measured on a subsampled copy (the size scaled back)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (the one that maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    mt = m[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(centres[int(np.argmax(between))])


def blob_size(image: torch.Tensor) -> float | None:
    """Median equivalent diameter (px) of the foreground components of a ``CxHxW`` image
    in [0, 1]; None when there is no usable foreground."""
    grey = image.float().mean(dim=0)
    step = max(1, math.ceil(max(grey.shape) / MAX_SIDE))
    grey = ndimage.gaussian_filter(grey[::step, ::step].numpy(), 1.0)  # speckle is not a cell
    if float(grey.max() - grey.min()) < 1e-3:
        return None
    fg = grey > otsu_threshold(grey)
    if fg.mean() > 0.5:  # the cells are the smaller side: dark cells on a bright background
        fg = ~fg
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    areas = np.bincount(labels.ravel())[1:] * step * step
    areas = areas[areas >= MIN_AREA * step * step]
    if len(areas) == 0:
        return None
    return float(2.0 * math.sqrt(float(np.median(areas)) / math.pi))
