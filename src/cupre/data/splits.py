"""A deterministic few-shot split, or a train/val(/test) partition, of a dataset.

The rule, identical on every machine (numpy's PCG64 seeded with ``[seed, crc32(type)]``,
never Python's ``hash()``):

1. Images are sorted by file name (then page, then image id), so the order in which a
   reader lists them does not matter.
2. Images are grouped by ``cell_type`` (images of unknown type form one group); each
   group is shuffled by its own generator.
3. Few-shot split with fraction ``f`` of ``n`` images in ``T`` groups: a group of
   ``n_t`` images gives the first ``round(f * n_t)`` of its shuffle (halves round up).
   When ``f * n > T`` every group gives at least one image. When that still selects
   nothing, the first image of the largest group's shuffle is taken, so a split is
   never empty. For one seed, a larger fraction's split contains the smaller one's.
4. Partition with fractions ``f_1..f_P`` (summing to 1): each group is cut along its
   shuffle into ``P`` runs sized by largest remainders, so parts are disjoint, cover
   the dataset and keep the type proportions. A part left empty takes the last image
   of the largest part.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from cupre.data.sample import ImageRecord
from cupre.errors import CupreError, file_error
from cupre.fileio import read_json

UNKNOWN_TYPE = "unknown"


def _stable_key(rec: ImageRecord) -> tuple:
    return (Path(rec.file).as_posix(), -1 if rec.page is None else int(rec.page), int(rec.image_id))


def _strata(records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
    """Records grouped by cell type (sorted type names), each group in file order."""
    if not records:
        raise CupreError("cannot split a dataset with no images")
    ids = Counter(int(r.image_id) for r in records)
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        raise CupreError(f"dataset has duplicate image ids (e.g. {dup[0]}); cannot split it")
    groups: dict[str, list[ImageRecord]] = {}
    for rec in sorted(records, key=_stable_key):
        name = rec.cell_type if rec.cell_type is not None else UNKNOWN_TYPE
        groups.setdefault(str(name), []).append(rec)
    return dict(sorted(groups.items()))


def _shuffle(seed: int, stratum: str, n: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), zlib.crc32(stratum.encode("utf-8"))])
    return rng.permutation(n)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CupreError(f"split seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_fraction(fraction: float, what: str = "fraction") -> float:
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise CupreError(f"split {what} must be a number in (0, 1], got {fraction!r}") from None
    if not (0.0 < f <= 1.0) or math.isnan(f):
        raise CupreError(f"split {what} must be in (0, 1], got {fraction!r}")
    return f


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def fewshot_split(records: Sequence[ImageRecord], fraction: float, seed: int = 0) -> list[int]:
    """Image ids of a stratified few-shot subset (the rule is in the module docstring).

    Args:
        records: the dataset's images; ``cell_type`` is used to stratify where known.
        fraction: share of the images to keep, in (0, 1].
        seed: non-negative integer.

    Returns:
        Sorted image ids, at least one.

    Raises:
        CupreError: bad fraction or seed, no images, or duplicate image ids.
    """
    f, seed = _check_fraction(fraction), _check_seed(seed)
    groups = _strata(records)
    at_least_one = f * len(records) > len(groups)
    chosen: list[int] = []
    for name, recs in groups.items():
        k = _round_half_up(f * len(recs))
        k = max(k, 1) if at_least_one else k
        order = _shuffle(seed, name, len(recs))
        chosen += [recs[i].image_id for i in order[:k]]
    if not chosen:
        name, recs = max(groups.items(), key=lambda kv: len(kv[1]))
        chosen = [recs[_shuffle(seed, name, len(recs))[0]].image_id]
    return sorted(int(i) for i in chosen)


def _largest_remainder(fractions: Sequence[float], n: int) -> list[int]:
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r + 1e-9)) for r in raw]
    left = n - sum(counts)
    order = sorted(range(len(raw)), key=lambda j: (-(raw[j] - counts[j]), j))
    for j in order[:left]:
        counts[j] += 1
    return counts


def _check_partition(fractions: Sequence[float], names: Sequence[str]) -> list[float]:
    fr = [_check_fraction(f, "partition fraction") for f in fractions]
    if len(fr) != len(names):
        raise CupreError(f"partition has {len(fr)} fractions but {len(names)} names ({', '.join(names)})")
    if len(set(names)) != len(names) or any(not str(n) for n in names):
        raise CupreError(f"partition names must be distinct and non-empty, got {', '.join(map(str, names))}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise CupreError(f"partition fractions must sum to 1, got {' + '.join(map(str, fr))} = {sum(fr):g}")
    return fr


def partition(
    records: Sequence[ImageRecord],
    fractions: Sequence[float] = (0.8, 0.2),
    seed: int = 0,
    names: Sequence[str] = ("train", "val"),
) -> dict[str, list[int]]:
    """Disjoint, covering, type-stratified parts (e.g. 80/20 or 80/10/10).

    Args:
        records: the dataset's images.
        fractions: share of each part, each in (0, 1], summing to 1.
        seed: non-negative integer.
        names: one name per part.

    Returns:
        ``{name: sorted image ids}`` in the order of ``names``.
    """
    fr, seed = _check_partition(fractions, names), _check_seed(seed)
    groups = _strata(records)
    parts: list[list[int]] = [[] for _ in fr]
    for name, recs in groups.items():
        order = _shuffle(seed, name, len(recs))
        start = 0
        for j, count in enumerate(_largest_remainder(fr, len(recs))):
            parts[j] += [recs[i].image_id for i in order[start : start + count]]
            start += count
    for j, part in enumerate(parts):
        if not part:
            donor = max(range(len(parts)), key=lambda d: (len(parts[d]), -d))
            if len(parts[donor]) > 1:
                part.append(parts[donor].pop())
    return {str(n): sorted(int(i) for i in p) for n, p in zip(names, parts)}


def load_split(path: str | Path) -> dict:
    """Read a split file written by ``cupre split``.

    Returns:
        The JSON as a dict: ``image_ids`` (few-shot split) and/or ``parts``
        (``{name: {"image_ids", "files", "cell_types"}}``), plus ``dataset``, ``seed``...

    Raises:
        CupreError: missing file, not JSON, or not a split file.
    """
    path = Path(path)
    data = read_json(path, missing="split file not found")
    if not isinstance(data, dict) or ("image_ids" not in data and "parts" not in data):
        raise file_error(path, "not a cupre split file (expected an 'image_ids' list or a 'parts' mapping)")
    lists = {"image_ids": data.get("image_ids")} if "image_ids" in data else {}
    if "parts" in data:
        if not isinstance(data["parts"], dict) or not data["parts"]:
            raise file_error(path, "'parts' must be a non-empty mapping of name -> {'image_ids': [...]}")
        for name, part in data["parts"].items():
            lists[f"parts.{name}.image_ids"] = part.get("image_ids") if isinstance(part, dict) else None
    for key, ids in lists.items():
        ok = isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        if not ok or not ids:
            raise file_error(path, f"'{key}' must be a non-empty list of integer image ids")
    return data


def _relative(file: Path, base: Path) -> str:
    for f, b in ((Path(file), base), (Path(file).resolve(), base.resolve())):
        try:
            return f.relative_to(b).as_posix()
        except ValueError:
            continue
    return Path(file).name


def _describe(ids: list[int], by_id: dict[int, ImageRecord], base: Path) -> dict:
    recs = [by_id[i] for i in ids]
    types = Counter(r.cell_type if r.cell_type is not None else UNKNOWN_TYPE for r in recs)
    return {
        "image_ids": ids,
        "files": [_relative(r.file, base) for r in recs],
        "cell_types": dict(sorted((str(k), v) for k, v in types.items())),
    }
