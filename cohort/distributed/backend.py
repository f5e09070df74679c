"""The Dask backend: a store's pending chunks as tasks on a ``dask.distributed`` cluster.

Dask does the scheduling, data transfer, worker restarts and rescheduling; cohort only cuts the
work into tasks of whole chunks (each task writes its own zarr chunks, so no two tasks ever
touch the same file) and reports progress as tasks finish.
"""

from __future__ import annotations

import contextlib
import functools
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
        ready(cluster)
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
        # not the default scheduler of this process: dask work of the user (or of xarray
        # reading a store) after the run must not be sent to a closed client
        client = client_class(target, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise DistributedError(
            f"cluster: cannot reach the Dask scheduler at {target!r}: {exc}; start one with "
            "`dask scheduler` (and `dask worker ADDRESS` per node) or check the address"
        ) from None
    except ValueError as exc:  # "unknown address scheme 'http'", "missing port number"
        raise DistributedError(
            f"cluster: {target!r} is not a Dask scheduler address ({exc}); give e.g. "
            "tcp://host:8786"
        ) from None
    try:
        ready(client)
        yield client
    finally:
        client.close()


WORKER_WAIT = 60.0
"""Seconds a run waits for a first worker to join the scheduler before it says there is none
(it waited silently for ever)."""


@functools.cache
def environment() -> dict:
    """What a worker must share with the client for its chunks to equal a local run's: the
    versions of cohort, JAX and numpy, and a hash of cohort's own source (two builds both
    labelled 0.1.0 can differ)."""
    import jax

    from cohort._version import __version__, source_digest

    return {
        "cohort": __version__,
        "cohort source": source_digest()[:16],
        "jax": jax.__version__,
        "numpy": np.__version__,
    }


def _worker_environment() -> dict:
    """:func:`environment`, as a worker computes it (sent by reference: unpickling it imports
    cohort there)."""
    return environment()


def ready(client: Any) -> None:
    """Refuse a cluster that cannot run cohort's tasks, before any task is sent: no worker
    within :data:`WORKER_WAIT` seconds, or a worker that cannot import cohort or runs other
    versions of it, JAX or numpy (its task died unpacking, or wrote other numbers, while the
    client waited without a word)."""
    address = getattr(client, "scheduler", None)
    where = getattr(address, "address", None) or "the scheduler"
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except (TimeoutError, OSError):
        raise DistributedError(
            f"cluster: no Dask worker joined {where} within {WORKER_WAIT:g} s; start workers "
            "with `dask worker ADDRESS` (the same Python environment as here)"
        ) from None
    mine = environment()
    for worker, theirs in client.run(_worker_environment, on_error="return").items():
        if isinstance(theirs, BaseException):
            raise DistributedError(
                f"cluster: worker {worker} cannot run cohort ({type(theirs).__name__}: "
                f"{theirs}); install the same environment there (pip install -e "
                "'.[distributed]') and restart it"
            )
        differs = [k for k in mine if theirs.get(k) != mine[k]]
        if differs:
            k = differs[0]
            raise DistributedError(
                f"cluster: worker {worker} runs {k} {theirs.get(k)!r}, this process "
                f"{mine[k]!r}; results would differ from a local run: give the workers the "
                "same environment and restart them"
            )


def check_reachable(cluster: Any, out: Any = None, timeout: str = "30s") -> None:
    """Before a run creates its store ``out``: the store must be one the workers can reach
    (not ``memory://``, which lives in this process only), and a scheduler given by address
    must answer, with workers able to run cohort (:func:`ready`); nothing is left behind
    when it is not. Client and cluster objects were checked when they were connected."""
    if str(out or "").startswith("memory://"):
        raise DistributedError(
            f"cluster: the store {str(out)!r} is in this process's memory, where Dask workers "
            "cannot write; give a path or URL every worker can reach (a shared filesystem, "
            "s3://...)"
        )
    if isinstance(cluster, str):
        with connect(cluster, timeout=timeout):
            pass


def worker_count(client: Any) -> int:
    """Workers connected now (at least 1: tasks wait for workers that join later)."""
    return max(1, len(client.nthreads()))


def chunk_ranges(done: np.ndarray, n_tasks: int) -> list[tuple[int, int]]:
    """Contiguous ``[first, stop)`` ranges of chunks covering every chunk not ``done``: about
    ``n_tasks`` of them (more where a range would exceed :data:`MAX_CHUNKS_PER_TASK` chunks),
    whose pending chunks differ in number by at most one, the larger first. Equal tasks keep
    the workers busy to the end: groups of a fixed size (25 chunks as 4+4+4+4+4+4+1) left one
    of two workers with 16 chunks to the other's 9, measured at 1.26x one worker where the
    machine allowed 1.29x. Done chunks inside a range are skipped by the task itself."""
    pending = np.flatnonzero(~np.asarray(done, bool))
    if pending.size == 0:
        return []
    n_groups = max(math.ceil(pending.size / MAX_CHUNKS_PER_TASK), min(n_tasks, pending.size))
    groups = np.array_split(pending, n_groups)  # at least one: pending is not empty
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
            # the client's own loop: without it as_completed looks for this process's
            # default client, and clients made by connect are not (a Cluster object or an
            # address in a fresh process failed: "No clients found")
            for future in as_completed(futures, loop=client.loop):
                future.result()  # raises the task's error
                finished += futures[future]
                if progress:
                    progress(finished, n_patients)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the scheduler may be gone
                client.cancel(list(futures))
            if _lost_scheduler(exc):
                raise DistributedError(
                    f"cluster: lost the Dask scheduler mid-run ({type(exc).__name__}); the "
                    f"chunks finished so far are kept ({finished:,} of {n_patients:,} "
                    "patients): run the same command again with --resume (resume=True)"
                ) from None
            raise


def _lost_scheduler(exc: BaseException) -> bool:
    """Whether a run stopped because the scheduler connection went (not a task's error)."""
    from distributed.comm.core import CommClosedError

    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # older distributed
        FutureCancelledError = CommClosedError  # noqa: N806
    import asyncio
    import concurrent.futures

    return isinstance(
        exc,
        (CommClosedError, FutureCancelledError, asyncio.CancelledError,
         concurrent.futures.CancelledError),
    )  # fmt: skip
