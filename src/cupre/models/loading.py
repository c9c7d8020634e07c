"""A detector rebuilt from a model file (:mod:`cupre.modelfile`): the file's config,
its tensors checked against that config, no random weights made to be overwritten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.modelfile import check_state, load_model_file
from cupre.models.detector import build_detector


def build_from_file(path: str | Path, *, overrides: dict[str, Any] | None = None,
                    weights_dtype: torch.dtype | None = None):
    """Rebuild the detector stored in ``path`` (config overrides allowed; ``weights_dtype``
    as in :func:`load_model_file`).

    Returns:
        (model, its DetectorConfig, the file's content as from :func:`load_model_file`).
    """
    ckpt = load_model_file(path, weights_dtype=weights_dtype)
    cfg = DetectorConfig.from_dict({**ckpt["detector"], **(overrides or {})}, where=f"{path} (detector config)")
    try:
        with torch.device("meta"):  # no random weights made only to be overwritten: one copy in memory
            model = build_detector(cfg)
    except CupreError as exc:  # a backbone name no library knows, say: the file is what the user gave
        raise CupreError(f"{path}: {exc}") from None
    check_state(path, model, ckpt["model"])
    model.load_state_dict(ckpt["model"], assign=True)
    model.score_threshold = ckpt.get("score_threshold")  # validated with the model, where it was
    return model, cfg, ckpt
