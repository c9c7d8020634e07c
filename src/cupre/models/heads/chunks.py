"""Test-time RoI work in bounded chunks, so that memory does not grow with the box count.

At 2,000 detections per image the mask branch pools ``2000 x 256 x 14 x 14`` features
(400 MB in fp32) and each of its four convs makes another tensor of that size. Pooling
and running a head over at most ``CHUNK`` boxes at a time gives the same outputs (RoIAlign
and the heads treat every RoI on its own) at a fixed peak, and runs faster on a CPU: the
working set stays in cache (fp32 mask branch on one core: 31 s in one piece, 19 s in
chunks of 256).

Two more test-time savings that leave the outputs as they are (up to rounding):

* the pyramid maps are cast to fp32 once, not by autocast's RoIAlign wrapper at every
  chunk and level;
* the mask predictor's 2x2 stride-2 transposed convolution runs as 1x1 convolutions at
  14 x 14 (:func:`mask_logits`): the transposed kernel has no fast bf16 path on CPUs and
  cost 1 s of 8 at 2,000 masks;
* RoIAlign, which torchvision runs on one core, pools each chunk in as many threads as
  torch has (split by boxes; each box is pooled on its own, so the output is the same).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# RoIs per chunk. The mask predictor makes a 1,024-channel 14 x 14 map per RoI (26 MB per 64 RoIs
# in bf16); R50-FPN at 2,000 detections on 512 px, bf16, 2 threads: peak 953-962 MiB with 64,
# 880 with 32 and 878 with 16, at the same speed for 32 and 64 (16: a fifth slower).
CHUNK = 32


def box_chunks(boxes: list[Tensor], size: int = CHUNK) -> Iterator[list[Tensor]]:
    """Split per-image box lists into consecutive pieces of at most ``size`` boxes in all.

    Each piece is again a per-image list (images with no box in the piece get an empty
    tensor), so a pooler sees the batch it expects. Concatenating the pieces' outputs
    gives the order of the whole, image by image. No boxes at all: one empty piece.
    """
    counts = [len(b) for b in boxes]
    offsets = [0, *accumulate(counts)]
    total = offsets[-1]
    for start in range(0, max(total, 1), size):
        end = start + size
        yield [b[min(max(start - off, 0), n):min(max(end - off, 0), n)]
               for b, off, n in zip(boxes, offsets, counts)]


def pooled_map(
    pool: Callable[..., Tensor],
    features: dict[str, Tensor],
    boxes: list[Tensor],
    image_shapes: list[tuple[int, int]],
    head: Callable[..., Tensor | tuple[Tensor, ...]],
    size: int = CHUNK,
    per_box: list[Tensor] | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """``head(pool(features, boxes, image_shapes))`` computed ``size`` boxes at a time.

    With ``per_box`` (per image, one value per box, e.g. the labels), the head is called
    as ``head(pooled, values)`` with the chunk's values, in the same order.

    Outputs are cast to float32 (under bf16 autocast the heads return bf16; scores and
    mask probabilities are ranked and thresholded in fp32).
    """
    # once, not per chunk and level: fp32 and NCHW, which RoIAlign's kernel would copy to each time
    features = {k: v.float().contiguous() for k, v in features.items()}
    threads = torch.get_num_threads()
    values = None if per_box is None else torch.cat(per_box)

    def run(start: int, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        return head(x) if values is None else head(x, values[start:start + len(x)])

    starts = range(0, max(sum(len(b) for b in boxes), 1), size)  # box_chunks' pieces begin here
    if threads == 1 or sum(len(b) for b in boxes) < 2 * threads:
        pieces = [run(start, pool(features, chunk, image_shapes))
                  for start, chunk in zip(starts, box_chunks(boxes, size))]
    else:
        pool(features, [b[:1] for b in boxes], image_shapes)  # the pooler sets its level scales once, here
        with ThreadPoolExecutor(threads) as workers:
            def pooled(chunk: list[Tensor]) -> Tensor:
                parts = box_chunks(chunk, -(-sum(len(b) for b in chunk) // threads))
                return torch.cat(list(workers.map(lambda part: pool(features, part, image_shapes), parts)))

            pieces = [run(start, pooled(chunk)) for start, chunk in zip(starts, box_chunks(boxes, size))]
    if isinstance(pieces[0], tuple):
        return tuple(torch.cat(parts).float() for parts in zip(*pieces))
    return torch.cat(pieces).float()


def mask_logits(predictor: nn.Module, x: Tensor) -> Tensor:
    """torchvision's ``MaskRCNNPredictor`` (``conv5_mask``: ConvTranspose2d k=2 s=2, ReLU,
    ``mask_fcn_logits``: 1x1 conv to K classes) computed without the transposed kernel.

    Output pixel ``(2i + a, 2j + b)`` of the deconvolution is ``W[:, :, a, b]^T x[:, i, j]``:
    one 1x1 convolution with the four ``(a, b)`` slices stacked gives all four offsets at
    14 x 14; the ReLU and the logits (a grouped 1x1 convolution, one group per offset)
    follow there, and only the K-channel logits are interleaved to 28 x 28.
    """
    deconv, logits = predictor.conv5_mask, predictor.mask_fcn_logits
    if deconv.kernel_size != (2, 2) or deconv.stride != (2, 2) or deconv.padding != (0, 0):
        return predictor(x)
    return deconv_as_convs(x, deconv.weight, deconv.bias, logits.weight, logits.bias)


def deconv_as_convs(x: Tensor, deconv_weight: Tensor, deconv_bias: Optional[Tensor], logits_weight: Tensor,
                    logits_bias: Optional[Tensor]) -> Tensor:
    """:func:`mask_logits` from the predictor's weights (``deconv_weight``: ``Cin x C x 2 x 2``;
    ``logits_weight``: ``K x C x 1 x 1``); scriptable, so the TorchScript export runs the
    same function."""
    c_in, c = deconv_weight.shape[0], deconv_weight.shape[1]
    kernel = deconv_weight.permute(2, 3, 1, 0).reshape(4 * c, c_in, 1, 1)  # rows (a, b, c)
    bias = deconv_bias
    if bias is not None:
        bias = bias.repeat(4)
    y = F.conv2d(x, kernel, bias).relu_()
    k = logits_weight.shape[0]
    out_bias = logits_bias
    if out_bias is not None:
        out_bias = out_bias.repeat(4)
    out = F.conv2d(y, logits_weight.repeat(4, 1, 1, 1), out_bias, 1, 0, 1, 4)  # N x (a, b, k) x 14 x 14, groups=4
    n, h, w = out.shape[0], out.shape[2], out.shape[3]
    return out.view(n, 2, 2, k, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, k, 2 * h, 2 * w)
