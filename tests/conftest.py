"""Shared fixtures: the real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ``--precision auto`` means fp32 in every test (and in what they start), set before any
# fixture runs: results must not depend on whether this CPU computes bf16 natively.
os.environ["CUPRE_PRECISION"] = "fp32"
# Qt runs on the display when there is one (``make test`` starts Xvfb where it can: napari's
# viewer needs OpenGL, which Qt's offscreen platform lacks), else offscreen.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (tests that need it are skipped)")
    return SHARED_DATA
