"""Run a detector over an annotated dataset as ``cupre predict`` does, for its AP.

The images go through :func:`cupre.detect.tiling.predict_at_object_scale`, the function
``cupre predict`` runs: the same tiles, the same object-scale rule (each image's factor
from the model's own looks at it, never from the annotations) and the same objects, so
validation and test figures are what a user without labels gets. What differs is the
protocol's: the model's own score threshold and detection cap (LIVECell reads up to 2,000
ranked detections), where ``cupre predict`` keeps detections above 0.5.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from cupre.detect.objects import objects_to_results
from cupre.detect.tiling import predict_at_object_scale
from cupre.scale import PROBE_FACTORS, typical_size


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset, *, device: torch.device, batch_size: int = 2,
                    progress: bool = True, scale: str = "estimate",
                    probe_factors: Sequence[float] = PROBE_FACTORS) -> list[dict]:
    """COCO results (bbox + RLE segmentation + score) for every image of ``dataset``.

    Predicted label ``l`` is written as ``dataset.categories[l - 1]["id"]`` (labels past
    the dataset's categories as the last one). ``scale``: ``estimate`` (the model's own
    looks at ``probe_factors``, as ``cupre predict``) or ``labels`` (each image at its
    annotations' object size: the oracle, for benchmarks).
    """
    was_training = model.training
    model.eval()
    cat_ids = [c["id"] for c in dataset.categories]
    results: list[dict] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="predict", leave=False, dynamic_ncols=True,
                      disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = [image.to(device) for image, _ in items]
        diameters = [typical_size(target["boxes"]) for _, target in items] if scale == "labels" else None
        found, _ = predict_at_object_scale(model, images, diameters=diameters, probe_factors=probe_factors,
                                           batch_size=batch_size, device=device)
        for (image, target), objs in zip(items, found):
            objs.labels = np.clip(objs.labels, 1, len(cat_ids))
            height, width = image.shape[-2:]
            results += objects_to_results(objs, np.arange(len(objs)), image_id=target["image_id"], height=height,
                                          width=width, category_ids=dict(enumerate(cat_ids, start=1)))
    model.train(was_training)
    return results
