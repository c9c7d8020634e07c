"""``cupre predict``: output file contracts on real images, bad inputs, ROI files."""

from __future__ import annotations

import csv
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import roifile
import tifffile
import torch
from faster_coco_eval.core import mask as coco_mask
from PIL import Image
from scipy import ndimage

from cupre import cli
from cupre.config import DetectorConfig
from cupre.data.imageio import read_image
from cupre.detect.objects import Objects
from cupre.errors import CupreError, CupreWarning
from cupre.inference import writers
from cupre.inference.inputs import expand_inputs
from cupre.inference.predict import PredictOptions, run_predict
from cupre.inference.writers import paint_labels, polygon_roi, trace_outline
from cupre.masks import crop_rle
from tests.helpers import TINY_DETECTOR

TINY = {**TINY_DETECTOR, "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 200,
        "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 200, "box_batch_size_per_image": 64,
        "detections_per_img": 100}


class ComponentDetector:
    """Deterministic stand-in for the detector: each bright connected region is an object."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: list[torch.Tensor]) -> list[dict]:
        self.calls += 1
        outs = []
        for img in images:
            lab, n = ndimage.label(img[0].numpy() > 0.5)
            sl = ndimage.find_objects(lab)
            masks = torch.from_numpy((lab[None] == np.arange(1, n + 1)[:, None, None]).astype(np.uint8))
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in sl]
            outs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         "scores": torch.linspace(0.9, 0.6, n), "labels": torch.ones(n, dtype=torch.int64),
                         "masks": masks})
        return outs


def _discs(size: int, centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    fg = np.zeros((size, size), bool)
    for cy, cx in centres:
        fg |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return fg


def _train_tiny_model(folder: Path, path: Path) -> None:
    """A few SGD steps of a tiny detector on the labeled images, saved as a model file."""
    from cupre.data.formats import open_dataset
    from cupre.data.sample import masks_to_boxes
    from cupre.models.detector import build_detector
    from cupre.train.weights import save_model

    torch.manual_seed(0)
    cfg = DetectorConfig.from_dict(TINY)
    model = build_detector(cfg)
    data = open_dataset(folder, class_agnostic=True)
    images, targets = [], []
    for i in range(len(data)):  # a 128 px crop of each image keeps the steps cheap
        image, target = data[i]
        masks = target["masks"][:, 64:192, 64:192]
        masks = masks[masks.flatten(1).any(1).bool()]
        images.append(image[:, 64:192, 64:192].float())
        targets.append({"boxes": torch.from_numpy(masks_to_boxes(masks.numpy().astype(bool))),
                        "labels": torch.ones(len(masks), dtype=torch.int64), "masks": masks})
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    model.train()
    for _ in range(3):
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    save_model(path, model, cfg, data.categories)


def test_predict_real_images_writes_consistent_outputs(shared_data, tmp_path):
    from cupre.data.convert import dataset_to_coco
    from cupre.data.formats import open_dataset
    from cupre.evaluation.livecell import evaluate
    from cupre.evaluation.results import load_results

    folder = shared_data / "samples" / "label-images"
    run = tmp_path / "run"
    run.mkdir()
    _train_tiny_model(folder, run / "model.safetensors")
    out = tmp_path / "out"
    # tiles of 320 px: the 512 px image is tiled (2 x 2), the 256 px one is not
    argv = ["predict", str(run), str(folder), "-o", str(out), "--score-threshold", "0", "--max-detections", "40",
            "--tile-size", "320", "--tile-overlap", "64", "--device", "cpu", "--roi-zip", "--geojson",
            "--ome-zarr"]
    assert cli.main(argv) == 0

    index = json.loads((out / "images.json").read_text())
    names = [Path(e["file"]).name for e in index["images"]]
    assert names == ["nuclei_img.tif", "nuclei_small.tif"] and [e["id"] for e in index["images"]] == [1, 2]
    total = 0
    for entry in index["images"]:
        raw = read_image(entry["file"])
        stem = out / entry["name"]
        label = tifffile.imread(f"{stem}_masks.tif")
        assert label.dtype == np.uint16 and label.shape == raw.shape[:2]
        with Image.open(f"{stem}_overlay.png") as im:  # small images enlarged by a whole factor
            f = writers.overlay_factor(*raw.shape[:2])
            assert im.size == (raw.shape[1] * f, raw.shape[0] * f) and im.mode == "RGB"
        with open(f"{stem}_objects.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        ids = np.unique(label[label > 0])
        assert len(rows) == len(ids) == entry["objects"] > 0
        assert [int(r["id"]) for r in rows] == ids.tolist() == list(range(1, len(ids) + 1))
        counts = np.bincount(label.ravel())
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)  # id 1 scores highest
        for r in rows:
            k = int(r["id"])
            ys, xs = np.nonzero(label == k)
            assert int(r["area"]) == counts[k]
            assert float(r["centroid_y"]) == pytest.approx(ys.mean(), abs=1e-3)
            assert [int(r[c]) for c in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")] == \
                   [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert float(r["mean_intensity"]) == pytest.approx(raw[ys, xs].astype(float).mean(), abs=1e-3)
        _check_rois(Path(f"{stem}_rois.zip"), label)
        _check_geojson(Path(f"{stem}_objects.geojson"), label, rows)
        check_ome_zarr(Path(f"{stem}.ome.zarr"), raw, label)
        total += len(rows)

    gt = dataset_to_coco(open_dataset(folder))
    assert [Path(im["file_name"]).name for im in gt["images"]] == names  # same ids, same files
    results = json.loads((out / "results_coco.json").read_text())
    assert len(results) == total
    for res in results[:20]:  # each COCO mask holds the visible pixels of its label id
        entry = index["images"][res["image_id"] - 1]
        label = tifffile.imread(out / f"{entry['name']}_masks.tif")
        decoded = coco_mask.decode({"size": res["segmentation"]["size"], "counts": res["segmentation"]["counts"]})
        assert decoded.shape == label.shape and decoded[label == res["object_id"]].all()
    metrics = evaluate(gt, load_results(out / "results_coco.json", gt))
    assert 0.0 <= metrics["segm"]["AP"] <= 1.0 and 0.0 <= metrics["bbox"]["AP"] <= 1.0


def _check_rois(path: Path, label: np.ndarray) -> None:
    """Every ROI is a valid ImageJ polygon ROI named by its id, inside that object's box."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert sorted(int(n.removesuffix(".roi")) for n in names) == list(range(1, int(label.max()) + 1))
        for name in names:
            top, left, bottom, right, xs, ys = _decode_roi(zf.read(name))
            sl = ndimage.find_objects((label == int(name[:-4])).astype(np.uint8))[0]
            assert sl[0].start <= top and bottom <= sl[0].stop and sl[1].start <= left and right <= sl[1].stop
            assert xs.min() == 0 and ys.min() == 0 and xs.max() == right - left and ys.max() == bottom - top


