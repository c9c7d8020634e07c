"""Format detection, ``dataset_to_coco`` and the ``cupre convert`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils

from cupre.cli import main as cli_main
from cupre.data.bbbc038 import Bbbc038Dataset
from cupre.data.coco import CocoDataset
from cupre.data.convert import dataset_to_coco
from cupre.data.formats import detect_format, open_dataset
from cupre.errors import CupreError, CupreWarning


def _bbbc(root: Path) -> Path:
    """Two BBBC038 images (3 nuclei) with a summary next to the folder."""
    rng = np.random.default_rng(0)
    for name, boxes in (("img1", [(1, 4, 2, 6), (6, 9, 6, 11)]), ("img2", [(0, 3, 0, 3)])):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(root / name / "images" / f"{name}.png")
        for k, (y0, y1, x0, x1) in enumerate(boxes):
            m = np.zeros((10, 12), dtype=np.uint8)
            m[y0:y1, x0:x1] = 255
            Image.fromarray(m).save(root / name / "masks" / f"{k}.png")
    summary = [{"id": "img1", "kind": "fluo_gray"}, {"id": "img2", "kind": "gray_brightbg"}]
    (root.parent / "summary.json").write_text(json.dumps(summary))
    return root


def _coco_with_crowd(tmp_path: Path) -> Path:
    Image.fromarray(np.zeros((8, 9), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 9), dtype=np.uint8)).save(tmp_path / "b.png")
    data = {
        "images": [{"id": 5, "file_name": "a.png", "height": 8, "width": 9},
                   {"id": 6, "file_name": "b.png", "height": 8, "width": 9}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 9, "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 2, "iscrowd": 1,
             "segmentation": {"counts": [0, 3, 69], "size": [8, 9]}},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}],
    }
    path = tmp_path / "in.json"
    path.write_text(json.dumps(data))
    return path


def test_detect_format_of_every_layout(tmp_path: Path) -> None:
    bbbc = _bbbc(tmp_path / "bbbc" / "train")
    assert detect_format(bbbc) == "bbbc038"
    assert detect_format(_coco_with_crowd(tmp_path)) == "coco"
    ctc = tmp_path / "ctc"
    (ctc / "01").mkdir(parents=True)
    (ctc / "01_GT" / "SEG").mkdir(parents=True)
    assert detect_format(ctc) == "ctc"
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    tifffile.imwrite(pairs / "x.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(pairs / "x_masks.tif", np.ones((4, 4), np.uint16))
    assert detect_format(pairs) == "label-images"
    assert len(open_dataset(pairs)) == 1
    (tmp_path / "nothing").mkdir()
    looked_for = r"nothing: no known dataset layout \(looked for coco .*bbbc038.*ctc.*label-images"
    with pytest.raises(CupreError, match=looked_for):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(CupreError, match="unknown format 'voc'; valid formats: coco, bbbc038, ctc, label-images"):
        open_dataset(pairs, format="voc")
    with pytest.raises(CupreError, match="dataset not found"):
        open_dataset(tmp_path / "missing")


def test_format_override(tmp_path: Path) -> None:
    bbbc = _bbbc(tmp_path / "bbbc" / "train")
    assert isinstance(open_dataset(bbbc, format="bbbc038"), Bbbc038Dataset)
    with pytest.raises(CupreError, match="not a Cell Tracking Challenge layout"):
        open_dataset(bbbc, format="ctc")


def test_dataset_to_coco_fields(tmp_path: Path) -> None:
    ds = CocoDataset(_coco_with_crowd(tmp_path))
    coco = dataset_to_coco(ds, relative_to=tmp_path)
    assert [c["id"] for c in coco["categories"]] == [9, 2]
    assert coco["images"][0] == {"id": 5, "file_name": "a.png", "height": 8, "width": 9}
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2
    poly, crowd = coco["annotations"]
    assert isinstance(poly["segmentation"]["counts"], str)
    mask = mask_utils.decode(poly["segmentation"])
    ys, xs = np.nonzero(mask)
    assert poly["area"] == int(mask.sum())
    assert poly["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert (poly["category_id"], poly["iscrowd"]) == (9, 0)
    assert (crowd["category_id"], crowd["iscrowd"], crowd["area"]) == (2, 1, 3)
    assert dataset_to_coco(ds)["images"][0]["file_name"] == str((tmp_path / "a.png").resolve())
    agnostic = dataset_to_coco(CocoDataset(tmp_path / "in.json", class_agnostic=True))
    assert agnostic["categories"] == [{"id": 1, "name": "cell"}]
    assert {a["category_id"] for a in agnostic["annotations"]} == {1}


def test_cli_convert_bbbc038_writes_cell_types_and_counts(tmp_path: Path, capsys) -> None:
    root = _bbbc(tmp_path / "bbbc" / "train")
    out = tmp_path / "out" / "bbbc.json"
    assert cli_main(["convert", str(root), "-o", str(out)]) == 0
    assert "2 images, 3 instances" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["bbbc.json"]  # no temporary left
    coco = json.loads(out.read_text())
    assert [im["cell_type"] for im in coco["images"]] == ["fluo_gray", "gray_brightbg"]
    back = CocoDataset(out)
    original = Bbbc038Dataset(root)
    for i in range(2):
        assert np.array_equal(back.read_raw(i).masks, original.read_raw(i).masks)
    assert [r.cell_type for r in back.records] == ["fluo_gray", "gray_brightbg"]


def test_cli_round_trip_of_real_coco_mini(shared_data: Path, tmp_path: Path, capsys) -> None:
    src = shared_data / "coco-mini" / "annotations" / "instances_val2017.json"
    out = tmp_path / "rt.json"
    assert cli_main(["convert", str(src), "-o", str(out)]) == 0
    assert "100 images, 712 instances" in capsys.readouterr().out
    a, b = CocoDataset(src), CocoDataset(out)
    assert a.categories == b.categories
    assert [r.image_id for r in a.records] == [r.image_id for r in b.records]
    total = 0
    for i in range(len(a)):
        ra, rb = a.read_raw(i), b.read_raw(i)
        assert np.array_equal(ra.masks, rb.masks) and np.array_equal(ra.labels, rb.labels)
        total += len(ra.labels)
    assert total == 712


def test_cli_convert_real_label_images_and_bbbc_subset(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pairs.json"
    assert cli_main(["convert", str(shared_data / "samples" / "label-images"), "-o", str(out)]) == 0
    assert "2 images, 190 instances" in capsys.readouterr().out
    ds = Bbbc038Dataset(shared_data / "bbbc038" / "stage1_train")
    coco = dataset_to_coco(ds.subset([1, 2, 3]))
    assert len(coco["annotations"]) == sum(len(ds.mask_files(i)) for i in range(3))
    assert {im["cell_type"] for im in coco["images"]} <= {"fluo_gray", "brightfield_color", "gray_brightbg"}


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert cli_main(["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cupre: error: ") and "nope: dataset not found" in err and "Traceback" not in err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert cli_main(["convert", str(bad), "-o", str(tmp_path / "x.json")]) == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err
    root = _bbbc(tmp_path / "bbbc" / "train")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(root / "img2" / "masks" / "empty.png")
    assert cli_main(["convert", str(root), "-o", str(tmp_path / "s.json"), "--strict"]) == 2
    assert "empty.png: mask is empty" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
    with pytest.warns(CupreWarning, match="empty.png: mask is empty"):
        assert cli_main(["convert", str(root), "-o", str(tmp_path / "s.json")]) == 0
    assert "2 images, 3 instances" in capsys.readouterr().out
