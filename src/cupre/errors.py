"""User-facing errors and warnings.

Every problem a user can cause (a bad file, a wrong option) is raised as a
:class:`CupreError` whose message names the file and the problem in one line. The
command line prints that line and exits with status 2, never a traceback.
"""

from __future__ import annotations

import warnings
from pathlib import Path


class CupreError(Exception):
    """A problem with the user's input, reported as one clear line."""


class CupreWarning(UserWarning):
    """A recoverable problem with the input (the item is skipped)."""


def file_error(path: str | Path, problem: str) -> CupreError:
    """Build the standard one-line error: ``<path>: <problem>``."""
    return CupreError(f"{path}: {problem}")


def warn_or_raise(path: str | Path, problem: str, *, strict: bool, skipped: bool = True) -> None:
    """Warn (the caller skips the item when ``skipped``), or raise when ``strict`` is set."""
    if strict:
        raise file_error(path, problem)
    note = "skipped; " if skipped else ""
    warnings.warn(f"{path}: {problem} ({note}--strict makes this an error)", CupreWarning, stacklevel=2)
