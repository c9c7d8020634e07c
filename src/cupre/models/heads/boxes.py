"""Box encoding kept in fp32 under mixed precision, and RPN matching without phantom positives.

Under bf16 autocast the RPN and box heads return bf16 deltas, and torchvision's
``BoxCoder`` decodes in the deltas' dtype: bf16 holds 8 significant bits, so decoded
boxes land on a 2 px grid between 256 and 511 px and a 4 px grid above. Proposals and
cascade-stage boxes feed the next stage, so the error would compound.
:class:`Fp32BoxCoder` decodes (and encodes) in fp32 whatever the inputs' dtype.

The RPN's ``Matcher`` (``allow_low_quality_matches``) also makes every ground-truth box's
best anchors positive. torchvision takes "best" as all anchors at the highest IoU, so a
box that overlaps no anchor (IoU 0 everywhere: a 1 px sliver a random crop leaves at the
right or bottom edge, beyond the last anchor) turns every anchor that misses it into a
positive, each regressing towards whatever box it happens to be matched to. On BBBC038
crops at 256 px this hit about one step in ten, with ``loss_rpn_box_reg`` 10 to 35 instead
of 0.1. :class:`OverlapMatcher` adds low-quality matches only for boxes some anchor overlaps.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils


class Fp32BoxCoder(det_utils.BoxCoder):
    """torchvision's ``BoxCoder`` whose outputs are always float32."""

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        with torch.autocast(rel_codes.device.type, enabled=False):
            return super().decode_single(rel_codes.float(), boxes.float())

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        with torch.autocast(reference_boxes.device.type, enabled=False):
            return super().encode_single(reference_boxes.float(), proposals.float())


def fp32_coder(coder: det_utils.BoxCoder) -> Fp32BoxCoder:
    """The same weights and clip as ``coder``, decoding in fp32."""
    return Fp32BoxCoder(tuple(coder.weights), bbox_xform_clip=coder.bbox_xform_clip)


class OverlapMatcher(det_utils.Matcher):
    """torchvision's ``Matcher`` whose low-quality matches need a positive IoU."""

    def set_low_quality_matches_(self, matches: Tensor, all_matches: Tensor, match_quality_matrix: Tensor) -> None:
        highest = match_quality_matrix.max(dim=1).values[:, None]  # G x 1
        _, preds = torch.where((match_quality_matrix == highest) & (highest > 0))
        matches[preds] = all_matches[preds]


def overlap_matcher(matcher: det_utils.Matcher) -> OverlapMatcher:
    """The same thresholds as ``matcher``, low-quality matches only where boxes overlap."""
    return OverlapMatcher(matcher.high_threshold, matcher.low_threshold,
                          allow_low_quality_matches=matcher.allow_low_quality_matches)
