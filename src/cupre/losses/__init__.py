"""Losses of CUPre besides the detector's own: MoCo's InfoNCE and the L2-SP penalty."""

from cupre.losses.contrastive import info_nce
from cupre.losses.l2sp import l2sp_penalty, snapshot

__all__ = ["info_nce", "l2sp_penalty", "snapshot"]
