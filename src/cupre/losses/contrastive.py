"""InfoNCE over the batch's keys and a queue of negative keys, as in MoCo.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning"
(CVPR 2020), Eq. (1):

    L_q = -log( exp(q.k+ / tau) / sum_{i=0..K} exp(q.k_i / tau) )

where ``k+`` is the key of the other view of the same image and the remaining keys are
the other images' keys of the batch and the queue of earlier batches' keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE whose negatives are the other queries' keys and a queue (Eq. 1 with the
    batch's keys among the ``K`` negatives); the positive of query ``i`` is at logit ``i``.

    Args:
        q: ``NxC`` queries, L2-normalised.
        k: ``NxC`` keys, ``k[i]`` the positive of ``q[i]``, L2-normalised.
        queue: ``KxC`` further negative keys (``K`` may be 0).
        temperature: ``tau`` > 0.

    Returns:
        ``(loss, logits)``: the mean cross entropy and the ``Nx(N+K)`` logits
        ``[q k^T, q queue^T] / tau``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = torch.cat([q @ k.T, q @ queue.T], dim=1) / temperature  # Nx(N+K)
    labels = torch.arange(q.shape[0], device=q.device)  # positives on the diagonal
    return F.cross_entropy(logits, labels), logits
