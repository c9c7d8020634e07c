"""An image's object scale and objects never depend on the images that share its batch.

A batch pads its images to the largest, and GroupNorm's statistics include the padding;
the detector therefore runs each size as its own pass. Checked on real BBBC038 images of
the three imaging kinds shipped with the demo (256 x 256 grey fluorescence, 256 x 320
colour, 320 x 320 grey bright-background), alone and in mixed batches, through the path
``cupre predict`` and validation take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cupre.config import DetectorConfig
from cupre.data.imageio import normalize, read_image
from cupre.detect.tiling import predict_at_object_scale
from cupre.models.detector import build_detector, same_size_groups
from tests.helpers import TINY_DETECTOR

NUCLEI = Path(__file__).resolve().parents[2] / "src" / "cupre" / "presets" / "nuclei" / "test"


def images_of_every_kind() -> list[torch.Tensor]:
    files = sorted(p for p in NUCLEI.glob("*.png") if not p.stem.endswith("_masks"))
    chosen = [next(p for p in files if p.name.startswith(kind)) for kind in ("fluo", "colour", "bright")]
    chosen += [p for p in files if p not in chosen][:3]  # a second image of some kinds: equal sizes batch together
    return [normalize(read_image(p)) for p in chosen]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The tests' detector, its classifier biased so that many detections score over the
    scale rule's 0.5: the looks then give factors other than 1 from the boxes they find."""
    torch.manual_seed(0)
    net = build_detector(DetectorConfig(**{**TINY_DETECTOR, "object_size": 20, "detections_per_img": 100}))
    with torch.no_grad():
        net.head.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-1.0, 1.0]))
    return net.eval()


def run(model, images, batch_size):
    found, factors = predict_at_object_scale(model, images, batch_size=batch_size)
    return found, factors


def test_equal_sizes_are_grouped_in_order():
    images = [torch.zeros(3, 8, 8), torch.zeros(3, 8, 9), torch.zeros(3, 8, 8)]
    assert same_size_groups(images) == [[0, 2], [1]]


def test_factors_and_objects_are_the_same_alone_and_in_mixed_batches(model):
    images = images_of_every_kind()
    assert len({tuple(i.shape[-2:]) for i in images}) == 3  # three sizes: batches mix them
    alone = [run(model, [image], 1) for image in images]
    alone_factors = [f for _, (f,) in alone]
    assert len(set(alone_factors)) > 1, "the test needs images whose looks give different factors"
    for order, batch_size in ((list(range(len(images))), 2), (list(reversed(range(len(images)))), 3),
                              (list(range(len(images))), len(images))):
        found, factors = run(model, [images[i] for i in order], batch_size)
        for i, objs, factor in zip(order, found, factors):
            (ref,), (ref_factor,) = alone[i]
            assert factor == ref_factor, f"image {i}: factor {factor} batched, {ref_factor} alone"
            assert len(objs) == len(ref), f"image {i}: {len(objs)} objects batched, {len(ref)} alone"
            np.testing.assert_allclose(objs.boxes, ref.boxes, atol=1e-2)
            np.testing.assert_allclose(objs.scores, ref.scores, atol=1e-4)
            assert [c.sum() for c in objs.crops] == pytest.approx([c.sum() for c in ref.crops], abs=2)
