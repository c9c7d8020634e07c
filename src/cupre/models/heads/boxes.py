"""Box decoding kept in fp32 under mixed precision.

Under bf16 autocast the RPN and box heads return bf16 deltas, and torchvision's
``BoxCoder`` decodes in the deltas' dtype: bf16 holds 8 significant bits, so decoded
boxes land on a 2 px grid between 256 and 511 px and a 4 px grid above. Proposals and
cascade-stage boxes feed the next stage, so the error would compound.
:class:`Fp32BoxCoder` decodes (and encodes) in fp32 whatever the inputs' dtype.
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
