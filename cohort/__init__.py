"""cohort: vectorized virtual-patient cohorts with JAX.

Float64 is enabled on import: fits and reference solves need it; float32 stays available
per call (``simulate(..., dtype="float32")``) for throughput.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from cohort import dosing, models, population  # noqa: E402
from cohort._version import __version__ as __version__  # noqa: E402
from cohort.dosing import DosingError, Regimen  # noqa: E402
from cohort.engine import (  # noqa: E402
    RK4,
    Adaptive,
    ClosedForm,
    DiffraxOptions,
    Engine,
    FastOptions,
    InputError,
    Status,
    grid,
    simulate,
    use_cpu_cores,
)
from cohort.errors import CohortError, CohortWarning, OutputError  # noqa: E402
from cohort.store import open_result  # noqa: E402

__all__ = [
    "RK4",
    "Adaptive",
    "ClosedForm",
    "Engine",
    "CohortError",
    "CohortWarning",
    "OutputError",
    "DiffraxOptions",
    "DosingError",
    "FastOptions",
    "InputError",
    "Regimen",
    "Status",
    "dosing",
    "grid",
    "models",
    "open_result",
    "population",
    "simulate",
    "use_cpu_cores",
]

# Patient data and inference (issue 5). ``cohort.data`` is light and imported eagerly;
# ``cohort.inference`` / ``cohort.fit`` load numpyro/arviz on first use (+0.6 s at import).
from cohort import data  # noqa: E402
from cohort.data import DataError, read_nonmem  # noqa: E402

__all__ += ["DataError", "data", "fit", "inference", "read_nonmem"]


def __getattr__(name: str):
    if name in ("inference", "fit"):
        import importlib

        module = importlib.import_module("cohort.inference")
        return module if name == "inference" else module.fit
    raise AttributeError(f"module 'cohort' has no attribute {name!r}")
