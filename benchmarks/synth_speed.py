"""Images per second of the synthetic generators (one core, 256x256, PNG + JSON written).

Usage: python benchmarks/synth_speed.py [--n 100] [--size 256]
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from cupre.data.synthetic import KINDS, write_synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per kind")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    for kind in KINDS:
        with tempfile.TemporaryDirectory() as tmp:
            write_synthetic(kind, Path(tmp) / "warm", n_images=2, size=args.size, seed=1)
            start = time.perf_counter()
            write_synthetic(kind, Path(tmp) / "run", n_images=args.n, size=args.size, seed=0)
            elapsed = time.perf_counter() - start
        print(f"{kind:8s} {args.n / elapsed:7.1f} images/s  ({args.n} images {args.size}x{args.size}, "
              f"{elapsed:.2f} s, one core)")


if __name__ == "__main__":
    main()
