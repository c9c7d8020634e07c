"""Tiling: tile layout, cropping detector outputs, and merging tiles of a large image."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage

from cupre.detect.objects import Objects, crop_output
from cupre.detect.tiles import in_core, make_tiles
from cupre.detect.tiling import predict_images, remove_duplicates
from cupre.errors import CupreError
from cupre.inference.writers import paint_labels


class ComponentDetector:
    """A deterministic stand-in for the detector (same eval interface): every connected
    bright region of a tile is one detection, exact to the pixel, scored by its area."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: list[torch.Tensor], select=None) -> list[dict]:
        self.calls += 1
        outputs = [self._one(img) for img in images]
        if select is not None:  # as the detector does: keep what select accepts
            for i, out in enumerate(outputs):
                keep = torch.as_tensor(select(i, out["boxes"]), dtype=torch.bool)
                outputs[i] = {k: v[keep] for k, v in out.items()}
        return outputs

    @staticmethod
    def _one(img: torch.Tensor) -> dict:
        lab, n = ndimage.label(img[0].cpu().numpy() > 0.5)
        boxes, masks = [], np.zeros((n,) + lab.shape, dtype=np.uint8)
        for k, sl in enumerate(ndimage.find_objects(lab)):
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            masks[k][sl] = lab[sl] == k + 1
        areas = masks.reshape(n, -1).sum(1).astype(np.float32)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(n, dtype=torch.int64),
            "scores": torch.from_numpy(0.5 + 0.5 * areas / (areas.max() + 1) if n else areas),
            "masks": torch.from_numpy(masks),
        }


