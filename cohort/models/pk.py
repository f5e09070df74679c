"""Compartmental pharmacokinetic models (amounts in mg, time in h, concentrations in mg/L).

Linear 1-, 2- and 3-compartment disposition with IV (bolus/infusion into ``central``) or
first-order absorption from a ``depot`` (with bioavailability ``F`` and lag ``ALAG``);
Michaelis–Menten elimination; target-mediated drug disposition (quasi-steady-state).
"""

from __future__ import annotations

import jax.numpy as jnp

from cohort.models.base import (
    LinearPK,
    Model,
    Output,
    Parameter,
    State,
    Tree,
    reciprocal,
    register,
    with_reciprocals,
)

_DEPOT = State("depot", "mg", "absorption depot (gut or injection site)")
_CENTRAL = State("central", "mg", "drug amount in the central compartment")
_PERIPH = State("periph", "mg", "drug amount in the first peripheral compartment")
_PERIPH2 = State("periph2", "mg", "drug amount in the second peripheral compartment")
_ABSORPTION = (
    Parameter("KA", "1/h", 1.0, "first-order absorption rate constant", 1e-4, 100.0),
    Parameter("F", "1", 1.0, "bioavailability of depot doses", 0.0, 1.0),
    Parameter("ALAG", "h", 0.0, "absorption lag time of depot doses", 0.0, 48.0),
)


def _conc(y: Tree, p: Tree, volume: str) -> jnp.ndarray:
    return y["central"] * reciprocal(p, volume)


class LinearCompartmentPK(Model):
    """Linear mammillary PK with ``n_cmt`` compartments, IV or first-order oral input."""

    def __init__(self, n_cmt: int, oral: bool):
        if n_cmt not in (1, 2, 3):
            raise ValueError(f"n_cmt must be 1, 2 or 3, got {n_cmt}")
        self.n_cmt, self.oral = n_cmt, oral
        route = "oral" if oral else "iv"
        self.name = f"pk{n_cmt}_{route}"
        self.description = f"{n_cmt}-compartment linear PK, " + (
            "first-order absorption with F and lag" if oral else "IV bolus/infusion"
        )
        vol = "V" if n_cmt == 1 else "V1"
        params = [Parameter("CL", "L/h", 2.8, "elimination clearance", 1e-4, 1e3)]
        params.append(Parameter(vol, "L", 32.0, "central volume of distribution", 1e-3, 1e4))
        flows, vols, periph = (), (vol,), ()
        if n_cmt >= 2:
            params += [
                Parameter("Q", "L/h", 4.0, "intercompartmental clearance", 1e-4, 1e3),
                Parameter("V2", "L", 60.0, "peripheral volume", 1e-3, 1e4),
            ]
            flows, vols, periph = ("Q",), (vol, "V2"), ("periph",)
        if n_cmt == 3:
            params += [
                Parameter("Q3", "L/h", 1.0, "second intercompartmental clearance", 1e-4, 1e3),
                Parameter("V3", "L", 100.0, "second peripheral volume", 1e-3, 1e4),
            ]
            flows, vols, periph = ("Q", "Q3"), (vol, "V2", "V3"), ("periph", "periph2")
        states = [_CENTRAL, _PERIPH, _PERIPH2][:n_cmt]
        if oral:
            states = [_DEPOT, *states]
            params += list(_ABSORPTION)
            self.bioavailability = {"depot": "F"}
            self.lag = {"depot": "ALAG"}
        self.states = tuple(states)
        self.parameters = tuple(params)
        self.central_volume = vol
        self.outputs = (
            Output("conc", "mg/L", lambda y, p: _conc(y, p, vol), "central concentration"),
        )
        self.dose_targets = ("depot", "central") if oral else ("central",)
        self.linear_pk = LinearPK(
            n_cmt=n_cmt,
            volumes=vols,
            flows=flows,
            ka="KA" if oral else None,
            peripherals=periph,
            depot="depot" if oral else None,
        )

    def prepare(self, p):
        return with_reciprocals(p, self.linear_pk.volumes)

    def rhs(self, t, y, p, u):
        vols = self.linear_pk.volumes
        c = y["central"] * reciprocal(p, vols[0])
        d = {"central": -p["CL"] * c + u["central"]}
        for flow, vol, name in zip(self.linear_pk.flows, vols[1:], self.linear_pk.peripherals):
            exchange = p[flow] * (c - y[name] * reciprocal(p, vol))
            d["central"] = d["central"] - exchange
            d[name] = exchange + u[name]
        if self.oral:
            absorbed = p["KA"] * y["depot"]
            d["depot"] = -absorbed + u["depot"]
            d["central"] = d["central"] + absorbed
        return d


