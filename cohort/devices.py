"""Process-wide JAX switches, as explicit calls with no import side effects: CPU devices per
core, and the persistent compilation cache.

Each batch's patient axis is split over ``jax.local_devices()``. On GPUs that is every card; on
CPU, XLA exposes one device by default and runs the structure-of-arrays time loops on about one
core, so :func:`use_cpu_cores` gives JAX one CPU device per core. Compilation is most of what a
CLI user waits for (a closed-loop glucose cohort: ~20 s compiling, ~1.5 s solving), so
:func:`enable_compile_cache` keeps compiled programs on disk between processes. Both are opt-in
for the library (they change JAX's process-wide configuration) and on in the CLI. Nothing here
imports JAX until a function that needs it runs, so the CLI can set them before JAX starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_DEVICES_FLAG = "--xla_force_host_platform_device_count"
CACHE_ENV = "COHORT_CACHE_DIR"  # where the compile cache lives (default: the user cache dir)
NO_CACHE_ENV = "COHORT_NO_COMPILE_CACHE"  # set to 1 to keep the CLI from caching
CACHE_MAX_BYTES = 2 * 2**30  # least recently used entries are evicted beyond this
CACHE_MIN_COMPILE_SECONDS = 0.2  # programs that compile faster are not worth a disk read


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def request_cpu_devices(n: int | None = None) -> None:
    """Before JAX starts: ask for ``n`` CPU devices (default one per core) through JAX's
    environment, without importing it (the CLI's startup stays fast). No effect when
    ``XLA_FLAGS`` or ``JAX_NUM_CPU_DEVICES`` already choose a count."""
    n = available_cores() if n is None else int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(n))


def use_cpu_cores(n: int | None = None) -> int:
    """Ask JAX for ``n`` CPU devices (default: one per available core); returns the local
    device count in effect. Has no effect once JAX has initialised its backends (it keeps
    the devices it has) or when ``XLA_FLAGS`` already forces a host device count."""
    import jax

    n = available_cores() if n is None else int(n)
    if n < 1:
        raise ValueError(f"use_cpu_cores: n must be >= 1, got {n}")
    if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # a backend is already initialised: keep its devices
            pass
    return jax.local_device_count()


def host_devices_for_chains(chains: int) -> None:
    """Ask XLA for one CPU device per NUTS chain, so the chains run in parallel on the cores
    (``chain_method='parallel'``; numpyro would otherwise run them one after another or
    vectorized). Only at CLI/benchmark entry, before JAX creates its CPU backend, and only
    when the user has not chosen a device count in ``XLA_FLAGS`` themselves; a no-op on one
    core, where vectorized chains are faster."""
    flags = os.environ.get("XLA_FLAGS", "")
    if chains > 1 and available_cores() > 1 and _DEVICES_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_DEVICES_FLAG}={chains}".strip()


def default_cache_dir() -> Path:
    """``$COHORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cohort`` (``~/.cache/cohort``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cohort"


def cache_dir_for_versions(root: Path) -> Path:
    """One subfolder per JAX/jaxlib version pair: entries are never shared across versions
    (JAX's keys include them too; the folder makes old entries easy to drop). Versions come
    from the installed metadata, so JAX is not imported."""
    from importlib.metadata import version

    return root / f"jax-{version('jax')}-jaxlib-{version('jaxlib')}"


def enable_compile_cache(
    path: str | os.PathLike | None = None, max_bytes: int = CACHE_MAX_BYTES
) -> Path:
    """Keep JAX's compiled programs on disk (JAX's persistent compilation cache), so a repeated
    run with the same model, engine, shapes and dtype does not compile again. Returns the cache
    folder (``path``, default :func:`default_cache_dir`, plus a per-version subfolder).

    Before JAX is imported this sets JAX's environment (nothing is imported); after, its
    config. Safe under concurrent processes (JAX writes whole entries and evicts the least
    recently used beyond ``max_bytes`` under a file lock); a corrupted or unreadable entry is
    recompiled with a warning, not fatal. Cached and fresh programs give bit-identical results.
    """
    folder = cache_dir_for_versions(Path(path) if path is not None else default_cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "jax_compilation_cache_dir": str(folder),
        "jax_persistent_cache_min_compile_time_secs": CACHE_MIN_COMPILE_SECONDS,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        "jax_compilation_cache_max_size": int(max_bytes),
    }
    if "jax" in sys.modules:
        for key, value in settings.items():
            sys.modules["jax"].config.update(key, value)
    else:
        for key, value in settings.items():
            os.environ[key.upper()] = str(value)
    return folder
