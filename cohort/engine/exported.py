"""Traced batch programs kept on disk (``jax.export``), so a repeated command skips tracing.

JAX's persistent compilation cache (:func:`cohort.devices.enable_compile_cache`) keys its
entries on the lowered program, so every process still traces the Python solve before it can
find the compiled one: ~0.7 s of a repeated ``cohort simulate`` of 100 patients, more for the
closed-loop programs. JAX has no cache for traces; ``jax.export`` serializes a lowered
program (StableHLO in a flatbuffer, no pickle) that another process deserializes and calls
without tracing, and whose compiled form the persistent cache then holds as usual.

A program is stored under a key made of everything that determines it: the caller's
description of the solve (model name and fingerprint, engine settings, save grid, outputs,
dtype), the input shapes and dtypes, the device count and platform, the JAX float64 and
equinox error settings, and a digest of cohort's own source files, so an edited or upgraded
cohort never reuses a stale trace. Only programs whose code is all cohort's are stored (see
:func:`builtin_model_key`): a user's own model code is not in the digest. The folder sits
beside the compilation cache (one per JAX/jaxlib version); it is on exactly when that cache
is. A missing, unreadable or corrupted entry is traced again, never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import jax

from cohort._version import source_digest

SUFFIX = ".jaxexport"
MAX_ENTRIES = 256  # least recently used programs are removed beyond this many


def folder(kind: str = "programs") -> Path | None:
    """``<compilation cache>/<kind>`` when JAX's persistent compilation cache is on."""
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / kind if base else None


def write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a concurrent reader
    sees no entry or a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def evict(where: Path, suffix: str, keep: int) -> None:
    """Remove all but the ``keep`` most recently used ``*suffix`` entries of ``where``."""
    entries = sorted(where.glob("*" + suffix), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


def builtin_model_key(model: Any) -> str | None:
    """``"name:fingerprint"`` for a model registered by cohort itself (class and factory in
    the cohort package, so its code is in :func:`source_digest`), else None (not stored)."""
    from cohort.models.base import _REGISTRY, _instance

    name = getattr(model, "_registered_as", None)
    if name is None or name not in _REGISTRY or _instance(name) is not model:
        return None
    parts = [part for part in vars(model).values() if _is_model(part)]
    factory = getattr(_REGISTRY[name], "__module__", "")
    if not (factory.startswith("cohort.") and is_cohort_code(model, *parts)):
        return None
    return f"{name}:{model.fingerprint()}"


def is_cohort_code(*objects: Any) -> bool:
    """Whether every object (None aside) has its class defined in the cohort package (so its
    code is in :func:`source_digest` and a stored trace of it cannot go stale)."""
    return all(obj is None or type(obj).__module__.startswith("cohort.") for obj in objects)


def _is_model(obj: Any) -> bool:
    from cohort.models.base import Model
    from cohort.models.pd import PDBlock

    return isinstance(obj, Model | PDBlock)


def program_key(description: str, args: Any, n_devices: int) -> str | None:
    """The storage key of a program, or None when ``description`` is not reproducible (an
    object repr with a memory address)."""
    if " at 0x" in description:
        return None
    leaves, tree = jax.tree.flatten(args)
    shapes = [(tuple(getattr(v, "shape", ())), str(jax.numpy.result_type(v))) for v in leaves]
    text = repr(
        (
            description,
            str(tree),
            shapes,
            n_devices,
            jax.default_backend(),
            bool(jax.config.jax_enable_x64),
            os.environ.get("EQX_ON_ERROR", ""),
            jax.__version__,
            source_digest(),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def load(key: str) -> jax.export.Exported | None:
    """The stored program ``key``, or None (absent, unreadable, corrupted, another format)."""
    where = folder()
    if where is None:
        return None
    path = where / (key + SUFFIX)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as err:  # any damage: trace again (never fatal)
        warnings.warn(
            f"ignoring an unreadable cached program {path.name} ({type(err).__name__}); it "
            "is traced again",
            stacklevel=2,
        )
        return None
    try:
        os.utime(path)  # recently used: kept by the eviction below
    except OSError:
        pass
    return exported


_LOWERING = threading.Lock()


def lower(call: Any, stored: jax.export.Exported, *args: Any) -> Any:
    """``call.lower(*args)`` for ``call`` wrapping ``stored.call``, without the ``scipy.linalg``
    import that JAX's lowering of a stored CPU program otherwise performs to load LAPACK's
    kernels (0.2-0.3 s of a repeated ``cohort simulate``, whose programs use no LAPACK).

    A program whose serialized module names a LAPACK kernel gets them loaded first, the way
    JAX does; only lowering a program without one skips it. JAX offers no switch for this:
    the hook is its private ``_ensure_backends_initialized``, replaced for the lowering under a
    lock (a JAX without it is lowered the plain way)."""
    needs_lapack = b"lapack" in bytes(stored.mlir_module_serialized)
    try:
        from jax._src.export import _export
    except ImportError:
        return call.lower(*args)
    if needs_lapack or not hasattr(_export, "_ensure_backends_initialized"):
        return call.lower(*args)
    with _LOWERING, _skipped(_export, "_ensure_backends_initialized"):
        return call.lower(*args)


@contextlib.contextmanager
def _skipped(module: Any, name: str):
    original = getattr(module, name)
    setattr(module, name, lambda *_: None)
    try:
        yield
    finally:
        setattr(module, name, original)


def save(key: str, exported: jax.export.Exported) -> None:
    """Store ``exported`` under ``key`` (written whole, then renamed: concurrent processes see
    either no entry or a complete one); failures to write are ignored."""
    where = folder()
    if where is None:
        return
    try:
        write_whole(where / (key + SUFFIX), exported.serialize())
        evict(where, SUFFIX, MAX_ENTRIES)
    except (OSError, ValueError, ImportError):  # read-only cache, no flatbuffers: not stored
        pass
