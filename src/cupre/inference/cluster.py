"""``cupre predict`` on a Dask cluster: the same batches, spread over worker processes.

``--cluster ADDRESS`` connects to a running scheduler (``dask scheduler`` and ``dask
worker`` started by hand, dask-jobqueue on a batch system, ...); ``--workers N`` starts a
local cluster of N processes on this machine, each with its share of the cores as torch
threads. The model (already set to the run's score threshold, detection cap and
precision) is sent to every worker once; each task runs the function the single-process
run applies to a batch (:func:`cupre.inference.predict.predict_batch`) on one batch formed
as that run forms it, so the outputs are the same files with the same content. Workers
write their images' files into the output folder themselves (it must be reachable from
them, e.g. a shared filesystem), and hand back only the COCO results and the
``images.json`` entry, which this process records in the run's ledger as they arrive
(``--resume`` works as usual).

Needs ``dask`` and ``distributed`` (``pip install 'cupre[cluster]'``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Iterator

import torch

from cupre.devices import available_cores, pick_device
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
                           dashboard_address=None)
    return Client(cluster), cluster


def predict_task(run_batch: Callable, net, jobs, *, out: Path, categories: list[dict], options,
                 threads: int | None):
    """One batch on a worker: ``run_batch`` with this worker's torch threads and device."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = pick_device(options.device)
    return run_batch(net.to(device), jobs, out=out, categories=categories, options=options, device=device)


def predict_on_cluster(run_batch: Callable, batches: list, *, model, out: Path, categories: list[dict],
                       options) -> Iterator[list[tuple[int, list[dict], dict]]]:
    """Run ``run_batch(model, batch, out=, categories=, options=, device=)`` for every batch
    on the cluster; yield each batch's records as it finishes.

    Raises:
        CupreError: dask missing, the scheduler unreachable, or the model not a module.
    """
    if not isinstance(model, torch.nn.Module):
        raise CupreError("--cluster/--workers need a cupre model (a model file or run folder)")
    client, cluster = _client(options)
    threads = max(1, available_cores() // options.workers) if options.workers else None
    try:
        from distributed import as_completed

        on_cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
        shared = client.scatter(on_cpu, broadcast=True)
        futures = [client.submit(predict_task, run_batch, shared, batch, out=out, categories=categories,
                                 options=options, threads=threads, pure=False) for batch in batches]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
