"""Synthetic microscopy images of cells, a stand-in for LIVECell-like data.

Each image holds one cell type (as LIVECell holds one cell line per image), in one of
three imaging styles:

* ``phase``: grey background, dark cell interiors, bright halos around each cell;
* ``fluorescence``: bright blobs, brightest in the middle, on a dark background;
* ``brightfield``: H&E-like RGB, purple cells on a pink, textured stroma.

Cells are star-convex shapes (a possibly bent, rotated ellipse whose radius is
modulated by random harmonics) drawn only inside their bounding box. Cells cluster,
touch and overlap; the later cell occludes the earlier one, so the instance map holds
the visible parts. The image then gets uneven illumination (gradient and vignetting),
optical blur, Poisson shot noise and Gaussian read noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cupre.data.synth_common import (
    SynthImage,
    illumination,
    local_frame,
    smooth_noise,
    to_uint8,
)

CATEGORIES = [{"id": 1, "name": "cell", "supercategory": "cell"}]
STYLES = ("phase", "fluorescence", "brightfield")
_GRAIN_GAIN = np.float32(2.0 * np.sqrt(np.pi))  # unit variance after a sigma-1 Gaussian blur


@dataclass(frozen=True)
class CellType:
    """Shape statistics of one cell type.

    Attributes:
        name: stored as ``images[i]["cell_type"]``.
        radius: range of the major semi-axis, pixels.
        aspect: range of major / minor axis.
        wobble: amplitude of the random boundary harmonics (0 = a smooth ellipse).
        bend: largest curvature of the major axis (banana-shaped cells).
        count: range of cells per 256x256 image (scaled with the image area).
        texture: ``"smooth"``, ``"striated"`` (fibres along the long axis) or
            ``"granular"`` (bright granules and a nucleus).
    """

    name: str
    radius: tuple[float, float]
    aspect: tuple[float, float]
    wobble: float
    bend: float
    count: tuple[int, int]
    texture: str


CELL_TYPES = (
    CellType("round", radius=(4.5, 7.0), aspect=(1.0, 1.25), wobble=0.04, bend=0.0, count=(30, 60), texture="smooth"),
    CellType("elongated", radius=(11.0, 17.0), aspect=(2.6, 4.0), wobble=0.05, bend=0.012, count=(18, 40),
             texture="striated"),
    CellType("large-irregular", radius=(13.0, 20.0), aspect=(1.0, 1.5), wobble=0.13, bend=0.0, count=(10, 22),
             texture="granular"),
)


@dataclass
class _Cell:
    cy: float
    cx: float
    a: float  # major semi-axis
    b: float  # minor semi-axis
    angle: float
    bend: float
    harmonics: np.ndarray  # Kx3: order, amplitude, phase
    level: float  # per-cell brightness / stain factor in [0, 1]


def render(rng: np.random.Generator, *, size: int, index: int, seed: int) -> SynthImage:
    """Render one ``size x size`` cell image; the cell type cycles with ``index``."""
    ctype = CELL_TYPES[(index - 1 + seed) % len(CELL_TYPES)]
    style = STYLES[int(rng.integers(len(STYLES)))]
    shape = (size, size)
    lo, hi = ctype.count
    n = max(1, int(round(rng.integers(lo, hi + 1) * size * size / 65536.0)))
    cells = _place_cells(rng, ctype, n, size)
    canvas = _background(rng, style, shape)
    grain = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0) * _GRAIN_GAIN
    labels = np.zeros(shape, dtype=np.int32)
    for k, cell in enumerate(cells, start=1):
        _draw_cell(canvas, labels, grain, cell, k, ctype, style, rng)
    image = _finish(rng, canvas, style)
    meta = {"cell_type": ctype.name, "style": style}
    return SynthImage(image=image, labels=labels, category_ids=[1] * len(cells), meta=meta)


def _sample_cell(rng: np.random.Generator, ctype: CellType, cy: float, cx: float) -> _Cell:
    a = rng.uniform(*ctype.radius)
    b = a / rng.uniform(*ctype.aspect)
    orders = np.arange(2, 7, dtype=np.float32)
    amps = rng.normal(0.0, ctype.wobble, size=orders.size) / np.sqrt(orders - 1.0)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=orders.size)
    harmonics = np.stack([orders, amps, phases], axis=1).astype(np.float32)
    return _Cell(cy=cy, cx=cx, a=a, b=b, angle=rng.uniform(0.0, np.pi), bend=rng.uniform(-ctype.bend, ctype.bend),
                 harmonics=harmonics, level=rng.uniform(0.0, 1.0))


def _place_cells(rng: np.random.Generator, ctype: CellType, n: int, size: int) -> list[_Cell]:
    """Cells in a few clusters, some as touching pairs (just divided), the rest spread."""
    centres = rng.uniform(0.0, size, size=(int(rng.integers(1, 5)), 2))
    spread = rng.uniform(0.08, 0.2) * size
    cells: list[_Cell] = []
    for _ in range(n):
        r = rng.random()
        if cells and r < 0.2:
            prev = cells[-1]
            mean_r = 0.5 * (ctype.radius[0] + ctype.radius[1])
            d = (0.5 * (prev.a + prev.b) + mean_r * 0.8) * rng.uniform(0.75, 1.0)
            phi = rng.uniform(0.0, 2.0 * np.pi)
            cy, cx = prev.cy + d * np.sin(phi), prev.cx + d * np.cos(phi)
        elif r < 0.65:
            cy, cx = centres[int(rng.integers(len(centres)))] + rng.normal(0.0, spread, size=2)
        else:
            cy, cx = rng.uniform(0.0, size, size=2)
        cells.append(_sample_cell(rng, ctype, float(np.clip(cy, -4, size + 4)), float(np.clip(cx, -4, size + 4))))
    return cells


def _background(rng: np.random.Generator, style: str, shape: tuple[int, int]) -> np.ndarray:
    """Float canvas: ``HxW`` for grey styles, ``HxWx3`` for brightfield."""
    if style == "phase":
        return rng.uniform(0.42, 0.55) + 0.02 * smooth_noise(rng, shape, 32)
    if style == "fluorescence":
        return rng.uniform(0.02, 0.07) + 0.01 * smooth_noise(rng, shape, 32)
    pink = np.array([0.93, 0.80, 0.87], dtype=np.float32) * rng.uniform(0.95, 1.03)
    stroma = smooth_noise(rng, shape, 12)[..., None]
    eosin = np.array([0.015, 0.07, 0.04], dtype=np.float32)
    return pink + eosin * stroma


def _cell_geometry(cell: _Cell, ctype: CellType, shape: tuple[int, int]):
    """Region, rotated coordinates and normalised radius ``t`` (1 on the boundary)."""
    half = cell.a * (1.0 + 3.0 * ctype.wobble) * 1.45 + 2.0
    frame = local_frame(cell.cy, cell.cx, half, cell.angle, shape)
    if frame is None:
        return None
    u, v = frame.u, frame.v
    if cell.bend:
        v = v - np.float32(cell.bend) * u * u
    su, sv = u / np.float32(cell.a), v / np.float32(cell.b)
    theta = np.arctan2(sv, su)
    radius = np.ones_like(theta)
    for order, amp, phase in cell.harmonics:
        radius += amp * np.cos(order * theta + phase)
    t = np.sqrt(su * su + sv * sv) / np.maximum(radius, 0.3)
    return frame.region, u, v, t


def _texture(ctype: CellType, u: np.ndarray, v: np.ndarray, t: np.ndarray, grain: np.ndarray,
             cell: _Cell) -> np.ndarray:
    """Per-pixel texture in about [-1, 1.5]: positive is brighter / more stained."""
    if ctype.texture == "striated":
        period = 2.5 + 1.5 * cell.level
        return 0.6 * np.sin(v * np.float32(2 * np.pi / period) + cell.angle) + 0.2 * grain
    if ctype.texture == "granular":
        granules = (grain > 1.0).astype(np.float32) * 1.2
        nucleus = ((u / cell.a + 0.15) ** 2 + (v / cell.b) ** 2 < 0.12).astype(np.float32)
        return granules + 0.2 * grain - 0.9 * nucleus
    return 0.3 * grain


def _draw_cell(canvas: np.ndarray, labels: np.ndarray, grain: np.ndarray, cell: _Cell, k: int,
               ctype: CellType, style: str, rng: np.random.Generator) -> None:
    """Paint cell ``k`` over whatever is under it and claim its pixels in ``labels``."""
    geom = _cell_geometry(cell, ctype, labels.shape)
    if geom is None:
        return
    region, u, v, t = geom
    inside = t <= 1.0
    if not inside.any():
        return
    profile = np.clip(1.0 - t * t, 0.0, 1.0)
    tex = _texture(ctype, u, v, t, grain[region], cell)
    patch = canvas[region]
    if style == "phase":
        base = float(np.median(patch))
        ring = (t > 1.0) & (t < 1.45)
        patch[ring] += (0.15 + 0.15 * cell.level) * (1.0 - (t[ring] - 1.0) / 0.45)
        value = base - (0.12 + 0.12 * cell.level) * (0.55 + 0.45 * profile) + 0.06 * tex
    elif style == "fluorescence":
        value = (0.3 + 0.6 * cell.level) * (0.35 + 0.65 * np.sqrt(profile)) * (1.0 + 0.25 * tex)
    else:
        hema = np.array([0.42, 0.28, 0.60], dtype=np.float32) * (0.8 + 0.35 * cell.level)
        shade = (0.8 + 0.2 * t) * (1.0 - 0.12 * tex)
        value = hema * shade[..., None]
    patch[inside] = value[inside]
    labels[region][inside] = k


def _finish(rng: np.random.Generator, canvas: np.ndarray, style: str) -> np.ndarray:
    """Illumination, optical blur, shot and read noise; returns uint8."""
    shape = canvas.shape[:2]
    illum = illumination(rng, shape, 0.35 if style == "fluorescence" else 0.25)
    img = canvas * (illum[..., None] if canvas.ndim == 3 else illum)
    sigma = rng.uniform(0.5, 1.0)
    img = ndimage.gaussian_filter(img, (sigma, sigma, 0) if img.ndim == 3 else sigma)
    photons = rng.uniform(40.0, 400.0)
    img = rng.poisson(np.clip(img, 0.0, None) * photons).astype(np.float32) / np.float32(photons)
    img += rng.normal(0.0, rng.uniform(0.005, 0.02), size=img.shape).astype(np.float32)
    return to_uint8(img)
