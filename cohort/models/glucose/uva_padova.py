"""UVA/Padova S2008 type-1-diabetes simulator (Dalla Man et al. 2007; Kovatchev et al. 2009).

The equations are those of simglucose 0.2.11's ``T1DPatient.model`` (MIT, J. Xie), written as a
pure, elementwise per-patient function: nonlinear gastric emptying that depends on the size of
the last meal, renal excretion above ``ke2``, insulin-dependent utilisation ``Uid`` with
``Vm0 + Vmx·X``, endogenous production clipped at 0 and simglucose's "stay non-negative"
gating of the derivatives. Time is in minutes.

Inputs (zero-order rates, i.e. NONMEM infusion records, or boluses = state jumps):

* ``qsto1`` — carbohydrate eaten, **mg/min** (simglucose eats announced meals at 5 g/min =
  5000 mg/min). Give meals as infusions: the eating bout is what resets the meal memory.
* ``Isc1`` — subcutaneous insulin, **U/min** (U for boluses), like simglucose's action. The two
  subcutaneous depots ``Isc1``/``Isc2`` are held in U (simglucose: pmol/kg; 1 U = 6000 pmol, so
  ``Isc[pmol/kg] = Isc[U]·6000/BW``) so that one record drives patients of any body weight.
* Basal insulin ``basal_scale·u2ss·BW/6000`` U/min is always delivered (``u2ss`` in
  pmol/kg/min), so a patient with no records stays at the basal steady state; set
  ``basal_scale=0`` to deliver all insulin from records.

Meal memory. simglucose keeps ``Dbar = last_Qsto + last_foodtaken`` in Python-side variables,
reset when an eating bout starts: the stomach content at that moment plus the food eaten since
(the current minute's included). Here it lives in six extra states so that cohorts run
vectorised and ``rhs`` stays pure. Two banks ``a``/``b`` of ``(meal_q0, meal_eaten)`` alternate
between bouts: the active bank holds the stomach content at its bout start and accumulates the
food eaten; the idle bank follows ``qsto1 + qsto2`` (exact feed-forward of its derivative plus
relaxation at ``K_MEMORY``) and forgets its food, ready for the next bout. The bank is chosen
by the parity of a bout counter kept by a continuous master–slave flip-flop: while eating,
``bouts`` relaxes to ``round(bouts_held) + 1``; between bouts ``bouts_held`` relaxes to
``round(bouts)`` (rate ``K_FLIP``, so any bout or gap longer than ~0.6 min toggles it). Both
rates keep explicit RK4 stable up to ~2.3 min steps, the limit that the fastest physiological
rates (``kabs`` up to 1.23/min in the reference table) impose anyway.

While eating (``u[qsto1] > 0``) ``Dbar = meal_q0 + meal_eaten + lead(t)·u`` of the active bank.
``lead(t) = 1 − frac(t)`` min reproduces simglucose's bookkeeping, which counts the whole current
clock minute's food as eaten from the start of that minute (its eating is always aligned to whole
minutes); at whole minutes, where that sawtooth jumps, ``lead = 0.5`` (the mean of both one-sided
limits). Adaptive solvers thus follow simglucose's per-minute ``Dbar``, while 1-min RK4, whose
stages fall on whole and half minutes, sees the minute-average ``lead = 0.5`` (patients whose
``b`` is near 1 switch emptying sharply and are the most sensitive to this). The only other
approximation is the idle bank's relaxation: ``exp(-K_MEMORY·Δ)`` of the stomach-content change
since the previous bout start remains at a bout start ``Δ`` minutes after the previous one.

Measured against simglucose (Gsub over 24 h, all 30 patients, max |error|): one 80 g meal —
diffrax 0.0012 mg/dL, 1-min RK4 0.73 (median 0.017; 0.28 at dt 0.5, 0.14 at dt 0.25); three
meals plus 12 g, 4 g and 3 g snacks (the last two 5 min apart) — diffrax 0.36, RK4 0.65 (the
29 patients whose glucose stays above 0; see the fast path's negative-state check).
"""

