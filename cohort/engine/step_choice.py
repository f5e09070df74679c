"""The fixed step from an accuracy target: users ask RK4 for ``tol``, not for a step size.

RK4's error at step ``h`` behaves as ``C·h⁴``, so comparing a pilot solve at ``h`` with one at
``h/4`` estimates the error at ``h`` (``256/255·|y_h − y_h/4|``, Richardson) and the step that
meets the target (``h·(tol/err)^¼``, with a safety factor). The chosen step is verified the
same way and shrunk until it meets ``tol``. The reference is ``h/4``, not ``h/2``: before RK4
reaches its ``h⁴`` regime (a Michaelis–Menten model an hour after a dose, a probe) the
error barely falls from ``h`` to ``h/2``, and ``16/15·|y_h − y_h/2|`` said 1.0e-5 where the
error was 1.25e-5, so ``tol=1e-5`` was missed with a larger step than ``tol=1e-4`` took.
The pilot is a spread of up to ``PILOT`` patients of the cohort, solved in float64 (the
truncation error is what is measured, not round-off). Diffrax's adaptive controllers do this per
step and per patient; a structure-of-arrays cohort steps all patients together, so the step is
chosen once, before the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from cohort.engine.fast_path import RK4
from cohort.engine.inputs import InputError
from cohort.models.base import Model

PILOT = 64  # patients in the pilot solves
SAFETY = 0.8
MAX_TRIES = 8
REFINEMENT = 4  # the reference pilot's step is h / REFINEMENT (see the module docstring)


def pilot_rows(n_patients: int) -> np.ndarray:
    """Indices of the pilot patients: evenly spread over the cohort."""
    return np.unique(np.linspace(0, n_patients - 1, min(PILOT, n_patients)).round().astype(int))


def relative_error(coarse: dict, fine: dict, refinement: int = 2) -> float:
    """Largest Richardson estimate ``r⁴/(r⁴ − 1)·|coarse − fine|`` of the coarse solve's
    error (``fine`` at ``1/refinement`` of its step) over outputs, times and patients,
    relative to each output's peak magnitude for that patient (outputs ``[T, N]``)."""
    worst = 0.0
    for name, f in fine.items():
        c = np.asarray(coarse[name], float)
        f = np.asarray(f, float)
        peak = np.max(np.abs(f), axis=0, keepdims=True)
        scale = np.where(peak > 0, peak, 1.0)
        err = np.abs(c - f) / scale
        if not np.all(np.isfinite(err)):
            return np.inf
        worst = max(worst, float(np.max(err, initial=0.0)))
    gain = float(refinement) ** 4
    return gain / (gain - 1.0) * worst


def choose_step(engine: RK4, model: Model, solve: Callable[[RK4], dict]) -> RK4:
    """``engine`` with the largest step found to meet ``engine.tol`` on the pilot; ``solve``
    runs the pilot with a given engine and returns its outputs ``{name: [T, N]}``."""
    tol = engine.tol
    h = engine.step(model)

    def error(h: float) -> float:
        coarse = solve(dataclasses.replace(engine, dt=h))
        fine = solve(dataclasses.replace(engine, dt=h / REFINEMENT))
        return relative_error(coarse, fine, REFINEMENT)

    err = error(h)
    if np.isfinite(err) and err > 0:
        h = h * min(16.0, max(1.0 / 256, SAFETY * (tol / err) ** 0.25))
    elif err == 0:
        h *= 16.0
    for _ in range(MAX_TRIES):
        err = error(h)
        if err <= tol:
            return dataclasses.replace(engine, dt=float(h))
        factor = SAFETY * (tol / err) ** 0.25 if np.isfinite(err) else 0.25
        h *= min(0.5, factor)
    raise InputError(
        f"options: RK4(tol={tol:g}) was not met with steps down to {h:.3g} "
        f"{model.time_units} (pilot error {err:.2g}); ask for a looser tol or use the adaptive "
        "engine (method='diffrax')"
    )
