"""Synthetic natural-image scenes: a small stand-in for COCO.

Ten classes of rotated, shaded, textured shapes (each class with a typical colour and
texture that vary per instance, and sometimes a random colour so that shape matters),
3-15 per image, on cluttered backgrounds (smooth colour noise, gradients, stripes,
unlabelled bars and blobs). Larger objects are drawn first; a later object occludes
an earlier one and the instance map keeps only visible parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from cupre.data.synth_common import (
    SynthImage,
    illumination,
    local_frame,
    smooth_noise,
    to_uint8,
)

Shape = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _polar(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.sqrt(x * x + y * y), np.arctan2(y, x)


def _ngon(n: int) -> Shape:
    def inside(x, y, p):
        rho, theta = _polar(x, y)
        sector = np.float32(2 * np.pi / n)
        return rho * np.cos(np.mod(theta, sector) - sector / 2) <= np.cos(np.pi / n)

    return inside


def _circle(x, y, p):
    return x * x + y * y <= 1.0


def _ellipse(x, y, p):
    return x * x + (y / (0.35 + 0.25 * p)) ** 2 <= 1.0


def _square(x, y, p):
    return np.maximum(np.abs(x), np.abs(y)) <= 0.75


def _star(x, y, p):
    rho, theta = _polar(x, y)
    g = np.abs(np.mod(theta * np.float32(5 / (2 * np.pi)), 1.0) - 0.5) * 2.0
    return rho <= 0.4 + 0.6 * (1.0 - g)


def _ring(x, y, p):
    r2 = x * x + y * y
    inner = 0.45 + 0.2 * p
    return (r2 <= 1.0) & (r2 >= inner * inner)


def _cross(x, y, p):
    w = 0.22 + 0.12 * p
    ax, ay = np.abs(x), np.abs(y)
    return ((ax <= w) & (ay <= 0.95)) | ((ay <= w) & (ax <= 0.95))


def _crescent(x, y, p):
    off = 0.35 + 0.25 * p
    return (x * x + y * y <= 1.0) & ((x - off) ** 2 + y * y > 0.8**2)


def _heart(x, y, p):
    hx, hy = 1.15 * x, -1.15 * y + 0.25
    q = hx * hx + hy * hy - 1.0
    return q * q * q - hx * hx * hy * hy * hy <= 0.0


@dataclass(frozen=True)
class ObjectClass:
    """One category: its shape (``inside(x, y, p)`` in the unit frame), typical RGB
    colour and texture name."""

    name: str
    inside: Shape
    colour: tuple[float, float, float]
    texture: str


CLASSES = (
    ObjectClass("circle", _circle, (0.85, 0.15, 0.12), "radial"),
    ObjectClass("square", _square, (0.15, 0.30, 0.85), "checker"),
    ObjectClass("triangle", _ngon(3), (0.20, 0.70, 0.20), "stripes"),
    ObjectClass("star", _star, (0.95, 0.85, 0.10), "solid"),
    ObjectClass("ellipse", _ellipse, (0.55, 0.20, 0.70), "noise"),
    ObjectClass("ring", _ring, (1.00, 0.55, 0.10), "bands"),
    ObjectClass("cross", _cross, (0.10, 0.80, 0.85), "dots"),
    ObjectClass("hexagon", _ngon(6), (0.55, 0.35, 0.15), "wood"),
    ObjectClass("crescent", _crescent, (0.95, 0.55, 0.70), "gradient"),
    ObjectClass("heart", _heart, (0.80, 0.10, 0.45), "solid"),
)
CATEGORIES = [{"id": i + 1, "name": c.name, "supercategory": "shape"} for i, c in enumerate(CLASSES)]


def _texture(name: str, x: np.ndarray, y: np.ndarray, grain: np.ndarray, freq: float) -> np.ndarray:
    """Mixing weight in [0, 1] between an object's primary and secondary colour."""
    if name == "radial":
        return np.clip(x * x + y * y, 0.0, 1.0)
    if name == "checker":
        return (np.sin(x * freq) * np.sin(y * freq) > 0).astype(np.float32)
    if name == "stripes":
        return (np.sin((x + 0.3 * y) * freq) > 0).astype(np.float32)
    if name == "bands":
        return 0.5 + 0.5 * np.sin(np.sqrt(x * x + y * y) * 2.0 * freq)
    if name == "dots":
        fx, fy = np.mod(x * freq / np.pi, 1.0) - 0.5, np.mod(y * freq / np.pi, 1.0) - 0.5
        return (fx * fx + fy * fy < 0.08).astype(np.float32)
    if name == "noise":
        return np.clip(0.5 + 0.35 * grain, 0.0, 1.0)
    if name == "wood":
        return 0.5 + 0.5 * np.sin(x * freq + 1.5 * grain)
    if name == "gradient":
        return np.clip(0.5 + 0.5 * x, 0.0, 1.0)
    return np.clip(0.1 * grain + 0.1, 0.0, 1.0)


