"""Device, precision and thread choices, shared by training, evaluation and prediction."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import time
from pathlib import Path

import torch

from cupre.errors import CupreError

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def check_device(name: str) -> torch.device | None:
    """The device ``name`` stands for, refused in one line when this machine cannot run a
    model on it (None for ``auto``).

    Raises:
        CupreError: not a device name, a GPU this machine does not have, or a device kind
            that holds no data (``meta``).
    """
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise CupreError(f"device {name!r} is not a device; use {DEVICE_FORMS}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
            raise CupreError(f"device {name!r}: PyTorch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                             f"built {build}); use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CupreError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise CupreError(f"device {name!r}: no Apple GPU (MPS) on this machine; use --device cpu (or auto)")
    elif device.type != "cpu":
        raise CupreError(f"device {name!r}: cupre runs models on {DEVICE_FORMS}, not on {device.type}")
    return device


def device_kind(name: str) -> str:
    """The kind of device ``name`` stands for (``cpu``, ``cuda``, ``mps``): ``auto`` is
    ``cuda`` when available, else ``cpu``. Nothing is checked or set up."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA (this rank's GPU under torchrun) when available, else CPU; any other
    name checked by :func:`check_device`."""
    device = check_device(device_kind(name) if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def skip_gpu_compiler() -> bool:
    """Keep triton, torch's GPU kernel compiler, out of a process that has no GPU.

    Importing torchvision imports ``torch._dynamo``, which imports triton where it is
    installed (it is, beside every CUDA build of torch): 75 MiB of resident memory and
    part of a second at start, for a compiler that only makes GPU kernels. cupre never
    compiles, and without a GPU torch never calls it, so the results are the same. Call
    before anything imports torchvision; the ``cupre`` command does. Returns whether
    triton is kept out (False: a GPU is there, or triton is already loaded).
    """
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    xpu = getattr(torch, "xpu", None)
    if torch.cuda.is_available() or (xpu is not None and xpu.is_available()):
        return False
    sys.modules["triton"] = None  # ``import triton`` now raises ImportError, which torch reads as "not installed"
    return True


PRECISIONS = ("auto", "bf16", "fp32")
PRECISION_ENV = "CUPRE_PRECISION"  # overrides "auto" (the tests set fp32)


def cpu_has_bf16() -> bool:
    """The CPU computes in bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``).

    Without these instructions oneDNN emulates bf16, which is slower than fp32, so only
    Linux's CPU flags count as a yes.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16")) and torch.backends.mkldnn.is_available()


def cpu_name() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``, else ``platform``) and whether it
    computes bf16 natively: what a timing was measured on."""
    try:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or platform.machine()} ({'bf16' if cpu_has_bf16() else 'no bf16'})"


def resolve_precision(choice: str, device: torch.device) -> str:
    """``bf16`` or ``fp32`` for ``choice`` (``auto``, ``bf16``, ``fp32``) on ``device``.

    ``auto`` reads ``$CUPRE_PRECISION`` when set, else picks bf16 on a CUDA GPU that
    supports it and on a CPU with native bf16 (:func:`cpu_has_bf16`), fp32 elsewhere.
    """
    if choice == "auto":
        choice = os.environ.get(PRECISION_ENV, "auto")
    if choice not in PRECISIONS:
        raise CupreError(f"precision must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else nothing."""
    device_type = torch.device(device).type
    if precision == "bf16" and device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the operating system (glibc's ``malloc_trim``).

    Torch's CPU tensors come from the C allocator, which keeps freed memory for reuse:
    after a tile's forward pass the process keeps the pass's whole working set, and the
    next stage (merging, label image, overlay) stacks on top of it. Trimming between
    stages keeps the peak near what is alive (measured: ``cupre predict`` on a
    4,000 x 4,000 image, 1.85 -> 1.58 GiB, no slower). A no-op where glibc is absent.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 8 << 20


MADV_DONTNEED = 4  # Linux's madvise advice


def file_mappings(path: str | Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps ``path`` (Linux; ``[]`` elsewhere)."""
    target = str(Path(path).resolve())
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def forget_file_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> None:
    """Take the whole pages of ``tensor`` out of this process's resident set when they lie
    in one of ``mappings`` (:func:`file_mappings` of the file it views): they are the
    file's, so a later read maps them in again from it. Anywhere else, nothing happens."""
    import ctypes
    import mmap

    libc = _glibc()
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    lo, hi = -(-start // page) * page, (start + tensor.numel() * tensor.element_size()) // page * page
    if libc is None or hi <= lo or not any(a <= lo and hi <= b for a, b in mappings):
        return
    libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED)


def map_large_allocations() -> None:
    """Have glibc map every allocation of 8 MiB or more on its own, and unmap it when freed.

    By default glibc raises this threshold to the largest block freed so far (up to 32
    MiB), after which a tile's feature maps come from the heap and stay with the process
    once freed. A fixed threshold returns them at once, so the peak is what is alive
    (``cupre predict`` on a 4,000 x 4,000 image, with :func:`release_freed_memory`
    between tiles: 1.63 -> 1.39 GiB; 93 -> 106 s, the price of mapping fresh pages). For
    processes that predict; a no-op where glibc is absent.
    """
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


@functools.cache
def _glibc():
    """glibc through ctypes, loaded on first use (None elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None



def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


MAX_THREADS_PER_CORE = 4  # --threads above this many per core only oversubscribes (and can exhaust memory)


def busy_cores(interval: float = 0.2) -> int:
    """Cores other processes keep busy now: the machine's CPU time over ``interval``
    seconds while this process sleeps (``/proc/stat``), rounded; elsewhere the one-minute
    load average; 0 where the system says neither."""
    def times() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(interval)
        total1, idle1 = times()
        busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
        return int(round(busy * (os.cpu_count() or 1)))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):  # Windows
        return 0


def default_threads() -> int:
    """Threads for a process the user gave no ``--threads``: the cores left free by the
    load already on the machine (at least one).

    On a busy machine torch's default of every core makes its threads spin against the
    other processes: a fine-tuning step of the CPU recipe with one other single-threaded
    process running took 8.5 s on 2 threads and 1.36 s on 1 (2 cores).
    """
    cores = available_cores()
    return max(1, min(cores, cores - busy_cores()))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads``, or :func:`default_threads` when None.

    Returns the number set. Under torchrun or with other heavy processes, give each a share.
    """
    cores = available_cores()
    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise CupreError(f"--threads must be at least 1, got {threads}")
    if count > MAX_THREADS_PER_CORE * cores:
        raise CupreError(f"--threads {count} is more than {MAX_THREADS_PER_CORE} per CPU core of this machine "
                         f"({cores} cores)")
    torch.set_num_threads(count)
    return count
