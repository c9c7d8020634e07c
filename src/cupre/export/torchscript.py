"""``cupre export --format torchscript``: a cupre Mask R-CNN's whole inference, raw image to
label image, as one TorchScript program.

:class:`ScriptedSegmenter` takes the raw intensities of one grey image (``1 x 1 x H x W``,
any value range) and returns its instance label image (``1 x 1 x H x W`` int32, 0
background, id ``k`` the ``k``-th highest-scoring object), computed as ``cupre predict``
computes it for an image that fits one tile: percentile normalisation, the object-scale
rule (looks at native pixels, half and double size, the median size of the confident
objects of the look with the most score, a final pass at the factor), the detector, the box-local mask pasting and the painting in score order. It
runs in fp32 with no Python code of cupre's, wherever torchvision's operators (NMS,
RoIAlign) are registered: Python after ``import torchvision``, C++ linked with
torchvision's ops library; not bare libtorch.

What stays in Python, stated where the export is refused or documented:

* **tiling** (images larger than ``tile_size`` at the model's scale): the scripted model
  runs such an image in one piece, where ``cupre predict`` tiles it;
* **Cascade heads** (``arch: cascade``): not scripted;
* **bf16**: the scripted model computes in fp32.

The same arithmetic as the Python path, step by step: the heads run in chunks of the same
``chunk_size`` RoIs, the mask predictor's transposed convolution as the same 1x1
convolutions (:func:`cupre.models.heads.chunks.mask_logits`), and every mask is sampled
at the same pixel positions (:mod:`cupre.models.paste`), so the label images are equal
(tests/export/test_torchscript.py).
"""

import copy  # no "from __future__ import annotations": TorchScript reads the annotations
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import resize_boxes

from cupre.data.imageio import Normalization
from cupre.errors import CupreError
from cupre.inference.options import DEFAULTS, DetectionOptions
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.heads.chunks import CHUNK, deconv_as_convs
from cupre.models.intensity import BRIGHT_BACKGROUND, dark_background
from cupre.models.paste import PIXEL_OFFSET, crop_windows, sample_windows
from cupre.scale import (
    MIN_LOOK_SIDE,
    MIN_SCORE,
    PROBE_FACTORS,
    PROBE_WINDOW,
    central_window,
    look_fits,
    median_side,
    reusable_look,
    scale_factor,
    score_mass,
    snap,
)


class Body(nn.Module):
    """Backbone and FPN: a standardised, padded ``B x 3 x H x W`` batch -> the pyramid."""

    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        maps = self.backbone(x)
        named: Dict[str, Tensor] = {}  # insertion-ordered, as the FPN needs
        for level, feature in enumerate(maps):
            named[str(level)] = feature
        return self.neck(named)


