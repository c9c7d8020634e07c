"""Reading the JSON files users hand to cupre, with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cupre.errors import file_error


def read_json(path: str | Path, *, missing: str = "file not found") -> Any:
    """Parse a JSON file.

    Raises:
        CupreError: ``<path>: <missing>`` when there is no such file, or a line naming the
            file and where the JSON is broken.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, missing)
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise file_error(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise file_error(path, f"cannot read JSON ({exc.__class__.__name__}: {exc})") from None
