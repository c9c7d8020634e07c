"""Prediction on an image already in memory (a napari layer, a notebook array).

The same steps as ``cupre predict`` on one file (:mod:`cupre.inference.predict`):
normalisation, the object-scale rule, tiling, the label image and the object table, but
from and to arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from cupre.data.imageio import normalize
from cupre.detect.tiling import predict_at_object_scale
from cupre.inference import writers
from cupre.inference.options import DEFAULTS, DetectionOptions
from cupre.inference.predict import DEFAULT_CATEGORIES, detection_limits


@torch.no_grad()
def segment_array(net, raw: np.ndarray, *, device: torch.device, categories: list[dict] | None = None,
                  options: DetectionOptions = DEFAULTS, precision: str = "fp32",
                  ) -> tuple[np.ndarray, list[dict], float]:
    """Segment one image array with a detector loaded by
    :func:`cupre.inference.predict.load_model`.

    Args:
        raw: ``HxW`` or ``HxWxC`` image, any dtype cupre reads.
        options: the detections asked for (score threshold, cap, diameter, tiling).

    Returns:
        (label image as ``cupre predict`` writes it, its object table rows
        (:data:`cupre.inference.writers.CSV_COLUMNS`), the object-scale factor used).
    """
    image = normalize(np.asarray(raw), grey_view=True)
    options = options.for_model(net)
    with detection_limits(net, options, precision):
        (objs,), (factor,) = predict_at_object_scale(net, [image], diameter=options.diameter,
                                                     tile_size=options.tile_size, overlap=options.tile_overlap,
                                                     batch_size=1, device=device)
    label, kept = writers.paint_labels(objs, *image.shape[-2:])
    names = writers.category_names(categories or DEFAULT_CATEGORIES)
    return label, writers.object_rows(label, kept, objs, raw, names), factor
