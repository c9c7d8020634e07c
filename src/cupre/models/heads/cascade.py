"""Cascade Mask R-CNN RoI heads (Cai & Vasconcelos, "Cascade R-CNN", 2018).

The cascade is a loop over S stages. Stage k pools the boxes it is given, runs its own
box head and a class-agnostic box predictor, and hands its refined boxes (detached) to
stage k + 1. Each stage matches with a stricter IoU threshold (``cfg.cascade_ious``,
0.5 / 0.6 / 0.7) and decodes with finer box-coder weights ((10, 10, 5, 5) x k).

Training: every stage appends the ground-truth boxes to its input boxes, labels them with
its own matcher and samples a balanced batch; losses are ``loss_classifier_stage{k}`` and
``loss_box_reg_stage{k}`` for k = 1..S, plus ``loss_mask`` on the positives of the last
stage. Test: the class probabilities of all stages (each computed on the boxes that stage
saw) are averaged, the last stage's boxes are kept, and per-class thresholding, NMS and
the mask head follow, as in detectron2's ``cascade_rcnn.py``.

The forward signature and outputs are those of torchvision's ``RoIHeads``, so the module
drops into ``torchvision.models.detection.MaskRCNN`` as ``roi_heads``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from cupre.config import DetectorConfig
from cupre.models.heads.boxes import Fp32BoxCoder
from cupre.models.heads.chunks import CHUNK, pooled_map
from cupre.models.heads.ignore import ignore_background
from cupre.models.heads.maskrcnn import add_mask_probs

POSITIVE_FRACTION = 0.25


class AgnosticBoxPredictor(nn.Module):
    """Class scores (C + 1 with background) and one class-agnostic box delta per RoI.

    Args:
        in_features: width of the box-head representation.
        num_classes: foreground classes C.
    """

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x`` (N x F) to class logits (N x (C+1)) and box deltas (N x 4)."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def _build_box_head(in_channels: int, norm_layer, conv_dim: int, fc_dim: int) -> nn.Module:
    """4conv1fc head with ``norm_layer`` (GroupNorm) when given, else the 2-MLP head."""
    if norm_layer is not None:
        head = FastRCNNConvFCHead((in_channels, 7, 7), [conv_dim] * 4, [fc_dim], norm_layer=norm_layer)
    else:
        head = TwoMLPHead(in_channels * 7 * 7, fc_dim)
    for layer in head.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=1)
            nn.init.zeros_(layer.bias)
    return head


def _scale_grad(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` (detectron2)."""
    return x * scale + x.detach() * (1.0 - scale)


