"""cohort: vectorized virtual-patient cohorts with JAX.

Float64 is enabled on import: fits and reference solves need it; float32 stays available
per call (``simulate(..., dtype="float32")``) for throughput.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"


class CohortWarning(UserWarning):
    """Warnings raised by cohort itself (turned into errors in the test suite)."""


from cohort import dosing, models, population  # noqa: E402
from cohort.dosing import DosingError, Regimen  # noqa: E402
from cohort.engine import (  # noqa: E402
    DiffraxOptions,
    FastOptions,
    InputError,
    Status,
    grid,
    simulate,
)
from cohort.store import open_result  # noqa: E402

__all__ = [
    "CohortWarning",
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
]
