"""MoCo v2 on a timm features_only backbone, and the InfoNCE loss."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cupre.losses import info_nce
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.moco import MoCo, concat_all_gather

BATCH, SIZE, QUEUE, DIM = 4, 64, 16, 8


def tiny_backbone() -> nn.Module:
    return timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))


def make_moco(momentum: float = 0.9) -> MoCo:
    torch.manual_seed(0)
    backbone = tiny_backbone()
    return MoCo(
        backbone=backbone,
        in_channels=backbone.feature_info.channels()[-1],
        dim=DIM,
        hidden_dim=32,
        queue_size=QUEUE,
        momentum=momentum,
        temperature=0.2,
    )


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    im = torch.rand(BATCH, 3, SIZE, SIZE, generator=g)
    return im, (im.flip(-1) * 0.9 + 0.05)


def params_of(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def sgd_step(moco: MoCo, seed: int) -> dict[str, torch.Tensor]:
    opt = torch.optim.SGD(moco.query_parameters(), lr=0.5)
    out = moco(*images(seed))
    opt.zero_grad()
    out["moco/loss"].backward()
    opt.step()
    return out


@torch.no_grad()
def keys_of(moco: MoCo, im_k: torch.Tensor) -> torch.Tensor:
    # train-mode BN uses the batch statistics, so recomputing gives the same keys
    return moco._embed(moco.key_backbone, moco.key_projection, im_k)


def test_backbone_is_the_detector_module_and_key_encoder_is_frozen_copy():
    moco = make_moco()
    backbone = moco.backbone
    assert isinstance(backbone, nn.Module) and moco.backbone is backbone
    assert moco.key_backbone is not backbone
    assert set(moco.key_backbone.state_dict()) == set(backbone.state_dict())
    assert all(not p.requires_grad for p in moco.key_backbone.parameters())
    assert all(not p.requires_grad for p in moco.key_projection.parameters())
    trainable = {id(p) for p in moco.query_parameters()}
    expected = {id(p) for p in list(backbone.parameters()) + list(moco.projection.parameters())}
    assert trainable == expected
    assert not trainable & {id(p) for p in moco.key_backbone.parameters()}
    # the projection is an MLP (Linear-ReLU-Linear) from the backbone's channels to dim
    linears = [m for m in moco.projection.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 32), (32, DIM)]
    assert int(moco.queue_len) == 0  # no real key yet: no negative from the queue


def test_step_moves_query_encoder_and_key_encoder_only_by_momentum():
    m = 0.9
    moco = make_moco(momentum=m)
    sgd_step(moco, seed=1)  # query and key encoders now differ
    q1 = params_of(moco.backbone, moco.projection)
    k1 = params_of(moco.key_backbone, moco.key_projection)
    assert any(not torch.equal(a, b) for a, b in zip(q1, k1))

    out = sgd_step(moco, seed=2)
    assert torch.isfinite(out["moco/loss"])
    q2 = params_of(moco.backbone, moco.projection)
    k2 = params_of(moco.key_backbone, moco.key_projection)
    # key encoder: the momentum update with the query weights of before the step,
    # exact up to float32 rounding (compared in float64)
    for a, k_old, q_old in zip(k2, k1, q1):
        k_old, q_old = k_old.double(), q_old.double()
        error = (a.double() - (m * k_old + (1 - m) * q_old)).abs()
        assert bool((error <= 2.5e-7 * (m * k_old.abs() + (1 - m) * q_old.abs())).all())
    assert any(not torch.equal(a, b) for a, b in zip(k2, k1))
    # the optimiser moved the backbone and the projection head
    n_bb = len(list(moco.backbone.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(q2[:n_bb], q1[:n_bb]))
    assert any(not torch.equal(a, b) for a, b in zip(q2[n_bb:], q1[n_bb:]))
    assert all(p.grad is None for p in moco.key_backbone.parameters())


def test_queue_receives_keys_at_pointer_and_wraps():
    moco = make_moco()
    assert int(moco.queue_ptr) == 0
    im_q, im_k = images(3)
    with torch.no_grad():
        moco(im_q, im_k)
    keys = keys_of(moco, im_k)
    torch.testing.assert_close(moco.queue[:BATCH], keys, rtol=0, atol=1e-5)
    assert int(moco.queue_ptr) == BATCH

    moco.queue_ptr.fill_(QUEUE - 2)  # the next batch wraps around the end
    before = moco.queue.clone()
    im_q, im_k = images(4)
    with torch.no_grad():
        moco(im_q, im_k)
    keys = keys_of(moco, im_k)
    written = [QUEUE - 2, QUEUE - 1, 0, 1]
    torch.testing.assert_close(moco.queue[written], keys, rtol=0, atol=1e-5)
    untouched = [i for i in range(QUEUE) if i not in written]
    assert torch.equal(moco.queue[untouched], before[untouched])
    assert int(moco.queue_ptr) == (QUEUE - 2 + BATCH) % QUEUE


def hand_info_nce(q, k, queue, tau):
    """Eq. 1 by hand: query i's positive is k[i], its negatives the other keys and the queue."""
    losses = []
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ k[j]) / tau) for j in range(k.shape[0]) if j != i)
        neg += sum(math.exp(float(q[i] @ queue[j]) / tau) for j in range(queue.shape[0]))
        losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


