"""Linear PK engines against textbook analytic solutions (and scipy references).

Every linear-PK case runs through ``closed_form`` and the ``diffrax`` reference in float64 and
must match the analytic curve to 1e-6 of the trajectory's peak concentration. Each test
simulates a small batch with per-patient regimens (one compile per model and method).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.special import lambertw

import cohort
from cohort import Regimen
from cohort.inference.predict import closed_form_subject

METHODS = ("closed_form", "diffrax")
TOL = 1e-6
TIMES = cohort.grid(0.0, 48.0, 0.5)

# One instance per model: the engine caches compiled solvers per model instance.
PK1_IV = cohort.models.get("pk1_iv")
PK1_ORAL = cohort.models.get("pk1_oral")
PK2_IV = cohort.models.get("pk2_iv")
PK2_ORAL = cohort.models.get("pk2_oral")
PK3_IV = cohort.models.get("pk3_iv")
PK3_ORAL = cohort.models.get("pk3_oral")
PK1_MM = cohort.models.get("pk1_mm_iv")


# -- analytic building blocks (single dose given at tau = 0; zero for tau < 0) --------------------
def bolus_1cpt(tau, dose, cl, v):
    k = cl / v
    return np.where(tau >= 0, dose / v * np.exp(-k * np.maximum(tau, 0.0)), 0.0)


def infusion_1cpt(tau, rate, dur, cl, v):
    k = cl / v
    tau = np.asarray(tau, float)
    during = rate / cl * (1.0 - np.exp(-k * np.clip(tau, 0.0, dur)))
    after = rate / cl * (1.0 - np.exp(-k * dur)) * np.exp(-k * np.maximum(tau - dur, 0.0))
    return np.where(tau < 0, 0.0, np.where(tau <= dur, during, after))


def oral_1cpt(tau, dose, f, ka, cl, v):
    """Bateman function (tau measured from the end of the lag)."""
    k = cl / v
    s = np.maximum(tau, 0.0)
    c = f * dose * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))
    return np.where(tau >= 0, c, 0.0)


def macro_2cpt(cl, v1, q, v2):
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s, p = k10 + k12 + k21, k10 * k21
    root = np.sqrt(s * s - 4.0 * p)
    return (s + root) / 2.0, (s - root) / 2.0, k21


def bolus_2cpt(tau, dose, cl, v1, q, v2):
    alpha, beta, k21 = macro_2cpt(cl, v1, q, v2)
    s = np.maximum(tau, 0.0)
    a = (alpha - k21) / (alpha - beta)
    b = (k21 - beta) / (alpha - beta)
    c = dose / v1 * (a * np.exp(-alpha * s) + b * np.exp(-beta * s))
    return np.where(tau >= 0, c, 0.0)


def oral_2cpt(tau, dose, f, ka, cl, v1, q, v2):
    alpha, beta, k21 = macro_2cpt(cl, v1, q, v2)
    s = np.maximum(tau, 0.0)
    c = (
        (k21 - alpha) / ((ka - alpha) * (beta - alpha)) * np.exp(-alpha * s)
        + (k21 - beta) / ((ka - beta) * (alpha - beta)) * np.exp(-beta * s)
        + (k21 - ka) / ((alpha - ka) * (beta - ka)) * np.exp(-ka * s)
    )
    return np.where(tau >= 0, f * dose * ka / v1 * c, 0.0)


def linear_matrix(cl, vols, flows, ka=None):
    """Rate matrix of amounts [depot?, central, periph...] for an independent expm reference."""
    n = len(vols)
    a = np.zeros((n, n))
    a[0, 0] = -cl / vols[0]
    for j, (q, vj) in enumerate(zip(flows, vols[1:]), start=1):
        a[0, 0] -= q / vols[0]
        a[0, j] = q / vj
        a[j, 0] = q / vols[0]
        a[j, j] = -q / vj
    if ka is None:
        return a
    full = np.zeros((n + 1, n + 1))
    full[1:, 1:] = a
    full[0, 0] = -ka
    full[1, 0] = ka
    return full


def expm_bolus(tau, a, x0, v_central, central_idx):
    out = np.zeros(len(tau))
    for i, s in enumerate(tau):
        if s >= 0:
            out[i] = (expm(a * s) @ x0)[central_idx] / v_central
    return out


def dose_times(time, ii, addl):
    return [time + j * ii for j in range(addl + 1)]


def simulate(model, pop, dosing, method, times=TIMES, **kw):
    ds = cohort.simulate(model, pop, dosing, times, method=method, **kw)
    np.testing.assert_array_equal(ds.status.values, 0)
    return ds.conc.values


def assert_close(got, ref, tol=TOL):
    """Max error relative to each trajectory's peak (patients on axis 0)."""
    got, ref = np.atleast_2d(got), np.atleast_2d(ref)
    assert got.shape == ref.shape
    peak = np.max(np.abs(ref), axis=1)
    assert np.all(peak > 0)
    err = np.max(np.abs(got - ref), axis=1) / peak
    assert np.all(err <= tol), f"relative errors per patient: {err}"


