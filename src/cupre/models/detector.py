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

``precision`` (``fp32`` by default, ``bf16``) sets the autocast the forward pass runs
under; callers resolve the user's choice with :func:`cupre.devices.resolve_precision`.
Scores, boxes and mask probabilities always leave the heads in fp32.

At inference, in detectors of 128 or more channels, every convolution takes its input
channels-last (NHWC; :func:`channels_last_convs`): oneDNN's CPU convolutions and GPUs'
tensor cores run several times faster on it than on NCHW (one mask-head 3x3 conv over 64
RoIs on 2 threads here: 2,276 against 235 GFLOP/s in bf16, 345 against 121 in fp32; R50
inference at 2,000 detections 4.6 -> 3.0 s). Narrow models (the CPU presets' 64 channels)
and training ran slower with it here (an R18 training step 0.87 -> 1.08 s), so they keep
NCHW. The layout changes no value, and the weights stay as they are (NCHW, as saved).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    resize_boxes,
)

from cupre.config import DetectorConfig
from cupre.devices import autocast
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.backbone import backbone_channels, build_backbone, group_norm
from cupre.models.heads import TwoStageHead, build_head
from cupre.models.intensity import dark_background
from cupre.models.neck import as_feature_dict, build_fpn
from cupre.models.paste import paste_masks_in_boxes
from cupre.scale import resize_image


