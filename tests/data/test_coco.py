"""COCO instances reader: real COCO files, written files with every segmentation kind,
and the bad inputs a user can hand it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cupre.data.coco import CocoDataset, decode_segmentation
from cupre.errors import CupreError, CupreWarning

H, W = 20, 24


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths, starting with a background run."""
    flat = mask.T.ravel().astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": [H, W]}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode(), "size": [H, W]}


EXPECTED = {
    "poly": _rect(2, 8, 3, 10),  # polygon (0-based pixel corners, COCO rasterisation)
    "urle": _rect(10, 15, 1, 6),
    "crle": _rect(4, 18, 14, 22),
    "crowd": _rect(0, 3, 18, 24),
}


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(folder / name)


def _coco_dict(file_names: list[str] = ("a.png", "b.png")) -> dict:
    images = [{"id": 10 + i, "file_name": n, "height": H, "width": W} for i, n in enumerate(file_names)]
    polygon = [[3, 2, 10, 2, 10, 8, 3, 8]]
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "segmentation": polygon, "bbox": [3, 2, 7, 6], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "segmentation": _uncompressed_rle(EXPECTED["urle"]), "iscrowd": 0},
        {"id": 3, "image_id": 10, "category_id": 7, "segmentation": _compressed_rle(EXPECTED["crle"]), "iscrowd": 0},
        {"id": 4, "image_id": 10, "category_id": 3, "segmentation": _uncompressed_rle(EXPECTED["crowd"]), "iscrowd": 1},
    ]
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]  # not sorted: order is kept
    return {"images": images, "annotations": anns, "categories": cats}


def _write(tmp_path: Path, data: dict, *, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco_file(tmp_path: Path) -> Path:
    _write_images(tmp_path / "images", ["a.png", "b.png"])  # found via <json dir>/images/
    return _write(tmp_path, _coco_dict())


def test_every_segmentation_kind_decodes_to_the_drawn_mask(coco_file: Path) -> None:
    ds = CocoDataset(coco_file)
    assert len(ds) == 2
    assert [c["id"] for c in ds.categories] == [7, 3]
    raw = ds.read_raw(0)
    assert raw.masks.dtype == bool and raw.masks.shape == (4, H, W)
    poly_mask = raw.masks[0]
    # COCO polygons rasterise the region inside the outline: compare with pycocotools itself.
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[3, 2, 10, 2, 10, 8, 3, 8]], H, W)))
    assert np.array_equal(poly_mask, reference.astype(bool)) and poly_mask.sum() > 30
    assert np.array_equal(raw.masks[1], EXPECTED["urle"])
    assert np.array_equal(raw.masks[2], EXPECTED["crle"])
    assert np.array_equal(raw.masks[3], EXPECTED["crowd"])
    assert raw.labels.tolist() == [1, 2, 1, 2]  # category 7 -> label 1, 3 -> label 2
    assert raw.iscrowd.tolist() == [False, False, False, True]


def test_getitem_drops_crowd_and_builds_targets(coco_file: Path) -> None:
    ds = CocoDataset(coco_file)
    image, target = ds[0]
    assert image.shape == (3, H, W) and image.is_floating_point()
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert target["masks"].shape == (3, H, W) and target["labels"].tolist() == [1, 2, 1]
    assert target["boxes"][1].tolist() == [1.0, 10.0, 6.0, 15.0]  # XYXY, exclusive max
    assert target["image_id"] == 10 and target["file"].endswith("a.png")
    assert target["ignore_masks"].shape == (1, H, W)  # the crowd region: neither object nor background
    assert np.array_equal(target["ignore_masks"][0].numpy().astype(bool), EXPECTED["crowd"])


def test_image_without_annotations_has_empty_targets(coco_file: Path) -> None:
    ds = CocoDataset(coco_file)
    raw = ds.read_raw(1)
    assert raw.masks.shape == (0, H, W)
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].numel() == 0


def test_class_agnostic_maps_everything_to_cell(coco_file: Path) -> None:
    ds = CocoDataset(coco_file, class_agnostic=True)
    assert [c["name"] for c in ds.categories] == ["cell"]
    assert [c["id"] for c in ds.source_categories] == [7, 3]
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 1, 1]