def check_ome_zarr(path: Path, raw: np.ndarray, label: np.ndarray) -> None:
    """ome-zarr-py opens the image and its labels; both hold what was read and predicted,
    and cupre reads the image back."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    image_node = next(iter(Reader(parse_url(path))()))
    assert np.array_equal(np.asarray(image_node.data[0]), raw)
    label_node = next(iter(Reader(parse_url(path / "labels" / "masks"))()))
    assert np.array_equal(np.asarray(label_node.data[0]), label)
    assert label_node.metadata["name"] == "masks"
    assert np.array_equal(read_image(path), raw)


def shoelace(ring: list[list[float]]) -> float:
    xy = np.asarray(ring, dtype=float)
    return abs(float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))) / 2


def _check_geojson(path: Path, label: np.ndarray, rows: list[dict]) -> None:
    """One closed polygon feature per id, its area that of the id's pixels within 5%, its
    measurements those of the table."""
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [int(f["properties"]["name"]) for f in features] == [int(r["id"]) for r in rows]
    counts = np.bincount(label.ravel())
    for feature, row in zip(features, rows):
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        assert all(ring[0] == ring[-1] for poly in polygons for ring in poly)
        area = sum(shoelace(poly[0]) - sum(shoelace(hole) for hole in poly[1:]) for poly in polygons)
        assert abs(area - counts[int(row["id"])]) <= 0.05 * counts[int(row["id"])]
        assert feature["properties"]["measurements"]["area"] == int(row["area"])
        assert feature["properties"]["classification"]["name"] == row["category"]


def _decode_roi(data: bytes):
    """Read an ImageJ polygon ROI back with roifile."""
    roi = roifile.ImagejRoi.frombytes(data)
    assert roi.roitype == roifile.ROI_TYPE.POLYGON and roi.n_coordinates >= 3
    xs, ys = roi.integer_coordinates[:, 0].astype(int), roi.integer_coordinates[:, 1].astype(int)
    return roi.top, roi.left, roi.bottom, roi.right, xs, ys


def test_traced_outlines_enclose_exactly_the_mask():
    rng = np.random.default_rng(1)
    for _ in range(20):
        field = ndimage.gaussian_filter(rng.random((40, 50)), 3)
        mask = field > np.quantile(field, 0.6)
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        biggest = ndimage.binary_fill_holes(lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        poly = trace_outline(biggest)
        x, y = poly[:, 0].astype(float), poly[:, 1].astype(float)
        area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        assert area == biggest.sum()  # pixel corners: the polygon's area is the pixel count
        rows, cols = np.nonzero(biggest)
        assert (x.min(), y.min(), x.max(), y.max()) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        top, left, bottom, right, xs, ys = _decode_roi(polygon_roi(poly, "x").tobytes())
        assert (top, left) == (rows.min(), cols.min()) and (xs + left == x).all() and (ys + top == y).all()


def test_crop_rle_matches_full_mask_encoding():
    rng = np.random.default_rng(0)
    crop = rng.random((9, 13)) > 0.4
    full = np.zeros((30, 40), np.uint8)
    full[17:26, 5:18] = crop
    assert crop_rle(crop, (17, 5), 30, 40)["counts"] == coco_mask.encode(np.asfortranarray(full))["counts"].decode()


def test_overlaps_go_to_the_higher_score_and_hidden_objects_are_dropped():
    a = np.ones((10, 10), bool)
    objs = Objects(np.zeros((3, 4), np.float32), np.array([0.5, 0.9, 0.3], np.float32), np.ones(3, np.int64),
                   np.array([[0, 0], [5, 5], [6, 6]]), [a, a, np.ones((3, 3), bool)])
    label, kept = paint_labels(objs, 20, 20)
    assert kept.tolist() == [1, 0]  # the third lies under the second: no pixel left
    assert label[7, 7] == 1 and label[2, 2] == 2 and label[14, 14] == 1 and label.dtype == np.uint16


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    fg = _discs(96, [(20, 20), (60, 70), (80, 15)], 9)
    Image.fromarray((fg * 200 + 10).astype(np.uint8)).save(folder / "a_grey.png")
    rgba = np.dstack([fg * 180, fg * 90, fg * 30 + 5, np.full(fg.shape, 255)]).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "b_rgba.png")
    stack = np.stack([_discs(64, [(16 + 10 * p, 30)], 8) * (1000 + p) for p in range(3)]).astype(np.uint16)
    tifffile.imwrite(folder / "c_stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(folder / "d_float.tif", fg.astype(np.float32) * 3.5 - 1)
    (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (folder / "f_broken.tif").write_bytes(b"II*\x00garbage")
    Image.fromarray(fg.astype(np.uint16)).save(folder / "a_grey_masks.png")  # a label file: not an input


def test_bad_inputs_are_skipped_and_counted(tmp_path):
    _write_inputs(tmp_path / "in")
    model = ComponentDetector()
    summary = run_predict(model, [tmp_path / "in"], out=tmp_path / "out", options=PredictOptions(score_threshold=0.1),
                          progress=False)
    assert summary.predicted == 6  # a, b, three pages of c, d
    assert sorted(Path(f).name for f, _ in summary.failed) == ["e_broken.png", "f_broken.tif"]
    index = json.loads((tmp_path / "out" / "images.json").read_text())
    by_name = {e["name"]: e for e in index["images"]}
    assert [e["id"] for e in index["images"]] == list(range(1, 9))
    assert by_name["c_stack_p002"]["page"] == 2 and "error" in by_name["e_broken"]
    assert by_name["a_grey"]["objects"] == 3 and by_name["b_rgba"]["objects"] == 3
    for p in range(3):
        assert tifffile.imread(tmp_path / "out" / f"c_stack_p{p:03d}_masks.tif").max() == 1
    with open(tmp_path / "out" / "c_stack_p001_objects.csv") as fh:
        assert float(next(csv.DictReader(fh))["mean_intensity"]) == 1001.0  # raw 16-bit values
    assert not list((tmp_path / "out").glob("*broken*"))
    results = json.loads((tmp_path / "out" / "results_coco.json").read_text())
    assert len(results) == 3 + 3 + 3 + 3 and {r["image_id"] for r in results} == {1, 2, 3, 4, 5, 6}


def test_cli_exit_codes_and_no_overwrite(tmp_path, capsys):
    from cupre.models.detector import build_detector
    from cupre.train.weights import save_model

    cfg = DetectorConfig.from_dict(TINY)
    save_model(tmp_path / "model.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((_discs(64, [(30, 30)], 10) * 200).astype(np.uint8)).save(folder / "good.png")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    argv = ["predict", str(tmp_path / "model.safetensors"), str(folder / "*.*"), "-o", str(tmp_path / "out"),
            "--score-threshold", "0.0", "--max-detections", "5", "--device", "cpu"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "good.png" not in err
    label_file = tmp_path / "out" / "good_masks.tif"
    before = label_file.stat().st_mtime_ns

    model = ComponentDetector()
    with pytest.raises(CupreError, match="output file exists"):
        run_predict(model, [folder / "good.png"], out=tmp_path / "out", progress=False)
    assert model.calls == 0 and label_file.stat().st_mtime_ns == before  # failed before any work
    assert cli.main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 1


def test_inputs_errors_and_output_names(tmp_path):
    with pytest.raises(CupreError, match="no such image"):
        expand_inputs([tmp_path / "missing.png"])
    with pytest.raises(CupreError, match="matches no image"):
        expand_inputs([str(tmp_path / "*.png")])
    (tmp_path / "x" / "sub").mkdir(parents=True)
    for rel in ("x/one.png", "x/sub/one.png", "two.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / rel)
    (tmp_path / "x" / "out").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x" / "out" / "one_overlay.png")
    found = expand_inputs([tmp_path / "x", str(tmp_path / "tw*.png")], exclude=tmp_path / "x" / "out")
    assert [name for _, name in found] == ["two", "one", "sub/one"]  # sorted by path, sub-folders mirrored
    with pytest.raises(CupreError, match="same name"):
        expand_inputs([tmp_path / "x" / "one.png", tmp_path / "x" / "sub" / "one.png"])


def test_an_odd_tiff_is_skipped_and_the_run_writes_its_run_files(tmp_path, capsys):
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((_discs(64, [(30, 30)], 10) * 200).astype(np.uint8)).save(folder / "good.png")
    tifffile.imwrite(folder / "five.tif", np.zeros((64, 64, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig", metadata={"axes": "YXS"})
    summary = run_predict(ComponentDetector(), [folder], out=tmp_path / "out", progress=False)
    assert "five.tif" in capsys.readouterr().err
    assert summary.predicted == 1 and [f for f, _ in summary.failed] == [str(folder / "five.tif")]
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert "samples per pixel" in images["failed"][0]["error"]
    assert (tmp_path / "out" / "results_coco.json").is_file() and (tmp_path / "out" / "good_masks.tif").is_file()


def test_an_interrupted_predict_resumes_and_refuses_other_options(tmp_path, monkeypatch, capsys):
    import cupre.inference.predict as predict_module

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        Image.fromarray((_discs(64, [(20 + 5 * k, 30)], 8) * 200).astype(np.uint8)).save(folder / f"im{k}.png")
    run_predict(ComponentDetector(), [folder], out=tmp_path / "straight", progress=False)

    real = predict_module.write_image_outputs
    calls = []

    def dying(paths, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(predict_module, "write_image_outputs", dying)
    with pytest.raises(KeyboardInterrupt):
        run_predict(ComponentDetector(), [folder], out=tmp_path / "out", options=PredictOptions(batch_size=1),
                    progress=False)
    monkeypatch.setattr(predict_module, "write_image_outputs", real)
    assert not (tmp_path / "out" / "results_coco.json").exists()
    with pytest.raises(CupreError, match="another options"):
        run_predict(ComponentDetector(), [folder], out=tmp_path / "out",
                    options=PredictOptions(resume=True, score_threshold=0.9), progress=False)
    model = ComponentDetector()
    summary = run_predict(model, [folder], out=tmp_path / "out", options=PredictOptions(resume=True, batch_size=1),
                          progress=False)
    assert model.calls == 2 and summary.predicted == 4  # only the two unfinished images ran again
    for name in ("results_coco.json", "images.json"):
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "straight" / name).read_text().replace(
            str(tmp_path / "straight"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / ".cupre-predict").exists()
    assert "--resume" in __import__("cupre.cli", fromlist=["ON_INTERRUPT"]).ON_INTERRUPT["predict"]


def test_a_model_that_finds_nothing_is_named_in_a_warning(tmp_path):
    _write_inputs(tmp_path / "in")

    def finds_nothing(images, **kwargs):
        empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                 "masks": torch.zeros(0, 1, 1, 1, dtype=torch.uint8)}
        return [dict(empty, masks=torch.zeros(0, *img.shape[-2:], dtype=torch.uint8)) for img in images]

    with pytest.warns(UserWarning, match="found no object in any of the 6 images at score threshold 0.7"):
        summary = run_predict(finds_nothing, [tmp_path / "in"], out=tmp_path / "out",
                              options=PredictOptions(score_threshold=0.7), progress=False)
    assert summary.predicted == 6 and summary.objects == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_predict(ComponentDetector(), [tmp_path / "in"], out=tmp_path / "out2", progress=False)


class SizedComponentDetector(ComponentDetector):
    """The stand-in with an object size, as a trained detector has: it runs at any scale."""

    object_size = 200.0

    def __call__(self, images, scales=None, select=None):
        return super().__call__(images)


def test_objects_beyond_the_models_rescaling_are_warned_about(tmp_path):
    _write_inputs(tmp_path / "in")
    with pytest.warns(UserWarning, match=r"a_grey.png: by the model's own estimate, its objects are smaller than a "
                                         r"4x rescaling brings to the 200 px"):
        run_predict(SizedComponentDetector(), [tmp_path / "in" / "a_grey.png"], out=tmp_path / "out", progress=False)
    with pytest.warns(UserWarning, match="by the --diameter given"):
        run_predict(SizedComponentDetector(), [tmp_path / "in" / "a_grey.png"], out=tmp_path / "out2",
                    options=PredictOptions(diameter=10), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a size the model can rescale to: no warning
        run_predict(SizedComponentDetector(), [tmp_path / "in" / "a_grey.png"], out=tmp_path / "out3",
                    options=PredictOptions(diameter=150), progress=False)


def test_geojson_keeps_holes_and_parts(tmp_path):
    """A ring-shaped cell is a Polygon with its hole as an inner ring, a cell in two parts a
    MultiPolygon; their areas are exactly the pixel counts."""
    from cupre.inference.writers import label_outlines, write_geojson

    yy, xx = np.mgrid[0:60, 0:80]
    label = np.zeros((60, 80), np.uint16)
    label[((yy - 25) ** 2 + (xx - 25) ** 2 <= 15**2) & ((yy - 25) ** 2 + (xx - 25) ** 2 > 6**2)] = 1  # a ring
    label[5:15, 55:62] = 2
    label[30:52, 60:75] = 2  # id 2 in two parts
    rows = [{"id": k, "score": 1.0, "area": int((label == k).sum()), "centroid_y": 0, "centroid_x": 0, "bbox_x0": 0,
             "bbox_y0": 0, "bbox_x1": 0, "bbox_y1": 0, "mean_intensity": 0, "category": "cell"} for k in (1, 2)]
    assert write_geojson(tmp_path / "o.geojson", label_outlines(label), rows) == 2
    ring, parts = json.loads((tmp_path / "o.geojson").read_text())["features"]
    assert ring["geometry"]["type"] == "Polygon" and len(ring["geometry"]["coordinates"]) == 2
    outer, hole = ring["geometry"]["coordinates"]
    assert shoelace(outer) - shoelace(hole) == (label == 1).sum()
    assert parts["geometry"]["type"] == "MultiPolygon" and len(parts["geometry"]["coordinates"]) == 2
    assert sum(shoelace(p[0]) for p in parts["geometry"]["coordinates"]) == (label == 2).sum()


def test_channel_keeps_one_channel_of_hyperstacks_and_ome_zarr(tmp_path):
    from tests.data.test_lazy import write_ome_zarr

    folder = tmp_path / "in"
    folder.mkdir()
    nuclei, other = _discs(64, [(15, 15), (15, 48), (48, 30)], 6), _discs(64, [(32, 32)], 10)
    stack = np.stack([np.stack([nuclei, other]) for _ in range(2)]).astype(np.uint16) * 1000  # Z, C, Y, X
    tifffile.imwrite(folder / "hyper.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    write_ome_zarr(folder / "plate.zarr", np.stack([other, nuclei, other]).astype(np.uint8) * 200, "cyx")
    Image.fromarray((nuclei * 200).astype(np.uint8)).save(folder / "plain.png")  # no channel axis: read as it is

    with pytest.warns(CupreWarning, match="plain.png: no channel axis to take channel 0 from"):
        summary = run_predict(ComponentDetector(), [folder], out=tmp_path / "c0",
                              options=PredictOptions(score_threshold=0.1, channel=0), progress=False)
    index = json.loads((tmp_path / "c0" / "images.json").read_text())
    pages = {e["name"]: e["page"] for e in index["images"]}
    assert pages == {"hyper_p000": 0, "hyper_p002": 2, "plain": None, "plate_p000": 0}  # (z0, c0), (z1, c0)
    objects = {e["name"]: e["objects"] for e in index["images"]}
    assert objects == {"hyper_p000": 3, "hyper_p002": 3, "plain": 3, "plate_p000": 1}
    assert summary.predicted == 4 and not summary.failed

    summary = run_predict(ComponentDetector(), [folder], out=tmp_path / "c2",
                          options=PredictOptions(score_threshold=0.1, channel=2), progress=False)
    assert [Path(f).name for f, _ in summary.failed] == ["hyper.tif"]
    assert "hyper.tif: channel 2 requested, the image has 2 (axes 'ZC')" in summary.failed[0][1]
    assert sorted(p.name for p in (tmp_path / "c2").glob("*_masks.tif")) == ["plain_masks.tif", "plate_p002_masks.tif"]
    with pytest.raises(CupreError, match="--channel must be 0 or more"):
        run_predict(ComponentDetector(), [folder], out=tmp_path / "bad", options=PredictOptions(channel=-1))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
@pytest.mark.parametrize("norm", ["gn", "frozen_bn"])  # norm weights as parameters, and as buffers
def test_a_bf16_model_keeps_no_view_of_its_file(tmp_path, norm):
    """In bf16 the weights are copies, so nothing may keep the model file's mapping (all
    its pages resident: 176 MB for R50) alive; in fp32 the mapping is the weights."""
    import gc

    from cupre.inference.predict import load_model
    from cupre.models.detector import build_detector, weights_for_inference
    from cupre.models.loading import build_from_file
    from cupre.train.weights import save_model

    cfg = DetectorConfig.from_dict({**TINY, "norm": norm})
    path = tmp_path / "model.safetensors"
    save_model(path, build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])

    def mapped() -> bool:
        gc.collect()
        return any(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())

    net, _ = load_model(path, device=torch.device("cpu"), precision="bf16")
    assert not mapped() and {t.dtype for t in net.state_dict().values()} == {torch.bfloat16, torch.float32}
    # converted as it was read, the same tensors as the model converted in memory
    want = weights_for_inference(build_from_file(path)[0], "bf16").state_dict()
    got = net.state_dict()
    assert want.keys() == got.keys()
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    net, _ = load_model(path, device=torch.device("cpu"), precision="fp32")
    assert mapped()


def test_small_overlays_are_enlarged_and_ids_drawn_only_where_they_fit(tmp_path):
    """A 100 px image is drawn at 700 px (factor 7); an id is written inside a large
    object, not over a 3 px one."""
    label = np.zeros((100, 100), np.uint16)
    label[10:40, 10:40] = 1  # 30 px: 210 px drawn
    label[70:73, 70:73] = 2  # 3 px: 21 px drawn, too small for its id at factor 1, fits at 7
    label[90:91, 90:91] = 3  # 1 px: 7 px drawn, never an id
    rows = [{"id": k, "centroid_x": float(np.nonzero(label == k)[1].mean()),
             "centroid_y": float(np.nonzero(label == k)[0].mean()),
             "bbox_x0": int(np.nonzero(label == k)[1].min()), "bbox_x1": int(np.nonzero(label == k)[1].max()) + 1,
             "bbox_y0": int(np.nonzero(label == k)[0].min()), "bbox_y1": int(np.nonzero(label == k)[0].max()) + 1}
            for k in (1, 2, 3)]
    writers.write_overlay(tmp_path / "o.png", np.full((100, 100, 3), 80, np.uint8), label, rows)
    with Image.open(tmp_path / "o.png") as im:
        drawn = np.asarray(im)
    assert writers.overlay_factor(100, 100) == 7 and drawn.shape == (700, 700, 3)
    rgb = drawn.astype(int)  # id text is white (antialiased); outlines are coloured
    white = (rgb.min(axis=2) > 180) & (rgb.max(axis=2) - rgb.min(axis=2) < 40)
    assert white[70:280, 70:280].any() and white[490:511, 490:511].any() and not white[630:637, 630:637].any()
    # the object itself is not filled: its inside keeps the image's grey away from the text
    assert (drawn[100:120, 100:120] == 80).all()
    assert not writers.id_fits(rows[2], "3") and writers.id_fits(rows[0], "1")
