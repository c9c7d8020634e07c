"""The one check every command that writes a single file (``evaluate --out``, ``convert
-o``, ``split -o``, ``convert-model``) makes before any work: a user's file is replaced
only with ``--overwrite``, and a command's own input never, since replacing what it read
would lose the input for a result computed from it."""

from __future__ import annotations

import os
from pathlib import Path

from cupre.data.imageio import IMAGE_SUFFIXES
from cupre.errors import file_error


def check_output_file(out: Path, *, overwrite: bool, inputs: list[tuple[str, Path | None]]) -> None:
    """Refuse to write ``out`` where it would replace a file it should not.

    Args:
        out: the file the command will write.
        overwrite: the user passed ``--overwrite``: an existing ``out`` may be replaced.
        inputs: the command's inputs, each with the flag that named it (``("--gt", path)``);
            a folder stands for the image files in it.

    Raises:
        CupreError: ``out`` is a folder, is one of ``inputs`` (even with ``overwrite``) or
            exists and ``overwrite`` is not set.
    """
    out = Path(out)
    if out.is_dir():
        raise file_error(out, "the output is a folder; give a file name")
    if not out.exists():
        return
    for flag, path in inputs:
        if path is not None and _is_input(out, Path(path)):
            raise file_error(out, f"is the command's own input ({flag}); write the output to another file")
    if not overwrite:
        raise file_error(out, "exists; pass --overwrite to replace it")


def _is_input(out: Path, path: Path) -> bool:
    """``out`` (an existing file) is ``path``, or an image of the folder ``path``."""
    if path.is_dir():
        inside = out.resolve().is_relative_to(path.resolve())
        return inside and out.suffix.lower() in IMAGE_SUFFIXES
    try:
        return path.exists() and os.path.samefile(out, path)
    except OSError:
        return False
