"""InfoNCE over a queue of negative keys, as in MoCo.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning"
(CVPR 2020), Eq. (1):

    L_q = -log( exp(q.k+ / tau) / sum_{i=0..K} exp(q.k_i / tau) )

where ``k+`` is the key of the other view of the same image and the remaining ``K``
keys are the queue of earlier batches' keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's InfoNCE loss (Eq. 1), the positive key at logit index 0.

    Args:
        q: ``NxC`` queries, L2-normalised.
        k: ``NxC`` positive keys (one per query), L2-normalised, no gradient needed.
        queue: ``KxC`` negative keys, L2-normalised.
        temperature: ``tau`` > 0.

    Returns:
        ``(loss, logits)``: the mean cross entropy over the batch (a scalar) and the
        ``Nx(1+K)`` logits ``[q.k+, q.queue^T] / tau``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # Nx1
    l_neg = torch.einsum("nc,kc->nk", q, queue)  # NxK
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # Nx(1+K)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # positives at 0
    return F.cross_entropy(logits, labels), logits
