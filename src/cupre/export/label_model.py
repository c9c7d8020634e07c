"""A cupre detector as a module from image to label image: what an exported model gives.

``LabelImageModel(detector=..., ...)(x)`` takes raw intensities ``B x 1 x H x W`` (one
grey channel, any value range) and returns the instance label image ``B x 1 x H x W``
(int32; 0 background, 1 the highest-scoring object) that ``cupre predict`` writes for
the same image: the same normalisation, object-scale rule, tiling and painting
(:func:`cupre.inference.arrays.segment_array`). Its state dict is the detector's under
``net.``, so a bioimage.io ``pytorch_state_dict`` package builds it from its
``kwargs`` and loads the weights as plain tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from cupre.config import DetectorConfig
from cupre.inference.arrays import segment_array
from cupre.inference.options import DEFAULTS, FALLBACK_SCORE_THRESHOLD, DetectionOptions
from cupre.models.detector import build_detector


class LabelImageModel(torch.nn.Module):
    """Raw image batch in, label image batch out (see the module docstring).

    Args:
        detector: the detector config (``DetectorConfig`` keys, as stored in a model file).
        score_threshold, diameter, tile_size, tile_overlap, max_detections: the fields of
            :class:`cupre.inference.options.DetectionOptions` (``diameter`` None:
            estimated per image), plain values so that a package's ``kwargs`` hold them.
        categories: the model's categories (for the object table; unused in the output).
        object_size: the name packages written before ``diameter`` used for it.
    """

    def __init__(self, detector: dict[str, Any], score_threshold: float = FALLBACK_SCORE_THRESHOLD,
                 diameter: float | None = None, tile_size: int = DEFAULTS.tile_size,
                 tile_overlap: int = DEFAULTS.tile_overlap, categories: list[dict] | None = None,
                 max_detections: int = DEFAULTS.max_detections, object_size: float | None = None) -> None:
        super().__init__()
        self.net = build_detector(DetectorConfig.from_dict(dict(detector), where="bioimage.io kwargs")).eval()
        self.options = DetectionOptions(score_threshold=score_threshold, max_detections=max_detections,
                                        diameter=diameter if diameter is not None else object_size,
                                        tile_size=tile_size, tile_overlap=tile_overlap)
        self.categories = categories

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 1 x H x W`` raw intensities -> ``B x 1 x H x W`` int32 label images."""
        self.net.eval()
        device = next(self.net.parameters()).device
        labels = []
        for image in x:
            label, _, _ = segment_array(self.net, image[0].detach().cpu().float().numpy(), device=device,
                                        categories=self.categories, options=self.options, precision="fp32")
            labels.append(torch.from_numpy(label.astype("int32"))[None])
        return torch.stack(labels).to(x.device)
