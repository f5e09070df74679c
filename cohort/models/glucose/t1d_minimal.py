"""A reduced, identifiable T1D glucose–insulin model for twins fitted to CGM data (minutes).

The oral glucose minimal model (Dalla Man et al. 2002/2007: glucose effectiveness ``SG``,
insulin sensitivity ``SI``, remote insulin action ``X`` with rate ``p2``, a two-compartment
stomach and a gut) driven by a two-compartment subcutaneous insulin depot, with a first-order
interstitial (CGM) lag — the structure ReplayBG (Cappon et al. 2023, IEEE TBME) identifies
from CGM, insulin and meal records::

    qsto1' = meal − kempt·qsto1                 (mg)     stomach, solid
    qsto2' = kempt·(qsto1 − qsto2)              (mg)     stomach, liquid
    qgut'  = kempt·qsto2 − kabs·qgut            (mg)     gut; Ra = f·kabs·qgut/BW
    Isc1'  = insulin − kd·Isc1                  (U)      subcutaneous depot
    Isc2'  = kd·Isc1 − ka2·Isc2                 (U)
    I'     = ka2·Isc2·1000/(VI·BW) − ke·I       (µU/mL)  plasma insulin
    X'     = −p2·X + p2·SI·(I − Ib)             (1/min)  insulin action
    G'     = −(SG + X)·G + SG·Gb + Ra/VG        (mg/dL)  plasma glucose
    IG'    = (G − IG)/tau                       (mg/dL)  interstitial glucose (CGM)

``insulin`` is the subcutaneous delivery in U/min: the constant ``basal`` plus records into
``Isc1`` (boluses in U); meals are records into ``qsto1`` (mg, as infusions in mg/min).
``Ib`` is the plasma insulin of the patient's usual basal (the level at which glucose rests at
``Gb``): keep it when replaying an altered basal. Unlike UVA/Padova's 26 parameters, the six
that a day of CGM informs (``Gb, SG, SI, p2, kempt, kabs``; SG and p2 weakly) are estimated by
the CGM twin; the insulin kinetics, volumes and CGM lag are fixed at the medians of the 30
UVA/Padova reference patients (simglucose 0.2.11's table) — see ``priors/t1d_cgm_twin.toml``.
"""

from __future__ import annotations

import jax.numpy as jnp

from cohort.models.base import WEIGHT_ALIASES, Model, Output, Parameter, State, Tree, register

_PER_MIN = "1/min"
MAX_RATE = 2.0  # 1/min; as uva_padova: faster transfers are not physiological here

_STATES = (
    State("qsto1", "mg", "carbohydrate in the stomach, solid phase"),
    State("qsto2", "mg", "carbohydrate in the stomach, liquid phase"),
    State("qgut", "mg", "carbohydrate in the gut"),
    State("Isc1", "U", "subcutaneous insulin, first depot"),
    State("Isc2", "U", "subcutaneous insulin, second depot"),
    State("I", "µU/mL", "plasma insulin"),
    State("X", _PER_MIN, "remote insulin action (relative to the basal Ib)", nonnegative=False),
    State("G", "mg/dL", "plasma glucose"),
    State("IG", "mg/dL", "interstitial glucose (what a CGM reads, before its noise)"),
)

# Fixed-by-default values: medians of the 30 UVA/Padova reference patients (simglucose 0.2.11
# vpatient_params.csv): Vg 1.85 dL/kg, kd 0.0162/min, ka2 0.0171/min, Vi 0.0535 L/kg,
# 1/ksc = 11.2 min, f = 0.9; ke = m4 + m2·m30/(m1 + m30) = 0.278/min, their plasma insulin
# clearance with the liver compartment at quasi-steady state.
_PARAMETERS = (
    Parameter("BW", "kg", 70.0, "body weight", 5.0, 300.0, WEIGHT_ALIASES),
    Parameter(
        "Gb", "mg/dL", 140.0, "basal glucose (rest level at the usual basal insulin)", 20, 600
    ),
    Parameter("G0", "mg/dL", 140.0, "glucose at time 0 (plasma and interstitial)", 10, 800),
    Parameter("SG", _PER_MIN, 0.01, "glucose effectiveness", 1e-6, 1.0),
    Parameter("SI", "mL/µU/min", 5e-4, "insulin sensitivity", 1e-8, 1.0),
    Parameter("p2", _PER_MIN, 0.02, "rate of remote insulin action", 1e-5, MAX_RATE),
    Parameter("kempt", _PER_MIN, 0.05, "gastric emptying rate", 1e-5, MAX_RATE),
    Parameter("kabs", _PER_MIN, 0.03, "intestinal absorption rate", 1e-5, MAX_RATE),
    Parameter("f", "1", 0.9, "fraction of the meal appearing in plasma", 0.0, 1.0),
    Parameter("VG", "dL/kg", 1.85, "glucose distribution volume", 0.1, 10.0),
    Parameter(
        "kd", _PER_MIN, 0.0162, "subcutaneous insulin transfer, depot 1 -> 2", 1e-5, MAX_RATE
    ),
    Parameter("ka2", _PER_MIN, 0.0171, "subcutaneous insulin absorption", 1e-5, MAX_RATE),
    Parameter("ke", _PER_MIN, 0.278, "plasma insulin clearance", 1e-4, 10.0),
    Parameter("VI", "L/kg", 0.0535, "insulin distribution volume", 1e-3, 10.0),
    Parameter("tau", "min", 11.2, "CGM (interstitial) lag time constant", 0.1, 60.0),
    Parameter("basal", "U/min", 0.015, "constant basal insulin delivery", 0.0, 1.0),
    Parameter(
        "Ib", "µU/mL", 14.4077, "plasma insulin at the usual basal (glucose rests at Gb)", 0, 1e4
    ),
)