from __future__ import annotations

import jax.numpy as jnp

from cohort.models.base import (
    WEIGHT_ALIASES,
    Model,
    Output,
    Parameter,
    State,
    Tree,
    derived,
    register,
)

PMOL_PER_U = 6000.0  # simglucose's insulin conversion (U -> pmol)
K_MEMORY = 1.2  # 1/min, relaxation of the idle meal-memory bank (see module docstring)
K_FLIP = 1.2  # 1/min, relaxation of the bout-counter flip-flop
EATING_THRESHOLD = 1e-6  # mg/min of CHO below which the patient is not eating
_MEMORY = ("meal_q0_a", "meal_eaten_a", "meal_q0_b", "meal_eaten_b", "bouts", "bouts_held")

_STATES = (
    State("qsto1", "mg", "glucose in the stomach, solid phase"),
    State("qsto2", "mg", "glucose in the stomach, liquid phase"),
    State("qgut", "mg", "glucose in the intestine"),
    State("Gp", "mg/kg", "glucose mass in plasma and rapidly equilibrating tissues"),
    State("Gt", "mg/kg", "glucose mass in slowly equilibrating tissues"),
    State("Ip", "pmol/kg", "insulin mass in plasma"),
    State(
        "X",
        "pmol/L",
        "insulin action on glucose utilisation (remote insulin minus Ib)",
        nonnegative=False,
    ),
    State("I1", "pmol/L", "delayed insulin signal, first compartment (I')"),
    State("Id", "pmol/L", "delayed insulin action on production (XL)"),
    State("Il", "pmol/kg", "insulin mass in the liver"),
    State("Isc1", "U", "subcutaneous insulin, non-monomeric (simglucose: pmol/kg)"),
    State("Isc2", "U", "subcutaneous insulin, monomeric (simglucose: pmol/kg)"),
    State("Gs", "mg/kg", "subcutaneous glucose mass (Gsub = Gs/Vg)"),
    State("meal_q0_a", "mg", "meal memory bank a: stomach content at its bout start"),
    State("meal_eaten_a", "mg", "meal memory bank a: carbohydrate eaten in its bout"),
    State("meal_q0_b", "mg", "meal memory bank b: stomach content at its bout start"),
    State("meal_eaten_b", "mg", "meal memory bank b: carbohydrate eaten in its bout"),
    State("bouts", "1", "eating-bout counter (flip-flop master, updated while eating)"),
    State("bouts_held", "1", "eating-bout counter (flip-flop slave, updated between bouts)"),
)

