"""The LIVECell-protocol evaluator, results loading/checking and masks_to_results."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from faster_coco_eval.core import mask as fce_mask
from pycocotools import mask as pycoco_mask

from cupre.errors import CupreError, CupreWarning
from cupre.evaluation.livecell import FIGURES, evaluate, format_table
from cupre.evaluation.results import load_results
from cupre.masks import masks_to_results

H, W = 96, 128


def ellipse_mask(cy: float, cx: float, ry: float, rx: float, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.uint8)


def rle_of(mask: np.ndarray) -> dict:
    rle = pycoco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def annotation(ann_id: int, image_id: int, mask: np.ndarray, category_id: int = 1, iscrowd: int = 0) -> dict:
    rle = rle_of(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": float(mask.sum()),
        "bbox": [float(v) for v in pycoco_mask.toBbox(rle)],
        "iscrowd": iscrowd,
    }


def make_gt(seed: int, n_images: int = 3, n_objects: int = 40, cell_types: list[str] | None = None) -> dict:
    """Ellipses of radius 2..22 px (areas across the small/medium/large ranges of both protocols)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for image_id in range(1, n_images + 1):
        image = {"id": image_id, "height": H, "width": W, "file_name": f"im{image_id}.png"}
        if cell_types:
            image["cell_type"] = cell_types[(image_id - 1) % len(cell_types)]
        images.append(image)
        for _ in range(n_objects):
            ry, rx = rng.uniform(2, 22, size=2)
            mask = ellipse_mask(rng.uniform(0, H), rng.uniform(0, W), ry, rx)
            if mask.sum() >= 4:
                anns.append(annotation(len(anns) + 1, image_id, mask, category_id=int(rng.integers(1, 3))))
    cats = [{"id": 1, "name": "round"}, {"id": 2, "name": "oval"}]
    return {"images": images, "annotations": anns, "categories": cats}


def gt_as_results(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "bbox": a["bbox"],
         "segmentation": a["segmentation"]}
        for a in gt["annotations"] if not a.get("iscrowd")
    ]


