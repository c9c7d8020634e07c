"""The shared training machinery: resumable batches, schedules, atomic checkpoints, resume."""

from __future__ import annotations

import pytest
import torch

from cupre.config import OptimConfig
from cupre.errors import CupreError
from cupre.train.batches import ResumableSampler, hash_seed
from cupre.train.checkpoint import atomic_save, load_checkpoint
from cupre.train.optim import build_optimizer, build_scheduler
from cupre.train.run import Run
from cupre.train.stage import RunContext, StateFile, run_stage


def test_sampler_resumes_mid_epoch_with_the_same_order():
    full = ResumableSampler(10, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(25)]  # two and a half epochs
    resumed = ResumableSampler(10, seed=3, skip=13)
    it2 = iter(resumed)
    assert [next(it2) for _ in range(12)] == first[13:]
    epochs = [e for e, _ in first]
    assert epochs[:10] == [0] * 10 and epochs[10:20] == [1] * 10
    assert sorted(i for e, i in first if e == 0) == list(range(10))
    assert [i for e, i in first if e == 0] != [i for e, i in first if e == 1]


def test_hash_seed_is_stable_and_distinct():
    assert hash_seed(1, 2, 3) == hash_seed(1, 2, 3)
    assert len({hash_seed(0, e, i) for e in range(5) for i in range(50)}) == 250


def test_schedule_warms_up_then_decays():
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = OptimConfig(iterations=100, lr=1.0, warmup_iterations=10, schedule="cosine")
    opt = build_optimizer([{"params": [p]}], cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.01 and lrs[10] == pytest.approx(1.0) and lrs[99] < 0.01
    step = OptimConfig(iterations=100, lr=1.0, warmup_iterations=0, schedule="step", lr_steps=(0.5,))
    opt = build_optimizer([{"params": [p]}], step)
    sched = build_scheduler(opt, step)
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CupreError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


class Killed(Exception):
    pass


def _train(tmp_path, *, kill_at: int | None, resume: bool):
    """A tiny regression stage with random augmentation and dropout (both RNG-driven)."""
    torch.manual_seed(0)
    data = [(torch.randn(4), torch.randn(1)) for _ in range(7)]
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    state_file = StateFile(tmp_path / "state.pt")
    state = state_file.load() if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
    losses = []

    def step(batch):
        x, y = batch
        if kill_at is not None and len(losses) + (state or {}).get("iteration", 0) == kill_at:
            raise Killed
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        return {"loss": loss}

    def augment(x, y):
        return x + 0.1 * torch.randn_like(x), y

    cfg = OptimConfig(iterations=12, batch_size=3, lr=0.05, warmup_iterations=2)
    ctx = RunContext(run=Run(tmp_path, tensorboard=False), device=torch.device("cpu"), seed=1,
                     state_file=state_file, resume=state, extra_state=lambda: {"model": model.state_dict()},
                     checkpoint_every=4)
    try:
        run_stage(stage="toy", step_fn=step, groups=[{"params": list(model.parameters())}], cfg=cfg,
                  dataset=data, transform=augment, collate_fn=None, ctx=ctx)
    except Killed:
        pass
    return losses


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    straight = _train(tmp_path / "a", kill_at=None, resume=False)
    first = _train(tmp_path / "b", kill_at=6, resume=False)  # killed mid-epoch, after the checkpoint at 4
    assert len(first) == 6
    resumed = _train(tmp_path / "b", kill_at=None, resume=True)
    assert len(resumed) == 8  # iterations 4..11 again from the checkpoint
    assert resumed == pytest.approx(straight[4:], abs=1e-7)
    rows = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "stage,step,name,value" and any(r.startswith("toy,12,loss,") for r in rows)