# -- 1-compartment IV, including SS=1 bolus ------------------------------------------------------
SS_II = 12.0
LAST = 3 * SS_II  # SS=1 dose at 0 with ADDL=3: doses at 0, 12, 24, 36
PK1_POP = {
    "CL": np.array([2.0, 5.0, 1.2, 8.0, 3.0, 3.0]),
    "V": np.array([20.0, 40.0, 15.0, 60.0, 25.0, 25.0]),
}


def long_run(amt, **kw):
    """The regimen repeated for 40 intervals before t = 0 (at steady state by then), to 36 h."""
    return [Regimen(amt, "central", time=-40 * SS_II, ii=SS_II, addl=43, **kw)]


PK1_REGIMENS = [
    [Regimen(100.0, "central")],  # single bolus
    [Regimen(250.0, "central", time=1.3, ii=12.0, addl=3)],  # repeated bolus off the grid
    [Regimen(100.0, "central", duration=2.0, ii=12.0, addl=2)],  # repeated 2-h infusions
    [Regimen(60.0, "central", time=3.1, rate=35.0), Regimen(40.0, "central", time=20.0)],
    [Regimen(100.0, "central", ii=SS_II, addl=3, ss=True)],
    long_run(100.0),
]


def ss_bolus_1cpt(tau, dose, cl, v, ii):
    """Css(t) = D/V e^{-k tau}/(1 - e^{-k ii}), tau = time since the last dose."""
    k = cl / v
    return dose / v * np.exp(-k * tau) / (1.0 - np.exp(-k * ii))


def ss_infusion_1cpt(tau, rate, dur, cl, v, ii):
    k = cl / v
    acc = 1.0 - np.exp(-k * ii)
    peak = rate / cl * (1.0 - np.exp(-k * dur)) / acc
    trough = peak * np.exp(-k * (ii - dur))
    during = rate / cl * (1.0 - np.exp(-k * tau)) + trough * np.exp(-k * tau)
    return np.where(tau <= dur, during, peak * np.exp(-k * (tau - dur)))


def pk1_reference(times):
    cl, v = PK1_POP["CL"], PK1_POP["V"]
    ref = np.zeros((6, len(times)))
    ref[0] = bolus_1cpt(times, 100.0, cl[0], v[0])
    for td in dose_times(1.3, 12.0, 3):
        ref[1] += bolus_1cpt(times - td, 250.0, cl[1], v[1])
    for td in dose_times(0.0, 12.0, 2):
        ref[2] += infusion_1cpt(times - td, 50.0, 2.0, cl[2], v[2])
    ref[3] = infusion_1cpt(times - 3.1, 35.0, 60.0 / 35.0, cl[3], v[3])
    ref[3] += bolus_1cpt(times - 20.0, 40.0, cl[3], v[3])
    # Steady state holds while dosing continues, then washes out after the last dose.
    tau = np.where(times < LAST + SS_II, np.mod(times, SS_II), times - LAST)
    ref[4] = ref[5] = ss_bolus_1cpt(tau, 100.0, cl[4], v[4], SS_II)
    return ref


