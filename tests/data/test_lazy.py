"""Reading a window of a plane gives what reading the plane and cutting it gives; a tile
normalised with its image's range equals the same tile of the normalised image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from cupre.data.imageio import intensities, normalize, percentile_range, read_image, stretch
from cupre.data.lazy import LazyImage, image_size, intensity_range
from cupre.data.unlabeled import walk_images
from cupre.errors import CupreError

WINDOWS = [(0, 37, 0, 41), (50, 130, 90, 200), (0, 150, 0, 210), (149, 150, 209, 210)]


def write_ome_zarr(path, data: np.ndarray, axes: str) -> None:
    """A minimal NGFF 0.5 image: one level ``0`` with its multiscales metadata."""
    import zarr

    group = zarr.open_group(path, mode="w")
    group.create_array("0", data=data, chunks=tuple(min(s, 64) for s in data.shape))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(axes)}]}]}]}


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 4000, (150, 210), dtype=np.uint16)
    rgb = rng.integers(0, 255, (150, 210, 3), dtype=np.uint8)
    stack = rng.normal(size=(3, 150, 210)).astype(np.float32)
    files = {
        "tiled.tif": (lambda p: tifffile.imwrite(p, grey, tile=(64, 64), compression="zlib"), grey),
        "strips.tif": (lambda p: tifffile.imwrite(p, grey, rowsperstrip=7), grey),
        "rgb.tif": (lambda p: tifffile.imwrite(p, rgb, photometric="rgb", tile=(32, 32)), rgb),
        "stack.tif": (lambda p: tifffile.imwrite(p, stack, photometric="minisblack", metadata={"axes": "ZYX"}),
                      stack[1]),
        "grey.png": (lambda p: Image.fromarray(rgb[..., 0]).save(p), rgb[..., 0]),
        "img.zarr": (lambda p: write_ome_zarr(p, stack[:, None], "zcyx"), stack[1]),
    }
    out = {}
    for name, (write, expected) in files.items():
        write(tmp_path / name)
        out[name] = (tmp_path / name, expected)
    return out


@pytest.mark.parametrize("name", ["tiled.tif", "strips.tif", "rgb.tif", "stack.tif", "grey.png", "img.zarr"])
def test_windows_are_the_plane_cut_there(images, name):
    path, expected = images[name]
    page = 1 if name in ("stack.tif", "img.zarr") else None
    whole = read_image(path, page=page)
    np.testing.assert_array_equal(whole, expected)
    with LazyImage(path, page) as image:
        assert image.shape == expected.shape[:2] == image_size(path, page)
        for y0, y1, x0, x1 in WINDOWS:
            np.testing.assert_array_equal(image.read(y0, y1, x0, x1), expected[y0:y1, x0:x1])
        tiles = list(image.windows(64, step=3))
        assert all(y0 % 3 == 0 and x0 % 3 == 0 for y0, _, x0, _ in tiles)
        assert sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in tiles) == 150 * 210


def test_a_tile_stretched_with_its_images_range_is_the_normalised_images_tile(images):
    for name in ("tiled.tif", "rgb.tif"):
        path, _ = images[name]
        whole = normalize(read_image(path))
        with LazyImage(path) as image:
            value_range = intensity_range(image)
            assert value_range == percentile_range(intensities(read_image(path)))
            for y0, y1, x0, x1 in WINDOWS:
                tile = stretch(intensities(image.read(y0, y1, x0, x1)), *value_range, grey_view=True)
                assert torch.equal(tile, whole[:, y0:y1, x0:x1])


def test_a_large_planes_range_comes_from_a_regular_subsample(images):
    path, grey = images["tiled.tif"]
    with LazyImage(path) as image:
        lo, hi = intensity_range(image, limit=150 * 210 // 9)  # step 3
    assert (lo, hi) == percentile_range(grey[::3, ::3].astype(np.float32))
    exact_lo, exact_hi = percentile_range(grey.astype(np.float32))
    assert abs(lo - exact_lo) < 0.02 * (exact_hi - exact_lo) and abs(hi - exact_hi) < 0.02 * (exact_hi - exact_lo)


def test_an_ome_zarr_folder_is_one_image_when_walking(images, tmp_path):
    found = walk_images(tmp_path)
    assert tmp_path / "img.zarr" in found
    assert not any("img.zarr" in str(p.parent) for p in found)  # its chunks are not walked into
    assert walk_images(tmp_path, recursive=False) == found


def test_bad_lazy_inputs_give_one_line_naming_the_file(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 truncated")
    with pytest.raises(CupreError, match="bad.tif"):
        LazyImage(tmp_path / "bad.tif")
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(CupreError, match="plain.zarr"):
        LazyImage(tmp_path / "plain.zarr")
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(CupreError, match="plane 5 requested"):
        LazyImage(tmp_path / "two.tif", 5)
