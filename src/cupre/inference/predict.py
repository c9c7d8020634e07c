"""Segment your own images with a trained model.

The model is cupre's shipped nuclei model unless one is given: ``--model nuclei`` names it,
``--model PATH`` a model file (``model.safetensors``) or a run folder holding one. The form
``cupre predict MODEL INPUT...`` still works: without ``--model``, the first INPUT is the model
when it is a ``*.safetensors`` (or cupre < 0.2 ``*.pt``) file or a run folder (a folder holding
``model.safetensors``, ``finetune/model.safetensors`` or a cupre run's ``config.yaml``); a folder
of images is none of these, so it is always read as images. INPUT is any mix of
image files, OME-Zarr images, folders (walked recursively; ``*_masks.*`` label files are
skipped) and glob patterns; every kind of image cupre reads works (8/16-bit, float, grey, RGB, RGBA,
multi-page TIFF: each page is its own image, written as ``name_pNNN`` with NNN the page
index from 0; ``--channel C`` keeps, of a file with a channel axis, only channel C's pages).

For each image, in OUT (mirroring sub-folders of an input folder):

* ``name_masks.tif``: instance label image, uint16 (uint32 past 65,535 objects), 0 is
  background; where masks overlap the higher-scoring object wins; id 1 has the highest score;
* ``name_overlay.png``: outlines and ids over the normalised image;
* ``name_objects.csv``: one row per id: score, area, centroid, box, mean raw intensity,
  category;
* ``name_rois.zip`` (``--roi-zip``): one ImageJ polygon ROI per id;
* ``name_objects.geojson`` (``--geojson``): one polygon per id with its table row as
  measurements, for QuPath (*File > Import objects*) and GIS tools;
* ``name.ome.zarr`` (``--ome-zarr``): the image with the label image in its NGFF
  ``labels/masks`` group (:mod:`cupre.inference.omezarr`).

For the whole run: ``results_coco.json`` (COCO results with the detector's whole masks,
each with the ``object_id`` of its label; for ``cupre evaluate --gt GT --dt
OUT/results_coco.json``) and ``images.json`` (image id -> file, page, size). Image
ids are 1..N over the inputs in sorted path order (pages in order), which is the order
``cupre convert`` numbers a label-image or BBBC038 folder.

Images larger than ``--tile-size`` are predicted in overlapping tiles; set
``--tile-overlap`` to at least the size of the largest cell. Such an image is never
loaded whole (:mod:`cupre.inference.slides`): TIFFs and OME-Zarr (``name.zarr`` folders)
are read a tile at a time, normalised with percentiles gathered window by window (from
a regular subsample beyond 16.8 Mpx), and the label image is written as a tiled TIFF
painted tile by tile (the overlay is subsampled beyond 4,096 px). With ``--workers`` or
``--cluster`` the tiles are spread over the Dask workers, with the same results. Every image runs at the
model's object scale, the rule it was trained and validated under
(:mod:`cupre.scale`): rescaled so that its typical object measures the model's
``object_size``, the typical size being estimated by the model itself, or given with
``--diameter`` (the typical cell diameter in your images, pixels).

Unreadable images are reported and skipped; the exit status is 1 when any failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cupre.data.imageio import normalize, read_image
from cupre.data.lazy import image_size, release_decoded
from cupre.detect.objects import objects_to_results
from cupre.detect.tiling import predict_at_object_scale
from cupre.devices import map_large_allocations, pick_device, release_freed_memory, resolve_precision
from cupre.errors import CupreError, CupreWarning
from cupre.fileio import write_json_atomic
from cupre.inference import outputs, writers
from cupre.inference.cluster import open_tasks
from cupre.inference.inputs import (
    Job,
    check_outputs,
    expand_inputs,
    job_outputs,
    plan_jobs,
    problem_line,
)
from cupre.inference.ledger import RESULT_OPTIONS, Ledger, model_identity
from cupre.inference.options import DetectionOptions
from cupre.inference.outputs import WholeImage, write_all
from cupre.inference.slides import Slide, predict_slide, write_slide_outputs
from cupre.models.detector import weights_for_inference
from cupre.scale import MAX_FACTOR, MIN_FACTOR
from cupre.shipped import resolve_model

DEFAULT_CATEGORIES = [{"id": 1, "name": "cell"}]


@dataclass
class PredictSummary:
    """What :func:`run_predict` did."""

    predicted: int = 0
    objects: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, problem)
    out: Path | None = None


def load_model(model: str | Path, *, device: torch.device,
               precision: str = "fp32") -> tuple[torch.nn.Module, list[dict]]:
    """Build the detector of a model file for prediction at ``precision`` (eval mode, on
    ``device``, weights stored for inference: :func:`weights_for_inference`)."""
    from cupre.models.loading import build_from_file

    weights_dtype = torch.bfloat16 if precision == "bf16" else None  # converted as read: no fp32 copy at once
    net, _, ckpt = build_from_file(resolve_model(model), weights_dtype=weights_dtype)
    net = weights_for_inference(net.eval(), precision).to(device)
    return net, list(ckpt.get("categories") or DEFAULT_CATEGORIES)


@contextlib.contextmanager
def detection_limits(net, options: DetectionOptions, precision: str = "fp32"):
    """Apply the score threshold and the detection cap in the one place they act, the
    detector's RoI heads, and the precision the detector runs at (all restored afterwards,
    so a model passed in is left as it was).

    A detector without RoI heads (any other callable) filters its own outputs.
    """
    heads = getattr(getattr(net, "head", None), "roi_heads", None)
    if heads is None:
        yield
        return
    before = heads.score_thresh, heads.detections_per_img, net.precision
    heads.score_thresh, heads.detections_per_img = float(options.score_threshold), int(options.max_detections)
    net.precision = precision
    try:
        yield
    finally:
        heads.score_thresh, heads.detections_per_img, net.precision = before


def _read(job: Job) -> tuple[np.ndarray, torch.Tensor]:
    """The raw image and its normalised float32 ``3xHxW`` tensor (grey: one plane, expanded).

    Raises:
        CupreError: the file cannot be read (whatever the reader raised).
    """
    if job.error is not None:
        raise CupreError(job.error)
    try:
        raw = read_image(job.file, page=job.page)
        return raw, normalize(raw, grey_view=True)
    except Exception as exc:  # noqa: BLE001 - readers raise many kinds on broken files
        raise CupreError(problem_line(job.file, exc)) from None


# The shortest side an image may have. A cell and the background around it need more than a
# few pixels, and the detector's smallest anchors are 4-8 px: an image 1 px tall (a line scan, a
# header that swapped its axes) holds no whole cell, and would be predicted empty without a word.
MIN_SIDE = 8


def check_side(job: Job, height: int, width: int) -> None:
    """Refuse (this image, not the run) a plane with a side under :data:`MIN_SIDE` px."""
    if min(height, width) < MIN_SIDE:
        raise CupreError(f"{job.file}: the model cannot segment this {height} x {width} px image (a side under "
                         f"{MIN_SIDE} px holds no whole cell; give images of cells, cropped or resized)")


def write_image_outputs(paths: dict[str, Path], objs, raw: np.ndarray, image: torch.Tensor, job: Job,
                        categories: list[dict]) -> tuple[list[dict], int]:
    """All per-image files of one prediction (:func:`cupre.inference.outputs.write_all`);
    returns its COCO results and object count."""
    predicted = WholeImage(objs, raw, image, categories)
    write_all(paths, predicted)
    height, width = image.shape[-2:]
    results = objects_to_results(objs, predicted.kept, image_id=job.image_id, height=height, width=width,
                                 category_ids=writers.category_ids(categories))
    return results, len(predicted.kept)


def _image_entry(job: Job, size: tuple[int, int] | None, count: int, error: str | None) -> dict:
    entry: dict[str, Any] = {"id": job.image_id, "file": str(job.file.resolve()), "page": job.page,
                             "name": job.name}
    if size is not None:
        entry.update(height=int(size[0]), width=int(size[1]), objects=count)
    if error is not None:
        entry["error"] = error
    return entry


@dataclass(frozen=True)
class PredictOptions(DetectionOptions):
    """How ``cupre predict`` runs: the detections (:class:`DetectionOptions`: score
    threshold, detection cap, diameter, tiling) and the run; checked once by :meth:`check`.

    Attributes:
        batch_size: images or tiles per forward pass; None: 1 on a CPU (a batch is no
            faster there, and each image in it adds its activations to the peak memory),
            2 on a GPU.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        channel: of images with a channel axis (TIFF hyperstacks, OME-TIFF, OME-Zarr),
            predict only this channel's planes; None: every plane.
        precision: ``auto``, ``bf16`` or ``fp32`` (:func:`cupre.devices.resolve_precision`).
        outputs: the optional output kinds to write too (names of
            :data:`cupre.inference.outputs.OPTIONAL`: ``roi_zip``, ``geojson``, ``ome_zarr``).
        overwrite: replace existing output files.
        resume: continue an interrupted run in the same output folder.
        cluster: a Dask scheduler address to spread the images over
            (:mod:`cupre.inference.cluster`); workers: or a local cluster of this many
            worker processes. None for both: this process predicts.
    """

    batch_size: int | None = None
    device: str = "auto"
    channel: int | None = None
    precision: str = "auto"
    outputs: tuple[str, ...] = ()
    overwrite: bool = False
    resume: bool = False
    cluster: str | None = None
    workers: int | None = None

    def check(self) -> None:
        """Raise a one-line CupreError naming the first bad option."""
        super().check()
        if self.batch_size is not None and self.batch_size < 1:
            raise CupreError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.channel is not None and self.channel < 0:
            raise CupreError(f"--channel must be 0 or more (channels count from 0), got {self.channel}")
        if self.workers is not None and self.workers < 1:
            raise CupreError(f"--workers must be at least 1, got {self.workers}")
        if self.workers is not None and self.cluster is not None:
            raise CupreError("give --cluster ADDRESS or --workers N, not both")
        outputs.check(self.outputs)


def run_predict(
    model: str | Path | torch.nn.Module,
    inputs: list[str | Path],
    *,
    out: str | Path,
    options: PredictOptions = PredictOptions(),
    categories: list[dict] | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Predict every input image and write its outputs (see the module docstring).

    Args:
        model: a shipped model's name (``"nuclei"``), a model file or run folder
            (:func:`cupre.shipped.resolve_model`), or an already built detector (put in
            eval mode on the device; its categories default to one "cell" category).
        inputs: image files, folders and glob patterns.
        out: the output folder (created).
        options: see :class:`PredictOptions`.

    Returns:
        A :class:`PredictSummary`; unreadable images are listed in ``failed``.

    Raises:
        CupreError: bad options, missing inputs or model, or existing outputs
            without ``overwrite`` (checked before any prediction).
    """
    options.check()
    # a missing model is reported before anything else
    model_file = resolve_model(model) if isinstance(model, (str, Path)) else None
    out = Path(out)
    jobs = plan_jobs(expand_inputs(inputs, exclude=out), channel=options.channel)
    ledger = Ledger(out, {"model": model_identity(model_file or model),
                          "options": {k: getattr(options, k) for k in RESULT_OPTIONS},
                          "inputs": [f"{j.file}#{j.page}" for j in jobs]})
    if not options.resume:
        check_outputs(out, jobs, outputs=options.outputs, overwrite=options.overwrite)
    device = pick_device(options.device)
    if device.type == "cpu":
        map_large_allocations()
    precision = resolve_precision(options.precision, device)
    if options.batch_size is None:
        options = dataclasses.replace(options, batch_size=1 if device.type == "cpu" else 2)
    if model_file is not None:
        net, cats = load_model(model_file, device=device, precision=precision)
    else:
        net, cats = model, DEFAULT_CATEGORIES
        if isinstance(net, torch.nn.Module):
            net.eval().to(device)
    cats = categories or cats
    options = options.for_model(net)
    if options.diameter is not None and getattr(net, "object_size", None) is None:
        warnings.warn(f"{model_file or 'the model'}: --diameter {options.diameter:g} is not used: this model has "
                      "no object_size (it was trained at its images' own pixels), so images are predicted as they "
                      "are; resize them so cells measure what they did in its training images", CupreWarning,
                      stacklevel=2)
    done = ledger.start(resume=options.resume)
    todo = [job for job in jobs if job.image_id not in done]
    if done:
        print(f"predict: {len(done)} of {len(jobs)} images finished before; continuing with {len(todo)}")
    with detection_limits(net, options, precision):
        _predict_jobs(net, todo, out=out, categories=cats, options=options, device=device, progress=progress,
                      ledger=ledger)
    summary, results, entries = PredictSummary(out=out), [], []
    for job in jobs:
        record = ledger.read(job.image_id)
        results += record["results"]
        entries.append(record["entry"])
        if "error" in record["entry"]:
            summary.failed.append((str(job.file), record["entry"]["error"]))
        else:
            summary.predicted += 1
            summary.objects += record["entry"]["objects"]
    if summary.predicted and not summary.objects:
        warnings.warn(f"{out}: the model found no object in any of the {summary.predicted} images at score threshold "
                      f"{options.score_threshold:g} (a model trained for only a few iterations scores low: train "
                      "longer, or lower --score-threshold to see what it finds)", CupreWarning, stacklevel=2)
    write_json_atomic(out / "results_coco.json", results)
    write_json_atomic(out / "images.json", {"images": entries, "categories": cats,
                                            "failed": [{"file": f, "error": p} for f, p in summary.failed]})
    ledger.close()
    return summary


