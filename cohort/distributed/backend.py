"""The Dask backend: a store's pending chunks as tasks on a ``dask.distributed`` cluster.

Dask does the scheduling, data transfer, worker restarts and rescheduling; cohort only cuts the
work into tasks of whole chunks (each task writes its own zarr chunks, so no two tasks ever
touch the same file) and reports progress as tasks finish.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cohort.errors import CohortError

TASKS_PER_WORKER = 4  # enough tasks to balance uneven workers and lose little to a dead one
MAX_CHUNKS_PER_TASK = 16  # ... and small enough that progress moves


class DistributedError(CohortError, ValueError):
    """The cluster cannot be reached or is not a Dask scheduler."""


def _client_class():
    try:
        from dask.distributed import Client
    except ImportError:  # an optional dependency
        raise DistributedError(
            'cluster: distributed runs need Dask; install it with pip install "cohort[distributed]"'
        ) from None
    return Client


@contextlib.contextmanager
def connect(cluster: Any, timeout: str = "30s") -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``cluster``: a Client (used as is), a Cluster object
    (e.g. ``LocalCluster``) or a scheduler address such as ``tcp://10.0.0.5:8786``. A client
    made here is closed afterwards."""
    client_class = _client_class()
    if isinstance(cluster, client_class):
        yield cluster
        return
    if isinstance(cluster, str):
        if not cluster.strip():
            raise DistributedError("cluster: empty scheduler address; give e.g. tcp://host:8786")
        target: Any = cluster.strip()
    elif hasattr(cluster, "scheduler_address"):
        target = cluster
    else:
        raise DistributedError(
            f"cluster: expected a dask Client, a Cluster or a scheduler address, got "
            f"{type(cluster).__name__}"
        )
    try:
        client = client_class(target, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise DistributedError(
            f"cluster: cannot reach the Dask scheduler at {target!r}: {exc}; start one with "
            "`dask scheduler` (and `dask worker ADDRESS` per node) or check the address"
        ) from None
    try:
        yield client
    finally:
        client.close()


def check_reachable(cluster: Any, timeout: str = "30s") -> None:
    """Connect once to a scheduler given by address, before a run creates its store: an
    unreachable address is reported without leaving an empty, incomplete store behind.
    Client and cluster objects are already connected (nothing to check)."""
    if isinstance(cluster, str):
        with connect(cluster, timeout=timeout):
            pass


def worker_count(client: Any) -> int:
    """Workers connected now (at least 1: tasks wait for workers that join later)."""
    return max(1, len(client.nthreads()))


def chunk_ranges(done: np.ndarray, n_tasks: int) -> list[tuple[int, int]]:
    """Contiguous ``[first, stop)`` ranges of chunks covering every chunk not ``done``, about
    ``n_tasks`` of them (at most :data:`MAX_CHUNKS_PER_TASK` chunks each). Done chunks inside a
    range are skipped by the task itself."""
    pending = np.flatnonzero(~np.asarray(done, bool))
    if pending.size == 0:
        return []
    per_task = max(1, min(MAX_CHUNKS_PER_TASK, math.ceil(pending.size / max(1, n_tasks))))
    groups = [pending[i : i + per_task] for i in range(0, pending.size, per_task)]
    return [(int(g[0]), int(g[-1]) + 1) for g in groups]


def run_chunks(
    make_task: Callable[[int, int], Callable[[], None]],
    done: np.ndarray,
    cluster: Any,
    *,
    n_patients: int,
    chunk_size: int,
    progress: Callable[[int, int], None] | None = None,
    name: str = "cohort",
) -> None:
    """Run the chunks not yet ``done`` (of ``chunk_size`` patients) on ``cluster``.

    ``make_task(first, stop)`` returns a picklable callable that solves and writes chunks
    ``first .. stop - 1``, skipping any already flagged done (a rerun of a task lost with its
    worker finishes what that worker left); progress counts the patients of the chunks each
    finished task covered that were pending. Raises the first task error (after cancelling the
    rest); a worker lost mid-task has its tasks rerun by Dask.
    """
    done = np.asarray(done, bool)
    sizes = np.minimum(chunk_size, n_patients - np.arange(len(done)) * chunk_size)
    finished = int(sizes[done].sum())
    with connect(cluster) as client:
        ranges = chunk_ranges(done, TASKS_PER_WORKER * worker_count(client))
        run_id = uuid.uuid4().hex[:8]
        futures = {
            client.submit(
                make_task(first, stop), key=f"{name}-{run_id}-chunks-{first}-{stop}", pure=False
            ): int(sizes[first:stop][~done[first:stop]].sum())
            for first, stop in ranges
        }
        if progress:
            progress(finished, n_patients)
        from dask.distributed import as_completed

        try:
            for future in as_completed(futures):
                future.result()  # raises the task's error
                finished += futures[future]
                if progress:
                    progress(finished, n_patients)
        except BaseException:
            client.cancel(list(futures))
            raise
