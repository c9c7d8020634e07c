"""The paper's Head: a region proposal network plus RoI heads (Mask R-CNN or Cascade).

:class:`TwoStageHead` only holds the two stages, so that their parameters are named
``head.rpn.*`` and ``head.roi_heads.*``; the detector calls them in turn.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from cupre.config import DetectorConfig
from cupre.models.heads.maskrcnn import (
    build_maskrcnn_roi_heads,
    build_rpn,
    reset_maskrcnn_predictors,
)
from cupre.models.neck import FEATURE_NAMES


class TwoStageHead(nn.Module):
    """RPN + RoI heads.

    Attributes:
        rpn: torchvision ``RegionProposalNetwork``: ``rpn(images, features, targets)`` ->
            ``(proposals: list[Kx4], losses)``.
        roi_heads: torchvision ``RoIHeads`` or the cascade heads:
            ``roi_heads(features, proposals, image_sizes, targets)`` ->
            ``(detections: list[dict], losses)``; eval dicts hold ``boxes``, ``labels``,
            ``scores`` and ``masks`` (``Nx1xMxM`` probabilities). At test time the same
            work in two steps: ``detect_boxes(features, proposals, image_sizes)`` ->
            detections without masks, then ``add_masks(features, detections,
            image_sizes)``, both over bounded chunks of RoIs.
    """

    def __init__(self, *, rpn: nn.Module, roi_heads: nn.Module) -> None:
        super().__init__()
        self.rpn = rpn
        self.roi_heads = roi_heads

    def reset_predictors(self, num_classes: int) -> None:
        """Re-initialise the class-specific layers for ``num_classes`` foreground classes."""
        if hasattr(self.roi_heads, "reset_predictors"):
            self.roi_heads.reset_predictors(num_classes)
        else:
            reset_maskrcnn_predictors(self.roi_heads, num_classes)


def build_head(cfg: DetectorConfig, *, norm_layer: Callable[..., nn.Module] | None) -> TwoStageHead:
    """The head for ``cfg.arch`` (``maskrcnn`` or ``cascade``) over ``cfg.fpn_channels`` maps.

    Args:
        cfg: detector config.
        norm_layer: GroupNorm factory for the box/mask heads, or None for no norm.
    """
    channels = cfg.fpn_channels
    if cfg.arch == "cascade":
        from cupre.models.heads.cascade import build_cascade_roi_heads

        roi_heads = build_cascade_roi_heads(
            cfg=cfg,
            in_channels=channels,
            featmap_names=list(FEATURE_NAMES),
            norm_layer=norm_layer,
            conv_dim=channels,  # sized like the Mask R-CNN heads (256 / 1024 / 256 at 256)
            fc_dim=4 * channels,
            mask_dim=channels,
        )
    else:
        roi_heads = build_maskrcnn_roi_heads(cfg, in_channels=channels, norm_layer=norm_layer)
    return TwoStageHead(rpn=build_rpn(cfg, in_channels=channels), roi_heads=roi_heads)


__all__ = ["TwoStageHead", "build_head", "build_maskrcnn_roi_heads", "build_rpn", "reset_maskrcnn_predictors"]
