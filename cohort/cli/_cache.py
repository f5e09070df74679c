"""Tables a repeated command would recompute exactly (e.g. ``cohort glucose``'s patients
screened for plausible outcomes: ~14,000 simulated standard days for 10,000 patients), kept
beside the compilation cache and on exactly when it is.

An entry is keyed on the call's arguments, cohort's own source (:func:`source_digest`) and
the numpy/scipy/JAX versions, so edited code or other libraries never reuse a stale table.
Entries are ``.npz`` files of plain columns (numbers and text, never pickled objects) plus
JSON attributes, written whole then renamed; an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from importlib.metadata import version

import numpy as np

SUFFIX = ".npz"
MAX_ENTRIES = 32  # least recently used tables are removed beyond this many


def cached_table(name: str, key: tuple, compute: Callable[[], object]):
    """``compute()`` (a pandas DataFrame with number/text columns and JSON-able ``attrs``),
    or the stored result of an identical earlier call."""
    import pandas as pd

    from cohort._version import source_digest
    from cohort.engine.exported import evict, folder, write_whole

    where = folder("tables")
    if where is None:
        return compute()
    libs = tuple(version(p) for p in ("numpy", "scipy", "jax", "pandas"))
    digest = hashlib.sha256(repr((name, key, libs, source_digest())).encode()).hexdigest()[:40]
    path = where / f"{name}-{digest}{SUFFIX}"
    try:
        with np.load(path, allow_pickle=False) as data:
            columns = json.loads(str(data["__columns__"]))
            frame = pd.DataFrame({c: data[f"c{i}"] for i, c in enumerate(columns)})
            frame.attrs.update(json.loads(str(data["__attrs__"])))
        os.utime(path)
        return frame
    except (OSError, KeyError, ValueError):  # absent or damaged: compute it again
        pass
    frame = compute()
    try:
        arrays = {f"c{i}": np.asarray(frame[c].to_numpy()) for i, c in enumerate(frame.columns)}
        arrays = {k: v.astype(str) if v.dtype == object else v for k, v in arrays.items()}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            __columns__=np.asarray(json.dumps([str(c) for c in frame.columns])),
            __attrs__=np.asarray(json.dumps(frame.attrs, default=float)),
            **arrays,
        )
        write_whole(path, buffer.getvalue())
        evict(where, SUFFIX, MAX_ENTRIES)
    except (OSError, TypeError, ValueError):  # not storable here: the result stands anyway
        pass
    return frame
