"""Pharmacodynamic links driven by a PK model's concentration output.

A :class:`PKPD` model concatenates the states and parameters of a PK model and a PD block; the
PD block sees the PK concentration ``conc`` (mg/L). Direct Emax/sigmoid Emax, an effect
compartment and the four indirect-response models (Dayneka, Garg & Jusko 1993) are provided.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cohort.models.base import (
    Model,
    Output,
    Parameter,
    State,
    Tree,
    get,
    reciprocal,
    register,
    with_reciprocals,
)


def _hill(c, top, p, gamma):
    """``top·c^γ / (EC50^γ + c^γ)`` written as ``top·sigmoid(γ·log(c/EC50))``: one log and one
    exp instead of two ``pow`` (the dominant cost of a PK/PD step), no overflow for c >> EC50,
    and the double ``where`` keeps gradients finite at c = 0."""
    x = c * reciprocal(p, "EC50")
    pos = x > 0
    z = jnp.where(pos, gamma * jnp.log(jnp.where(pos, x, 1.0)), -jnp.inf)
    return top * jax.nn.sigmoid(z)


@dataclasses.dataclass(frozen=True)
class PDBlock:
    """A PD sub-model: its own states/parameters, a derivative and a response output."""

    name: str
    description: str
    states: tuple[State, ...]
    parameters: tuple[Parameter, ...]
    deriv: Callable[[Tree, Tree, jnp.ndarray], Tree]
    response: Callable[[Tree, Tree, jnp.ndarray], jnp.ndarray]
    initial: Callable[[Tree], Tree]


_E0 = Parameter("E0", "1", 100.0, "baseline effect", -1e6, 1e6)
_EMAX = Parameter("EMAX", "1", 50.0, "maximal drug effect", -1e6, 1e6)
_EC50 = Parameter("EC50", "mg/L", 5.0, "concentration at half-maximal effect", 1e-9, 1e6)
_GAMMA = Parameter("GAMMA", "1", 1.0, "Hill coefficient", 0.05, 20.0)
_KIN = Parameter("KIN", "1/h", 10.0, "zero-order production rate of the response", 0.0, 1e6)
_KOUT = Parameter("KOUT", "1/h", 0.1, "first-order loss rate of the response", 1e-9, 1e3)
_IMAX = Parameter("IMAX", "1", 0.9, "maximal fractional inhibition", 0.0, 1.0)
_SMAX = Parameter("SMAX", "1", 2.0, "maximal fractional stimulation", 0.0, 1e3)
_RESPONSE = State("response", "1", "indirect response variable R")


def _direct(p, c):
    return p["E0"] + _hill(c, p["EMAX"], p, p["GAMMA"])


def _no_states(p):
    return {}


def _idr(kind: int) -> PDBlock:
    inhibit = kind in (1, 2)
    drug = (_IMAX, _EC50, _GAMMA) if inhibit else (_SMAX, _EC50, _GAMMA)

    def deriv(y, p, c):
        r = y["response"]
        if inhibit:
            effect = 1.0 - _hill(c, p["IMAX"], p, p["GAMMA"])
        else:
            effect = 1.0 + _hill(c, p["SMAX"], p, p["GAMMA"])
        if kind in (1, 3):  # drug acts on production
            return {"response": p["KIN"] * effect - p["KOUT"] * r}
        return {"response": p["KIN"] - p["KOUT"] * effect * r}  # drug acts on loss

    acts = ["inhibits production", "inhibits loss", "stimulates production", "stimulates loss"]
    return PDBlock(
        name=f"idr{kind}",
        description=f"indirect response model {'I' * kind if kind < 4 else 'IV'}: drug "
        + acts[kind - 1],
        states=(_RESPONSE,),
        parameters=(_KIN, _KOUT, *drug),
        deriv=deriv,
        response=lambda y, p, c: y["response"],
        initial=lambda p: {"response": p["KIN"] / p["KOUT"]},
    )


PD_BLOCKS: dict[str, PDBlock] = {
    "emax": PDBlock(
        "emax",
        "direct (sigmoid) Emax model",
        (),
        (_E0, _EMAX, _EC50, _GAMMA),
        lambda y, p, c: {},
        lambda y, p, c: _direct(p, c),
        _no_states,
    ),
    "effect": PDBlock(
        "effect",
        "effect compartment (KE0) with sigmoid Emax on the effect-site concentration",
        (State("effect_site", "mg/L", "effect-site concentration"),),
        (
            Parameter("KE0", "1/h", 0.5, "effect-site equilibration rate", 1e-6, 1e3),
            _E0,
            _EMAX,
            _EC50,
            _GAMMA,
        ),
        lambda y, p, c: {"effect_site": p["KE0"] * (c - y["effect_site"])},
        lambda y, p, c: _direct(p, y["effect_site"]),
        lambda p: {"effect_site": jnp.zeros_like(p["KE0"])},
    ),
    **{f"idr{k}": _idr(k) for k in (1, 2, 3, 4)},
}


class PKPD(Model):
    """A PK model linked to a PD block through the PK ``conc`` output."""

    def __init__(self, pk: Model, pd: PDBlock):
        self.pk, self.pd = pk, pd
        self.name = f"{pk.name}+{pd.name}"
        self.description = f"{pk.description}; {pd.description}"
        self.states = pk.states + pd.states
        seen = set(pk.parameter_names)
        self.parameters = pk.parameters + tuple(q for q in pd.parameters if q.name not in seen)
        conc = next(o for o in pk.outputs if o.name == "conc")
        self.outputs = pk.outputs + (
            Output(
                "response",
                "1",
                lambda y, p: pd.response(y, p, conc.fn(y, p)),
                pd.description,
            ),
        )
        self.dose_targets = pk.dose_targets
        self.bioavailability, self.lag, self.duration = pk.bioavailability, pk.lag, pk.duration
        self.linear_pk = pk.linear_pk
        self.stiff = pk.stiff
        self._conc = conc.fn

    def prepare(self, p):
        p = self.pk.prepare(p)
        return with_reciprocals(p, ["EC50"]) if "EC50" in self.parameter_names else p

    def initial(self, p):
        return {**self.pk.initial(p), **self.pd.initial(p)}

    def rhs(self, t, y, p, u):
        d = self.pk.rhs(t, y, p, u)
        d.update(self.pd.deriv(y, p, self._conc(y, p)))
        for s in self.pd.states:  # PD states can take zero-order input like any state
            d[s.name] = d[s.name] + u[s.name]
        return d


def pkpd(pk_name: str, pd_name: str) -> PKPD:
    """Compose any registered PK model with a PD block: ``pkpd("pk2_oral", "idr1")``."""
    if pd_name not in PD_BLOCKS:
        raise KeyError(f"unknown PD block {pd_name!r}; choose from {sorted(PD_BLOCKS)}")
    return PKPD(get(pk_name), PD_BLOCKS[pd_name])


for _pk in ("pk1_oral", "pk2_oral", "pk1_iv", "pk2_iv"):
    for _pd in PD_BLOCKS:
        register(f"{_pk}+{_pd}")(lambda a=_pk, b=_pd: pkpd(a, b))
# The benchmark model of DESIGN §5: 4 states (depot, central, periph, response).
register("pk2_oral_idr")(lambda: pkpd("pk2_oral", "idr1"))