def test_real_coco_mini(shared_data: Path) -> None:
    ann = shared_data / "coco-mini" / "annotations" / "instances_val2017.json"
    ds = CocoDataset(ann)
    data = json.loads(ann.read_text())
    assert len(ds) == 100 and len(ds.categories) == 80
    assert ds.records[0].file.parent == (shared_data / "coco-mini" / "val2017").resolve()
    total = sum(len(r.extra["annotations"]) for r in ds.records)
    assert total == 712
    image, target = ds[0]
    assert image.shape[1:] == (ds.records[0].height, ds.records[0].width)
    first = [a for a in data["annotations"] if a["image_id"] == ds.records[0].image_id]
    cat_ids = [ds.categories[label - 1]["id"] for label in target["labels"].tolist()]
    assert cat_ids == [a["category_id"] for a in first]
    assert (target["masks"].flatten(1).sum(1) > 0).all()


def test_livecell_style_names_give_cell_types_and_dict_annotations(tmp_path: Path) -> None:
    names = ["A172_Phase_C7_1_00d00h00m_1.tif", "BV2_Phase_D4_2_01d12h00m_3.tif"]
    _write_images(tmp_path / "images", names)
    data = _coco_dict(names)
    data["annotations"] = {str(a["id"]): a for a in data["annotations"]}  # as LIVECell stores them
    ds = CocoDataset(_write(tmp_path, data))
    assert [r.cell_type for r in ds.records] == ["A172", "BV2"]
    assert len(ds.read_raw(0).labels) == 4
    assert [r.cell_type for r in CocoDataset(tmp_path / "ann.json", cell_type_from_name=False).records] == [None, None]


def test_cell_type_field_wins_and_plain_names_give_none(tmp_path: Path) -> None:
    _write_images(tmp_path, ["a.png", "b.png"])
    data = _coco_dict()
    data["images"][0]["cell_type"] = "HeLa"
    ds = CocoDataset(_write(tmp_path, data))
    assert [r.cell_type for r in ds.records] == ["HeLa", None]


def test_image_root_and_absolute_file_names(tmp_path: Path) -> None:
    _write_images(tmp_path / "elsewhere", ["a.png", "b.png"])
    data = _coco_dict()
    ann = _write(tmp_path, data)
    with pytest.raises(CupreError, match="none of the 2 image files found"):
        CocoDataset(ann)
    assert len(CocoDataset(ann, image_root=tmp_path / "elsewhere")) == 2
    data["images"][0]["file_name"] = str(tmp_path / "elsewhere" / "a.png")
    data["images"][1]["file_name"] = str(tmp_path / "elsewhere" / "b.png")
    assert len(CocoDataset(_write(tmp_path, data, name="abs.json"))) == 2


def test_coco_layout_annotations_folder(tmp_path: Path) -> None:
    _write_images(tmp_path / "val2017", ["a.png", "b.png"])
    (tmp_path / "annotations").mkdir()
    ds = CocoDataset(_write(tmp_path / "annotations", _coco_dict(), name="instances_val2017.json"))
    assert ds.records[0].file == (tmp_path / "val2017" / "a.png").resolve()


# --- bad input ---------------------------------------------------------------------


def test_malformed_json_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"images": [ {"id": 1,, }')
    with pytest.raises(CupreError, match=r"bad\.json: not valid JSON \(line 1"):
        CocoDataset(path)
    path.write_text('[1, 2]')
    with pytest.raises(CupreError, match="not a COCO instances file"):
        CocoDataset(path)
    with pytest.raises(CupreError, match="annotation file not found"):
        CocoDataset(tmp_path / "missing.json")


def test_missing_image_is_skipped_or_strict_error(tmp_path: Path) -> None:
    _write_images(tmp_path, ["a.png"])  # b.png is missing
    ann = _write(tmp_path, _coco_dict())
    with pytest.warns(CupreWarning, match=r"1 image file\(s\) not found \(first: b\.png\)"):
        ds = CocoDataset(ann)
    assert [r.image_id for r in ds.records] == [10]
    with pytest.raises(CupreError, match=r"ann\.json: 1 image file\(s\) not found"):
        CocoDataset(ann, strict=True)


def test_truncated_image_is_one_line_error(coco_file: Path) -> None:
    path = coco_file.parent / "images" / "a.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = CocoDataset(coco_file)
    with pytest.raises(CupreError, match=r"a\.png: cannot read image"):
        ds[0]


def test_image_size_differing_from_json_is_error(coco_file: Path) -> None:
    Image.fromarray(np.zeros((H + 1, W), dtype=np.uint8)).save(coco_file.parent / "images" / "a.png")
    with pytest.raises(CupreError, match=f"image is {H + 1}x{W} but ann.json says {H}x{W}"):
        CocoDataset(coco_file)[0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_id": 99}, "points at image id 99, which is not in 'images'"),
        ({"segmentation": [[1, 1, 5, 5]]}, "degenerate polygon"),
        ({"segmentation": [[1, 1, 5, 5, 9, 9]]}, "degenerate polygon"),  # collinear: zero area
        ({"bbox": [30, 2, 5, 5]}, r"bbox \[30, 2, 5, 5\] lies outside the 24x20 image"),
        ({"category_id": 5}, "unknown category_id 5"),
        ({"segmentation": {"counts": [3, 4], "size": [H, W]}}, "counts sum to 7"),
        ({"segmentation": {"counts": "abc", "size": [H + 1, W]}}, "differs from the image size"),
    ],
)
def test_bad_annotation_is_skipped_with_warning(coco_file: Path, change: dict, message: str) -> None:
    data = json.loads(coco_file.read_text())
    data["annotations"][0].update(change)
    coco_file.write_text(json.dumps(data))
    with pytest.warns(CupreWarning, match=message):
        ds = CocoDataset(coco_file)
    assert [a["id"] for a in ds.records[0].extra["annotations"]] == [2, 3, 4]
    assert ds.read_raw(0).masks.shape[0] == 3
    with pytest.raises(CupreError, match=f"annotation id 1: .*{message}"):
        CocoDataset(coco_file, strict=True)


