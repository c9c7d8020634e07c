"""The paper's Back: a timm ResNet / ResNeSt body returning C2..C5 (strides 4, 8, 16, 32).

Why GroupNorm by default (``norm="gn"``): timm's ResNeSt normalises the output of its
split-attention MLP, a ``Bx C x1x1`` pooled vector, and BatchNorm cannot train on that at
batch size 1 ("Expected more than 1 value per channel"). GroupNorm does not depend on the
batch size at all, so the COCO warm-up, MoCo at a small batch and few-shot fine-tuning at
batch 1-2 all normalise the same way, and the network trains from scratch (no ImageNet
statistics are needed, unlike ``frozen_bn``). On the ``1x1`` attention vector a 32-group
GN would normalise groups of one or two values (at 32 channels it raises at batch 1, and
otherwise flattens the attention), so those layers get one group (a LayerNorm over
channels).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import timm
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cupre.errors import CupreError

NormFactory = Callable[..., nn.Module]
OUT_INDICES = (1, 2, 3, 4)  # timm feature levels at strides 4, 8, 16, 32
GN_GROUPS = 32


def group_norm(num_channels: int, **kwargs: Any) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``num_channels`` is not a multiple of 32).

    ``kwargs`` (timm passes ``device`` / ``dtype``) go to :class:`torch.nn.GroupNorm`.
    """
    return nn.GroupNorm(math.gcd(GN_GROUPS, num_channels), num_channels, **kwargs)


def frozen_batch_norm(num_features: int, **kwargs: Any) -> FrozenBatchNorm2d:
    """torchvision's FrozenBatchNorm2d (statistics and affine are buffers, never trained)."""
    del kwargs  # timm passes device / dtype; the buffers are created on the default device
    return FrozenBatchNorm2d(num_features)


NORM_LAYERS: dict[str, NormFactory] = {
    "gn": group_norm,
    "frozen_bn": frozen_batch_norm,
    "bn": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
}


def norm_factory(norm: str) -> NormFactory:
    """The constructor for a ``DetectorConfig.norm`` name (``gn``, ``frozen_bn``, ``bn``, ``syncbn``)."""
    if norm not in NORM_LAYERS:
        raise CupreError(f"norm {norm!r} is not one of {', '.join(NORM_LAYERS)}")
    return NORM_LAYERS[norm]


def build_backbone(*, name: str, norm: str = "gn") -> nn.Module:
    """Create a timm ``features_only`` body with random (Kaiming) weights.

    Args:
        name: timm model name, e.g. ``resnet18``, ``resnet50``, ``resnest14d``,
            ``resnest50d``, ``resnest200e``.
        norm: ``gn`` | ``frozen_bn`` | ``bn`` | ``syncbn``.

    Returns:
        A module mapping a standardised ``Bx3xHxW`` image to a list of 4 feature maps
        ``[B x C_i x H/s x W/s for s in (4, 8, 16, 32)]``, with ``feature_info.channels()``
        giving ``C_i``. timm initialises convolutions with Kaiming-normal and zeroes the
        last norm of each residual block (not for ``frozen_bn``, whose weights could never
        move again).
    """
    if not timm.is_model(name):
        raise CupreError(f"backbone {name!r} is not a timm model (try resnet50, resnest50d ...)")
    body = timm.create_model(
        name,
        pretrained=False,
        features_only=True,
        out_indices=OUT_INDICES,
        norm_layer=norm_factory(norm),
        zero_init_last=norm != "frozen_bn",
    )
    reductions = body.feature_info.reduction()
    if list(reductions) != [4, 8, 16, 32]:
        raise CupreError(f"backbone {name!r} gives feature strides {reductions}, expected 4, 8, 16, 32")
    if norm == "gn":
        _attention_norms_to_layer_norm(body)
    return body


def _attention_norms_to_layer_norm(body: nn.Module) -> None:
    """Give each split-attention MLP norm (on a ``BxCx1x1`` vector) a single group."""
    for module in body.modules():
        if type(module).__name__ == "SplitAttn" and isinstance(module.bn1, nn.GroupNorm):
            channels = module.bn1.num_channels
            module.bn1 = nn.GroupNorm(1, channels, device=module.bn1.weight.device)


def backbone_channels(body: nn.Module) -> list[int]:
    """Channels of the 4 feature maps, from timm's ``feature_info``."""
    return list(body.feature_info.channels())
