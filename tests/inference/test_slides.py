"""A large image is predicted tile by tile from its file and written window by window,
with the outputs the in-memory path gives."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from cupre.data.imageio import normalize, read_image
from cupre.detect.tiles import make_tiles
from cupre.detect.tiling import predict_images
from cupre.inference.predict import PredictOptions, run_predict
from cupre.inference.writers import paint_labels
from tests.detect.test_tiling import ComponentDetector, draw_cells
from tests.inference.test_predict import check_ome_zarr


def test_a_slide_gives_the_in_memory_paths_objects(tmp_path):
    truth = draw_cells(700, 900, spacing=70, max_radius=28, seed=3)
    raw = np.where(truth > 0, 3000, 200).astype(np.uint16)
    tifffile.imwrite(tmp_path / "slide.tif", raw, tile=(128, 128), compression="zlib")
    options = PredictOptions(tile_size=256, tile_overlap=64, batch_size=2, device="cpu", score_threshold=0.0,
                             outputs=("roi_zip", "geojson", "ome_zarr"))
    model = ComponentDetector()
    summary = run_predict(model, [tmp_path / "slide.tif"], out=tmp_path / "out", options=options, progress=False)
    tiles = make_tiles(700, 900, tile_size=256, overlap=64)
    assert summary.predicted == 1 and len(tiles) == 20 and model.calls == 10  # two tiles per pass

    (objs,) = predict_images(ComponentDetector(), [normalize(read_image(tmp_path / "slide.tif"))], tile_size=256,
                             overlap=64, batch_size=2)
    expected, _ = paint_labels(objs, 700, 900)
    label = tifffile.imread(tmp_path / "out" / "slide_masks.tif")
    assert np.array_equal(label, expected)
    assert label.max() == truth.max()  # every cell once, none cut by a tile edge
    pairs = np.unique(np.stack([label[truth > 0], truth[truth > 0]]), axis=1)
    assert pairs.shape[1] == truth.max()
    with tifffile.TiffFile(tmp_path / "out" / "slide_masks.tif") as tif:
        assert tif.pages[0].is_tiled  # written tile by tile
    rows = (tmp_path / "out" / "slide_objects.csv").read_text().splitlines()
    assert len(rows) == truth.max() + 1
    entry = json.loads((tmp_path / "out" / "images.json").read_text())["images"][0]
    assert (entry["height"], entry["width"], entry["objects"]) == (700, 900, truth.max())
    assert (tmp_path / "out" / "slide_rois.zip").stat().st_size > 0
    assert (tmp_path / "out" / "slide_overlay.png").is_file()
    check_ome_zarr(tmp_path / "out" / "slide.ome.zarr", raw, label)
    features = json.loads((tmp_path / "out" / "slide_objects.geojson").read_text())["features"]
    assert len(features) == truth.max()
