"""Segment your own images with a trained model.

MODEL is a model file (``model.pt``) or a run folder holding one. INPUT is any mix of
image files, folders (walked recursively; ``*_masks.*`` label files are skipped) and
glob patterns; every kind of image cupre reads works (8/16-bit, float, grey, RGB, RGBA,
multi-page TIFF: each page is its own image, written as ``name_pNNN`` with NNN the page
index from 0).

For each image, in OUT (mirroring sub-folders of an input folder):

* ``name_masks.tif``: instance label image, uint16 (uint32 past 65,535 objects), 0 is
  background; where masks overlap the higher-scoring object wins; id 1 has the highest score;
* ``name_overlay.png``: outlines and ids over the normalised image;
* ``name_objects.csv``: one row per id: score, area, centroid, box, mean raw intensity,
  category;
* ``name_rois.zip`` (``--roi-zip``): one ImageJ polygon ROI per id.

For the whole run: ``results_coco.json`` (COCO results with the detector's whole masks,
each with the ``object_id`` of its label; for ``cupre evaluate --gt GT --dt
OUT/results_coco.json``) and ``images.json`` (image id -> file, page, size). Image
ids are 1..N over the inputs in sorted path order (pages in order), which is the order
``cupre convert`` numbers a label-image or BBBC038 folder.

Images larger than ``--tile-size`` are predicted in overlapping tiles; set
``--tile-overlap`` to at least the size of the largest cell. Every image runs at the
model's object scale, the rule it was trained and validated under
(:mod:`cupre.scale`): rescaled so that its typical object measures the model's
``object_size``, the typical size being estimated by the model itself, or given with
``--object-size`` (the typical cell diameter in your images, pixels).

Unreadable images are reported and skipped; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cupre.data.imageio import IMAGE_SUFFIXES, count_pages, normalize, read_image
from cupre.data.unlabeled import is_label_file, walk_images
from cupre.errors import CupreError, file_error
from cupre.inference.tiling import predict_at_object_scale
from cupre.inference import writers

OUTPUT_KINDS = {"masks": "_masks.tif", "overlay": "_overlay.png", "objects": "_objects.csv", "rois": "_rois.zip"}
RUN_FILES = ("results_coco.json", "images.json")
DEFAULT_CATEGORIES = [{"id": 1, "name": "cell"}]


@dataclass
class Job:
    """One image (one page of a file) to predict: its COCO id and output name stem."""

    image_id: int
    file: Path
    page: int | None
    name: str  # output stem relative to OUT, e.g. "sub/img_p002"
    error: str | None = None  # why the file cannot be read (found while planning)


@dataclass
class PredictSummary:
    """What :func:`run_predict` did."""

    predicted: int = 0
    objects: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, problem)
    out: Path | None = None


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_inputs(inputs: list[str | Path], *, exclude: Path | None = None) -> list[tuple[Path, str]]:
    """Image files named by ``inputs`` with their output stems, sorted by path.

    Files are taken as given (stem = file stem), folders walked recursively (stem =
    path relative to the folder, so sub-folders are mirrored), globs expanded. Files
    under ``exclude`` (the output folder) are never inputs of a folder or glob.

    Raises:
        CupreError: an input matches nothing, or two inputs would write the same outputs.
    """
    found: dict[Path, str] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f in walk_images(path, recursive=True):
                if not _under(f, exclude):
                    found.setdefault(f, f.relative_to(path).with_suffix("").as_posix())
        elif path.is_file():
            found.setdefault(path, path.stem)
        elif _has_magic(str(item)):
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            matches = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES
                       and not is_label_file(m) and not _under(m, exclude)]
            if not matches:
                raise CupreError(f"{item}: the pattern matches no image file")
            for m in matches:
                found.setdefault(m, m.stem)
        else:
            raise file_error(path, "no such image file or folder")
    if not found:
        raise CupreError(f"no image files found in {', '.join(map(str, inputs))}")
    by_name: dict[str, Path] = {}
    for f, name in found.items():
        if name in by_name:
            raise CupreError(f"{f}: its outputs would overwrite those of {by_name[name]} (same name {name!r}); "
                             "predict them in separate runs")
        by_name[name] = f
    return sorted(found.items())


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def plan_jobs(files: list[tuple[Path, str]]) -> list[Job]:
    """One job per page; multi-page files get ``_pNNN`` stems. Ids are 1..N in order.

    A file whose pages cannot be counted keeps its id, as one job with ``error`` set.
    """
    jobs: list[Job] = []
    for path, name in files:
        try:
            pages = count_pages(path)
        except Exception as exc:  # noqa: BLE001 - a broken file of any kind is reported and skipped
            jobs.append(Job(len(jobs) + 1, path, None, name, error=_problem(path, exc)))
            continue
        for page in range(pages):
            stem = name if pages == 1 else f"{name}_p{page:03d}"
            jobs.append(Job(len(jobs) + 1, path, page if pages > 1 else None, stem))
    return jobs


def job_outputs(out: Path, job: Job, *, roi_zip: bool) -> dict[str, Path]:
    kinds = {k: v for k, v in OUTPUT_KINDS.items() if roi_zip or k != "rois"}
    return {kind: out / f"{job.name}{suffix}" for kind, suffix in kinds.items()}


def check_outputs(out: Path, jobs: list[Job], *, roi_zip: bool, overwrite: bool) -> None:
    """Fail, before any work, when an output file already exists (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise file_error(out, "output path exists and is not a folder")
    if overwrite or not out.is_dir():
        return
    planned = [out / name for name in RUN_FILES]
    planned += [p for job in jobs for p in job_outputs(out, job, roi_zip=roi_zip).values()]
    existing = [p for p in planned if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise file_error(existing[0], f"output file exists{more}; pass --overwrite to replace it")


def resolve_model_file(model: str | Path) -> Path:
    """A model file, or ``<folder>/model.pt`` for a run folder."""
    path = Path(model)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise file_error(path, "run folder holds no model.pt")
        return path / "model.pt"
    if not path.is_file():
        raise file_error(path, "model file not found")
    return path


def load_model(model: str | Path, *, score_threshold: float, max_detections: int,
               device: torch.device) -> tuple[torch.nn.Module, list[dict]]:
    """Build the detector of a model file for prediction (eval mode, on ``device``).

    ``score_threshold`` and ``max_detections`` become the detector's
    ``box_score_thresh`` and ``detections_per_img`` (per image, or per tile).
    """
    from cupre.train.weights import build_from_file

    path = resolve_model_file(model)
    overrides = {"box_score_thresh": float(score_threshold), "detections_per_img": int(max_detections)}
    net, _, ckpt = build_from_file(path, overrides=overrides)
    return net.eval().to(device), list(ckpt.get("categories") or DEFAULT_CATEGORIES)


def _problem(path: Path, exc: Exception) -> str:
    """One line naming the file: a CupreError as it is, anything else as 'cannot read'."""
    if isinstance(exc, CupreError):
        return str(exc)
    return str(file_error(path, f"cannot read image ({exc.__class__.__name__}: {exc})"))


def _read(job: Job) -> tuple[np.ndarray, torch.Tensor]:
    """The raw image and its normalised float32 ``3xHxW`` tensor.

    Raises:
        CupreError: the file cannot be read (whatever the reader raised).
    """
    if job.error is not None:
        raise CupreError(job.error)
    try:
        raw = read_image(job.file, page=job.page)
        return raw, normalize(raw).float()
    except Exception as exc:  # noqa: BLE001 - readers raise many kinds on broken files
        raise CupreError(_problem(job.file, exc)) from None


def write_image_outputs(paths: dict[str, Path], objs, raw: np.ndarray, image: torch.Tensor, job: Job,
                        categories: list[dict]) -> tuple[list[dict], int]:
    """All per-image files of one prediction; returns its COCO results and object count."""
    height, width = image.shape[-2:]
    label, kept = writers.paint_labels(objs, height, width)
    names = {k: c["name"] for k, c in enumerate(categories, start=1)}
    rows = writers.object_rows(label, kept, objs, raw, names)
    paths["masks"].parent.mkdir(parents=True, exist_ok=True)
    writers.write_label_tiff(paths["masks"], label)
    writers.write_csv(paths["objects"], rows)
    writers.write_overlay(paths["overlay"], writers.normalised_rgb(image), label, rows)
    if "rois" in paths:
        writers.write_roi_zip(paths["rois"], label)
    cat_ids = {k: int(c["id"]) for k, c in enumerate(categories, start=1)}
    results = writers.objects_to_results(objs, kept, image_id=job.image_id, height=height, width=width,
                                         category_ids=cat_ids)
    return results, len(kept)


def _image_entry(job: Job, image: torch.Tensor | None, count: int, error: str | None) -> dict:
    entry: dict[str, Any] = {"id": job.image_id, "file": str(job.file.resolve()), "page": job.page,
                             "name": job.name}
    if image is not None:
        entry.update(height=int(image.shape[-2]), width=int(image.shape[-1]), objects=count)
    if error is not None:
        entry["error"] = error
    return entry


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(path)


def run_predict(
    model: str | Path | torch.nn.Module,
    inputs: list[str | Path],
    *,
    out: str | Path,
    score_threshold: float = 0.5,
    max_detections: int = 2000,
    batch_size: int = 2,
    device: str = "auto",
    tile_size: int = 1024,
    tile_overlap: int = 128,
    object_size: float | None = None,
    roi_zip: bool = False,
    overwrite: bool = False,
    categories: list[dict] | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Predict every input image and write its outputs (see the module docstring).

    Args:
        model: a model file or run folder, or an already built detector (eval
            interface; a module is put in eval mode on ``device``, and its transform is
            restored afterwards; its ``categories`` default to one "cell" category).
        inputs: image files, folders and glob patterns.
        out: the output folder (created).
        score_threshold, max_detections: detection filter (per image or per tile;
            a built detector keeps its own detections_per_img).
        batch_size: images or tiles per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        tile_size, tile_overlap: tiling of large images (pixels).
        object_size: the typical object side in the images (pixels); None: estimated.
        roi_zip: also write ImageJ ROI zips.
        overwrite: replace existing output files.

    Returns:
        A :class:`PredictSummary`; unreadable images are listed in ``failed``.

    Raises:
        CupreError: bad options, missing inputs or model, or existing outputs
            without ``overwrite`` (checked before any prediction).
    """
    from cupre.train.distributed import pick_device

    _check_options(score_threshold, max_detections, batch_size, tile_size, tile_overlap, object_size)
    if isinstance(model, (str, Path)):
        resolve_model_file(model)  # a missing model is reported before anything else
    out = Path(out)
    jobs = plan_jobs(expand_inputs(inputs, exclude=out))
    check_outputs(out, jobs, roi_zip=roi_zip, overwrite=overwrite)
    dev = pick_device(device)
    if isinstance(model, (str, Path)):
        net, cats = load_model(model, score_threshold=score_threshold, max_detections=max_detections, device=dev)
    else:
        net, cats = model, DEFAULT_CATEGORIES
        if isinstance(net, torch.nn.Module):
            net.eval().to(dev)
    cats = categories or cats
    out.mkdir(parents=True, exist_ok=True)
    summary, results, entries = _predict_jobs(
        net, jobs, out=out, categories=cats, roi_zip=roi_zip, progress=progress, object_size=object_size,
        tile_size=tile_size, overlap=tile_overlap, batch_size=batch_size, score_threshold=score_threshold,
        device=dev)
    _write_json(out / "results_coco.json", results)
    _write_json(out / "images.json", {"images": entries, "categories": cats,
                                      "failed": [{"file": f, "error": p} for f, p in summary.failed]})
    return summary


def _predict_jobs(net, jobs: list[Job], *, out: Path, categories: list[dict], roi_zip: bool, progress: bool,
                  object_size: float | None, **tiling: Any) -> tuple[PredictSummary, list[dict], list[dict]]:
    """Read, predict and write every job, ``tiling["batch_size"]`` images at a time.

    Returns:
        the summary, the COCO results of all images, and the ``images.json`` entries.
    """
    summary = PredictSummary(out=out)
    results: list[dict] = []
    entries: list[dict] = []
    batch_size = tiling["batch_size"]
    bar = tqdm(total=len(jobs), desc="predict", unit="image", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(jobs), batch_size):
        loaded = []
        for job in jobs[start:start + batch_size]:
            try:
                loaded.append((job, *_read(job)))
            except CupreError as exc:
                summary.failed.append((str(job.file), str(exc)))
                entries.append(_image_entry(job, None, 0, str(exc)))
                tqdm.write(f"cupre: warning: {exc} (skipped)", file=sys.stderr)
                bar.update(1)
        found, factors = predict_at_object_scale(net, [img for _, _, img in loaded], object_size=object_size,
                                                 **tiling)
        for (job, raw, image), objs, factor in zip(loaded, found, factors):
            paths = job_outputs(out, job, roi_zip=roi_zip)
            res, count = write_image_outputs(paths, objs, raw, image, job, categories)
            results += res
            entries.append({**_image_entry(job, image, count, None), "scale": factor})
            summary.predicted += 1
            summary.objects += count
            bar.update(1)
    bar.close()
    entries.sort(key=lambda e: e["id"])
    return summary, results, entries


def _check_options(score_threshold, max_detections, batch_size, tile_size, tile_overlap, object_size) -> None:
    if not 0.0 <= score_threshold <= 1.0:
        raise CupreError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if max_detections < 1:
        raise CupreError(f"--max-detections must be at least 1, got {max_detections}")
    if batch_size < 1:
        raise CupreError(f"--batch-size must be at least 1, got {batch_size}")
    if object_size is not None and not 0 < object_size <= 10_000:
        raise CupreError(f"--object-size must be a positive size in pixels, got {object_size}")
    from cupre.inference.tiling import make_tiles

    make_tiles(1, 1, tile_size=tile_size, overlap=tile_overlap)  # validates the tiling options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (.pt) or a run folder holding model.pt")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="minimum detection score (default 0.5)")
    parser.add_argument("--max-detections", type=int, default=2000,
                        help="most detections per image, or per tile for tiled images (default 2000)")
    parser.add_argument("--batch-size", type=int, default=2, help="images or tiles per forward pass (default 2)")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    parser.add_argument("--tile-size", type=int, default=1024, help="tile larger images into this size (default 1024)")
    parser.add_argument("--tile-overlap", type=int, default=128,
                        help="tile overlap in pixels, at least the largest cell's size (default 128)")
    parser.add_argument("--object-size", type=float, default=None, metavar="PX",
                        help="typical cell diameter in your images, pixels (default: estimated per image by the "
                             "model); images are rescaled to the object size the model was trained at")
    parser.add_argument("--roi-zip", action="store_true", help="also write an ImageJ ROI zip per image")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def main(args: argparse.Namespace) -> int:
    summary = run_predict(
        args.model, args.inputs, out=args.out, score_threshold=args.score_threshold,
        max_detections=args.max_detections, batch_size=args.batch_size, device=args.device,
        tile_size=args.tile_size, tile_overlap=args.tile_overlap, object_size=args.object_size,
        roi_zip=args.roi_zip, overwrite=args.overwrite,
    )
    print(f"predicted {summary.predicted} image(s), {summary.objects} objects -> {summary.out}")
    if summary.failed:
        print(f"{len(summary.failed)} image(s) failed (listed above and in {summary.out / 'images.json'})")
        return 1
    return 0