def insulin_per_unit(p: Tree):
    """Plasma insulin concentration (µU/mL) per U absorbed: 1000 / (VI·BW)."""
    return 1000.0 / (p["VI"] * p["BW"])


def basal_plasma_insulin(p: Tree, basal=None):
    """Steady-state plasma insulin (µU/mL) under a constant delivery (default ``basal``)."""
    rate = p["basal"] if basal is None else basal
    return rate * insulin_per_unit(p) / p["ke"]


class T1DMinimal(Model):
    """Oral minimal model + subcutaneous insulin + CGM lag: 9 states, minutes."""

    name = "t1d_minimal"
    description = "reduced T1D model for CGM twins (oral minimal model + SC insulin), minutes"
    states = _STATES
    parameters = _PARAMETERS
    outputs = (
        Output("CGM", "mg/dL", lambda y, p: y["IG"], "interstitial glucose (noise-free CGM)"),
        Output("BG", "mg/dL", lambda y, p: y["G"], "plasma glucose"),
        Output("insulin", "µU/mL", lambda y, p: y["I"], "plasma insulin"),
    )
    dose_targets = ("qsto1", "Isc1")
    time_units = "min"
    fast_dt = 1.0

    def record_notes(self, table) -> list[str]:
        from cohort.models.glucose.meals import record_notes

        return record_notes(table, bolus_meals=False)

    def initial(self, p: Tree) -> Tree:
        """Empty gut, insulin at the ``basal`` steady state, glucose at ``G0`` with ``X`` at
        its steady state for that insulin (0 when ``Ib`` is the basal's plasma insulin)."""
        i0 = basal_plasma_insulin(p)
        zero = jnp.zeros_like(i0)
        return {
            "qsto1": zero,
            "qsto2": zero,
            "qgut": zero,
            "Isc1": p["basal"] / p["kd"],
            "Isc2": p["basal"] / p["ka2"],
            "I": i0,
            "X": p["SI"] * (i0 - p["Ib"]),
            "G": p["G0"] + zero,
            "IG": p["G0"] + zero,
        }

    def rhs(self, t, y: Tree, p: Tree, u: Tree) -> Tree:
        ra = p["f"] * p["kabs"] * y["qgut"] / p["BW"]  # mg/kg/min
        insulin = u["Isc1"] + p["basal"]
        return {
            "qsto1": u["qsto1"] - p["kempt"] * y["qsto1"],
            "qsto2": p["kempt"] * (y["qsto1"] - y["qsto2"]),
            "qgut": p["kempt"] * y["qsto2"] - p["kabs"] * y["qgut"],
            "Isc1": insulin - p["kd"] * y["Isc1"],
            "Isc2": p["kd"] * y["Isc1"] - p["ka2"] * y["Isc2"],
            "I": p["ka2"] * y["Isc2"] * insulin_per_unit(p) - p["ke"] * y["I"],
            "X": p["p2"] * (p["SI"] * (y["I"] - p["Ib"]) - y["X"]),
            "G": -(p["SG"] + y["X"]) * y["G"] + p["SG"] * p["Gb"] + ra / p["VG"],
            "IG": (y["G"] - y["IG"]) / p["tau"],
        }


@register("t1d_minimal")
def _t1d_minimal() -> Model:
    return T1DMinimal()
