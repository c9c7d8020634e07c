"""`cupre evaluate`: end to end through cupre.cli.main."""

from __future__ import annotations

import json

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
    import numpy as np
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
