"""The paper's Neck: a feature pyramid (FPN) over the backbone's C2..C5.

Outputs P2..P5 (keys ``"0"``..``"3"``, strides 4..32) and P6 (``"pool"``, stride 64, a
max-pool of P5) with ``out_channels`` channels each, as torchvision's Mask R-CNN does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FEATURE_NAMES = ["0", "1", "2", "3"]  # P2..P5, the levels the RoI heads pool from


def build_fpn(
    *, in_channels_list: list[int], out_channels: int, norm_layer: Callable[..., nn.Module] | None = None
) -> FeaturePyramidNetwork:
    """torchvision's FPN with a max-pooled extra level.

    Args:
        in_channels_list: channels of C2..C5 (from timm's ``feature_info.channels()``).
        out_channels: channels of every pyramid level.
        norm_layer: normalisation after each lateral / output conv (GroupNorm for the
            ``gn`` detectors), or None for plain convs with bias.

    Returns:
        A module mapping ``OrderedDict("0".."3" -> C_i)`` to
        ``OrderedDict("0".."3", "pool" -> B x out_channels x H/s x W/s)``. Its convs are
        Kaiming-uniform initialised (``a=1``) by torchvision; norms start at weight 1,
        bias 0.
    """
    fpn = FeaturePyramidNetwork(
        in_channels_list=list(in_channels_list),
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm_layer,
    )
    for module in fpn.modules():
        if isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return fpn


def as_feature_dict(features: list[Tensor]) -> "OrderedDict[str, Tensor]":
    """Name the backbone's list of maps ``"0"``, ``"1"``, ... as the FPN expects."""
    return OrderedDict((str(level), feature) for level, feature in enumerate(features))
