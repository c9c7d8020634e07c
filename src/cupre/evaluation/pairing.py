"""Pair results with ground truth by image name, as ``cupre evaluate`` does.

``cupre predict`` numbers its images 1..N over its own inputs and writes ``images.json``
(image id -> file, page) beside ``results_coco.json``; a ground truth numbers its images
its own way. When the results come with such a file, each result's image is found in the
ground truth by file stem (and page, for the planes of a stack), and the results take the
ground truth's ids; images on either side without a partner are named in a warning.
Results without ``images.json`` keep their ids (a COCO results file made for that ground
truth).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from cupre.errors import CupreError, CupreWarning, file_error
from cupre.fileio import read_json

NAMES_FILE = "images.json"
SHOWN = 5  # unpaired names listed in a warning


def image_key(file: str, page: Any = None) -> str:
    """``stem`` or ``stem[page]``: what pairs an image of the results with one of the ground truth."""
    stem = Path(str(file).replace("\\", "/")).stem
    return stem if page is None else f"{stem}[{int(page)}]"


def result_names(results_file: Path) -> dict[int, str] | None:
    """Image id -> key from the ``images.json`` beside a results file, or None without one."""
    path = Path(results_file).parent / NAMES_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e and "file" in e for e in entries):
        raise file_error(path, "not the images.json of a cupre predict run (expected 'images' with 'id' and 'file')")
    return {int(e["id"]): image_key(e["file"], e.get("page")) for e in entries if "error" not in e}


def pair_by_name(results: list[Any], names: dict[int, str], gt: dict, *, source: Path) -> list[Any]:
    """``results`` with each ``image_id`` replaced by the ground-truth id of the same image name.

    Raises:
        CupreError: no image name is on both sides, or two ground-truth images share a name.
    """
    gt_ids: dict[str, int] = {}
    for img in gt["images"]:
        key = image_key(img.get("file_name", img["id"]), img.get("page"))
        if key in gt_ids:
            raise CupreError(f"ground truth: two images are named {key!r}; cannot pair results by name")
        gt_ids[key] = img["id"]
    paired = {rid: gt_ids[key] for rid, key in names.items() if key in gt_ids}
    if not paired:
        raise CupreError(f"{source}: none of its {len(names)} image(s) ({_some(names.values())}) is in the ground "
                         f"truth ({_some(gt_ids)}); results and ground truth must come from the same images")
    only_results = sorted(key for rid, key in names.items() if rid not in paired)
    only_gt = sorted(set(gt_ids) - {names[rid] for rid in paired})
    if only_results:
        warnings.warn(f"{source}: {len(only_results)} image(s) not in the ground truth, left out: "
                      f"{_some(only_results)}", CupreWarning, stacklevel=2)
    if only_gt:
        warnings.warn(f"ground truth: {len(only_gt)} image(s) without results (count as all missed): "
                      f"{_some(only_gt)}", CupreWarning, stacklevel=2)
    out = []
    for r in results:
        rid = r.get("image_id") if isinstance(r, dict) else None
        if isinstance(rid, int) and rid in names:
            if rid in paired:
                out.append({**r, "image_id": paired[rid]})
            continue
        out.append(r)  # checked (and refused) like any other result
    return out


def _some(names) -> str:
    names = sorted(str(n) for n in names)
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
