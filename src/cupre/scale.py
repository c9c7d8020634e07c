"""The one object-scale rule, shared by training, evaluation and prediction.

Cells come at any pixel size: a 256 px fluorescence image may hold 12 px nuclei, a
1,388 px brightfield image 60 px ones. A detector whose ``object_size`` is set sees
every image rescaled by

    factor = object_size / typical object size of the image

with the typical size the median box side ``sqrt(w * h)`` of the image's objects:

* in fine-tuning, measured on the annotations (plus the stage's scale jitter);
* in evaluation and prediction, estimated by the model itself: a first pass at native
  pixels, the median side of its confident detections, then the final pass at the
  factor (skipped when the factor is within 15% of 1); a user who knows the size of
  the objects gives it instead (``cupre predict --object-size``).

Detections always come back in the original image's pixels. ``object_size = None``
(the COCO stage) means native pixels everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MIN_FACTOR, MAX_FACTOR = 0.25, 4.0
SNAP = math.log(1.15)  # factors within 15% of 1 run at native pixels (no second pass)
MIN_SCORE = 0.5  # detections that count for the estimate


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


def estimated_factor(object_size: float | None, boxes, scores, *, min_score: float = MIN_SCORE) -> float:
    """The factor from a native-pixel pass: its detections scoring at least ``min_score``."""
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
    run: Callable[[list[torch.Tensor], list[float] | None], list],
    images: Sequence[torch.Tensor],
    object_size: float | None,
    *,
    object_sizes: Sequence[float | None] | None = None,
    measure: Callable[[Any], tuple] = lambda out: (out["boxes"], out["scores"]),
) -> tuple[list, list[float]]:
    """The rule itself, for any way of running a model over images.

    Args:
        run: ``run(images, scales)`` -> one output per image in original pixels;
            ``scales`` None means native pixels.
        images: float ``3xHxW`` tensors in [0, 1].
        object_size: the model's object size (None: native pixels, one pass).
        object_sizes: the typical object size of each image when known (None: estimate).
        measure: an output's ``(boxes, scores)``, for the estimate.

    Returns:
        (the outputs, the factor each image ran at).
    """
    images = list(images)
    if object_size is None:
        return run(images, None), [1.0] * len(images)
    if object_sizes is not None:
        factors = [snap(scale_factor(object_size, s)) for s in object_sizes]
        return run(images, factors), factors
    outputs = run(images, None)
    factors = [estimated_factor(object_size, *measure(o)) for o in outputs]
    redo = [i for i, f in enumerate(factors) if f != 1.0]
    if redo:
        again = run([images[i] for i in redo], [factors[i] for i in redo])
        for i, out in zip(redo, again):
            outputs[i] = out
    return outputs, factors


@torch.no_grad()
def detect(model, images: Sequence[torch.Tensor], *,
           object_sizes: Sequence[float | None] | None = None) -> tuple[list[dict], list[float]]:
    """Detections on ``images`` at the model's object scale (eval mode).

    Args:
        model: a :class:`cupre.models.detector.CupreDetector` in eval mode.
        images: float ``3xHxW`` tensors in [0, 1].
        object_sizes: the typical object size of each image when known (None: estimate).

    Returns:
        (detections in original pixels, the factor each image ran at).
    """
    def run(batch: list[torch.Tensor], scales: list[float] | None) -> list[dict]:
        return model(batch) if scales is None else model(batch, scales=scales)

    return at_object_scale(run, images, getattr(model, "object_size", None), object_sizes=object_sizes)
