"""The classical RK4 step, once, for every fixed-step integrator (the engine's fast path and
the closed-loop runs built on the engine): named states as a dict of arrays (scalars under
``vmap`` or ``[N]`` structure-of-arrays batches alike)."""

from __future__ import annotations

from collections.abc import Callable

from cohort.models.base import Tree


def rk4_step(f: Callable[[object, Tree], Tree], t, y: Tree, h, k1: Tree | None = None):
    """One classical RK4 step of ``dy/dt = f(t, y)``; returns the new state and the slope at
    the start (``k1``, computed unless given, e.g. reused from the previous step's end for
    dense output)."""

    def axpy(a, k):
        return {s: y[s] + a * k[s] for s in y}

    k1 = f(t, y) if k1 is None else k1
    k2 = f(t + 0.5 * h, axpy(0.5 * h, k1))
    k3 = f(t + 0.5 * h, axpy(0.5 * h, k2))
    k4 = f(t + h, axpy(h, k3))
    y_next = {s: y[s] + (h / 6.0) * (k1[s] + 2.0 * k2[s] + 2.0 * k3[s] + k4[s]) for s in y}
    return y_next, k1
