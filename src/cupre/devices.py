"""Device choice, shared by training, evaluation and prediction."""

from __future__ import annotations

import os

import torch


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA (this rank's GPU under torchrun) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