_PER_MIN = "1/min"
# Defaults: adolescent#001 of simglucose 0.2.11's vpatient_params.csv. Bounds are wide
# plausibility ranges (outside them a patient is flagged INVALID_PARAMETERS, and sampled patients
# are redrawn). First-order rates are at most MAX_RATE: the fastest of the 30 reference patients
# is kabs = 1.23/min, a time constant under 30 s is not physiological for any of these
# transfers, and explicit RK4 at the 1-min step is stable only for rates below 2.78/min (the
# log-normal prior put 0.4 % of adults above 2/min, up to 4/min, which blew up at 1-min steps).
MAX_RATE = 2.0  # 1/min
_PARAMETERS = (
    Parameter("BW", "kg", 68.706, "body weight", 5.0, 300.0, WEIGHT_ALIASES),
    Parameter("Gb", "mg/dL", 149.02, "basal plasma glucose (defines the initial state)", 20, 600),
    Parameter("Ib", "pmol/L", 97.554, "basal plasma insulin (reference of X)", 1.0, 2000.0),
    Parameter("u2ss", "pmol/kg/min", 1.21697571391, "basal insulin delivery", 0.0, 50.0),
    Parameter("basal_scale", "1", 1.0, "fraction of u2ss delivered as constant basal", 0, 100),
    Parameter("kabs", _PER_MIN, 0.091043, "intestinal absorption rate", 1e-5, MAX_RATE),
    Parameter("kmax", _PER_MIN, 0.015865, "maximal gastric emptying rate", 1e-5, MAX_RATE),
    Parameter("kmin", _PER_MIN, 0.0083338, "minimal gastric emptying rate", 1e-6, MAX_RATE),
    Parameter("b", "1", 0.83072, "fraction of the meal at which emptying halves (down)", 0, 1),
    Parameter("d", "1", 0.32294, "fraction of the meal at which emptying recovers (up)", 0, 1),
    Parameter("f", "1", 0.9, "fraction of intestinal glucose appearing in plasma", 0.0, 1.0),
    Parameter("Vg", "dL/kg", 1.6818, "glucose distribution volume", 0.1, 10.0),
    Parameter("k1", _PER_MIN, 0.057252, "glucose transfer plasma -> slow tissues", 1e-6, MAX_RATE),
    Parameter("k2", _PER_MIN, 0.067738, "glucose transfer slow tissues -> plasma", 1e-6, MAX_RATE),
    Parameter(
        "kp1", "mg/kg/min", 11.5048231338, "EGP extrapolated at zero glucose/insulin", 0, 1e3
    ),
    Parameter("kp2", _PER_MIN, 0.023318, "liver glucose effectiveness", 0.0, MAX_RATE),
    Parameter("kp3", "mg/kg/min per pmol/L", 0.023253, "insulin action on the liver", 0.0, 10.0),
    Parameter("ki", _PER_MIN, 0.0088838, "delay of insulin action on production", 1e-6, MAX_RATE),
    Parameter("Fsnc", "mg/kg/min", 1.0, "insulin-independent utilisation", 0.0, 100.0),
    Parameter("Vm0", "mg/kg/min", 5.92854753098, "basal maximal utilisation", 0.0, 1e3),
    Parameter("Vmx", "mg/kg/min per pmol/L", 0.074667, "insulin action on utilisation", 0, 10),
    Parameter("Km0", "mg/kg", 260.89, "Michaelis constant of utilisation", 1e-3, 1e5),
    Parameter("p2u", _PER_MIN, 0.021344, "rate of insulin action on utilisation", 1e-6, MAX_RATE),
    Parameter("ke1", _PER_MIN, 0.0005, "renal glomerular filtration rate", 0.0, 1.0),
    Parameter("ke2", "mg/kg", 339.0, "renal threshold of glucose", 0.0, 1e4),
    Parameter("Vi", "L/kg", 0.048153, "insulin distribution volume", 1e-4, 10.0),
    Parameter("m1", _PER_MIN, 0.15221, "insulin transfer liver -> plasma", 0.0, MAX_RATE),
    Parameter("m2", _PER_MIN, 0.259067825939, "insulin transfer plasma -> liver", 0.0, MAX_RATE),
    Parameter("m30", _PER_MIN, 0.228315, "hepatic insulin clearance", 0.0, MAX_RATE),
    Parameter("m4", _PER_MIN, 0.103627130376, "peripheral insulin clearance", 0.0, MAX_RATE),
    Parameter("kd", _PER_MIN, 0.0185, "subcutaneous insulin dissociation", 1e-6, MAX_RATE),
    Parameter("ka1", _PER_MIN, 0.0025, "absorption of non-monomeric insulin", 1e-6, MAX_RATE),
    Parameter("ka2", _PER_MIN, 0.0115, "absorption of monomeric insulin", 1e-6, MAX_RATE),
    Parameter("ksc", _PER_MIN, 0.056, "plasma -> subcutaneous glucose transfer", 1e-6, MAX_RATE),
)


