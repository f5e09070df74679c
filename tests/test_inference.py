"""NLME inference against published fits (nlme Theoph, NONMEM pheno), likelihood pieces,
failed ODE solves, results storage and the ``fit`` CLI command. Heavy runs are ``slow``."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats

import cohort
from cohort.data import read_nonmem
from cohort.errors import CohortWarning
from cohort.inference import (
    NLME,
    Covariate,
    ErrorModel,
    Param,
    SpecError,
    bind,
    fit,
    likelihood,
    ml,
    predict,
)

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "fit_references.json").read_text())
THEOPH = DATA / "theoph_nonmem.csv"


def theoph_nlme_spec(omega: str = "diagonal") -> NLME:
    """nlme's Theoph model: lKe, lKa, lCl with random effects on lKa and lCl. The data hold
    AMT = Dose × Wt, so CL = Cl/kg × WT (fixed exponent 1) and V = CL/KE reproduce nlme's
    per-kg parameterisation exactly."""
    per_kg = Covariate("WT", kind="power", ref=1.0, fixed=1.0)
    return NLME(
        "pk1_oral",
        params=(
            Param("KE", init=0.1, iiv=False, units="1/h"),
            Param("KA", init=1.5),
            Param("CL", init=0.04, covariates=(per_kg,), units="L/h/kg"),
        ),
        transform=lambda q: {"CL": q["CL"], "KA": q["KA"], "V": q["CL"] / q["KE"]},
        error=ErrorModel("additive"),
        omega=omega,
    )


def pheno_spec() -> tuple[NLME, pd.DataFrame]:
    frame = pd.read_csv(DATA / "pheno.dta", sep=r"\s+")
    frame["APGR_LT5"] = (frame["APGR"] < 5).astype(int)
    per_kg = Covariate("WGT", kind="power", ref=1.0, fixed=1.0)
    spec = NLME(
        "pk1_iv",
        params=(
            Param("CL", init=0.005, covariates=(per_kg,)),
            Param("V", init=1.0, covariates=(per_kg, Covariate("APGR_LT5", kind="binary"))),
        ),
        error=ErrorModel("proportional", prop=0.1),
    )
    return spec, frame


@pytest.fixture(scope="module")
def theoph_ml():
    return fit(theoph_nlme_spec(), THEOPH, "ml")


# -- predictions and likelihood pieces ---------------------------------------------------------
@pytest.mark.parametrize("name", ["pk1_oral", "pk2_iv"])
def test_superposition_matches_engine(name):
    """Exact predictions at arbitrary times for a history with ADDL, infusion, SS and EVID 4."""
    m = cohort.models.get(name)
    first, last = m.dose_targets[0], m.dose_targets[-1]
    df = pd.DataFrame(
        {
            "ID": 1,
            "TIME": [0.0, 5.0, 20.0, 30.0],
            "AMT": [100.0, 50.0, 80.0, 60.0],
            "EVID": [1, 1, 1, 4],
            "CMT": [first, last, first, last],
            "RATE": [0.0, 25.0, 0.0, 0.0],
            "ADDL": [2, 0, 0, 1],
            "II": [4.0, 0.0, 12.0, 6.0],
            "SS": [0, 0, 1, 0],
        }
    )
    table = cohort.dosing.event_table(df, m.state_names, m.dose_targets)
    times = np.array([0.0, 0.5, 3.0, 4.0, 9.0, 19.9, 20.0, 25.0, 30.5, 40.0, 55.0])
    p = {k: jnp.asarray(v) for k, v in m.defaults().items()}
    ev = {k: jnp.asarray(v[0]) for k, v in table.arrays().items()}
    f, ok = jax.jit(
        lambda p: predict.closed_form_subject(m, "conc", p, ev, jnp.asarray(times), True)
    )(p)
    pop = {k: [float(v)] for k, v in p.items()}
    # The engine's closed form is itself cross-checked against diffrax in test_pk_analytic.
    ref = cohort.simulate(m, pop, df, times, method="closed_form")["conc"].values[0]
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(f), ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", ["additive", "proportional", "combined", "log-additive"])
def test_error_models_match_scipy(kind):
    f = jnp.array([1.0, 2.5, 4.0])
    dv = jnp.array([1.2, 2.0, 4.5])
    sigma = jnp.array([0.3, 0.2])
    mask, cens = jnp.ones(3, bool), jnp.zeros(3, bool)
    ll = likelihood.loglik_obs(kind, sigma, f, dv, mask, cens, jnp.zeros(3))
    sd = {
        "additive": 0.3 + 0 * f,
        "proportional": 0.2 * f,
        "combined": jnp.sqrt(0.09 + 0.04 * f**2),
        "log-additive": 0.3 + 0 * f,
    }[kind]
    y, m = (jnp.log(dv), jnp.log(f)) if kind == "log-additive" else (dv, f)
    np.testing.assert_allclose(ll, scipy.stats.norm.logpdf(y, m, sd), rtol=1e-12)


def test_m3_censored_term():
    f, lloq = jnp.array([0.4]), jnp.array([0.5])
    term = likelihood.obs_terms(
        "additive",
        jnp.array([0.2, 0.0]),
        f,
        jnp.array([0.5]),
        jnp.ones(1, bool),
        jnp.ones(1, bool),
        lloq,
    )
    np.testing.assert_allclose(term, -2 * scipy.stats.norm.logcdf(0.5, 0.4, 0.2), rtol=1e-12)


# -- maximum likelihood ------------------------------------------------------------------------
def test_theoph_ml_matches_nlme(theoph_ml):
    ref = REF["theoph_nlme_ml_diag"]
    est = theoph_ml.estimates
    se = theoph_ml.summary["se"]
    for ours, theirs in (("log_KE", "lKe"), ("log_KA", "lKa"), ("log_CL", "lCl")):
        assert abs(est[ours] - ref["fixed"][theirs]) < ref["se"][theirs], ours
        assert se[ours] == pytest.approx(ref["se"][theirs], rel=0.15)
    assert est["omega_KA"] == pytest.approx(ref["re_sd"]["lKa"], rel=0.05)
    assert est["omega_CL"] == pytest.approx(ref["re_sd"]["lCl"], rel=0.05)
    assert est["sigma_add"] == pytest.approx(ref["residual_sd"], rel=0.02)
    ml = theoph_ml.ml
    assert ml.converged and np.isfinite(theoph_ml.ofv)
    assert ml.minus2ll == pytest.approx(theoph_ml.ofv + 132 * np.log(2 * np.pi))
    assert theoph_ml.individual.shape[0] == 12


def test_pheno_ml_matches_nonmem_focei():
    spec, frame = pheno_spec()
    res = fit(spec, frame, "ml", se="sandwich")
    ref = REF["pheno_nonmem_focei"]
    est, se = res.estimates, res.summary["se"]
    ours = {"CL": est["CL"], "V": est["V"], "APGR_V": est["V~APGR_LT5"]}
    for k, v in ref["theta"].items():
        assert ours[k] == pytest.approx(v, rel=0.10), k
    assert res.ofv == pytest.approx(ref["ofv"], abs=1.0)
    assert est["omega2_CL"] == pytest.approx(ref["omega2"]["CL"], rel=0.10)
    assert est["omega2_V"] == pytest.approx(ref["omega2"]["V"], rel=0.10)
    assert est["sigma_prop"] ** 2 == pytest.approx(ref["sigma2"], rel=0.10)
    ours_se = {"CL": se["CL"], "V": se["V"], "APGR_V": se["V~APGR_LT5"]}
    for k, v in ref["theta_se"].items():  # NONMEM's default covariance is the sandwich
        assert ours_se[k] == pytest.approx(v, rel=0.10), k


def _steady_state_data(n: int = 12, seed: int = 3) -> pd.DataFrame:
    """A small oral dataset with SS=1 doses, an EVID 4 reset and log-transformed DV."""
    from cohort.inference.synthetic import simulate_data

    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, AMT=100.0, DV=0.0, EVID=1, CMT=1, SS=1, II=12.0, ADDL=3))
        rows += [dict(ID=i, TIME=t, AMT=0.0, DV=1.0, EVID=0, CMT=2, SS=0, II=0.0, ADDL=0)
                 for t in (0.5, 1, 2, 4, 8, 12, 30)]  # fmt: skip
        rows.append(dict(ID=i, TIME=60.0, AMT=50.0, DV=0.0, EVID=4, CMT=1, SS=0, II=0.0, ADDL=0))
        rows.append(dict(ID=i, TIME=63.0, AMT=0.0, DV=1.0, EVID=0, CMT=2, SS=0, II=0.0, ADDL=0))
    spec = NLME("pk1_oral", params=(Param("CL"), Param("V"), Param("KA")),
                error=ErrorModel("log-additive"))  # fmt: skip
    with pytest.warns(CohortWarning, match="at the time of an additional dose"):  # 12 h
        data, _ = simulate_data(
            spec, pd.DataFrame(rows), seed=seed, typical={"CL": 5.0, "V": 50.0, "KA": 1.5},
            omega={"CL": 0.3, "V": 0.25, "KA": 0.3}, sigma={"add": 0.15},
        )  # fmt: skip
    return spec, data


@pytest.mark.parametrize("case", ["pheno", "steady_state", "theoph"])
def test_implicit_gradient_matches_differences_of_converged_ofv(case):
    """The ML gradient with implicit modes (reverse-mode AD through the modes' optimality
    condition) equals central differences of the OFV re-solved from scratch at each point,
    overall and per subject (the sandwich's score vectors): multiple doses, steady state and
    a single dose (Theoph, which used a difference stencil before)."""
    from cohort.inference import laplace
    from cohort.inference.fit import _dataset

    if case == "pheno":
        spec, data = pheno_spec()
    elif case == "theoph":
        spec, data = theoph_nlme_spec(), pd.read_csv(THEOPH)
    else:
        spec, data = _steady_state_data()
    with warnings.catch_warnings():  # the steady-state data's 12-h sample (said once, above)
        warnings.filterwarnings("ignore", ".*at the time of an additional dose", CohortWarning)
        bm = bind(spec, _dataset(data, spec.model))
    base = bm.default_pop()
    obj = ml._Objective(bm, base, "foce", pooled=False)
    flat = obj.functions["flat"]
    rng = np.random.default_rng(1)
    x = obj.x0 + 0.1 * rng.standard_normal(obj.x0.size)
    obj.settle(x)
    ofv, grad, _, terms, jac = obj.value_grad(x)

    @jax.jit
    def converged(v):
        pop = flat.pop_at(v, obj.base)
        eta0 = jnp.zeros((bm.n_subjects, bm.n_eta))
        return laplace.marginal_terms(bm, pop, eta0, bm.arrays, "foce", iterations=300)[0]

    assert np.sum(converged(x)) == pytest.approx(ofv, rel=1e-10)
    # Fourth-order differences with a wide step: each re-solved OFV carries ~1e-8 of noise
    # from its modes (log|M| is first order in their error), so narrow steps measure noise.
    h = 1e-3

    def diff(e):
        f = [np.asarray(converged(x + k * e)) for k in (-2, -1, 1, 2)]
        return (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h)

    fd = np.stack([diff(e) for e in np.eye(x.size) * h], axis=1)  # [N, P]
    scale = np.max(np.abs(fd.sum(0)))
    np.testing.assert_allclose(grad, fd.sum(0), atol=1e-5 * scale)
    np.testing.assert_allclose(jac, fd, atol=1e-5 * np.max(np.abs(fd)))


def test_ml_result_storage_round_trip(theoph_ml, tmp_path):
    from cohort.inference import load_fit

    for suffix in (".nc", ".zarr"):
        path = theoph_ml.save(tmp_path / f"fit{suffix}")
        ds = load_fit(path)["fit_summary"]
        est = ds["estimate"].sel(parameter="log_KE").item()
        assert est == pytest.approx(theoph_ml.estimates["log_KE"])
        assert ds["KA_ind"].attrs["units"] == "1/h"
        assert ds.attrs["ofv"] == pytest.approx(theoph_ml.ofv)
    with pytest.raises(ValueError, match=".nc"):
        theoph_ml.save(tmp_path / "fit.csv")


def test_report_plots(theoph_ml, tmp_path):
    from cohort.inference import plots

    files = plots.report(theoph_ml, tmp_path / "report", n_sim=20)
    assert all(f.exists() and f.stat().st_size > 1000 for f in files)


# -- specification errors ----------------------------------------------------------------------
def test_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="not parameters of 'pk1_oral'"):
        NLME("pk1_oral", params=(Param("KE"),))
    with pytest.raises(SpecError, match="kind 'quadratic'"):
        Covariate("WT", kind="quadratic")
    with pytest.raises(SpecError, match="at least one parameter needs"):
        NLME("pk1_oral", params=(Param("CL", iiv=False),))
    spec = NLME("pk1_oral", params=(Param("CL", covariates=(Covariate("AGE"),)),))
    with pytest.raises(cohort.DosingError, match="covariate 'AGE'"):
        bind(spec, read_nonmem(THEOPH))


# -- failed ODE solves ---------------------------------------------------------------------------
def test_failed_ode_solve_gives_minus_inf_not_nan():
    from numpyro.infer.util import log_density

    from cohort.inference.bayes import build_model, init_values

    data = read_nonmem(THEOPH).subset([1, 2])
    spec = NLME("pk1_oral", params=(Param("CL"), Param("V", iiv=False), Param("KA")))
    opts = cohort.DiffraxOptions(rtol=1e-6, atol=1e-9, max_steps=8)  # far too few steps
    bm = bind(spec, data, engine="diffrax", options=opts)
    model = build_model(bm)
    values = init_values(bm, bm.default_pop(), np.zeros((2, 2)), "noncentered")
    value, grad = jax.value_and_grad(lambda v: log_density(model, (bm.arrays,), {}, v)[0])(values)
    assert float(value) == -np.inf
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grad.values())


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_fit_ml(tmp_path):
    import typer
    from typer.testing import CliRunner

    from cohort.cli.fit import fit as fit_command

    app = typer.Typer()
    app.command()(fit_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    out = tmp_path / "fit.nc"
    args = [
        "fit",
        str(THEOPH),
        "--method",
        "ml",
        "-o",
        str(out),
        "--params",
        "CL,V,KA",
        "--iiv",
        "CL,KA",
        "--report",
        str(tmp_path / "rep"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.exists() and (tmp_path / "rep" / "gof.png").exists()
    assert "OFV" in res.output and "sigma_add" in res.output
    bad = CliRunner().invoke(app, ["fit", str(THEOPH), "--method", "mcmc"])
    assert bad.exit_code == 2 and "--method" in bad.output
    bad = CliRunner().invoke(app, ["fit", str(THEOPH), "--covariate", "CL=WT"])
    assert bad.exit_code == 2 and "PARAM~COLUMN" in " ".join(bad.output.split())


# -- Bayesian fits -------------------------------------------------------------------------------
def test_svi_theoph_close_to_nlme():
    res = fit(theoph_nlme_spec(), THEOPH, "svi", guide="multivariate", steps=3000, draws=500)
    ref = REF["theoph_nlme_ml_diag"]
    est = res.estimates
    for ours, theirs in (("log_KE", "lKe"), ("log_KA", "lKa"), ("log_CL", "lCl")):
        assert abs(est[ours] - ref["fixed"][theirs]) < ref["se"][theirs], ours
    assert est["sigma_add"] == pytest.approx(ref["residual_sd"], rel=0.10)
    assert res.idata.posterior.sizes["draw"] == 500
    assert res.idata.posterior["CL_ind"].dims == ("chain", "draw", "subject")


def test_svi_stopped_short_is_not_converged():
    """20 steps from the ML start gave posterior SDs 9x narrower than NUTS, flagged nowhere:
    the ELBO's gradient at the result is checked (and the CLI then exits 1)."""
    import cohort

    with pytest.warns(cohort.CohortWarning, match="SVI did not converge in 20 steps"):
        res = fit(theoph_nlme_spec(), THEOPH, "svi", steps=20, draws=50)
    assert res.diagnostics["max_gradient_z"] > 100
    assert any("did not converge" in p for p in res.diagnostics["problems"])


def test_svi_holds_a_fixed_omega():
    """A fixed IIV SD is a constant in Bayesian fits too: no posterior spread, no site."""
    spec = theoph_nlme_spec()
    params = tuple(
        dataclasses.replace(p, omega=0.5, omega_fixed=True) if p.name == "KA" else p
        for p in spec.params
    )
    res = fit(dataclasses.replace(spec, params=params), THEOPH, "svi", steps=1500, draws=200)
    draws = res.idata.posterior["omega_KA"].values
    assert np.all(draws == 0.5)
    assert np.std(res.idata.posterior["omega_CL"].values) > 0
    ref = REF["theoph_nlme_ml_diag"]
    assert abs(res.estimates["log_CL"] - ref["fixed"]["lCl"]) < 2 * ref["se"]["lCl"]


@pytest.mark.slow
def test_nuts_theoph_matches_nlme_without_flip_flop():
    """Acceptance: 4 × 1000 draws, default settings (no user init), R-hat < 1.01."""
    res = fit(theoph_nlme_spec(), THEOPH, "nuts", chains=4, warmup=1000, draws=1000)
    ref = REF["theoph_nlme_ml_diag"]
    est = res.estimates
    for ours, theirs in (("log_KE", "lKe"), ("log_KA", "lKa"), ("log_CL", "lCl")):
        assert abs(est[ours] - ref["fixed"][theirs]) < ref["se"][theirs], ours
    assert est["sigma_add"] == pytest.approx(ref["residual_sd"], rel=0.10)
    assert res.summary["r_hat"].max() < 1.01
    assert res.diagnostics["flip_flop_chains"] == []
    assert res.diagnostics["divergences"] == 0
    post = res.idata.posterior
    ka_gt_ke = (post["KA"] > post["KE"]).mean(("draw",)).values
    assert np.all(ka_gt_ke > 0.99)  # every chain stays on the ka > ke side


@pytest.mark.slow
def test_ml_full_omega_matches_nlme():
    res = fit(theoph_nlme_spec("full"), THEOPH, "ml")
    ref = REF["theoph_nlme_ml_full"]["fixed"]
    se = REF["theoph_nlme_ml_diag"]["se"]
    for ours, theirs in (("log_KE", "lKe"), ("log_KA", "lKa"), ("log_CL", "lCl")):
        assert abs(res.estimates[ours] - ref[theirs]) < se[theirs], ours
    assert "corr_KA_CL" in res.estimates


@pytest.mark.slow
def test_ode_engine_reproduces_closed_form_ml(theoph_ml):
    res = fit(theoph_nlme_spec(), THEOPH, "ml", engine="diffrax", se="none")
    assert res.bound.engine == "diffrax"
    assert res.ofv == pytest.approx(theoph_ml.ofv, abs=1e-3)
    for k in ("log_KE", "log_KA", "log_CL", "omega_KA", "sigma_add"):
        assert res.estimates[k] == pytest.approx(theoph_ml.estimates[k], abs=2e-3), k


def test_ode_foce_gradient_equals_differences_of_its_objective():
    """ODE models' FOCE gradient comes from forward tangents and a Taylor polynomial of the
    predictions at the modes (laplace.with_taylor), not from 15 mode searches per step. It
    must equal central differences of the marginal OFV itself (tight ODE tolerance, so the
    differences are smooth), under an error model whose variance depends on η too, with a
    covariate and a transform; and the OFV equals the closed form's."""
    spec = dataclasses.replace(theoph_nlme_spec(), error=ErrorModel("combined"))
    data = read_nonmem(THEOPH).subset([1, 2, 3, 4, 5, 6])
    tight = cohort.Adaptive(rtol=1e-11, atol=1e-13)
    ode = bind(spec, data, engine=tight)
    pop = ode.default_pop()._replace(sigma=np.array([0.3, 0.1]))
    obj = ml._Objective(ode, pop, "foce", pooled=False)
    assert obj.implicit  # ODE models take the implicit-gradient path
    x = obj.x0 + 0.05 * np.sin(np.arange(obj.x0.size) + 1.0)  # away from any default
    ofv, grad, _, _, _ = obj.value_grad(x)
    centre = obj.eta.copy()
    h = 1e-4
    diffs = []
    for e in np.eye(x.size) * h:
        obj.eta = centre
        up = obj.value_grad(x + e)[0]
        obj.eta = centre
        diffs.append((up - obj.value_grad(x - e)[0]) / (2 * h))
    np.testing.assert_allclose(grad, diffs, rtol=2e-5, atol=2e-5 * np.abs(grad).max())
    exact = ml._Objective(bind(spec, data, engine="closed_form"), pop, "foce", pooled=False)
    assert exact.settle(x) == pytest.approx(ofv, rel=1e-8)


def test_implicit_gradient_from_poor_initial_values_is_not_zero():
    """From initial values whose predictions are ~60x the data, one mode search (30
    iterations) ends short of the modes, where the implicit derivative is NaN. That point
    used to be handed to BFGS as (inf, zero gradient), which BFGS took for a converged fit
    at its starting values (the reviewer's case: Theoph without time-0 samples, proportional
    error, an estimated WT exponent). The search now continues from where it stopped, and the
    fit from there reaches the closed form's OFV (139.178)."""
    frame = pd.read_csv(THEOPH, na_values=".")
    frame = frame[~((frame["EVID"] == 0) & (frame["TIME"] == 0))]
    per_kg = Covariate("WT", kind="power")
    spec = dataclasses.replace(theoph_nlme_spec(), error=ErrorModel("proportional", prop=0.15))
    cl = dataclasses.replace(spec.params[2], covariates=(per_kg,))
    spec = dataclasses.replace(spec, params=(*spec.params[:2], cl))
    bm = bind(spec, read_nonmem(frame), engine=cohort.Adaptive())
    obj = ml._Objective(bm, bm.default_pop(), "foce", pooled=False)
    assert obj.implicit
    obj.settle(obj.x0)  # as a fit starts (ml._fit_from): then BFGS's first point
    ofv, grad = obj(obj.x0)
    assert np.isfinite(ofv) and np.all(np.isfinite(grad)) and np.abs(grad).max() > 1.0


@pytest.mark.slow
def test_ode_nuts_with_failing_solves_completes():
    """A step budget that large absorption rates exceed: those proposals get a -inf log
    density (divergences), never NaN, and the fit completes; a failing start is an error."""
    from numpyro.infer.util import log_density

    from cohort.inference.bayes import build_model, init_values

    data = read_nonmem(THEOPH).subset([1, 2, 3, 4])
    spec = NLME(
        "pk1_mm_oral",
        params=(
            Param("VMAX", init=20.0),
            Param("KM", init=5.0, iiv=False),
            Param("V", init=30.0, iiv=False),
            Param("KA", init=1.5),
        ),
    )
    opts = cohort.DiffraxOptions(rtol=1e-6, atol=1e-9, max_steps=96)
    bm = bind(spec, data, engine="diffrax", options=opts)
    model = build_model(bm, parameterization="centered")
    density = jax.jit(lambda v: log_density(model, (bm.arrays,), {}, v)[0])
    for ka, finite in ((1.5, True), (10.0, False)):  # KA = 10/h needs more than 96 steps
        pop = bm.default_pop()
        theta = np.array(pop.theta)  # default_pop() is numpy
        theta[3] = np.log(ka)
        pop = pop._replace(theta=theta)
        value = float(density(init_values(bm, pop, np.zeros((4, 2)), "centered")))
        assert np.isfinite(value) == finite and not np.isnan(value)
    with pytest.warns(cohort.CohortWarning):
        res = fit(
            spec,
            data,
            "nuts",
            chains=1,
            warmup=150,
            draws=100,
            init="default",
            ode_options=opts,
            seed=1,
        )
    assert res.bound.engine == "diffrax"
    assert np.all(np.isfinite(res.idata.posterior["log_VMAX"].values))
    tight = cohort.DiffraxOptions(rtol=1e-6, atol=1e-9, max_steps=64)  # fails at the start too
    with pytest.raises(ValueError, match="starting values is not finite"):
        fit(spec, data, "nuts", chains=1, warmup=10, draws=10, init="default", ode_options=tight)


@pytest.mark.slow
def test_m3_blq_fit_recovers_uncensored_estimates(theoph_ml):
    frame = pd.read_csv(THEOPH)
    obs = frame["EVID"] == 0
    dv = pd.to_numeric(frame["DV"], errors="coerce")
    frame["BLQ"] = (obs & (dv < 1.0)).astype(int)
    frame["DV"] = dv.where(frame["BLQ"] == 0, 1.0)  # DV holds the LLOQ on censored rows
    res = fit(theoph_nlme_spec(), frame, "ml")
    assert res.ml.approx == "laplace"
    se = theoph_ml.summary["se"]
    for k in ("log_KE", "log_KA", "log_CL"):
        assert abs(res.estimates[k] - theoph_ml.estimates[k]) < se[k], k


@pytest.mark.slow
def test_parameter_recovery_coverage():
    """200 simulated subjects, 50 replicates: 90 % Wald intervals cover the truth ~90 %."""
    from cohort.inference.synthetic import design, simulate_data

    spec = NLME(
        "pk1_oral", params=(Param("CL"), Param("V"), Param("KA")), error=ErrorModel("combined")
    )
    times = [0.5, 1, 2, 4, 8, 12, 24]
    truth = {
        "typical": {"CL": 3.0, "V": 30.0, "KA": 1.2},
        "omega": {"CL": 0.3, "V": 0.2, "KA": 0.4},
        "sigma": {"add": 0.05, "prop": 0.1},
    }
    names = {
        "log_CL": np.log(3.0),
        "log_V": np.log(30.0),
        "log_KA": np.log(1.2),
        "omega_CL": 0.3,
        "omega_V": 0.2,
        "omega_KA": 0.4,
        "sigma_prop": 0.1,
    }
    hits = {k: 0 for k in names}
    reps = 50
    # Starting at the truth, one start, no flip-flop refit: the coverage of the Wald
    # intervals is the question here, not the search for the mode (tested elsewhere).
    spec = dataclasses.replace(
        spec,
        params=tuple(
            dataclasses.replace(p, init=truth["typical"][p.name], omega=truth["omega"][p.name])
            for p in spec.params
        ),
    )
    for seed in range(reps):
        frame, _ = simulate_data(spec, design(200, times, 320.0, obs_cmt=2), seed=seed, **truth)
        est = ml.maximize(bind(spec, read_nonmem(frame, spec.model)), starts=1, flip_check=False)
        for k, v in names.items():
            hits[k] += abs(est.reported[k] - v) <= 1.645 * est.se[k]
    coverage = {k: h / reps for k, h in hits.items()}
    assert all(0.78 <= c <= 1.0 for c in coverage.values()), coverage
    assert np.mean(list(coverage.values())) == pytest.approx(0.9, abs=0.06), coverage


def test_one_chain_summary_does_not_log_arviz_shape_warnings():
    """SVI's guide draws are one chain: R-hat is NaN, and arviz's "Shape validation failed"
    log line (printed in the middle of `cohort fit --method svi`) is silenced."""
    import logging

    import arviz as az

    from cohort.inference import diagnostics

    idata = az.from_dict(posterior={"CL": np.random.default_rng(0).normal(size=(1, 200))})
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = getattr(az, "_log", logging.getLogger("arviz"))
    before = log.level
    handler = Keep()
    log.addHandler(handler)
    try:
        table = diagnostics.summary(idata, ["CL"], {"CL": "L/h"})
    finally:
        log.removeHandler(handler)
    assert not any("Shape validation" in m for m in seen), seen
    assert np.isnan(table.loc["CL", "r_hat"]) and table.loc["CL", "units"] == "L/h"
    assert log.level == before  # arviz's own logging is left as it was


def test_svi_understated_between_subject_sds_are_said():
    """SVI's ω intervals lay wholly below the truth (ω_CL 0.19 [0.18, 0.21] vs 0.25-0.30) and
    the fit read as calibrated: an interval below the ML estimate it started from is said."""
    import pandas as pd

    from cohort.inference.fit import _svi_understates

    table = pd.DataFrame(
        {"mean": [4.8, 0.192, 0.36], "hdi_5%": [4.6, 0.176, 0.30], "hdi_95%": [5.0, 0.212, 0.42]},
        index=["CL", "omega_CL", "omega_KA"],
    )
    said = _svi_understates(table, {"CL": 4.9, "omega_CL": 0.252, "omega_KA": 0.361})
    assert len(said) == 1 and "omega_CL 0.192 [0.176, 0.212] vs ML 0.252" in said[0]
    assert "omega_KA" not in said[0]  # its interval holds the ML estimate
    assert _svi_understates(table, {"omega_CL": 0.2}) == []


def test_missing_covariate_values_are_named_not_called_time_varying():
    """WT '.' on a subject's first record was reported as "covariates ['WT'] change within a
    subject; the fit uses each subject's first (baseline) value" while the first given value
    was used; a subject with no value at all is refused."""
    from cohort.errors import CohortWarning
    from cohort.inference.spec import Covariate

    frame = pd.read_csv(THEOPH)
    spec = NLME("pk1_oral", params=(
        Param("CL", 2.8, covariates=(Covariate("WT", "power", ref=70.0, fixed=0.75),)),
        Param("V", 32.0), Param("KA", 1.5)))  # fmt: skip
    holes = frame.astype({"WT": object})
    holes.loc[0, "WT"] = "."
    # the ID as written (1), not as the float column holds it (1.0)
    with pytest.warns(CohortWarning, match=r"missing on 1 record\(s\) \(first: row 1, ID 1\)"):
        bm = bind(spec, read_nonmem(holes, "pk1_oral"))
    full = bind(spec, read_nonmem(frame, "pk1_oral"))
    np.testing.assert_array_equal(np.asarray(bm.features), np.asarray(full.features))
    none = frame.astype({"WT": object})
    none.loc[none["ID"] == none["ID"].iloc[0], "WT"] = "."
    with pytest.raises(cohort.data.DataError, match="has no value for subject"):
        bind(spec, read_nonmem(none, "pk1_oral"))


def test_a_typical_value_beyond_its_plausible_range_is_said_and_rejected(tmp_path):
    """A fit whose typical value ran outside the model's plausible range (a pk2 fit to Theoph
    gave V2 = 6e6 L with NaN SEs and 'converged: 1', without a word) is said by the fit and
    rejected by the CLI. Here concentrations entered 10^5 times too high (a unit slip) drive
    V below its 1e-3 L floor."""
    frame = pd.read_csv(THEOPH)
    dv = pd.to_numeric(frame["DV"], errors="coerce")  # "." on dose rows
    frame["DV"] = np.where(frame["EVID"] == 0, (dv * 1e5).astype(str), frame["DV"])
    path = tmp_path / "theoph_units.csv"
    frame.to_csv(path, index=False)
    with pytest.warns(cohort.CohortWarning, match=r"V = .* L \(below 0.001\): outside the "
                                                  "model's plausible range"):  # fmt: skip
        result = fit("pk1_oral", path, "ml")
    assert "V = 0.000" in result.diagnostics["beyond_plausible"]
    from typer.testing import CliRunner

    from cohort.cli import app

    res = CliRunner().invoke(app, ["fit", str(path), "--model", "pk1_oral", "--method", "ml",
                                   "-o", str(tmp_path / "f.zarr")])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "V = " in res.output and "outside its plausible range" in " ".join(res.output.split())


def test_designed_observations_are_the_fitted_output():
    """``design`` without ``obs_cmt`` gave observations the dose's CMT, refused for an oral
    model as depot observations (the 1,000-subject benchmark failed on it)."""
    from cohort.inference.synthetic import design, simulate_data

    spec = NLME("pk1_oral", params=(Param("CL", init=2.0), Param("V", init=30.0), Param("KA")))
    frame = design(4, [1.0, 2.0, 4.0], 100.0)
    assert frame.loc[frame.EVID == 1, "CMT"].eq(1).all()
    assert frame.loc[frame.EVID == 0, "CMT"].isna().all()
    data, _ = simulate_data(
        spec, frame, seed=0, typical={"CL": 2.0, "V": 30.0, "KA": 1.0},
        omega={"CL": 0.3, "V": 0.2, "KA": 0.2}, sigma={"add": 0.1},
    )  # fmt: skip
    assert data.loc[data.EVID == 0, "DV"].gt(0).all()


def test_a_fit_stopped_while_its_objective_compiles_exits_cleanly():
    """The marginal objective compiles on a second thread while the pooled stages run. A
    Ctrl-C that reached the fit while it waited for that compile left the interpreter
    shutting down under a running XLA compile: abort, exit 134, no KeyboardInterrupt (a
    reviewer; a race: the compile had to end while the interpreter was being torn down).
    Here the interrupt comes 0.1 s after the FOCE stage is announced, while the fit waits for
    the compile (about 2 s of XLA): the process must end by the KeyboardInterrupt itself."""
    code = (
        "import os, signal, threading, cohort\n"
        # a shell's background job (CI) starts with SIGINT ignored: Ctrl-C's handler here
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def progress(message):\n"
        "    if message.startswith('FOCE'):\n"
        "        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        f"cohort.fit('pk1_oral', {str(THEOPH)!r}, 'ml', progress=progress)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode in (-signal.SIGINT, 130), proc.stderr[-2000:]  # not -SIGABRT
    assert proc.stderr.rstrip().endswith("KeyboardInterrupt")


def test_a_combined_errors_vanishing_part_is_said():
    """sigma_add 6.6e-5 with an SE of 10^5 % was reported without a word (a probe): a
    combined error with one part negligible is a boundary solution, as an IIV at zero."""
    from types import SimpleNamespace

    from cohort.errors import CohortWarning
    from cohort.inference.fit import _warn_boundary_residual

    bm = SimpleNamespace(spec=SimpleNamespace(error=ErrorModel("combined")))
    obs = SimpleNamespace(dv=np.array([[1.0, 2.0], [3.0, 0.0]]), mask=np.array([[1, 1], [1, 0]]))
    data = SimpleNamespace(observations=obs)
    with pytest.warns(CohortWarning, match=r"additive SD 6.6e-05 is negligible .* \(2\)"):
        _warn_boundary_residual(bm, SimpleNamespace(sigma=[6.6e-5, 0.14]), data)
    with pytest.warns(CohortWarning, match="support additive error alone"):
        _warn_boundary_residual(bm, SimpleNamespace(sigma=[0.5, 1e-4]), data)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_boundary_residual(bm, SimpleNamespace(sigma=[0.3, 0.14]), data)
