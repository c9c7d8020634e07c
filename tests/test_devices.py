"""Precision and thread choices."""

from __future__ import annotations

import pytest
import torch

from cupre.devices import autocast, available_cores, resolve_precision, set_threads
from cupre.errors import CupreError

CPU = torch.device("cpu")


def test_explicit_precision_wins_and_auto_reads_the_environment(monkeypatch):
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setenv("CUPRE_PRECISION", "bf16")
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.delenv("CUPRE_PRECISION")
    assert resolve_precision("auto", CPU) in ("bf16", "fp32")  # the CPU decides
    with pytest.raises(CupreError, match="precision must be one of"):
        resolve_precision("fp16", CPU)


def test_autocast_runs_bf16_only_when_asked():
    layer = torch.nn.Linear(4, 4)
    x = torch.rand(2, 4)
    with autocast(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert layer(x).dtype == torch.float32


def test_set_threads(monkeypatch):
    import cupre.devices as devices

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(devices, "busy_cores", lambda: 0)
        assert set_threads(None) == available_cores() == torch.get_num_threads()
        monkeypatch.setattr(devices, "available_cores", lambda: 2)
        monkeypatch.setattr(devices, "busy_cores", lambda: 1)  # another process on one of two cores
        assert set_threads(None) == 1
        monkeypatch.setattr(devices, "busy_cores", lambda: 7)
        assert set_threads(None) == 1  # never fewer than one
        with pytest.raises(CupreError, match="--threads"):
            set_threads(0)
        with pytest.raises(CupreError, match="more than 4 per CPU core"):
            set_threads(100_000)
    finally:
        torch.set_num_threads(before)


def test_the_cupre_command_keeps_triton_out_without_a_gpu():
    """``cupre predict`` in a fresh process: without a GPU, torchvision's import no longer
    loads triton (75 MiB resident); with one, nothing changes."""
    import subprocess
    import sys

    code = ("import sys; from cupre.cli import main\n"  # a predict that stops at its missing model (--help imports no torch)
            "main(['predict', '--model', '/nonexistent/model.safetensors', '/nonexistent/x.png', '-o', '/nonexistent/o'])\n"
            "import torch, torchvision\n"
            "print('triton loaded' if sys.modules.get('triton') is not None else 'triton not loaded', "
            "'torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    last = done.stdout.strip().splitlines()[-1]
    import importlib.util

    loads = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    assert last == ("triton loaded True" if loads else "triton not loaded True")
