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


class MixedDataset(Dataset):
    """Annotated images and pseudo-labelled ones, in a set proportion.

    The ``labeled`` images are repeated so that ``pseudo_fraction`` of the items are
    pseudo-labelled: a random batch holds that share in expectation. Each target says
    where it came from (``pseudo``: bool), for :class:`BySource`.
    """

    def __init__(self, labeled: Dataset, pseudo: Dataset, *, pseudo_fraction: float) -> None:
        if not 0 < pseudo_fraction < 1:
            raise ValueError(f"pseudo_fraction must be in (0, 1), got {pseudo_fraction}")
        if len(labeled) == 0 or len(pseudo) == 0:  # type: ignore[arg-type]
            raise ValueError("both the labeled and the pseudo-labelled images are needed")
        self.labeled, self.pseudo = labeled, pseudo
        self.n_pseudo = len(pseudo)  # type: ignore[arg-type]
        self.n_labeled = max(len(labeled), round(self.n_pseudo * (1 - pseudo_fraction) / pseudo_fraction))  # type: ignore[arg-type]
        self.categories = getattr(labeled, "categories", None)

    def __len__(self) -> int:
        return self.n_labeled + self.n_pseudo

    def __getitem__(self, index: int):
        if index < self.n_labeled:
            image, target = self.labeled[index % len(self.labeled)]  # type: ignore[arg-type]
            return image, {**target, "pseudo": False}
        image, target = self.pseudo[index - self.n_labeled]
        return image, {**target, "pseudo": True}


class BySource:
    """A training transform per source of a :class:`MixedDataset` item."""

    def __init__(self, *, labeled, pseudo) -> None:
        self.labeled, self.pseudo = labeled, pseudo

    def __call__(self, image, target):
        return (self.pseudo if target.get("pseudo") else self.labeled)(image, target)


class KindBalanced(Dataset):
    """An annotated dataset whose imaging kinds (``cell_type`` of its records) are seen
    equally often: each kind's images are repeated until it has as many items as the
    commonest kind (an epoch is then ``kinds x largest`` items). A dataset of one kind, or
    without kinds, is left as it is."""

    def __init__(self, dataset: InstanceDataset) -> None:
        self.dataset = dataset
        by_kind: dict[str, list[int]] = {}
        for i, rec in enumerate(dataset.records):
            by_kind.setdefault(str(rec.cell_type), []).append(i)
        largest = max((len(v) for v in by_kind.values()), default=0)
        self.index = [ids[k % len(ids)] for ids in by_kind.values() for k in range(largest)]
        if len(by_kind) <= 1:
            self.index = list(range(len(dataset)))
        self.records = dataset.records
        self.categories = dataset.categories

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int):
        return self.dataset[self.index[index]]