@pytest.mark.parametrize("method", METHODS)
def test_pk1_iv_bolus_infusion_and_steady_state(method):
    got = simulate(PK1_IV, PK1_POP, PK1_REGIMENS, method)
    assert_close(got, pk1_reference(TIMES))
    # Right-continuity at a dose: the save at t = 0 already holds the bolus.
    assert got[0, 0] == pytest.approx(100.0 / 20.0, rel=1e-12)
    # During vs after infusion: the 2-h infusion peaks at its end.
    assert np.argmax(got[2, :20]) == 4  # t = 2.0 h
    # SS=1 equals the end of a long repeated regimen; t = 0 holds the analytic SS peak.
    assert_close(got[4], got[5])
    assert got[4, 0] == pytest.approx(ss_bolus_1cpt(0.0, 100.0, 3.0, 25.0, SS_II), rel=TOL)


@pytest.mark.parametrize("method", METHODS)
def test_pk1_steady_state_infusion(method):
    dosing = [
        [Regimen(120.0, "central", rate=30.0, ii=SS_II, addl=3, ss=True)],
        long_run(120.0, rate=30.0),
    ]
    cl, v = 2.0, 30.0
    got = simulate(PK1_IV, {"CL": [cl, cl], "V": [v, v]}, dosing, method)
    ref = ss_infusion_1cpt(np.mod(TIMES, SS_II), 30.0, 4.0, cl, v, SS_II)
    peak = ss_infusion_1cpt(4.0, 30.0, 4.0, cl, v, SS_II)
    washout = TIMES >= LAST + 4.0
    ref = np.where(washout, peak * np.exp(-cl / v * (TIMES - LAST - 4.0)), ref)
    assert_close(got, np.stack([ref, ref]))
    assert_close(got[0], got[1])


# -- 1-compartment oral ---------------------------------------------------------------------------
ORAL_POP = {
    "CL": np.array([3.0, 1.5, 6.0, 2.0, 2.0]),
    "V": np.array([30.0, 20.0, 50.0, 25.0, 25.0]),
    "KA": np.array([1.2, 0.4, 3.0, 0.9, 0.9]),
    "F": np.array([0.7, 1.0, 0.35, 0.6, 0.6]),
    "ALAG": np.array([0.0, 0.75, 1.3, 0.0, 0.9]),
}
ORAL_REGIMENS = [
    [Regimen(200.0, "depot")],
    [Regimen(300.0, "depot", time=2.0, ii=8.0, addl=4)],
    # depot doses with lag and bioavailability, plus an IV bolus (F and ALAG do not apply)
    [Regimen(500.0, "depot", ii=24.0, addl=1), Regimen(50.0, "central", time=6.0)],
    [Regimen(150.0, "depot", ii=12.0, addl=3, ss=True)],
    # SS=1 with a lag (NONMEM): at the record time the system is at the steady state of the
    # implied lagged doses; this dose enters 0.9 h later
    [Regimen(150.0, "depot", ii=12.0, addl=3, ss=True)],
]


def ss_oral_1cpt(tau, dose, f, ka, cl, v, ii):
    k = cl / v
    return (
        f
        * dose
        * ka
        / (v * (ka - k))
        * (np.exp(-k * tau) / (1 - np.exp(-k * ii)) - np.exp(-ka * tau) / (1 - np.exp(-ka * ii)))
    )


@pytest.mark.parametrize("method", METHODS)
def test_pk1_oral_bateman_with_f_and_lag(method):
    got = simulate(PK1_ORAL, ORAL_POP, ORAL_REGIMENS, method)
    p = {k: np.asarray(v) for k, v in ORAL_POP.items()}
    ref = np.zeros((5, len(TIMES)))

    def oral(i, td, dose):
        return oral_1cpt(
            TIMES - td - p["ALAG"][i], dose, p["F"][i], p["KA"][i], p["CL"][i], p["V"][i]
        )

    ref[0] = oral(0, 0.0, 200.0)
    for td in dose_times(2.0, 8.0, 4):
        ref[1] += oral(1, td, 300.0)
    ref[2] = oral(2, 0.0, 500.0) + oral(2, 24.0, 500.0)
    ref[2] += bolus_1cpt(TIMES - 6.0, 50.0, p["CL"][2], p["V"][2])
    for i in (3, 4):  # time since the last dose entered, implied doses included
        t = TIMES - p["ALAG"][i]
        tau = np.where(t < 48.0, np.mod(t, 12.0), t - 36.0)
        ref[i] = ss_oral_1cpt(tau, 150.0, p["F"][i], p["KA"][i], p["CL"][i], p["V"][i], 12.0)
    assert_close(got, ref)
    # With the lag, t = 0 holds the trough of the steady state, not an empty system.
    assert got[4][0] == pytest.approx(ref[4][0], rel=1e-6) and ref[4][0] > 0.1 * ref[4].max()
    # Nothing reaches the central compartment before the lag has elapsed.
    assert np.all(got[1][TIMES <= 2.75] == 0.0)


