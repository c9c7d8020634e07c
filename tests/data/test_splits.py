"""Few-shot splits and partitions: deterministic, stratified, order independent."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cupre import cli
from cupre.data.sample import ImageRecord
from cupre.data.splits import fewshot_split, load_split, partition
from cupre.errors import CupreError


def _records(sizes: dict[str | None, int], start: int = 1) -> list[ImageRecord]:
    recs, i = [], start
    for t, n in sizes.items():
        for j in range(n):
            recs.append(ImageRecord(image_id=i, file=Path(f"/data/{t}/img_{j:04d}.png"), cell_type=t))
            i += 1
    return recs


def _types(records: list[ImageRecord], ids: list[int]) -> Counter:
    by_id = {r.image_id: r for r in records}
    return Counter(by_id[i].cell_type for i in ids)


def test_fewshot_deterministic_and_order_independent():
    recs = _records({"a": 50, "b": 30, "c": 20})
    first = fewshot_split(recs, 0.1, seed=0)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    assert fewshot_split(recs, 0.1, seed=0) == first
    assert fewshot_split(shuffled, 0.1, seed=0) == first
    assert fewshot_split(recs[::-1], 0.1, seed=0) == first
    assert first == sorted(first) and len(set(first)) == len(first)
    assert fewshot_split(recs, 0.1, seed=1) != first


def test_fewshot_is_stratified():
    recs = _records({"a": 50, "b": 30, "c": 20})
    ids = fewshot_split(recs, 0.1, seed=3)
    assert _types(recs, ids) == {"a": 5, "b": 3, "c": 2}
    ids = fewshot_split(recs, 0.25, seed=3)  # 12.5 -> 13, 7.5 -> 8, 5
    assert _types(recs, ids) == {"a": 13, "b": 8, "c": 5}


def test_every_type_gets_one_when_the_budget_allows():
    recs = _records({"big": 100, "small": 4, "tiny": 3})
    ids = fewshot_split(recs, 0.05, seed=0)  # 0.05 * 107 = 5.35 > 3 types
    assert _types(recs, ids) == {"big": 5, "small": 1, "tiny": 1}


def test_at_least_one_image():
    recs = _records({"x": 6, "y": 4})
    ids = fewshot_split(recs, 0.01, seed=0)
    assert len(ids) == 1 and _types(recs, ids) == {"x": 1}
    untyped = _records({None: 8})
    assert len(fewshot_split(untyped, 0.25, seed=2)) == 2
    assert len(fewshot_split(untyped, 1.0, seed=2)) == 8


def test_larger_fraction_contains_smaller():
    recs = _records({"a": 60, "b": 40, None: 10})
    small, large = fewshot_split(recs, 0.05, seed=4), fewshot_split(recs, 0.2, seed=4)
    assert set(small) < set(large)


def test_split_does_not_depend_on_python_hash_seed():
    code = (
        "from pathlib import Path; from cupre.data.sample import ImageRecord; "
        "from cupre.data.splits import fewshot_split; "
        "recs=[ImageRecord(i+1, Path(f'f{i:03d}.png'), ['alpha','beta'][i%2]) for i in range(40)]; "
        "print(fewshot_split(recs, 0.2, 7))"
    )
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), "abc"])
def test_bad_fraction(fraction):
    with pytest.raises(CupreError):
        fewshot_split(_records({"a": 5}), fraction, seed=0)


def test_bad_records_and_seed():
    with pytest.raises(CupreError):
        fewshot_split([], 0.5, seed=0)
    dup = _records({"a": 3}) + _records({"b": 2}, start=1)
    with pytest.raises(CupreError, match="duplicate"):
        fewshot_split(dup, 0.5, seed=0)
    with pytest.raises(CupreError):
        fewshot_split(_records({"a": 3}), 0.5, seed=-1)


def test_partition_disjoint_covering_stratified():
    recs = _records({"a": 50, "b": 30, "c": 16})
    parts = partition(recs, (0.8, 0.1, 0.1), seed=0, names=("train", "val", "test"))
    assert list(parts) == ["train", "val", "test"]
    all_ids = [i for p in parts.values() for i in p]
    assert sorted(all_ids) == sorted(r.image_id for r in recs)
    # per type: 40/5/5, 24/3/3, 12.8/1.6/1.6 -> 13/2/1 (largest remainders, ties to the earlier part)
    assert _types(recs, parts["train"]) == {"a": 40, "b": 24, "c": 13}
    assert _types(recs, parts["val"]) == {"a": 5, "b": 3, "c": 2}
    assert _types(recs, parts["test"]) == {"a": 5, "b": 3, "c": 1}
    shuffled = recs[:]
    random.Random(0).shuffle(shuffled)
    assert partition(shuffled, (0.8, 0.1, 0.1), seed=0, names=("train", "val", "test")) == parts
    assert partition(recs, (0.8, 0.1, 0.1), seed=1, names=("train", "val", "test")) != parts


def test_partition_never_leaves_a_part_empty():
    parts = partition(_records({"a": 2, "b": 1}), (0.8, 0.1, 0.1), seed=0, names=("tr", "va", "te"))
    assert all(len(p) == 1 for p in parts.values())


@pytest.mark.parametrize(
    "fractions,names",
    [((0.8, 0.3), ("a", "b")), ((0.8, 0.2), ("a",)), ((1.0, 0.0), ("a", "b")), ((0.5, 0.5), ("a", "a"))],
)
def test_partition_bad_arguments(fractions, names):
    with pytest.raises(CupreError):
        partition(_records({"a": 10}), fractions, seed=0, names=names)


def _bbbc038_records(root: Path) -> list[ImageRecord]:
    summary = json.loads((root / "summary.json").read_text())
    return [
        ImageRecord(image_id=i + 1, file=root / "stage1_train" / s["id"] / "images" / f"{s['id']}.png",
                    cell_type=s["kind"])
        for i, s in enumerate(sorted(summary, key=lambda s: s["id"]))
    ]


def test_bbbc038_five_percent_split_covers_every_kind(shared_data):
    root = shared_data / "bbbc038"
    recs = _bbbc038_records(root)
    totals = Counter(r.cell_type for r in recs)
    assert len(totals) >= 3
    ids = fewshot_split(recs, 0.05, seed=0)
    chosen = _types(recs, ids)
    assert set(chosen) == set(totals)
    for kind, n in totals.items():
        assert chosen[kind] == max(1, int(0.05 * n + 0.5))
    assert fewshot_split(recs, 0.05, seed=0) == ids
    shuffled = recs[:]
    random.Random(5).shuffle(shuffled)
    assert fewshot_split(shuffled, 0.05, seed=0) == ids
    assert all(r.file.is_file() for r in recs if r.image_id in set(ids))
    parts = partition(recs, (0.8, 0.2), seed=0)
    assert not set(parts["train"]) & set(parts["val"])
    assert len(parts["train"]) + len(parts["val"]) == len(recs)
    assert set(_types(recs, parts["val"])) == set(totals)


def test_load_split_rejects_bad_files(tmp_path):
    with pytest.raises(CupreError, match="not found"):
        load_split(tmp_path / "missing.json")
    cases = {"notjson.json": "{nope", "list.json": "[1, 2]", "noids.json": '{"seed": 0}',
             "strs.json": '{"image_ids": ["a"]}', "empty.json": '{"image_ids": []}',
             "badparts.json": '{"parts": {"train": [1, 2]}}'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CupreError, match=name):
            load_split(tmp_path / name)
    (tmp_path / "ok.json").write_text('{"image_ids": [3, 1], "seed": 0}')
    assert load_split(tmp_path / "ok.json")["image_ids"] == [3, 1]


def test_cli_split_on_synthetic_cells(tmp_path, capsys):
    from cupre.data.formats import open_dataset
    from cupre.data.synthetic import write_synthetic

    ann = write_synthetic("cells", tmp_path / "cells", n_images=12, size=64, seed=0)
    records = open_dataset(ann).records
    out = tmp_path / "split.json"
    assert cli.main(["split", str(ann), "--fraction", "0.25", "--seed", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    split = load_split(out)
    assert split["image_ids"] == fewshot_split(records, 0.25, seed=2)
    assert split["fraction"] == 0.25 and split["seed"] == 2 and split["dataset"] == str(ann)
    assert split["cell_types"] == {"elongated": 1, "large-irregular": 1, "round": 1}
    assert all((ann.parent / f).is_file() for f in split["files"])
    assert "round: 1 of 4" in printed

    part = tmp_path / "part.json"
    assert cli.main(["split", str(ann), "--partition", "0.75,0.25", "--fraction", "0.5", "-o", str(part)]) == 0
    split = load_split(part)
    train, val = split["parts"]["train"]["image_ids"], split["parts"]["val"]["image_ids"]
    assert len(train) == 9 and len(val) == 3 and not set(train) & set(val)
    assert set(split["image_ids"]) <= set(train)

    assert cli.main(["split", str(tmp_path / "nope.json"), "--fraction", "0.1", "-o", str(out)]) == 2
    assert cli.main(["split", str(ann), "--fraction", "1.5", "-o", str(out)]) == 2
    assert "fraction" in capsys.readouterr().err
