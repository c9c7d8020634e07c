"""Data-parallel training with torchrun: two gloo processes on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

from cupre.data.synthetic import write_synthetic
from cupre.modelfile import load_model_file
from cupre.train.checkpoint import load_checkpoint
from tests.helpers import FAST_OPTIM as FAST
from tests.helpers import TINY_DETECTOR as DETECTOR


def test_two_process_pretrain_and_finetune(tmp_path):
    write_synthetic("objects", tmp_path / "objects", n_images=4, size=64, seed=0)
    write_synthetic("cells", tmp_path / "cells", n_images=4, size=64, seed=1)
    detector = {**DETECTOR}
    cfg = {
        "detector": detector,
        "coco": [str(tmp_path / "objects" / "annotations.json")],
        "unlabeled": [str(tmp_path / "cells" / "images")],
        "warmup": {**FAST, "iterations": 2},
        "amt2": {"rounds": 1, "moco": {"optim": {**FAST, "iterations": 2, "batch_size": 2, "crop_size": 32},
                                        "dim": 8, "hidden_dim": 16, "queue_size": 64},
                 "coco": {**FAST, "iterations": 2}},
        "num_workers": 0, "device": "cpu",
    }
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "cupre.cli"]
    done = subprocess.run(torchrun + ["pretrain", str(tmp_path / "pre.yaml"), "-o", str(tmp_path / "pre"),
                                      "--keep-checkpoints"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(tmp_path / "pre" / "amt2" / "state.pt")
    # MoCo keys are gathered over both ranks: 2 iterations x batch 2 x 2 ranks enqueued
    assert int(state["moco"]["queue_ptr"]) == 8
    assert (tmp_path / "pre" / "amt2" / "model.safetensors").is_file()

    done = subprocess.run(torchrun + ["finetune", "--init", "cupre", "--from", str(tmp_path / "pre"), "--train",
                                      str(tmp_path / "cells" / "annotations.json"), "--iterations", "2",
                                      "--batch-size", "1", "--device", "cpu", "-o", str(tmp_path / "ft")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    model = load_model_file(tmp_path / "ft" / "model.safetensors")["model"]
    assert all(torch.isfinite(v.float()).all() for v in model.values())
