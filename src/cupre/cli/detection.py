"""The detection flags ``cupre predict`` and ``cupre export`` share, read into one
:class:`cupre.inference.options.DetectionOptions` (its defaults are the flags' defaults)."""

from __future__ import annotations

import argparse

from cupre.inference.options import DEFAULTS, FALLBACK_SCORE_THRESHOLD, DetectionOptions


def add_detection_arguments(parser: argparse.ArgumentParser, *, tiles: bool = True) -> None:
    parser.add_argument("--score-threshold", type=float, default=DEFAULTS.score_threshold,
                        help="keep detections scoring above this (default: the threshold validated with the model, "
                             f"else {FALLBACK_SCORE_THRESHOLD:g})")
    parser.add_argument("--max-detections", type=int, default=DEFAULTS.max_detections,
                        help=f"most detections per image, or per tile of a tiled image "
                             f"(default {DEFAULTS.max_detections})")
    parser.add_argument("--diameter", type=float, default=DEFAULTS.diameter, metavar="PX",
                        help="typical cell diameter in your images, pixels (default: estimated per image by the "
                             "model); images are rescaled to the object size the model was trained at")
    parser.add_argument("--object-size", type=float, dest="diameter", help=argparse.SUPPRESS)  # the old name
    if tiles:
        parser.add_argument("--tile-size", type=int, default=DEFAULTS.tile_size,
                            help=f"tile larger images into this size (default {DEFAULTS.tile_size})")
        parser.add_argument("--tile-overlap", type=int, default=DEFAULTS.tile_overlap,
                            help=f"tile overlap in pixels, at least the largest cell's size "
                                 f"(default {DEFAULTS.tile_overlap})")


def detection_options(args: argparse.Namespace) -> dict:
    """The :class:`DetectionOptions` fields the parsed ``args`` hold."""
    return {name: getattr(args, name) for name in DetectionOptions.__dataclass_fields__ if hasattr(args, name)}
