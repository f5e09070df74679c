"""Twins computed in fixed blocks of patients, locally or as Dask tasks, with the same numbers.

Batches of other sizes or array shapes round differently (~1e-10, which a mode search's
tolerance or a sampler's trajectory can carry further), so a partition-independent result
needs every patient computed in the same block, by the same compiled program, on the same
inputs, wherever it runs: blocks are fixed by the cohort alone (:func:`blocks`), each is cut
from arrays bound for the whole cohort (:func:`take_rows`), and a Dask task takes a run of
whole blocks (:func:`run_blocks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np

from cohort.twin import posterior

# Patients per block: large enough that a block keeps the cores busy and its compiled program
# is shared by every block (10,000 PK twins: MAP + Laplace update 3.9 s warm in blocks, 4.2 s in
# one batch), small enough to spread a cohort over a cluster's workers.
BLOCK = 1024
TASKS_PER_WORKER = 4  # as cohort.distributed: balances uneven workers


def blocks(n: int, most: int | None = None) -> list[np.ndarray]:
    """Patient rows of each block: as few blocks as hold at most ``most`` patients each
    (default :data:`BLOCK`), of equal size, consecutive; the last padded to that size by
    repeating its last patient (those copies' results are dropped), so that every block has
    the same shape. Fixed by ``n`` alone: the same blocks whatever runs them (1,025 patients:
    two blocks of 513, one padded row, not two of 1,024)."""
    if n < 1:
        raise ValueError(f"blocks: no patients (n = {n})")
    size = math.ceil(n / math.ceil(n / (most or BLOCK)))
    return [np.minimum(np.arange(start, start + size), n - 1) for start in range(0, n, size)]


def take_rows(tree, rows: np.ndarray, n: int):
    """Every array of ``tree`` (all per patient: leading axis ``n``) at ``rows``, as NumPy."""

    def take(a):
        a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"a bound array of shape {a.shape} is not per patient ({n})")
        return a[rows]

    return jax.tree_util.tree_map(take, tree)


def run_blocks(
    compute: Callable[[list], list], parts: list, cluster=None, checkpoint=None
) -> list[tuple]:
    """``compute(parts)`` for every block's inputs in ``parts``: one block at a time here, or
    runs of consecutive blocks as tasks on a Dask ``cluster`` (a Client, Cluster or scheduler
    address); the ``(rows, laplace, samples)`` results in block order. With a
    :class:`~cohort.twin.checkpoint.Checkpoint`, blocks it holds are not computed again and
    every block is written to it as soon as it is finished."""
    results = dict(checkpoint.finished()) if checkpoint is not None else {}
    todo = [i for i in range(len(parts)) if i not in results]

    def keep(i: int, result: tuple) -> None:
        results[i] = result
        if checkpoint is not None:
            checkpoint.add(i, *result)

    if cluster is None:
        for i in todo:
            (result,) = compute([parts[i]])
            keep(i, result)
    elif todo:
        from dask.distributed import as_completed

        from cohort.distributed import connect, worker_count

        with connect(cluster) as client:
            n_tasks = min(len(todo), TASKS_PER_WORKER * worker_count(client))
            groups = [g for g in np.array_split(np.asarray(todo), n_tasks) if g.size]
            futures = {client.submit(compute, [parts[i] for i in g], pure=False): g for g in groups}
            try:
                # the client's own loop: as_completed looks for a default client otherwise,
                # and connect's clients are not this process's default
                for future in as_completed(futures, loop=client.loop):
                    for i, result in zip(futures[future], future.result()):
                        keep(int(i), result)
            except BaseException:
                client.cancel(list(futures))
                raise
    return [results[i] for i in range(len(parts))]


def solve_blocks(
    compute: Callable[[list], list],
    parts: list,
    n: int,
    *,
    cluster=None,
    checkpoint=None,
    key: tuple = (),
):
    """:func:`run_blocks` then :func:`merge_blocks`: ``(laplace, samples)`` of all ``n``
    patients. ``checkpoint``: a store path keeping finished blocks until the result is
    returned, or a :class:`~cohort.twin.checkpoint.KeptCheckpoint` kept until its caller
    removes it (:mod:`cohort.twin.checkpoint`); ``key``: every input of the computation,
    hashed so that blocks of another computation are never reused."""
    saved, kept = None, False
    if checkpoint is not None:
        from cohort.twin.checkpoint import Checkpoint, KeptCheckpoint, inputs_key

        kept = isinstance(checkpoint, KeptCheckpoint)
        saved = Checkpoint(checkpoint.path if kept else checkpoint, inputs_key(*key))
    result = merge_blocks(run_blocks(compute, parts, cluster, saved), n)
    if saved is not None and not kept:
        saved.remove()
    return result


def merge_blocks(results: list[tuple], n: int):
    """One :class:`~cohort.twin.posterior.Laplace` (and :class:`~cohort.twin.posterior.Samples`
    when sampled) for all ``n`` patients from the blocks' ``(rows, laplace, samples)``, each
    patient's first row kept (a padded block repeats its last patient)."""
    seen = np.zeros(n, bool)
    picks = []
    for rows, lap, samples in results:
        keep = ~seen[rows] & (np.arange(len(rows)) == np.searchsorted(rows, rows))
        seen[rows[keep]] = True
        picks.append((keep, lap, samples))
    if not seen.all():
        raise RuntimeError("twin blocks did not cover every patient")

    def merged(results: list[tuple]) -> dict[str, np.ndarray]:
        """The kept rows of the blocks' ``(keep, result)``, concatenated field by field."""
        arrays = [(keep, posterior.per_patient(x)) for keep, x in results]
        return {f: np.concatenate([a[f][keep] for keep, a in arrays]) for f in arrays[0][1]}

    lap = posterior.Laplace(**merged([(keep, lap) for keep, lap, _ in picks]))
    if picks[0][2] is None:
        return lap, None
    sampled = [(keep, samples) for keep, _, samples in picks]
    seconds = sum(samples.seconds for _, samples in sampled)
    return lap, posterior.Samples(**merged(sampled), seconds=seconds)
