"""Imaging kinds seen equally often in fine-tuning."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cupre.data.concat import KindBalanced
from cupre.data.sample import ImageRecord


class Records:
    """The part of an annotated dataset KindBalanced reads: records, categories, items."""

    def __init__(self, kinds: list[str | None]) -> None:
        self.records = [ImageRecord(image_id=i + 1, file=Path(f"{i}.png"), cell_type=k) for i, k in enumerate(kinds)]
        self.categories = [{"id": 1, "name": "cell"}]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        return index, self.records[index].cell_type


def test_each_kind_is_seen_as_often_as_the_commonest():
    data = KindBalanced(Records(["fluo"] * 6 + ["he"] * 2 + ["bright"]))
    kinds = Counter(data[i][1] for i in range(len(data)))
    assert kinds == {"fluo": 6, "he": 6, "bright": 6}
    assert Counter(data[i][0] for i in range(len(data)) if data[i][1] == "he") == {6: 3, 7: 3}  # repeated evenly


def test_one_kind_or_none_is_left_alone():
    assert [KindBalanced(Records(["a"] * 3))[i][0] for i in range(3)] == [0, 1, 2]
    assert len(KindBalanced(Records([None] * 4))) == 4
