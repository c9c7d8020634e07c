"""COCO AP under the LIVECell protocol (Edlund et al. 2021), with faster-coco-eval.

LIVECell images hold up to a few thousand cells, so its protocol differs from COCO's:

* class-agnostic: every ground-truth and result category is mapped to one "cell"
  category before matching (crowd regions keep ``iscrowd`` and stay ignore regions);
* up to 2000 detections per image (``maxDets = [100, 500, 2000]``) and **every** AP
  figure is read at 2000 detections;
* cell-sized area ranges: small < 18^2 px, medium 18^2..31^2 px, large > 31^2 px.

The ``coco`` protocol is the standard one (class-aware, ``maxDets = [1, 10, 100]``,
areas 32^2 / 96^2, figures at 100 detections).

The figures come straight from the accumulated precision array
``precision[T, R, K, A, M]`` (IoU thresholds 0.50:0.05:0.95, 101 recall points,
categories, area ranges, maxDets): AP is the mean of its valid entries (> -1) at the
last maxDets index, over all T, R, K for area "all"; AP50/AP75 keep one T; APs/APm/APl
keep one A. A figure with no valid entry (e.g. no large object in the ground truth)
is ``-1``. As in detectron2, mask AP uses each detection's mask area (its box is
dropped) to place unmatched detections in an area range.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from cupre.errors import CupreError, CupreWarning
from cupre.masks import segmentation_to_rle

FIGURES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")
AGNOSTIC_CATEGORY = {"id": 1, "name": "cell", "supercategory": "cell"}


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: class handling, detection budget and area ranges."""

    name: str
    class_agnostic: bool
    max_dets: tuple[int, ...]
    small: float
    large: float

    @property
    def area_ranges(self) -> dict[str, list[float]]:
        return {
            "all": [0.0, 1e10],
            "small": [0.0, self.small],
            "medium": [self.small, self.large],
            "large": [self.large, 1e10],
        }


PROTOCOLS = {
    "livecell": Protocol("livecell", class_agnostic=True, max_dets=(100, 500, 2000), small=18**2, large=31**2),
    "coco": Protocol("coco", class_agnostic=False, max_dets=(1, 10, 100), small=32**2, large=96**2),
}


