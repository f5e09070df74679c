"""cohort: vectorized virtual-patient cohorts with JAX.

Float64 is enabled for JAX (``JAX_ENABLE_X64``; or through its config when JAX was imported
first): fits and reference solves need it; float32 stays available per call
(``simulate(..., dtype="float32")``) for throughput.

Everything is imported on first use (PEP 562), so ``import cohort`` and ``cohort --help`` do
not pay for JAX, diffrax, numpyro, xarray or zarr until a name that needs them is used.
"""

from __future__ import annotations

import importlib
import os
import sys

from cohort import _started as _started  # noqa: F401  (first: it records the import time)
from cohort._version import __version__ as __version__
from cohort.errors import CohortError, CohortWarning, OutputError, PatientsFailedWarning

os.environ["JAX_ENABLE_X64"] = "1"  # read by JAX when it is first imported
if "jax" in sys.modules:  # imported before cohort: set it through the config
    sys.modules["jax"].config.update("jax_enable_x64", True)

# public name -> (module, attribute or None for the module itself)
_LAZY = {
    "dosing": ("cohort.dosing", None),
    "models": ("cohort.models", None),
    "population": ("cohort.population", None),
    "data": ("cohort.data", None),
    "inference": ("cohort.inference", None),
    "glucose": ("cohort.glucose", None),
    "trial": ("cohort.trial", None),
    "engine": ("cohort.engine", None),
    "store": ("cohort.store", None),
    "fit": ("cohort.inference", "fit"),
    "DosingError": ("cohort.dosing", "DosingError"),
    "Regimen": ("cohort.dosing", "Regimen"),
    "RK4": ("cohort.engine.fast_path", "RK4"),
    "FastOptions": ("cohort.engine.fast_path", "FastOptions"),
    "Adaptive": ("cohort.engine.diffrax_path", "Adaptive"),
    "DiffraxOptions": ("cohort.engine.diffrax_path", "DiffraxOptions"),
    "ClosedForm": ("cohort.engine.closed_form", "ClosedForm"),
    "Engine": ("cohort.engine.base", "Engine"),
    "InputError": ("cohort.engine.inputs", "InputError"),
    "grid": ("cohort.engine.inputs", "grid"),
    "simulate": ("cohort.engine.simulate", "simulate"),
    "Status": ("cohort.engine.status", "Status"),
    "use_cpu_cores": ("cohort.devices", "use_cpu_cores"),
    "open_result": ("cohort.store.zarr_store", "open_result"),
    "DataError": ("cohort.data.reader", "DataError"),
    "read_nonmem": ("cohort.data", "read_nonmem"),
}

__all__ = [
    "CohortError",
    "CohortWarning",
    "OutputError",
    "PatientsFailedWarning",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cohort' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