def cascade_box_loss(
    class_logits: Tensor, box_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """Cross entropy over N x (C+1) logits and smooth-L1 on the N x 4 agnostic deltas.

    The box loss is summed over the positives and divided by all N sampled RoIs, as in
    torchvision's ``fastrcnn_loss``.
    """
    labels_cat = torch.cat(labels)
    targets_cat = torch.cat(regression_targets)
    loss_cls = F.cross_entropy(class_logits, labels_cat)
    pos = torch.where(labels_cat > 0)[0]
    loss_box = F.smooth_l1_loss(box_deltas[pos], targets_cat[pos], beta=1 / 9, reduction="sum")
    return loss_cls, loss_box / max(labels_cat.numel(), 1)


class CascadeRoIHeads(nn.Module):
    """S-stage cascade of box heads plus a mask head, with torchvision's RoIHeads interface.

    Args:
        box_roi_pool: RoIAlign to 7 x 7 over the FPN levels.
        box_heads: one box head per stage, each mapping N x Cin x 7 x 7 to N x F.
        box_predictors: one :class:`AgnosticBoxPredictor` per stage.
        stage_ious: IoU threshold of each stage's matcher (foreground at or above).
        box_coder_weights: (wx, wy, ww, wh) of each stage's box coder.
        mask_roi_pool: RoIAlign to 14 x 14.
        mask_head: torchvision ``MaskRCNNHeads``.
        mask_predictor: torchvision ``MaskRCNNPredictor`` (C + 1 mask channels).
        num_classes: foreground classes C.
        batch_size_per_image: RoIs sampled per image and stage in training.
        score_thresh, nms_thresh, detections_per_img: test-time post-processing.

    At test time ``forward`` is ``detect_boxes`` then ``add_masks``, each over chunks of
    ``chunk_size`` RoIs (as :class:`~cupre.models.heads.maskrcnn.ChunkedRoIHeads`).
    """

    chunk_size: int = CHUNK

    def __init__(
        self,
        *,
        box_roi_pool: MultiScaleRoIAlign,
        box_heads: list[nn.Module],
        box_predictors: list[AgnosticBoxPredictor],
        stage_ious: tuple[float, ...],
        box_coder_weights: list[tuple[float, float, float, float]],
        mask_roi_pool: MultiScaleRoIAlign,
        mask_head: nn.Module,
        mask_predictor: nn.Module,
        num_classes: int,
        batch_size_per_image: int = 512,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        num_stages = len(stage_ious)
        if not (len(box_heads) == len(box_predictors) == len(box_coder_weights) == num_stages):
            raise ValueError("one box head, predictor, IoU and box-coder weight per stage are needed")
        self.box_roi_pool = box_roi_pool
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.proposal_matchers = [det_utils.Matcher(iou, iou, allow_low_quality_matches=False) for iou in stage_ious]
        self.box_coders = [Fp32BoxCoder(tuple(float(v) for v in w)) for w in box_coder_weights]
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, POSITIVE_FRACTION)
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.num_classes = num_classes
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def reset_predictors(self, num_classes: int) -> None:
        """Re-initialise the class-specific layers for ``num_classes`` foreground classes.

        Replaces each stage's ``cls_score`` and the mask predictor's ``mask_fcn_logits``;
        the class-agnostic box regressors and all head layers keep their weights.
        """
        for predictor in self.box_predictors:
            old = predictor.cls_score
            predictor.cls_score = nn.Linear(old.in_features, num_classes + 1).to(old.weight)
            nn.init.normal_(predictor.cls_score.weight, std=0.01)
            nn.init.zeros_(predictor.cls_score.bias)
        old = self.mask_predictor.mask_fcn_logits
        new = nn.Conv2d(old.in_channels, num_classes + 1, 1, 1, 0).to(old.weight)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(new.bias)
        self.mask_predictor.mask_fcn_logits = new
        self.num_classes = num_classes

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Run the cascade, then the mask head.

        Args:
            features: FPN maps, name -> B x Cin x Hl x Wl.
            proposals: per image, K x 4 RPN boxes (x1, y1, x2, y2) in image pixels.
            image_shapes: per image, (H, W) after the detector's resize.
            targets: training only; per image ``boxes`` (G x 4 float), ``labels``
                (G int64, 1..C) and ``masks`` (G x H x W uint8).

        Returns:
            In training, ``([], losses)`` with ``loss_classifier_stage{k}``,
            ``loss_box_reg_stage{k}`` (k = 1..S) and ``loss_mask``. In eval,
            ``(detections, {})``: per image ``boxes`` (N x 4), ``labels`` (N),
            ``scores`` (N, mean class probability over the stages) and ``masks``
            (N x 1 x 28 x 28 probabilities), N <= ``detections_per_img``.
        """
        if self.training:
            _check_targets(targets)
            return [], self._forward_train(features, proposals, image_shapes, targets)
        detections = self.detect_boxes(features, proposals, image_shapes)
        self.add_masks(features, detections, image_shapes)
        return detections, {}

    def _forward_train(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        """The training cascade: sample, predict, lose, refine; then the mask loss."""
        losses: dict[str, Tensor] = {}
        boxes = proposals
        for k in range(self.num_stages):
            if k > 0:
                boxes = [_nonempty(b.detach()) for b in boxes]
            boxes, matched_idxs, labels, regression_targets = self._label_and_sample(k, boxes, targets)
            class_logits, box_deltas = self._run_stage(k, features, boxes, image_shapes)
            loss_cls, loss_box = cascade_box_loss(class_logits, box_deltas, labels, regression_targets)
            losses[f"loss_classifier_stage{k + 1}"] = loss_cls
            losses[f"loss_box_reg_stage{k + 1}"] = loss_box
            sampled = boxes
            boxes = self._decode(k, box_deltas, boxes, image_shapes)
        positives = [torch.where(lab > 0)[0] for lab in labels]
        mask_boxes = [b[p] for b, p in zip(sampled, positives)]
        mask_idxs = [m[p] for m, p in zip(matched_idxs, positives)]
        mask_logits = self._mask_logits(features, mask_boxes, image_shapes)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_boxes, gt_masks, gt_labels, mask_idxs)
        return losses

    def detect_boxes(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        """The test cascade: average the stages' probabilities, keep the last boxes.

        Every stage runs over bounded chunks of boxes (:mod:`cupre.models.heads.chunks`).
        Returns per image ``boxes``, ``labels`` and ``scores``.
        """
        stage_probs = []
        boxes = proposals
        for k in range(self.num_stages):
            class_logits, box_deltas = pooled_map(
                self.box_roi_pool, features, boxes, image_shapes,
                lambda x, k=k: self.box_predictors[k](self.box_heads[k](x)), self.chunk_size)
            stage_probs.append(F.softmax(class_logits, dim=-1))
            boxes = self._decode(k, box_deltas, boxes, image_shapes)
        scores = torch.stack(stage_probs).mean(dim=0)
        per_image = [len(b) for b in boxes]
        return [self._postprocess(s, b, shape) for s, b, shape in zip(scores.split(per_image), boxes, image_shapes)]

    def add_masks(self, features, detections: list[dict[str, Tensor]], image_shapes) -> None:
        """Add ``masks`` (``N x 1 x 28 x 28`` probabilities) to each image's detections."""
        add_mask_probs(self, features, detections, image_shapes)

    def _run_stage(self, k: int, features, boxes: list[Tensor], image_shapes) -> tuple[Tensor, Tensor]:
        """Pool ``boxes``, run stage ``k``'s head and predictor -> (N x (C+1), N x 4)."""
        x = self.box_roi_pool(features, boxes, image_shapes)
        if self.training:
            x = _scale_grad(x, 1.0 / self.num_stages)
        return self.box_predictors[k](self.box_heads[k](x))

    def _decode(self, k: int, box_deltas: Tensor, boxes: list[Tensor], image_shapes) -> list[Tensor]:
        """Apply stage ``k``'s deltas (N x 4) to ``boxes``; clip; split per image."""
        decoded = self.box_coders[k].decode(box_deltas, boxes).reshape(-1, 4)
        per_image = decoded.split([len(b) for b in boxes])
        return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(per_image, image_shapes)]

    def _label_and_sample(self, k: int, proposals: list[Tensor], targets):
        """Append GT boxes, match with stage ``k``'s IoU, sample a balanced batch per image
        (never a background inside the target's ``ignore_boxes``).

        Returns:
            Per image: sampled boxes (n x 4), matched GT index (n), labels (n, 0 for
            background) and stage-``k`` regression targets (n x 4).
        """
        matcher, dtype = self.proposal_matchers[k], proposals[0].dtype
        boxes, matched, labels = [], [], []
        for props, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(dtype)
            props = torch.cat([props, gt_boxes])
            if gt_boxes.numel() == 0:
                idxs = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                lab = torch.zeros_like(idxs)
            else:
                idxs = matcher(box_ops.box_iou(gt_boxes, props))
                lab = target["labels"][idxs.clamp(min=0)].to(torch.int64)
                lab[idxs < 0] = 0
                idxs = idxs.clamp(min=0)
            lab = ignore_background(lab, props, target.get("ignore_boxes"))
            boxes.append(props)
            matched.append(idxs)
            labels.append(lab)
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        regression_targets = []
        for i, (pos, neg) in enumerate(zip(pos_masks, neg_masks)):
            keep = torch.where(pos | neg)[0]
            boxes[i], matched[i], labels[i] = boxes[i][keep], matched[i][keep], labels[i][keep]
            gt_boxes = targets[i]["boxes"].to(dtype)
            if gt_boxes.numel() == 0:
                gt_boxes = torch.zeros((1, 4), dtype=dtype, device=boxes[i].device)
            regression_targets.append(self.box_coders[k].encode_single(gt_boxes[matched[i]], boxes[i]))
        return boxes, matched, labels, regression_targets

    def _postprocess(self, scores: Tensor, boxes: Tensor, image_shape) -> dict[str, Tensor]:
        """Per-class threshold, NMS and top-k for one image.

        Args:
            scores: N x (C+1) averaged class probabilities (column 0 is background).
            boxes: N x 4 class-agnostic boxes of the last stage, clipped.
        """
        num_fg = scores.shape[1] - 1
        scores = scores[:, 1:].reshape(-1)
        labels = torch.arange(1, num_fg + 1, device=boxes.device).repeat(len(boxes))
        boxes = boxes.repeat_interleave(num_fg, dim=0)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}

    def _mask_logits(self, features, boxes: list[Tensor], image_shapes) -> Tensor:
        """Mask logits (N x (C+1) x 28 x 28) for the boxes of all images."""
        x = self.mask_roi_pool(features, boxes, image_shapes)
        return self.mask_predictor(self.mask_head(x))