def evaluate(
    gt: dict,
    results: list[dict],
    *,
    protocol: str = "livecell",
    iou_types: Sequence[str] = IOU_TYPES,
    breakdown: bool = True,
) -> dict:
    """COCO AP of ``results`` against ``gt`` under a protocol.

    Args:
        gt: COCO instances dict (``images`` with ``id``/``height``/``width`` and
            optionally ``cell_type``; ``annotations``; ``categories``). Not modified.
        results: COCO result dicts, as from :func:`~cupre.evaluation.results.load_results`
            or :func:`~cupre.masks.masks_to_results`. Not modified.
        protocol: ``"livecell"`` or ``"coco"``.
        iou_types: any of ``"bbox"``, ``"segm"``. ``segm`` is skipped, with a
            :class:`CupreWarning`, when a result or a ground-truth object has no mask.
        breakdown: also compute per-category (coco protocol, > 1 category) and
            per-cell-type (when images carry ``cell_type``) AP.

    Returns:
        ``{"protocol": name, "bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"},
        "segm": {...}, "per_category": {name: {"bbox": AP, "segm": AP}},
        "per_cell_type": {type: {"bbox": AP, "segm": AP}}}``; figures are floats in
        [0, 1], or -1 where undefined (no ground truth in that range). The two
        breakdowns are empty dicts when they do not apply.
    """
    if protocol not in PROTOCOLS:
        raise CupreError(f"unknown evaluation protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    proto = PROTOCOLS[protocol]
    iou_types = _usable_iou_types(gt, results, iou_types)
    coco_gt = _silent(COCO, _prepare_gt(gt, proto))
    metrics: dict = {"protocol": protocol, "per_category": {}, "per_cell_type": {}}
    groups = _cell_type_groups(gt) if breakdown else {}
    categories = coco_gt.loadCats(sorted(coco_gt.getCatIds()))
    for iou_type in iou_types:
        coco_dt = _silent(coco_gt.loadRes, _prepare_results(results, iou_type, proto))
        precision = _precision(coco_gt, coco_dt, iou_type, proto)
        metrics[iou_type] = figures_from_precision(precision, max_det_index=-1)
        if breakdown and not proto.class_agnostic and len(categories) > 1:
            for k, name in enumerate(_category_names(categories)):
                metrics["per_category"].setdefault(name, {})[iou_type] = _mean_valid(precision[:, :, k, 0, -1])
        for cell_type, image_ids in groups.items():
            sub = _precision(coco_gt, coco_dt, iou_type, proto, image_ids=image_ids)
            metrics["per_cell_type"].setdefault(cell_type, {})[iou_type] = _mean_valid(sub[:, :, :, 0, -1])
    return metrics


def figures_from_precision(precision: np.ndarray, *, max_det_index: int = -1) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl from an accumulated precision array.

    Args:
        precision: ``TxRxKxAxM`` array from COCOeval's ``eval["precision"]`` with the
            10 standard IoU thresholds and area ranges ordered all, small, medium, large.
        max_det_index: which maxDets entry (M index) to read every figure at.
    """
    at = precision[..., max_det_index]  # T x R x K x A
    iou_thrs = np.linspace(0.5, 0.95, 10)
    t50, t75 = (int(np.argmin(np.abs(iou_thrs - t))) for t in (0.5, 0.75))
    return {
        "AP": _mean_valid(at[:, :, :, 0]),
        "AP50": _mean_valid(at[t50, :, :, 0]),
        "AP75": _mean_valid(at[t75, :, :, 0]),
        "APs": _mean_valid(at[:, :, :, 1]),
        "APm": _mean_valid(at[:, :, :, 2]),
        "APl": _mean_valid(at[:, :, :, 3]),
    }


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _silent(fn, *args, **kwargs):
    """Call a pycocotools-style function with its stdout chatter swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _precision(
    coco_gt: COCO, coco_dt: COCO, iou_type: str, proto: Protocol, image_ids: list[int] | None = None
) -> np.ndarray:
    """Run faster-coco-eval with the protocol's parameters; return ``precision[T,R,K,A,M]``."""
    ranges = proto.area_ranges
    evaluator = COCOeval_faster(
        coco_gt,
        coco_dt,
        iouType=iou_type,
        ranges={k: v for k, v in ranges.items() if k != "all"},
        print_function=lambda *a, **k: None,
    )
    params = evaluator.params
    params.maxDets = list(proto.max_dets)
    params.areaRng = list(ranges.values())
    params.areaRngLbl = list(ranges)
    if image_ids is not None:
        params.imgIds = sorted(image_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _silent(evaluator.evaluate)
        _silent(evaluator.accumulate)
    precision = np.asarray(evaluator.eval["precision"])
    expected = (len(params.iouThrs), len(params.recThrs), len(params.catIds), len(ranges), len(proto.max_dets))
    if precision.shape != expected:  # guards the [T, R, K, A, M] reading above
        raise RuntimeError(f"unexpected precision array shape {precision.shape}, expected {expected}")
    return precision


def _usable_iou_types(gt: dict, results: list[dict], iou_types: Sequence[str]) -> list[str]:
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise CupreError(f"unknown IoU type(s) {unknown} (choose from {', '.join(IOU_TYPES)})")
    out = list(dict.fromkeys(iou_types))
    if "segm" in out:
        checks = (
            (sum("segmentation" not in r for r in results), f"of {len(results)} results have no segmentation"),
            (sum(not a.get("segmentation") for a in gt.get("annotations", [])), "ground-truth objects have no mask"),
            (sum(not (i.get("height") and i.get("width")) for i in gt.get("images", [])), "images have no size"),
        )
        problems = [f"{count} {text}" for count, text in checks if count]
        if problems:
            warnings.warn(f"{'; '.join(problems)}: evaluating bbox only", CupreWarning, stacklevel=3)
            out.remove("segm")
    return out


def _prepare_gt(gt: dict, proto: Protocol) -> dict:
    """A copy of ``gt`` ready for COCOeval: ids 1..N, ``area``/``iscrowd`` filled, classes mapped."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise CupreError(f"ground truth has no '{key}' list (expected a COCO instances dict)")
    images = [dict(img) for img in gt["images"]]
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in images}
    annotations = []
    for new_id, ann in enumerate(gt["annotations"], start=1):
        ann = dict(ann, id=new_id, iscrowd=int(ann.get("iscrowd", 0) or 0))
        if "area" not in ann:
            ann["area"] = _area(ann, *sizes.get(ann["image_id"], (None, None)))
        if proto.class_agnostic:
            ann["category_id"] = AGNOSTIC_CATEGORY["id"]
        annotations.append(ann)
    categories = [dict(AGNOSTIC_CATEGORY)] if proto.class_agnostic else [dict(c) for c in gt["categories"]]
    return {"images": images, "annotations": annotations, "categories": categories}


def _area(ann: dict, height: int | None, width: int | None) -> float:
    """Mask area of a ground-truth object without ``area`` (its box area when it has no mask)."""
    from pycocotools import mask as pycoco_mask

    if ann.get("segmentation") and height and width:
        return float(pycoco_mask.area(segmentation_to_rle(ann["segmentation"], height, width)))
    _, _, w, h = ann["bbox"]
    return float(w * h)


def _prepare_results(results: list[dict], iou_type: str, proto: Protocol) -> list[dict]:
    """Copies of the results for one IoU type: the mask alone for segm, the box alone for bbox."""
    keep = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
    out = []
    for r in results:
        r = {k: r[k] for k in keep}
        if proto.class_agnostic:
            r["category_id"] = AGNOSTIC_CATEGORY["id"]
        out.append(r)
    return out


def _category_names(categories: list[dict]) -> list[str]:
    """Category names, with the id added to a name that two categories share."""
    names = [str(c.get("name", c["id"])) for c in categories]
    return [f"{n} (id {c['id']})" if names.count(n) > 1 else n for n, c in zip(names, categories)]


def _cell_type_groups(gt: dict) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for img in gt.get("images", []):
        if img.get("cell_type") is not None:
            groups[str(img["cell_type"])].append(img["id"])
    return dict(sorted(groups.items()))


def format_table(metrics: dict) -> str:
    """A readable table of :func:`evaluate`'s output, figures x100 with one decimal.

    Undefined figures (-1) print as ``-``.
    """
    protocol = metrics.get("protocol", "livecell")
    at = PROTOCOLS[protocol].max_dets[-1] if protocol in PROTOCOLS else "?"
    lines = [f"COCO AP, {protocol} protocol (every figure at {at} detections per image)"]
    lines.append(f"{'':<8}" + "".join(f"{name:>8}" for name in FIGURES))
    for iou_type in IOU_TYPES:
        if iou_type in metrics:
            lines.append(f"{iou_type:<8}" + "".join(f"{_pct(metrics[iou_type][f]):>8}" for f in FIGURES))
    for title, table in (("category", metrics.get("per_category")), ("cell type", metrics.get("per_cell_type"))):
        if table:
            heading = f"AP per {title}"
            width = max(len(heading), *(2 + len(name) for name in table))
            lines += ["", f"{heading:<{width}}" + "".join(f"{t:>8}" for t in IOU_TYPES)]
            for name, values in table.items():
                lines.append(f"{'  ' + name:<{width}}" + "".join(f"{_pct(values.get(t)):>8}" for t in IOU_TYPES))
    if metrics.get("matching"):
        lines += ["", matching_table(metrics["matching"])]
    if any(" - " in f"{line} " for line in lines[2:]):
        lines.append("(- : no ground truth in that range, written as -1)")
    return "\n".join(lines)


def matching_table(matching: dict) -> str:
    """The object figures of :func:`cupre.evaluation.matching.matching_figures`, x100."""
    names = ("AP50", "DSB", "F1")
    rows = [("all", matching)] + [(f"  {k}", v) for k, v in matching.get("per_cell_type", {}).items()]
    width = max(12, *(len(name) + 1 for name, _ in rows))
    lines = [f"Objects scoring above {matching['score_threshold']:g}, matched one to one by mask IoU: "
             "AP@0.5 = TP/(TP+FP+FN) at IoU 0.5 (Cellpose, StarDist), DSB = its mean over IoU 0.5..0.95 "
             "(Data Science Bowl 2018), F1 at IoU 0.5; means over images",
             f"{'':<{width}}" + "".join(f"{n:>8}" for n in ("AP@0.5", "DSB", "F1"))]
    for name, values in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{_pct(values.get(n)):>8}" for n in names))
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None or value < 0 else f"{100 * value:.1f}"
