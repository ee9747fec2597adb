"""Regions of a slide on a dask.distributed cluster: the engine runs unchanged on the workers.

``"local:N"`` starts a LocalCluster of N single-threaded worker processes on this machine; any other string
is a scheduler address (``tcp://host:8786``) of a cluster started elsewhere — by hand (``dask scheduler`` /
``dask worker``), by dask-jobqueue on SLURM/PBS, or by dask-kubernetes; none of those is a dependency here.
Each worker loads the model once and opens the slide once (by path, or the array scattered to it);
results come back in region order, so the writer's ids equal those of a single-process run.
"""
from __future__ import annotations

import os
import secrets
from collections import deque
from typing import Any, Iterator

_WORKER_CACHE: dict[str, Any] = {}


def _cached(key: str, make):
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = make()
    return _WORKER_CACHE[key]


def _region_task(model_ref, slide_ref, mpp, level, region, scale, options):
    import torch

    from ..infer.engine import resolve_model
    from .segment import segment_region
    from .source import open_slide

    torch.set_num_threads(1)  # one thread per worker process: the cluster's parallelism is its workers
    model = (_cached(f"model:{model_ref}", lambda: resolve_model(model_ref)) if isinstance(model_ref, str)
             else model_ref)
    slide = (_cached(f"slide:{slide_ref}:{mpp}", lambda: open_slide(slide_ref, mpp=mpp))
             if isinstance(slide_ref, str) else open_slide(slide_ref, mpp=mpp))
    return segment_region(model, slide, level, region, scale, options)


def open_client(scheduler: str):
    """(client, cluster or None) for ``"local:N"`` or a scheduler address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("--scheduler needs dask.distributed: pip install 'napari-cellzoo[distributed]'") from None
    if scheduler.startswith("local:"):
        try:
            workers = int(scheduler.split(":", 1)[1])
        except ValueError:
            workers = 0
        if workers < 1:
            raise ValueError(f"--scheduler {scheduler!r}: use local:N with N >= 1 worker processes")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    return Client(scheduler, timeout="30s"), None


def distributed_results(scheduler: str, model, slide, level: int, regions, scale: float, options: dict,
                        cancel=None) -> Iterator:
    """Region results from the cluster, in region order, with a bounded number in flight."""
    from ..types import check_cancel

    client, cluster = open_client(scheduler)
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        model_ref = os.fspath(model) if isinstance(model, (str, os.PathLike)) else client.scatter(model, broadcast=True)
        if slide.path is not None:  # a file or store every worker can open (shared storage on a real cluster)
            slide_ref = slide.path
        else:
            arrays = [a if not hasattr(a, "compute") else a.compute() for a in slide._arrays]
            slide_ref = client.scatter(arrays if len(arrays) > 1 else arrays[0], broadcast=True)
        pending: deque = deque()
        queue = iter(regions)
        run_id = secrets.token_hex(4)  # task keys unique per run, also on a long-lived shared scheduler

        def submit_next() -> bool:
            region = next(queue, None)
            if region is None:
                return False
            pending.append(client.submit(_region_task, model_ref, slide_ref, slide.mpp, level, region, scale,
                                         options, pure=False, key=f"cellzoo-region-{run_id}-{region.index}"))
            return True

        for _ in range(2 * workers):
            if not submit_next():
                break
        while pending:
            check_cancel(cancel)
            future = pending.popleft()
            result = future.result()
            submit_next()
            yield result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
