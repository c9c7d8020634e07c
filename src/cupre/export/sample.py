"""The sample image an export is checked on: the user's (one grey plane) or a synthetic one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from cupre.errors import CupreError

TEST_SIDE = 256


def grey_plane(raw: np.ndarray) -> np.ndarray:
    """One grey plane of an image: as is, or the mean of its colour channels."""
    raw = np.asarray(raw)
    if raw.ndim == 2:
        return raw.astype(np.float32)
    return raw[..., :3].astype(np.float32).mean(axis=-1) if raw.shape[-1] >= 3 else raw[..., 0].astype(np.float32)


def sample_image(sample: Path | None) -> np.ndarray:
    """The test image: ``sample`` (its first plane, grey) or a synthetic cell image."""
    if sample is not None:
        from cupre.data.imageio import read_image

        return grey_plane(read_image(sample))
    from cupre.data.synth_cells import render

    return grey_plane(render(np.random.default_rng(0), size=TEST_SIDE, index=1, seed=0).image)


@contextlib.contextmanager
def sample_fits(sample: Path | None, raw: np.ndarray) -> Iterator[None]:
    """The first run of the model on the sample: an image the model cannot take (a 1 x 1
    px one, say) is one line naming it, not torch's traceback."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        what = sample or "the built-in sample"
        raise CupreError(f"{what}: the model cannot segment this {raw.shape[0]} x {raw.shape[1]} px sample "
                         f"({' '.join(str(exc).split())[:160]}); give --sample a larger image of your cells") from None
