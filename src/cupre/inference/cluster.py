"""``cupre predict`` on a Dask cluster: the same batches, spread over worker processes.

``--cluster ADDRESS`` connects to a running scheduler (``dask scheduler`` and ``dask
worker`` started by hand, dask-jobqueue on a batch system, ...); ``--workers N`` starts a
local cluster of N processes on this machine, each with its share of the cores as torch
threads. The model (already set to the run's score threshold, detection cap and
precision) is sent to every worker once; each task runs the function the single-process
run applies to its item, formed as that run forms it, so the outputs are the same files
with the same content:

* a batch of small images (:func:`cupre.inference.predict.predict_batch`): the worker
  writes the images' files into the output folder itself (it must be reachable from the
  workers, e.g. a shared filesystem) and hands back only the COCO results and the
  ``images.json`` entries, which this process records in the run's ledger as they
  arrive (``--resume`` works as usual);
* a batch of tiles of a large image (:func:`cupre.inference.slides.tile_task`): the
  worker reads its tiles from the file itself and hands back their objects (box-local
  masks); this process merges them and writes the image's files window by window.

:func:`open_tasks` gives the same interface for this process alone, so both runs are one
code path.

The local cluster's workers load this module first (Dask's ``preload``), which keeps
triton out of them where there is no GPU (:func:`cupre.devices.skip_gpu_compiler`, 75 MiB
per worker); workers started by hand get the same with ``dask worker ADDRESS --preload
cupre.inference.cluster``.

Needs ``dask`` and ``distributed`` (``pip install 'cupre[cluster]'``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import uuid
from typing import Callable, Iterable, Iterator

import torch

from cupre.devices import available_cores, pick_device, skip_gpu_compiler
from cupre.errors import CupreError


def _client(options):
    """A ``distributed.Client`` for ``options.cluster`` or a new local cluster."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CupreError("--cluster/--workers need dask and distributed: pip install 'cupre[cluster]'") from None
    if options.cluster is not None:
        try:
            return Client(options.cluster, timeout="20s"), None
        except OSError as exc:
            raise CupreError(f"--cluster {options.cluster}: cannot reach the Dask scheduler ({exc})") from None
    cluster = LocalCluster(n_workers=options.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, preload=[__name__])
    return Client(cluster), cluster


def dask_setup(worker) -> None:
    """Run by each worker that preloads this module, before any task unpickles torchvision."""
    skip_gpu_compiler()


_UNPACKED: dict[str, torch.nn.Module] = {}  # per worker process: the run's model, unpacked once


class PackedModel:
    """The run's model as sent to the workers: torch's own serialisation (Dask's tensor
    serialiser goes through numpy, which has no bf16), unpacked once per worker process.
    The bytes are made by this run, in memory; no file is unpickled."""

    def __init__(self, net: torch.nn.Module) -> None:
        buffer = io.BytesIO()
        torch.save(net, buffer)
        self.blob, self.token = buffer.getvalue(), uuid.uuid4().hex

    def unpack(self) -> torch.nn.Module:
        if self.token not in _UNPACKED:
            _UNPACKED.clear()
            _UNPACKED[self.token] = torch.load(io.BytesIO(self.blob), weights_only=False)
        return _UNPACKED[self.token]


def run_task(fn: Callable, packed: PackedModel, item, *, threads: int | None, device_name: str, **kwargs):
    """One task on a worker: ``fn(net, item, device=..., **kwargs)`` with this worker's
    torch threads and device."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = pick_device(device_name)
    return fn(packed.unpack().to(device), item, device=device, **kwargs)


class LocalTasks:
    """Tasks run here, one after another, when each result is asked for."""

    def __init__(self, net, device: torch.device) -> None:
        self.net, self.device = net, device

    def map(self, fn: Callable, items: Iterable, *, ordered: bool = True, **kwargs) -> Iterator:
        return (fn(self.net, item, device=self.device, **kwargs) for item in items)


class ClusterTasks:
    """Tasks submitted to a Dask cluster at once; results yielded in order, or as they
    finish (``ordered=False``)."""

    def __init__(self, client, net, options) -> None:
        self.client, self.options = client, options
        self.threads = max(1, available_cores() // options.workers) if options.workers else None
        on_cpu = net if next(net.parameters()).device.type == "cpu" else copy.deepcopy(net).cpu()
        self.net = client.scatter(PackedModel(on_cpu), broadcast=True)

    def map(self, fn: Callable, items: Iterable, *, ordered: bool = True, **kwargs) -> Iterator:
        from distributed import as_completed

        futures = [self.client.submit(run_task, fn, self.net, item, threads=self.threads,
                                      device_name=self.options.device, pure=False, **kwargs) for item in items]
        return (f.result() for f in (futures if ordered else as_completed(futures)))


@contextlib.contextmanager
def open_tasks(net, options, device: torch.device):
    """:class:`ClusterTasks` when ``options`` names a cluster (``cluster``) or a local one
    (``workers``), else :class:`LocalTasks`.

    Raises:
        CupreError: dask missing, the scheduler unreachable, or the model not a module.
    """
    if options.cluster is None and options.workers is None:
        yield LocalTasks(net, device)
        return
    if not isinstance(net, torch.nn.Module):
        raise CupreError("--cluster/--workers need a cupre model (a model file or run folder)")
    client, cluster = _client(options)
    try:
        yield ClusterTasks(client, net, options)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
