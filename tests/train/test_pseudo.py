"""Pseudo-labels: agreement across flips, kept and uncertain objects, a COCO file cupre reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_api

from cupre.config import DetectorConfig
from cupre.data.coco import CocoDataset
from cupre.data.synthetic import write_synthetic
from cupre.data.unlabeled import UnlabeledImages
from cupre.fileio import write_json_atomic
from cupre.models.detector import build_detector
from cupre.train.pseudo import Thresholds, agreement, counts, flip, pseudo_label, unflip
from tests.helpers import TINY_DETECTOR

H, W = 20, 30


def rle(y0: int, x0: int, h: int, w: int) -> dict:
    m = np.zeros((H, W), dtype=np.uint8, order="F")
    m[y0:y0 + h, x0:x0 + w] = 1
    return mask_api.encode(m)


def test_agreement_averages_scores_and_keeps_the_worst_views_overlap():
    plain = [rle(2, 2, 6, 6), rle(10, 20, 5, 5)]
    same = ([rle(2, 2, 6, 6), rle(10, 20, 5, 5)], np.array([0.8, 0.4]))
    shifted = ([rle(2, 5, 6, 6)], np.array([0.6]))  # overlaps the first object by 18/54, misses the second
    mean, worst = agreement(plain, np.array([0.9, 0.6]), [same, shifted])
    assert mean == pytest.approx([(0.9 + 0.8 + 0.6) / 3, (0.6 + 0.4 + 0.0) / 3])
    assert worst == pytest.approx([18 / 54, 0.0])
    mean, worst = agreement(plain, np.array([0.9, 0.6]), [([], np.zeros(0))])  # a view that found nothing
    assert worst.tolist() == [0.0, 0.0] and mean == pytest.approx([0.45, 0.3])


@pytest.mark.parametrize("view", ["hflip", "vflip"])
def test_unflip_puts_a_flipped_views_mask_back_where_it_was(view):
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[3:9, 4:15] = True
    mask[3, 4] = False  # asymmetric, so a missed flip shows
    seen = flip(mask, view)
    ys, xs = torch.nonzero(seen, as_tuple=True)
    y0, x0, y1, x1 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
    out = {"boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), "scores": torch.tensor([0.9]),
           "mask_origins": torch.tensor([[y0, x0]]), "mask_crops": [seen[y0:y1, x0:x1]]}
    back = unflip(out, view, H, W)
    assert back["boxes"].tolist() == [[4.0, 3.0, 15.0, 9.0]]
    (oy, ox), crop = back["mask_origins"][0].tolist(), back["mask_crops"][0]
    restored = torch.zeros(H, W, dtype=torch.bool)
    restored[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    assert torch.equal(restored, mask)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Pseudo-labels of a tiny model on four synthetic cell images, at thresholds 0."""
    tmp = tmp_path_factory.mktemp("pseudo")
    write_synthetic("cells", tmp / "cells", n_images=4, size=96, seed=0)
    torch.manual_seed(0)
    model = build_detector(DetectorConfig.from_dict({**TINY_DETECTOR, "box_score_thresh": 0.0}))
    images = UnlabeledImages(tmp / "cells" / "images")
    return tmp, model, images


def test_thresholds_decide_kept_and_uncertain_and_the_file_reads_back(labelled):
    tmp, model, images = labelled
    everything = pseudo_label(model, images, device=torch.device("cpu"), progress=False,
                              thresholds=Thresholds(keep_score=0.0, agree_iou=0.0, uncertain_score=0.0))
    found = counts(everything)
    assert found["images"] == 4 and found["kept"] > 0 and found["uncertain"] == 0
    assert all(img["file_name"].startswith("/") for img in everything["images"])
    unsure = pseudo_label(model, images, device=torch.device("cpu"), progress=False,
                          thresholds=Thresholds(keep_score=1.01, agree_iou=0.0, uncertain_score=0.0))
    assert counts(unsure) == {"images": 4, "kept": 0, "uncertain": found["kept"]}
    write_json_atomic(tmp / "unsure.json", unsure)
    ds = CocoDataset(tmp / "unsure.json")
    n_unsure = sum(len(ds[i][1]["ignore_masks"]) for i in range(len(ds)))
    assert n_unsure == found["kept"] and all(len(ds[i][1]["masks"]) == 0 for i in range(len(ds)))
