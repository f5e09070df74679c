"""Runs beyond one process: Dask tasks that each solve a range of a store's chunks.

A cohort run that streams into a store is cut into tasks of whole chunks; every task solves
its patients on its worker's devices and writes its own zarr regions, flagging each chunk
done only after it is written. The client creates the store layout once and only schedules,
so a task that dies with its worker is simply run again (Dask reschedules it; a rerun with
``resume`` does the same) and the store ends bit-identical to a local run.
"""

from cohort.distributed.backend import (
    DistributedError,
    check_reachable,
    connect,
    run_chunks,
    worker_count,
)

__all__ = ["DistributedError", "check_reachable", "connect", "run_chunks", "worker_count"]