def _predict_jobs(net, jobs: list[Job], *, out: Path, categories: list[dict], options: PredictOptions,
                  device: torch.device, progress: bool, ledger: Ledger) -> None:
    """Read, predict and write every job (here, or on a Dask cluster when ``options``
    names one): small images ``options.batch_size`` at a time, each large one tile by
    tile (:mod:`cupre.inference.slides`); each finished (or unreadable) image is recorded
    in the ledger."""
    tiled = [is_large(job, options.tile_size) for job in jobs]
    large = [job for job, big in zip(jobs, tiled) if big]
    small = [job for job, big in zip(jobs, tiled) if not big]
    batches = [small[start:start + options.batch_size] for start in range(0, len(small), options.batch_size)]
    bar = tqdm(total=len(jobs), desc="predict", unit="image", disable=not progress, dynamic_ncols=True)

    said: dict[str, int] = {}  # each problem once: the pages of one file often fail alike

    def record(image_id: int, results: list[dict], entry: dict) -> None:
        if "error" in entry:
            said[entry["error"]] = said.get(entry["error"], 0) + 1
            if said[entry["error"]] == 1:
                tqdm.write(f"cupre: warning: {entry['error']} (skipped)", file=sys.stderr)
        ledger.record(image_id, results, entry)
        bar.update(1)

    with open_tasks(net, options, device) as tasks:
        done = tasks.map(predict_batch, batches, ordered=False, out=out, categories=categories, options=options)
        for job in large:
            record(*predict_large(job, tasks.map, object_size=getattr(net, "object_size", None), out=out,
                                  categories=categories, options=options))
        for records in done:
            for rec in records:
                record(*rec)
    bar.close()
    for problem, count in said.items():
        if count > 1:
            print(f"cupre: warning: {count - 1} more page(s) skipped for the same reason: {problem}", file=sys.stderr)


