"""The model contract: named states and parameters with units, a per-patient right-hand side.

Equations are written once, per patient, with elementwise ``jnp`` operations on dicts keyed by
state/parameter name. The same ``rhs`` therefore runs on scalars (under ``vmap`` in the diffrax
path) and on ``[N]``-shaped arrays (the structure-of-arrays fast path); the engine decides how to
batch, never the model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

from cohort.errors import UnknownModelError

Tree = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class State:
    """A named state variable (compartment amount, response level, ...).

    ``nonnegative`` states (amounts, concentrations) going below zero mark a patient's solve as
    failed; states that are legitimately signed (e.g. insulin action relative to basal) opt out.
    """

    name: str
    units: str
    description: str = ""
    nonnegative: bool = True


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A named model parameter with units, a typical default and a plausible positive range."""

    name: str
    units: str
    default: float
    description: str = ""
    lower: float = 0.0
    upper: float = float("inf")
    aliases: tuple[str, ...] = ()  # other names users' tables give it (e.g. WT for BW)


# What tables call a body weight besides the parameter's own name.
WEIGHT_ALIASES = ("WT", "WGT", "WEIGHT", "BODYWEIGHT", "BODY_WEIGHT")


@dataclasses.dataclass(frozen=True)
class Output:
    """A derived quantity reported by a simulation (e.g. ``conc = central / V``)."""

    name: str
    units: str
    fn: Callable[[Tree, Tree], Any]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class LinearPK:
    """Structure of a linear mammillary PK system, which admits an exact (closed-form) solution.

    ``n_cmt`` disposition compartments (central + up to two peripherals) with clearances and
    volumes named by the ``*_param`` fields, optionally fed by a first-order ``depot``.
    """

    n_cmt: int
    cl: str = "CL"
    volumes: tuple[str, ...] = ("V",)
    flows: tuple[str, ...] = ()
    ka: str | None = None
    central: str = "central"
    peripherals: tuple[str, ...] = ()
    depot: str | None = None