class NativeTransform(GeneralizedRCNNTransform):
    """torchvision's transform without its resize: standardise and batch only (and, with
    ``invert_bright``, a bright background made dark first: :mod:`cupre.models.intensity`)."""

    def __init__(self, *, image_mean: list[float], image_std: list[float], size_divisible: int = 32,
                 invert_bright: bool = False) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=image_mean, image_std=image_std,
                         size_divisible=size_divisible)
        self.invert_bright = invert_bright

    def normalize(self, image: Tensor) -> Tensor:
        return super().normalize(dark_background(image) if self.invert_bright else image)

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
        score_threshold: the score threshold validated with the model (the best AP@0.5
            on its validation images), or None; what prediction keeps by default.
        precision: ``fp32`` or ``bf16``: the autocast of :meth:`forward`.
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
        self.score_threshold: float | None = None
        self.transform = transform
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.mask_threshold = mask_threshold
        self.precision = "fp32"

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
        select: Callable[[int, Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (eval); see the module docstring.

        Eval only:
            scales: each image is resized by its factor before the backbone;
                detections still come back in the original pixels.
            select: ``select(i, boxes)`` -> bool ``N``: which of image ``i``'s detections
                (boxes ``Nx4`` in original pixels) to keep; masks are computed for those
                only.
        """
        if self.training:
            if scales is not None:
                raise ValueError("scales are for eval; training crops arrive at the object scale")
            check_targets(targets)
            with autocast(images[0].device if images else "cpu", self.precision):
                batch, targets = self.transform(images, targets)
                features = self.neck(as_feature_dict(self.backbone(batch.tensors)))
                proposals, rpn_losses = self.head.rpn(batch, features, targets)
                _, roi_losses = self.head.roi_heads(features, proposals, batch.image_sizes, targets)
            return {**rpn_losses, **roi_losses}
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        if scales is not None:
            images = [resize_image(image, float(f)) for image, f in zip(images, scales)]
        results: list = [None] * len(images)
        for ids in same_size_groups(images):  # never padded against another size (same_size_groups)
            originals = [original_sizes[i] for i in ids]
            keep = None if select is None else (lambda k, boxes, ids=ids: select(ids[k], boxes))
            detections, image_sizes = self._detect([images[i] for i in ids], originals, keep)
            for i, out in zip(ids, self.postprocess(detections, image_sizes, originals)):
                results[i] = out
        return results

    def _detect(self, images: list[Tensor], original_sizes: list[tuple[int, int]],
                select: Callable[[int, Tensor], Tensor] | None) -> tuple[list[dict[str, Tensor]], list]:
        """Eval on images of one size, one batch: detections in the batch's pixels, with
        their mask probabilities, and each image's size in that batch."""
        with autocast(images[0].device if images else "cpu", self.precision):
            batch, _ = self.transform(images, None)
            features = self.neck(as_feature_dict(self.backbone(batch.tensors)))
            proposals, _ = self.head.rpn(batch, features, None)
            heads = self.head.roi_heads
            detections = heads.detect_boxes(features, proposals, batch.image_sizes)
            if select is not None:
                detections = self._select(detections, select, batch.image_sizes, original_sizes)
            heads.add_masks(features, detections, batch.image_sizes)
        return detections, batch.image_sizes

    @staticmethod
    def _select(detections, select, image_sizes, original_sizes) -> list[dict[str, Tensor]]:
        """Keep the detections ``select`` accepts (judged on boxes in original pixels)."""
        kept = []
        for i, (det, size, original) in enumerate(zip(detections, image_sizes, original_sizes)):
            keep = torch.as_tensor(select(i, to_original(det["boxes"], size, original)), dtype=torch.bool)
            kept.append({k: v[keep.to(v.device)] for k, v in det.items()})
        return kept

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
            boxes = to_original(det["boxes"], size, (height, width))
            result = {**det, "boxes": boxes}
            if "masks" in result:
                result["mask_origins"], result["mask_crops"] = paste_masks_in_boxes(
                    result.pop("masks"), boxes, (height, width), threshold=self.mask_threshold)
            results.append(result)
        return results


def same_size_groups(images: list[Tensor]) -> list[list[int]]:
    """Indices of ``images`` grouped by ``(height, width)``, in order of first appearance.

    A batch pads its images to the largest, and GroupNorm's statistics then include the
    padding: an image's detections, and so its object-scale factor, would depend on which
    images share its batch. In eval each group of one size runs as its own batch.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    return list(groups.values())


def to_original(boxes: Tensor, size: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """Boxes of a resized ``size`` image in the ``original`` image's pixels, clipped to it."""
    height, width = original
    boxes = resize_boxes(boxes, size, original)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


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


CHANNELS_LAST_FROM = 128  # pyramid channels from which inference runs channels-last


def nhwc_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: in eval mode, a 4-D input tensor in channels-last memory (no copy
    when it is already) and, under autocast, in autocast's dtype, which the convolution
    would cast it to (one copy instead of two: a pooled chunk of RoIs comes in fp32 and
    NCHW); in training, the input as it is."""
    x, *rest = args
    if not module.training and isinstance(x, Tensor) and x.dim() == 4:
        device = x.device.type
        if x.is_floating_point() and device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device), memory_format=torch.channels_last)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)


def channels_last_convs(model: nn.Module) -> nn.Module:
    """Make every ``Conv2d`` of ``model`` run on channels-last inputs in eval mode (see the
    module docstring).

    Each conv's output is then channels-last too, so only the first conv of a chain (the
    stem, the first conv of each RoI head on a pooled chunk) converts. Weights, state
    dicts and outputs' values are unchanged.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_pre_hook(nhwc_input)
    return model


def weights_for_inference(model: nn.Module, precision: str) -> nn.Module:
    """Prepare a model that will only predict: no gradients, and in ``bf16`` the weights of
    its convolutions (transposed ones too) and linear layers stored in bf16: in cupre's
    detectors, exactly its tensors of two or more dimensions, which is how
    :func:`cupre.modelfile.load_model_file` converts them as it reads a file.

    Under bf16 autocast those layers cast their fp32 weights to bf16 at every call, so the
    outputs are the same; storing them so halves the weights' memory (R50-FPN: 176 MB
    -> 88 MB) and drops the per-call casts. Norm layers keep fp32, copied into memory of
    their own: loaded from a model file, they view its mapping, and these few kilobytes
    would keep the whole file's pages resident (R50: 176 MB). Not for a model that trains
    on: its weights must stay fp32.
    """
    model.requires_grad_(False)
    if precision == "bf16":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                module.to(torch.bfloat16)
            if nhwc_input in module._forward_pre_hooks.values():  # its weight in the input's layout, once
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
            for param in module.parameters(recurse=False):
                if param.dtype == torch.float32 and param.device.type == "cpu":
                    param.data = param.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.dtype == torch.float32 and buffer.device.type == "cpu":
                    module._buffers[name] = buffer.clone()  # a buffer's ``.data =`` keeps the file view it came from
    return model


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
    transform = NativeTransform(image_mean=list(PIXEL_MEAN), image_std=list(PIXEL_STD),
                                invert_bright=cfg.invert_bright)
    detector = CupreDetector(
        transform=transform,
        backbone=backbone,
        neck=neck,
        head=build_head(cfg, norm_layer=head_norm),
        mask_threshold=cfg.mask_threshold,
        object_size=cfg.object_size,
    )
    return channels_last_convs(detector) if cfg.fpn_channels >= CHANNELS_LAST_FROM else detector
