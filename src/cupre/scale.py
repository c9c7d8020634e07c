"""The one object-scale rule, shared by training, evaluation and prediction.

Cells come at any pixel size: a 256 px fluorescence image may hold 12 px nuclei, a
1,388 px brightfield image 60 px ones. A detector whose ``object_size`` is set sees
every image rescaled by

    factor = object_size / typical object size of the image

with the typical size the median box side ``sqrt(w * h)`` of the image's objects:

* in fine-tuning, measured on the annotations (plus the stage's scale jitter);
* in evaluation and prediction, estimated by the model itself: a first look at the
  image at three factors (``PROBE_FACTORS``: native pixels, half and double), the one
  whose confident detections carry the most score (summed over the same central window
  of the image, ``PROBE_WINDOW``) gives the median side of its confident detections,
  then the final pass at the factor (skipped when the factor is within 15% of a look
  that already covered the whole image); a user who knows the size of the objects
  gives it instead (``cupre predict --diameter``).

Why three looks: a weakly trained model finds objects near its training size only, so
one native-pixel look at an image of 50 px nuclei, for a model trained at 20 px, finds
nothing confident and the image was never rescaled. At half size the same nuclei
measure 25 px and are found.

Detections always come back in the original image's pixels. ``object_size = None``
(the COCO stage) means native pixels everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

MIN_FACTOR, MAX_FACTOR = 0.25, 4.0
SNAP = math.log(1.15)  # factors within 15% of 1 run at native pixels (no second pass)
MIN_SCORE = 0.5  # detections that count for the estimate
PROBE_FACTORS = (1.0, 0.5, 2.0)  # the first looks; on equal score mass the earliest wins
PROBE_WINDOW = 512  # px: the score mass is summed over the image's central window of this side at most,
# and looks above 1x see only that window (the look at 2x costs at most 4x a 512 px window)
MIN_LOOK_SIDE = 64  # px: a look other than native is left out where it would feed the model a smaller side
# (the deepest maps of a tinier input hold one value per channel, which GroupNorm refuses)


def typical_size(boxes: torch.Tensor | np.ndarray) -> float | None:
    """Median ``sqrt(w * h)`` of ``Nx4`` XYXY boxes (None without a box of positive area)."""
    return median_side(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))


def median_side(b: torch.Tensor) -> Optional[float]:
    """:func:`typical_size` of a float32 ``Nx4`` tensor (scriptable, as are
    :func:`scale_factor` and :func:`snap`: the TorchScript export runs the same rule)."""
    sides = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()
    sides = sides[sides > 0]
    if sides.shape[0] == 0:
        return None
    return float(sides.median())


def scale_factor(object_size: Optional[float], measured: Optional[float], low: float = MIN_FACTOR,
                 high: float = MAX_FACTOR) -> float:
    """``object_size / measured``, clamped to [1/4, 4]; 1 when either is unknown."""
    if object_size is None or measured is None:
        return 1.0
    if measured <= 0:
        return 1.0
    return float(min(high, max(low, object_size / measured)))


def snap(factor: float, tolerance: float = SNAP) -> float:
    """1.0 for factors close to it (within 15%), else the factor."""
    return 1.0 if abs(math.log(factor)) <= tolerance else factor


def central_window(height: int, width: int, side: int = PROBE_WINDOW) -> Tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` of the central ``side x side`` window (the whole image when
    smaller) in which the looks' score masses are compared."""
    h, w = min(height, side), min(width, side)
    y0, x0 = (height - h) // 2, (width - w) // 2
    return y0, x0, y0 + h, x0 + w


def score_mass(boxes: torch.Tensor, scores: torch.Tensor, window: Tuple[int, int, int, int],
               min_score: float = MIN_SCORE) -> float:
    """Summed score of the detections scoring at least ``min_score`` whose box centre lies
    in ``window`` (``Nx4`` XYXY boxes in the image's pixels)."""
    y0, x0, y1, x1 = window
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1) & (scores >= min_score)
    return float(scores[inside].sum())


def look_fits(window: Tuple[int, int, int, int], factor: float, min_side: int = MIN_LOOK_SIDE) -> bool:
    """Whether ``window`` (``y0, x0, y1, x1``) at ``factor`` keeps a side of ``min_side`` px."""
    return min(window[2] - window[0], window[3] - window[1]) * factor >= min_side


def reusable_look(factor: float, looks: List[float], tolerance: float = SNAP) -> int:
    """Index of the look (a factor whose pass covered the whole image) within 15% of
    ``factor``, or -1: the final pass is then that look's, not a new one."""
    for i in range(len(looks)):
        if abs(math.log(factor / looks[i])) <= tolerance:
            return i
    return -1


def estimated_factor(object_size: float | None, boxes, scores, *, min_score: float = MIN_SCORE) -> float:
    """The factor from one look's detections (in the image's pixels) scoring at least ``min_score``."""
    keep = torch.as_tensor(scores) >= min_score
    return snap(scale_factor(object_size, typical_size(torch.as_tensor(boxes)[keep])))