def test_info_nce_matches_hand_computation():
    g = torch.Generator().manual_seed(5)
    q = F.normalize(torch.randn(BATCH, DIM, generator=g), dim=1)
    k = F.normalize(torch.randn(BATCH, DIM, generator=g), dim=1)
    queue = F.normalize(torch.randn(QUEUE, DIM, generator=g), dim=1)
    loss, logits = info_nce(q, k, queue, 0.2)
    assert logits.shape == (BATCH, BATCH + QUEUE)
    assert loss == pytest.approx(hand_info_nce(q, k, queue, 0.2), rel=1e-5)
    torch.testing.assert_close(logits[:, :BATCH], q @ k.T / 0.2)
    torch.testing.assert_close(logits[:, BATCH:], q @ queue.T / 0.2)
    empty, _ = info_nce(q, k, queue[:0], 0.2)  # an empty queue: the batch's keys alone
    assert empty == pytest.approx(hand_info_nce(q, k, queue[:0], 0.2), rel=1e-5)


def test_forward_contrasts_against_the_real_keys_only():
    moco = make_moco()
    for seed, real in ((6, 0), (7, BATCH)):  # a fresh queue holds no key; after one batch, BATCH keys
        im_q, im_k = images(seed)
        queue0 = moco.queue[:real].clone()
        out = moco(im_q, im_k)
        with torch.no_grad():
            q = moco._embed(moco.backbone, moco.projection, im_q)
        k = keys_of(moco, im_k)
        assert float(out["moco/loss"].detach()) == pytest.approx(hand_info_nce(q, k, queue0, 0.2), rel=1e-4)
        logits = torch.cat([q @ k.T, q @ queue0.T], 1)
        assert float(out["moco/acc"]) == pytest.approx(float((logits.argmax(1) == torch.arange(BATCH)).float().mean()))
        assert out["moco/loss"].requires_grad and set(out) == {"moco/loss", "moco/acc"}
        assert int(moco.queue_len) == real + BATCH


def test_cosine_momentum_runs_from_the_base_value_to_one():
    moco = make_moco(momentum=0.99)
    moco.set_progress(0.0, "cosine")
    assert moco.momentum == pytest.approx(0.99)
    moco.set_progress(0.5, "cosine")
    assert moco.momentum == pytest.approx(0.995)
    moco.set_progress(1.0, "cosine")
    assert moco.momentum == pytest.approx(1.0)
    moco.set_progress(0.5, "constant")
    assert moco.momentum == pytest.approx(0.99)


class RecordingBackbone(nn.Module):
    """A one-conv 'backbone' that remembers its input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=4)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return [x, self.conv(x)]


def test_images_are_standardised_with_the_detector_pixel_stats():
    backbone = RecordingBackbone()
    moco = MoCo(backbone=backbone, in_channels=6, dim=4, hidden_dim=None, queue_size=8)
    im_q, im_k = images(7)
    moco(im_q, im_k)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.seen[0], (im_q - mean) / std)
    assert moco.projection[0].out_features == 6  # hidden_dim None: in_channels


def test_concat_all_gather_is_identity_without_distributed():
    x = torch.randn(3, 2)
    assert concat_all_gather(x) is x


def test_resync_empties_the_queue_of_stale_keys():
    moco = make_moco()
    for seed in range(3):
        moco(*images(seed))
    assert int(moco.queue_ptr) != 0 and int(moco.queue_len) == BATCH * 3
    moco.sync_key_encoder()
    assert int(moco.queue_ptr) == 0 and int(moco.queue_len) == 0
    # no key of the old encoder is left among the negatives: the next step sees its own batch only
    im_q, im_k = images(9)
    out = moco(im_q, im_k)
    with torch.no_grad():
        q = moco._embed(moco.backbone, moco.projection, im_q)
    k = keys_of(moco, im_k)
    assert float(out["moco/loss"].detach()) == pytest.approx(hand_info_nce(q, k, k[:0], 0.2), rel=1e-4)


def test_each_moco_step_covers_every_unlabeled_image():
    from cupre.config import MocoConfig
    from cupre.train.pretrain import moco_covering

    cfg = MocoConfig.from_dict({"optim": {"iterations": 40, "batch_size": 16}})
    assert moco_covering(cfg, 667).optim.iterations == 42  # 640 views would miss 27 of 667 images
    assert moco_covering(cfg, 100).optim.iterations == 40


def test_invert_bright_views_reach_the_body_as_the_detector_sees_them():
    """With ``invert_bright`` a bright-background view is inverted before the body (as the
    detector's transform does), a dark one left alone."""
    torch.manual_seed(0)
    plain = make_moco().eval()
    inverting = make_moco().eval()
    inverting.load_state_dict(plain.state_dict())
    inverting.invert_bright = True
    dark = torch.rand(2, 3, 64, 64) * 0.3
    bright = torch.cat([1.0 - dark[:1], dark[1:]])  # one bright view, one dark
    with torch.no_grad():
        want = plain._maps(plain.backbone, dark)
        got = inverting._maps(inverting.backbone, bright)
        plain_bright = plain._maps(plain.backbone, bright)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))
    assert not torch.allclose(plain_bright[-1][0], want[-1][0])