# -- 2-compartment IV and oral --------------------------------------------------------------------
PK2_POP = {
    "CL": np.array([2.8, 6.0, 1.0]),
    "V1": np.array([32.0, 15.0, 50.0]),
    "Q": np.array([4.0, 12.0, 0.8]),
    "V2": np.array([60.0, 100.0, 20.0]),
}
PK2_REGIMENS = [
    [Regimen(100.0, "central")],
    [Regimen(400.0, "central", time=0.7, ii=12.0, addl=3)],
    [Regimen(50.0, "central", ii=6.0, addl=7)],
]


@pytest.mark.parametrize("method", METHODS)
def test_pk2_iv_biexponential(method):
    got = simulate(PK2_IV, PK2_POP, PK2_REGIMENS, method)
    par = [tuple(PK2_POP[k][i] for k in ("CL", "V1", "Q", "V2")) for i in range(3)]
    ref = np.zeros((3, len(TIMES)))
    ref[0] = bolus_2cpt(TIMES, 100.0, *par[0])
    for td in dose_times(0.7, 12.0, 3):
        ref[1] += bolus_2cpt(TIMES - td, 400.0, *par[1])
    for td in dose_times(0.0, 6.0, 7):
        ref[2] += bolus_2cpt(TIMES - td, 50.0, *par[2])
    assert_close(got, ref)


PK2_ORAL_POP = {
    **PK2_POP,
    "KA": np.array([1.0, 0.3, 2.5]),
    "F": np.array([0.8, 0.5, 1.0]),
    "ALAG": np.array([0.0, 0.4, 1.1]),
}


@pytest.mark.parametrize("method", METHODS)
def test_pk2_oral_triexponential(method):
    dosing = [
        [Regimen(320.0, "depot")],
        [Regimen(320.0, "depot", ii=12.0, addl=3)],
        [Regimen(100.0, "depot", time=5.0, ii=24.0, addl=1)],
    ]
    got = simulate(PK2_ORAL, PK2_ORAL_POP, dosing, method)
    p = PK2_ORAL_POP
    ref = np.zeros((3, len(TIMES)))
    plan = [(0.0, 0, 0.0, 320.0), (0.0, 3, 12.0, 320.0), (5.0, 1, 24.0, 100.0)]
    for i, (t0, addl, ii, dose) in enumerate(plan):
        for td in dose_times(t0, ii, addl):
            ref[i] += oral_2cpt(
                TIMES - td - p["ALAG"][i],
                dose,
                p["F"][i],
                p["KA"][i],
                p["CL"][i],
                p["V1"][i],
                p["Q"][i],
                p["V2"][i],
            )
    assert_close(got, ref)


# -- 3-compartment: independent matrix-exponential reference --------------------------------------
PK3_POP = {
    "CL": np.array([2.8, 10.0]),
    "V1": np.array([32.0, 12.0]),
    "Q": np.array([4.0, 20.0]),
    "V2": np.array([60.0, 40.0]),
    "Q3": np.array([1.0, 0.5]),
    "V3": np.array([100.0, 300.0]),
}


METHODS_3CPT = ("closed_form", pytest.param("diffrax", marks=pytest.mark.slow))