class Model:
    """Base class of every cohort model.

    Subclasses set ``name``, ``states``, ``parameters``, ``outputs`` and ``dose_targets`` and
    implement :meth:`rhs`. Optional hooks: :meth:`initial` (baseline state, e.g. ``R0 = kin/kout``),
    ``bioavailability``/``lag``/``duration`` maps from a dosable state to the parameter giving
    its F, ALAG or modelled infusion duration (NONMEM ``RATE=-2``), and ``linear_pk`` when the
    PK part is linear so that the closed-form engine applies.
    """

    name: str = "model"
    description: str = ""
    states: tuple[State, ...] = ()
    parameters: tuple[Parameter, ...] = ()
    outputs: tuple[Output, ...] = ()
    dose_targets: tuple[str, ...] = ()
    bioavailability: Mapping[str, str] = {}
    lag: Mapping[str, str] = {}
    duration: Mapping[str, str] = {}
    linear_pk: LinearPK | None = None
    stiff: bool = False
    time_units: str = "h"
    fast_dt: float = 1.0 / 12.0  # default fixed step of the fast path, in ``time_units``

    # -- the equations -------------------------------------------------------------------------
    def rhs(self, t: Any, y: Tree, p: Tree, u: Tree) -> Tree:
        """Time derivative of every state. ``u`` holds the zero-order input rate per state."""
        raise NotImplementedError

    def prepare(self, p: Tree) -> Tree:
        """``p`` plus parameter-only quantities the equations reuse (NONMEM ``$PK``, mrgsolve
        ``$MAIN``). Engines call it once per patient before stepping, so reciprocals and other
        parameter-only terms are not recomputed at every RHS evaluation inside the time loop.
        Derived names start with ``_``; equations read them through :func:`derived`, which
        computes them on the fly when given raw parameters. The default adds nothing."""
        return p

    def record_notes(self, table: Any) -> list[str]:
        """Warnings about dose records that run but are most likely not what was meant (a
        glucose model's meal given as a bolus, grams where mg are read), given the run's
        :class:`~cohort.dosing.EventTable`; none by default."""
        return []

    def initial(self, p: Tree) -> Tree:
        """State at time zero before any dose; compartments empty by default."""
        like = p[self.parameters[0].name]
        return {s.name: jnp.zeros_like(like) for s in self.states}

    def __reduce_ex__(self, protocol):
        """A registered model pickles as its name, so another process (a Dask worker) gets its
        own shared instance and its compiled solvers are reused across tasks; other models
        pickle by value."""
        name = getattr(self, "_registered_as", None)
        if name is not None and _instance(name) is self:
            return (get, (name,))
        return super().__reduce_ex__(protocol)

    # -- names, units and lookups --------------------------------------------------------------
    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.parameters}

    def units(self) -> dict[str, str]:
        out = {s.name: s.units for s in self.states}
        out.update({p.name: p.units for p in self.parameters})
        out.update({o.name: o.units for o in self.outputs})
        return out

    def output_states(self, name: str) -> tuple[str, ...]:
        """The states an output reads (``conc`` -> ``central``), found by differentiating it
        at the typical parameters with every state at 1: what an observation record's CMT
        must point to for that output. A state reads itself."""
        if name in self.state_names:
            return (name,)
        import jax

        p = self.prepare({k: jnp.asarray(v, jnp.float32) for k, v in self.defaults().items()})
        y = {s: jnp.ones((), jnp.float32) for s in self.state_names}
        grad = jax.grad(lambda y: jnp.sum(self.output(name, y, p)))(y)
        return tuple(s for s in self.state_names if float(grad[s]) != 0.0)

    def output(self, name: str, y: Tree, p: Tree) -> Any:
        """Evaluate a named output, or return a state by name."""
        for o in self.outputs:
            if o.name == name:
                return o.fn(y, p)
        if name in y:
            return y[name]
        raise KeyError(
            f"model {self.name!r} has no output or state {name!r}; "
            f"choose from {list(self.output_names + self.state_names)}"
        )

    def fingerprint(self) -> str:
        """A short hash identifying the model: its structure, defaults and equations (the
        code of ``rhs``, ``initial``, ``output`` and ``prepare``), for provenance, resume
        checks and compiled-program caches. Without the equations, a model redefined in the
        same session was fitted with its old, cached equations, and a store made with other
        equations was resumed."""
        text = repr(
            (
                type(self).__qualname__,
                self.name,
                self.states,
                self.parameters,
                self.dose_targets,
                self.linear_pk,
                [_code_digest(getattr(type(self), m, None)) for m in _EQUATIONS],
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, states={list(self.state_names)}, "
            f"parameters={list(self.parameter_names)})"
        )


_EQUATIONS = ("rhs", "initial", "output", "prepare")


def _code_digest(fn: Any) -> str:
    """A digest of a function's bytecode, constants (nested code included), names and the
    plain values it closes over: it changes when the equations are edited, not when the file
    merely moves."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    h = hashlib.sha256()

    def feed(c) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        for const in c.co_consts:
            if hasattr(const, "co_code"):
                feed(const)
            elif isinstance(const, frozenset):  # its repr's order follows the hash seed
                h.update(repr(sorted(map(repr, const))).encode())
            else:
                h.update(repr(const).encode())

    feed(code)
    for cell in getattr(fn, "__closure__", None) or ():  # values closed over (k = 5.0)
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        simple = isinstance(value, (int, float, str, bool, tuple, type(None)))
        h.update(repr(value if simple else type(value).__qualname__).encode())
    return h.hexdigest()[:16]


def derived(p: Tree, key: str, compute: Callable[[], Any]) -> Any:
    """``p[key]`` when :meth:`Model.prepare` put it there, else ``compute()`` (raw parameters)."""
    value = p.get(key)
    return compute() if value is None else value


def reciprocal(p: Tree, name: str) -> Any:
    """``1 / p[name]``, precomputed by ``prepare`` as ``p["_inv_" + name]`` where available."""
    return derived(p, "_inv_" + name, lambda: 1.0 / p[name])


def with_reciprocals(p: Tree, names) -> Tree:
    """``p`` plus ``_inv_<name>`` for each of ``names`` (a building block for ``prepare``)."""
    return {**p, **{"_inv_" + k: 1.0 / p[k] for k in names}}


_REGISTRY: dict[str, Callable[[], Model]] = {}


def register(name: str) -> Callable[[Callable[[], Model]], Callable[[], Model]]:
    """Register a model factory under ``name`` (plugin registry; factories, not instances)."""

    def deco(factory: Callable[[], Model]) -> Callable[[], Model]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def get(name: str) -> Model:
    """The registered model ``name`` (one shared instance per name: models are immutable, and
    sharing lets the engine reuse compiled solvers across calls)."""
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown model {name!r}; available models: {', '.join(sorted(_REGISTRY))}"
        )
    return _instance(name)


@functools.cache
def _instance(name: str) -> Model:
    model = _REGISTRY[name]()
    # The registry name (a composite model's own name may differ, e.g. "pk2_oral+idr1"):
    # pickling sends it instead of the model.
    object.__setattr__(model, "_registered_as", name)
    return model


def available() -> list[str]:
    return sorted(_REGISTRY)
