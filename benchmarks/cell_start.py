"""How long a grid's cells take when they run side by side: processes forked from a
server that imported the training code once (``forkserver``, what ``cupre experiment``
and ``cupre demo`` use where the platform has it) against new interpreters (``spawn``).

Each measurement is a fresh Python process that runs ``--cells`` scratch fine-tuning
cells (the demo's ResNet-18 detector, ``--iterations`` steps on synthetic 64 px cells,
one model file each), ``--parallel`` at a time on one thread each, and prints the wall
time of the cells alone (the fork server's own start included) and of the process. The
two methods alternate, so a drift of the machine's speed falls on both.

Usage: python benchmarks/cell_start.py [--cells 4] [--parallel 2] [--iterations 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()


def one_run(method: str, args: argparse.Namespace) -> None:
    """Child: the cells under ``method``; prints one JSON line."""
    import multiprocessing

    from cupre.config import FinetuneConfig
    from cupre.data.synthetic import write_synthetic
    from cupre.experiments import parallel
    from cupre.experiments.demo import demo_config

    if method == "spawn":
        parallel._context = lambda on_cpu: multiprocessing.get_context("spawn")
    detector = demo_config(device="cpu").pretrain.detector.model_dump()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic("cells", root / "cells", n_images=4, size=64, seed=0)
        optim = {"iterations": args.iterations, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3,
                 "warmup_iterations": 1, "crop_size": None}
        jobs = []
        for k in range(args.cells):
            cfg = FinetuneConfig.from_dict({"init": "scratch", "train": str(root / "cells" / "annotations.json"),
                                            "detector": detector, "optim": optim, "seed": k, "device": "cpu",
                                            "num_workers": 0})
            jobs.append((k, cfg, root / f"cell{k}", None))
        start = time.perf_counter()
        parallel.run_cells(jobs, parallel=args.parallel, threads=1, on_done=lambda key: None)
        cells = time.perf_counter() - start
        assert all((root / f"cell{k}" / "model.safetensors").is_file() for k in range(args.cells))
    print(json.dumps({"method": method, "cells_s": cells, "process_s": time.perf_counter() - START}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=["forkserver", "spawn"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args.one, args)
        return
    from cupre.devices import cpu_name

    passed = [f"--cells={args.cells}", f"--parallel={args.parallel}", f"--iterations={args.iterations}"]
    results: dict[str, list[dict]] = {"forkserver": [], "spawn": []}
    for _ in range(args.repeats):
        for method in results:
            done = subprocess.run([sys.executable, __file__, "--one", method, *passed], capture_output=True,
                                  text=True, check=True)
            results[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{cpu_name()}; {args.cells} scratch cells (ResNet-18 demo detector, {args.iterations} steps each), "
          f"{args.parallel} at a time, 1 intra-op thread each; median of {args.repeats} fresh processes per method")
    for method, runs in results.items():
        cells = [r["cells_s"] for r in runs]
        process = [r["process_s"] for r in runs]
        print(f"{method:10s} cells {statistics.median(cells):6.1f} s (min {min(cells):.1f}, max {max(cells):.1f});"
              f"  whole process {statistics.median(process):6.1f} s")


if __name__ == "__main__":
    main()
