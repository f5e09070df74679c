"""How a cohort is solved: engines as objects (closed form, adaptive diffrax reference, batched
RK4 throughput), the one chunk loop that runs them (``batching``), and the ``simulate`` module
(its function is ``cohort.simulate``; the module is no longer hidden behind it).

Names are imported on first use, so a run with the closed form or RK4 never imports diffrax.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Engine": "cohort.engine.base",
    "register_engine": "cohort.engine.base",
    "ClosedForm": "cohort.engine.closed_form",
    "use_cpu_cores": "cohort.devices",
    "Adaptive": "cohort.engine.diffrax_path",
    "DiffraxOptions": "cohort.engine.diffrax_path",
    "RK4": "cohort.engine.fast_path",
    "FastOptions": "cohort.engine.fast_path",
    "InputError": "cohort.engine.inputs",
    "grid": "cohort.engine.inputs",
    "Status": "cohort.engine.status",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cohort.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