class ScriptedSegmenter(nn.Module):
    """Raw image in, label image out (see the module docstring); scriptable."""

    object_size: Optional[float]
    diameter: Optional[float]

    def __init__(self, body: nn.Module, rpn: nn.Module, heads: RoIHeads, *, object_size: Optional[float],
                 mask_threshold: float, chunk_size: int = CHUNK, diameter: Optional[float] = None,
                 low: float = Normalization.low, high: float = Normalization.high,
                 invert_bright: bool = False) -> None:
        super().__init__()
        self.invert_bright = invert_bright
        self.body = body
        self.rpn = rpn
        self.heads = heads
        self.object_size = object_size
        self.diameter = diameter
        self.mask_threshold = mask_threshold
        self.chunk_size = chunk_size
        self.low = low
        self.high = high
        # cupre's constants, as attributes: TorchScript reads no float globals
        self.min_score, self.pixel_offset = float(MIN_SCORE), float(PIXEL_OFFSET)
        self.bright_background = float(BRIGHT_BACKGROUND)
        self.probe_factors: List[float] = [float(f) for f in PROBE_FACTORS]
        self.probe_window = int(PROBE_WINDOW)
        self.min_look_side = int(MIN_LOOK_SIDE)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD, dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Raw intensities, ``B x C x H x W`` (C = 1 grey or 3 RGB) or ``H x W`` ->
        ``B x 1 x H x W`` int32 labels, each image on its own."""
        if x.dim() == 2:
            x = x[None, None]
        if x.dim() != 4 or (x.shape[1] != 1 and x.shape[1] != 3):
            raise ValueError("expected a B x C x H x W image batch with C = 1 or 3, or an H x W image")
        labels: List[Tensor] = []
        for i in range(x.shape[0]):
            labels.append(self.segment(x[i]))
        return torch.stack(labels)[:, None]

    def segment(self, raw: Tensor) -> Tensor:
        """One ``C x H x W`` image -> its ``H x W`` int32 label image."""
        image = self.normalise(raw)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        object_size = self.object_size
        given = self.diameter
        if object_size is None:
            boxes, scores, probs = self.detect(image, 1.0)
        elif given is not None:
            boxes, scores, probs = self.detect(image, snap(scale_factor(object_size, given)))
        else:
            boxes, scores, probs = self.look(image, object_size)
        label = torch.zeros((height, width), dtype=torch.int32, device=image.device)
        self.paint(label, probs, boxes)
        return label

    def look(self, image: Tensor, object_size: float) -> Tuple[Tensor, Tensor, Tensor]:
        """:func:`cupre.scale.at_object_scale` for one image: the looks at
        ``probe_factors`` (above 1x on the central window only), the factor from the look
        with the most confident score, and the final pass (a look's own when within 15%)."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        window = central_window(height, width, self.probe_window)
        y0, x0, y1, x1 = window
        whole = y0 == 0 and x0 == 0 and y1 == height and x1 == width
        done: List[float] = []
        kept: List[Tuple[Tensor, Tensor, Tensor]] = []
        best_mass = -1.0
        best_boxes = torch.zeros((0, 4), device=image.device)
        for p in self.probe_factors:
            cut = p > 1.0 and not whole
            if p != 1.0 and not look_fits(window if p > 1.0 else (0, 0, height, width), p, self.min_look_side):
                continue
            part = image[:, y0:y1, x0:x1] if cut else image
            boxes, scores, probs = self.detect(part, p)
            counted = self.nonempty(probs, boxes, int(part.shape[-2]), int(part.shape[-1])) & (scores >= self.min_score)
            shown = boxes[counted]
            if cut:
                shown = shown + torch.tensor([x0, y0, x0, y0], dtype=shown.dtype, device=shown.device)
            else:
                done.append(p)
                kept.append((boxes, scores, probs))
            mass = score_mass(shown, scores[counted], window, self.min_score)
            if mass > best_mass:
                best_mass = mass
                best_boxes = shown
        factor = snap(scale_factor(object_size, median_side(best_boxes)))
        k = reusable_look(factor, done)
        if k >= 0:
            return kept[k]
        return self.detect(image, factor)

    def normalise(self, raw: Tensor) -> Tensor:
        """:func:`cupre.data.imageio.normalize` of a ``C x H x W`` image: the ``low`` /
        ``high`` percentiles over all channels (numpy's linear interpolation) stretched to
        0 / 1, a grey plane seen as three channels."""
        a = raw.float()
        a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
        lo = percentile(a, self.low)
        hi = percentile(a, self.high)
        if hi - lo < 1e-6:
            hi = lo + 1.0
        scaled = ((a - lo) / (hi - lo)).clamp(0.0, 1.0)
        if self.invert_bright:  # the detector's own transform does this (cupre.models.intensity)
            scaled = dark_background(scaled, self.bright_background)
        return scaled.expand(3, -1, -1)

    def detect(self, image: Tensor, factor: float) -> Tuple[Tensor, Tensor, Tensor]:
        """One pass at ``factor``: boxes (original pixels), scores, ``N x 28 x 28`` mask
        probabilities, in descending score."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if factor != 1.0:
            size = [max(1, int(round(height * factor))), max(1, int(round(width * factor)))]
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                  antialias=factor < 1.0)[0]
        h, w = int(image.shape[-2]), int(image.shape[-1])
        standard = (image - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]
        padded_h = int(math.ceil(float(h) / 32.0) * 32)
        padded_w = int(math.ceil(float(w) / 32.0) * 32)
        batch = standard.new_full((1, 3, padded_h, padded_w), 0.0)
        batch[0, :, :h, :w].copy_(standard)
        features = self.body(batch)
        sizes: List[Tuple[int, int]] = [(h, w)]
        proposals, _ = self.rpn(ImageList(batch, sizes), features)
        pyramid: Dict[str, Tensor] = {}
        for name, feature in features.items():
            pyramid[name] = feature.float().contiguous()
        logits: List[Tensor] = []
        deltas: List[Tensor] = []
        for start in range(0, max(int(proposals[0].shape[0]), 1), self.chunk_size):
            pooled = self.heads.box_roi_pool(pyramid, [proposals[0][start:start + self.chunk_size]], sizes)
            class_logits, box_deltas = self.heads.box_predictor(self.heads.box_head(pooled))
            logits.append(class_logits.float())
            deltas.append(box_deltas.float())
        boxes, scores, labels = self.heads.postprocess_detections(torch.cat(logits), torch.cat(deltas), proposals,
                                                                  sizes)
        probs: List[Tensor] = []
        for start in range(0, max(int(boxes[0].shape[0]), 1), self.chunk_size):
            chunk = boxes[0][start:start + self.chunk_size]
            own = labels[0][start:start + self.chunk_size]
            pooled = self.heads.mask_roi_pool(pyramid, [chunk], sizes)
            mask = self.mask_logits(self.heads.mask_head(pooled))
            probs.append(mask[torch.arange(own.shape[0], device=own.device), own].float())
        found = resize_boxes(boxes[0], [h, w], [height, width])
        found[:, 0::2] = found[:, 0::2].clamp(0, width)
        found[:, 1::2] = found[:, 1::2].clamp(0, height)
        order = torch.sort(-scores[0], stable=True)[1]
        return found[order], scores[0][order], torch.cat(probs).sigmoid()[order]

    def mask_logits(self, x: Tensor) -> Tensor:
        """The mask predictor as cupre runs it (:func:`cupre.models.heads.chunks.mask_logits`)."""
        predictor = self.heads.mask_predictor
        return deconv_as_convs(x, predictor.conv5_mask.weight, predictor.conv5_mask.bias,
                               predictor.mask_fcn_logits.weight, predictor.mask_fcn_logits.bias)

    def crop(self, prob: Tensor, box: Tensor, height: int, width: int) -> Tuple[int, int, Tensor]:
        """One mask pasted box-locally by :func:`cupre.models.paste.paste_masks_in_boxes`'s
        own steps: ``(y0, x0, bool h x w)``."""
        start, extent = crop_windows(box[None], prob.shape[-1], height, width, self.pixel_offset)
        x0, y0, w, h = int(start[0, 0]), int(start[0, 1]), int(extent[0, 0]), int(extent[0, 1])
        if w == 0 or h == 0:
            return y0, x0, torch.zeros((h, w), dtype=torch.bool, device=box.device)
        sampled = sample_windows(prob[None], box[None], start, h, w, self.pixel_offset)
        return y0, x0, sampled[0] > self.mask_threshold

    def nonempty(self, probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
        """Which masks keep at least one pixel (the objects the estimate counts)."""
        keep = torch.zeros(probs.shape[0], dtype=torch.bool, device=probs.device)
        for i in range(probs.shape[0]):
            keep[i] = bool(self.crop(probs[i], boxes[i], height, width)[2].any())
        return keep

    def paint(self, label: Tensor, probs: Tensor, boxes: Tensor) -> None:
        """Paint the masks, highest score first; overlaps go to the object painted first."""
        height, width = int(label.shape[0]), int(label.shape[1])
        next_id = 1
        for i in range(probs.shape[0]):
            y0, x0, crop = self.crop(probs[i], boxes[i], height, width)
            region = label[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
            free = crop & (region == 0)
            if bool(free.any()):
                region.masked_fill_(free, next_id)
                next_id += 1


def percentile(a: Tensor, q: float) -> float:
    """numpy's ``percentile(a, q)`` (method ``linear``): float32 values, float64 lerp."""
    flat = a.reshape(-1).sort()[0].double()
    n = flat.shape[0]
    index = q / 100.0 * (n - 1)
    below = int(math.floor(index))
    above = min(below + 1, n - 1)
    t = index - below
    lower, upper = flat[below], flat[above]
    diff = upper - lower
    if t >= 0.5:
        return float(upper - diff * (1.0 - t))
    return float(lower + diff * t)


def scriptable(net: nn.Module, options: DetectionOptions = DEFAULTS) -> ScriptedSegmenter:
    """A :class:`ScriptedSegmenter` of a loaded cupre detector (fp32, eval), with the
    detection options of ``cupre predict`` fixed: the score threshold, the detection cap
    and the cell diameter (None: estimated per image)."""
    heads = net.head.roi_heads
    if not hasattr(heads, "box_head"):
        raise CupreError("TorchScript export covers Mask R-CNN heads; this model has Cascade heads "
                         "(export it with --format bioimageio instead)")
    net = copy.deepcopy(net).float().eval().requires_grad_(False)  # an inference program: no autograd
    for module in net.modules():  # the channels-last pre-hooks: a memory layout, not values
        module._forward_pre_hooks.clear()
    rpn, heads = net.head.rpn, net.head.roi_heads
    rpn.__class__ = RegionProposalNetwork  # its subclass only changes training labels (ignore regions)
    rpn.box_coder = det_utils.BoxCoder(tuple(rpn.box_coder.weights), bbox_xform_clip=rpn.box_coder.bbox_xform_clip)
    rpn.proposal_matcher = det_utils.Matcher(rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold,
                                             allow_low_quality_matches=rpn.proposal_matcher.allow_low_quality_matches)
    plain = RoIHeads(
        box_roi_pool=heads.box_roi_pool, box_head=heads.box_head, box_predictor=heads.box_predictor,
        fg_iou_thresh=heads.proposal_matcher.high_threshold, bg_iou_thresh=heads.proposal_matcher.low_threshold,
        batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        positive_fraction=heads.fg_bg_sampler.positive_fraction, bbox_reg_weights=tuple(heads.box_coder.weights),
        score_thresh=float(options.score_threshold), nms_thresh=heads.nms_thresh,
        detections_per_img=int(options.max_detections),
        mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor)
    return ScriptedSegmenter(Body(net.backbone, net.neck), rpn, plain, object_size=net.object_size,
                             mask_threshold=float(net.mask_threshold), chunk_size=int(heads.chunk_size),
                             diameter=options.diameter, invert_bright=bool(net.transform.invert_bright))


def export_torchscript(model_file: Path, out: Path, *, options: DetectionOptions = DEFAULTS,
                       sample: Path | None = None) -> Path:
    """Write the scripted model ``out`` (``torch.jit.save``; loads with ``torch.jit.load``
    where torchvision's operators are registered); returns it.

    Before writing, the scripted model segments the sample image (``sample``, or a
    synthetic cell image) and its label image must equal ``cupre predict``'s for the same
    image and options (:func:`checked_script`); otherwise nothing is written.

    Raises:
        CupreError: Cascade heads, an unreadable model file, or a scripted model that
            differs from cupre (a bug to report).
    """
    from cupre.export.sample import sample_fits, sample_image
    from cupre.fileio import atomic_path
    from cupre.inference.arrays import segment_array
    from cupre.inference.predict import load_model

    net, categories = load_model(model_file, device=torch.device("cpu"), precision="fp32")
    options = options.for_model(net)
    raw = sample_image(sample)
    with sample_fits(sample, raw):
        want, _, _ = segment_array(net, raw, device=torch.device("cpu"), categories=categories, options=options,
                                   precision="fp32")
    scripted = checked_script(net, raw, want, options, where=model_file)
    facts = {"score_threshold": options.score_threshold, "max_detections": options.max_detections,
             "diameter": options.diameter,
             "input": "B x C x H x W raw intensities (C = 1 grey or 3 RGB), or H x W",
             "output": "B x 1 x H x W int32 instance labels (0 background, 1 the highest score)",
             "model_file": str(model_file), "objects_in_sample": int(want.max())}
    with atomic_path(out) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={"cupre.json": json.dumps(facts)})
    return out


