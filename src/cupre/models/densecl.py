"""DenseCL: MoCo's global contrast plus a dense one, on the detector's own backbone.

Wang et al., "Dense Contrastive Learning for Self-Supervised Visual Pre-Training" (CVPR
2021). Beside MoCo's globally pooled embedding, a dense projection head (1x1 conv, ReLU,
1x1 conv) maps a backbone level to an ``S``-location grid of embeddings per view. Each
query location's positive is the key location whose *backbone* feature is most similar
(the correspondence between the two views, Eq. 3 of the paper); its negatives are the
pooled dense keys of the batch's other images and of a queue of earlier batches (their
Eq. 2). The loss mixes the two: ``(1 - w) * L_global + w * L_dense`` (``w = 0.5`` in
the paper). Here the dense contrast runs on each level in ``levels`` (indices into the
backbone's maps, e.g. ``[-2, -1]`` for C4 and C5, the levels the FPN reads) and the dense
loss is their mean: nuclei of 20 px are smaller than a C5 cell (32 px).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cupre.losses.contrastive import info_nce
from cupre.models.moco import MoCo, enqueue


def dense_head(in_channels: int, hidden_dim: int, dim: int) -> nn.Sequential:
    """DenseCL's dense projection: ``BxC_inxhxw`` -> ``Bxdimxhxw``."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, dim, 1))


class DenseCL(MoCo):
    """MoCo (:class:`cupre.models.moco.MoCo`) plus dense contrast on ``levels``.

    Args:
        level_channels: channels of every backbone map (``feature_info.channels()``).
        levels: indices of the maps that get a dense head.
        dense_weight: ``w`` of the mix.
        **moco: :class:`MoCo`'s arguments (``in_channels`` is the last map's).
    """

    def __init__(self, *, level_channels: list[int], levels: tuple[int, ...] = (-1,), dense_weight: float = 0.5,
                 **moco) -> None:
        super().__init__(**moco)
        if not 0.0 <= dense_weight <= 1.0 or not levels:
            raise ValueError(f"DenseCL: bad dense_weight={dense_weight} or levels={levels}")
        self.levels = tuple(levels)
        self.dense_weight = dense_weight
        dim, hidden = self.queue.shape[1], self.projection[0].out_features
        self.dense = nn.ModuleList(dense_head(level_channels[i], hidden, dim) for i in self.levels)
        self.key_dense = copy.deepcopy(self.dense)
        for p in self.key_dense.parameters():
            p.requires_grad_(False)
        size = self.queue.shape[0]
        self.register_buffer("dense_queue", torch.zeros(len(self.levels), size, dim))  # LxKxC
        self.register_buffer("dense_ptr", torch.zeros(len(self.levels), dtype=torch.long))
        self.register_buffer("dense_len", torch.zeros(len(self.levels), dtype=torch.long))

    def query_parameters(self) -> list[nn.Parameter]:
        return super().query_parameters() + list(self.dense.parameters())

    def _key_parameters(self) -> list[nn.Parameter]:
        # MoCo's constructor asks before the dense heads exist (it freezes the key encoder)
        dense = list(self.key_dense.parameters()) if "key_dense" in self._modules else []
        return super()._key_parameters() + dense

    @torch.no_grad()
    def sync_key_encoder(self) -> None:
        super().sync_key_encoder()
        self.key_dense.load_state_dict(self.dense.state_dict())
        self.dense_queue.zero_()
        self.dense_ptr.zero_()
        self.dense_len.zero_()

    def _dense_loss(self, level: int, fq: torch.Tensor, fk: torch.Tensor, qd: torch.Tensor, kd: torch.Tensor):
        """One level's dense InfoNCE: ``fq``/``fk`` backbone maps ``BxCxS`` (for the
        correspondence), ``qd``/``kd`` normalised dense embeddings ``BxDxS``."""
        b, d, s = qd.shape
        with torch.no_grad():
            sim = torch.einsum("bcs,bct->bst", F.normalize(fq, dim=1), F.normalize(fk, dim=1))  # BxSxS
            match = sim.argmax(dim=2)  # BxS: each query location's most similar key location
            positive = torch.gather(kd, 2, match[:, None, :].expand(-1, d, -1))  # BxDxS
            pooled = F.normalize(kd.mean(dim=2), dim=1)  # BxD: one dense key per image, the negatives
            queue = self.dense_queue[level, : int(self.dense_len[level])].clone()  # K'xD
        q = qd.permute(0, 2, 1).reshape(b * s, d)  # (B*S)xD
        pos = (q * positive.permute(0, 2, 1).reshape(b * s, d)).sum(dim=1, keepdim=True)  # (B*S)x1
        others = q @ pooled.T  # (B*S)xB, the own image's column masked out
        own = torch.arange(b, device=q.device).repeat_interleave(s)
        others = others.masked_fill(F.one_hot(own, b).bool(), float("-inf"))
        logits = torch.cat([pos, others, q @ queue.T], dim=1) / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(b * s, dtype=torch.long, device=q.device))
        acc = (logits.detach().argmax(dim=1) == 0).float().mean()
        enqueue(self.dense_queue[level], self.dense_ptr[level], self.dense_len[level], pooled)
        return loss, acc

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"moco/loss": (1 - w) * global InfoNCE, "dense/loss": w * mean dense InfoNCE,
        "moco/acc", "dense/acc"}``; updates the key encoder, then the queues."""
        maps_q = self._maps(self.backbone, im_q)
        q = self._pooled(self.projection, maps_q)  # NxC
        with torch.no_grad():
            self._momentum_update()
            maps_k = self._maps(self.key_backbone, im_k)
            k = self._pooled(self.key_projection, maps_k)
        negatives = self.queue[: int(self.queue_len)].clone().detach()
        global_loss, logits = info_nce(q, k, negatives, self.temperature)
        acc = (logits.detach().argmax(dim=1) == torch.arange(q.shape[0], device=q.device)).float().mean()
        dense_losses, dense_accs = [], []
        for j, (level, head, key_head) in enumerate(zip(self.levels, self.dense, self.key_dense)):
            fq, fk = maps_q[level], maps_k[level]
            qd = F.normalize(head(fq), dim=1).flatten(2)  # BxDxS
            with torch.no_grad():
                kd = F.normalize(key_head(fk), dim=1).flatten(2)  # BxDxS
            loss, dense_acc = self._dense_loss(j, fq.detach().flatten(2), fk.flatten(2), qd, kd)
            dense_losses.append(loss)
            dense_accs.append(dense_acc)
        self._dequeue_and_enqueue(k)
        w = self.dense_weight
        return {"moco/loss": (1 - w) * global_loss, "dense/loss": w * torch.stack(dense_losses).mean(),
                "moco/acc": acc, "dense/acc": torch.stack(dense_accs).mean()}