def is_large(job: Job, tile_size: int) -> bool:
    """A readable image larger than a tile on either side (predicted as a slide)."""
    if job.error is not None:
        return False
    try:
        return max(job.size or image_size(job.file, job.page)) > tile_size
    except Exception:  # noqa: BLE001 - a broken file goes the usual way, which reports it
        return False


def predict_large(job: Job, map_tasks, *, object_size: float | None, out: Path, categories: list[dict],
                  options: PredictOptions) -> tuple[int, list[dict], dict]:
    """Predict and write one large image tile by tile (:mod:`cupre.inference.slides`);
    ``map_tasks`` runs the tile tasks (here or on the cluster)."""
    try:
        check_side(job, *(job.size or image_size(job.file, job.page)))
        slide = Slide.open(job.file, job.page)
        objs, factor = predict_slide(slide, map_tasks=map_tasks, object_size=object_size,
                                     diameter=options.diameter, tile_size=options.tile_size,
                                     overlap=options.tile_overlap, batch_size=options.batch_size)
    except CupreError as exc:
        return job.image_id, [], _image_entry(job, None, 0, str(exc))
    if factor in (MIN_FACTOR, MAX_FACTOR):
        warn_size(job, factor, object_size, given=options.diameter is not None)
    paths = job_outputs(out, job, outputs=options.outputs)
    res, count = write_slide_outputs(paths, objs, slide, image_id=job.image_id, categories=categories)
    release_decoded()
    release_freed_memory()
    return job.image_id, res, {**_image_entry(job, (slide.height, slide.width), count, None), "scale": factor}


