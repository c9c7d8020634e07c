"""Losses and regularisers: InfoNCE (MoCo) and L2-SP."""

from cupre.losses.contrastive import info_nce
from cupre.losses.l2sp import L2SP, l2sp_penalty, relative_drift, snapshot

__all__ = ["L2SP", "info_nce", "l2sp_penalty", "relative_drift", "snapshot"]
