"""Image + ``_masks`` label image pairs: real StarDist samples and written uint8/16/32 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cupre.data.label_images import LabelImageDataset, label_image_to_masks
from cupre.errors import CupreError, CupreWarning


def _labels(dtype: type, ids: list[int], h: int = 18, w: int = 22) -> np.ndarray:
    lab = np.zeros((h, w), dtype=dtype)
    for k, value in enumerate(ids):
        lab[2 + 5 * k : 5 + 5 * k, 3 + k : 9 + k] = value
    return lab


def _image(h: int = 18, w: int = 22) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.fromarray(_image()).save(tmp_path / "a.png")
    Image.fromarray(_labels(np.uint8, [3, 200])).save(tmp_path / "a_masks.png")
    tifffile.imwrite(tmp_path / "b.tif", _image())
    tifffile.imwrite(tmp_path / "b_masks.tif", _labels(np.uint16, [7, 40000, 9]))
    tifffile.imwrite(tmp_path / "c.tiff", _image())
    tifffile.imwrite(tmp_path / "c_masks.tif", _labels(np.uint32, [4_000_000_000, 70000]))
    Image.fromarray(_image()).save(tmp_path / "unlabeled.png")  # no _masks: not a record
    return tmp_path


def test_uint8_uint16_uint32_labels(folder: Path) -> None:
    ds = LabelImageDataset(folder)
    assert [r.file.name for r in ds.records] == ["a.png", "b.tif", "c.tiff"]
    expected_ids = {0: [3, 200], 1: [7, 9, 40000], 2: [70000, 4_000_000_000]}
    sources = {0: _labels(np.uint8, [3, 200]), 1: _labels(np.uint16, [7, 40000, 9]),
               2: _labels(np.uint32, [4_000_000_000, 70000])}
    for i, ids in expected_ids.items():
        raw = ds.read_raw(i)
        assert raw.masks.shape == (len(ids), 18, 22) and raw.masks.dtype == bool
        for mask, value in zip(raw.masks, ids):  # instances in increasing id order
            assert np.array_equal(mask, sources[i] == value)
        assert raw.labels.tolist() == [1] * len(ids)
    image, target = ds[1]
    assert image.shape == (3, 18, 22) and target["masks"].shape == (3, 18, 22)


def test_real_stardist_samples(shared_data: Path) -> None:
    ds = LabelImageDataset(shared_data / "samples" / "label-images")
    assert [r.file.name for r in ds.records] == ["nuclei_img.tif", "nuclei_small.tif"]
    counts = []
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[1:] == target["masks"].shape[1:]
        counts.append(target["masks"].shape[0])
    assert counts == [125, 65]


def test_label_image_of_other_size_is_skipped_or_strict_error(folder: Path) -> None:
    Image.fromarray(_labels(np.uint8, [1], h=10)).save(folder / "a_masks.png")
    with pytest.warns(CupreWarning, match=r"a_masks\.png: label image is 10x22 but its image a\.png is 18x22"):
        ds = LabelImageDataset(folder)
    assert [r.file.name for r in ds.records] == ["b.tif", "c.tiff"]
    with pytest.raises(CupreError, match="label image is 10x22"):
        LabelImageDataset(folder, strict=True)


def test_label_without_image_warns(folder: Path) -> None:
    tifffile.imwrite(folder / "lonely_masks.tif", _labels(np.uint16, [1]))
    with pytest.warns(CupreWarning, match=r"lonely_masks\.tif: label image without a matching image"):
        assert len(LabelImageDataset(folder)) == 3


def test_folder_without_pairs_is_error(tmp_path: Path) -> None:
    with pytest.raises(CupreError, match=r"no label images found \(name_masks.tif or name_mask.tif"):
        LabelImageDataset(tmp_path)
    with pytest.raises(CupreError, match="label-image folder not found"):
        LabelImageDataset(tmp_path / "nope")


def test_label_image_to_masks_rejects_bad_arrays() -> None:
    with pytest.raises(CupreError, match=r"x\.tif: label image must be 2-D"):
        label_image_to_masks(np.zeros((4, 4, 3), dtype=np.uint8), "x.tif")
    with pytest.raises(CupreError, match="non-integer"):
        label_image_to_masks(np.full((4, 4), 0.5, dtype=np.float32), "x.tif")
    with pytest.raises(CupreError, match="negative"):
        label_image_to_masks(np.full((4, 4), -1, dtype=np.int16), "x.tif")
    full = label_image_to_masks(np.full((3, 3), 5, dtype=np.uint16), "x.tif")  # no background at all
    assert full.shape == (1, 3, 3) and full.all()
    assert label_image_to_masks(np.zeros((3, 3), dtype=np.uint8), "x.tif").shape == (0, 3, 3)


def test_cellpose_gui_masks_are_labels_and_name_masks_wins(tmp_path: Path) -> None:
    from cupre.data.label_images import find_label_pairs

    Image.fromarray(_image()).save(tmp_path / "d.png")
    Image.fromarray(_labels(np.uint16, [5, 6])).save(tmp_path / "d_cp_masks.png")  # the Cellpose GUI's name
    (tmp_path / "d_seg.npy").write_bytes(b"\x93NUMPY pickled: never read")
    tifffile.imwrite(tmp_path / "e_cp.tif", _image())  # an image whose own name ends in _cp
    tifffile.imwrite(tmp_path / "e_cp_masks.tif", _labels(np.uint16, [1]))
    Image.fromarray(_image()).save(tmp_path / "f.png")
    tifffile.imwrite(tmp_path / "f_masks.tif", _labels(np.uint16, [1, 2, 3]))
    Image.fromarray(_labels(np.uint16, [1])).save(tmp_path / "f_cp_masks.png")
    pairs, orphans = find_label_pairs(tmp_path)
    assert [(i.name, m.name) for i, m in pairs] == [("d.png", "d_cp_masks.png"), ("e_cp.tif", "e_cp_masks.tif"),
                                                    ("f.png", "f_masks.tif")]
    assert orphans == []
    data = LabelImageDataset(tmp_path)
    assert [len(data[i][1]["masks"]) for i in range(len(data))] == [2, 1, 3]