@pytest.mark.parametrize("method", METHODS_3CPT)
def test_pk3_iv_bolus_vs_expm(method):
    dosing = [[Regimen(100.0, "central")], [Regimen(500.0, "central", time=2.0, ii=12.0, addl=3)]]
    got = simulate(PK3_IV, PK3_POP, dosing, method)
    ref = np.zeros((2, len(TIMES)))
    plans = [[(0.0, 100.0)], [(td, 500.0) for td in dose_times(2.0, 12.0, 3)]]
    for i, plan in enumerate(plans):
        p = {k: v[i] for k, v in PK3_POP.items()}
        a = linear_matrix(p["CL"], (p["V1"], p["V2"], p["V3"]), (p["Q"], p["Q3"]))
        for td, dose in plan:
            ref[i] += expm_bolus(TIMES - td, a, np.array([dose, 0.0, 0.0]), p["V1"], 0)
    assert_close(got, ref)
    # The expm reference itself agrees with the closed-form modal decomposition at peak scale.
    assert ref[0, 0] == pytest.approx(100.0 / 32.0)


@pytest.mark.parametrize("method", METHODS_3CPT)
def test_pk3_oral_vs_expm(method):
    pop = {k: v[:1] for k, v in PK3_POP.items()} | {"KA": 0.8, "F": 0.6, "ALAG": 0.5}
    got = simulate(PK3_ORAL, pop, Regimen(300.0, "depot", ii=12.0, addl=2), method)
    p = {k: np.ravel(v)[0] for k, v in pop.items()}
    a = linear_matrix(p["CL"], (p["V1"], p["V2"], p["V3"]), (p["Q"], p["Q3"]), ka=p["KA"])
    ref = np.zeros(len(TIMES))
    for td in dose_times(0.5, 12.0, 2):
        ref += expm_bolus(TIMES - td, a, np.array([0.6 * 300.0, 0, 0, 0]), p["V1"], 1)
    assert_close(got, ref[None])


# -- Michaelis–Menten elimination (diffrax path) --------------------------------------------------
MM_TIMES = cohort.grid(0.0, 24.0, 0.25)


def mm_dosing(bolus0, infusion, bolus2):
    return [
        Regimen(bolus0, "central"),
        Regimen(infusion, "central", time=6.0, duration=3.0),
        Regimen(bolus2, "central", time=15.0),
    ]


def mm_reference(vmax, km, v, bolus0, infusion, bolus2, times):
    def rhs(t, y, rate):
        c = y[0] / v
        return [-vmax * c / (km + c) + rate]

    pieces = [
        (0.0, 6.0, bolus0, 0.0),
        (6.0, 9.0, 0.0, infusion / 3.0),
        (9.0, 15.0, 0.0, 0.0),
        (15.0, times[-1], bolus2, 0.0),
    ]
    out = np.zeros(len(times))
    y = 0.0
    for ta, tb, dose, rate in pieces:
        y += dose
        sol = solve_ivp(
            rhs,
            (ta, tb),
            [y],
            args=(rate,),
            method="DOP853",
            rtol=1e-11,
            atol=1e-14,
            dense_output=True,
        )
        mask = (times >= ta) & ((times < tb) | (tb == times[-1]))
        out[mask] = sol.sol(times[mask])[0] / v
        y = sol.y[0, -1]
    return out


def test_mm_diffrax_vs_scipy_lambert_w_and_linear_limit():
    # Patient 2 has KM >> C: first-order elimination with CL = VMAX / KM (C/KM <= 1e-7).
    km, cl, v = 1e4, 2.5, 20.0
    pop = {
        "VMAX": np.array([10.0, 40.0, cl * km]),
        "KM": np.array([2.0, 0.5, km]),
        "V": np.array([30.0, 20.0, v]),
    }
    doses = [(300.0, 0.0, 0.0), (200.0, 150.0, 80.0), (0.02, 0.01, 0.015)]
    got = simulate(PK1_MM, pop, [mm_dosing(*d) for d in doses], "diffrax", times=MM_TIMES)
    # Single bolus: exact solution C = KM W((C0/KM) exp((C0 - VMAX t / V)/KM)).
    vmax, km0, v0 = 10.0, 2.0, 30.0
    c0 = 300.0 / v0
    arg = (c0 / km0) * np.exp((c0 - vmax * MM_TIMES / v0) / km0)
    assert_close(got[0], km0 * np.real(lambertw(arg)))
    # Bolus, infusion, bolus: scipy DOP853 at rtol 1e-11.
    assert_close(got[1], mm_reference(40.0, 0.5, 20.0, *doses[1], MM_TIMES))
    # Saturation makes it genuinely nonlinear: in the first hour far less is eliminated than
    # first-order elimination at CL = VMAX / KM would remove.
    linear = c0 * np.exp(-(vmax / km0 / v0) * 1.0)
    assert c0 - got[0, 4] < 0.25 * (c0 - linear)
    # Linear limit.
    d = doses[2]
    ref = bolus_1cpt(MM_TIMES, d[0], cl, v)
    ref += infusion_1cpt(MM_TIMES - 6.0, d[1] / 3.0, 3.0, cl, v)
    ref += bolus_1cpt(MM_TIMES - 15.0, d[2], cl, v)
    assert_close(got[2], ref)


