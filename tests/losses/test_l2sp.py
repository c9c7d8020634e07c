"""The L2-SP penalty and its reference snapshot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cupre.errors import CupreError
from cupre.losses import l2sp_penalty, snapshot


def value(t: torch.Tensor) -> float:
    return float(t.detach())


def tiny_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def perturb(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)


def test_zero_at_reference_when_alpha_is_one():
    module = tiny_module()
    ref = snapshot(module)
    assert value(l2sp_penalty(module, ref, alpha=1.0, weight=3.0)) == 0.0
    perturb(module)
    assert value(l2sp_penalty(module, ref, alpha=1.0, weight=3.0)) > 0.0


def test_value_and_gradient_match_the_formula():
    alpha, weight = 0.3, 0.7
    module = tiny_module()
    ref = snapshot(module)
    perturb(module)
    penalty = l2sp_penalty(module, ref, alpha=alpha, weight=weight)
    expected = weight * sum(
        alpha * ((p - ref[n]) ** 2).sum() + (1 - alpha) * (p**2).sum() for n, p in module.named_parameters()
    )
    assert value(penalty) == pytest.approx(value(expected), rel=1e-6)
    penalty.backward()
    for name, p in module.named_parameters():
        grad = weight * (2 * alpha * (p.detach() - ref[name]) + 2 * (1 - alpha) * p.detach())
        torch.testing.assert_close(p.grad, grad, rtol=0, atol=1e-6)


def test_snapshot_is_a_detached_copy():
    module = tiny_module()
    ref = snapshot(module)
    first = module[0].weight
    assert set(ref) == {n for n, _ in module.named_parameters()}
    assert not ref["0.weight"].requires_grad
    with torch.no_grad():
        first.add_(1.0)
    assert torch.allclose(ref["0.weight"] + 1.0, first)


def test_frozen_parameters_do_not_count():
    module = tiny_module()
    ref = snapshot(module)
    perturb(module)
    module[0].weight.requires_grad_(False)
    before = value(l2sp_penalty(module, ref, alpha=0.5))
    with torch.no_grad():
        module[0].weight.mul_(10.0)
    assert value(l2sp_penalty(module, ref, alpha=0.5)) == pytest.approx(before)
    del ref["0.weight"]  # a frozen parameter may be absent from the reference
    assert value(l2sp_penalty(module, ref, alpha=0.5)) == pytest.approx(before)


def test_missing_or_misshapen_reference_is_a_clear_error():
    module = tiny_module()
    ref = snapshot(module)
    del ref["3.bias"]
    with pytest.raises(CupreError, match="3.bias"):
        l2sp_penalty(module, ref, alpha=0.5)
    ref = snapshot(module)
    ref["3.weight"] = torch.zeros(3, 3)
    with pytest.raises(CupreError, match="shape"):
        l2sp_penalty(module, ref, alpha=0.5)
    with pytest.raises(CupreError, match="alpha"):
        l2sp_penalty(module, snapshot(module), alpha=1.5)


def test_decoupled_l2sp_pulls_towards_the_reference_at_the_stated_rate():
    from cupre.losses import L2SP, relative_drift

    module = tiny_module()
    ref = snapshot(module)
    perturb(module)
    before = relative_drift(module, ref)
    reg = L2SP(module, ref, alpha=1.0, weight=10.0)
    reg.step(lr=0.05)  # removes lr * weight * alpha = 50% of the distance to w0
    assert relative_drift(module, ref) == pytest.approx(0.5 * before, rel=1e-5)
    distance = sum(float(((p - ref[n]) ** 2).sum()) for n, p in module.named_parameters())
    assert float(reg.value()) == pytest.approx(10.0 * distance, rel=1e-5)  # the logged penalty, Omega(w)
    plain = tiny_module()
    weights = [p.detach().clone() for p in plain.parameters()]
    L2SP(plain, snapshot(plain), alpha=0.0, weight=2.0).step(lr=0.1)  # alpha 0: plain weight decay
    assert all(torch.allclose(p, 0.8 * w) for p, w in zip(plain.parameters(), weights))