class MichaelisMentenPK(Model):
    """One-compartment PK with saturable (Michaelis–Menten) elimination; IV or oral."""

    def __init__(self, oral: bool):
        self.oral = oral
        self.name = "pk1_mm_oral" if oral else "pk1_mm_iv"
        self.description = "1-compartment PK with Michaelis–Menten elimination"
        params = [
            Parameter("VMAX", "mg/h", 10.0, "maximal elimination rate", 1e-6, 1e5),
            Parameter("KM", "mg/L", 2.0, "concentration at half-maximal elimination", 1e-6, 1e4),
            Parameter("V", "L", 30.0, "volume of distribution", 1e-3, 1e4),
        ]
        states = [_CENTRAL]
        if oral:
            states = [_DEPOT, _CENTRAL]
            params += list(_ABSORPTION)
            self.bioavailability = {"depot": "F"}
            self.lag = {"depot": "ALAG"}
        self.states, self.parameters = tuple(states), tuple(params)
        self.outputs = (Output("conc", "mg/L", lambda y, p: _conc(y, p, "V"), "concentration"),)
        self.dose_targets = ("depot", "central") if oral else ("central",)

    def rhs(self, t, y, p, u):
        c = y["central"] / p["V"]
        d = {"central": -p["VMAX"] * c / (p["KM"] + c) + u["central"]}
        if self.oral:
            d["depot"] = -p["KA"] * y["depot"] + u["depot"]
            d["central"] = d["central"] + p["KA"] * y["depot"]
        return d


def _tmdd_free(ctot, rtot, kss):
    """Free drug concentration under the quasi-steady-state binding approximation: the
    positive root of C² − bC − KSS·Ctot = 0. Where b < 0 (drug well below its target) the
    textbook form ½(b + √(b² + 4·KSS·Ctot)) cancels (150 % off in float32, exactly 0 late
    in a run); the algebraically equal 2·KSS·Ctot / (√(b² + 4·KSS·Ctot) − b) does not."""
    b = ctot - rtot - kss
    root = jnp.sqrt(b * b + 4.0 * kss * ctot)
    neg = b < 0
    return jnp.where(neg, 2.0 * kss * ctot / jnp.where(neg, root - b, 1.0), 0.5 * (b + root))


class TMDDQSS(Model):
    """Target-mediated drug disposition, quasi-steady-state approximation (Gibiansky 2008).

    Amounts in nmol, concentrations in nM (nmol/L). ``central`` is total (free + bound) drug,
    ``target`` the total target concentration; target turnover ``ksyn = R0·kdeg``.
    """

    name = "tmdd_qss"
    description = "1-compartment TMDD, quasi-steady-state approximation, IV input"
    states = (
        State("central", "nmol", "total (free + bound) drug amount in plasma"),
        State("target", "nM", "total target concentration"),
    )
    parameters = (
        Parameter("CL", "L/h", 0.01, "linear clearance of free drug", 1e-6, 1e3),
        Parameter("V", "L", 3.0, "central volume", 1e-3, 1e4),
        Parameter("KSS", "nM", 1.0, "quasi-steady-state constant", 1e-6, 1e6),
        Parameter("KINT", "1/h", 0.04, "internalisation rate of the complex", 1e-6, 1e3),
        Parameter("KDEG", "1/h", 0.02, "target degradation rate", 1e-6, 1e3),
        Parameter("R0", "nM", 5.0, "baseline target concentration", 1e-6, 1e6),
    )
    outputs = (
        Output(
            "conc",
            "nM",
            lambda y, p: _tmdd_free(y["central"] / p["V"], y["target"], p["KSS"]),
            "free drug concentration",
        ),
        Output("ctot", "nM", lambda y, p: y["central"] / p["V"], "total drug concentration"),
    )
    dose_targets = ("central",)
    stiff = True

    def initial(self, p):
        return {"central": jnp.zeros_like(p["V"]), "target": p["R0"] * jnp.ones_like(p["V"])}

    def rhs(self, t, y, p, u):
        ctot = y["central"] / p["V"]
        c = _tmdd_free(ctot, y["target"], p["KSS"])
        bound = ctot - c
        d_central = -p["CL"] * c - p["KINT"] * bound * p["V"] + u["central"]
        d_target = p["R0"] * p["KDEG"] - p["KDEG"] * y["target"] - (p["KINT"] - p["KDEG"]) * bound
        return {"central": d_central, "target": d_target}


for _n in (1, 2, 3):
    for _oral in (False, True):
        register(f"pk{_n}_{'oral' if _oral else 'iv'}")(
            lambda n=_n, oral=_oral: LinearCompartmentPK(n, oral)
        )
register("pk1_mm_iv")(lambda: MichaelisMentenPK(oral=False))
register("pk1_mm_oral")(lambda: MichaelisMentenPK(oral=True))
register("tmdd_qss")(TMDDQSS)
