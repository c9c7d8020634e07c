"""A large image's outputs, painted window by window, are those of the whole image."""

from __future__ import annotations

import numpy as np
import tifffile
from PIL import Image

from cupre.data.imageio import normalize
from cupre.data.lazy import LazyImage, intensity_range
from cupre.detect.objects import Objects
from cupre.inference import windows, writers


def random_objects(rng, count: int, height: int, width: int) -> Objects:
    """Overlapping blobs of random shapes; some wholly hidden under higher scores."""
    origins, crops = [], []
    for _ in range(count):
        h, w = rng.integers(3, 60, size=2)
        y0, x0 = rng.integers(0, height - h), rng.integers(0, width - w)
        yy, xx = np.mgrid[0:h, 0:w]
        crop = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1.0
        crop[rng.random((h, w)) < 0.05] = False
        crop[h // 2, :] = True  # never empty
        origins.append((y0, x0))
        crops.append(crop)
    origins = np.array(origins, dtype=np.int64)
    sizes = np.array([c.shape for c in crops])
    boxes = np.concatenate([origins[:, ::-1], origins[:, ::-1] + sizes[:, ::-1]], axis=1).astype(np.float32)
    scores = rng.choice(np.linspace(0.1, 1.0, 20), size=count).astype(np.float32)  # ties too
    return Objects(boxes, scores, rng.integers(1, 3, size=count), origins, crops)


def test_window_outputs_equal_the_whole_images(tmp_path):
    rng = np.random.default_rng(1)
    height, width = 300, 520
    raw = rng.integers(0, 60000, (height, width), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "raw.tif", raw, tile=(64, 64))
    objs = random_objects(rng, 400, height, width)
    objs.crops.append(objs.crops[0].copy())  # a copy of object 0 at a lower score: wholly hidden
    objs = Objects(np.concatenate([objs.boxes, objs.boxes[:1]]), np.append(objs.scores, 0.05).astype(np.float32),
                   np.append(objs.labels, 1), np.concatenate([objs.origins, objs.origins[:1]]), objs.crops)
    label, kept = writers.paint_labels(objs, height, width)
    names = {1: "cell", 2: "other"}
    rows = writers.object_rows(label, kept, objs, raw, names)

    with LazyImage(tmp_path / "raw.tif") as image:
        painter = windows.LabelPainter(objs, height, width)
        stats = painter.measure(image, side=96)  # windows that cut objects
        assert np.array_equal(painter.kept, kept) and len(kept) < len(objs)
        assert np.array_equal(painter.window(0, height, 0, width), label)
        assert np.array_equal(painter.window(37, 201, 55, 300), label[37:201, 55:300])
        got = windows.object_rows(stats, painter, names)
        assert [r["id"] for r in got] == [r["id"] for r in rows]
        for a, b in zip(got, rows):
            assert {k: v for k, v in a.items() if k != "mean_intensity"} == \
                {k: v for k, v in b.items() if k != "mean_intensity"}
            assert abs(a["mean_intensity"] - b["mean_intensity"]) <= 1e-3

        windows.write_label_tiles(tmp_path / "tiles.tif", painter)
        assert np.array_equal(tifffile.imread(tmp_path / "tiles.tif"), label)
        assert tifffile.imread(tmp_path / "tiles.tif").dtype == np.uint16

        outlines = list(windows.label_outlines(painter, stats))
        whole = list(writers.label_outlines(label))
        assert len(outlines) == len(whole) > 100
        assert [k for k, _ in outlines] == [k for k, _ in whole]
        for (_, a), (_, b) in zip(outlines, whole):
            assert [len(p) for p in a] == [len(p) for p in b]
            assert all(np.array_equal(r, q) for p, o in zip(a, b) for r, q in zip(p, o))

        value_range = intensity_range(image)
        assert windows.write_overlay(tmp_path / "win.png", painter, image, value_range, got, side=96) == 1
    writers.write_overlay(tmp_path / "whole.png", writers.normalised_rgb(normalize(raw)), label, rows)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "win.png")), np.asarray(Image.open(tmp_path / "whole.png")))


def test_a_larger_images_overlay_is_subsampled(tmp_path, monkeypatch):
    monkeypatch.setattr(windows, "OVERLAY_SIDE", 100)
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 255, (250, 180), dtype=np.uint8)
    Image.fromarray(raw).save(tmp_path / "raw.png")
    objs = random_objects(rng, 30, 250, 180)
    with LazyImage(tmp_path / "raw.png") as image:
        painter = windows.LabelPainter(objs, 250, 180)
        rows = windows.object_rows(painter.measure(image), painter)
        assert windows.write_overlay(tmp_path / "o.png", painter, image, intensity_range(image), rows) == 3
        # windows that cut objects (side 64 -> 63, a multiple of the step): the same picture as one window
        assert windows.write_overlay(tmp_path / "cut.png", painter, image, intensity_range(image), rows, side=64) == 3
    assert Image.open(tmp_path / "o.png").size == (60, 84)
    whole, cut = (np.asarray(Image.open(tmp_path / name)) for name in ("o.png", "cut.png"))
    assert np.array_equal(whole, cut) and (whole[..., 0] != whole[..., 1]).any()  # coloured outlines on grey