def perturbed_results(gt: dict, seed: int, n_false: int = 130) -> list[dict]:
    """Jittered masks (boxes from the jittered masks), 20% dropped, ``n_false`` false positives per image."""
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        mask = fce_mask.decode(a["segmentation"])
        mask = np.roll(mask, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        if rng.random() < 0.5:
            mask = np.maximum(mask, np.roll(mask, 1, axis=int(rng.integers(0, 2))))
        ys, xs = np.nonzero(mask)
        box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
        label = a["category_id"] if rng.random() < 0.8 else 3 - a["category_id"]
        out += masks_to_results(a["image_id"], np.array(box), [rng.uniform(0.2, 1.0)], [label], mask[None])
    for image in gt["images"]:
        for _ in range(n_false):
            mask = ellipse_mask(rng.uniform(0, H), rng.uniform(0, W), *rng.uniform(2, 15, size=2))
            if mask.sum() == 0:
                continue
            ys, xs = np.nonzero(mask)
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
            out += masks_to_results(image["id"], np.array(box), [rng.uniform(0.0, 0.9)], [int(rng.integers(1, 3))],
                                    mask[None])
    return out


def pycocotools_precision(gt: dict, results: list[dict], iou_type: str, *, agnostic: bool, livecell: bool):
    """The reference: pycocotools' COCOeval with the protocol's params set on its Params."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = copy.deepcopy(gt), copy.deepcopy(results)
    if agnostic:
        for a in gt["annotations"]:
            a["category_id"] = 1
        gt["categories"] = [{"id": 1, "name": "cell"}]
        for r in results:
            r["category_id"] = 1
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        if livecell:
            ev.params.maxDets = [100, 500, 2000]
            ev.params.areaRng = [[0, 1e10], [0, 18**2], [18**2, 31**2], [31**2, 1e10]]
            ev.params.areaRngLbl = ["all", "small", "medium", "large"]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.eval["precision"], ev.stats


def mean_valid(a: np.ndarray) -> float:
    return float(np.mean(a[a > -1])) if (a > -1).any() else -1.0


@pytest.fixture(scope="module")
def gt() -> dict:
    return make_gt(seed=0, cell_types=["A172", "BV2"])


@pytest.fixture(scope="module")
def results(gt) -> list[dict]:
    return perturbed_results(gt, seed=1)


@pytest.mark.parametrize("protocol", ["livecell", "coco"])
def test_ground_truth_as_results_scores_one(gt, protocol):
    metrics = evaluate(gt, gt_as_results(gt), protocol=protocol)
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(FIGURES)
        for name in FIGURES:
            # no object above 96^2 px: COCO's APl is undefined (-1)
            expected = -1.0 if (protocol, name) == ("coco", "APl") else 1.0
            assert metrics[iou_type][name] == pytest.approx(expected), (iou_type, name)
    assert set(metrics["per_cell_type"]) == {"A172", "BV2"}
    if protocol == "coco":
        assert set(metrics["per_category"]) == {"round", "oval"}
    else:
        assert metrics["per_category"] == {}


def test_livecell_ap_equals_pycocotools_precision_at_2000(gt, results):
    per_image = np.bincount([r["image_id"] for r in results])
    assert per_image.max() > 100  # maxDets matters
    metrics = evaluate(gt, results, protocol="livecell")
    t50, t75 = 0, 5
    for iou_type in ("bbox", "segm"):
        precision, _ = pycocotools_precision(gt, results, iou_type, agnostic=True, livecell=True)
        at = precision[..., 2]  # maxDets index of 2000
        expected = {
            "AP": mean_valid(at[:, :, :, 0]), "AP50": mean_valid(at[t50, :, :, 0]),
            "AP75": mean_valid(at[t75, :, :, 0]), "APs": mean_valid(at[:, :, :, 1]),
            "APm": mean_valid(at[:, :, :, 2]), "APl": mean_valid(at[:, :, :, 3]),
        }
        for name, value in expected.items():
            assert value > 0
            assert metrics[iou_type][name] == pytest.approx(value, abs=1e-6), (iou_type, name)
        at_100 = mean_valid(precision[:, :, :, 0, 0])
        assert abs(metrics[iou_type]["AP"] - at_100) > 1e-3  # read at 2000, not at 100


def test_coco_protocol_equals_pycocotools_summary(gt, results):
    metrics = evaluate(gt, results, protocol="coco")
    for iou_type in ("bbox", "segm"):
        precision, stats = pycocotools_precision(gt, results, iou_type, agnostic=False, livecell=False)
        got = [metrics[iou_type][name] for name in FIGURES]
        assert got == pytest.approx(list(stats[:6]), abs=1e-6)
        for k, name in enumerate(["round", "oval"]):
            assert metrics["per_category"][name][iou_type] == pytest.approx(mean_valid(precision[:, :, k, 0, 2]))


def single_object_case(side: int) -> tuple[dict, list[dict]]:
    mask = np.zeros((H, W), np.uint8)
    mask[30 : 30 + side, 40 : 40 + side] = 1
    gt = {"images": [{"id": 1, "height": H, "width": W}], "annotations": [annotation(1, 1, mask)],
          "categories": [{"id": 1, "name": "cell"}]}
    return gt, gt_as_results(gt)


def test_livecell_area_ranges_put_20px_object_in_medium():
    gt, results = single_object_case(20)  # 400 px: medium for LIVECell (324..961), small for COCO (< 1024)
    livecell = evaluate(gt, results, protocol="livecell")
    coco = evaluate(gt, results, protocol="coco")
    for iou_type in ("bbox", "segm"):
        assert (livecell[iou_type]["APs"], livecell[iou_type]["APm"], livecell[iou_type]["APl"]) == (-1, 1, -1)
        assert (coco[iou_type]["APs"], coco[iou_type]["APm"], coco[iou_type]["APl"]) == (1, -1, -1)
    gt, results = single_object_case(40)  # 1600 px: large for LIVECell, medium for COCO
    assert evaluate(gt, results, protocol="livecell")["segm"]["APl"] == 1
    assert evaluate(gt, results, protocol="coco")["segm"]["APl"] == -1


def test_class_agnostic_under_livecell_only(gt):
    wrong = [dict(r, category_id=3 - r["category_id"]) for r in gt_as_results(gt)]
    assert evaluate(gt, wrong, protocol="livecell", breakdown=False)["segm"]["AP"] == pytest.approx(1.0)
    assert evaluate(gt, wrong, protocol="coco")["segm"]["AP"] < 0.05  # only chance overlaps match
    one, results = single_object_case(12)
    one["categories"].append({"id": 2, "name": "other"})
    results = [dict(r, category_id=2) for r in results]
    coco = evaluate(one, results, protocol="coco")
    assert coco["bbox"]["AP"] == 0.0 and coco["segm"]["AP"] == 0.0
    assert coco["per_category"] == {"cell": {"bbox": 0.0, "segm": 0.0}, "other": {"bbox": -1.0, "segm": -1.0}}
    assert evaluate(one, results, protocol="livecell")["bbox"]["AP"] == pytest.approx(1.0)


def test_crowd_regions_are_ignored():
    gt, results = single_object_case(12)
    crowd = np.zeros((H, W), np.uint8)
    crowd[60:90, 60:120] = 1
    crowd_ann = annotation(2, 1, crowd, category_id=7, iscrowd=1)  # another class: must survive the mapping
    runs = fce_mask.decode(crowd_ann["segmentation"]).ravel(order="F")
    crowd_ann["segmentation"] = {"size": [H, W], "counts": _runs(runs)}  # uncompressed RLE, as in COCO
    gt["annotations"].append(crowd_ann)
    gt["categories"].append({"id": 7, "name": "clump"})
    inside = np.zeros((H, W), np.uint8)
    inside[65:75, 70:80] = 1
    fps = masks_to_results(1, np.array([[70, 65, 80, 75]]), [0.99], [1], inside[None])  # outranks the true one
    metrics = evaluate(gt, results + fps, protocol="livecell")
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)
    gt["annotations"][-1]["iscrowd"] = 0  # the same region as a normal object: now a false positive
    gt["annotations"][-1]["segmentation"] = rle_of(crowd)
    assert evaluate(gt, results + fps, protocol="livecell")["segm"]["AP"] < 0.9


def _runs(flat: np.ndarray) -> list[int]:
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], change])).tolist()


def test_per_cell_type_breakdown(gt):
    a172 = {img["id"] for img in gt["images"] if img["cell_type"] == "A172"}
    results = [r for r in gt_as_results(gt) if r["image_id"] in a172]
    metrics = evaluate(gt, results)
    assert metrics["per_cell_type"]["A172"] == {"bbox": pytest.approx(1.0), "segm": pytest.approx(1.0)}
    assert metrics["per_cell_type"]["BV2"] == {"bbox": 0.0, "segm": 0.0}
    assert 0.0 < metrics["segm"]["AP"] < 1.0
    assert evaluate(gt, results, breakdown=False)["per_cell_type"] == {}


def test_results_without_masks_give_bbox_only(gt):
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in gt_as_results(gt)]
    with pytest.warns(CupreWarning, match="no segmentation"):
        metrics = evaluate(gt, results)
    assert "segm" not in metrics and metrics["bbox"]["AP"] == pytest.approx(1.0)


def test_no_detections_score_zero(gt):
    metrics = evaluate(gt, [])
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0
    assert metrics["per_cell_type"]["A172"] == {"bbox": 0.0, "segm": 0.0}


def test_evaluate_does_not_modify_inputs(gt, results):
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    evaluate(gt, results)
    assert gt == gt_before and results == results_before


def test_format_table_in_percent():
    gt, results = single_object_case(20)
    table = format_table(evaluate(gt, results))
    assert "livecell" in table and "2000" in table
    segm_row = next(line for line in table.splitlines() if line.startswith("segm"))
    assert segm_row.split()[1:] == ["100.0", "100.0", "100.0", "-", "100.0", "-"]


# ---------------------------------------------------------------- results files


def write(tmp_path, obj, name="results.json") -> str:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_load_results_normalises(tmp_path, gt):
    mask = fce_mask.decode(gt["annotations"][0]["segmentation"])
    runs = _runs(mask.ravel(order="F"))
    entries = [
        {"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": {"size": [H, W], "counts": runs}},
        {"image_id": 1, "category_id": 1, "score": 0.4, "bbox": [1, 2, 10, 10],
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
    ]
    loaded = load_results(write(tmp_path, entries), gt)
    assert isinstance(loaded[0]["segmentation"]["counts"], str)
    assert np.array_equal(fce_mask.decode(loaded[0]["segmentation"]), mask)
    assert loaded[0]["bbox"] == pytest.approx(gt["annotations"][0]["bbox"])  # box taken from the mask
    assert fce_mask.area(loaded[1]["segmentation"]) > 150


def without(entry: dict, *keys: str) -> dict:
    return {k: v for k, v in entry.items() if k not in keys}


BAD_CASES = {  # name: (content from a good entry, words the error must contain)
    "not json": (lambda e: "[{'image_id': 1", "not valid JSON"),
    "not a list": (lambda e: {"annotations": [e]}, "JSON list"),
    "missing score": (lambda e: [e, without(e, "score")], "missing key(s) score"),
    "missing geometry": (lambda e: [without(e, "bbox", "segmentation")], "bbox or segmentation"),
    "unknown image": (lambda e: [{**e, "image_id": 999}], "image_id 999"),
    "bad counts": (lambda e: [{**e, "segmentation": {"size": [H, W], "counts": "zz!!"}}], "RLE"),
    "short counts": (lambda e: [e, {**e, "segmentation": {"size": [H, W], "counts": "0"}}], "RLE"),
    "size mismatch": (lambda e: [{**e, "segmentation": {**e["segmentation"], "size": [H, W + 1]}}], "size"),
    "bbox three": (lambda e: [{**e, "bbox": [1, 2, 3]}], "bbox"),
    "bbox text": (lambda e: [{**e, "bbox": [1, 2, "a", 4]}], "bbox"),
    "nan score": (lambda e: [{**e, "score": float("nan")}], "score"),
    "inf score": (lambda e: [{**e, "score": float("inf")}], "score"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_results_name_the_file(tmp_path, gt, case):
    make, expected = BAD_CASES[case]
    path = write(tmp_path, make(gt_as_results(gt)[0]))
    with pytest.raises(CupreError) as info:
        load_results(path, gt)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_missing_results_file(tmp_path, gt):
    with pytest.raises(CupreError, match="not found"):
        load_results(tmp_path / "nope.json", gt)


# ---------------------------------------------------------------- masks_to_results


def test_masks_to_results_round_trip():
    masks = torch.zeros(3, H, W)
    masks[0, 5:15, 10:30] = 0.9
    masks[1, 40:80, 60:70] = 0.7
    masks[2, 0:4, 0:4] = 0.3  # below 0.5: empty mask
    boxes = torch.tensor([[10.0, 5.0, 30.0, 15.0], [60.0, 40.0, 70.0, 80.0], [0.0, 0.0, 4.0, 4.0]])
    out = masks_to_results(7, boxes, torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 2, 1]), masks[:, None],
                           category_ids={1: 11, 2: 22})
    assert [r["category_id"] for r in out] == [11, 22, 11]
    assert out[1]["bbox"] == pytest.approx([60.0, 40.0, 10.0, 40.0]) and out[0]["score"] == pytest.approx(0.9)
    json.dumps(out)  # plain JSON types
    for r, m in zip(out, masks):
        assert np.array_equal(fce_mask.decode(r["segmentation"]), (m > 0.5).numpy().astype(np.uint8))
    as_list = masks_to_results(7, boxes, [0.9, 0.8, 0.1], [1, 2, 1], masks[:, None], category_ids=[11, 22])
    assert [r["category_id"] for r in as_list] == [11, 22, 11]  # label l -> category_ids[l - 1]
    with pytest.raises(ValueError):
        masks_to_results(7, boxes, [0.9, 0.8, 0.1], [1, 3, 1], masks, category_ids=[11, 22])
    assert masks_to_results(1, np.zeros((0, 4)), [], [], np.zeros((0, H, W), bool)) == []
    no_masks = masks_to_results(1, boxes.numpy(), [0.5, 0.5, 0.5], [1, 1, 1], None)
    assert all("segmentation" not in r for r in no_masks) and math.isclose(no_masks[0]["bbox"][2], 20.0)