def render(rng: np.random.Generator, *, size: int, index: int, seed: int) -> SynthImage:
    """Render one ``size x size`` RGB scene with 3-15 labelled objects."""
    shape = (size, size)
    canvas = _background(rng, shape)
    grain = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5) * np.float32(3.0)
    _clutter(rng, canvas, int(rng.integers(3, 13)))
    n = int(rng.integers(3, 16))
    radii = np.sort(rng.uniform(0.06, 0.2, size=n) * size)[::-1]
    labels = np.zeros(shape, dtype=np.int32)
    category_ids = []
    for k, radius in enumerate(radii, start=1):
        cls_index = int(rng.integers(len(CLASSES)))
        _draw_object(rng, canvas, labels, grain, CLASSES[cls_index], float(radius), k)
        category_ids.append(cls_index + 1)
    img = canvas * illumination(rng, shape, 0.3)[..., None]
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0))
    img += rng.normal(0.0, rng.uniform(0.005, 0.025), size=img.shape).astype(np.float32)
    return SynthImage(image=to_uint8(img), labels=labels, category_ids=category_ids, meta={})


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Float ``HxWx3``: coloured smooth noise, optionally mixed with a gradient or stripes."""
    h, w = shape
    base, other = rng.uniform(0.15, 0.85, size=(2, 3)).astype(np.float32)
    canvas = base + 0.12 * smooth_noise(rng, shape, int(rng.integers(12, 48)), channels=3)
    yy = np.arange(h, dtype=np.float32)[:, None] / h
    xx = np.arange(w, dtype=np.float32)[None, :] / w
    angle = rng.uniform(0.0, np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    mode = int(rng.integers(3))
    if mode == 1:
        weight = np.clip(ramp, 0.0, 1.0)
    elif mode == 2:
        weight = 0.6 * (np.sin(ramp * np.float32(2 * np.pi * rng.uniform(4, 20))) > 0)
    else:
        return canvas
    return canvas + (other - base) * weight[..., None].astype(np.float32)


def _clutter(rng: np.random.Generator, canvas: np.ndarray, n: int) -> None:
    """Unlabelled bars and blobs, the distractors of a natural scene."""
    h, w = canvas.shape[:2]
    for _ in range(n):
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0.0, np.pi)
        if rng.random() < 0.5:
            length, width = rng.uniform(0.1, 0.6) * w, rng.uniform(1.0, 4.0)
            frame = local_frame(cy, cx, length / 2 + width, angle, (h, w))
            if frame is not None:
                canvas[frame.region][(np.abs(frame.u) <= length / 2) & (np.abs(frame.v) <= width / 2)] = colour
            continue
        radius = rng.uniform(0.02, 0.08) * w
        frame = local_frame(cy, cx, radius * 1.6, angle, (h, w))
        if frame is None:
            continue
        rho, theta = _polar(frame.u / radius, frame.v / (radius * rng.uniform(0.5, 1.0)))
        wobble = 1.0 + 0.25 * np.sin(3 * theta + rng.uniform(0, 6.3)) * np.cos(2 * theta)
        canvas[frame.region][rho <= wobble] = colour


def _colours(rng: np.random.Generator, cls: ObjectClass) -> tuple[np.ndarray, np.ndarray]:
    """Primary colour (class-typical with jitter; sometimes random) and a secondary one."""
    if rng.random() < 0.15:
        primary = rng.uniform(0.0, 1.0, size=3)
    else:
        primary = np.clip(np.array(cls.colour) + rng.normal(0.0, 0.07, size=3), 0.0, 1.0)
    secondary = primary * rng.uniform(0.25, 0.6) if rng.random() < 0.5 else 0.4 * primary + 0.6
    return primary.astype(np.float32), secondary.astype(np.float32)


def _draw_object(rng: np.random.Generator, canvas: np.ndarray, labels: np.ndarray, grain: np.ndarray,
                 cls: ObjectClass, radius: float, k: int) -> None:
    """Paint object ``k`` of class ``cls`` (circumradius ``radius`` px) at a random place."""
    h, w = labels.shape
    cy, cx = rng.uniform(0.0, h), rng.uniform(0.0, w)
    angle, param, freq = rng.uniform(0.0, 2 * np.pi), rng.uniform(0.0, 1.0), rng.uniform(7.0, 14.0)
    primary, secondary = _colours(rng, cls)
    light = rng.normal(0.0, 1.0, size=2).astype(np.float32)
    light *= np.float32(0.25) / max(float(np.linalg.norm(light)), 1e-6)
    frame = local_frame(cy, cx, radius * 1.25 + 2.0, angle, (h, w))
    if frame is None:
        return
    x, y = frame.u / np.float32(radius), frame.v / np.float32(radius)
    inside = cls.inside(x, y, param)
    if not inside.any():
        return
    mix = _texture(cls.texture, x, y, grain[frame.region], freq)[..., None]
    shade = (1.0 + light[0] * x + light[1] * y)[..., None]
    value = (primary * (1.0 - mix) + secondary * mix) * shade
    canvas[frame.region][inside] = value[inside]
    labels[frame.region][inside] = k
