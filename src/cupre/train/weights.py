"""Model files: the weights of a detector plus what is needed to rebuild it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.train import distributed
from cupre.train.checkpoint import atomic_save, load_checkpoint


def save_model(path: str | Path, model: torch.nn.Module, cfg: DetectorConfig, categories: list[dict], **meta: Any) -> None:
    """Write ``{"model", "detector", "categories", **meta}`` atomically (rank 0 writes,
    every rank waits for it, so all can read the file afterwards)."""
    if distributed.is_main():
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_save({"kind": "cupre-detector", "model": state, "detector": cfg.to_dict(),
                     "categories": categories, **meta}, path)
    distributed.barrier()


LEGACY_DETECTOR_KEYS = ("min_size", "max_size")  # resize settings before the object-scale rule


def load_model_file(path: str | Path) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "cupre-detector":
        raise CupreError(f"{path}: not a cupre model file (no detector weights in it)")
    for key in LEGACY_DETECTOR_KEYS:
        ckpt["detector"].pop(key, None)
    return ckpt


def build_from_file(path: str | Path, *, overrides: dict[str, Any] | None = None):
    """Rebuild the detector stored in ``path`` (config overrides allowed, e.g. sizes)."""
    from cupre.models.detector import build_detector

    ckpt = load_model_file(path)
    cfg = DetectorConfig.from_dict({**ckpt["detector"], **(overrides or {})}, where=str(path))
    model = build_detector(cfg)
    model.load_state_dict(ckpt["model"])
    return model, cfg, ckpt