def _nonempty(boxes: Tensor) -> Tensor:
    """Drop degenerate boxes (zero width or height after clipping)."""
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _check_targets(targets: list[dict[str, Tensor]] | None) -> None:
    if targets is None:
        raise ValueError("CascadeRoIHeads needs targets in training mode")
    for t in targets:
        if not {"boxes", "labels", "masks"} <= set(t):
            raise ValueError(f"each target needs boxes, labels and masks; got {sorted(t)}")
        if not t["boxes"].is_floating_point():
            raise TypeError(f"target boxes must be floating point, got {t['boxes'].dtype}")
        if t["labels"].dtype != torch.int64:
            raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")


def build_cascade_roi_heads(
    *,
    cfg: DetectorConfig,
    in_channels: int,
    featmap_names: list[str],
    norm_layer: Callable[..., nn.Module] | None = None,
    conv_dim: int = 256,
    fc_dim: int = 1024,
    mask_dim: int = 256,
) -> CascadeRoIHeads:
    """Cascade Mask R-CNN heads from a :class:`DetectorConfig`.

    Args:
        cfg: reads ``num_classes``, ``cascade_ious``, ``box_batch_size_per_image``,
            ``box_score_thresh``, ``box_nms_thresh`` and ``detections_per_img``.
        in_channels: FPN channels.
        featmap_names: FPN levels the RoIs are pooled from (e.g. ``["0", "1", "2", "3"]``).
        norm_layer: e.g. GroupNorm; when given, the box heads are 4conv1fc with it, and
            the mask head's convs use it too.
        conv_dim, fc_dim, mask_dim: head widths (smaller values for tests).
    """
    if not cfg.cascade_ious:
        raise ValueError("cfg.cascade_ious must list at least one IoU threshold")
    stages = range(1, len(cfg.cascade_ious) + 1)
    return CascadeRoIHeads(
        box_roi_pool=MultiScaleRoIAlign(featmap_names, output_size=7, sampling_ratio=2),
        box_heads=[_build_box_head(in_channels, norm_layer, conv_dim, fc_dim) for _ in stages],
        box_predictors=[AgnosticBoxPredictor(in_features=fc_dim, num_classes=cfg.num_classes) for _ in stages],
        stage_ious=tuple(cfg.cascade_ious),
        box_coder_weights=[(10.0 * k, 10.0 * k, 5.0 * k, 5.0 * k) for k in stages],
        mask_roi_pool=MultiScaleRoIAlign(featmap_names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(in_channels, [mask_dim] * 4, 1, norm_layer=norm_layer),
        mask_predictor=MaskRCNNPredictor(mask_dim, mask_dim, cfg.num_classes + 1),
        num_classes=cfg.num_classes,
        batch_size_per_image=cfg.box_batch_size_per_image,
        score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.detections_per_img,
    )
