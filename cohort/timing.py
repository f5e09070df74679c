"""Where a command's time went: startup and imports, tracing, compilation (or the persistent
cache), and the run itself, from JAX's own monitoring events (``jax.monitoring``).

One listener per process feeds whichever command is running (JAX's hooks are process-wide and
cannot be removed, so they are installed once and read through a small stack of collectors per
thread: work a command moves to a background thread is recorded apart, not summed into the
time the user waited for).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

_TRACE = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)
_COMPILE = "/jax/core/compile/backend_compile_duration"
_HITS = "/jax/compilation_cache/cache_hits"
_MISSES = "/jax/compilation_cache/cache_misses"
_local = threading.local()  # .active: this thread's stack of collectors
_installed: list[bool] = []


def _stack() -> list[dict[str, float]]:
    if not hasattr(_local, "active"):
        _local.active = []
    return _local.active


def _install() -> None:
    if _installed:
        return
    import jax

    def on_duration(event: str, seconds: float, **_) -> None:
        active = _stack()
        if active:
            active[-1][event] = active[-1].get(event, 0.0) + seconds

    def on_event(event: str, **_) -> None:
        active = _stack()
        if active:
            active[-1][event] = active[-1].get(event, 0.0) + 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    _installed.append(True)


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), else None."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = float(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def startup_seconds() -> float:
    """Seconds from this process's start to now: :func:`process_age`, unless the kernel's
    clock and this process's start time disagree (seen in sandboxes with their own time
    namespace: a minute reported for a 2 s start); then the time since cohort was imported,
    which misses only the interpreter's own start (~0.05 s)."""
    from cohort._started import IMPORTED_AT

    since_import = time.perf_counter() - IMPORTED_AT
    age = process_age()
    if age is None or not since_import <= age <= since_import + 2.0:
        return since_import
    return age


@contextlib.contextmanager
def phases() -> Iterator[dict[str, float]]:
    """Collect the JAX events of the enclosed block on this thread; ``wall`` and ``startup``
    are added."""
    startup = startup_seconds()
    t0 = time.perf_counter()
    _install()
    out: dict[str, float] = {}
    _stack().append(out)
    try:
        yield out
    finally:
        _stack().remove(out)
        out["wall"] = time.perf_counter() - t0
        out["startup"] = startup


def apart(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` (to run on another thread) with its JAX events recorded apart from the calling
    thread's: summed into the ``"alongside"`` record of the caller's current :func:`phases`
    block (the user did not wait for them; e.g. a fit's objective compiled while its initial
    estimates are scanned), which :func:`describe` shows as such. Outside a block, ``fn``."""
    return _on_thread(fn, lambda parent: parent.setdefault("alongside", {}), ("startup",))


def waited(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` (to run on another thread) with its JAX events summed into the calling thread's
    current :func:`phases` record as its own: work the caller waits for, moved to another
    thread only so that its own Python work overlaps it (a program compiled while the store
    is written). Outside a block, ``fn``."""
    return _on_thread(fn, lambda parent: parent, ("startup", "wall"))


def _on_thread(fn, target, skipped: tuple[str, ...]) -> Callable[[], None]:
    """``fn`` recorded in a :func:`phases` block of its own thread, whose numbers (but
    ``skipped``) are then summed into ``target(parent)``, the calling thread's current record."""
    active = _stack()
    parent = active[-1] if active else None
    if parent is None:
        return fn

    def run() -> None:
        with phases() as mine:
            fn()
        into = target(parent)
        for key, value in mine.items():
            if key not in skipped and isinstance(value, float | int):
                into[key] = into.get(key, 0.0) + value

    return run


def summary(p: dict[str, float]) -> dict[str, float]:
    """``{"wall_s", "trace_s", "compile_s", "cache_hits", "cache_misses"}`` of a
    :func:`phases` record (what benchmarks store beside their timings)."""
    return {
        "wall_s": p.get("wall", 0.0),
        "trace_s": sum(p.get(k, 0.0) for k in _TRACE),
        "compile_s": p.get(_COMPILE, 0.0),
        "cache_hits": int(p.get(_HITS, 0)),
        "cache_misses": int(p.get(_MISSES, 0)),
    }


def _jax_seconds(p: dict[str, float]) -> float:
    """Tracing and compiling seconds recorded so far in a :func:`phases` record."""
    return sum(p.get(k, 0.0) for k in (*_TRACE, _COMPILE))


@contextlib.contextmanager
def step(p: dict[str, float], name: str) -> Iterator[None]:
    """Time a preparatory step (e.g. ``"sampling"`` of patients) inside a :func:`phases`
    block: ``p[name]`` gains the step's seconds besides its own tracing and compiling (those
    stay in the trace and compile totals), so :func:`describe` can show it apart."""
    t0, jax_before = time.perf_counter(), _jax_seconds(p)
    try:
        yield
    finally:
        spent = time.perf_counter() - t0 - (_jax_seconds(p) - jax_before)
        p[name] = p.get(name, 0.0) + max(spent, 0.0)


def describe(p: dict[str, float], alongside: dict[str, float] | None = None) -> str:
    """``time: startup 0.3 s, trace 0.9 s, compile 2.1 s (3 programs, 2 cached), run 1.2 s``;
    ``alongside``: the :func:`phases` record of a background thread (e.g. a program compiled
    while patients were sampled), shown apart: the user did not wait for it."""
    trace = sum(p.get(k, 0.0) for k in _TRACE)
    compile_s = p.get(_COMPILE, 0.0)
    hits, misses = int(p.get(_HITS, 0)), int(p.get(_MISSES, 0))
    rest = max(p.get("wall", 0.0) - _jax_seconds(p), 0.0)
    parts = []
    if "startup" in p:
        parts.append(f"startup {p['startup']:.1f} s")
    parts.append(f"trace {trace:.1f} s")
    if hits + misses:
        parts.append(f"compile {compile_s:.1f} s ({hits} of {hits + misses} from the cache)")
    else:
        parts.append(f"compile {compile_s:.1f} s")
    if p.get("sampling", 0.0) >= 0.05:  # a table lookup (reference patients) is not shown
        parts.append(f"patient sampling {p['sampling']:.1f} s")
        rest = max(rest - p["sampling"], 0.0)
    parts.append(f"imports, solve and write {rest:.1f} s")
    if alongside and _jax_seconds(alongside) >= 0.05:
        parts.append(f"traced and compiled alongside {_jax_seconds(alongside):.1f} s")
    return "time: " + ", ".join(parts)