def _nonneg(x, dx):
    """simglucose's ``(x >= 0) * dxdt``: a compartment at (or below) zero stops changing."""
    return jnp.where(x >= 0, dx, 0.0)


def derived_parameters(p: Tree) -> Tree:
    """Parameter-only subexpressions of :func:`physiology_rhs` (rates, reciprocals, unit
    conversions), computed once per solve rather than in every right-hand-side evaluation."""
    to_pmol = PMOL_PER_U / p["BW"]
    return {
        **{k: p[k] for k in ("kmax", "kmin", "kabs", "b", "d", "kp1", "kp2", "kp3", "Fsnc")},
        **{k: p[k] for k in ("ke1", "ke2", "k1", "k2", "Vm0", "Vmx", "Km0", "m1", "m2")},
        **{k: p[k] for k in ("p2u", "Ib", "ki", "kd", "ka2", "ksc")},
        "half_dk": 0.5 * (p["kmax"] - p["kmin"]),
        "a_scale": 2.5 / (1.0 - p["b"]),  # simglucose's aa = 5/(2·Dbar·(1-b))
        "c_scale": 2.5 / p["d"],
        "ra_scale": p["f"] * p["kabs"] / p["BW"],
        "abs1": p["ka1"] * to_pmol,
        "abs2": p["ka2"] * to_pmol,
        "m24": p["m2"] + p["m4"],
        "m130": p["m1"] + p["m30"],
        "inv_vi": 1.0 / p["Vi"],
        "kad": p["ka1"] + p["kd"],
        "basal": basal_insulin_rate(p),
    }


def gastric_coefficients(dbar, d: Tree) -> Tree:
    """Coefficients of the emptying rate for a meal size ``dbar`` (mg; constant over a
    simglucose step): ``kgut = kmin + half_dk·(tanh(aa·(qsto − bD)) − tanh(cc·(qsto − dD)) + 2)``,
    which is ``kmax`` when ``dbar <= 0`` (``aa = cc = 0``)."""
    pos = dbar > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, dbar, 1.0), 0.0)
    return {"aa": d["a_scale"] * inv, "cc": d["c_scale"] * inv, "bD": d["b"] * dbar,
            "dD": d["d"] * dbar}  # fmt: skip


def gastric_emptying_rate(qsto, dbar, p: Tree):
    """Nonlinear gastric emptying ``kgut`` (1/min) given the stomach content and meal size."""
    d = derived_parameters(p)
    return _kgut(qsto, d, gastric_coefficients(dbar, d))


def _kgut(qsto, d: Tree, g: Tree):
    shape = jnp.tanh(g["aa"] * (qsto - g["bD"])) - jnp.tanh(g["cc"] * (qsto - g["dD"])) + 2.0
    return d["kmin"] + d["half_dk"] * shape


