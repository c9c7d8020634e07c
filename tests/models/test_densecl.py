"""DenseCL beside MoCo: the dense heads, the correspondence between views, the queues."""

from __future__ import annotations

import timm
import torch
from torch import nn

from cupre.models.densecl import DenseCL

BATCH, SIZE = 3, 64


def make_densecl(levels=(-2, -1)) -> DenseCL:
    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    channels = backbone.feature_info.channels()
    return DenseCL(backbone=backbone, in_channels=channels[-1], level_channels=channels, levels=levels,
                   dim=8, hidden_dim=16, queue_size=12, momentum=0.0, temperature=0.2)


def test_dense_heads_train_and_their_key_copies_do_not():
    model = make_densecl()
    trained = {id(p) for p in model.query_parameters()}
    assert {id(p) for p in model.dense.parameters()} <= trained
    assert not trained & {id(p) for p in model.key_dense.parameters()}
    assert all(not p.requires_grad for p in model.key_dense.parameters())
    assert [h[0].in_channels for h in model.dense] == [256, 512]  # C4 and C5 of a ResNet-18


def test_identical_views_match_each_location_to_itself():
    """With the key encoder equal to the query encoder and the same image as both views,
    every query location's most similar key location is its own, so each dense positive
    is the query itself (cosine 1) and wins over every negative."""
    model = make_densecl()
    model.sync_key_encoder()
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out = model(images, images.clone())
    assert float(out["dense/acc"]) == 1.0
    assert set(out) == {"moco/loss", "dense/loss", "moco/acc", "dense/acc"}
    assert out["dense/loss"].requires_grad and out["moco/loss"].requires_grad
    out["dense/loss"].backward()
    assert all(p.grad is not None for p in model.dense.parameters())


def test_dense_queues_fill_with_one_key_per_image_and_restart_empty():
    model = make_densecl()
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    with torch.no_grad():
        model(images, images.flip(-1))
        model(images, images.flip(-2))
    assert model.dense_len.tolist() == [2 * BATCH, 2 * BATCH] and int(model.queue_len) == 2 * BATCH
    model.sync_key_encoder()
    assert model.dense_len.tolist() == [0, 0] and int(model.queue_len) == 0
    assert torch.count_nonzero(model.dense_queue) == 0


def test_the_mix_weights_the_two_losses():
    model = make_densecl(levels=(-1,))
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    model.dense_weight = 0.0
    out = model(images, images.flip(-1))
    assert float(out["dense/loss"]) == 0.0 and float(out["moco/loss"]) > 0.0
    assert isinstance(model.dense[0], nn.Sequential)