def warn_size(job: Job, factor: float, object_size: float, *, given: bool) -> None:
    """An image whose objects lie beyond the 4x the model rescales: its masks are likely off."""
    side = "smaller" if factor == MAX_FACTOR else "larger"
    source = "the --diameter given" if given else "the model's own estimate"
    warnings.warn(f"{job.file}: by {source}, its objects are {side} than a {factor:g}x rescaling brings to the "
                  f"{object_size:g} px the model was trained at; check its overlay, and give --diameter PX (the "
                  "typical cell diameter) if the masks are off", CupreWarning, stacklevel=2)


def predict_batch(net, jobs: list[Job], *, out: Path, categories: list[dict], options: PredictOptions,
                  device: torch.device) -> list[tuple[int, list[dict], dict]]:
    """Read, predict and write one batch of images (run as one forward pass).

    Returns:
        Per job ``(image_id, COCO results, images.json entry)``; an unreadable image has
        no results and an entry with its ``error``.
    """
    records, loaded = [], []
    for job in jobs:
        try:
            raw, image = _read(job)
            check_side(job, *image.shape[-2:])
            loaded.append((job, raw, image))
        except CupreError as exc:
            records.append((job.image_id, [], _image_entry(job, None, 0, str(exc))))
    try:
        found, factors = predict_at_object_scale(
            net, [img for _, _, img in loaded], diameter=options.diameter, tile_size=options.tile_size,
            overlap=options.tile_overlap, batch_size=options.batch_size, device=device)
    except (RuntimeError, ValueError) as exc:  # one image the model cannot take (1 px wide, say): not the run
        if len(loaded) > 1:
            return records + [r for job, _, _ in loaded
                              for r in predict_batch(net, [job], out=out, categories=categories, options=options,
                                                      device=device)]
        job, raw, _ = loaded[0]
        problem = f"{job.file}: the model cannot segment this {raw.shape[0]} x {raw.shape[1]} px image ({exc})"
        return records + [(job.image_id, [], _image_entry(job, None, 0, " ".join(problem.split())))]
    for (job, raw, image), objs, factor in zip(loaded, found, factors):
        if factor in (MIN_FACTOR, MAX_FACTOR):
            warn_size(job, factor, getattr(net, "object_size", None), given=options.diameter is not None)
        paths = job_outputs(out, job, outputs=options.outputs)
        res, count = write_image_outputs(paths, objs, raw, image, job, categories)
        records.append((job.image_id, res, {**_image_entry(job, image.shape[-2:], count, None), "scale": factor}))
        release_freed_memory()
    return records
