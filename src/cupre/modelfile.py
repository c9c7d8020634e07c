"""Model files: the weights of a detector plus what is needed to rebuild it.

A model file holds ``{"kind": "cupre-detector", "model": state dict, "detector":
DetectorConfig as a dict, "categories": [...], **facts}`` (facts such as the training
stage and iteration). Written atomically; read by training (initialisations),
evaluation and prediction alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.fileio import atomic_path

KIND = "cupre-detector"
LEGACY_DETECTOR_KEYS = ("min_size", "max_size")  # resize settings before the object-scale rule


def write_model_file(path: str | Path, model: torch.nn.Module, cfg: DetectorConfig, categories: list[dict],
                     **facts: Any) -> Path:
    """Write the model file atomically (weights moved to the CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"kind": KIND, "model": state, "detector": cfg.to_dict(), "categories": categories, **facts}, tmp)
    return Path(path)


def load_model_file(path: str | Path) -> dict[str, Any]:
    """Read a model file, with one-line errors for a missing, broken or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CupreError(f"{path}: model file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds here (pickle, zip, EOF)
        raise CupreError(f"{path}: not a readable model file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise CupreError(f"{path}: not a cupre model file (no detector weights in it)")
    for key in LEGACY_DETECTOR_KEYS:
        ckpt["detector"].pop(key, None)
    return ckpt


def build_from_file(path: str | Path, *, overrides: dict[str, Any] | None = None):
    """Rebuild the detector stored in ``path`` (config overrides allowed).

    Returns:
        (model, its DetectorConfig, the file's dict).
    """
    from cupre.models.detector import build_detector

    ckpt = load_model_file(path)
    cfg = DetectorConfig.from_dict({**ckpt["detector"], **(overrides or {})}, where=str(path))
    model = build_detector(cfg)
    model.load_state_dict(ckpt["model"])
    return model, cfg, ckpt
