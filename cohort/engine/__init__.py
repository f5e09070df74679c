"""How a cohort is solved: engines as objects (closed form, adaptive diffrax reference, batched
RK4 throughput), the one chunk loop that runs them, and ``simulate``."""

from cohort.engine.base import Engine, register_engine
from cohort.engine.closed_form import ClosedForm
from cohort.engine.devices import use_cpu_cores
from cohort.engine.diffrax_path import Adaptive, DiffraxOptions
from cohort.engine.fast_path import RK4, FastOptions
from cohort.engine.inputs import InputError, grid
from cohort.engine.simulate import simulate
from cohort.engine.status import Status

__all__ = [
    "RK4",
    "Adaptive",
    "ClosedForm",
    "DiffraxOptions",
    "Engine",
    "FastOptions",
    "InputError",
    "Status",
    "grid",
    "register_engine",
    "simulate",
    "use_cpu_cores",
]
