"""Unlabeled images: every file kind, folder walking rules, pages, and labeled datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from cupre.data.unlabeled import UnlabeledImages, walk_images
from cupre.errors import CupreError, CupreWarning


def _check(t: torch.Tensor, h: int, w: int) -> None:
    assert t.shape == (3, h, w) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0 and float(t.max()) > float(t.min())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 65535, (10, 12), dtype=np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(rng.integers(0, 255, (10, 12, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(tmp_path / "sub" / "grey.jpg")
    tifffile.imwrite(tmp_path / "sub" / "float.tif", rng.normal(size=(10, 12)).astype(np.float32))
    pages = np.zeros((3, 10, 12), dtype=np.uint8)
    for k in range(3):
        pages[k, 2 * k, :] = 200  # page k: one bright row at 2k
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    # label files that must be skipped
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "rgba_masks.png")
    (tmp_path / "cell1" / "masks").mkdir(parents=True)
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "cell1" / "masks" / "m.png")
    tifffile.imwrite(tmp_path / "sub" / "man_seg000.tif", np.zeros((10, 12), dtype=np.uint16))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_walk_skips_labels_and_splits_pages(folder: Path) -> None:
    ds = UnlabeledImages(folder)
    names = [(p.relative_to(folder).as_posix(), page) for p, page in ds.items]
    assert names == [
        ("grey16.png", None), ("rgba.png", None), ("stack.tif", 0), ("stack.tif", 1), ("stack.tif", 2),
        ("sub/float.tif", None), ("sub/grey.jpg", None),
    ]
    for i in (0, 1, 5, 6):
        _check(ds[i], 10, 12)
    for k in range(3):  # each page is its own frame
        bright_rows = torch.nonzero(ds[2 + k][0].amax(dim=1) == 1.0).flatten().tolist()
        assert bright_rows == [2 * k]


def test_non_recursive_and_single_files(folder: Path) -> None:
    assert len(UnlabeledImages(folder, recursive=False)) == 5
    ds = UnlabeledImages([folder / "rgba.png", folder / "sub"])
    assert len(ds) == 3
    assert walk_images(folder / "cell1") == []


def test_transform_is_applied_to_the_tensor(folder: Path) -> None:
    ds = UnlabeledImages(folder / "rgba.png", transform=lambda t: (t * 2, t.shape))
    doubled, shape = ds[0]
    assert shape == (3, 10, 12) and float(doubled.max()) == pytest.approx(2.0)


def test_real_unlabeled_samples(shared_data: Path) -> None:
    ds = UnlabeledImages(shared_data / "samples" / "unlabeled")
    assert [p.name for p, _ in ds.items] == ["A172_Phase_A7_1_00d00h00m_1.tif", "dic_img.tif", "histo.jpg"]
    _check(ds[0], 520, 704)  # LZW-compressed TIFF
    _check(ds[1], 512, 512)  # float32 TIFF
    _check(ds[2], 300, 500)  # RGB JPEG


def test_label_image_folder_gives_only_images(shared_data: Path) -> None:
    ds = UnlabeledImages(shared_data / "samples" / "label-images")
    assert [p.name for p, _ in ds.items] == ["nuclei_img.tif", "nuclei_small.tif"]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(CupreError, match="image file or folder not found"):
        UnlabeledImages(tmp_path / "nope")
    with pytest.raises(CupreError, match="no images found"):
        UnlabeledImages(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(np.arange(80, dtype=np.uint8).reshape(8, 10)).save(good)
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.warns(CupreWarning, match=r"bad\.tif: cannot read TIFF"):
        assert len(UnlabeledImages(tmp_path)) == 1
    with pytest.raises(CupreError, match=r"bad\.tif"):
        UnlabeledImages(tmp_path, strict=True)
    bad_tif.unlink()
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[:50])
    ds = UnlabeledImages(tmp_path)
    with pytest.raises(CupreError, match=r"trunc\.png: cannot read image"):
        [ds[i] for i in range(len(ds))]


def test_multi_axis_tiffs_are_read_plane_by_plane_by_their_axes(tmp_path):
    import tifffile

    from cupre.data.imageio import count_pages, plane_layout, read_image
    from cupre.data.lazy import image_size
    from cupre.errors import CupreError

    stack = np.arange(2 * 3 * 2 * 8 * 9, dtype=np.uint16).reshape(2, 3, 2, 8, 9)
    tifffile.imwrite(tmp_path / "tzcyx.tif", stack, imagej=True, metadata={"axes": "TZCYX"})
    assert count_pages(tmp_path / "tzcyx.tif") == 12  # every T, Z and C plane once
    layout = plane_layout(tmp_path / "tzcyx.tif")
    assert (layout.count, layout.size, layout.channels) == (12, (8, 9), 2) and layout.size == image_size(
        tmp_path / "tzcyx.tif", 5)
    second = layout.pages(channel=1)  # the pages of channel 1, and nothing else
    assert len(second) == 6 and all(np.array_equal(read_image(tmp_path / "tzcyx.tif", page=k),
                                                   stack[np.unravel_index(k, (2, 3, 2))[:2]][1]) for k in second)
    with pytest.raises(ValueError, match="channel 2 requested, the image has 2"):
        layout.pages(channel=2)
    for k in (0, 5, 11):
        t, z, c = np.unravel_index(k, (2, 3, 2))
        assert np.array_equal(read_image(tmp_path / "tzcyx.tif", page=k), stack[t, z, c])
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    assert count_pages(tmp_path / "rgb.tif") == 1 and read_image(tmp_path / "rgb.tif").shape == (8, 9, 3)
    assert plane_layout(tmp_path / "rgb.tif").size == (8, 9) and plane_layout(tmp_path / "rgb.tif").pages(1) == [0]
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((8, 9, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig", metadata={"axes": "YXS"})
    with pytest.raises(CupreError, match=r"five.tif: .*5 samples per pixel \(axes 'YXS'"):
        count_pages(tmp_path / "five.tif")


def test_linked_folders_are_walked_once_and_hidden_entries_skipped(tmp_path):
    from cupre.data.unlabeled import walk_images

    real = tmp_path / "elsewhere" / "sample1" / "images"
    real.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(real / "a.png")
    (real.parent / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(real.parent / "masks" / "m1.png")
    top = tmp_path / "top"
    top.mkdir()
    (top / "sample1").symlink_to(real.parent, target_is_directory=True)  # a folder of links, as users make
    (top / "again").symlink_to(top, target_is_directory=True)  # a loop is walked once
    (top / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(top / ".hidden" / "h.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(top / ".dot.png")
    assert walk_images(top) == [top / "sample1" / "images" / "a.png"]
    assert walk_images(top, recursive=False) == []


def test_pretraining_counts_its_exclusion_and_stops_when_it_removes_nothing(tmp_path):
    from cupre.config import PretrainConfig
    from cupre.train.pretrain import check_exclusion

    folder = tmp_path / "cells"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(folder / f"{name}.png")
    cfg = PretrainConfig.from_dict({"coco": ["c.json"], "unlabeled": [str(folder)], "exclude": [str(folder / "b.png")]})
    images = UnlabeledImages(cfg.unlabeled, exclude=cfg.exclude)
    assert images.excluded == 1 and len(images) == 2
    check_exclusion(cfg, images)  # it removed the held-out image: fine
    cfg.exclude = [str(folder / "b.tif")]  # a held-out image named under the source that matches no file there
    with pytest.raises(CupreError, match="removed no image"):
        check_exclusion(cfg, UnlabeledImages(cfg.unlabeled, exclude=cfg.exclude))
    cfg.exclude = [str(tmp_path / "elsewhere" / "x.png")]  # held out, but not among these sources: nothing to do
    check_exclusion(cfg, UnlabeledImages(cfg.unlabeled, exclude=cfg.exclude))
