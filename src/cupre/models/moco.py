"""MoCo v2 on the detector's own backbone (the paper's Back), for unlabeled cell images.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR
2020) with the v2 changes of Chen et al., "Improved Baselines with Momentum Contrastive
Learning" (2020): an MLP projection head, blur augmentation, temperature 0.2.

The query encoder *is* the backbone module handed in (``moco.backbone is
detector.backbone``), so what MoCo learns is in the detector with no key renaming. The
key encoder is a momentum copy (Eq. 2); the loss is InfoNCE over a queue of keys (Eq. 1).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cupre.losses.contrastive import info_nce
from cupre.models import PIXEL_MEAN, PIXEL_STD


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``NxC`` on every rank -> ``(N*world)xC``, in rank order; the input itself when not
    distributed. No gradient flows through the gathered copies."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def projection_head(in_channels: int, hidden_dim: int, dim: int) -> nn.Sequential:
    """MoCo v2's MLP head: Linear-ReLU-Linear, ``Nxin_channels`` -> ``Nxdim``."""
    return nn.Sequential(nn.Linear(in_channels, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))


class MoCo(nn.Module):
    """Momentum contrast with a queue of negative keys.

    Args:
        backbone: the query encoder's body, used as is (not copied): ``backbone(x)``
            returns a list (or dict) of feature maps, the last one the deepest.
        in_channels: channels of the last feature map (the detector's
            ``backbone_out_channels``).
        dim: ``C``, the embedding size.
        hidden_dim: the projection head's hidden width; ``None``: ``in_channels``
            (as MoCo v2).
        queue_size: ``K``, the number of negative keys.
        momentum: ``m`` of the key encoder update ``k = m*k + (1-m)*q``.
        temperature: ``tau`` of InfoNCE.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_channels: int,
        dim: int = 128,
        hidden_dim: int | None = 2048,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        if queue_size < 1 or not 0.0 <= momentum <= 1.0 or temperature <= 0:
            raise ValueError(f"MoCo: bad queue_size={queue_size}, momentum={momentum} or temperature={temperature}")
        self.momentum = momentum
        self.temperature = temperature
        self.backbone = backbone
        self.projection = projection_head(in_channels, hidden_dim or in_channels, dim)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projection = copy.deepcopy(self.projection)
        for p in self._key_parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))  # KxC
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The query encoder's parameters (backbone + projection head) that need gradients."""
        params = list(self.backbone.parameters()) + list(self.projection.parameters())
        return [p for p in params if p.requires_grad]

    def _query_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters()) + list(self.projection.parameters())

    def _key_parameters(self) -> list[nn.Parameter]:
        return list(self.key_backbone.parameters()) + list(self.key_projection.parameters())

    @torch.no_grad()
    def sync_key_encoder(self, generator: torch.Generator | None = None) -> None:
        """Copy the query encoder into the key encoder (e.g. after the backbone was
        trained elsewhere, or loaded from a checkpoint) and empty the queue.

        The queued keys came from the old key encoder; against the new one they are
        stale negatives, so the queue restarts as MoCo starts: random unit vectors
        (drawn from ``generator``, for a reproducible run), overwritten by real keys
        within ``K / N`` steps.
        """
        self.key_backbone.load_state_dict(self.backbone.state_dict())
        self.key_projection.load_state_dict(self.projection.state_dict())
        fresh = torch.randn(self.queue.shape, generator=generator)
        self.queue.copy_(F.normalize(fresh, dim=1))
        self.queue_ptr.zero_()

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """MoCo Eq. (2): ``theta_k <- m * theta_k + (1 - m) * theta_q``."""
        for k, q in zip(self._key_parameters(), self._query_parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    def _embed(self, body: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``Bx3xHxW`` images in [0, 1] -> ``BxC`` L2-normalised embeddings."""
        x = (images - self.pixel_mean) / self.pixel_std
        feats = body(x)
        last = list(feats.values())[-1] if isinstance(feats, dict) else feats[-1]  # BxC_inxhxw
        pooled = torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)  # BxC_in
        return F.normalize(head(pooled), dim=1)  # BxC

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (``NxC``, gathered over ranks) at the pointer, wrapping around."""
        keys = concat_all_gather(keys)  # (N*world)xC
        size = self.queue.shape[0]
        n = keys.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        if n > size:  # only the newest K keys fit
            keys, idx = keys[-size:], idx[-size:]
        self.queue.index_copy_(0, idx, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """One MoCo step's loss.

        Args:
            im_q: ``Nx3xHxW`` first views, float in [0, 1].
            im_k: ``Nx3xHxW`` second views of the same images.

        Returns:
            ``{"moco/loss": InfoNCE (scalar, differentiable in the query encoder),
            "moco/acc": fraction of queries whose top logit is their positive key}``.
            Updates the key encoder (before computing keys) and the queue (after).
        """
        q = self._embed(self.backbone, self.projection, im_q)  # NxC
        with torch.no_grad():
            self._momentum_update()
            k = self._embed(self.key_backbone, self.key_projection, im_k)  # NxC
        loss, logits = info_nce(q, k, self.queue.clone().detach(), self.temperature)  # Nx(1+K)
        acc = (logits.detach().argmax(dim=1) == 0).float().mean()
        self._dequeue_and_enqueue(k)
        return {"moco/loss": loss, "moco/acc": acc}
