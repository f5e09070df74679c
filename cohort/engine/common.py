"""Pieces shared by the ODE engines: applying a state change, checking a solution."""

from __future__ import annotations

import jax.numpy as jnp

from cohort.engine.events import BOLUS, RATE, RESET, SS_BOLUS, SS_INFUSION
from cohort.engine.status import NEGATIVE_TOLERANCE, Status
from cohort.models.base import Model, Tree


def apply_change(
    model: Model,
    y: Tree,
    u: Tree,
    last_reset,
    change: dict,
    due,
    y_init: Tree,
    y_ss: Tree | None = None,
):
    """Apply one change record where ``due`` is true (elementwise: scalars or ``[N]`` arrays).

    Resets restore the baseline state and stop infusions; SS records replace the state with the
    precomputed steady state ``y_ss`` at the record time (the record's own dose follows as a
    separate BOLUS or RATE change when it enters; see ``events.resolve``).
    """
    kind, cmt, t = change["kind"], change["cmt"], change["time"]
    is_ss = (kind == SS_BOLUS) | (kind == SS_INFUSION)
    is_reset = due & ((kind == RESET) | is_ss)
    target = y_ss if y_ss is not None else y_init
    y = {s: jnp.where(is_reset, jnp.where(is_ss, target[s], y_init[s]), y[s]) for s in y}
    u = {s: jnp.where(is_reset, 0.0, u[s]) for s in u}
    last_reset = jnp.where(is_reset, t, last_reset)
    bolus = due & (kind == BOLUS)
    take_rate = due & (kind == RATE) & (change["start"] >= last_reset)
    for i, s in enumerate(model.state_names):
        y[s] = y[s] + jnp.where(bolus & (cmt == i), change["amount"], 0.0)
        u[s] = u[s] + jnp.where(take_rate & (cmt == i), change["rate"], 0.0)
    return y, u, last_reset


def solution_status(x: jnp.ndarray, solver_code, nonnegative: jnp.ndarray | None = None):
    """Combine a solver code with checks on one patient's saved states ``x [T, S]``.

    ``nonnegative [S]`` marks the states whose negative values (beyond round-off relative to
    the largest state) make the solution invalid.
    """
    finite = jnp.all(jnp.isfinite(x))
    scale = jnp.max(jnp.abs(jnp.where(jnp.isfinite(x), x, 0.0)))
    neg = x < -(NEGATIVE_TOLERANCE * scale + 1e-9)
    if nonnegative is not None:
        neg = neg & nonnegative
    code = jnp.where(solver_code != 0, solver_code, Status.OK)
    code = jnp.where((code == Status.OK) & ~finite, Status.NONFINITE, code)
    return jnp.where((code == Status.OK) & jnp.any(neg), Status.NEGATIVE, code)


def first_ss_index(kind):
    """Index of the first steady-state record (or 0) and whether one exists."""
    is_ss = (kind == SS_BOLUS) | (kind == SS_INFUSION)
    return jnp.argmax(is_ss, axis=-1), jnp.any(is_ss, axis=-1)


def track_extremes(lo, hi, y: Tree, names, nonnegative):
    """Running per-patient extremes for the health checks: ``hi`` the largest ``|state|`` over
    ``names``, ``lo`` the smallest value of the states in ``nonnegative``."""
    for s in names:
        hi = jnp.maximum(hi, jnp.abs(y[s]))
        if s in nonnegative:
            lo = jnp.minimum(lo, y[s])
    return lo, hi
