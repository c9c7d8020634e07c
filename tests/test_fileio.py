"""Outputs are written atomically: a failure leaves the old file (or none), never a stub."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from cupre.errors import CupreError
from cupre.fileio import atomic_path, write_json_atomic, write_text_atomic


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"AP": 0.5})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CupreError, match=r"metrics.json: cannot write \(No space left on device\)"):
        write_json_atomic(target, {"AP": 0.9})
    monkeypatch.undo()
    assert target.read_text() == '{"AP":0.5}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_unwritable_folder_is_one_line_and_nothing_is_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CupreError, match=r"afile/out/split.json: cannot write"):
        write_text_atomic(tmp_path / "afile" / "out" / "split.json", "{}")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "label.tif") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no 0-byte or half file behind


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_follow_the_umask_like_any_new_file(tmp_path, mask):
    before = os.umask(mask)
    try:
        write_text_atomic(tmp_path / "out.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~mask
