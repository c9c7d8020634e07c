"""Saving model files from (possibly distributed) training: rank 0 writes, all wait."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cupre.config import DetectorConfig
from cupre.modelfile import write_model_file
from cupre.train import distributed


def save_model(path: str | Path, model: torch.nn.Module, cfg: DetectorConfig, categories: list[dict],
               **facts: Any) -> None:
    """Write the model file (rank 0), then let every rank read it."""
    if distributed.is_main():
        write_model_file(path, model, cfg, categories, **facts)
    distributed.barrier()
