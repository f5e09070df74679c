"""Which parameters can change a model output at all: the structural dependencies of the
equations, found by differentiation.

A parameter that cannot reach the observed output (a PD parameter when only concentrations are
observed) has a flat likelihood: its estimate is arbitrary and its standard error infinite, and
an optimiser or sampler wanders along it (a new user's fit of ``pk2_oral_idr`` to Theoph's
concentrations ran for minutes estimating KIN and KOUT). Fits estimate only parameters that
reach their output.

The Jacobians of the right-hand side, the initial state and the output are taken at random
points (parameters around their typical values, states over several decades, all nonzero), so
an entry that is zero at all of them is structurally zero. A state influences another when it
appears in that state's derivative, and a parameter reaches the output when it enters the
derivative or initial value of a state the output depends on through that chain, the output
itself, or a dose map (F, ALAG, modelled duration) of such a state.
"""

from __future__ import annotations

import functools

import numpy as np

from cohort.models.base import Model

# The random points' state scales, whose nonzero patterns are combined: a term gated by a
# threshold (Bergman's insulin secretion above h = 89.5 mg/dL) is zero below it.
STATE_SCALES = (1.0, 1e-2, 1e2, 1e4, 10.0, 1e3)


@functools.lru_cache(maxsize=64)
def parameters_reaching(model: Model, output: str) -> frozenset[str]:
    """Names of the parameters of ``model`` that can change ``output`` (an output or state)."""
    import jax
    import jax.numpy as jnp

    states = model.state_names
    rng = np.random.default_rng(0)
    direct = np.zeros((len(states), len(states)), bool)  # d(dy_i/dt)/dy_j != 0
    by_param: dict[str, np.ndarray] = {}  # per parameter: states whose derivative/initial use it
    out_states = np.zeros(len(states), bool)
    out_params: set[str] = set()
    for scale in STATE_SCALES:
        p = {q.name: jnp.asarray(_positive(q.default, rng)) for q in model.parameters}
        y = {s: jnp.asarray(scale * rng.uniform(0.5, 2.0)) for s in states}

        def rhs(y, p):
            u = {s: jnp.zeros_like(y[s]) for s in states}  # no input: it enters additively
            return model.rhs(jnp.asarray(1.0), y, model.prepare(p), u)

        jy = jax.jacfwd(rhs, argnums=0)(y, p)
        jp = jax.jacfwd(rhs, argnums=1)(y, p)
        init = jax.jacfwd(lambda p: model.initial(model.prepare(p)))(p)
        gy, gp = jax.grad(
            lambda y, p: jnp.sum(model.output(output, y, model.prepare(p))), argnums=(0, 1)
        )(y, p)
        for i, s in enumerate(states):
            for j, r in enumerate(states):
                direct[i, j] |= _nonzero(jy[s][r])
            for k in p:
                used = _nonzero(jp[s][k]) or _nonzero(init[s][k])
                by_param.setdefault(k, np.zeros(len(states), bool))[i] |= used
            out_states[i] |= _nonzero(gy[s])
        out_params |= {k for k in p if _nonzero(gp[k])}
    reach = out_states.copy()  # the states the output depends on, closed under dependence
    while True:
        grown = reach | direct[reach].any(axis=0)
        if (grown == reach).all():
            break
        reach = grown
    found = set(out_params)
    found |= {k for k, used in by_param.items() if (used & reach).any()}
    for mapping in (model.bioavailability, model.lag, model.duration):
        found |= {name for s, name in mapping.items() if s in states and reach[states.index(s)]}
    return frozenset(found & set(model.parameter_names))


def _positive(default: float, rng) -> float:
    """A random value near a parameter's default (1 where the default is 0: a zero would hide
    the terms it multiplies)."""
    base = default if default != 0 else 1.0
    return float(base * np.exp(rng.normal(0.0, 0.3)))


def _nonzero(x) -> bool:
    return bool(np.any(np.asarray(x) != 0))
