"""Endless, resumable batch streams.

Training is counted in iterations. The order of epoch ``e`` is a permutation drawn from
``seed`` and ``e`` alone, and every sample's augmentation is seeded by (seed, epoch,
index), so a run resumed at iteration ``i`` sees exactly the batches an uninterrupted run
would have seen, whatever the number of loader workers. Under torchrun each rank takes
its own slice of every permutation.

Decoded samples are kept in memory (:class:`DecodedCache`, up to ``CACHE_BYTES`` per
process): a few-shot set is read from disk once, not at every step (a BBBC038 image is
a PNG plus one PNG per nucleus).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cupre.train import distributed


class ResumableSampler(Sampler):
    """Yields ``(epoch, index)`` pairs forever, starting ``skip`` samples in (per rank)."""

    def __init__(self, n: int, *, seed: int, skip: int = 0) -> None:
        if n == 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.skip = n, seed, skip
        self.rank, self.world = distributed.rank(), distributed.world_size()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_rank = max(1, self.n // self.world)
        epoch, offset = divmod(self.skip, per_rank)
        while True:
            g = torch.Generator().manual_seed(hash_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=g)
            if self.world > 1 and self.n >= self.world:
                order = order[self.rank : per_rank * self.world : self.world]
            for i in order[offset:].tolist():
                yield epoch, i
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader)
        return 2**62


CACHE_BYTES = 1024**3


def _nbytes(item) -> int:
    if isinstance(item, torch.Tensor):
        return item.element_size() * item.numel()
    if isinstance(item, (tuple, list)):
        return sum(_nbytes(v) for v in item)
    if isinstance(item, dict):
        return sum(_nbytes(v) for v in item.values())
    return 0


class DecodedCache(Dataset):
    """``dataset[index]`` read once and kept, until ``max_bytes`` of tensors are held
    (later samples are read every time). Items are handed out as they were read (a
    sample's dict is copied, so a transform that sets keys leaves the cache alone; the
    transforms build new tensors rather than change them in place)."""

    def __init__(self, dataset: Dataset, max_bytes: int = CACHE_BYTES) -> None:
        self.dataset, self.max_bytes = dataset, max_bytes
        self.items: dict[int, object] = {}
        self.held = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        item = self.items.get(index)
        if item is None:
            item = self.dataset[index]
            size = _nbytes(item)
            if self.held + size <= self.max_bytes:
                self.items[index] = item
                self.held += size
        if isinstance(item, tuple):
            return tuple(dict(v) if isinstance(v, dict) else v for v in item)
        return item


class SeededTransformDataset(Dataset):
    """Applies ``transform`` to ``dataset[index]`` under a seed fixed by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, transform: Callable | None, *, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        item = self.dataset[index]
        if self.transform is None:
            return item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash_seed(self.seed, epoch, index))
            if isinstance(item, tuple):
                return self.transform(*item)
            return self.transform(item)


def hash_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (no Python ``hash``: it is salted per process)."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFF)) * 1099511628211) % (2**63)
    return h


def batch_stream(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    start_iteration: int = 0,
    transform: Callable | None = None,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
) -> Iterator:
    """An endless iterator of batches, starting at ``start_iteration``."""
    sampler = ResumableSampler(len(dataset), seed=seed, skip=start_iteration * batch_size)  # type: ignore[arg-type]
    loader = DataLoader(
        SeededTransformDataset(DecodedCache(dataset), transform, seed=seed),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)
