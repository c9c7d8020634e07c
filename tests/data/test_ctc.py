"""Cell Tracking Challenge reader on a small dataset written in the real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cupre.data.ctc import CtcDataset
from cupre.errors import CupreError, CupreWarning

H, W = 16, 18


def _frame(t: int) -> np.ndarray:
    return np.full((H, W), 100 + t, dtype=np.uint16) + np.arange(W, dtype=np.uint16)


def _seg(t: int, n: int) -> np.ndarray:
    lab = np.zeros((H, W), dtype=np.uint16)
    for k in range(n):
        lab[1 + 3 * k : 3 + 3 * k, 2 + t % 3 : 6 + t % 3] = 10 * (k + 1)
    return lab


@pytest.fixture
def ctc(tmp_path: Path) -> Path:
    root = tmp_path / "Fluo-N2DH-TEST"
    for d in ("01", "01_GT/SEG", "01_GT/TRA", "01_ST/SEG", "02", "02_GT/SEG", "03", "03_GT/SEG"):
        (root / d).mkdir(parents=True)
    for t in range(4):  # sequence 01: 3-digit frames; GT on frame 1, ST on all
        tifffile.imwrite(root / "01" / f"t{t:03d}.tif", _frame(t))
        tifffile.imwrite(root / "01_ST" / "SEG" / f"man_seg{t:03d}.tif", _seg(t, 2))
    tifffile.imwrite(root / "01_GT" / "SEG" / "man_seg001.tif", _seg(1, 3))
    tifffile.imwrite(root / "01_GT" / "TRA" / "man_track001.tif", _seg(1, 3))
    for t in range(2):  # sequence 02: 4-digit frames, GT on frame 1
        tifffile.imwrite(root / "02" / f"t{t:04d}.tif", _frame(t))
    tifffile.imwrite(root / "02_GT" / "SEG" / "man_seg0001.tif", _seg(1, 1))
    stack = np.stack([_frame(z) for z in range(3)])  # sequence 03: a 3-D frame, slice 2 annotated
    tifffile.imwrite(root / "03" / "t000.tif", stack, photometric="minisblack")
    tifffile.imwrite(root / "03_GT" / "SEG" / "man_seg_000_002.tif", _seg(2, 4))
    return root


def test_gold_truth_first_then_silver(ctc: Path) -> None:
    ds = CtcDataset(ctc)
    got = [(r.file.parent.name, r.extra["frame"], r.extra["truth"], r.page) for r in ds.records]
    assert got == [
        ("01", 0, "ST", None), ("01", 1, "GT", None), ("01", 2, "ST", None), ("01", 3, "ST", None),
        ("02", 1, "GT", None), ("03", 0, "GT", 2),
    ]
    assert [r.image_id for r in ds.records] == [1, 2, 3, 4, 5, 6]
    assert {r.cell_type for r in ds.records} == {"Fluo-N2DH-TEST"}
    assert ds.read_raw(1).masks.shape == (3, H, W)  # frame 1 uses the 3-cell GT, not the 2-cell ST
    raw = ds.read_raw(0)
    assert np.array_equal(raw.masks[1], _seg(0, 2) == 20)


def test_truth_choice(ctc: Path) -> None:
    assert [(r.file.parent.name, r.extra["frame"]) for r in CtcDataset(ctc, truth="gt").records] == [
        ("01", 1), ("02", 1), ("03", 0)
    ]
    assert len(CtcDataset(ctc, truth="st").records) == 4
    with pytest.raises(CupreError, match="truth must be one of"):
        CtcDataset(ctc, truth="silver")


def test_slice_of_3d_frame(ctc: Path) -> None:
    ds = CtcDataset(ctc, truth="gt")
    image_arr = ds.read_image_array(2)
    assert np.array_equal(image_arr, _frame(2))  # slice z=2 of the stack
    image, target = ds[2]
    assert image.shape == (3, H, W) and target["masks"].shape == (4, H, W)


def test_unlabeled_files_lists_every_frame(ctc: Path) -> None:
    files = CtcDataset(ctc).unlabeled_files()
    assert [f"{p.parent.name}/{p.name}" for p in files] == [
        "01/t000.tif", "01/t001.tif", "01/t002.tif", "01/t003.tif", "02/t0000.tif", "02/t0001.tif", "03/t000.tif"
    ]


def test_seg_without_frame_and_size_mismatch_are_skipped(ctc: Path) -> None:
    tifffile.imwrite(ctc / "02_GT" / "SEG" / "man_seg0007.tif", _seg(0, 1))
    tifffile.imwrite(ctc / "01_ST" / "SEG" / "man_seg002.tif", np.zeros((H + 2, W), dtype=np.uint16))
    with pytest.warns(CupreWarning) as caught:
        ds = CtcDataset(ctc)
    messages = " | ".join(str(w.message) for w in caught)
    assert "man_seg0007.tif: no frame t007.tif" in messages
    assert f"man_seg002.tif: label image is {H + 2}x{W} but frame t002.tif is {H}x{W}" in messages
    assert (("01", 2) not in [(r.file.parent.name, r.extra["frame"]) for r in ds.records])
    with pytest.raises(CupreError):
        CtcDataset(ctc, strict=True)


def test_not_a_ctc_folder(tmp_path: Path) -> None:
    with pytest.raises(CupreError, match="not a Cell Tracking Challenge layout"):
        CtcDataset(tmp_path)
    (tmp_path / "01").mkdir()
    with pytest.raises(CupreError, match="no annotated frames"):
        CtcDataset(tmp_path)


def test_conversion_keeps_slices(ctc: Path, tmp_path: Path) -> None:
    from cupre.data.coco import CocoDataset
    from cupre.data.convert import dataset_to_coco
    from cupre.fileio import write_json_atomic

    ds = CtcDataset(ctc)
    out = tmp_path / "ctc.json"
    write_json_atomic(out, dataset_to_coco(ds))
    back = CocoDataset(out)
    assert [r.page for r in back.records] == [r.page for r in ds.records]
    assert {r.cell_type for r in back.records} == {"Fluo-N2DH-TEST"}
    for i in range(len(ds)):
        assert np.array_equal(back.read_raw(i).masks, ds.read_raw(i).masks)
    assert np.array_equal(back.read_image_array(5), _frame(2))
