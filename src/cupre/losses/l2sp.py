"""L2-SP: keep weights close to a starting point while training on another task.

Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks" (ICML 2018), the L2-SP regulariser, in the form CUPre (Liao et
al.) uses on the backbone during the COCO step of alternating multi-task training:

    Omega(w) = weight * sum_l [ alpha * ||w_l - w0_l||^2 + (1 - alpha) * ||w_l||^2 ]

with ``w0`` the weights when the step began (a :func:`snapshot`). ``alpha = 1`` is the
pure starting-point penalty, ``alpha = 0`` plain weight decay.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from cupre.errors import CupreError


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter of ``module`` (the ``w0`` of L2-SP), by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def l2sp_penalty(
    module: nn.Module,
    reference: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    weight: float = 1.0,
) -> torch.Tensor:
    """The L2-SP penalty ``Omega(w)`` over the trainable parameters of ``module``.

    Args:
        module: the regularised module (e.g. the detector's backbone).
        reference: ``w0`` by parameter name, as from :func:`snapshot` of the same module
            (or a state dict with the same names); detached here.
        alpha: the balance in [0, 1] between the starting-point and plain L2 terms.
        weight: the overall coefficient.

    Returns:
        A scalar tensor on the module's device, differentiable in the parameters.

    Raises:
        CupreError: ``alpha`` is out of range, or a trainable parameter is missing from
            ``reference`` or has another shape there.
    """
    if not 0.0 <= alpha <= 1.0:
        raise CupreError(f"l2sp: alpha must be in [0, 1], got {alpha}")
    terms = []
    device = None
    for name, w in module.named_parameters():
        device = w.device
        if not w.requires_grad:
            continue
        if name not in reference:
            raise CupreError(f"l2sp: parameter {name!r} is missing from the reference weights")
        w0 = reference[name]
        if tuple(w0.shape) != tuple(w.shape):
            raise CupreError(
                f"l2sp: parameter {name!r} has shape {tuple(w.shape)} but {tuple(w0.shape)} in the reference"
            )
        w0 = w0.detach().to(device=w.device, dtype=w.dtype)
        terms.append(alpha * (w - w0).pow(2).sum() + (1.0 - alpha) * w.pow(2).sum())
    if not terms:
        return torch.zeros((), device=device)
    return weight * torch.stack(terms).sum()


def relative_drift(module: nn.Module, reference: Mapping[str, torch.Tensor]) -> float:
    """``||w - w0|| / ||w0||`` over the parameters of ``module`` named in ``reference``."""
    num, den = 0.0, 0.0
    with torch.no_grad():
        for name, w in module.named_parameters():
            if name in reference:
                w0 = reference[name].to(device=w.device, dtype=torch.float32)
                num += float((w.float() - w0).pow(2).sum())
                den += float(w0.pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


class L2SP:
    """Decoupled L2-SP, applied after each optimiser step like AdamW's weight decay.

    The gradient of ``Omega(w)/2`` (the module docstring's penalty with ``weight``
    folded in) is taken as a separate step scaled by the current learning rate:

        w <- w - lr * weight * (alpha * (w - w0) + (1 - alpha) * w)

    Decoupled, its pull does not pass through the optimiser's moments (with Adam the
    penalty's gradient would be normalised away) nor through gradient clipping, so its
    strength is the same under SGD and AdamW: per step the distance to ``w0`` shrinks
    by the factor ``1 - lr * weight * alpha``. The optimiser's own weight decay is left
    as it is, so a run with and one without L2-SP differ in L2-SP alone.

    Args:
        module: the regularised part (e.g. the detector's backbone).
        reference: ``w0`` by parameter name, as from :func:`snapshot` of ``module``.
        alpha: balance between the starting-point and plain L2 terms, in [0, 1].
        weight: the strength (per unit of learning rate).
    """

    def __init__(self, module: nn.Module, reference: Mapping[str, torch.Tensor], *, alpha: float,
                 weight: float) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise CupreError(f"l2sp: alpha must be in [0, 1], got {alpha}")
        if weight < 0:
            raise CupreError(f"l2sp: weight must be >= 0, got {weight}")
        self.module, self.alpha, self.weight = module, alpha, weight
        self.pairs = []
        for name, w in module.named_parameters():
            if name not in reference:
                raise CupreError(f"l2sp: parameter {name!r} is missing from the reference weights")
            if tuple(reference[name].shape) != tuple(w.shape):
                raise CupreError(f"l2sp: parameter {name!r} has shape {tuple(w.shape)} but "
                                 f"{tuple(reference[name].shape)} in the reference")
            self.pairs.append((w, reference[name].detach().to(device=w.device, dtype=w.dtype)))
        self.reference = {name: w0 for (name, _), (_, w0) in zip(module.named_parameters(), self.pairs)}

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Apply one decoupled L2-SP step at learning rate ``lr`` (trainable weights only)."""
        rate = lr * self.weight
        if rate == 0:
            return
        for w, w0 in self.pairs:
            if w.requires_grad:
                w.sub_(rate * (self.alpha * (w - w0) + (1.0 - self.alpha) * w))

    def value(self) -> torch.Tensor:
        """``Omega(w)`` now (for logging; no gradient)."""
        with torch.no_grad():
            return l2sp_penalty(self.module, self.reference, alpha=self.alpha, weight=self.weight)
