"""Steady state under repeated dosing, once for every ODE engine: iterate one dosing interval
to its fixed point (the engines differ only in how they integrate the interval)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cohort.engine.status import Status
from cohort.models.base import Tree


def iterate_to_steady_state(
    cycle: Callable[[Tree], tuple[Tree, jax.Array]],
    y0: Tree,
    active,
    *,
    max_cycles: int,
    rtol: float,
    floor: float,
) -> tuple[Tree, jax.Array]:
    """Apply ``cycle`` (one dosing interval: state -> state, status code) from ``y0`` until
    every state changes by at most ``rtol`` relative to ``|y| + floor``, ``max_cycles`` is
    reached or the cycle's solve fails. ``active`` (scalar, or ``[N]`` for a batch) marks the
    patients with a steady-state record: the others neither hold the loop open nor cycle when
    none is active. Returns the state and the last cycle's status code."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(y0))

    def cond(state):
        i, _, delta, code = state
        return jnp.any(active) & (i < max_cycles) & (delta > rtol) & (code == Status.OK)

    def body(state):
        i, y, _, _ = state
        y_new, code = cycle(y)
        changes = [
            jnp.max(
                jnp.where(
                    jnp.isfinite(y_new[k]) & active,
                    jnp.abs(y_new[k] - y[k]) / (jnp.abs(y_new[k]) + floor),
                    0.0,
                )
            )
            for k in y
        ]
        return i + 1, y_new, functools.reduce(jnp.maximum, changes), code

    init = (0, y0, jnp.asarray(jnp.inf, dtype), jnp.asarray(Status.OK))
    _, y, _, code = jax.lax.while_loop(cond, body, init)
    return y, code
