"""MoCo's two-view augmentation and the joint detection augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cupre.data.sample import masks_to_boxes
from cupre.data.transforms import DetectionTrainTransform, TwoViews, is_colour


def grey_image(h: int = 64, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, h, w, generator=g).expand(3, -1, -1).clone()


def test_is_colour():
    assert not is_colour(grey_image())
    assert is_colour(torch.rand(3, 8, 8))
    assert not is_colour(torch.rand(1, 8, 8))


def test_two_views_have_the_crop_size_and_differ():
    torch.manual_seed(0)
    image = torch.rand(3, 64, 48)
    v1, v2 = TwoViews(32)(image)
    for v in (v1, v2):
        assert v.shape == (3, 32, 32) and v.dtype == torch.float32
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert not torch.allclose(v1, v2)
    assert is_colour(v1) and is_colour(v2)


def test_grey_stays_grey():
    torch.manual_seed(1)
    views = TwoViews(32)
    for _ in range(5):
        for v in views(grey_image()):
            assert v.shape == (3, 32, 32)
            assert not is_colour(v)
            assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0


def coded_sample(h: int = 48, w: int = 40) -> tuple[torch.Tensor, dict]:
    """Three instances; the image inside instance i has value 0.2*(i+1), so image,
    masks and labels can be checked to move together."""
    masks = torch.zeros(3, h, w, dtype=torch.uint8)
    masks[0, 2:12, 3:20] = 1
    masks[1, 20:40, 25:38] = 1
    masks[2, 30:45, 2:10] = 1
    image = torch.zeros(3, h, w)
    for i in range(3):
        image[:, masks[i].bool()] = 0.2 * (i + 1)
    target = {
        "boxes": torch.from_numpy(masks_to_boxes(masks.numpy().astype(bool))),
        "labels": torch.tensor([1, 2, 3]),
        "masks": masks,
        "image_id": 7,
        "file": "a.png",
        "cell_type": "A172",
    }
    return image, target


def check_consistent(image: torch.Tensor, target: dict, min_area: int) -> None:
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape[1:] == image.shape[1:]
    assert len(target["labels"]) == len(target["boxes"]) == len(masks)
    assert torch.equal(target["boxes"], torch.from_numpy(masks_to_boxes(masks.numpy().astype(bool))))
    assert all(int(m.sum()) >= min_area for m in masks)
    for m, label in zip(masks, target["labels"]):
        values = image[:, m.bool()]
        assert torch.allclose(values, torch.full_like(values, 0.2 * int(label)))
    assert (target["image_id"], target["file"], target["cell_type"]) == (7, "a.png", "A172")


@pytest.mark.parametrize("seed", range(8))
def test_detection_transform_keeps_boxes_masks_labels_and_image_together(seed):
    torch.manual_seed(seed)
    transform = DetectionTrainTransform(crop_size=32, intensity=False, min_area=4)
    image, target = coded_sample()
    out_image, out = transform(image, target)
    assert out_image.shape == (3, 32, 32) and type(out_image) is torch.Tensor
    check_consistent(out_image, out, min_area=4)


def test_small_images_are_padded_to_the_crop():
    torch.manual_seed(0)
    image, target = coded_sample(20, 24)
    target["masks"] = target["masks"][:, :20, :24]
    target["boxes"] = torch.from_numpy(masks_to_boxes(target["masks"].numpy().astype(bool)))
    out_image, out = DetectionTrainTransform(crop_size=32, intensity=False)(image, target)
    assert out_image.shape == (3, 32, 32)
    assert float(out_image.sum()) == pytest.approx(float(image.sum()))  # zero padding only
    check_consistent(out_image, out, min_area=4)


def test_rot90_rotates_image_and_masks_together():
    image, target = coded_sample()
    transform = DetectionTrainTransform(flips=False, rot90=True, intensity=False)
    shapes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        shapes.add(tuple(out_image.shape))
        assert any(torch.equal(out["masks"], torch.rot90(target["masks"], k, dims=(1, 2))) for k in range(4))
        check_consistent(out_image, out, min_area=4)
    assert shapes == {(3, 48, 40), (3, 40, 48)}


def test_small_instances_are_dropped_with_their_labels():
    image, target = coded_sample()
    target["masks"][1] = 0
    target["masks"][1, 5, 30:33] = 1  # 3 pixels
    image[:, target["masks"][1].bool()] = 0.4
    identity = DetectionTrainTransform(flips=False, rot90=False, intensity=False, min_area=4)
    out_image, out = identity(image, target)
    assert torch.equal(out_image, image)
    assert out["labels"].tolist() == [1, 3]
    assert torch.equal(out["masks"], target["masks"][[0, 2]])
    check_consistent(out_image, out, min_area=4)


def test_intensity_changes_only_the_image():
    image, target = coded_sample()
    image = image + 0.1
    torch.manual_seed(3)
    transform = DetectionTrainTransform(flips=False, rot90=False, intensity=True)
    outs = [transform(image, target) for _ in range(4)]
    assert any(not torch.allclose(o[0], image) for o in outs)
    for out_image, out in outs:
        assert float(out_image.min()) >= 0.0 and float(out_image.max()) <= 1.0
        assert torch.equal(out["masks"], target["masks"])
        assert np.array_equal(out["boxes"].numpy(), target["boxes"].numpy())


@pytest.mark.parametrize("seed", range(6))
def test_ignore_regions_follow_the_image_as_its_objects_do(seed):
    """An ignore mask moves exactly as the same mask would as an object; it leaves as a box."""
    image, target = coded_sample()
    as_object = dict(target)
    ignore = dict(target, masks=target["masks"][:2], labels=target["labels"][:2], boxes=target["boxes"][:2],
                  ignore_masks=target["masks"][2:])
    transform = DetectionTrainTransform(crop_size=32, intensity=False, min_area=4)
    torch.manual_seed(seed)
    _, want = transform(image, as_object)
    torch.manual_seed(seed)
    _, got = transform(image, ignore)
    kept = want["labels"] == 3  # the third instance, where the crop keeps it
    assert torch.equal(got["ignore_boxes"], want["boxes"][kept])
    assert torch.equal(got["masks"], want["masks"][~kept]) and "ignore_masks" not in got


def test_strong_augmentation_changes_the_image_and_not_the_masks():
    image, target = coded_sample()
    weak = DetectionTrainTransform(flips=False, rot90=False, intensity=False)
    strong = DetectionTrainTransform(flips=False, rot90=False, intensity=False, strong=True)
    torch.manual_seed(0)
    outs = [strong(image, target) for _ in range(4)]
    assert any(not torch.allclose(o[0], weak(image, target)[0]) for o in outs)
    assert all(torch.equal(o[1]["masks"], target["masks"]) for o in outs)
    assert all(float(o[0].min()) >= 0 and float(o[0].max()) <= 1 for o in outs)


def test_without_background_the_crop_is_ignored_around_its_objects_unless_it_has_none():
    image, target = coded_sample()
    only_objects = DetectionTrainTransform(flips=False, rot90=False, intensity=False, background=False)
    _, out = only_objects(image, target)
    assert out["ignore_boxes"].tolist() == [[0.0, 0.0, 40.0, 48.0]] and len(out["boxes"]) == 3
    empty = dict(target, masks=target["masks"][:0], labels=target["labels"][:0], boxes=target["boxes"][:0])
    _, out = only_objects(image, empty)
    assert out["ignore_boxes"].shape == (0, 4)  # nothing to learn but background: it is kept


def test_acquisition_jitter_inverts_tints_and_greys_and_keeps_the_range():
    from cupre.data.transforms import AcquisitionJitter, grey, stain_jitter

    torch.manual_seed(0)
    image = grey_image()
    never = dict(p_grey=0, p_colour=0, p_invert=0, p_stain=0, p_hue=0, p_shuffle=0, p_gamma=0, p_blur=0, p_noise=0)
    plain = AcquisitionJitter(**never)
    plain.contrast = torch.nn.Identity()
    assert torch.allclose(plain(image), image)
    inverted = AcquisitionJitter(**{**never, "p_invert": 1.0})
    inverted.contrast = torch.nn.Identity()
    assert torch.allclose(inverted(image), 1 - image)
    tinted = AcquisitionJitter(**{**never, "p_colour": 1.0})(image)
    assert is_colour(tinted) and tinted.min() >= 0 and tinted.max() <= 1
    assert not is_colour(AcquisitionJitter(**{**never, "p_grey": 1.0})(tinted))
    assert torch.allclose(grey(image), image, atol=1e-6)
    stained = stain_jitter(tinted)
    assert stained.shape == tinted.shape and not torch.equal(stained, tinted)
    for _ in range(20):  # everything on: shapes and range hold
        out = AcquisitionJitter(**{k: 0.5 for k in never})(tinted)
        assert out.shape == tinted.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_acquisition_augmentation_pads_with_the_median_and_leaves_masks_alone():
    torch.manual_seed(0)
    image, target = coded_sample(20, 24)
    image = image + (image == 0) * 0.9  # a bright background: black padding would look like an object
    target["masks"] = target["masks"][:, :20, :24]
    target["boxes"] = torch.from_numpy(masks_to_boxes(target["masks"].numpy().astype(bool)))
    transform = DetectionTrainTransform(crop_size=32, acquisition=True, flips=False, rot90=False)
    transform.acquisition.p = {k: 0.0 for k in transform.acquisition.p}
    transform.acquisition.contrast = torch.nn.Identity()
    out_image, out = transform(image, target)
    assert out_image.shape == (3, 32, 32)
    assert float(out_image.min()) >= 0.2 - 1e-6  # padded with the image's median (0.9), never 0
    assert float((out_image[0] == 0.9).float().mean()) > 0.5
    check_consistent(out_image, out, min_area=4)
