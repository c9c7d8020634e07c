"""The paper's Head for Mask R-CNN: an RPN and torchvision RoI heads (box + mask branches).

All parts are torchvision's; this module only sizes them from :class:`DetectorConfig`
and initialises them for training from scratch:

* RPN: ``anchors_per_octave`` anchor sizes per pyramid level (P2..P6) x ``aspect_ratios``, a one-conv
  ``RPNHead`` (normal, std 0.01); low-quality anchor matches only where anchors overlap
  the box (:class:`~cupre.models.heads.boxes.OverlapMatcher`); anchors inside a target's
  ``ignore_boxes`` are never background (:mod:`cupre.models.heads.ignore`).
* Box branch: 7x7 RoIAlign over P2..P5; with GroupNorm the "4conv1fc" head
  (``FastRCNNConvFCHead``: 4 GN convs + one fc), otherwise torchvision's ``TwoMLPHead``;
  representation size ``4 x fpn_channels`` (1,024 for 256 channels).
* Mask branch: 14x14 RoIAlign, ``MaskRCNNHeads`` (4 convs, GN when given), and
  ``MaskRCNNPredictor`` (deconv to 28x28 + 1x1 class logits).
* At test time (:class:`ChunkedRoIHeads`) both branches run over bounded chunks of boxes
  (:mod:`cupre.models.heads.chunks`), in two steps a caller may act between:
  ``detect_boxes`` then ``add_masks``.

Convs and fcs are Kaiming-initialised, norms start at weight 1 / bias 0, the classifier
at normal(0.01) and the box regressor at normal(0.001) (detectron2's choices).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.models.anchors import level_sizes
from cupre.models.heads.boxes import fp32_coder, overlap_matcher
from cupre.models.heads.chunks import CHUNK, mask_logits, pooled_map
from cupre.models.heads.ignore import IgnoringRoIHeads, IgnoringRPN
from cupre.models.neck import FEATURE_NAMES

NUM_PYRAMID_LEVELS = 5  # P2..P5 and the max-pooled P6
HEAD_CONVS = 4


def build_rpn(cfg: DetectorConfig, *, in_channels: int) -> RegionProposalNetwork:
    """Region proposal network over the 5 pyramid levels.

    Args:
        cfg: reads ``anchor_sizes`` (one per level, or ``auto``: :mod:`cupre.models.anchors`),
            ``anchors_per_octave``, ``aspect_ratios``, the RPN
            pre/post-NMS top-n for training and testing, ``rpn_batch_size_per_image``.
        in_channels: channels of every pyramid level.
    """
    sizes = level_sizes(cfg.anchor_sizes, cfg.object_size, cfg.anchors_per_octave)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(cfg.aspect_ratios),) * NUM_PYRAMID_LEVELS)
    rpn = IgnoringRPN(
        anchor_generator=anchors,
        head=RPNHead(in_channels, anchors.num_anchors_per_location()[0], conv_depth=1),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=cfg.rpn_batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
        nms_thresh=0.7,
    )
    rpn.box_coder = fp32_coder(rpn.box_coder)  # proposals stay fp32 under bf16 autocast
    rpn.proposal_matcher = overlap_matcher(rpn.proposal_matcher)  # no phantom positives (boxes.py)
    return rpn


class ChunkedRoIHeads(IgnoringRoIHeads):
    """torchvision's ``RoIHeads`` (in training, ignore regions respected:
    :mod:`cupre.models.heads.ignore`); at test time the box and mask
    branches run ``chunk_size`` RoIs at a time, as two steps.

    ``forward`` in eval is ``detect_boxes`` then ``add_masks``; a caller that knows which
    detections it will drop (tiled prediction drops those outside a tile's core) calls
    the two itself and filters in between, so no mask is computed for nothing.
    """

    chunk_size: int = CHUNK

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            return super().forward(features, proposals, image_shapes, targets)
        detections = self.detect_boxes(features, proposals, image_shapes)
        self.add_masks(features, detections, image_shapes)
        return detections, {}

    def detect_boxes(self, features: dict[str, Tensor], proposals: list[Tensor],
                     image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Score and refine ``proposals``; per image ``boxes``, ``labels``, ``scores``."""
        class_logits, box_deltas = pooled_map(
            self.box_roi_pool, features, proposals, image_shapes,
            lambda x: self.box_predictor(self.box_head(x)), self.chunk_size)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_deltas, proposals, image_shapes)
        return [{"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, labels)]

    def add_masks(self, features: dict[str, Tensor], detections: list[dict[str, Tensor]],
                  image_shapes: list[tuple[int, int]]) -> None:
        """Add ``masks`` (``N x 1 x 28 x 28`` probabilities) to each image's detections."""
        add_mask_probs(self, features, detections, image_shapes)


def add_mask_probs(heads: nn.Module, features: dict[str, Tensor], detections: list[dict[str, Tensor]],
                   image_shapes: list[tuple[int, int]]) -> None:
    """The mask branch of ``heads`` (``mask_roi_pool``, ``mask_head``, ``mask_predictor``)
    over each detection's box and label, in chunks; sets ``detections[i]["masks"]``.

    Each chunk keeps only its detections' own class's logits (torchvision's
    ``maskrcnn_inference`` selects them after all chunks): the rest never accumulate,
    which for an 81-class model at 2,000 detections is 500 MB of fp32 logits."""
    def own_class(x: Tensor, labels: Tensor) -> Tensor:
        logits = mask_logits(heads.mask_predictor, heads.mask_head(x))
        return logits[torch.arange(len(labels), device=labels.device), labels][:, None]

    labels = [d["labels"] for d in detections]
    probs = pooled_map(heads.mask_roi_pool, features, [d["boxes"] for d in detections], image_shapes,
                       own_class, heads.chunk_size, per_box=labels).sigmoid()
    for det, masks in zip(detections, probs.split([len(lab) for lab in labels])):
        det["masks"] = masks


def build_maskrcnn_roi_heads(
    cfg: DetectorConfig, *, in_channels: int, norm_layer: Callable[..., nn.Module] | None
) -> ChunkedRoIHeads:
    """torchvision RoI heads with box and mask branches for ``cfg.num_classes`` classes.

    Args:
        cfg: reads ``num_classes`` (foreground), ``box_batch_size_per_image``,
            ``box_score_thresh``, ``box_nms_thresh``, ``detections_per_img``.
        in_channels: channels of the pyramid levels ``"0"``..``"3"``.
        norm_layer: GroupNorm factory for the 4conv1fc box head and the mask head, or
            None for torchvision's stock (``TwoMLPHead``, mask convs without norm).
    """
    representation = 4 * in_channels
    if norm_layer is None:
        box_head: nn.Module = TwoMLPHead(in_channels * 7 * 7, representation)
    else:
        box_head = FastRCNNConvFCHead(
            (in_channels, 7, 7), [in_channels] * HEAD_CONVS, [representation], norm_layer=norm_layer
        )
    mask_head = MaskRCNNHeads(in_channels, [in_channels] * HEAD_CONVS, 1, norm_layer=norm_layer)
    mask_predictor = MaskRCNNPredictor(in_channels, in_channels, cfg.num_classes + 1)
    for module in (box_head, mask_head, mask_predictor):
        kaiming_init(module)
    roi_heads = ChunkedRoIHeads(
        box_roi_pool=MultiScaleRoIAlign(FEATURE_NAMES, output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, cfg.num_classes + 1),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=cfg.box_batch_size_per_image,
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(FEATURE_NAMES, output_size=14, sampling_ratio=2),
        mask_head=mask_head,
        mask_predictor=mask_predictor,
    )
    roi_heads.box_coder = fp32_coder(roi_heads.box_coder)
    reset_maskrcnn_predictors(roi_heads, cfg.num_classes)
    return roi_heads


def reset_maskrcnn_predictors(roi_heads: RoIHeads, num_classes: int) -> None:
    """Re-create the class-specific layers for ``num_classes`` foreground classes.

    Replaces the box classifier and box regressor (``box_predictor``) and the mask
    predictor's final 1x1 conv (``mask_fcn_logits``); the box/mask heads and the mask
    deconv keep their weights.
    """
    if num_classes < 1:
        raise CupreError(f"num_classes must be at least 1, got {num_classes}")
    old_box = roi_heads.box_predictor
    box_predictor = FastRCNNPredictor(old_box.cls_score.in_features, num_classes + 1)
    nn.init.normal_(box_predictor.cls_score.weight, std=0.01)
    nn.init.normal_(box_predictor.bbox_pred.weight, std=0.001)
    for layer in (box_predictor.cls_score, box_predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    roi_heads.box_predictor = box_predictor.to(old_box.cls_score.weight.device)

    old_logits = roi_heads.mask_predictor.mask_fcn_logits
    logits = nn.Conv2d(old_logits.in_channels, num_classes + 1, kernel_size=1)
    nn.init.kaiming_normal_(logits.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(logits.bias)
    roi_heads.mask_predictor.mask_fcn_logits = logits.to(old_logits.weight.device)


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal convs (fan-out), Kaiming-uniform fcs (``a=1``), zero biases, GN 1/0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=1)
        elif isinstance(layer, nn.GroupNorm):
            nn.init.ones_(layer.weight)
        else:
            continue
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