def draw_cells(height: int, width: int, *, spacing: int, max_radius: int, seed: int) -> np.ndarray:
    """uint16 label image of non-touching ellipses on a jittered grid (ids 1..N)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), dtype=np.uint16)
    jitter = (spacing - 2 * max_radius - 4) // 2
    k = 0
    for cy in range(spacing // 2, height - spacing // 2 + 1, spacing):
        for cx in range(spacing // 2, width - spacing // 2 + 1, spacing):
            y, x = cy + rng.integers(-jitter, jitter + 1), cx + rng.integers(-jitter, jitter + 1)
            ry, rx = rng.integers(6, max_radius + 1, size=2)
            theta = rng.uniform(0, np.pi)
            yy, xx = np.mgrid[y - max_radius:y + max_radius + 1, x - max_radius:x + max_radius + 1]
            u = (xx - x) * np.cos(theta) + (yy - y) * np.sin(theta)
            v = -(xx - x) * np.sin(theta) + (yy - y) * np.cos(theta)
            inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1
            k += 1
            label[yy[inside], xx[inside]] = k
    return label


@pytest.mark.parametrize("length,tile,overlap", [(4000, 1024, 128), (1500, 1024, 128), (300, 256, 64), (256, 256, 0)])
def test_tiles_cover_the_image_and_cores_partition_it(length, tile, overlap):
    tiles = make_tiles(length, length + 17, tile_size=tile, overlap=overlap)
    covered = np.zeros((length, length + 17), dtype=np.int32)
    owners = np.zeros_like(covered)
    yy, xx = np.mgrid[0:length, 0:length + 17] + 0.5  # pixel centres
    for t in tiles:
        assert t.y1 - t.y0 == min(tile, length) and 0 <= t.y0 and t.y1 <= length
        covered[t.y0:t.y1, t.x0:t.x1] += 1
        cy0, cx0, cy1, cx1 = t.core
        owners += (yy >= cy0) & (yy < cy1) & (xx >= cx0) & (xx < cx1)
        # a core keeps at least half the overlap away from the tile's interior edges
        for edge, bound in ((t.y0, cy0), (t.x0, cx0)):
            assert bound == -np.inf or bound - edge >= overlap / 2
        for edge, bound in ((t.y1, cy1), (t.x1, cx1)):
            assert bound == np.inf or edge - bound >= overlap / 2
    assert covered.min() >= 1
    assert (owners == 1).all()


def test_bad_tiling_options_are_user_errors():
    with pytest.raises(CupreError, match="tile-overlap"):
        make_tiles(100, 100, tile_size=256, overlap=200)
    with pytest.raises(CupreError, match="tile-size"):
        make_tiles(100, 100, tile_size=8, overlap=0)


def test_crop_output_keeps_masks_cropped_and_offset():
    masks = torch.zeros((3, 40, 50), dtype=torch.uint8)
    masks[0, 5:9, 10:13] = 1
    masks[1, 20:30, 0:4] = 1  # a low score is the RoI heads' business: kept here
    out = {"boxes": torch.tensor([[10.0, 5, 13, 9], [0, 20, 4, 30], [1, 1, 2, 2]]),
           "scores": torch.tensor([0.9, 0.1, 0.8]), "labels": torch.tensor([1, 1, 2]), "masks": masks}
    objs = crop_output(out, origin=(100, 200))
    assert len(objs) == 2  # the empty third mask is dropped
    assert objs.origins.tolist() == [[105, 210], [120, 200]]
    assert objs.crops[0].shape == (4, 3) and objs.crops[0].all()
    assert objs.boxes[0].tolist() == [210.0, 105.0, 213.0, 109.0]


def _objects(masks: list[np.ndarray], scores: list[float]) -> Objects:
    """Objects from full-size bool masks (test helper)."""
    crops, origins, boxes = [], [], []
    for m in masks:
        sl = ndimage.find_objects(m.astype(np.uint8))[0]
        crops.append(m[sl])
        origins.append([sl[0].start, sl[1].start])
        boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return Objects(np.array(boxes, np.float32), np.array(scores, np.float32), np.ones(len(masks), np.int64),
                   np.array(origins, np.int64), crops)


def test_remove_duplicates_drops_repeats_and_fragments_only():
    tiles = make_tiles(100, 160, tile_size=100, overlap=40)  # two tiles side by side, core boundary x = 80
    assert len(tiles) == 2 and tiles[0].core[3] == 80
    cell = np.zeros((100, 160), bool)
    cell[40:60, 70:90] = True
    fragment = cell.copy()
    fragment[:, 84:] = False  # part of the same cell
    neighbour = np.zeros((100, 160), bool)
    neighbour[40:60, 88:100] = True  # another cell, overlapping the first one a little
    objs = _objects([cell, cell, neighbour, fragment], [0.9, 0.8, 0.7, 0.5])
    keep = remove_duplicates(objs.select([0, 1, 2]), np.array([0, 1, 1]), tiles)
    assert keep.tolist() == [True, False, True]  # the lower-scored copy goes, the neighbour stays
    keep = remove_duplicates(objs.select([0, 3]), np.array([0, 1]), tiles)
    assert keep.tolist() == [True, False]  # a fragment inside a cell of the other tile goes
    # the same object twice from one tile is not a tiling duplicate (the detector's NMS owns that)
    assert remove_duplicates(objs.select([0, 1]), np.array([0, 0]), tiles).all()


def test_in_core_uses_box_centres():
    tile = make_tiles(100, 160, tile_size=100, overlap=40)[0]
    boxes = np.array([[70, 0, 89, 10], [70, 0, 91, 10]], np.float32)  # centres x = 79.5, 80.5
    assert in_core(boxes, tile).tolist() == [True, False]


def test_large_image_merge_is_exact_and_cropped():
    """4,000 x 4,000 cells, many across tile borders: each comes out once and whole."""
    truth = draw_cells(4000, 4000, spacing=110, max_radius=48, seed=0)
    n_cells = int(truth.max())
    image = torch.from_numpy(truth > 0).float()[None].expand(3, -1, -1)
    tiles = make_tiles(4000, 4000, tile_size=1024, overlap=128)
    cut = {int(v) for t in tiles for v in np.unique(truth[t.y0:t.y1, [t.x0, t.x1 - 1]]) if v} | \
          {int(v) for t in tiles for v in np.unique(truth[[t.y0, t.y1 - 1], t.x0:t.x1]) if v}
    assert len(tiles) > 4 and len(cut) > 100  # plenty of cells cross tile edges

    model = ComponentDetector()
    tracemalloc.start()
    (objs,) = predict_images(model, [image], tile_size=1024, overlap=128, batch_size=1)
    label, kept = paint_labels(objs, 4000, 4000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert model.calls == len(tiles)
    assert len(objs) == n_cells and len(kept) == n_cells  # nothing cut in two, nothing twice
    assert max(max(c.shape) for c in objs.crops) <= 2 * 48 + 1  # masks stored cropped
    assert peak < 400e6  # label image + one tile's outputs; not one full-size mask per cell
    assert ((label > 0) == (truth > 0)).all()
    pairs = np.unique(np.stack([label[truth > 0], truth[truth > 0]]), axis=1)
    assert pairs.shape[1] == n_cells  # one-to-one: every output object is exactly one cell
    assert len(np.unique(pairs[0])) == n_cells and len(np.unique(pairs[1])) == n_cells


def test_scaled_images_run_in_scaled_tiles_and_map_outputs_back():
    from cupre.config import DetectorConfig
    from cupre.models.detector import build_detector

    cfg = DetectorConfig.from_dict(dict(backbone="resnet18", fpn_channels=32, detections_per_img=5,
                                        box_score_thresh=0.0))
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    seen = []
    model.backbone.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    img = torch.rand(3, 40, 60)
    predict_images(model, [img], tile_size=64, overlap=8)
    assert seen == [(64, 64)]  # native pixels, padded to a multiple of 32: the detector never resizes
    seen.clear()
    (objs,) = predict_images(model, [img], tile_size=64, overlap=8, scales=[2.0])
    # tiles of 32 image pixels, each fed at twice its size, so the detector sees ~tile_size
    assert seen and all(s == (64, 64) for s in seen) and len(seen) >= 2
    assert all(y + c.shape[0] <= 40 and x + c.shape[1] <= 60 for (y, x), c in zip(objs.origins, objs.crops))
    assert (objs.boxes[:, 2] <= 60).all() and (objs.boxes[:, 3] <= 40).all()


@pytest.mark.parametrize("factor", [4.0, 3.99, 8.0])
def test_an_image_run_at_a_large_factor_still_gets_a_valid_tiling(factor):
    from cupre.detect.tiles import make_tiles, scaled_tiling

    size, overlap = scaled_tiling(1024, 128, factor)  # the defaults, objects 4x smaller than the model's
    assert overlap < size // 2
    assert make_tiles(2000, 1500, tile_size=size, overlap=overlap)
