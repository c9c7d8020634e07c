"""What ``cupre predict`` reads and writes: input images expanded into jobs (one per
page), their output paths, and the check that nothing existing is overwritten."""

from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from cupre.data.imageio import IMAGE_SUFFIXES, is_zarr, plane_layout
from cupre.data.unlabeled import is_label_file, walk_images
from cupre.errors import CupreError, CupreWarning, file_error
from cupre.fileio import link_above
from cupre.inference.outputs import chosen

RUN_FILES = ("results_coco.json", "images.json")


@dataclass
class Job:
    """One image (one page of a file) to predict: its COCO id and output name stem."""

    image_id: int
    file: Path
    page: int | None
    name: str  # output stem relative to OUT, e.g. "sub/img_p002"
    error: str | None = None  # why the file cannot be read (found while planning)
    size: tuple[int, int] | None = None  # (height, width) when the header read while planning gave it


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
    empty: list[str] = []  # folders without images: skipped with a warning, or the error when all are
    for item in inputs:
        path = Path(item)
        if is_zarr(path):
            found.setdefault(path, path.name[: -len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr")
                             else path.stem)
        elif path.is_dir():
            inside = [f for f in walk_images(path, recursive=True) if not _under(f, exclude)]
            if not inside:
                kind = "a folder named like an image file" if path.suffix.lower() in IMAGE_SUFFIXES else "a folder"
                empty.append(f"{path}: {kind}, with no image files in it")
            for f in inside:
                found.setdefault(f, f.relative_to(path).with_suffix("").as_posix())
        elif path.is_file():
            found.setdefault(path, path.stem)
        elif _has_magic(str(item)):
            check_recursive_pattern(str(item))
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
        raise CupreError(empty[0] if len(empty) == 1 else f"no image files found in {', '.join(map(str, inputs))}")
    for line in empty:
        warnings.warn(f"{line} (skipped)", CupreWarning, stacklevel=2)
    by_name: dict[str, Path] = {}
    for f, name in found.items():
        if name in by_name:
            raise CupreError(f"{f}: its outputs would overwrite those of {by_name[name]} (same name {name!r}); "
                             "predict them in separate runs")
        by_name[name] = f
    return sorted(found.items())


def check_recursive_pattern(pattern: str) -> None:
    """Refuse a ``**`` pattern whose fixed folder holds a link to a folder above it: glob
    follows every link, so ``**`` would walk out of the folder into its parent (and again,
    as deep as the system lets links nest). Patterns without ``**`` look one level deep.

    Raises:
        CupreError: the link, and what to do instead.
    """
    if "**" not in pattern:
        return
    parts = Path(pattern).parts
    base = Path(*parts[: next(k for k, part in enumerate(parts) if _has_magic(part))] or ".")
    for root, dirs, _ in os.walk(base):  # links are not followed here: this looks within base only
        for name in dirs:
            if link_above(Path(root) / name, base):
                raise file_error(Path(root) / name, f"a link to a folder holding {base}: '**' would walk out of it "
                                 "(give the folder, not a pattern: its walk skips such links)")


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def plan_jobs(files: list[tuple[Path, str]], *, channel: int | None = None) -> list[Job]:
    """One job per page; multi-page files get ``_pNNN`` stems (NNN: the page index in the
    file). Ids are 1..N in order.

    ``channel``: of a file with a channel axis (TIFF hyperstacks, OME-TIFF, OME-Zarr),
    only the pages of that channel; other files keep all their pages.

    A file whose pages cannot be counted keeps its id, as one job with ``error`` set.
    """
    jobs: list[Job] = []
    for path, name in files:
        try:
            layout = plane_layout(path)
        except Exception as exc:  # noqa: BLE001 - a broken file of any kind is reported and skipped
            jobs.append(Job(len(jobs) + 1, path, None, name, error=problem_line(path, exc)))
            continue
        try:
            pages = layout.pages(channel)
        except ValueError as exc:  # the channel asked for is not in this file
            jobs.append(Job(len(jobs) + 1, path, None, name, error=str(file_error(path, str(exc)))))
            continue
        if channel is not None and layout.channels is None:
            warnings.warn(f"{path}: no channel axis to take channel {channel} from (--channel reads TIFF "
                          "hyperstacks, OME-TIFF and OME-Zarr); the whole image is predicted", CupreWarning,
                          stacklevel=2)
        for page in pages:
            stem = name if layout.count == 1 else f"{name}_p{page:03d}"
            jobs.append(Job(len(jobs) + 1, path, page if layout.count > 1 else None, stem, size=layout.size))
    return jobs


def job_outputs(out: Path, job: Job, *, outputs: tuple[str, ...] = ()) -> dict[str, Path]:
    """The files of one job (kind name -> path): every kind always written, and the
    optional ones in ``outputs`` (:mod:`cupre.inference.outputs`)."""
    return {kind.name: out / f"{job.name}{kind.suffix}" for kind in chosen(outputs)}


def check_outputs(out: Path, jobs: list[Job], *, outputs: tuple[str, ...], overwrite: bool) -> None:
    """Fail, before any work, when an output file already exists (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise file_error(out, "output path exists and is not a folder")
    if overwrite or not out.is_dir():
        return
    planned = [out / name for name in RUN_FILES]
    planned += [p for job in jobs for p in job_outputs(out, job, outputs=outputs).values()]
    existing = [p for p in planned if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise file_error(existing[0], f"output file exists{more}; pass --overwrite to replace it")


def problem_line(path: Path, exc: Exception) -> str:
    """One line naming the file: a CupreError as it is, anything else as 'cannot read'."""
    if isinstance(exc, CupreError):
        return str(exc)
    return str(file_error(path, f"cannot read image ({exc.__class__.__name__}: {exc})"))