def physiology_rhs(y: Tree, d: Tree, g: Tree, meal, insulin) -> tuple[Tree, object]:
    """Derivatives of the 13 physiological states and the gastric emptying flux (mg/min).

    ``d``: :func:`derived_parameters`; ``g``: :func:`gastric_coefficients` of the current meal
    size; ``meal``: carbohydrate eaten, mg/min; ``insulin``: total subcutaneous insulin, U/min
    (basal included). Elementwise only: runs on scalars and on ``[N]`` arrays alike.
    """
    qsto = y["qsto1"] + y["qsto2"]
    emptying = _kgut(qsto, d, g) * y["qsto2"]
    gp, gt, ip = y["Gp"], y["Gt"], y["Ip"]
    egp = jnp.maximum(d["kp1"] - d["kp2"] * gp - d["kp3"] * y["Id"], 0.0)
    renal = d["ke1"] * jnp.maximum(gp - d["ke2"], 0.0)
    d_gp = egp + d["ra_scale"] * y["qgut"] - d["Fsnc"] - renal - d["k1"] * gp + d["k2"] * gt
    uid = (d["Vm0"] + d["Vmx"] * y["X"]) * gt / (d["Km0"] + gt)
    d_gt = -uid + d["k1"] * gp - d["k2"] * gt
    absorbed = d["abs1"] * y["Isc1"] + d["abs2"] * y["Isc2"]
    d_ip = -d["m24"] * ip + d["m1"] * y["Il"] + absorbed
    d_il = -d["m130"] * y["Il"] + d["m2"] * ip
    plasma_insulin = ip * d["inv_vi"]
    dy = {
        "qsto1": meal - d["kmax"] * y["qsto1"],
        "qsto2": d["kmax"] * y["qsto1"] - emptying,
        "qgut": emptying - d["kabs"] * y["qgut"],
        "Gp": _nonneg(gp, d_gp),
        "Gt": _nonneg(gt, d_gt),
        "Ip": _nonneg(ip, d_ip),
        "X": d["p2u"] * (plasma_insulin - d["Ib"] - y["X"]),
        "I1": d["ki"] * (plasma_insulin - y["I1"]),
        "Id": d["ki"] * (y["I1"] - y["Id"]),
        "Il": _nonneg(y["Il"], d_il),
        "Isc1": _nonneg(y["Isc1"], insulin - d["kad"] * y["Isc1"]),
        "Isc2": _nonneg(y["Isc2"], d["kd"] * y["Isc1"] - d["ka2"] * y["Isc2"]),
        "Gs": _nonneg(y["Gs"], d["ksc"] * (gp - y["Gs"])),
    }
    return dy, emptying


def _minute_lead(t):
    """Minutes of eating counted ahead in ``Dbar`` (see the module docstring)."""
    frac = t - jnp.floor(t)
    return jnp.where(frac == 0, 0.5, 1.0 - frac)


def _bank_a_active(y: Tree, eating):
    """Bank ``a`` serves odd-numbered bouts: the one being eaten, or else the last one."""
    count = jnp.where(eating, jnp.round(y["bouts_held"]) + 1.0, jnp.round(y["bouts"]))
    return jnp.mod(count, 2.0) == 1.0


def _memory_derivatives(y: Tree, meal, eating, bank_a, qsto, d_qsto) -> Tree:
    """The active bank holds its start content and eats; the idle bank tracks the stomach."""
    out = {}
    for bank, active in (("a", bank_a), ("b", ~bank_a)):
        q0, eaten = y[f"meal_q0_{bank}"], y[f"meal_eaten_{bank}"]
        out[f"meal_q0_{bank}"] = jnp.where(active, 0.0, d_qsto + K_MEMORY * (qsto - q0))
        out[f"meal_eaten_{bank}"] = jnp.where(active, meal, -K_MEMORY * eaten)
    out["bouts"] = jnp.where(eating, K_FLIP * (jnp.round(y["bouts_held"]) + 1.0 - y["bouts"]), 0.0)
    out["bouts_held"] = jnp.where(eating, 0.0, K_FLIP * (jnp.round(y["bouts"]) - y["bouts_held"]))
    return out


def basal_insulin_rate(p: Tree):
    """Constant basal insulin delivery in U/min (simglucose: ``u2ss·BW/6000``)."""
    return p["basal_scale"] * p["u2ss"] * p["BW"] / PMOL_PER_U


def basal_insulin_state(p: Tree) -> Tree:
    """Insulin subsystem at steady state under the basal delivery ``u2ss`` (pmol/kg/min)."""
    isc1 = p["u2ss"] / (p["ka1"] + p["kd"])  # pmol/kg
    isc2 = p["kd"] * isc1 / p["ka2"]
    ip = p["u2ss"] / (p["m2"] + p["m4"] - p["m1"] * p["m2"] / (p["m1"] + p["m30"]))
    to_units = p["BW"] / PMOL_PER_U
    return {
        "Isc1": isc1 * to_units,
        "Isc2": isc2 * to_units,
        "Ip": ip,
        "Il": p["m2"] * ip / (p["m1"] + p["m30"]),
        "I": ip / p["Vi"],
    }


