"""Glucose models: UVA/Padova against simglucose 0.2.11, steady states, Bergman IVGTT fit."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import cohort
from cohort.models import get
from cohort.models.glucose import (
    GROUPS,
    as_population,
    combine,
    fit_ivgtt,
    insulin_records,
    meal_records,
    patient_prior,
    predict_ivgtt,
    reference_patients,
    sample_patients,
)

DATA = Path(__file__).parent / "data"
# DESIGN §6 / simglucose 0.2.11: Gsub after the step ending at the given minute.
SIMGLUCOSE_POINTS = {200: 127.24, 300: 78.47, 500: 61.38, 999: 141.11}
GB_ADOLESCENT_001 = 149.02
# Pacini & Bergman 1986 (tests/data/ivgtt_pacini_bergman_1986.csv header).
SI_PUBLISHED = 1.062e-5 / 0.02093


def _read(name: str) -> pd.DataFrame:
    return pd.read_csv(DATA / name, comment="#")


def _states_at_rest(model, p):
    return model.initial(p), {s: jnp.zeros_like(p["BW"]) for s in model.state_names}


BOUT_TIMES = [65.0, 69.0, 71.0, 300.0, 399.0, 500.0]
MEMORY = ["bouts", "bouts_held", "qsto1", "qsto2", "meal_q0_a", "meal_q0_b"]


@pytest.fixture(scope="module", params=["diffrax", "fast"])
def adolescent_runs(request):
    """adolescent#001 three times, 0-1440 min each minute (one compiled solve per method):
    1. 80 g at t=100 (5 g/min) + 80/6 U over [100, 101) — the simglucose scenario;
    2. basal only; 3. bouts of 20 g at 60, a 1-min 5 g snack at 70 and 30 g at 400."""
    meal = combine(meal_records(100.0, 80.0), insulin_records(100.0, 80.0 / 6.0)).assign(ID=1)
    basal_only = pd.DataFrame({"ID": [2], "TIME": [0.0], "EVID": [0], "AMT": [0.0]})
    bouts = meal_records([60.0, 70.0, 400.0], [20.0, 5.0, 30.0]).assign(ID=3)
    dosing = pd.concat([meal, basal_only, bouts], ignore_index=True)
    ds = cohort.simulate(
        "uva_padova",
        reference_patients().iloc[[0, 0, 0]],
        dosing,
        np.arange(0.0, 1441.0),
        method=request.param,
        outputs=["Gsub", *MEMORY],
    )
    return request.param, ds


def test_uva_padova_reproduces_simglucose(adolescent_runs):
    method, ds = adolescent_runs
    ref = _read("simglucose_adolescent001_meal80g.csv")
    assert ds.status.values.tolist() == [0, 0, 0]
    gsub = ds.Gsub.sel(time=ref["time"].to_numpy()).values
    for minute, expected in SIMGLUCOSE_POINTS.items():
        assert gsub[0, minute - 1] == pytest.approx(expected, abs=0.5)
    # The whole 1000-min trajectory (measured max error: diffrax 2e-5, fast 0.005 mg/dL).
    tol = {"diffrax": 1e-3, "fast": 0.02}[method]
    assert np.max(np.abs(gsub[0] - ref["Gsub"].to_numpy())) < tol
    assert np.max(np.abs(ds.Gsub.values[1] - GB_ADOLESCENT_001)) < 0.05


def test_meal_memory_counts_bouts_and_resets_between_them(adolescent_runs):
    """Two bouts (the second a 1-min snack) toggle the bank; the idle bank tracks the stomach."""
    _, ds = adolescent_runs
    y = ds.isel(patient=2).sel(time=BOUT_TIMES)
    np.testing.assert_allclose(y.bouts.values, [1, 1, 2, 2, 2, 3], atol=0.35)
    np.testing.assert_allclose(y.bouts_held.values[[1, 3, 4]], [1, 2, 2], atol=0.35)
    # Before bout 3 (odd: bank a) bank a holds the current stomach content; b keeps bout 2's.
    stomach = y.qsto1.values + y.qsto2.values
    assert float(y.meal_q0_a[4]) == pytest.approx(float(stomach[4]), rel=1e-6)
    assert float(y.meal_q0_b[4]) == pytest.approx(float(y.meal_q0_b[2]), rel=1e-9)


def test_reference_patients_start_at_steady_state():
    model = get("uva_padova")
    df = reference_patients()
    assert len(df) == 30 and df["group"].value_counts().to_dict() == dict.fromkeys(GROUPS, 10)
    p = {k: jnp.asarray(v) for k, v in as_population(df).items()}
    p["basal_scale"] = jnp.ones(30)
    y0, u0 = _states_at_rest(model, p)
    d = model.rhs(0.0, y0, p, u0)
    for s in model.state_names:
        scale = jnp.maximum(jnp.abs(y0[s]), 1.0)
        assert float(jnp.max(jnp.abs(d[s]) / scale)) < 1e-9, s
    # The computed basal state is simglucose's x0 (its Isc in pmol/kg, ours in U).
    x0 = df[[c for c in df.columns if c.startswith("x0_")]].to_numpy()
    to_pmol = 6000.0 / df["BW"].to_numpy()
    for i, s in enumerate(model.state_names[:13]):
        ours = np.asarray(y0[s]) * (to_pmol if s in ("Isc1", "Isc2") else 1.0)
        np.testing.assert_allclose(ours, x0[:, i], rtol=1e-9, atol=1e-8, err_msg=s)


def test_packaged_table_equals_priors_copy():
    packaged = Path(cohort.__file__).parent / "models/glucose/data/uva_padova_patients.csv"
    priors = Path(__file__).parents[1] / "priors/uva_padova_patients.csv"
    assert packaged.read_bytes() == priors.read_bytes()
    assert len(reference_patients("child")) == 10
    with pytest.raises(ValueError, match="unknown patient group"):
        reference_patients("elderly")


@pytest.mark.parametrize("name", ["uva_padova", "bergman"])
def test_glucose_rhs_vmap_equals_structure_of_arrays(name):
    model = get(name)
    rng = np.random.default_rng(1)
    n = 9
    if name == "uva_padova":
        p = {k: jnp.asarray(v[:n]) for k, v in as_population(reference_patients()).items()}
        p["basal_scale"] = jnp.ones(n)
    else:
        p = {
            q.name: jnp.asarray(q.default * np.exp(0.1 * rng.standard_normal(n)))
            for q in model.parameters
        }  # noqa: E501
    y0 = model.initial(p)
    y = {
        s: jnp.asarray(np.abs(y0[s]) * rng.uniform(0.5, 1.5, n) + rng.uniform(0, 50, n)) for s in y0
    }  # noqa: E501
    eating = rng.uniform(size=n) < 0.5  # mix eating and fasting patients (two rhs branches)
    u = {s: jnp.zeros(n) for s in model.state_names}
    u[model.dose_targets[0]] = jnp.asarray(np.where(eating, rng.uniform(1, 5000, n), 0.0))
    u[model.dose_targets[1]] = jnp.asarray(rng.uniform(0, 0.5, n))
    soa = model.rhs(12.5, y, p, u)
    per = jax.vmap(lambda yy, pp, uu: model.rhs(12.5, yy, pp, uu))(y, p, u)
    for s in model.state_names:
        np.testing.assert_allclose(np.asarray(soa[s]), np.asarray(per[s]), rtol=1e-14, atol=0)


def test_bergman_ivgtt_fit_recovers_published_si(record_property):
    data = _read("ivgtt_pacini_bergman_1986.csv")
    fit = fit_ivgtt(data["time"], data["glucose"], data["insulin"], gb=92.0, ib=7.3)
    record_property("bergman_rmse_mg_dl", fit.rmse)
    record_property("bergman_si", fit.SI)
    assert fit.success
    assert fit.rmse < 5.0  # measured 3.9 mg/dL over the 20 samples at t >= 8 min
    assert fit.SI == pytest.approx(SI_PUBLISHED, rel=0.25)  # measured +13 %
    assert 150 < fit.G0 < 400
    t = data["time"].to_numpy()
    pred = predict_ivgtt(fit, t, t, data["insulin"])
    fitted = t >= 8.0
    rmse = np.sqrt(np.mean((pred[fitted] - data["glucose"].to_numpy()[fitted]) ** 2))
    assert rmse == pytest.approx(fit.rmse, rel=1e-9) and pred[0] == pytest.approx(fit.G0)


def test_ivgtt_basal_samples_before_the_bolus_do_not_move_its_start():
    """The usual -10 and 0 min basal samples: a sample at -10 made the fit integrate from
    -10 min, and G0 (the glucose right after the bolus at 0) came out 357 for a true 287."""
    data = _read("ivgtt_pacini_bergman_1986.csv")
    t, g, i = (data[c].to_numpy(float) for c in ("time", "glucose", "insulin"))
    plain = fit_ivgtt(t, g, i)
    early = fit_ivgtt(np.r_[-10.0, t], np.r_[g[0], g], np.r_[i[0], i])
    assert early.Gb == plain.Gb == 92.0 and early.Ib == plain.Ib == 11.0
    for name in ("p1", "p2", "p3", "G0"):
        assert getattr(early, name) == pytest.approx(getattr(plain, name), rel=1e-6), name
    pred = predict_ivgtt(early, [-10.0, 0.0, 8.0], t, i)
    assert pred[0] == early.Gb and pred[1] == pytest.approx(early.G0)
    # two basal samples: their mean is the default basal
    two = fit_ivgtt(np.r_[-10.0, t], np.r_[100.0, g], np.r_[i[0], i])
    assert two.Gb == pytest.approx(96.0)


def test_bergman_basal_is_steady_state_and_ivgtt_simulates():
    model = get("bergman")
    p = {k: jnp.asarray(v) for k, v in model.defaults().items()}
    p["h"] = jnp.asarray(100.0)  # threshold above Gb: no secretion at basal
    d = model.rhs(50.0, model.initial(p), p, {s: 0.0 for s in model.state_names})
    assert all(abs(float(v)) < 1e-15 for v in d.values())
    bolus = pd.DataFrame({"TIME": [0.0], "AMT": [200.0], "CMT": ["G"]})  # +200 mg/dL at t=0
    ds = cohort.simulate(model, {"h": 100.0}, bolus, np.arange(0.0, 181.0, 10.0), method="fast")
    g = ds.glucose.values[0]
    assert g[0] == pytest.approx(292.0)
    assert np.all(np.diff(g[:8]) < 0) and 70.0 < g.min() < 92.0 < g[3]  # the classic undershoot
    assert np.all(ds.insulin.values[0][1:] > 7.3)


def test_sampled_patients_are_reproducible_plausible_and_at_steady_state():
    model = get("uva_padova")
    a = sample_patients("adult", 40, seed=3)
    b = sample_patients("adult", 5, seed=3)
    pd.testing.assert_frame_equal(a.iloc[:5], b)  # a patient does not depend on n
    assert not a.iloc[:5].equals(sample_patients("adult", 5, seed=4))
    for q in model.parameters:
        if q.name in a:
            assert a[q.name].between(q.lower, q.upper).all(), q.name
    p = {k: jnp.asarray(v) for k, v in as_population(a).items()}
    p["basal_scale"] = jnp.ones(len(a))
    y0, u0 = _states_at_rest(model, p)
    d = model.rhs(0.0, y0, p, u0)
    for s in model.state_names:
        assert float(jnp.max(jnp.abs(d[s]) / jnp.maximum(jnp.abs(y0[s]), 1.0))) < 1e-9, s
    np.testing.assert_allclose(y0["Gs"] / p["Vg"], a["Gb"].to_numpy(), rtol=1e-12)


def test_prior_matches_reference_moments():
    prior = patient_prior("child")
    big = sample_patients("child", 3000, seed=0)
    log_bw = np.log(big["BW"].to_numpy())
    j = prior.names.index("BW")
    se = np.sqrt(prior.cov[j, j] / len(big))
    # Rejection of implausible draws may shift the mean slightly; allow 5 standard errors.
    assert abs(log_bw.mean() - prior.mean[j]) < 5 * se
    assert np.log(reference_patients("child")["BW"]).mean() == pytest.approx(prior.mean[j])


def test_meal_and_insulin_records_follow_simglucose_eating():
    rec = meal_records([60.0, 300.0], [12.0, 80.0])
    assert rec[["TIME", "AMT", "RATE"]].values.tolist() == [
        [60.0, 10000.0, 5000.0],
        [62.0, 2000.0, 2000.0],
        [300.0, 80000.0, 5000.0],
    ]
    assert set(rec["CMT"]) == {"qsto1"}
    ins = insulin_records(60.0, 3.0)
    assert ins[["AMT", "RATE", "CMT"]].values.tolist() == [[3.0, 3.0, "Isc1"]]


SNACK_DAY_MEALS = {420: 50, 480: 12, 720: 70, 1080: 80, 1140: 4, 1145: 3}  # g CHO at minute
SNACK_DAY_BOLUSES = {420: 5.0, 720: 7.0, 1080: 8.0}  # U within that minute


@pytest.fixture(scope="module")
def live_simglucose():
    """Gsub of all 30 patients in simglucose itself (optional; ~3 min)."""
    t1d = pytest.importorskip("simglucose.patient.t1dpatient")
    out = {}
    for name in reference_patients()["Name"]:
        patient = t1d.T1DPatient.withName(name)
        basal = patient._params.u2ss * patient._params.BW / 6000
        ref = []
        while patient.t < 1440:
            t = int(round(patient.t))
            insulin = basal + SNACK_DAY_BOLUSES.get(t, 0.0)
            patient.step(t1d.Action(insulin=insulin, CHO=SNACK_DAY_MEALS.get(t, 0)))
            ref.append(patient.observation.Gsub)
        out[name] = np.asarray(ref)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method, tol", [("diffrax", 0.5), ("fast", 1.0)])
def test_all_reference_patients_match_live_simglucose(method, tol, live_simglucose):
    """Cross-check against an installed simglucose: three meals, boluses and snacks."""
    df = reference_patients()
    dosing = combine(
        meal_records(list(SNACK_DAY_MEALS), list(SNACK_DAY_MEALS.values())),
        insulin_records(list(SNACK_DAY_BOLUSES), list(SNACK_DAY_BOLUSES.values())),
    )
    ds = cohort.simulate(
        "uva_padova", df, dosing, np.arange(0.0, 1441.0), method=method, outputs=["Gsub"]
    )
    for i, name in enumerate(df["Name"]):
        if ds.status.values[i] != 0:  # RK4 can step a glucose that reaches 0 below it
            continue
        err = np.max(np.abs(ds.Gsub.values[i, 1:] - live_simglucose[name]))
        assert err < tol, (name, err)  # measured: diffrax <= 0.36, fast <= 0.65 mg/dL


def test_glucose_records_most_likely_meant_otherwise_are_said():
    """A meal given as a bolus into qsto1 ran at the fastest gastric emptying (38 mg/dL above
    the same meal eaten at 5 g/min), a meal in grams did nothing, 5000 "U" of insulin ran
    without a word; a patient table with WT for BW ran everyone at the default weight (a
    probe against simglucose)."""
    import warnings

    import pandas as pd

    from cohort.errors import CohortWarning

    pop = reference_patients("adult").iloc[:1]
    times = np.arange(0.0, 60.0, 5.0)
    cases = {
        "given as a bolus into qsto1": dict(AMT=[45000.0], RATE=[0.0], CMT=["qsto1"]),
        "meals are in mg of carbohydrate": dict(AMT=[45.0], RATE=[5.0], CMT=["qsto1"]),
        "insulin is in U": dict(AMT=[5000.0], RATE=[0.0], CMT=["Isc1"]),
    }
    for said, cols in cases.items():
        recs = pd.DataFrame(dict(TIME=[20.0], EVID=[1], **cols))
        with pytest.warns(CohortWarning, match=said):
            cohort.simulate("uva_padova", pop, recs, times)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort.simulate("uva_padova", pop, meal_records(20.0, 45.0), times)
    with pytest.warns(CohortWarning, match="column 'WT' is not a parameter .* rename the column"):
        cohort.simulate("uva_padova", pop.rename(columns={"BW": "WT"}), None, times)
