"""Checkpoints written atomically, and the RNG state that makes a resumed run identical.

A checkpoint is written to a temporary file in the same folder, flushed to disk and then
renamed over the old one, so a run killed while saving never leaves a truncated file.
"""

from __future__ import annotations

import errno
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cupre.errors import CupreError
from cupre.fileio import atomic_path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename).

    Raises:
        CupreError: ``<path>: cannot write (...)`` when the folder cannot be written or the
            disk fills up while writing (which torch reports as a RuntimeError).
    """
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            if not write_failed(exc):
                raise
            raise write_error(exc, tmp) from None
    return Path(path)


WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def write_failed(exc: RuntimeError) -> bool:
    """torch's zip writer failed on the file itself (a full disk, a lost network share):
    its C++ ``PytorchStreamWriter`` raises a RuntimeError where Python would an OSError."""
    return any(words in str(exc) for words in WRITE_FAILED)


def write_error(exc: RuntimeError, tmp: Path) -> OSError:
    """The OSError the failed write would have been, which :func:`cupre.fileio.atomic_path`
    turns into one line naming the file: the disk is full where it has less than 64 MiB
    left, else torch's words."""
    try:
        full = shutil.disk_usage(tmp.parent).free < 64 * 2**20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, "no space left on the disk; free some, then run the same command again")
    said = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", " ".join(str(exc).split("\n")[0].split()))
    return OSError(errno.EIO, f"torch: {said[:160]}")


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by cupre, with a clear error for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise CupreError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)  # tensors and plain types only
    except Exception as exc:  # torch raises many kinds here (pickle, zip, EOF)
        raise CupreError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise CupreError(f"{path}: not a cupre checkpoint (expected a dict)")
    return obj


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
