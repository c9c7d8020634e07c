"""MoCo v2 on the detector's own backbone (the paper's Back), for unlabeled cell images.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR
2020) with the v2 changes of Chen et al., "Improved Baselines with Momentum Contrastive
Learning" (2020): an MLP projection head, blur augmentation, temperature 0.2.

The query encoder *is* the backbone module handed in (``moco.backbone is
detector.backbone``), so what MoCo learns is in the detector with no key renaming. The
key encoder is a momentum copy (Eq. 2); the loss is InfoNCE over a queue of keys (Eq. 1).

Two departures, for AMT2's short MoCo steps (tens of iterations, the key encoder re-copied
at each): the negatives are the queue's *real* keys only (it restarts empty, not with
random vectors) plus the batch's other keys, so the first iterations after a restart
contrast against something; and the momentum can follow BYOL's cosine schedule from
``momentum`` towards 1 over the step (Grill et al. 2020), so that the keys follow the
query encoder within a step of 40 iterations instead of a time constant of 1,000.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cupre.losses.contrastive import info_nce
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.intensity import dark_background


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``NxC`` on every rank -> ``(N*world)xC``, in rank order; the input itself when not
    distributed. No gradient flows through the gathered copies."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, length: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (``NxC``, gathered over ranks) into the ring buffer ``queue`` (``KxC``)
    at ``ptr``, wrapping around; ``length`` counts its real keys (at most ``K``)."""
    keys = concat_all_gather(keys)  # (N*world)xC
    size, n = queue.shape[0], keys.shape[0]
    idx = (ptr + torch.arange(n, device=keys.device)) % size
    if n > size:  # only the newest K keys fit
        keys, idx = keys[-size:], idx[-size:]
    queue.index_copy_(0, idx, keys.to(queue.dtype))
    ptr.copy_((ptr + n) % size)
    length.copy_((length + n).clamp(max=size))


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
        queue_size: ``K``, the number of negative keys kept from earlier batches.
        momentum: ``m`` of the key encoder update ``k = m*k + (1-m)*q`` (the base value
            of the cosine schedule, :meth:`set_progress`).
        temperature: ``tau`` of InfoNCE.
        invert_bright: a view with a bright background is inverted before the body, as
            the detector's transform does (:mod:`cupre.models.intensity`).
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
        invert_bright: bool = False,
    ) -> None:
        super().__init__()
        self.invert_bright = invert_bright
        if queue_size < 1 or not 0.0 <= momentum <= 1.0 or temperature <= 0:
            raise ValueError(f"MoCo: bad queue_size={queue_size}, momentum={momentum} or temperature={temperature}")
        self.base_momentum = self.momentum = momentum
        self.temperature = temperature
        self.backbone = backbone
        self.projection = projection_head(in_channels, hidden_dim or in_channels, dim)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projection = copy.deepcopy(self.projection)
        for p in self._key_parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", torch.zeros(queue_size, dim))  # KxC, rows [0, queue_len) hold real keys
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def query_parameters(self) -> list[nn.Parameter]:
        """What MoCo trains: the query encoder (backbone + projection head)."""
        return list(self.backbone.parameters()) + list(self.projection.parameters())

    def _key_parameters(self) -> list[nn.Parameter]:
        return list(self.key_backbone.parameters()) + list(self.key_projection.parameters())

    @torch.no_grad()
    def sync_key_encoder(self) -> None:
        """Copy the query encoder into the key encoder (e.g. after the backbone was
        trained elsewhere, or loaded from a checkpoint) and empty the queue: its keys came
        from the old key encoder, stale negatives against the new one."""
        self.key_backbone.load_state_dict(self.backbone.state_dict())
        self.key_projection.load_state_dict(self.projection.state_dict())
        self.queue.zero_()
        self.queue_ptr.zero_()
        self.queue_len.zero_()

    def set_progress(self, progress: float, schedule: str = "constant") -> None:
        """The momentum at ``progress`` (0..1) through a step: ``momentum`` throughout
        (``constant``, MoCo) or BYOL's ``1 - (1 - m) * (cos(pi * progress) + 1) / 2``
        (``cosine``)."""
        if schedule == "cosine":
            p = min(1.0, max(0.0, progress))
            self.momentum = 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * p) + 1.0) / 2.0
        else:
            self.momentum = self.base_momentum

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """MoCo Eq. (2): ``theta_k <- m * theta_k + (1 - m) * theta_q``."""
        for k, q in zip(self._key_parameters(), self.query_parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    def _maps(self, body: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """``Bx3xHxW`` images in [0, 1] -> the body's feature maps, shallow to deep."""
        if self.invert_bright:
            images = dark_background(images)
        feats = body((images - self.pixel_mean) / self.pixel_std)
        return list(feats.values()) if isinstance(feats, dict) else list(feats)

    @staticmethod
    def _pooled(head: nn.Module, maps: list[torch.Tensor]) -> torch.Tensor:
        """The deepest map, globally pooled and projected: ``BxC`` L2-normalised embeddings."""
        pooled = torch.flatten(F.adaptive_avg_pool2d(maps[-1], 1), 1)  # BxC_in
        return F.normalize(head(pooled), dim=1)  # BxC

    def _embed(self, body: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``Bx3xHxW`` images in [0, 1] -> ``BxC`` L2-normalised embeddings."""
        return self._pooled(head, self._maps(body, images))

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (``NxC``, gathered over ranks) at the pointer, wrapping around."""
        enqueue(self.queue, self.queue_ptr, self.queue_len, keys)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """One MoCo step's loss.

        Args:
            im_q: ``Nx3xHxW`` first views, float in [0, 1].
            im_k: ``Nx3xHxW`` second views of the same images.

        Returns:
            ``{"moco/loss": InfoNCE (scalar, differentiable in the query encoder),
            "moco/acc": fraction of queries whose top logit is their positive key}``;
            the negatives are the other images' keys and the queue's real keys.
            Updates the key encoder (before computing keys) and the queue (after).
        """
        q = self._embed(self.backbone, self.projection, im_q)  # NxC
        with torch.no_grad():
            self._momentum_update()
            k = self._embed(self.key_backbone, self.key_projection, im_k)  # NxC
        negatives = self.queue[: int(self.queue_len)].clone().detach()  # K'xC, K' <= K
        loss, logits = info_nce(q, k, negatives, self.temperature)  # Nx(N+K')
        acc = (logits.detach().argmax(dim=1) == torch.arange(q.shape[0], device=q.device)).float().mean()
        self._dequeue_and_enqueue(k)
        return {"moco/loss": loss, "moco/acc": acc}