def test_degenerate_polygon_part_is_dropped_but_annotation_kept(coco_file: Path) -> None:
    data = json.loads(coco_file.read_text())
    data["annotations"][0]["segmentation"].append([1, 1, 2, 2])
    coco_file.write_text(json.dumps(data))
    raw = CocoDataset(coco_file).read_raw(0)
    assert raw.masks.shape[0] == 4


def test_empty_decoded_mask_is_skipped_at_read_time(coco_file: Path) -> None:
    data = json.loads(coco_file.read_text())
    data["annotations"][1]["segmentation"] = {"counts": [H * W], "size": [H, W]}
    coco_file.write_text(json.dumps(data))
    ds = CocoDataset(coco_file)
    with pytest.warns(CupreWarning, match="annotation id 2: mask is empty"):
        assert ds.read_raw(0).masks.shape[0] == 3
    with pytest.raises(CupreError, match="mask is empty"):
        CocoDataset(coco_file, strict=True).read_raw(0)


def test_decode_segmentation_reports_garbage_as_value_error() -> None:
    with pytest.raises(ValueError, match="cannot decode segmentation"):
        decode_segmentation({"counts": "!!!garbage", "size": [H, W]}, H, W)


def test_files_that_are_odd_but_readable_are_named_in_a_warning(tmp_path):
    import json

    import tifffile
    from PIL import Image

    from cupre.data.formats import open_dataset

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    image = {"id": 1, "file_name": "a.png", "height": 20, "width": 20}
    (tmp_path / "noann.json").write_text(json.dumps({"images": [image], "categories": [{"id": 1, "name": "c"}]}))
    with pytest.warns(Warning, match="noann.json: has no 'annotations'"):
        assert len(open_dataset(tmp_path / "noann.json")[0][1]["masks"]) == 0
    seg = [[2, 2, 10, 2, 10, 10, 2, 10]]
    anns = [{"id": k, "image_id": 1, "category_id": 1, "segmentation": seg, "bbox": [2, 2, 8, 8], "iscrowd": 0,
             "area": 64} for k in (1, 2)]
    (tmp_path / "dup.json").write_text(json.dumps({"images": [image], "categories": [{"id": 1, "name": "c"}],
                                                   "annotations": anns}))
    with pytest.warns(Warning, match="dup.json: annotation id 2: the same segmentation as annotation id 1"):
        assert len(open_dataset(tmp_path / "dup.json")[0][1]["masks"]) == 1
    nuclei = tmp_path / "bb" / "x1"
    (nuclei / "images").mkdir(parents=True)
    (nuclei / "masks").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(nuclei / "images" / "x1.png")
    with pytest.warns(Warning, match="x1/masks: masks/ is empty"):
        open_dataset(tmp_path / "bb")
    (tmp_path / "li").mkdir()
    tifffile.imwrite(tmp_path / "li" / "im.tif", np.zeros((20, 20), np.uint16))
    tifffile.imwrite(tmp_path / "li" / "im_masks.tif", np.zeros((3, 20, 20), np.uint16), photometric="minisblack",
                     metadata={"axes": "ZYX"})
    with pytest.warns(Warning, match="im_masks.tif: label image has 3 planes; only the first is read"):
        open_dataset(tmp_path / "li")
