"""Steady state under repeated dosing, once for every ODE engine: the fixed point of one dosing
interval (the engines differ only in how they integrate the interval).

Plain iteration converges like ``exp(-k·II)`` per interval: with a half-life long against the
dosing interval (CL 0.1 L/h, V 500 L, q12h) 1,000 intervals left the state 9 % short, with no
word. So after one plain interval (from a zero state a finite difference has no scale) the
fixed point is found by Newton's method on ``y = cycle(y)``, the interval's Jacobian from
finite differences (one interval per state, all ``vmap``-ed into one call: exact for linear
kinetics, where one step suffices); each Newton iteration measures the plain interval's
change at its start, and plain intervals continue where Newton stops short. A patient still
moving after ``max_cycles`` of them gets ``Status.SS_NOT_REACHED``.
Diffrax and optimistix offer root finders, but not on a map whose evaluation is a batched
event-splitting integrator (the fast path) or a per-patient diffrax solve: hence this loop.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cohort.engine.status import Status
from cohort.models.base import Tree

NEWTON_STEPS = 30  # linear kinetics need one; Michaelis-Menten a few, near its capacity ~20
MAX_STRETCH = 1e4  # largest Newton step / plain interval change: half-lives to ~7,000 II


def iterate_to_steady_state(
    cycle: Callable[[Tree], tuple[Tree, jax.Array]],
    y0: Tree,
    active,
    *,
    max_cycles: int,
    rtol: float,
    floor: float,
) -> tuple[Tree, jax.Array]:
    """The fixed point of ``cycle`` (one dosing interval: state -> state, status code) from
    ``y0``: every state changes over an interval by at most ``rtol`` relative to ``|y| +
    floor`` (``rtol`` is raised to 64 ulp of the states' dtype: float32 cannot resolve
    1e-10). ``active`` (scalar, or ``[N]`` for a batch) marks the patients with a
    steady-state record: the others neither hold the loops open nor change. Returns the state
    and a status code: the worst of the plain intervals' codes, else ``SS_NOT_REACHED`` where
    the state still moved after ``max_cycles`` plain intervals."""
    names = list(y0)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(y0))
    eps = float(jnp.finfo(dtype).eps)
    rtol = max(float(rtol), 64 * eps)
    # relative nudge: 1e-4 in float64; in float32 30 sqrt(eps) = 1e-2 (a 1e-4 nudge left the
    # slope's rounding error at 1e-3 of the slope, too coarse for k·II ~ 1e-3)
    nudge = max(1e-4, 30 * eps**0.5)

    def change(y_new, y):
        rel = [
            jnp.where(
                jnp.isfinite(y_new[k]), jnp.abs(y_new[k] - y[k]) / (jnp.abs(y_new[k]) + floor), 0.0
            )
            for k in names
        ]
        return jnp.where(active, jnp.max(jnp.stack(rel), axis=0), 0.0)

    def newton(state):
        i, y, _, code = state
        n_s = len(names)
        y_vec = jnp.stack([y[k] for k in names])  # [S, ...]
        eye = jnp.eye(n_s, dtype=dtype).reshape((n_s, n_s) + (1,) * (y_vec.ndim - 1))
        # the interval from y and from y nudged along each state, in one vmap-ed call
        scale = jnp.abs(y_vec)
        h = nudge * scale + 1e-2 * nudge * jnp.max(scale, axis=0) + 1e-12  # [S, ...]
        starts = jnp.concatenate([y_vec[:, None], y_vec[:, None] + eye * h[None]], axis=1)
        out, codes = jax.vmap(lambda yy: jax.tree.map(jnp.asarray, cycle(yy)))(
            {k: starts[j] for j, k in enumerate(names)}
        )
        f = jnp.stack([out[k] for k in names])  # [S (state), 1 + S (nudge), ...]
        fy = f[:, 0]
        jac = (f[:, 1:] - fy[:, None]) / h[None]
        resid = fy - y_vec
        lhs = jnp.moveaxis(eye - jac, (0, 1), (-2, -1))
        step = jnp.linalg.solve(lhs, jnp.moveaxis(resid, 0, -1)[..., None])[..., 0]
        y_try = y_vec + jnp.moveaxis(step, -1, 0)
        # Take the Newton step where it is finite, keeps non-negative states so (a step past
        # zero on a nonlinear model) and is at most MAX_STRETCH times the plain interval's
        # change (where no steady state exists, e.g. doses above a Michaelis-Menten capacity,
        # the nearly singular system sent the state to 1e12); elsewhere the plain interval.
        stretch = jnp.max(jnp.abs(step), axis=-1) / (jnp.max(jnp.abs(resid), axis=0) + 1e-300)
        ok = jnp.all(jnp.isfinite(y_try) & ((y_try >= 0) | (fy < 0)), axis=0)
        ok = ok & (stretch <= MAX_STRETCH)
        y_new = {k: jnp.where(active, jnp.where(ok, y_try[j], fy[j]), y[k])
                 for j, k in enumerate(names)}  # fmt: skip
        # converged when the plain interval no longer moves y (the nudged intervals' codes
        # are not the patient's: a nudge may fail where y does not)
        plain_end = {k: fy[j] for j, k in enumerate(names)}
        return i + 1, y_new, change(plain_end, y), jnp.maximum(code, codes[0].astype(jnp.int32))

    def plain(state):
        i, y, _, code = state
        y_new, c = cycle(y)
        y_new = {k: jnp.where(active, y_new[k], y[k]) for k in names}
        return i + 1, y_new, change(y_new, y), jnp.maximum(code, jnp.asarray(c, jnp.int32))

    def going(limit):
        def cond(state):
            i, _, delta, code = state
            return jnp.any(active) & (i < limit) & (jnp.max(delta) > rtol) & jnp.all(code == 0)

        return cond

    init = (0, y0, jnp.full(jnp.shape(active), jnp.inf, dtype), jnp.zeros((), jnp.int32))
    state = plain(init)  # from a zero state the nudges would have no scale
    state = jax.lax.while_loop(going(NEWTON_STEPS), newton, (0, *state[1:]))
    state = jax.lax.while_loop(going(max_cycles), plain, (0, *state[1:]))
    _, y, delta, code = state
    code = jnp.where(code != 0, code, jnp.where(delta > rtol, Status.SS_NOT_REACHED, Status.OK))
    return y, jnp.where(active, code, Status.OK)
