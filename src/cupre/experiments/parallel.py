"""Fine-tuning cells side by side: up to ``parallel`` processes, each on its share of threads.

On a CPU, small models use their threads poorly: two R18 fine-tuning runs on one thread
each make about 1.35x the steps per second of one run on two threads (2-core machine,
bf16). Each cell runs in a process of its own (``run_finetune``), so its results do not
depend on what ran beside it, beyond float rounding from the thread count. Progress bars
are off in those processes; the runner prints a line per finished cell, and a
progress line now and then from the cells' ``metrics.csv`` (:mod:`cupre.experiments.progress`).

A failing cell stops the grid: the cells still running are stopped too (like an
interrupt, they resume from their last checkpoint when the command runs again).
"""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from cupre.errors import CupreError

# What each cell process needs, imported once by the fork server its processes start from.
CELL_MODULES = ["cupre.experiments.parallel", "cupre.train.finetune", "cupre.experiments.selftrain"]
TICK_SECONDS = 5.0  # how often the waiting process looks at the cells' progress


def run_cell(cfg, folder: Path, teacher: Path | None) -> None:
    """One cell: a fine-tuning run, or self-training from the ``teacher`` cell's model."""
    if teacher is None:
        from cupre.train.finetune import run_finetune

        run_finetune(cfg, folder)
    else:
        from cupre.experiments.selftrain import run_selftrain

        run_selftrain(cfg, teacher, folder)


def _cell_process(cfg, folder: Path, teacher: Path | None, threads: int, report) -> None:
    """Child process: one cell; sends None, or the error (a traceback for a bug), before it exits."""
    import threading

    from tqdm import tqdm

    from cupre.devices import set_threads
    from cupre.train import loop

    set_threads(threads)
    loop.SHOW_PROGRESS = False
    # tqdm's default lock is a multiprocessing semaphore; a cell stopped by Ctrl-C would leave
    # it behind ("leaked semaphore objects" at exit). Its bars are off here: a thread lock does.
    tqdm.set_lock(threading.RLock())
    try:
        run_cell(cfg, folder, teacher)
        report.send(None)
    except CupreError as exc:
        report.send(str(exc))
    except KeyboardInterrupt:
        report.send("interrupted")
    except BaseException:
        report.send(traceback.format_exc())


def _context(on_cpu: bool):
    """How cell processes start. CPU cells, where the platform has it (Linux, macOS), fork
    from a server process that imported torch and the training code once
    (``forkserver``), so a cell starts in a fraction of a second instead of importing them
    again (about 7 s of one core each on a laptop CPU). GPU cells, and every cell where
    there is no fork server (Windows), start as new interpreters (``spawn``): a GPU cell's
    process then meets CUDA as a process of its own, whatever the server's imports did.
    No cell forks this process's torch thread pools. The server is started with this
    process's environment at the first cell; it then serves every later grid this process
    runs."""
    if not on_cpu or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(CELL_MODULES)
    return context


def run_cells(jobs: list[tuple[object, object, Path, Path | None]], *, parallel: int, threads: int,
              on_done: Callable[[object], None], on_tick: Callable[[], None] | None = None,
              tick: float = TICK_SECONDS) -> None:
    """Run ``jobs`` (``(key, FinetuneConfig, folder, teacher folder or None)``: :func:`run_cell`)
    at most ``parallel`` at a time, each
    process on ``threads`` intra-op threads; ``on_done(key)`` here after each, ``on_tick()``
    here at least every ``tick`` seconds while they run (the runner's progress lines).

    Raises:
        CupreError: a cell failed (its folder and error named); the others were stopped.
    """
    from cupre.devices import device_kind

    context = _context(all(device_kind(str(cfg.device)) == "cpu" for _, cfg, _, _ in jobs))
    pending = list(jobs)
    running: dict[object, tuple[object, Path, object, object]] = {}  # sentinel -> (key, folder, process, pipe)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                key, cfg, folder, teacher = pending.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_cell_process, args=(cfg, folder, teacher, threads, send))
                process.start()
                send.close()
                running[process.sentinel] = (key, folder, process, receive)
            ready = wait(list(running), timeout=tick if on_tick else None)
            if on_tick is not None:
                on_tick()
            for sentinel in ready:
                key, folder, process, receive = running.pop(sentinel)
                process.join()
                error = receive.recv() if receive.poll() else f"the process ended with exit code {process.exitcode}"
                if error is not None:
                    raise CupreError(f"cell {folder}: {error}")
                on_done(key)
    finally:
        for _, _, process, _ in running.values():
            process.terminate()
        for _, _, process, _ in running.values():
            process.join()
