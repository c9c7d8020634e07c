"""Synthetic cells / objects: determinism, exact masks, boxes, cell types, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cupre import cli
from cupre.data.synthetic import MIN_AREA, render_image, write_synthetic
from cupre.errors import CupreError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _load(json_path: Path) -> dict:
    return json.loads(json_path.read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _masks_by_image(coco: dict) -> dict[int, list[tuple[dict, np.ndarray]]]:
    out: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        out[ann["image_id"]].append((ann, mask_utils.decode(ann["segmentation"]).astype(bool)))
    return out


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return write_synthetic("cells", tmp_path_factory.mktemp("cells"), n_images=9, size=128, seed=3)


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> Path:
    return write_synthetic("objects", tmp_path_factory.mktemp("objects"), n_images=10, size=96, seed=5)


@pytest.mark.parametrize("kind", ["cells", "objects"])
def test_same_seed_same_bytes_other_seed_differs(tmp_path, kind):
    a = write_synthetic(kind, tmp_path / "a", n_images=3, size=64, seed=7).parent
    b = write_synthetic(kind, tmp_path / "b", n_images=3, size=64, seed=7).parent
    c = write_synthetic(kind, tmp_path / "c", n_images=3, size=64, seed=8).parent
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert set(fa) == {"annotations.json", "images/000001.png", "images/000002.png", "images/000003.png"}
    assert fa == fb
    assert all(fa[k] != fc[k] for k in fa)


def test_coco_structure(cells):
    coco = _load(cells)
    assert coco["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]
    for im in coco["images"]:
        path = cells.parent / im["file_name"]
        assert im["file_name"].startswith("images/") and path.is_file()
        assert Image.open(path).size == (im["width"], im["height"]) == (128, 128)
        assert im["cell_type"] in ("round", "elongated", "large-irregular")
    ids = [a["id"] for a in coco["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    for ann in coco["annotations"]:
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["segmentation"]["size"] == [128, 128]


@pytest.mark.parametrize("which", ["cells", "objects"])
def test_masks_disjoint_boxes_and_areas_match(which, request):
    json_path = request.getfixturevalue(which)
    coco = _load(json_path)
    for image_id, anns in _masks_by_image(coco).items():
        assert anns, f"image {image_id} has no instances"
        stack = np.stack([m for _, m in anns])
        assert stack.sum(axis=0).max() <= 1, "instance masks overlap"
        for ann, m in anns:
            ys, xs = np.nonzero(m)
            assert m.sum() == ann["area"] >= MIN_AREA
            x0, y0 = xs.min(), ys.min()
            assert ann["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]


@pytest.mark.parametrize("which,kind,size,seed", [("cells", "cells", 128, 3), ("objects", "objects", 96, 5)])
def test_rle_matches_rendered_instance_map(which, kind, size, seed, request):
    """Written masks are exactly the visible parts in the generator's instance map."""
    coco = _load(request.getfixturevalue(which))
    per_image = _masks_by_image(coco)
    for image_id in (1, 2):
        sample = render_image(kind, index=image_id, size=size, seed=seed)
        decoded = per_image[image_id]
        ks = [k for k in range(1, len(sample.category_ids) + 1) if (sample.labels == k).sum() >= MIN_AREA]
        assert len(ks) == len(decoded)
        for k, (ann, m) in zip(ks, decoded):
            np.testing.assert_array_equal(m, sample.labels == k)
            assert ann["category_id"] == sample.category_ids[k - 1]
        written = np.asarray(Image.open(json_path_image(request.getfixturevalue(which), image_id)))
        np.testing.assert_array_equal(written, sample.image)


def json_path_image(json_path: Path, image_id: int) -> Path:
    return json_path.parent / "images" / f"{image_id:06d}.png"


def test_cells_are_visible_where_the_masks_are(cells):
    """Each cell differs clearly from the band of pixels just outside it (the drawn
    content is where the masks say it is)."""
    from scipy import ndimage

    coco = _load(cells)
    for im, anns in zip(coco["images"], _masks_by_image(coco).values()):
        img = np.asarray(Image.open(cells.parent / im["file_name"]).convert("L"), dtype=np.float32)
        fg = np.any(np.stack([m for _, m in anns]), axis=0)
        contrast = []
        for _, m in anns:
            band = ndimage.binary_dilation(m, iterations=3) & ~fg
            if band.sum() >= 10:
                contrast.append(abs(img[m].mean() - img[band].mean()))
        assert np.median(contrast) > 20, (im, np.median(contrast))


def test_cell_types_differ_in_size_and_count_is_realistic(tmp_path):
    json_path = write_synthetic("cells", tmp_path, n_images=6, size=256, seed=0)
    coco = _load(json_path)
    types = {im["id"]: im["cell_type"] for im in coco["images"]}
    assert len(set(types.values())) == 3
    areas: dict[str, list[int]] = {}
    counts: dict[int, int] = {}
    for ann in coco["annotations"]:
        areas.setdefault(types[ann["image_id"]], []).append(ann["area"])
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    mean = {t: float(np.mean(a)) for t, a in areas.items()}
    assert mean["round"] * 1.3 < mean["elongated"]
    assert mean["elongated"] * 1.5 < mean["large-irregular"]
    assert all(8 <= c <= 70 for c in counts.values()), counts
    styles = {im["style"] for im in coco["images"]}
    assert len(styles) >= 2
    modes = {Image.open(json_path.parent / im["file_name"]).mode for im in coco["images"]}
    assert modes <= {"L", "RGB"}


def test_touching_or_overlapping_cells_occur(cells):
    """Some instances share a boundary (touching/occluded), as in dense cultures."""
    from scipy import ndimage

    touching = 0
    for anns in _masks_by_image(_load(cells)).values():
        label = np.zeros(anns[0][1].shape, dtype=np.int32)
        for k, (_, m) in enumerate(anns, start=1):
            label[m] = k
        for k in range(1, len(anns) + 1):
            ring = ndimage.binary_dilation(label == k) & (label != k) & (label > 0)
            touching += int(ring.any())
    assert touching >= 5


def test_objects_have_many_categories(objects):
    coco = _load(objects)
    assert len(coco["categories"]) >= 8
    assert len({c["name"] for c in coco["categories"]}) == len(coco["categories"])
    used = {a["category_id"] for a in coco["annotations"]}
    assert len(used) >= 8
    per_image = _masks_by_image(coco)
    assert all(1 <= len(v) <= 15 for v in per_image.values())
    assert "cell_type" not in coco["images"][0]
    assert Image.open(objects.parent / coco["images"][0]["file_name"]).mode == "RGB"


def test_bad_arguments(tmp_path):
    with pytest.raises(CupreError):
        write_synthetic("dogs", tmp_path, n_images=1)
    with pytest.raises(CupreError):
        write_synthetic("cells", tmp_path, n_images=0)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "synth"
    assert cli.main(["synth", "cells", "-o", str(out), "--n", "2", "--size", "64", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "2 images" in printed and str(out / "annotations.json") in printed
    assert len(_load(out / "annotations.json")["images"]) == 2
    assert cli.main(["synth", "objects", "-o", str(out), "--n", "1", "--size", "64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["synth", "objects", "-o", str(out), "--n", "1", "--size", "64", "--overwrite"]) == 0
    coco = _load(out / "annotations.json")
    assert len(coco["images"]) == 1 and len(coco["categories"]) >= 8
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000001.png"]
