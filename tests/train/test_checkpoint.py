"""Checkpoint writes: a write torch's zip writer cannot finish is one line naming the file."""

from __future__ import annotations

import os

import pytest
import torch

from cupre.errors import CupreError
from cupre.train import checkpoint
from cupre.train.checkpoint import atomic_save, load_checkpoint


def test_a_checkpoint_is_written_whole(tmp_path):
    path = atomic_save({"step": 3, "w": torch.ones(4)}, tmp_path / "state.pt")
    assert load_checkpoint(path)["step"] == 3 and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device that is always full)")
def test_a_full_disk_under_torch_save_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """torch.save onto /dev/full: torch's own RuntimeError ("unexpected pos ..."), as on a
    full disk, becomes a CupreError naming the checkpoint; no temporary file is left."""
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, **kw: real_save(obj, "/dev/full", **kw))
    path = tmp_path / "state.pt"
    with pytest.raises(CupreError) as err:
        atomic_save({"w": torch.ones(1000)}, path)
    line = str(err.value)
    assert line.startswith(f"{path}: cannot write (") and "\n" not in line and len(line) < 300
    assert "enforce fail" not in line  # torch's C++ check, no help to a reader
    assert not list(tmp_path.iterdir())


def test_a_full_disk_is_said_as_such(tmp_path, monkeypatch):
    def fail(obj, f, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", fail)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: type("U", (), {"free": 4096})())
    with pytest.raises(CupreError, match=r"state.pt: cannot write \(no space left on the disk; free some"):
        atomic_save({}, tmp_path / "state.pt")


def test_other_runtime_errors_of_torch_save_are_left_as_they_are(tmp_path, monkeypatch):
    def fail(obj, f, **kw):
        raise RuntimeError("cannot pickle this object")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(RuntimeError, match="cannot pickle this object"):
        atomic_save({}, tmp_path / "state.pt")
    assert not list(tmp_path.iterdir())
