"""What decides the detections a user gets, written once.

``cupre predict``, :func:`cupre.inference.arrays.segment_array` (napari, notebooks) and
the three exports take one :class:`DetectionOptions`; the detector's RoI heads apply its
threshold and cap (:func:`cupre.inference.predict.detection_limits`).

Two sizes, two words: ``diameter`` is the typical cell diameter in the user's images
(pixels, given or estimated per image); ``object_size`` is the size the model was
trained to see (``DetectorConfig.object_size``). Each image is rescaled by
``object_size / diameter`` (:mod:`cupre.scale`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cupre.detect.tiles import TILE_OVERLAP, TILE_SIZE, make_tiles
from cupre.errors import CupreError


def kept(scores, threshold: float):
    """The one score rule: a detection is kept when its score is above ``threshold``
    (the RoI heads' ``scores > score_thresh``). Works on tensors and arrays alike."""
    return scores > threshold


@dataclass(frozen=True)
class DetectionOptions:
    """The detections a user gets.

    Attributes:
        score_threshold: detections scoring at most this are dropped (:func:`kept`);
            None: the model's own validated threshold (:meth:`for_model`), else
            ``FALLBACK_SCORE_THRESHOLD``.
        max_detections: most detections per image, or per tile of a tiled image.
        diameter: the typical cell diameter in the images (pixels); None: estimated per
            image by the model.
        tile_size, tile_overlap: tiling of large images (pixels).
    """

    score_threshold: float | None = None
    max_detections: int = 2000
    diameter: float | None = None
    tile_size: int = TILE_SIZE
    tile_overlap: int = TILE_OVERLAP

    def check(self) -> None:
        """Raise a one-line CupreError naming the first bad option (by its flag)."""
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise CupreError(f"--score-threshold must be in [0, 1], got {self.score_threshold}")
        if not 1 <= self.max_detections <= 10_000:
            raise CupreError(f"--max-detections must be between 1 and 10000, got {self.max_detections}")
        if self.diameter is not None and not 0 < self.diameter <= 10_000:
            raise CupreError(f"--diameter must be a positive size in pixels, got {self.diameter}")
        make_tiles(1, 1, tile_size=self.tile_size, overlap=self.tile_overlap)  # validates the tiling


    def for_model(self, net) -> "DetectionOptions":
        """These options with the score threshold resolved for ``net``: the one given,
        else the model's validated one, else ``FALLBACK_SCORE_THRESHOLD``."""
        return self.with_own_threshold(getattr(net, "score_threshold", None))

    def with_own_threshold(self, own: float | None) -> "DetectionOptions":
        """These options with the threshold resolved: the one given, else ``own`` (the
        model's validated threshold, as its file stores it), else ``FALLBACK_SCORE_THRESHOLD``."""
        if self.score_threshold is not None:
            return self
        return replace(self, score_threshold=FALLBACK_SCORE_THRESHOLD if own is None else float(own))


FALLBACK_SCORE_THRESHOLD = 0.5  # for a model without a validated threshold (trained without validation)
DEFAULTS = DetectionOptions()
