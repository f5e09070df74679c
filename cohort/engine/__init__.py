"""How a cohort is solved: closed form, adaptive diffrax (reference) or batched RK4 (fast)."""

from cohort.engine.devices import use_cpu_cores
from cohort.engine.diffrax_path import DiffraxOptions
from cohort.engine.fast_path import FastOptions
from cohort.engine.inputs import InputError, grid
from cohort.engine.simulate import simulate
from cohort.engine.status import Status

__all__ = [
    "DiffraxOptions",
    "FastOptions",
    "InputError",
    "Status",
    "grid",
    "simulate",
    "use_cpu_cores",
]
