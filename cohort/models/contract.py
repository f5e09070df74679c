"""Checks of a user-written model against the :class:`~cohort.models.Model` contract, run
before its first solve so that a slip in the class gives one clear message instead of a
``KeyError`` from inside the engine, diffrax's pytree-structure error, or (worse) plausible
numbers: an ``rhs`` that forgets ``u`` makes infusions do nothing, and one that reduces over
the array (``jnp.mean(y["central"])``) mixes patients on the fast path while running correctly
under ``vmap``.

The equations are evaluated eagerly at the parameters' defaults on a batch of two patients
(a few dozen elementwise operations); cohort's own models are tested and skip this.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable

import numpy as np

from cohort.errors import ModelDefinitionError
from cohort.models.base import Model


def check_contract(model: Model, infused: Iterable[str] = ()) -> None:
    """Raise :class:`ModelDefinitionError` naming the first broken part of ``model``;
    ``infused``: the states the run's records infuse into (``RATE`` != 0), whose derivative
    must take up the input rate ``u``."""
    problem = _static_problem(model)
    if problem:
        raise ModelDefinitionError(f"model {model.name!r}: {problem}")
    for state in sorted(set(infused)):
        if not _takes_input(model, state):
            raise ModelDefinitionError(
                f"model {model.name!r}: rhs ignores u[{state!r}], the zero-order input rate, "
                f"so the records' infusions into {state!r} (RATE != 0) would do nothing; add "
                f"'+ u[{state!r}]' to the derivative of {state!r}"
            )


@functools.lru_cache(maxsize=64)
def _static_problem(model: Model) -> str | None:
    return _names_problem(model) or _equations_problem(model)


def _names_problem(model: Model) -> str | None:
    groups = {
        "state": model.state_names,
        "parameter": model.parameter_names,
        "output": model.output_names,
    }
    for kind, names in groups.items():
        twice = sorted(n for n, c in Counter(names).items() if c > 1)
        if twice:
            return f"{kind} name {twice[0]!r} is declared twice; every {kind} needs its own name"
    for name in set(model.output_names) & set(model.parameter_names):
        return (
            f"output {name!r} has the name of a parameter (results would hold two variables "
            f"called {name!r}); rename the output"
        )
    for name in set(model.state_names) & set(model.parameter_names):
        return f"{name!r} is both a state and a parameter; rename one of them"
    for target in model.dose_targets:
        if target not in model.state_names:
            return (
                f"dose_targets names {target!r}, which is not a state; choose from "
                f"{list(model.state_names)}"
            )
    for label, mapping in (("bioavailability", model.bioavailability), ("lag", model.lag),
                           ("duration", model.duration)):  # fmt: skip
        for state, param in mapping.items():
            if state not in model.state_names:
                return f"{label} maps {state!r}, which is not a state"
            if param not in model.parameter_names:
                return f"{label}[{state!r}] = {param!r}, which is not a parameter"
    return None


def _parameters(model: Model) -> dict:
    """Two patients' prepared parameters: the defaults, and the second moved (so a reduction
    over the array changes the first patient's derivative)."""
    import jax.numpy as jnp

    p = {q.name: jnp.asarray([q.default, q.default * 1.3 + 0.1]) for q in model.parameters}
    return model.prepare(p)


def _states(model: Model, y0: dict) -> tuple[dict, dict]:
    """Both patients' states moved off ``y0`` (by different amounts) and zero input rates."""
    import jax.numpy as jnp

    y = {s: jnp.asarray(y0[s]) + jnp.asarray([1.0, 2.5]) for s in y0}
    return y, {s: jnp.zeros(2) for s in model.state_names}


def _equations_problem(model: Model) -> str | None:
    import jax.numpy as jnp

    states = set(model.state_names)
    if not model.parameters:
        return "declares no parameters"
    p = _parameters(model)
    try:
        y0 = model.initial(p)
    except Exception as exc:  # the user's code: report where, not a traceback from the engine
        return f"initial(p) failed at the parameters' defaults: {type(exc).__name__}: {exc}"
    if not isinstance(y0, dict) or set(y0) != states:
        return _keys_problem("initial(p)", y0, model.state_names)
    y, u = _states(model, y0)
    try:
        dy = model.rhs(jnp.asarray(0.0), y, p, u)
    except Exception as exc:
        return (
            f"rhs failed on a batch of two patients at the parameters' defaults: "
            f"{type(exc).__name__}: {exc} (equations must use elementwise jnp operations, "
            "not Python if/float on states or parameters)"
        )
    if not isinstance(dy, dict) or set(dy) != states:
        return _keys_problem("rhs(t, y, p, u)", dy, model.state_names)
    for name in set(model.output_names) & states:
        out = np.asarray(model.output(name, y, p))
        if not np.allclose(out, np.asarray(y[name]), rtol=1e-12, atol=0.0):
            return (
                f"output {name!r} has the name of a state but is not that state (an output "
                f"may only share a state's name by returning it); rename the output"
            )
    for i in range(2):
        one = model.rhs(jnp.asarray(0.0), *(_patient(tree, i) for tree in (y, p, u)))
        for s in model.state_names:
            batched, alone = np.asarray(dy[s]), np.asarray(one[s])
            try:  # a constant derivative (a clock: 1.0) is the same for every patient
                batched = np.broadcast_to(batched, (2,))
            except ValueError:
                return (
                    f"rhs returns d{s}/dt of shape {batched.shape} for a batch of two patients; "
                    "each state's derivative must have the shape of the states (elementwise)"
                )
            if not np.allclose(batched[i], alone, rtol=1e-5, atol=1e-9, equal_nan=True):
                return (
                    f"rhs mixes patients: on a batch of two patients (one array per state, as "
                    f"the fast path runs it) d{s}/dt is {batched.tolist()}, but patient {i} "
                    f"alone gives {float(alone):.6g}. Write the equations with elementwise jnp "
                    "operations only (no sum, mean, max or indexing over the array)"
                )
    return None


def _patient(tree, i: int):
    """Patient ``i`` of a batch of two (leaves without the patient axis are shared)."""
    import jax

    def pick(a):
        return a[i] if getattr(a, "ndim", 0) and a.shape[0] == 2 else a

    return jax.tree_util.tree_map(pick, tree)


def _keys_problem(what: str, got, states: tuple[str, ...]) -> str:
    if not isinstance(got, dict):
        return f"{what} must return a dict of the states {list(states)}, got {type(got).__name__}"
    missing = [s for s in states if s not in got]
    extra = [k for k in got if k not in states]
    parts = [f"missing {missing}"] * bool(missing) + [f"unknown {extra}"] * bool(extra)
    return (
        f"{what} returned the keys {list(got)}: {', '.join(parts)}; the states are {list(states)}"
    )


@functools.lru_cache(maxsize=256)
def _takes_input(model: Model, state: str) -> bool:
    """Whether the derivative of ``state`` changes with its input rate ``u[state]``."""
    import jax
    import jax.numpy as jnp

    p = _parameters(model)
    y, u = _states(model, model.initial(p))
    tangent = {s: jnp.full(2, 1.0 if s == state else 0.0) for s in u}
    _, d = jax.jvp(lambda uu: model.rhs(jnp.asarray(0.0), y, p, uu), (u,), (tangent,))
    return bool(np.any(np.asarray(d[state]) != 0))
