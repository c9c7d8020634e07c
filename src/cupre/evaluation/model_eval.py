"""Run a detector over an annotated dataset at its object scale, as ``cupre predict`` does.

The scale rule is :func:`cupre.scale.detect`: a model with an ``object_size`` estimates
each image's factor from its own looks at the image (never from the annotations), so
validation and test figures are what a user without labels gets.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

from cupre.masks import crop_rle, masks_to_results
from cupre.scale import PROBE_FACTORS, detect, typical_size


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset, *, device: torch.device, batch_size: int = 2,
                    progress: bool = True, scale: str = "estimate",
                    probe_factors: Sequence[float] = PROBE_FACTORS) -> list[dict]:
    """COCO results (bbox + RLE segmentation + score) for every image of ``dataset``.

    Predicted label ``l`` is written as ``dataset.categories[l - 1]["id"]``. ``scale``:
    ``estimate`` (the model's own looks at ``probe_factors``, as ``cupre predict``) or
    ``labels`` (each image at its annotations' object size: the oracle, for benchmarks).
    """
    was_training = model.training
    model.eval()
    cat_ids = [c["id"] for c in dataset.categories]
    results: list[dict] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="predict", leave=False, dynamic_ncols=True,
                      disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = [image.to(device) for image, _ in items]
        sizes = [typical_size(target["boxes"]) for _, target in items] if scale == "labels" else None
        outputs, _ = detect(model, images, diameters=sizes, probe_factors=probe_factors)
        for (image, target), out in zip(items, outputs):
            labels = out["labels"].clamp(1, len(cat_ids)).cpu()
            box_local = "mask_crops" in out
            found = masks_to_results(
                image_id=target["image_id"],
                boxes=out["boxes"].float().cpu(),
                scores=out["scores"].float().cpu(),
                labels=labels,
                masks=None if box_local else out["masks"].cpu(),
                category_ids=cat_ids,
            )
            if box_local:  # RLE straight from each crop: no full-size mask is ever made
                height, width = image.shape[-2:]
                for res, crop, origin in zip(found, out["mask_crops"], out["mask_origins"].tolist()):
                    res["segmentation"] = crop_rle(crop.cpu().numpy(), origin, height, width)
            results += found
    model.train(was_training)
    return results
