"""Which devices the engines spread a batch over.

Each batch's patient axis is split over ``jax.local_devices()`` (``shard_map`` in
:mod:`cohort.engine.simulate`). On GPUs that is every card; on CPU, XLA exposes one device
by default and runs the structure-of-arrays time loops on about one core, so
:func:`use_cpu_cores` gives JAX one CPU device per core. It is opt-in (the CLI and the
benchmarks call it) because it changes JAX's process-wide configuration and must run before
JAX first touches a device.
"""

from __future__ import annotations

import os

import jax


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores(n: int | None = None) -> int:
    """Ask JAX for ``n`` CPU devices (default: one per available core); returns the local
    device count in effect. Has no effect once JAX has initialised its backends (it keeps
    the devices it has) or when ``XLA_FLAGS`` already forces a host device count."""
    n = available_cores() if n is None else int(n)
    if n < 1:
        raise ValueError(f"use_cpu_cores: n must be >= 1, got {n}")
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # a backend is already initialised: keep its devices
            pass
    return jax.local_device_count()


_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def host_devices_for_chains(chains: int) -> None:
    """Ask XLA for one CPU device per NUTS chain, so the chains run in parallel on the cores
    (``chain_method='parallel'``; numpyro would otherwise run them one after another or
    vectorized). Only at CLI/benchmark entry, before JAX creates its CPU backend, and only
    when the user has not chosen a device count in ``XLA_FLAGS`` themselves; a no-op on one
    core, where vectorized chains are faster."""
    flags = os.environ.get("XLA_FLAGS", "")
    if chains > 1 and available_cores() > 1 and _DEVICES_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_DEVICES_FLAG}={chains}".strip()
