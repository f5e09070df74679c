"""Digital twins: sequential updates equal joint fits, exact Gaussian posteriors, calibrated
forecasts, dose recommendations checked against a grid and the engine, state round-trips and
clear errors for bad records."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import cohort
from cohort.dosing import Regimen
from cohort.errors import CohortError, CohortWarning
from cohort.twin import TwinError, TwinPrior, Twins, open_twins
from cohort.twin.targets import AUC, Level, parse_target

VANCO = "priors/vancomycin_goti2018.toml"


def _prior(path=VANCO) -> TwinPrior:
    from pathlib import Path

    return TwinPrior.from_spec(Path(__file__).parent.parent / path)


def simulate_tdm(prior: TwinPrior, n: int, seed: int, times, dose=1000.0, ii=12.0, addl=5):
    """True patients drawn from the prior, 1-h infusions every ``ii`` h, observations with the
    prior's residual error: (records, true individual parameters)."""
    from cohort.twin.synthetic import simulate_records

    reg = Regimen(amt=dose, ii=ii, addl=addl, duration=1.0)
    return simulate_records(prior, n, times, reg, seed=seed)


@pytest.fixture(scope="module")
def vanco():
    prior = _prior()
    records, truth = simulate_tdm(prior, 12, 5, [11.5, 13.0, 35.5, 37.0, 59.5])
    return prior, records, truth


@pytest.fixture(scope="module")
def vanco_twins(vanco):
    """Twins identified on D1 (first two samples), updated with D2, and identified on D1 ∪ D2
    (shared by the tests below: each new data shape compiles the posterior search once)."""
    prior, records, _ = vanco
    d1, d2 = records[records.TIME <= 13.0], records[records.TIME > 13.0]
    first = Twins.identify(prior, d1)
    return first, first.update(d2), Twins.identify(prior, records), d1, d2


def test_sequential_update_equals_joint_map(vanco_twins):
    """D1 then D2 == D1 ∪ D2 at once: MAP parameters and Laplace covariances to 1e-6."""
    first, updated, joint, _, _ = vanco_twins
    rel = np.abs(np.expm1(updated.log_params(updated.laplace.eta)
                          - joint.log_params(joint.laplace.eta)))  # fmt: skip
    assert rel.max() < 1e-6
    np.testing.assert_allclose(updated.laplace.cov, joint.laplace.cov, rtol=1e-6, atol=1e-12)
    # the update left the earlier twins untouched, and the posterior shrank
    assert first.data.n_observations == 24 and updated.data.n_observations == 60
    sd1, sd2 = (
        np.asarray(updated.history[0]["posterior_sd"]),
        np.asarray(updated.history[1]["posterior_sd"]),
    )
    assert np.all(sd2.mean(axis=0) < sd1.mean(axis=0))
    assert updated.ok.all()


def _gaussian_prior() -> TwinPrior:
    """pk1_iv with negligible CL and IIV on V only, log-additive error: log c = log(D/V) − η + ε
    is linear in η, so the posterior is exactly Gaussian with a known mean and SD."""
    raw = {
        "population": {"name": "gauss", "model": "pk1_iv", "citation": "test"},
        "parameters": {
            "CL": {"typical": 1e-9, "units": "L/h", "citation": "test"},
            "V": {"typical": 30.0, "units": "L", "citation": "test"},
        },
        "iiv": {"parameters": ["V"], "sd": [0.3], "citation": "test"},
        "error": {"kind": "log-additive", "add": 0.1, "output": "conc", "citation": "test"},
    }
    return TwinPrior.from_raw(raw)


