"""Several annotated datasets as one, with their categories merged by name."""

from __future__ import annotations

import bisect

import torch
from torch.utils.data import Dataset

from cupre.data.sample import InstanceDataset


class MergedDataset(Dataset):
    """Concatenation of :class:`InstanceDataset` s whose labels are remapped to the union
    of their categories (matched by name, in first-seen order).

    Attributes:
        categories: the merged categories; label ``l`` is ``categories[l - 1]``.
    """

    def __init__(self, datasets: list[InstanceDataset]) -> None:
        if not datasets:
            raise ValueError("no datasets to merge")
        self.datasets = datasets
        names: list[str] = []
        for ds in datasets:
            for cat in ds.categories:
                if cat["name"] not in names:
                    names.append(cat["name"])
        self.categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
        self._maps = [
            torch.tensor([0] + [names.index(c["name"]) + 1 for c in ds.categories], dtype=torch.int64)
            for ds in datasets
        ]
        self._ends = []
        total = 0
        for ds in datasets:
            total += len(ds)
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int):
        which = bisect.bisect_right(self._ends, index)
        start = self._ends[which - 1] if which else 0
        image, target = self.datasets[which][index - start]
        target = dict(target)
        target["labels"] = self._maps[which][target["labels"]]
        return image, target
