"""Mask R-CNN / Cascade Mask R-CNN: transform -> Back -> Neck -> Head -> postprocess.

Input images are float ``3xHxW`` tensors in [0, 1] of any size. Training targets are
dicts with ``boxes`` (float ``Nx4`` XYXY pixels), ``labels`` (int64 ``N``, 1..C) and
``masks`` (uint8 ``NxHxW``); ``N`` may be 0.

In training the model returns a dict of named scalar losses (``loss_objectness``,
``loss_rpn_box_reg`` from the RPN; ``loss_classifier``, ``loss_box_reg``, ``loss_mask``
from the Mask R-CNN heads, or the cascade's per-stage keys). In eval it returns one dict
per image: ``boxes`` (float ``Nx4`` XYXY in original image pixels), ``labels`` (int64
``N``), ``scores`` (float ``N``), and the masks kept box-local (never ``N x H x W``):
``mask_origins`` (int64 ``Nx2`` ``(y0, x0)``) and ``mask_crops`` (``N`` bool tensors; mask
``i`` covers ``image[y0 + r, x0 + c]`` where ``mask_crops[i][r, c]``).

The detector never resizes on its own: training crops arrive at the object scale
(:mod:`cupre.scale`), and in eval ``scales`` gives each image's resize factor.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    resize_boxes,
)

from cupre.config import DetectorConfig
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.backbone import backbone_channels, build_backbone, group_norm
from cupre.models.heads import TwoStageHead, build_head
from cupre.models.neck import as_feature_dict, build_fpn
from cupre.models.paste import paste_masks_in_boxes
from cupre.scale import resize_image


class NativeTransform(GeneralizedRCNNTransform):
    """torchvision's transform without its resize: standardise and batch only."""

    def __init__(self, *, image_mean: list[float], image_std: list[float], size_divisible: int = 32) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=image_mean, image_std=image_std,
                         size_divisible=size_divisible)

    def resize(self, image: Tensor, target: dict | None = None) -> tuple[Tensor, dict | None]:
        return image, target


class CupreDetector(nn.Module):
    """Two-stage instance segmentation model built from named parts.

    Attributes:
        transform: :class:`NativeTransform` (standardise with ``PIXEL_MEAN`` /
            ``PIXEL_STD`` and batch; no resizing).
        backbone: timm ``features_only`` body: ``Bx3xHxW`` -> 4 maps at strides 4..32.
        neck: torchvision FPN: ``OrderedDict("0".."3")`` -> ``"0".."3", "pool"``.
        head: :class:`TwoStageHead` with ``.rpn`` and ``.roi_heads``.
        mask_threshold: probability above which a pasted mask pixel is foreground.
        object_size: the typical object side (px) the model works at, or None
            (:mod:`cupre.scale`).
    """

    def __init__(
        self,
        *,
        transform: GeneralizedRCNNTransform,
        backbone: nn.Module,
        neck: nn.Module,
        head: TwoStageHead,
        mask_threshold: float = 0.5,
        object_size: float | None = None,
    ) -> None:
        super().__init__()
        self.object_size = object_size
        self.transform = transform
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.mask_threshold = mask_threshold

    @property
    def backbone_out_channels(self) -> int:
        """Channels of the last (stride-32) backbone map."""
        return backbone_channels(self.backbone)[-1]

    def parts(self) -> dict[str, nn.Module]:
        """The paper's Back / Neck / Head, which together hold every parameter."""
        return {"backbone": self.backbone, "neck": self.neck, "head": self.head}

    def reset_predictors(self, num_classes: int) -> None:
        """Re-initialise the class-specific predictors for ``num_classes`` foreground classes."""
        self.head.reset_predictors(num_classes)

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        scales: list[float] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (eval); see the module docstring.

        ``scales`` (eval only): each image is resized by its factor before the
        backbone; detections still come back in the original pixels.
        """
        if self.training:
            check_targets(targets)
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        if scales is not None:
            if self.training:
                raise ValueError("scales are for eval; training crops arrive at the object scale")
            images = [resize_image(image, float(f)) for image, f in zip(images, scales)]
        batch, targets = self.transform(images, targets)
        features = self.neck(as_feature_dict(self.backbone(batch.tensors)))
        proposals, rpn_losses = self.head.rpn(batch, features, targets)
        detections, roi_losses = self.head.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.postprocess(detections, batch.image_sizes, original_sizes)

    def postprocess(
        self,
        detections: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Map boxes back to the original images and paste masks (batched, box-local) at that size.

        Args:
            detections: per image, ``boxes`` ``Nx4`` in resized-image pixels and
                ``masks`` ``Nx1xMxM`` probabilities (plus ``labels``, ``scores``).
            image_sizes: ``(h, w)`` of each resized image; original_sizes: ``(H, W)``.
        """
        results = []
        for det, size, (height, width) in zip(detections, image_sizes, original_sizes):
            boxes = resize_boxes(det["boxes"], size, (height, width))
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            result = {**det, "boxes": boxes}
            if "masks" in det:
                origins, crops = paste_masks_in_boxes(det.pop("masks"), boxes, (height, width),
                                                      threshold=self.mask_threshold)
                result.pop("masks", None)
                result["mask_origins"], result["mask_crops"] = origins, crops
            results.append(result)
        return results


def check_targets(targets: list[dict[str, Tensor]] | None) -> None:
    """Fail early on what would otherwise give NaN losses deep inside torchvision."""
    if targets is None:
        raise ValueError("targets are required in training mode")
    for index, target in enumerate(targets):
        boxes = target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {index}: boxes must be Nx4, got {tuple(boxes.shape)}")
        if bool((boxes[:, 2:] <= boxes[:, :2]).any()):
            raise ValueError(f"target {index}: boxes need x2 > x1 and y2 > y1")


def build_detector(cfg: DetectorConfig) -> CupreDetector:
    """Build the detector described by ``cfg`` with random weights (never downloaded).

    ``cfg.norm`` sets the backbone's normalisation. With ``gn`` the FPN, box head
    (4conv1fc) and mask head use GroupNorm too; with the BatchNorm variants they follow
    torchvision's stock Mask R-CNN (no norm, ``TwoMLPHead``).
    """
    backbone = build_backbone(name=cfg.backbone, norm=cfg.norm)
    head_norm: Callable[..., nn.Module] | None = group_norm if cfg.norm == "gn" else None
    neck = build_fpn(
        in_channels_list=backbone_channels(backbone), out_channels=cfg.fpn_channels, norm_layer=head_norm
    )
    transform = NativeTransform(image_mean=list(PIXEL_MEAN), image_std=list(PIXEL_STD))
    return CupreDetector(
        transform=transform,
        backbone=backbone,
        neck=neck,
        head=build_head(cfg, norm_layer=head_norm),
        mask_threshold=cfg.mask_threshold,
        object_size=cfg.object_size,
    )
