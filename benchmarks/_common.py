"""Helpers shared by the benchmark scripts: the benchmark cohort, machine info, JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The benchmark cohort (DESIGN §5): 2-compartment oral PK + indirect response (type I) PD.
MODEL = "pk2_oral_idr"
PK_MODEL = "pk2_oral"
IIV_PARAMS = ("CL", "V1", "Q", "V2", "KA", "KIN", "KOUT", "EC50")
PK_PARAMS = ("CL", "V1", "Q", "V2", "KA", "F", "ALAG")
CV = 0.30  # coefficient of variation of every log-normal IIV term
SEED = 20240601
DOSE_MG = 320.0  # single oral dose into the depot at t = 0
T_END_H = 24.0
SAVE_STEP_H = 1.0 / 12.0  # 289 save points on [0, 24] h


def population(model, n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Every parameter of ``model`` for ``n`` patients: typical values with log-normal IIV.

    The draws form an ``[n, len(IIV_PARAMS)]`` row-major matrix, so the first ``k`` patients
    are the same whatever ``n`` is (subsets used for references and extrapolations are
    prefixes of the full cohort).
    """
    rng = np.random.default_rng(seed)
    omega = math.sqrt(math.log(1.0 + CV**2))
    eta = rng.standard_normal((n, len(IIV_PARAMS)))
    typical = model.defaults()
    pop = {k: np.full(n, float(v)) for k, v in typical.items()}
    for j, k in enumerate(IIV_PARAMS):
        if k in pop:
            pop[k] = typical[k] * np.exp(omega * eta[:, j])
    return pop


def subset(pop: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in pop.items()}


def dir_size(path: Path) -> tuple[int, int]:
    """Bytes and number of files under ``path`` (a store on disk)."""
    total, files = 0, 0
    for root, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(root, name))
            files += 1
    return total, files


def peak_rss_bytes() -> int:
    """High-water resident set size of this process (``ru_maxrss`` is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * (1 if sys.platform == "darwin" else 1024)


class OtherLoad:
    """Context manager: how many CPU cores *other* processes kept busy while the block ran.

    Reads system busy time from ``/proc/stat`` and subtracts this process's own CPU time, so a
    value near 0 means the timing was not disturbed (Linux only; ``None`` elsewhere).
    """

    value: float | None = None
    own_cpu_s: float | None = None  # this process's CPU time (user + system) in the block

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        steal = fields[7] if len(fields) > 7 else 0
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def __enter__(self):
        self._b0, self._o0, self._t0 = self._busy(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        b1, o1, wall = self._busy(), self._own(), time.perf_counter() - self._t0
        self.own_cpu_s = o1 - self._o0
        if self._b0 is not None and b1 is not None and wall > 0:
            self.value = max(0.0, ((b1 - self._b0) - (o1 - self._o0)) / wall)
        return False


def first_call(fn):
    """Run ``fn`` once and say where its time went (``cohort.timing``: wall, trace and compile
    seconds, persistent-cache hits): ``(result, profile)``. Benchmarks time warm runs; this is
    the first call's split, reported per model and engine beside them."""
    from cohort.timing import phases, summary

    with phases() as p:
        out = fn()
    return out, summary(p)


def machine_info() -> dict[str, Any]:
    import jax

    import cohort

    def version(mod: str) -> str | None:
        try:
            return __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional package
            return None

    dev = jax.devices()[0]
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_bytes": mem,
        "jax_version": jax.__version__,
        "jaxlib_version": version("jaxlib"),
        "jax_backend": jax.default_backend(),
        "jax_device": str(dev),
        "jax_device_kind": getattr(dev, "device_kind", None),
        "jax_device_count": jax.device_count(),
        "cohort_version": cohort.__version__,
        "diffrax_version": version("diffrax"),
        "numpy_version": np.__version__,
        "scipy_version": version("scipy"),
        "zarr_version": version("zarr"),
        "cohort_git": _git_state(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_state() -> str | None:
    """Commit of the cohort checkout, with ``+dirty`` if ``cohort/`` has uncommitted edits."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cohort"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            x = float(x)
            return x if math.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.bool_):
            return bool(x)
        return x

    path.write_text(json.dumps(clean(payload), indent=2) + "\n")


def short_error(exc: BaseException) -> str:
    """First line of an exception, prefixed with its type (for tables and JSON)."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
