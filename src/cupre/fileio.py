"""Files in and out: JSON read with one-line errors, and atomic writes (temp file, fsync,
rename), so that a killed run or a full disk never leaves a half-written output. Written
files get the mode any new file gets under the umask (a colleague can read them where
the umask lets them)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cupre.errors import file_error


def not_regular(path: str | Path) -> str | None:
    """What ``path`` is when it exists but is no regular file (``"a named pipe"``, ``"a
    folder"`` ...), else None. Opening a named pipe waits for a writer: readers skip such
    entries instead of opening them."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"


def link_above(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` is a symbolic link to a folder holding ``folder`` (a ``parent ->
    ..`` link): following it would walk out of ``folder``, into its parent and everything
    beside it. A link to any other folder is no escape (a folder of links to the real data
    is a common layout; a link back into ``folder`` is a loop that walks see once)."""
    if not os.path.islink(path):
        return False
    target, top = os.path.realpath(path), os.path.realpath(folder)
    return top.startswith(target.rstrip(os.sep) + os.sep)


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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed to disk and
    renamed over ``path``, on any failure removed, so ``path`` is never left half-written.

    Raises:
        CupreError: ``<path>: cannot write (...)`` when the folder cannot be written or
            the disk is full.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise file_error(path, f"cannot write ({exc.strerror or exc})") from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600: the output gets a new file's usual mode
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise file_error(path, f"cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = None) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`atomic_path`)."""
    separators = None if indent is not None else (",", ":")
    return write_text_atomic(path, json.dumps(data, indent=indent, separators=separators))