def test_ss_infusion_with_lag_is_periodic_and_engines_agree():
    """SS=1 with a lag, here a zero-order input into the depot: a steady state repeats every
    II from the record time on, whatever the phase of the lagged input; the engines and the
    inference superposition agree."""
    pop = {k: v[[4, 4]] for k, v in ORAL_POP.items()}
    pop["ALAG"] = np.array([1.0, 0.0])
    regs = [[Regimen(150.0, "depot", ii=12.0, addl=2, ss=True, rate=50.0)]] * 2
    times = cohort.grid(0.0, 48.0, 0.25)  # 12 h = 48 steps, the lag 4
    cf = simulate(PK1_ORAL, pop, regs, "closed_form", times=times)
    np.testing.assert_allclose(cf[:, :48], cf[:, 48:96], rtol=1e-12, atol=1e-12 * cf.max())
    # The lag shifts the whole steady-state profile, from the record time on.
    np.testing.assert_allclose(cf[0][4:100], cf[1][:96], rtol=1e-10, atol=1e-12 * cf.max())
    assert cf[0][0] > 0.1 * cf.max()  # at the record time: the trough, not an empty system
    for method in ("fast", "diffrax"):
        got = simulate(PK1_ORAL, pop, regs, method, times=times)
        np.testing.assert_allclose(got, cf, rtol=0, atol=1e-6 * cf.max(), err_msg=method)
    table = cohort.dosing.event_table(regs, PK1_ORAL.state_names, PK1_ORAL.dose_targets, 2)
    # compiled once for both subjects (as inference runs it), not dispatched op by op
    subject = jax.jit(lambda p, ev: closed_form_subject(PK1_ORAL, "conc", p, ev, times, True))
    for i in range(2):
        ev = {k: v[i] for k, v in table.arrays().items()}
        p = {k: v[i] for k, v in pop.items()}
        f, ok = subject(p, ev)
        assert ok
        np.testing.assert_allclose(f, cf[i], rtol=1e-12, atol=1e-12 * cf.max())


def test_ss_lag_reaching_the_interval_is_rejected():
    pop = {k: v[[4, 4]] for k, v in ORAL_POP.items()}
    pop["ALAG"] = np.array([0.5, 10.5])  # 10.5 h lag + 1.8 h infusion > II = 12 h
    regs = [[Regimen(150.0, "depot", ii=12.0, addl=2, ss=True, rate=50.0)]] * 2
    with pytest.raises(cohort.InputError, match=r"patient index 1, SS=1 dose.*II=12"):
        simulate(PK1_ORAL, pop, regs, "closed_form")


@pytest.mark.parametrize("method", ("closed_form", "diffrax", "fast"))
def test_steady_state_with_a_half_life_long_against_the_interval(method):
    """SS=1 with t1/2 = 3,466 h against q12h: 1,000 plain dosing intervals (the old search)
    left the ODE engines 9 % short with status 0 (a new user's session); Newton on the
    interval's fixed point reaches the analytic peak (D/V)/(1 - exp(-k II))."""
    pop = {"CL": [0.1, 0.05], "V": [500.0, 100.0]}
    got = simulate(PK1_IV, pop, [[Regimen(100.0, "central", ii=12.0, ss=True)]] * 2, method)
    k = np.array([0.1 / 500.0, 0.05 / 100.0])
    peak = 100.0 / np.array([500.0, 100.0]) / (1.0 - np.exp(-k * 12.0))
    np.testing.assert_allclose(got[:, 0], peak, rtol=1e-8)


