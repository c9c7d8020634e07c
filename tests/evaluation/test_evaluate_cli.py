"""`cupre evaluate`: end to end through cupre.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cupre.cli import main
from tests.evaluation.test_livecell import gt_as_results, make_gt, perturbed_results


@pytest.fixture()
def files(tmp_path):
    gt = make_gt(seed=3, n_images=2, n_objects=25, cell_types=["SHSY5Y"])
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(perturbed_results(gt, seed=4, n_false=30)))
    return gt, gt_path, dt_path


def test_evaluate_writes_metrics(files, tmp_path, capsys):
    gt, gt_path, dt_path = files
    out = tmp_path / "run" / "metrics.json"
    assert main(["evaluate", "--gt", str(gt_path), "--dt", str(dt_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "livecell protocol" in printed and "segm" in printed and "SHSY5Y" in printed
    metrics = json.loads(out.read_text())
    assert metrics["protocol"] == "livecell"
    assert 0.0 < metrics["segm"]["AP"] < 1.0 and 0.0 < metrics["bbox"]["AP50"] <= 1.0
    assert f"{100 * metrics['segm']['AP']:.1f}" in printed
    assert set(metrics["per_cell_type"]) == {"SHSY5Y"}
    assert not list(out.parent.glob(".*.tmp"))


def test_evaluate_coco_protocol_perfect(files, tmp_path, capsys):
    gt, gt_path, _ = files
    dt_path = tmp_path / "perfect.json"
    dt_path.write_text(json.dumps(gt_as_results(gt)))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", str(gt_path), "--dt", str(dt_path), "--protocol", "coco", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["protocol"] == "coco" and metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert set(metrics["per_category"]) == {"round", "oval"}
    assert "100.0" in capsys.readouterr().out


def test_evaluate_bad_results_is_one_line_error(files, tmp_path, capsys):
    _, gt_path, _ = files
    dt_path = tmp_path / "broken.json"
    dt_path.write_text('[{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [1, 2]}]')
    assert main(["evaluate", "--gt", str(gt_path), "--dt", str(dt_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cupre: error:") and str(dt_path) in err and "bbox" in err and "\n" not in err


def test_evaluate_bad_ground_truth(files, tmp_path, capsys):
    _, _, dt_path = files
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"images": []}))
    assert main(["evaluate", "--gt", str(gt_path), "--dt", str(dt_path)]) == 2
    assert str(gt_path) in capsys.readouterr().err


def test_evaluate_against_a_dataset_folder(tmp_path, capsys):
    """A label-image folder as ground truth (read through cupre.data), perfect results."""

    import tifffile

    from cupre.data.convert import dataset_to_coco
    from cupre.data.formats import open_dataset

    folder = tmp_path / "labels"
    folder.mkdir()
    for name in ("a", "b"):
        labels = np.zeros((48, 64), np.uint16)
        labels[4:14, 5:20], labels[20:40, 30:50], labels[30:34, 2:6] = 1, 2, 3
        tifffile.imwrite(folder / f"{name}.tif", (labels * 50).astype(np.uint8))
        tifffile.imwrite(folder / f"{name}_masks.tif", labels)
    gt = dataset_to_coco(open_dataset(folder))
    assert len(gt["annotations"]) == 6
    dt_path = tmp_path / "results.json"
    dt_path.write_text(json.dumps(gt_as_results(gt)))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", str(folder), "--dt", str(dt_path), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)
    # sizes 150 and 16 px are small, 400 px is medium, nothing is large
    assert metrics["segm"]["APs"] == pytest.approx(1.0) and metrics["segm"]["APl"] == -1


def _cut_rle_files(tmp_path):

    from pycocotools import mask as coco_mask

    a = np.zeros((50, 60), np.uint8, order="F")
    a[10:20, 5:30] = 1
    a[30:40, 40:55] = 1
    counts = coco_mask.encode(a)["counts"].decode()
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 10, 25, 10], "area": 250, "iscrowd": 0,
           "segmentation": {"size": [50, 60], "counts": counts[: len(counts) // 2]}}  # a cut RLE string
    poly = {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 4, "iscrowd": 0,
            "segmentation": [[1, 1, 4, 4]]}  # a 2-point polygon
    good = {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 10, 25, 10], "area": 250, "iscrowd": 0,
            "segmentation": {"size": [50, 60], "counts": counts}}
    gt = {"images": [{"id": 1, "height": 50, "width": 60, "file_name": "x.png"}],
          "categories": [{"id": 1, "name": "cell"}], "annotations": [ann, poly, good]}
    dt = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [5, 10, 25, 10],
           "segmentation": {"size": [50, 60], "counts": counts}},
          {"image_id": 1, "category_id": 1, "score": 0.8, "bbox": [5, 10, 25, 10],
           "segmentation": {"size": [50, 60], "counts": counts[:-3]}}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    return tmp_path / "gt.json", tmp_path / "dt.json"


def test_truncated_rle_and_two_point_polygons_are_skipped_within_a_second(tmp_path, capsys):
    import time

    gt, dt = _cut_rle_files(tmp_path)
    start = time.perf_counter()
    with pytest.warns(Warning) as record:
        assert main(["evaluate", "--gt", str(gt), "--dt", str(dt), "--out", str(tmp_path / "m.json")]) == 0
    assert time.perf_counter() - start < 1.0  # this ground truth hung the evaluator before it was checked
    said = " ".join(str(w.message) for w in record)
    assert "annotations[0] (id 1): RLE counts string covers 1270 pixels" in said
    assert "annotations[1] (id 2): degenerate polygon" in said and "result #1" in said
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["segm"]["AP"] == pytest.approx(1.0)  # the one good object, found by the one good result
    assert main(["evaluate", "--gt", str(gt), "--dt", str(dt), "--strict"]) == 2
    assert "cupre: error:" in capsys.readouterr().err


def test_convert_skips_a_cut_rle_instead_of_inventing_an_object(tmp_path):
    from PIL import Image

    from cupre.data.coco import CocoDataset

    gt, _ = _cut_rle_files(tmp_path)
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(tmp_path / "x.png")
    with pytest.warns(Warning, match="RLE counts string covers 1270 pixels"):
        dataset = CocoDataset(gt)
    _, target = dataset[0]
    assert len(target["masks"]) == 1 and int(target["masks"][0].sum()) == 400  # only the good object


def _predict_run(folder, gt, image_ids: list[int], names: list[str]):
    """Results in a `cupre predict` folder: the ground truth's own masks for ``image_ids``,
    numbered 1..n as predict numbers its inputs, with the images.json it writes."""
    folder.mkdir()
    results, entries = [], []
    for new_id, (old_id, name) in enumerate(zip(image_ids, names), start=1):
        results += [{**r, "image_id": new_id} for r in gt_as_results(gt) if r["image_id"] == old_id]
        entries.append({"id": new_id, "file": f"/data/{name}", "page": None, "name": name.rsplit(".", 1)[0],
                        "height": 64, "width": 64, "objects": 1})
    (folder / "results_coco.json").write_text(json.dumps(results))
    (folder / "images.json").write_text(json.dumps({"images": entries, "categories": [], "failed": []}))


def test_evaluate_pairs_a_predict_run_with_the_ground_truth_by_image_name(files, tmp_path, capsys):
    """Predictions for the 2nd image only, numbered 1 by predict: paired by name, not by id."""
    gt = make_gt(seed=3, n_images=3, n_objects=25)
    gt_path = tmp_path / "gt3.json"
    gt_path.write_text(json.dumps(gt))
    run = tmp_path / "pred"
    _predict_run(run, gt, [2, 3], ["im2.png", "other.png"])
    with pytest.warns(Warning) as record:
        assert main(["evaluate", "--gt", str(gt_path), "--dt", str(run), "--out", str(tmp_path / "m.json")]) == 0
    said = " ".join(str(w.message) for w in record)
    assert "1 image(s) not in the ground truth, left out: other" in said
    assert "2 image(s) without results (count as all missed): im1, im3" in said
    ap = json.loads((tmp_path / "m.json").read_text())["segm"]["AP"]
    # every object of im2 found exactly, none of im1 and im3: AP is (about) im2's share of the objects
    share = sum(a["image_id"] == 2 for a in gt["annotations"]) / len(gt["annotations"])
    assert ap == pytest.approx(share, abs=0.02)
    # by id the same results would have been scored against im1: AP near 0
    (run / "images.json").unlink()
    assert main(["evaluate", "--gt", str(gt_path), "--dt", str(run), "--out", str(tmp_path / "byid.json")]) == 0
    assert json.loads((tmp_path / "byid.json").read_text())["segm"]["AP"] < 0.05


def test_evaluate_refuses_results_of_other_images(files, tmp_path, capsys):
    gt, gt_path, _ = files
    run = tmp_path / "pred"
    _predict_run(run, gt, [1, 2], ["x.png", "y.png"])
    assert main(["evaluate", "--gt", str(gt_path), "--dt", str(run / "results_coco.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "none of its 2 image(s) (x, y) is in the ground truth (im1, im2)" in err and "\n" not in err
