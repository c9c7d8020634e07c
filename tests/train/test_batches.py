"""The decoded-sample cache under the training streams."""

from __future__ import annotations

import torch

from cupre.data.formats import open_dataset
from cupre.data.sample import collate
from cupre.data.synthetic import write_synthetic
from cupre.data.transforms import DetectionTrainTransform
from cupre.train.batches import DecodedCache, batch_stream


class CountingReads(torch.utils.data.Dataset):
    def __init__(self, dataset) -> None:
        self.dataset, self.reads = dataset, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads += 1
        return self.dataset[index]


def test_cached_stream_reads_each_image_once_and_gives_the_same_batches(tmp_path):
    write_synthetic("cells", tmp_path / "cells", n_images=3, size=64, seed=0)
    data = open_dataset(tmp_path / "cells" / "annotations.json")
    transform = DetectionTrainTransform(crop_size=48, object_size=None)
    counting = CountingReads(data)
    cached = batch_stream(counting, batch_size=2, seed=5, transform=transform, collate_fn=collate)
    plain = batch_stream(data, batch_size=2, seed=5, transform=transform, collate_fn=collate)
    for _ in range(6):  # four epochs of three images
        (images_a, targets_a), (images_b, targets_b) = next(cached), next(plain)
        for a, b in zip(images_a, images_b):
            assert torch.equal(a, b)
        for a, b in zip(targets_a, targets_b):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
    assert counting.reads == 3


def test_cache_stops_holding_at_its_budget():
    items = [(torch.zeros(100, dtype=torch.uint8), {"k": torch.zeros(10, dtype=torch.uint8)}) for _ in range(5)]
    cache = DecodedCache(items, max_bytes=250)
    for i in range(5):
        image, target = cache[i]
        target["new"] = 1  # a transform adding keys leaves the cached sample alone
    assert sorted(cache.items) == [0, 1] and cache.held == 220
    assert "new" not in cache[0][1]