def test_nonlinear_steady_state_and_one_that_does_not_exist():
    """Michaelis-Menten: SS=1 equals the 400th dose of a long regimen (both ODE engines);
    doses above the elimination capacity (100 mg q12h, VMAX 5 mg/h) have no steady state:
    status ``ss_not_reached`` instead of a state at 1e12 reported as solved."""
    from cohort.engine.diffrax_path import Adaptive
    from cohort.engine.fast_path import RK4
    from cohort.engine.status import Status

    model = cohort.models.get("pk1_mm_iv")
    pop = {"VMAX": np.array([10.0, 5.0]), "KM": np.array([2.0, 2.0]), "V": np.array([30.0] * 2)}
    ss = [[Regimen(100.0, "central", ii=12.0, ss=True)]] * 2
    long = [[Regimen(100.0, "central", ii=12.0, addl=399)]] * 2
    for engine in (Adaptive(ss_max_cycles=50), RK4(ss_max_cycles=50)):
        at_ss = cohort.simulate(model, pop, ss, np.array([0.0, 6.0]), method=engine)
        late = cohort.simulate(model, pop, long, np.array([4788.0, 4794.0]), method=engine)
        np.testing.assert_allclose(at_ss.conc.values[0], late.conc.values[0], rtol=1e-8)
        assert at_ss.status.values.tolist() == [Status.OK, Status.SS_NOT_REACHED]


@pytest.mark.parametrize("method", ("diffrax", "fast"))
def test_steady_state_in_float32_and_beside_patients_without_one(method):
    """float32 cannot resolve a 1e-10 change per interval: its steady states converge to its
    own precision (the first Newton version flagged ordinary patients as not reached), and a
    patient without an SS record in the same batch is untouched by the search."""
    pop = {"CL": [5.0, 0.1, 2.0], "V": [50.0, 500.0, 30.0]}
    dosing = [[Regimen(100.0, "central", ii=12.0, ss=True)]] * 2 + [[Regimen(100.0, "central")]]
    got = cohort.simulate(PK1_IV, pop, dosing, np.array([0.0, 6.0]), method=method,
                          dtype="float32")  # fmt: skip
    assert got.status.values.tolist() == [0, 0, 0]
    cl, v = np.array(pop["CL"][:2]), np.array(pop["V"][:2])
    peak = 100.0 / v / (1.0 - np.exp(-cl / v * 12.0))
    # float32 rounding per interval is amplified by 1 / (1 - exp(-k II)) = 417 for the second
    # patient: 5e-4 measured on the fast path, 1e-5 with diffrax
    np.testing.assert_allclose(got.conc.values[:2, 0], peak, rtol=1e-3)
    np.testing.assert_allclose(
        got.conc.values[2], 100.0 / 30.0 * np.exp(-2.0 / 30.0 * np.array([0.0, 6.0])), rtol=1e-5
    )


@pytest.mark.parametrize("method", ("diffrax", "fast"))
def test_michaelis_menten_steady_state_just_below_capacity(method):
    """VMAX 10 mg/h x 12 h = 120 mg per interval: 115 and 118 mg q12h have steady states
    (phenytoin-like dosing near saturation), reported as ss_not_reached after six Newton
    steps. Against the fixed point of one interval solved by scipy (brentq on DOP853)."""
    from scipy.integrate import solve_ivp
    from scipy.optimize import brentq

    vmax, km, v, ii = 10.0, 2.0, 30.0, 12.0

    def trough(c0):
        sol = solve_ivp(lambda t, c: -vmax * c / (km + c) / v, (0, ii), [c0], method="DOP853",
                        rtol=1e-12, atol=1e-14)  # fmt: skip
        return sol.y[0, -1]

    amts = np.array([100.0, 115.0, 118.0])
    peaks = [brentq(lambda c, a=a: trough(c) + a / v - c, a / v, 1e4) for a in amts]
    pop = {"VMAX": [vmax] * 3, "KM": [km] * 3, "V": [v] * 3}
    got = cohort.simulate("pk1_mm_iv", pop, [[Regimen(a, "central", ii=ii, ss=True)] for a in amts],
                          np.array([0.0, 6.0]), method=method)  # fmt: skip
    assert got.status.values.tolist() == [0, 0, 0]
    np.testing.assert_allclose(got.conc.values[:, 0], peaks, rtol=1e-6)
