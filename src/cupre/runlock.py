"""One run per output folder: ``OUT/.cupre.lock`` while a command writes into ``OUT``.

Two commands writing into the same folder at once would race on its ledger, its
checkpoints and its outputs. The lock file holds the writer's process id and host; a
second command refuses in one line naming them. A lock left by a process that no longer
exists (killed, machine restarted) is taken over. The lock goes when the command ends,
and a folder the lock itself had to make goes with it when nothing else was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cupre.errors import CupreError

LOCK_FILE = ".cupre.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def _holder(lock: Path) -> dict | None:
    """The lock's content, or None when it is unreadable or its process is gone on this host."""
    try:
        info = json.loads(lock.read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        with contextlib.suppress(OSError):  # being written by a run that has just made it (no hard links here)
            if time.time() - lock.stat().st_mtime < 10:
                return {"pid": "?", "host": "?"}
        return None
    if host == socket.gethostname() and not _alive(pid):
        return None
    return info


def only_lock_in(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a lock (an empty run folder being started)."""
    return all(p.name == LOCK_FILE for p in folder.iterdir())


@contextlib.contextmanager
def run_lock(folder: str | Path, command: str = "") -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block.

    Raises:
        CupreError: another live cupre process holds it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CupreError(f"{folder}: the output folder is a file; give -o a folder")
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise CupreError(f"{folder}: cannot make the output folder, {blocker} is a file")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv[:3]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    staged = folder / f"{LOCK_FILE}.{os.getpid()}"
    staged.write_text(json.dumps(mine))
    try:
        for _ in range(3):
            try:
                try:
                    os.link(staged, lock)  # atomic, content and all: fails when a lock exists
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links
                    with open(lock, "x") as fh:
                        fh.write(json.dumps(mine))
                break
            except FileExistsError:
                holder = _holder(lock)
                if holder is not None:
                    raise CupreError(
                        f"{folder}: another cupre run is writing here (process {holder['pid']} on {holder['host']}, "
                        f"'{holder.get('command', '?')}', since {holder.get('started', '?')}); wait for it to "
                        "end, or give another -o") from None
                lock.unlink(missing_ok=True)  # left by a process that is gone: take it over
        else:
            raise CupreError(f"{folder}: cannot take the run folder's lock {lock}")
    finally:
        staged.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the command wrote nothing
