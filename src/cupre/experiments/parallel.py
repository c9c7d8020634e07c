"""Fine-tuning cells side by side: ``parallel`` worker processes, each on its share of threads.

On a CPU, small models use their threads poorly: two R18 fine-tuning runs on one thread
each make about 1.35x the steps per second of one run on two threads (2-core machine,
bf16). Each worker process runs whole cells (``run_finetune``), so a cell's results do
not depend on which worker ran it or on what ran beside it, beyond float rounding from the
thread count. Progress bars are off in the workers; the runner prints a line per cell.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable


def _init_worker(threads: int) -> None:
    from cupre.devices import set_threads
    from cupre.train import loop

    set_threads(threads)
    loop.SHOW_PROGRESS = False


def _finetune(cfg, folder: Path) -> None:
    from cupre.train.finetune import run_finetune

    run_finetune(cfg, folder)


def run_cells(jobs: list[tuple[object, object, Path]], *, parallel: int, threads: int,
              on_done: Callable[[object], None]) -> None:
    """Run ``jobs`` (``(key, FinetuneConfig, folder)``) ``parallel`` at a time, each
    worker on ``threads`` intra-op threads; ``on_done(key)`` in this process after each.
    The first failure is raised once the cells already running have stopped."""
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=parallel, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        running = {pool.submit(_finetune, cfg, folder): key for key, cfg, folder in jobs}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                error = future.exception()
                if error is not None:
                    for other in running:
                        other.cancel()
                    raise error
                on_done(key)
