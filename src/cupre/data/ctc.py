"""Cell Tracking Challenge layout: time-lapse sequences with segmentation truth.

::

    Fluo-N2DH-GOWT1/              the dataset (its name becomes the cell type)
      01/t000.tif ...             frames (``tTTT`` or ``tTTTT``; 2-D or 3-D stacks)
      01_GT/SEG/man_seg000.tif    gold truth: instance label images of some frames
      01_GT/SEG/man_seg_000_012.tif   ... or of one z-slice of a 3-D frame
      01_ST/SEG/man_seg000.tif    silver truth (computer-made), where present
      02/ ...

Only annotated frames (or slices) are labeled records; :meth:`CtcDataset.unlabeled_files`
lists every frame for unsupervised use. Gold-truth SEG files often annotate only part
of the cells of a frame: that is the challenge's data, not a reading error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from cupre.data.imageio import Normalization, count_pages, read_image
from cupre.data.label_images import image_size, label_image_to_masks
from cupre.data.sample import (
    CELL_CATEGORIES,
    ImageRecord,
    InstanceDataset,
    RawInstances,
)
from cupre.errors import file_error, warn_or_raise
from cupre.fileio import not_regular

SEQUENCE = re.compile(r"^\d{2,3}$")
FRAME = re.compile(r"^t(\d{3,4})\.tiff?$")
SEG = re.compile(r"^man_seg_?(\d{3,4})(?:_(\d{3,4}))?\.tiff?$")
TRUTHS = {"gt": ("GT",), "st": ("ST",), "gt+st": ("GT", "ST")}


def find_sequences(root: Path) -> list[Path]:
    """The ``NN`` frame folders of a CTC dataset, sorted."""
    return sorted(p for p in root.iterdir() if p.is_dir() and SEQUENCE.match(p.name))


def list_frames(sequence: Path) -> dict[int, Path]:
    """``{frame number: tTTT.tif}`` of one sequence folder."""
    frames = {}
    for path in sequence.iterdir():
        match = FRAME.match(path.name)
        if match:
            frames[int(match.group(1))] = path
    return frames


def list_segmentations(folder: Path, *, strict: bool = False) -> dict[int, list[tuple[Path, int | None]]]:
    """``{frame: [(man_seg file, z-slice or None), ...]}`` of one ``NN_GT/SEG`` folder.
    Entries that are no regular file (a named pipe would block the reader) are skipped
    with a warning (an error when ``strict``)."""
    out: dict[int, list[tuple[Path, int | None]]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        match = SEG.match(path.name)
        if match and (kind := not_regular(path)) is not None:
            warn_or_raise(path, f"{kind}, not a label image", strict=strict)
        elif match:
            z = int(match.group(2)) if match.group(2) is not None else None
            out.setdefault(int(match.group(1)), []).append((path, z))
    return out


class CtcDataset(InstanceDataset):
    """The annotated frames of a Cell Tracking Challenge dataset.

    Args:
        root: the dataset folder holding ``01``, ``01_GT`` ...
        truth: ``"gt+st"`` (gold truth where a frame has it, silver truth otherwise),
            ``"gt"`` or ``"st"`` only.
        class_agnostic: accepted for symmetry (there is one category anyway).
        strict: turn skipped-item warnings (a SEG file without its frame, a label image
            whose size differs from its frame) into errors.
        norm: intensity normalisation of the images.
        transforms: optional ``(image, target) -> (image, target)``.

    Records are sorted by (sequence, frame, slice) and numbered 1..N. A 2-D SEG file of
    a 3-D frame labels one slice (``record.page``); a 3-D SEG file gives one record per
    slice.
    """

    format_name = "ctc"

    def __init__(
        self,
        root: str | Path,
        *,
        truth: Literal["gt+st", "gt", "st"] = "gt+st",
        class_agnostic: bool = False,
        strict: bool = False,
        norm: Normalization = Normalization(),
        transforms: Callable | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise file_error(root, "Cell Tracking Challenge folder not found")
        if truth not in TRUTHS:
            raise file_error(root, f"truth must be one of {', '.join(TRUTHS)}, got {truth!r}")
        self.strict = strict
        self.truth = truth
        self.sequences = find_sequences(root)
        if not self.sequences:
            raise file_error(root, "no 'NN' sequence folders found (not a Cell Tracking Challenge layout)")
        records: list[ImageRecord] = []
        for sequence in self.sequences:
            records += self._sequence_records(sequence, root.name, first_id=len(records) + 1)
        if not records:
            raise file_error(root, f"no annotated frames ({'/'.join(TRUTHS[truth])} SEG files) found")
        super().__init__(
            records, list(CELL_CATEGORIES), transforms=transforms, norm=norm, class_agnostic=class_agnostic, root=root
        )

    def _sequence_records(self, sequence: Path, cell_type: str, *, first_id: int) -> list[ImageRecord]:
        frames = list_frames(sequence)
        segs = {kind: list_segmentations(sequence.parent / f"{sequence.name}_{kind}" / "SEG", strict=self.strict)
                for kind in ("GT", "ST")}
        records = []
        for t in sorted(set(segs["GT"]) | set(segs["ST"])):
            kind = next((k for k in TRUTHS[self.truth] if t in segs[k]), None)
            if kind is None:
                continue
            if t not in frames:
                warn_or_raise(segs[kind][t][0][0], f"no frame t{t:03d}.tif in {sequence}", strict=self.strict)
                continue
            for label, z in segs[kind][t]:
                for page, label_page in self._slices(frames[t], label, z):
                    extra = {"label": label, "label_page": label_page, "truth": kind, "frame": t}
                    rec = ImageRecord(first_id + len(records), frames[t], cell_type, page=page, extra=extra)
                    if self._check_size(rec):
                        records.append(rec)
        return records

    def _slices(self, frame: Path, label: Path, z: int | None) -> list[tuple[int | None, int | None]]:
        """``(image page, label page)`` pairs a SEG file annotates."""
        if z is not None:
            return [(z, None)]
        label_pages = count_pages(label)
        if label_pages == 1:
            return [(None, None)]
        return [(k, k) for k in range(min(label_pages, count_pages(frame)))]

    def _check_size(self, rec: ImageRecord) -> bool:
        """Fill the record's size; False (warned) when the label image's size differs."""
        rec.height, rec.width = image_size(rec.file)
        label_size = image_size(rec.extra["label"])
        if label_size != (rec.height, rec.width):
            h, w = label_size
            problem = f"label image is {h}x{w} but frame {rec.file.name} is {rec.height}x{rec.width}"
            warn_or_raise(rec.extra["label"], problem, strict=self.strict)
            return False
        return True

    def unlabeled_files(self) -> list[Path]:
        """Every frame of every sequence, annotated or not, sorted."""
        return [p for seq in self.sequences for _, p in sorted(list_frames(seq).items())]

    def read_image_array(self, index: int) -> np.ndarray:
        rec = self.records[index]
        return read_image(rec.file, page=rec.page)

    def read_raw(self, index: int) -> RawInstances:
        rec = self.records[index]
        label_file = rec.extra["label"]
        masks = label_image_to_masks(read_image(label_file, page=rec.extra["label_page"]), label_file)
        if masks.shape[1:] != (rec.height, rec.width):
            raise file_error(label_file, f"label image is not {rec.height}x{rec.width} like its frame")
        n = masks.shape[0]
        return RawInstances(masks=masks, labels=np.ones(n, dtype=np.int64), iscrowd=np.zeros(n, dtype=bool))


__all__ = ["CtcDataset", "find_sequences", "list_frames", "list_segmentations"]