class UvaPadova(Model):
    """UVA/Padova S2008: 13 physiological states plus 6 meal-memory states, minutes."""

    name = "uva_padova"
    description = "UVA/Padova S2008 T1D simulator (simglucose 0.2.11 equations), minutes"
    states = _STATES
    parameters = _PARAMETERS
    outputs = (
        Output("Gsub", "mg/dL", lambda y, p: y["Gs"] / p["Vg"], "subcutaneous glucose (CGM)"),
        Output("BG", "mg/dL", lambda y, p: y["Gp"] / p["Vg"], "plasma glucose"),
        Output("insulin", "pmol/L", lambda y, p: y["Ip"] / p["Vi"], "plasma insulin"),
    )
    dose_targets = ("qsto1", "Isc1")
    time_units = "min"
    fast_dt = 1.0

    def record_notes(self, table) -> list[str]:
        from cohort.models.glucose.meals import record_notes

        return record_notes(table, bolus_meals=True)

    def initial(self, p: Tree) -> Tree:
        """Basal steady state: empty gut, insulin at the ``u2ss`` steady state, ``Gp = Gb·Vg``.

        ``Gt`` solves the plasma-glucose balance; the tissue balance then holds when ``Vm0`` is
        consistent with the basal state (as in simglucose's table and :func:`sample_patients`).
        """
        ins = basal_insulin_state(p)
        gp = p["Gb"] * p["Vg"]
        egp = jnp.maximum(p["kp1"] - p["kp2"] * gp - p["kp3"] * ins["I"], 0.0)
        renal = p["ke1"] * jnp.maximum(gp - p["ke2"], 0.0)
        gt = (p["Fsnc"] + renal + p["k1"] * gp - egp) / p["k2"]
        zero = jnp.zeros_like(gp)
        return {
            "qsto1": zero,
            "qsto2": zero,
            "qgut": zero,
            "Gp": gp,
            "Gt": gt,
            "Ip": ins["Ip"],
            "X": ins["I"] - p["Ib"],
            "I1": ins["I"],
            "Id": ins["I"],
            "Il": ins["Il"],
            "Isc1": ins["Isc1"],
            "Isc2": ins["Isc2"],
            "Gs": gp,
            **dict.fromkeys(_MEMORY, zero),
        }

    def prepare(self, p: Tree) -> Tree:
        """Parameter-only coefficients once per patient (not in every RHS evaluation)."""
        return {**p, "_uva": derived_parameters(p)}

    def rhs(self, t, y: Tree, p: Tree, u: Tree) -> Tree:
        meal = u["qsto1"]  # mg/min
        eating = meal > EATING_THRESHOLD  # robust to round-off left when infusions end
        qsto = y["qsto1"] + y["qsto2"]
        bank_a = _bank_a_active(y, eating)
        dbar = jnp.where(
            bank_a, y["meal_q0_a"] + y["meal_eaten_a"], y["meal_q0_b"] + y["meal_eaten_b"]
        )
        dbar = dbar + jnp.where(eating, _minute_lead(t) * meal, 0.0)
        d = derived(p, "_uva", lambda: derived_parameters(p))
        dy, emptying = physiology_rhs(
            y, d, gastric_coefficients(dbar, d), meal, u["Isc1"] + d["basal"]
        )
        return {**dy, **_memory_derivatives(y, meal, eating, bank_a, qsto, meal - emptying)}

    # The closed-loop engine steps the physiology with simglucose's discrete meal memory.
    physiology_states = tuple(s.name for s in _STATES if s.name not in _MEMORY)
    derived = staticmethod(derived_parameters)
    gastric = staticmethod(gastric_coefficients)
    physiology_rhs = staticmethod(physiology_rhs)


@register("uva_padova")
def _uva_padova() -> Model:
    return UvaPadova()
