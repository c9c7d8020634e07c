"""BBBC038 / DSB2018 reader: the real stage1_train folder and small written layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cupre.data.bbbc038 import Bbbc038Dataset
from cupre.errors import CupreError, CupreWarning


def _write_sample(root: Path, name: str, image: np.ndarray, masks: list[np.ndarray]) -> None:
    (root / name / "images").mkdir(parents=True)
    (root / name / "masks").mkdir()
    Image.fromarray(image).save(root / name / "images" / f"{name}.png")
    for k, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / name / "masks" / f"m{k:02d}.png")


def _blob(h: int, w: int, y: int, x: int, r: int = 2) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[max(0, y - r) : y + r, max(0, x - r) : x + r] = True
    return m


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    root = tmp_path / "stage1_train"
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, (16, 20), dtype=np.uint8)
    rgba = rng.integers(0, 255, (12, 14, 4), dtype=np.uint8)
    _write_sample(root, "bbb", grey, [_blob(16, 20, 4, 4), _blob(16, 20, 10, 12, 3)])
    _write_sample(root, "aaa", rgba, [_blob(12, 14, 6, 6)])
    summary = [{"id": "aaa", "shape": [12, 14], "kind": "brightfield_color", "n": 1},
               {"id": "bbb", "shape": [16, 20], "kind": "fluo_gray", "n": 2}]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return root


def test_written_layout_reads_sorted_records_masks_and_kinds(layout: Path) -> None:
    ds = Bbbc038Dataset(layout)
    assert [r.extra["id"] for r in ds.records] == ["aaa", "bbb"]
    assert [r.image_id for r in ds.records] == [1, 2]
    assert [r.cell_type for r in ds.records] == ["brightfield_color", "fluo_gray"]
    raw = ds.read_raw(1)
    assert raw.masks.dtype == bool and raw.masks.shape == (2, 16, 20)
    assert np.array_equal(raw.masks[1], _blob(16, 20, 10, 12, 3))
    image, target = ds[0]  # RGBA image
    assert image.shape == (3, 12, 14)
    assert target["boxes"].tolist() == [[4.0, 4.0, 8.0, 8.0]]
    assert target["cell_type"] == "brightfield_color"


def test_explicit_summary_and_no_summary(layout: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"id": "aaa", "kind": "x"}]))
    assert [r.cell_type for r in Bbbc038Dataset(layout, summary=other).records] == ["x", None]
    (tmp_path / "summary.json").unlink()
    assert [r.cell_type for r in Bbbc038Dataset(layout).records] == [None, None]
    other.write_text("{not json")
    with pytest.raises(CupreError, match=r"other\.json: not valid JSON"):
        Bbbc038Dataset(layout, summary=other)


def test_empty_mask_png_is_skipped_with_warning(layout: Path) -> None:
    Image.fromarray(np.zeros((16, 20), dtype=np.uint8)).save(layout / "bbb" / "masks" / "m05.png")
    ds = Bbbc038Dataset(layout)
    with pytest.warns(CupreWarning, match=r"m05\.png: mask is empty"):
        assert ds.read_raw(1).masks.shape[0] == 2
    with pytest.raises(CupreError, match=r"m05\.png: mask is empty"):
        Bbbc038Dataset(layout, strict=True).read_raw(1)


def test_mask_of_other_size_is_skipped_with_warning(layout: Path) -> None:
    Image.fromarray(np.full((5, 5), 255, dtype=np.uint8)).save(layout / "bbb" / "masks" / "m07.png")
    with pytest.warns(CupreWarning, match=r"m07\.png: mask is 5x5 but its image is 16x20"):
        assert Bbbc038Dataset(layout).read_raw(1).masks.shape[0] == 2


def test_truncated_mask_or_image_is_one_line_error(layout: Path) -> None:
    mask = layout / "bbb" / "masks" / "m00.png"
    mask.write_bytes(mask.read_bytes()[:40])
    with pytest.raises(CupreError, match=r"m00\.png: cannot read mask"):
        Bbbc038Dataset(layout).read_raw(1)
    image = layout / "aaa" / "images" / "aaa.png"
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(CupreError, match=r"aaa\.png: cannot read image"):
        Bbbc038Dataset(layout)[0]


def test_folder_without_image_is_skipped_and_empty_root_is_error(layout: Path, tmp_path: Path) -> None:
    (layout / "ccc" / "masks").mkdir(parents=True)
    with pytest.warns(CupreWarning, match="no image in ccc/images/"):
        assert len(Bbbc038Dataset(layout)) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(CupreError, match="not a BBBC038 layout"):
        Bbbc038Dataset(tmp_path / "empty")


def test_real_stage1_train_counts_and_a_few_images(shared_data: Path) -> None:
    root = shared_data / "bbbc038" / "stage1_train"
    summary = {e["id"]: e for e in json.loads((shared_data / "bbbc038" / "summary.json").read_text())}
    ds = Bbbc038Dataset(root)
    assert len(ds) == 664
    assert sum(len(ds.mask_files(i)) for i in range(len(ds))) == 28986  # counted, not decoded
    assert all(r.cell_type == summary[r.extra["id"]]["kind"] for r in ds.records)
    # One image of each imaging kind: decoded masks match the summary's nucleus counts.
    picks = {}
    for i, rec in enumerate(ds.records):
        picks.setdefault(rec.cell_type, i)
    assert set(picks) == {"fluo_gray", "brightfield_color", "gray_brightbg"}
    for i in picks.values():
        rec = ds.records[i]
        image, target = ds[i]
        assert list(image.shape[1:]) == summary[rec.extra["id"]]["shape"]
        assert target["masks"].shape[0] == summary[rec.extra["id"]]["n"]
        assert (target["masks"].flatten(1).sum(1) > 0).all()