def checked_script(net: nn.Module, raw: np.ndarray, want: np.ndarray, options: DetectionOptions, *,
                   where: Path) -> torch.jit.ScriptModule:
    """The scripted inference of ``net`` (:func:`scriptable`), once its label image of
    ``raw`` equals ``want``, what ``cupre predict`` gives for it with the same options
    (:func:`cupre.inference.arrays.segment_array`, fp32).

    Raises:
        CupreError: the label images differ (names ``where``, the model file).
    """
    scripted = torch.jit.script(scriptable(net, options))
    with torch.no_grad():
        got = scripted(image_batch(raw))[0, 0].numpy()
    if not np.array_equal(got, want):
        raise CupreError(f"{where}: the scripted model's labels differ from cupre predict's on the sample "
                         f"({int((got != want).sum())} pixels); nothing written. Please report this.")
    return scripted


def image_batch(raw: np.ndarray) -> Tensor:
    """An image array as the scripted model's ``1 x C x H x W`` input."""
    a = np.asarray(raw)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].transpose(2, 0, 1)
    elif a.ndim == 3 and a.shape[-1] in (1, 2):
        a = a[..., :1].transpose(2, 0, 1)
    else:
        a = a.reshape(1, *a.shape[-2:])
    return torch.from_numpy(np.ascontiguousarray(a))[None]
