"""Progress lines of cells that train in other processes, from their metrics.csv."""

from __future__ import annotations

from cupre.experiments.progress import CellProgress, duration, last_step


def log_steps(folder, steps, stage="finetune"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.csv"
    new = not path.exists()
    with open(path, "a") as fh:
        if new:
            fh.write("stage,step,name,value\n")
        for step in steps:
            fh.write(f"{stage},{step},loss,0.5\n{stage},{step},lr,0.001\n")


def test_the_last_step_is_read_from_the_newest_metrics_file(tmp_path):
    assert last_step(tmp_path / "a") == 0
    log_steps(tmp_path / "a", range(1, 2001))  # longer than the tail read
    log_steps(tmp_path / "a", [250], stage="val")
    assert last_step(tmp_path / "a") == 2000


def test_a_line_each_tenth_of_the_steps_with_an_estimate(tmp_path):
    now = [0.0]
    cells = [("scratch", tmp_path / "scratch", 100), ("cupre", tmp_path / "cupre", 100)]
    progress = CellProgress(cells, clock=lambda: now[0])
    assert progress.poll() is None
    log_steps(tmp_path / "scratch", range(1, 11))
    log_steps(tmp_path / "cupre", range(1, 6))
    now[0] = 30.0
    assert progress.poll() is None  # 15 of 200 steps: not yet a tenth
    log_steps(tmp_path / "cupre", range(6, 21))
    now[0] = 60.0
    line = progress.poll()
    assert line == ("experiment: cells 15% (30 of 200 steps: scratch 10/100, cupre 20/100), 1 min 0 s, "
                    "about 5 min 40 s of training left")
    assert progress.poll() is None  # nothing new: no line
    progress.finished(tmp_path / "scratch")
    line = progress.poll()
    assert line.startswith("experiment: cells 60% (120 of 200 steps: scratch done, cupre 20/100)")
    lines = []
    for step in range(21, 101):
        log_steps(tmp_path / "cupre", [step])
        lines.append(progress.poll())
    assert len([x for x in lines if x]) == 3  # 70%, 80%, 90%; never a line per step, none at 100%


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (42, 125, 3720)] == ["42 s", "2 min 5 s", "1 h 2 min"]
