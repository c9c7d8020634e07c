"""Shared pieces of the synthetic generators: the image container, local frames,
smooth noise and illumination (used by :mod:`cupre.data.synth_cells` and
:mod:`cupre.data.synth_objects`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

MIN_AREA = 10  # visible pixels below which an occluded instance is dropped


@dataclass
class SynthImage:
    """One rendered image and its instances, before encoding.

    Attributes:
        image: uint8 ``HxW`` (grey) or ``HxWx3`` (RGB).
        labels: int32 ``HxW`` instance map; 0 is background, ``k`` is instance ``k``
            (later instances overwrite earlier ones, so this is the visible part).
        category_ids: int ``K``; ``category_ids[k-1]`` is the COCO category of instance ``k``.
        meta: extra fields stored in the COCO ``images`` entry (``cell_type``, ``style``).
    """

    image: np.ndarray
    labels: np.ndarray
    category_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Frame:
    """The clipped bounding-box region around one object, in object coordinates.

    Attributes:
        region: ``(slice_y, slice_x)`` into the image.
        u, v: float32 ``hxw`` coordinates rotated into the object's frame (``u`` along
            its major axis), in pixels from its centre.
    """

    region: tuple[slice, slice]
    u: np.ndarray
    v: np.ndarray


def local_frame(cy: float, cx: float, half: float, angle: float, shape: tuple[int, int]) -> Frame | None:
    """The box ``[cy-half, cy+half] x [cx-half, cx+half]`` clipped to the image, with
    rotated coordinates; ``None`` when the box lies outside the image."""
    h, w = shape
    y0, y1 = max(0, int(np.floor(cy - half))), min(h, int(np.ceil(cy + half)) + 1)
    x0, x1 = max(0, int(np.floor(cx - half))), min(w, int(np.ceil(cx + half)) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return Frame(region=(slice(y0, y1), slice(x0, x1)), u=dx * c + dy * s, v=dy * c - dx * s)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int, channels: int = 0) -> np.ndarray:
    """Smooth random field ``HxW`` (or ``HxWxC``), roughly unit variance, with features
    about ``cell`` pixels wide (bicubic upsampling of a coarse Gaussian grid)."""
    h, w = shape
    gh, gw = h // cell + 2, w // cell + 2
    planes = []
    for _ in range(max(1, channels)):
        coarse = rng.standard_normal((gh, gw)).astype(np.float32)
        img = Image.fromarray(coarse).resize((gw * cell, gh * cell), Image.BICUBIC)
        planes.append(np.asarray(img)[:h, :w])
    out = np.stack(planes, axis=-1) if channels else planes[0]
    return out.astype(np.float32, copy=False)


def illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """Uneven illumination ``HxW``: a random linear gradient times a vignette, mean ~1."""
    h, w = shape
    yy = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, :]
    gy, gx = rng.uniform(-strength, strength, size=2)
    vig = rng.uniform(0.0, strength)
    cy, cx = rng.uniform(-0.2, 0.2, size=2)
    field_ = 1.0 + gy * yy + gx * xx - vig * 2.0 * ((yy - cy) ** 2 + (xx - cx) ** 2)
    return field_.astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (clipped, rounded)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