def _gaussian_records(n_obs: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for pid, v_true in ((1, 20.0), (2, 45.0), (3, 30.0)):
        rows.append(dict(ID=pid, TIME=0.0, AMT=300.0, EVID=1, DV=np.nan))
        for t in range(1, n_obs + 1):
            y = np.log(300.0 / v_true) + 0.1 * rng.standard_normal()
            rows.append(dict(ID=pid, TIME=float(t), AMT=0.0, EVID=0, DV=float(np.exp(y))))
    return pd.DataFrame(rows)


def _analytic(records):
    obs = records[records.EVID == 0]
    out = []
    for _, g in obs.groupby("ID", sort=False):
        r = np.log(300.0 / 30.0) - np.log(g.DV.to_numpy())  # = η + noise
        prec = 1 / 0.3**2 + len(r) / 0.1**2
        out.append((np.sum(r) / 0.1**2 / prec, prec**-0.5))
    return np.array(out)


def test_laplace_is_exact_for_a_gaussian_posterior():
    records = _gaussian_records(4, 1)
    tw = Twins.identify(_gaussian_prior(), records)
    ref = _analytic(records)
    np.testing.assert_allclose(tw.laplace.eta[:, 0], ref[:, 0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.sqrt(tw.laplace.cov[:, 0, 0]), ref[:, 1], rtol=1e-8)


def test_nuts_twins_match_the_exact_posterior():
    records = _gaussian_records(4, 2)
    tw = Twins.identify(_gaussian_prior(), records, method="nuts", warmup=300, draws=1000,
                        seed=3)  # fmt: skip
    ref = _analytic(records)
    z = tw.samples.eta.reshape(3, -1)
    assert tw.samples.converged.all(), (tw.samples.rhat, tw.samples.ess_bulk)
    # Monte Carlo error of the mean: sd / sqrt(ESS) ≈ 0.025 sd (ESS ≈ 0.4 per draw in 1-D)
    assert np.all(np.abs(z.mean(1) - ref[:, 0]) < 0.1 * ref[:, 1])
    np.testing.assert_allclose(z.std(1), ref[:, 1], rtol=0.08)


TWO_DEVICES = """
import json, sys
import numpy as np
import cohort
n_dev = cohort.use_cpu_cores(2)
sys.path.insert(0, sys.argv[1])
from test_twin import Twins, _gaussian_prior, _gaussian_records
from cohort.twin import posterior
records = _gaussian_records(4, 2)
runs = [Twins.identify(_gaussian_prior(), records, method="nuts", warmup=300, draws=1000, seed=3)
        for _ in range(2)]
split = [k[1] for k in posterior._COMPILED if str(k[1]).startswith("nuts:")]
json.dump({"devices": n_dev, "chain_devices": posterior.chain_devices(4), "split": split,
           "eta": runs[0].samples.eta.tolist(), "converged": runs[0].samples.converged.tolist(),
           "same": bool(np.array_equal(runs[0].samples.eta, runs[1].samples.eta))}, sys.stdout)
"""


def test_nuts_chains_split_over_two_devices_sample_the_exact_posterior():
    """With one CPU device per core (as the CLI sets up) each device runs its share of the
    chains: the draws are the exact posterior's and the same on every run (not the one-device
    run's draw for draw: XLA vectorises 2 chains differently from 4, 1 ulp that NUTS grows)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, str(Path(__file__).parent)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["devices"] == 2 and got["chain_devices"] == 2
    assert got["split"] and all(k.endswith(":2") for k in got["split"])
    assert all(got["converged"]) and got["same"]
    z = np.asarray(got["eta"]).reshape(3, -1)
    ref = _analytic(_gaussian_records(4, 2))
    assert np.all(np.abs(z.mean(1) - ref[:, 0]) < 0.1 * ref[:, 1])
    np.testing.assert_allclose(z.std(1), ref[:, 1], rtol=0.08)


def test_a_mode_far_from_every_start_is_still_found():
    """Wide prior (log-SD 1.5), proportional error, a flip-flop pair of modes: from the prior
    mode the predictions are orders of magnitude off (2·U ≈ 4e7), and 5 Newton steps left
    one patient at a point 1e5 above its mode, flagged unusable while its NUTS chains had
    converged (a probe). Patients not converged are searched again with more steps."""
    raw = {
        "population": {"name": "flipflop", "model": "pk1_oral", "citation": "test"},
        "parameters": {
            "CL": {"typical": 3.0, "units": "L/h", "citation": "test"},
            "V": {"typical": 9.4868, "units": "L", "citation": "test"},
            "KA": {"typical": 0.31623, "units": "1/h", "citation": "test"},
        },
        "iiv": {"parameters": ["CL", "V", "KA"], "citation": "test",
                "omega": [[0.25, 0, 0], [0, 2.25, 0], [0, 0, 2.25]]},
        "error": {"kind": "proportional", "prop": 0.1, "output": "conc", "citation": "test"},
    }  # fmt: skip
    rng = np.random.default_rng(5)
    times, rows = np.array([1, 2, 4, 6, 8, 12, 24, 36, 48.0]), []
    for pid, (cl, v, ka) in {1: (3, 30, 1.0), 2: (3, 30, 1.0), 3: (3, 9.4868, 0.31623)}.items():
        k = cl / v
        c = 100 * ka / (v * (ka - k)) * (np.exp(-k * times) - np.exp(-ka * times))
        rows.append(dict(ID=pid, TIME=0.0, AMT=100.0, EVID=1, CMT="depot", DV=np.nan))
        for t, y in zip(times, c * (1 + 0.1 * rng.standard_normal(len(times))), strict=True):
            rows.append(dict(ID=pid, TIME=t, AMT=0.0, EVID=0, CMT="conc", DV=y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CohortWarning)
        tw = Twins.identify(TwinPrior.from_raw(raw), pd.DataFrame(rows))
    assert tw.laplace.ok.all()
    # patient 2's best mode (found by 30+ Newton steps from the prior mode; the other
    # flip-flop mode has U 0.013 higher): 2·U = -38.107
    np.testing.assert_allclose(tw.laplace.eta[1], [0.012, 1.142, 1.331], atol=2e-3)
    assert tw.laplace.objective[1] == pytest.approx(-38.107, abs=1e-2)


def test_a_posterior_with_many_divergences_is_not_converged():
    """R-hat and ESS alone passed a patient with 15.6 % divergent transitions as usable."""
    from cohort.twin.posterior import Samples

    ok = dict(eta=np.zeros((3, 4, 500, 2)), rhat=np.full((3, 2), 1.002),
              ess_bulk=np.full((3, 2), 900.0))  # fmt: skip
    s = Samples(**ok, divergences=np.array([0, 20, 313]))  # 2,000 transitions each
    assert s.converged.tolist() == [True, True, False]


def test_chains_in_separate_modes_are_told_apart_from_slow_ones():
    """Chains that settled in two modes are named (the CLI says so: longer runs rarely join
    them); well-mixed chains and one chain merely wider than the others are not."""
    from pathlib import Path
    from types import SimpleNamespace

    from cohort.cli._twin_common import status_line
    from cohort.twin.posterior import Samples

    rng = np.random.default_rng(0)
    mixed = rng.standard_normal((1, 4, 500, 3))
    modes = mixed.copy()
    modes[0, 3, :, 1] = 0.3 * modes[0, 3, :, 1] - 3.0  # one chain in a narrow mode at -3
    wide = mixed.copy()
    wide[0, 2] *= 1.8  # a chain that wanders wider, centred with the others
    eta = np.concatenate([mixed, modes, wide])
    s = Samples(eta, rhat=np.array([[1.002] * 3, [1.4] * 3, [1.02] * 3]),
                ess_bulk=np.full((3, 3), 900.0), divergences=np.zeros(3))  # fmt: skip
    assert s.separated.tolist() == [False, True, False]
    tw = SimpleNamespace(n=3, ok=s.converged, method="nuts", samples=s)
    line = status_line(tw, 1.0, Path("t.zarr"))
    assert "converged (R-hat < 1.01, ESS > 400, <= 1 % divergent): 1/3" in line
    assert "1 of them with chains in separate modes" in line and "t.zarr" in line


@pytest.mark.slow
def test_nuts_sequential_update_matches_joint(vanco):
    prior, records, _ = vanco
    records = records[records.ID <= 4]
    d1, d2 = records[records.TIME <= 13.0], records[records.TIME > 13.0]
    kw = dict(method="nuts", chains=4, warmup=500, draws=1000)
    upd = Twins.identify(prior, d1, **kw).update(d2)
    joint = Twins.identify(prior, records, **kw, seed=11)
    za = upd.samples.eta.reshape(4, -1, 3)
    zb = joint.samples.eta.reshape(4, -1, 3)
    assert upd.samples.converged.all() and joint.samples.converged.all()
    assert np.all(np.abs(za.mean(1) - zb.mean(1)) < 0.1 * zb.std(1))
    np.testing.assert_allclose(za.std(1), zb.std(1), rtol=0.1)


def test_forecast_bands_are_calibrated():
    """90 % bands of the next measurement cover held-out observations of simulated
    patients about 90 % of the time (600 held-out values: binomial SD 1.2 points)."""
    prior = _prior()
    seen = [11.5, 13.0, 23.5]
    held = [35.5, 47.5]
    records, _ = simulate_tdm(prior, 300, 21, seen + held)
    train = records[(records.EVID == 1) | records.TIME.isin(seen)]
    tw = Twins.identify(prior, train)
    fc = tw.forecast(None, held, n_draws=400, seed=2, quantiles=(0.05, 0.5, 0.95))
    test = records[records.EVID.eq(0) & records.TIME.isin(held)]
    obs = test.pivot(index="ID", columns="TIME", values="DV").loc[tw.ids, held].to_numpy()
    lo = fc["conc_obs"].sel(quantile=0.05).to_numpy()
    hi = fc["conc_obs"].sel(quantile=0.95).to_numpy()
    coverage = np.mean((obs >= lo) & (obs <= hi))
    assert 0.85 <= coverage <= 0.95, coverage


def test_recommendation_agrees_with_grid_and_forecast(vanco_twins):
    tw = vanco_twins[2]
    template = Regimen(amt=1000.0, time=72.0, ii=12.0, addl=3, duration=1.0)
    target = AUC("conc", 400.0, 600.0, start=96.0, end=120.0)
    rec = tw.recommend(template, target, max_dose=3000.0, strength=250.0, n_draws=300, seed=4)
    assert rec["agree"].all()
    assert set(rec["dose"]) <= set(np.arange(250.0, 3001.0, 250.0))
    assert (rec["pta"] >= rec["pta_grid"] - 1 / 300).all()
    # the engine (cohort.simulate) at the recommended doses gives the same attainment
    rows = [
        Regimen(amt=d, time=72.0, ii=12.0, addl=3, duration=1.0).to_frame().assign(ID=pid)
        for pid, d in rec["dose"].items()
    ]
    fc = tw.forecast(pd.concat(rows), [96.0], targets=[target], n_draws=300, seed=4)
    np.testing.assert_allclose(fc["pta_0"].to_numpy(), rec["pta"].to_numpy(), atol=0.01)
    # the recommendation beats the label dose for most patients
    label = tw.forecast(template, [96.0], targets=[target], n_draws=300, seed=4)["pta_0"]
    assert np.mean(rec["pta"].to_numpy() >= label.to_numpy() - 1e-9) == 1.0
    # a smallest dose between strengths: doses stay whole strengths, from the next one up
    low = tw.recommend(template, target, max_dose=1000.0, strength=250.0, min_dose=600.0,
                       n_draws=100, seed=4)  # fmt: skip
    assert set(low["dose"]) <= {750.0, 1000.0}
    assert set(low["dose_grid"]) <= {750.0, 1000.0}
    # an interval that does not divide the template's 48-h span: every dose starting in it
    # (q7h: 72, 79, ..., 114 = 7 doses; round(48/7) = 7 too, q9h: 6 doses, round gave 5)
    by = tw.recommend(template, target, max_dose=3000.0, strength=250.0, intervals=[9.0],
                      n_draws=100, seed=4)  # fmt: skip
    assert (by["doses"] == 6).all() and (by["ii"] == 9.0).all()
    assert (rec["doses"] == 4).all()


def test_a_template_given_by_rate_keeps_its_infusion_length(vanco_twins):
    """A template's RATE was kept as the rate of a 1-unit dose: every dose became a 0.002-h
    bolus and peak targets got the wrong dose (a probe: 1,500 mg for a 2-h infusion's
    2,500 mg). ``amt=1000, rate=500`` is a 2-h infusion, as ``duration=2`` says."""
    tw = vanco_twins[2]
    peak = Level("conc", 20.0, 30.0, time=73.0)
    by = {
        kind: tw.recommend(
            Regimen(amt=1000.0, time=72.0, ii=12.0, addl=1, **given),
            peak,
            max_dose=3000.0,
            strength=250.0,
            n_draws=200,
            seed=5,
        )  # fmt: skip
        for kind, given in (("duration", {"duration": 2.0}), ("rate", {"rate": 500.0}))
    }
    np.testing.assert_array_equal(by["rate"]["dose"], by["duration"]["dose"])
    np.testing.assert_array_equal(by["rate"]["pta"], by["duration"]["pta"])
    with pytest.raises(TwinError, match="needs the template's amt"):
        tw.recommend(Regimen(amt=0.0, time=72.0, rate=500.0), peak, max_dose=3000.0)


def test_a_patients_forecast_does_not_depend_on_the_others_selected(vanco_twins):
    """Monte Carlo draws are keyed to the patient, not to its position: patient 3's forecast
    (bands, attainment, draws with assay error) is the same alone as beside patients 1-2 (its
    attainment moved 0.65 -> 0.71 with the selection, and a gradient optimum by 15 %)."""
    tw = vanco_twins[2]
    reg = Regimen(amt=1000.0, time=72.0, ii=12.0, addl=3, duration=1.0)
    target = AUC("conc", 400.0, 600.0, start=96.0, end=120.0)
    pid = tw.ids[2]
    both = tw.forecast(reg, [80.0, 96.0], targets=[target], n_draws=200, seed=7)
    alone = tw.select([pid]).forecast(reg, [80.0, 96.0], targets=[target], n_draws=200, seed=7)
    for name in ("conc", "conc_obs", "pta_0"):
        np.testing.assert_allclose(
            alone[name].sel(patient=pid).to_numpy(), both[name].sel(patient=pid).to_numpy(),
            rtol=1e-12, err_msg=name,
        )  # fmt: skip


def test_auc_simpson_accuracy():
    """AUC of a 1-cpt bolus over 24 h: analytic D/CL·(1 − e^{−k·24})."""
    cl, v, d = 3.0, 30.0, 500.0
    t = AUC("conc", start=0.0, end=24.0)
    c = d / v * np.exp(-cl / v * t.times())
    exact = d / cl * (1 - np.exp(-cl / v * 24.0))
    assert t.value(np, c) == pytest.approx(exact, rel=1e-6)


def test_store_round_trip_and_interrupted_save(vanco_twins, tmp_path):
    first, updated, _, _, _ = vanco_twins
    path = tmp_path / "twins.zarr"
    first.save(path)
    again = open_twins(path)
    np.testing.assert_array_equal(again.laplace.eta, first.laplace.eta)
    assert again.data.n_observations == first.data.n_observations
    # an interrupted save: a partial group without the commit
    (path / "update_001").mkdir()
    assert len(open_twins(path).history) == 1
    updated.save(path)
    latest, earlier = open_twins(path), open_twins(path, update=0)
    np.testing.assert_array_equal(latest.laplace.cov, updated.laplace.cov)
    np.testing.assert_array_equal(earlier.laplace.eta, first.laplace.eta)
    assert latest.data.n_observations == 60 and len(latest.history) == 2
    import xarray as xr

    post = xr.open_zarr(path, group="update_001/posterior", consolidated=False)
    assert post["CL"].dims == ("chain", "draw", "patient")
    # an existing empty folder is written into (it was refused, after the whole fit)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    first.save(empty)
    np.testing.assert_array_equal(open_twins(empty).laplace.eta, first.laplace.eta)


def _same_individuals(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables matched by column name (a reordered column would still differ)."""
    assert sorted(a.columns) == sorted(b.columns)
    pd.testing.assert_frame_equal(a, b[a.columns])


def test_reopened_twins_keep_each_parameter_with_its_values(vanco_twins, tmp_path):
    """The vancomycin prior's parameters (CL, V1, Q, V2) are not in alphabetical order: a
    reopened store gives every parameter its own estimate and the same forecast, also for a
    store written with its prior's keys sorted (as before 2026-12-05), whose random effects are
    then matched by their stored names."""
    import json

    import zarr

    first = vanco_twins[0]
    assert first.prior.names == ("CL", "V1", "Q", "V2")
    path = tmp_path / "twins.zarr"
    first.save(path)
    again = open_twins(path)
    assert again.prior.names == first.prior.names
    _same_individuals(first.individual(), again.individual())
    reg = Regimen(amt=1000.0, time=36.0, ii=12.0, addl=1, duration=1.0)
    times = np.array([47.0, 59.5])
    a, b = first.forecast(reg, times), again.forecast(reg, times)
    np.testing.assert_allclose(b["conc"].values, a["conc"].values, rtol=1e-12)
    # the earlier layout: the prior stored with sorted keys (Q before V1)
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["prior"] = json.dumps(json.loads(root.attrs["prior"]), sort_keys=True)
    old = open_twins(path)
    assert old.prior.names == ("CL", "Q", "V1", "V2")
    _same_individuals(first.individual(), old.individual())
    c = old.forecast(reg, times)
    np.testing.assert_allclose(c["conc"].values, a["conc"].values, rtol=1e-12)


def test_bad_records_give_clear_errors(vanco, vanco_twins):
    prior, records, _ = vanco
    tw, _, _, d1, d2 = vanco_twins
    late = d2.copy()
    late.loc[late.index[0], "TIME"] = 5.0
    with pytest.raises(TwinError, match=r"update record 1 \(ID 1, TIME 5\): earlier"):
        tw.update(late)
    stranger = d2.copy()
    stranger.loc[stranger.index[0], "ID"] = 99
    with pytest.raises(TwinError, match="update record 1: ID 99 is not one of"):
        tw.update(stranger)
    early = records.copy()
    early.loc[early.index[0], "TIME"] = 12.0  # patient 1's dose after its first observation
    early = early.sort_values(["ID", "TIME"], kind="stable")
    with pytest.raises(TwinError, match=r"record \d+ \(ID 1, TIME 11.5\): observation before"):
        Twins.identify(prior, early)
    with pytest.raises(TwinError, match="CRCL"):
        Twins.identify(prior, d1.drop(columns=["CRCL"]))
    other = dict(prior.raw, population={**prior.raw["population"], "model": "pk1_iv"})
    with pytest.raises(CohortError, match="not parameters of model 'pk1_iv'"):
        TwinPrior.from_raw(other)
    # the failed updates left the twins as they were
    assert tw.data.n_observations == 24
    last = float(tw.data.to_frame().query("ID == 1")["TIME"].max())
    with pytest.raises(
        TwinError, match=rf"patient 1 is at TIME 10, before its last record \(TIME {last:g}\)"
    ):
        tw.forecast(Regimen(1000.0, "central", time=10.0), [60.0], n_draws=20)
    # a dose recommendation for a time already past was made "on top of" the records
    target = AUC("conc", 400.0, 600.0, start=48.0, end=72.0)
    with pytest.raises(TwinError, match=r"is at TIME 10, before its last record"):
        tw.recommend(Regimen(1000.0, "central", time=10.0), target, max_dose=3000.0)
    # a target window over before the first dose to choose: no dose can change it
    with pytest.raises(TwinError, match=r"ends at TIME 24, before the first dose to choose"):
        tw.recommend(
            Regimen(1000.0, "central", time=48.0, ii=12.0, addl=1),
            AUC("conc", 400.0, 600.0, start=0.0, end=24.0),
            max_dose=3000.0,
        )
    with pytest.raises(TwinError, match="auc:OUTPUT"):
        parse_target("auc:conc:1")
    with pytest.raises(TwinError, match=r"'auc:conc:48:72:600:400': AUC: lo must be < hi"):
        parse_target("auc:conc:48:72:600:400")


def test_prior_from_fit_reproduces_the_fit(tmp_path):
    """pheno's ML fit (per-kg CL and V, Apgar < 5 on V) as a twin prior: the twins' MAP
    equals the fit's conditional modes (the same posterior given the fit's θ, Ω, σ), also
    when the prior is the saved fit's path (as the CLI takes it)."""
    from pathlib import Path

    from cohort.inference import NLME, Covariate, ErrorModel, Param

    frame = pd.read_csv(Path(__file__).parent / "data" / "pheno.dta", sep=r"\s+")
    per_kg = Covariate("WGT", kind="power", ref=1.0, fixed=1.0)
    apgar = Covariate("APGR", kind="binary", ref=5.0)
    spec = NLME(
        "pk1_iv",
        params=(Param("CL", init=0.005, covariates=(per_kg,)),
                Param("V", init=1.0, covariates=(per_kg, apgar))),
        error=ErrorModel("proportional", prop=0.1),
    )  # fmt: skip
    res = cohort.fit(spec, frame, "ml", starts=1)
    prior = TwinPrior.from_fit(res)
    assert prior.covariates == ("APGR", "WGT")
    tw = Twins.identify(prior, frame)
    np.testing.assert_allclose(tw.laplace.eta, res.eta, atol=1e-5)
    saved = res.save(tmp_path / "pheno_fit.nc")
    assert TwinPrior.from_fit(saved).to_json() == prior.to_json()
    again = Twins.identify(saved, frame)
    np.testing.assert_array_equal(again.laplace.eta, tw.laplace.eta)
    assert Level("conc", time=24.0).name == "conc@24"


def test_packaged_vancomycin_prior_is_the_priors_spec():
    from pathlib import Path

    from cohort.twin.mipd import PRIOR

    spec = Path(__file__).parent.parent / VANCO
    assert PRIOR.read_bytes() == spec.read_bytes()


@pytest.mark.slow
def test_unconverged_nuts_patients_are_rerun_longer():
    """With far too few draws nobody converges: every patient is rerun as one batch with 2×
    warmup and 3× draws, kept thinned to the requested count, diagnostics from the rerun."""
    from cohort.twin import posterior
    from cohort.twin.problem import prior_pop

    tw = Twins.identify(_gaussian_prior(), _gaussian_records(4, 3))
    args = (tw.bound, prior_pop(tw.prior), tw.laplace)
    once = posterior.nuts(*args, chains=2, warmup=20, draws=30, seed=1, retry=False)
    again = posterior.nuts(*args, chains=2, warmup=20, draws=30, seed=1)
    assert once.eta.shape == again.eta.shape == (3, 2, 30, 1)
    assert not once.converged.any()
    # the rerun has 90 draws per chain: its bulk ESS is larger than the first pass's
    assert np.all(again.ess_bulk > once.ess_bulk)


def test_identification_killed_midway_resumes_from_its_checkpoint(vanco, tmp_path, monkeypatch):
    """Blocks of at most 5 patients (12 patients: 3 blocks of 4): a crash in the second
    block leaves the first in the checkpoint; the same call again computes only blocks 2 and
    3, gives the uninterrupted run's twins bit for bit and removes the checkpoint. A
    checkpoint of other inputs is replaced, not mixed in; a user's directory is refused."""
    from cohort.errors import OutputError
    from cohort.twin import blocks, twins

    prior, records, _ = vanco
    d1 = records[records.TIME <= 13.0]
    monkeypatch.setattr(blocks, "BLOCK", 5)
    whole = Twins.identify(prior, d1)
    real, calls, crash = twins._compute, [], [True]

    def crash_in_block_2(prior, bm, eta0, method, opts, previous, index):
        calls.append(int(index[0]))
        if index[0] == 4 and crash[0]:
            raise KeyboardInterrupt("killed")
        return real(prior, bm, eta0, method, opts, previous, index)

    monkeypatch.setattr(twins, "_compute", crash_in_block_2)
    ckpt = tmp_path / "t.blocks.zarr"
    with pytest.raises(KeyboardInterrupt):
        Twins.identify(prior, d1, checkpoint=ckpt)
    assert calls == [0, 4] and ckpt.exists()
    crash[0] = False
    resumed = Twins.identify(prior, d1, checkpoint=ckpt)
    assert calls == [0, 4, 4, 8]  # only the blocks the crash left
    np.testing.assert_array_equal(resumed.laplace.eta, whole.laplace.eta)
    np.testing.assert_array_equal(resumed.laplace.cov, whole.laplace.cov)
    assert not ckpt.exists()

    crash[0] = True
    with pytest.raises(KeyboardInterrupt):  # another computation's checkpoint ...
        Twins.identify(prior, d1.iloc[:-1], checkpoint=ckpt)
    calls.clear()
    crash[0] = False
    notes = ckpt / "notes.txt"  # ... holding a user's file is not replaced ...
    notes.write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        Twins.identify(prior, d1, checkpoint=ckpt)
    assert notes.read_text() == "mine"
    notes.unlink()
    again = Twins.identify(prior, d1, checkpoint=ckpt)  # ... else it is replaced, not mixed in
    assert calls == [0, 4, 8]
    np.testing.assert_array_equal(again.laplace.eta, whole.laplace.eta)
    user = tmp_path / "mine.zarr"
    user.mkdir()
    (user / "data.txt").write_text("user's")
    with pytest.raises(OutputError, match="not written by cohort"):
        Twins.identify(prior, d1, checkpoint=user)
    assert (user / "data.txt").read_text() == "user's"
    # a cohort store of another kind (a population the user named like a checkpoint) is
    # refused, not removed as a stale checkpoint (a probe lost a 500-patient population)
    population = tmp_path / "pop.blocks.zarr"
    cohort.population.generate("adult_pk_oral", n=20, seed=1, out=str(population))
    with pytest.raises(OutputError, match="not a twin checkpoint"):
        Twins.identify(prior, d1, checkpoint=population)
    assert len(cohort.open_result(population).patient) == 20


@pytest.mark.parametrize(
    "with_nuts", [False, pytest.param(True, marks=pytest.mark.slow, id="nuts")]
)
def test_twins_of_a_model_without_closed_form_match_the_closed_form(with_nuts):
    """Models without a closed form are identified through the adaptive ODE solve, every
    derivative in forward mode (diffrax's ForwardMode; forward-over-reverse crashed every
    such model, and reverse mode with a differences Hessian was 2x slower to a first MAP and
    more than 4x slower in NUTS). Forced onto the ODE path, the phenobarbital model's twins
    equal its closed-form ones (modes to the ODE tolerance)."""
    import dataclasses

    from cohort.inference.problem import bind
    from cohort.twin import posterior
    from cohort.twin.problem import bind_twins, nlme_of, prior_pop, read_records

    prior = _prior("priors/neonate_phenobarbital.toml")
    reg = Regimen(amt=20.0, ii=12.0, addl=3, duration=0.5)
    from cohort.twin.synthetic import simulate_records

    records, _ = simulate_records(prior, 4, [2.0, 11.9, 35.5], reg, seed=3)
    data = read_records(records, prior)
    exact = bind_twins(prior, data)
    ode = bind(nlme_of(prior), data, engine="diffrax")
    assert exact.engine == "closed_form" and ode.engine == "diffrax"
    fields = {f.name: getattr(exact, f.name) for f in dataclasses.fields(exact)}
    fields.update(engine=ode.engine, options=ode.options)
    ode = type(exact)(**fields)
    eta0 = posterior.starts(prior.omega, data.n_subjects)
    pop = prior_pop(prior)
    a = posterior.map_laplace(exact, pop, eta0)
    b = posterior.map_laplace(ode, pop, eta0)
    assert a.ok.all() and b.ok.all()
    np.testing.assert_allclose(b.eta, a.eta, atol=1e-4)
    np.testing.assert_allclose(b.cov, a.cov, rtol=1e-3, atol=1e-6)
    if not with_nuts:
        return
    # NUTS through the ODE (forward-mode gradients) samples the closed form's posterior: same
    # chains' seeds, so the draws agree to the ODE tolerance's effect on the trajectories
    sa = posterior.nuts(exact, pop, a, chains=2, warmup=150, draws=150, retry=0)
    sb = posterior.nuts(ode, pop, b, chains=2, warmup=150, draws=150, retry=0)
    assert np.all(np.isfinite(sb.eta))
    np.testing.assert_allclose(sb.eta.mean(axis=(1, 2)), sa.eta.mean(axis=(1, 2)), atol=0.05)


def _pheno_records(trough_row_first: bool, trough_time: float = 12.0) -> pd.DataFrame:
    rows = [
        (0.0, 1, 25.0, np.nan),
        (2.0, 0, 0.0, 17.3),
        (12.0, 1, 25.0, np.nan),
        (24.0, 0, 0.0, 13.0),
    ]
    trough = (trough_time, 0, 0.0, 14.0)
    rows.insert(2 if trough_row_first else 3, trough)
    frame = pd.DataFrame(rows, columns=["TIME", "EVID", "AMT", "DV"])
    return frame.assign(ID=1, WGT=1.4, APGR=7, CMT=1)


def test_a_sample_recorded_before_a_dose_at_its_time_is_pre_dose():
    """NONMEM reads records in order: a trough at 12 h written before the 12-h dose is the
    pre-dose level (as a sample at 11.99999 h), written after it the post-dose level. Both
    the twin's estimates and a ``Level`` target at a dose time use the pre-dose value."""
    prior = _prior("priors/neonate_phenobarbital.toml")
    before = Twins.identify(prior, _pheno_records(True)).individual()
    after = Twins.identify(prior, _pheno_records(False)).individual()
    near = Twins.identify(prior, _pheno_records(True, 12.0 - 1e-5)).individual()
    np.testing.assert_allclose(before["V"], near["V"], rtol=1e-5)
    assert abs(after["V"].iloc[0] / before["V"].iloc[0] - 1.0) > 0.05  # a real difference
    twins = Twins.identify(prior, _pheno_records(False))
    reg = Regimen(amt=25.0, time=36.0, ii=12.0, addl=2)
    at = twins.forecast(reg, np.array([60.0]), targets=[Level("conc", 10.0, 30.0, time=60.0)])
    pre = twins.forecast(reg, np.array([60.0 - 1e-5]))
    trough = float(at["target_0"].sel(quantile=0.5).values.ravel()[0])
    post = float(at["conc"].sel(quantile=0.5).values.ravel()[0])  # the curve at 60 h itself
    np.testing.assert_allclose(trough, float(pre["conc"].sel(quantile=0.5).values[0, 0]), rtol=1e-5)
    assert post > trough + 5.0  # 25 mg into ~1.4 L: the dose at 60 h is not in the trough


def test_a_measured_zero_under_proportional_error_is_refused_by_row():
    """pheno's prior has proportional error: a DV of 0 is refused when the records are
    accepted (identify, update), naming the row, as for a population fit."""
    from cohort.data import DataError

    prior = _prior("priors/neonate_phenobarbital.toml")
    records = _pheno_records(True)
    records.loc[records["TIME"] == 24.0, "DV"] = 0.0
    with pytest.raises(DataError, match=r"row 5, column DV: DV 0 under proportional error"):
        Twins.identify(prior, records)
    twins = Twins.identify(prior, records[records["TIME"] < 24.0])
    with pytest.raises(DataError, match="DV 0 under proportional error"):
        twins.update(records[records["TIME"] >= 24.0])


def test_simulated_records_of_an_oral_prior_are_observed_in_its_output(tmp_path):
    """Synthetic observation rows carried the dose's CMT (the depot for oral models), which
    the fit now refuses as observations of another compartment: they are in the output."""
    from pathlib import Path

    from cohort.twin.synthetic import simulate_records

    spec = (Path(__file__).parent.parent / "priors" / "adult_pk_oral.toml").read_text()
    oral = tmp_path / "oral_twin.toml"
    oral.write_text(spec + '\n[error]\nkind = "proportional"\nprop = 0.1\noutput = "conc"\n'
                    'citation = "test"\n')  # fmt: skip
    prior = TwinPrior.from_spec(oral)
    records, truth = simulate_records(prior, 3, [1.0, 4.0, 12.0], Regimen(amt=320.0), seed=2)
    assert set(records.loc[records["EVID"] == 0, "CMT"]) == {"conc"}
    tw = Twins.identify(prior, records)
    assert tw.ok.all()
    # three samples with 10 % error pin each patient's clearance
    est = tw.individual()["CL"].to_numpy()
    np.testing.assert_allclose(est, np.asarray(truth["CL"]), rtol=0.3)


def test_a_category_code_the_prior_does_not_know_is_refused():
    """DIAL = 2 (or 0.5) is no category of the vancomycin prior: it was read as the reference
    (non-dialysis CL and V1) without a word; the patient and the allowed codes are named."""
    prior = _prior()
    cov = pd.DataFrame({"WT": [70.0, 80.0], "CRCL": [100.0, 60.0], "DIAL": [1.0, 2.0]},
                       index=pd.Index([np.int64(101), np.int64(104)], name="ID"))  # fmt: skip
    with pytest.raises(TwinError, match=r"'DIAL': patient 104 has 2, not one of .*0 \(0\)"):
        prior.log_typical(cov)
    cov.loc[104, "DIAL"] = 0.0
    mu = prior.log_typical(cov)
    assert np.exp(mu[0, 0]) == pytest.approx(4.5 * (100 / 120) ** 0.8 * 0.7)  # CL, dialysis
    cov.loc[104, "CRCL"] = np.nan
    with pytest.raises(TwinError, match="missing or non-numeric for patient 104;"):
        prior.log_typical(cov)


def _records_stage(tw, new):
    """What ``tw.update(new)`` does before its posterior search (all its checks and warnings),
    without the search (a new data shape compiles it again: minutes of the suite)."""
    from cohort.twin.problem import read_records
    from cohort.twin.records import append_records

    combined, rows = append_records(tw.data, new, tw.prior.model)
    return read_records(combined, tw.prior, rows)


def test_an_update_applied_twice_corrected_results_and_zeros_are_named_by_file_row(vanco_twins):
    """Re-applying an update is refused (it said 'row 11: duplicate of row 10', rows of the
    twin's history); a corrected result at a time already seen, and a DV of 0 (a lab's code
    for below LLOQ), are used but said, naming the update's own row."""
    import warnings

    from cohort.errors import CohortWarning

    first, updated, _, _, d2 = vanco_twins
    with pytest.raises(TwinError, match=r"update record 1 \(ID 1, TIME 35.5\): the twin has seen "
                                        r"this record already \(every record"):  # fmt: skip
        updated.update(d2)
    obs = d2[(d2.EVID == 0) & (d2.ID == 1)]
    corrected = obs.iloc[[-1]].assign(DV=obs.iloc[-1].DV * 1.5)
    with pytest.warns(CohortWarning, match=r"update record 1 \(ID 1, TIME 59.5\): DV .* second "
                                           r"result at the time of one already seen"):  # fmt: skip
        _records_stage(updated, corrected)
    zero = d2.copy()
    k = int(np.flatnonzero((zero.EVID == 0).to_numpy())[1])
    zero.iloc[k, zero.columns.get_loc("DV")] = 0.0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", CohortWarning)
        _records_stage(first, zero)
    said = [str(w.message) for w in seen if issubclass(w.category, CohortWarning)]
    assert any(m.startswith(f"update record {k + 1} (ID ") and "DV 0 is a zero" in m
               for m in said), said  # fmt: skip


def test_a_damaged_update_is_named_and_the_earlier_one_still_opens(vanco_twins, tmp_path):
    """A truncated chunk of the latest update gave zarr's 'Zstd decompression error' traceback
    naming neither the store nor the update; now both, with the way back to the earlier one."""
    from cohort.errors import OutputError

    first, updated, _, _, _ = vanco_twins
    path = tmp_path / "tw.zarr"
    first.save(path)
    updated.save(path)
    chunk = next(p for p in (path / "update_001" / "map").rglob("c/*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(OutputError, match=r"update 1 \(update_001\) of the twin store cannot be "
                                          r"read .*open_twins\(path, update=0\)"):  # fmt: skip
        open_twins(path)
    again = open_twins(path, update=0)
    assert again.data.n_observations == first.data.n_observations
    # a chunk deleted: zarr reads its fill value, and the update opened with NaN estimates
    # flagged ok (a forecast of NaN, `twin dose` crashed; a probe): its digest differs
    chunks = [c for c in (path / "update_000" / "map" / "eta" / "c").rglob("*") if c.is_file()]
    assert chunks
    for chunk in chunks:
        chunk.unlink()
    with pytest.raises(OutputError, match=r"update 0 \(update_000\) .*differs from what was"):
        open_twins(path, update=0)


def test_the_update_log_numbers_stored_updates_with_their_branches(vanco_twins, tmp_path):
    """An update from an earlier one (--from-update 0) was listed by `cohort info` as the
    latest's lineage 0, 1: the row named "1" was stored update 2 and update 1 was hidden."""
    from cohort.twin.store import update_log

    first, updated, _, _, d2 = vanco_twins
    path = tmp_path / "tw.zarr"
    first.save(path)
    updated.save(path)
    first.update(d2).save(path)  # a second branch from update 0 (the same records again)
    log = update_log(path)
    assert [(e["update"], e["from"], e["step"]) for e in log] == [
        (0, None, "identify"), (1, 0, "update"), (2, 0, "update"),
    ]  # fmt: skip
    assert [int(sum(e["n_observations"])) for e in log] == [
        first.data.n_observations,
        updated.data.n_observations,
        updated.data.n_observations,
    ]


def test_an_updates_reader_warnings_come_once_by_its_own_rows(vanco_twins):
    """A DV on a dose row of an update was warned twice: once by the update's row, once by its
    place in the twin's whole history (and again at every later update)."""
    import warnings

    from cohort.errors import CohortWarning

    first, _, _, _, d2 = vanco_twins
    dose = d2[d2.ID == 1].iloc[[-1]].assign(TIME=60.0, EVID=1, AMT=1000.0, RATE=1000.0,
                                           CMT="central", DV=5.0)  # fmt: skip
    odd = pd.concat([d2, dose]).sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)
    k = int(np.flatnonzero((odd.EVID == 1).to_numpy())[0])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", CohortWarning)
        _records_stage(first, odd)
    said = [str(w.message) for w in seen if issubclass(w.category, CohortWarning)]
    about = [m for m in said if "dose" in m and "DV" in m]
    assert len(about) == 1 and str(k + 1) in about[0], said


def test_a_finished_checkpoint_holding_a_users_file_is_kept_with_a_warning(tmp_path):
    """Removing a used checkpoint that a user had put a file into raised, and the finished
    twins were never returned (a reviewer): it is kept, and said so."""
    from cohort.twin.checkpoint import Checkpoint, KeptCheckpoint

    ck = Checkpoint(tmp_path / "k.blocks.zarr", "inputs")
    (ck.path / "notes.txt").write_text("mine")
    with pytest.warns(cohort.CohortWarning, match=r"is kept: .*notes\.txt"):
        KeptCheckpoint(ck.path).remove()
    assert (ck.path / "notes.txt").read_text() == "mine"
    (ck.path / "notes.txt").unlink()
    KeptCheckpoint(ck.path).remove()
    assert not ck.path.exists()


def test_vancomycin_prior_caps_creatinine_clearance_at_150():
    """Goti 2018 caps CrCL at 150 mL/min in CL's covariate model: a patient at 300 got a CL
    of 10.9 L/h instead of 5.9 (a probe)."""
    prior = _prior()
    cov = pd.DataFrame({"WT": [70.0] * 3, "CRCL": [120.0, 150.0, 300.0], "DIAL": [0, 0, 0]})
    cl = np.exp(prior.log_typical(cov)[:, prior.names.index("CL")])
    np.testing.assert_allclose(cl, [4.5, 4.5 * 1.25**0.8, 4.5 * 1.25**0.8], rtol=1e-12)


def test_doses_in_grams_leave_twins_at_the_prior_and_say_so(vanco):
    """AMT in g for a prior in mg: predictions ~0 whatever the parameters, so the twins were
    the prior itself, flagged ok, without a word (a probe)."""
    from cohort.errors import CohortWarning

    prior, records, _ = vanco
    grams = records[records.ID.isin(records.ID.unique()[:2])].copy()
    grams["AMT"] = grams["AMT"] / 1000.0
    with pytest.warns(CohortWarning, match=r"observations left the posterior where the prior"):
        Twins.identify(prior, grams)


def test_a_minimum_target_sees_the_trough_before_a_bolus():
    """min over [12, 24] with 1,000 mg boluses every 12 h (CL 5 L/h, V 50 L): the lowest level
    is the pre-dose trough at 12 h, 20·e^-1.2 mg/L; sampled only at the grid times (each just
    after its dose) the minimum read 8.66 mg/L and a MIC-type PTA was overstated (a probe)."""
    import cohort
    from cohort.twin.targets import Minimum

    target = Minimum("conc", lo=7.0, start=12.0, end=24.0, points=13)
    times = target.times()
    assert np.all(np.diff(times) > 0)
    ds = cohort.simulate(
        "pk1_iv", {"CL": np.array([5.0]), "V": np.array([50.0])},
        cohort.Regimen(1000.0, "central", ii=12.0, addl=2), times, method="closed_form",
    )  # fmt: skip
    value = float(target.value(np, ds.conc.values[0]))
    assert value == pytest.approx(20.0 * np.exp(-1.2), rel=1e-5)
    assert not target.attained(value)  # 6.0 < 7 mg/L: not attained (it read 8.66, attained)


def test_two_results_at_one_time_are_said_at_identification():
    """A second result at a time already observed (another DV) was taken silently when
    identifying (an update says it): now said, naming both records (a probe)."""
    from cohort.errors import CohortWarning
    from cohort.twin.problem import read_records
    from cohort.twin.synthetic import simulate_records

    prior = _prior("priors/neonate_phenobarbital.toml")
    records, _ = simulate_records(prior, 2, [2.0, 11.9], Regimen(amt=20.0), seed=3)
    obs = records[records["EVID"] == 0].iloc[[0]].assign(DV=9.9)
    twice = pd.concat([records, obs]).sort_values(["ID", "TIME"], kind="stable")
    with pytest.warns(CohortWarning, match=r"2 results at one time .*all are used"):
        read_records(twice.reset_index(drop=True), prior)


def test_a_twin_store_overwrite_killed_midway_keeps_the_old_store(tmp_path, monkeypatch):
    """--overwrite deleted the old twin store before writing the new one: killed in between,
    the previous state was lost (a probe). The new store is now written aside and swapped."""
    import xarray as xr

    prior = _prior("priors/neonate_phenobarbital.toml")
    from cohort.twin.synthetic import simulate_records

    records, _ = simulate_records(prior, 2, [2.0, 11.9], Regimen(amt=20.0), seed=3)
    tw = Twins.identify(prior, records)
    out = tmp_path / "t.zarr"
    tw.save(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_zarr", killed)
    with pytest.raises(KeyboardInterrupt):
        tw.save(out, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(open_twins(out).laplace.eta, tw.laplace.eta)
    tw.save(out, overwrite=True)  # the killed replacement's leftover: cohort's, replaced
    np.testing.assert_array_equal(open_twins(out).laplace.eta, tw.laplace.eta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr"]


def test_a_plan_starting_at_a_recorded_dose_is_said(vanco_twins):
    """A dose planned at the time of a dose already recorded adds to it: a recommendation "at
    48 h" came on top of the 1000 mg recorded at 48 h without a word (a probe)."""
    tw, _, _, d1, _ = vanco_twins
    dose_row = d1[d1["EVID"] == 1].groupby("ID").head(1).copy()
    t_next = float(d1["TIME"].max()) + 1.0
    dose_row["TIME"] = t_next
    later = tw.update(dose_row)
    with pytest.warns(CohortWarning, match=rf"first planned dose is at TIME {t_next:g}, where its"):
        later.forecast(Regimen(500.0, "central", time=t_next), [t_next + 6.0], n_draws=20)


def test_an_updates_infusions_are_kept_when_the_first_records_had_none(vanco):
    """An update's RATE column was cut to the first records' columns: with boluses only on
    day 0, day 1's infusions ran as boluses without a word (a review)."""
    prior, records, _ = vanco
    d1, d2 = records[records.TIME <= 13.0], records[records.TIME > 13.0]
    first = Twins.identify(prior, d1.drop(columns=["RATE"]).assign(AMT=d1.AMT))
    later = first.update(d2)
    doses = later.data.to_frame().query("EVID == 1 and TIME > 13")
    np.testing.assert_array_equal(doses["RATE"].to_numpy(), d2.query("EVID == 1")["RATE"])
    assert (doses["RATE"] > 0).all()


def test_an_update_repeating_the_whole_history_is_named_a_cumulative_export(vanco_twins):
    """A hospital system's cumulative export (day 0 again, then day 1) was refused as "was
    this update applied before?", naming row 1 alone (a probe)."""
    first, _, _, d1, d2 = vanco_twins
    both = pd.concat([d1, d2]).sort_values(["ID", "TIME"], kind="stable")
    with pytest.raises(TwinError, match=rf"{len(d1)} of them .* repeat every record the twin"):
        first.update(both)
    with pytest.raises(TwinError, match="was this update applied before"):
        first.update(d1)


def test_records_in_other_units_than_the_priors_are_said(vanco):
    """TIME in minutes for an hourly prior gave twins with CL ten prior SDs from its typical
    value, flagged ok, without a word (a probe): an estimate that far out is named."""
    prior, records, _ = vanco
    minutes = records.assign(TIME=records.TIME * 60.0)
    for col in ("II",):
        if col in minutes:
            minutes[col] = minutes[col] * 60.0
    if "RATE" in minutes:
        minutes["RATE"] = minutes["RATE"] / 60.0
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        Twins.identify(prior, minutes)
    assert any("8.1 prior SDs below the typical value" in str(w.message) for w in said), [
        str(w.message) for w in said
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", cohort.CohortWarning)
        Twins.identify(prior, records)  # in the prior's units: nothing to say


def test_an_update_of_several_dvids_is_refused_and_one_without_takes_the_twins_kind(
    vanco_twins,
):
    """An update's DVID column was dropped when the twins' records had none, and effects
    were pooled with concentrations without a word (a review); twins identified with one
    DVID, updated without the column, were refused as two kinds."""
    from cohort.twin.records import append_records

    first, _, _, d1, d2 = vanco_twins
    mixed = d2.assign(DVID=np.where(np.arange(len(d2)) % 2 == 0, 1, 2))
    with pytest.raises(TwinError, match=r"update record \d+: observations of 2 kinds"):
        append_records(first.data, mixed, first.prior.model)
    own = cohort.read_nonmem(d1.assign(DVID=1), first.prior.model)
    combined, _ = append_records(own, d2, first.prior.model)
    assert set(combined["DVID"]) == {"1"}
    with pytest.raises(TwinError, match="observations of DVID 2, where the twins learnt from"):
        append_records(own, d2.assign(DVID=2), first.prior.model)
    from cohort.data.reader import dvid_label

    assert dvid_label(1_000_001) != dvid_label(1_000_002) and dvid_label("1.0") == "1"
    _records_stage(dataclasses_replace_data(first, own), d2)


def dataclasses_replace_data(tw, data):
    """``tw`` with other (same patients') records, for the record stage alone."""
    import dataclasses

    return dataclasses.replace(tw, data=data)


def test_saving_an_older_twin_again_is_refused(vanco_twins, tmp_path):
    """Saving the day-1 twins after their day-2 update made day 1 current again, and the
    day-2 records could then be applied a second time (a probe). It is refused; saving the
    latest again adds nothing."""
    from cohort.twin.store import update_log

    first, updated = vanco_twins[:2]
    store = tmp_path / "tw.zarr"
    first.save(store)
    updated.save(store)
    with pytest.raises(TwinError, match="stored already as update 0, and the store's latest"):
        first.save(store)
    updated.save(store)
    assert [e["update"] for e in update_log(store)] == [0, 1]
    assert open_twins(store).data.n_observations == 60