def resize_image(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``CxHxW`` float image resized by ``factor`` (bilinear, antialiased when shrinking)."""
    if factor == 1.0:
        return image
    size = [max(1, round(s * factor)) for s in image.shape[-2:]]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                         antialias=factor < 1.0)[0]


def at_object_scale(
    run: Callable[[list, list[float] | None], list],
    images: Sequence[Any],
    object_size: float | None,
    *,
    diameters: Sequence[float | None] | None = None,
    measure: Callable[[Any], tuple] = lambda out: (out["boxes"], out["scores"]),
    size: Callable[[Any], tuple[int, int]] = lambda image: tuple(image.shape[-2:]),
    crop: Callable[[Any, tuple[int, int, int, int]], Any] | None = lambda image, w: image[..., w[0]:w[2], w[1]:w[3]],
    probe_factors: Sequence[float] = PROBE_FACTORS,
) -> tuple[list, list[float]]:
    """The rule itself, for any way of running a model over images.

    Args:
        run: ``run(images, scales)`` -> one output per image in its own pixels;
            ``scales`` None means native pixels.
        images: float ``3xHxW`` tensors in [0, 1] (or anything ``size`` and ``crop`` read).
        object_size: the model's object size (None: native pixels, one pass).
        diameters: the typical object diameter of each image when known (None: estimate).
        measure: an output's ``(boxes, scores)``, for the estimate.
        size: an image's ``(height, width)``.
        crop: ``crop(image, (y0, x0, y1, x1))``, the central window for the looks above
            1x; None where images cannot be cropped (those looks are then left out for
            images larger than the window).
        probe_factors: the first looks' factors, native pixels first.

    Returns:
        (the outputs, the factor each image ran at).
    """
    images = list(images)
    if object_size is None:
        return run(images, None), [1.0] * len(images)
    if diameters is not None:
        factors = [snap(scale_factor(object_size, d)) for d in diameters]
        return run(images, factors), factors
    windows = [central_window(*size(image)) for image in images]
    whole = [w == (0, 0, *size(image)) for w, image in zip(windows, images)]
    looks: list[dict[float, Any]] = [{} for _ in images]  # factor -> output covering the whole image
    best: list[tuple[float, Any, Any]] = [(-1.0, None, None)] * len(images)  # (mass, boxes, scores)
    for p in probe_factors:
        ids = [i for i in range(len(images)) if (p <= 1.0 or whole[i] or crop is not None)
               and (p == 1.0 or look_fits(windows[i] if p > 1.0 else (0, 0, *size(images[i])), p))]
        cut = [p > 1.0 and not whole[i] for i in ids]
        batch = [crop(images[i], windows[i]) if c else images[i] for i, c in zip(ids, cut)]
        if not batch:
            continue
        outputs = run(batch, None if p == 1.0 else [p] * len(batch))
        for i, c, out in zip(ids, cut, outputs):
            boxes, scores = measure(out)
            boxes, scores = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.as_tensor(scores)
            if c:  # the window's pixels -> the image's
                y0, x0 = windows[i][:2]
                boxes = boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
            else:
                looks[i][p] = out
            mass = score_mass(boxes, scores, windows[i])
            if mass > best[i][0]:
                best[i] = (mass, boxes, scores)
    factors, outputs, redo = [], [], []
    for i in range(len(images)):
        _, boxes, scores = best[i]
        f = 1.0 if boxes is None else estimated_factor(object_size, boxes, scores)
        done = list(looks[i])
        k = reusable_look(f, done)
        if k >= 0:
            f = done[k]
        else:
            redo.append(i)
        factors.append(f)
        outputs.append(looks[i][f] if k >= 0 else None)
    if redo:
        again = run([images[i] for i in redo], [factors[i] for i in redo])
        for i, out in zip(redo, again):
            outputs[i] = out
    return outputs, factors


@torch.no_grad()
def detect(model, images: Sequence[torch.Tensor], *, diameters: Sequence[float | None] | None = None,
           probe_factors: Sequence[float] = PROBE_FACTORS) -> tuple[list[dict], list[float]]:
    """Detections on ``images`` at the model's object scale (eval mode).

    Args:
        model: a :class:`cupre.models.detector.CupreDetector` in eval mode.
        images: float ``3xHxW`` tensors in [0, 1].
        diameters: the typical object diameter of each image when known (None: estimate).
        probe_factors: the first looks (``(1.0,)``: one native look, the rule before three).

    Returns:
        (detections in original pixels, the factor each image ran at).
    """
    def run(batch: list[torch.Tensor], scales: list[float] | None) -> list[dict]:
        return model(batch) if scales is None else model(batch, scales=scales)

    return at_object_scale(run, images, getattr(model, "object_size", None), diameters=diameters,
                           probe_factors=probe_factors)
