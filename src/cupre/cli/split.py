"""``cupre split``: arguments in, one call to the library out (see :mod:`cupre.data.splits`)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import cupre.data.splits as _lib
from cupre.cli.outfile import check_output_file
from cupre.data.sample import ImageRecord
from cupre.data.splits import UNKNOWN_TYPE, _describe, fewshot_split, partition
from cupre.errors import CupreError, file_error
from cupre.fileio import write_json_atomic

DESCRIPTION = _lib.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="dataset (COCO JSON, BBBC038 folder, ... any supported layout)")
    parser.add_argument("--format", default=None, help="dataset format (default: detected)")
    parser.add_argument("--fraction", type=float, default=None,
                        help="few-shot share of the images, in (0, 1] (of the first part with --partition)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="split JSON to write")
    parser.add_argument("--partition", default=None, help="comma-separated part fractions, e.g. 0.8,0.2")
    parser.add_argument("--names", default=None, help="comma-separated part names (default train,val[,test])")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split file (never the dataset)")


def _parse_partition(text: str, names_text: str | None) -> tuple[list[float], list[str]]:
    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CupreError(f"--partition must be comma-separated numbers, got {text!r}") from None
    if names_text:
        names = [x.strip() for x in names_text.split(",")]
    else:
        names = ["train", "val", "test"][: len(fractions)] + [f"part{i}" for i in range(4, len(fractions) + 1)]
    return fractions, names


def _print_counts(label: str, ids: list[int], by_id: dict[int, ImageRecord], totals: Counter) -> None:
    chosen = Counter(by_id[i].cell_type or UNKNOWN_TYPE for i in ids)
    print(f"{label}: {len(ids)} of {sum(totals.values())} images")
    for t in sorted(totals):
        print(f"  {t}: {chosen.get(t, 0)} of {totals[t]}")


def main(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.exists():
        raise file_error(data, "dataset not found")
    if args.fraction is None and args.partition is None:
        raise CupreError("give --fraction (a few-shot split) and/or --partition (train/val parts)")
    from cupre.data.formats import open_dataset

    records = list(open_dataset(data, format=args.format).records)
    by_id = {int(r.image_id): r for r in records}
    totals = Counter(r.cell_type or UNKNOWN_TYPE for r in records)
    base = data if data.is_dir() else data.parent
    out: dict = {"dataset": str(data), "seed": int(args.seed)}
    pool = records
    if args.partition is not None:
        fractions, names = _parse_partition(args.partition, args.names)
        parts = partition(records, fractions, seed=args.seed, names=names)
        out["fractions"] = dict(zip(names, fractions))
        out["parts"] = {n: _describe(ids, by_id, base) for n, ids in parts.items()}
        for n, ids in parts.items():
            _print_counts(n, ids, by_id, totals)
        pool = [by_id[i] for i in parts[names[0]]]
        if args.fraction is not None:
            out["fewshot_of"] = names[0]
    if args.fraction is not None:
        ids = fewshot_split(pool, args.fraction, seed=args.seed)
        out["fraction"] = float(args.fraction)
        out.update(_describe(ids, by_id, base))
        _print_counts(f"few-shot {args.fraction:g}", ids, by_id, Counter(r.cell_type or UNKNOWN_TYPE for r in pool))
    # checked after the split (seconds at most), so that a wrong --fraction is said first
    check_output_file(args.out, overwrite=args.overwrite, inputs=[("DATA", data)])
    write_json_atomic(args.out, out, indent=1)
    print(args.out)
    return 0
