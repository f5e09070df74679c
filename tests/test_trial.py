"""In-silico trials: design statistics (type I error, power), randomization, specs, reports."""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from pathlib import Path

import numpy as np
import pytest

import cohort.trial as ct
from cohort.trial import design, escalation, sequential, stats
from cohort.trial.spec import TrialSpecError, parse

ROOT = Path(__file__).resolve().parents[1]
THEO = ROOT / "experiments" / "theophylline_dose_ranging.toml"
IDR = ROOT / "experiments" / "pkpd_idr_sequential.toml"


def _mc_tol(p: float, n: int, k: float = 3.0) -> float:
    return k * math.sqrt(p * (1 - p) / n)


# --- group-sequential design -------------------------------------------------------------


def test_obrien_fleming_boundaries_match_published_values():
    # Lan-DeMets OBF spending, two-sided 0.05 (Jennison & Turnbull 2000, table 2.3 / gsDesign)
    np.testing.assert_allclose(sequential.boundaries((0.5, 1.0), 0.05), [2.963, 1.969], atol=2e-3)
    np.testing.assert_allclose(
        sequential.boundaries((1 / 3, 2 / 3, 1.0), 0.05), [3.710, 2.511, 1.993], atol=2e-3
    )


def test_group_sequential_type_one_error_under_null():
    res = sequential.simulate_normal(50, 0.0, 1.0, (0.5, 1.0), 0.05, replicates=2000, seed=11)
    rate = (res["reject"] | res["harm"]).mean()  # two-sided: crossings either way
    assert abs(rate - 0.05) < _mc_tol(0.05, 2000), rate
    assert np.all(res["look"] <= 1)


def test_group_sequential_stops_early_under_alternative():
    res = sequential.simulate_normal(100, 0.5, 1.0, (0.5, 1.0), replicates=500, seed=3)
    assert res["n_used"].mean() < 200  # some trials stop at the interim
    assert res["reject"].mean() > 0.8


# --- power vs analytic -------------------------------------------------------------------


def test_two_arm_power_matches_analytic_formula():
    n_arm, delta, sd, reps = 50, 0.5, 1.0, 1000
    res = sequential.simulate_normal(n_arm, delta, sd, (1.0,), 0.05, replicates=reps, seed=5)
    analytic = stats.analytic_power_ttest(delta, sd, n_arm, 0.05)
    summary = stats.power_summary(res["reject"])
    assert abs(summary["power"] - analytic) < _mc_tol(analytic, reps), (summary, analytic)
    assert summary["mc_low"] < analytic < summary["mc_high"]


def test_ttest_vectorised_matches_scipy():
    from scipy.stats import ttest_ind

    gen = np.random.default_rng(0)
    y = gen.normal(size=(3, 40))
    arm = np.tile(np.arange(40) % 2, (3, 1))
    res = stats.ttest(y, arm, 1, 0, np.ones(y.shape, bool))
    for r in range(3):
        ref = ttest_ind(y[r, arm[r] == 1], y[r, arm[r] == 0])
        assert res["p"][r] == pytest.approx(ref.pvalue, rel=1e-10)
        lo, hi = ref.confidence_interval(0.95)
        assert (res["ci_low"][r], res["ci_high"][r]) == pytest.approx((lo, hi), rel=1e-10)


def test_ttest_with_a_one_patient_arm_has_the_pooled_se_and_ci():
    """An arm of one patient adds nothing to the pooled variance; its own 0/0 variance made the
    SE and CI NaN while the trial still counted as rejecting (a probe)."""
    from scipy.stats import ttest_ind

    y = np.array([[1.0, 2.0, 3.5, 4.0, 7.0]])
    arm = np.array([[1, 1, 1, 1, 0]])
    res = stats.ttest(y, arm, 1, 0, np.ones(y.shape, bool))
    ref = ttest_ind(y[0, :4], y[0, 4:])
    assert res["p"][0] == pytest.approx(ref.pvalue, rel=1e-10)
    lo, hi = ref.confidence_interval(0.95)
    assert (res["ci_low"][0], res["ci_high"][0]) == pytest.approx((lo, hi), rel=1e-10)
    assert res["se"][0] == pytest.approx(-4.375 / ref.statistic, rel=1e-10)


# --- randomization -----------------------------------------------------------------------


def test_block_randomization_reproducible_and_balanced():
    strata = np.zeros((50, 101), np.int64)
    a1 = design.allocate(strata, (1, 1), 4, design.rng(3, "allocation"))
    a2 = design.allocate(strata, (1, 1), 4, design.rng(3, "allocation"))
    a3 = design.allocate(strata, (1, 1), 4, design.rng(4, "allocation"))
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)
    diff = np.cumsum(np.where(a1 == 1, 1, -1), axis=1)
    assert np.all(np.abs(diff) <= 2)
    assert np.all(diff[:, 3::4] == 0)  # balanced at the end of every block


def test_unequal_ratio_blocks():
    arm = design.allocate(np.zeros((20, 60), np.int64), (2, 1), 6, design.rng(1, "allocation"))
    counts = np.stack([(arm == k).sum(1) for k in (0, 1)], 1)
    np.testing.assert_array_equal(counts, np.tile([40, 20], (20, 1)))


def test_stratification_honoured():
    gen = np.random.default_rng(2)
    strata = gen.integers(0, 3, size=(40, 90))
    arm = design.allocate(strata, (1, 1), 4, design.rng(9, "allocation"))
    for s in range(3):
        for r in range(40):
            seq = arm[r][strata[r] == s]
            diff = np.cumsum(np.where(seq == 1, 1, -1))
            assert np.all(np.abs(diff) <= 2)  # balanced within each stratum at all times


@pytest.fixture(scope="module")
def small_trial(tmp_path_factory):
    out = tmp_path_factory.mktemp("trial") / "trial.zarr"
    return ct.run(THEO, out=out, replicates=4, n=40)


def test_trial_reproducible_by_seed_and_strata_recorded(small_trial):
    again = ct.run(THEO, replicates=4, n=40)
    for k in ("arm", "auc", "cmax", "dropout_time"):
        np.testing.assert_array_equal(small_trial.patients[k].values, again.patients[k].values)
    wt = small_trial.patients["WT"].values
    np.testing.assert_array_equal(small_trial.patients["stratum"].values, (wt >= 70).astype(int))
    assert np.all((wt >= 50) & (wt <= 100))  # inclusion criteria
    assert np.all(small_trial.patients["CL"].values <= 6)  # exclusion criterion
    other = ct.run(THEO, replicates=4, n=40, seed=99)
    assert not np.array_equal(small_trial.patients["arm"].values, other.patients["arm"].values)


def test_trial_store_round_trip_and_analysis(small_trial):
    analysis = ct.analyze(small_trial)
    opened = ct.open_trial(small_trial.path)
    np.testing.assert_array_equal(opened.patients["auc"].values, small_trial.patients["auc"].values)
    assert opened.spec.replicates == 4 and opened.spec.n == 40
    assert set(analysis.summary["arm"]) == {"200 mg", "300 mg", "400 mg"}
    placebo = small_trial.patients["auc"].values[small_trial.patients["arm"].values == 0]
    assert np.nanmax(np.abs(placebo)) < 5  # placebo: assay noise only
    assert analysis.pta["pta"].between(0, 1).all()


def test_report_renders_png(small_trial, tmp_path):
    import matplotlib.image as mpimg

    path = ct.report(small_trial, tmp_path / "report.md")
    text = path.read_text()
    figs = sorted((tmp_path / "report_figures").glob("*.png"))
    assert len(figs) >= 3 and "![" in text and "| comparison |" in text
    img = mpimg.imread(figs[0])
    assert img.shape[0] > 100 and img.std() > 0.01  # non-empty drawing
    html = ct.report(small_trial, tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figs)


# --- spec validation ---------------------------------------------------------------------


def _raw():
    import tomllib

    return tomllib.loads(THEO.read_text())


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda r: r["trial"].update(bogus=1), "[trial]"),
        (lambda r: r.pop("arms"), "[arms]"),
        (lambda r: r["allocation"].update(ratio=[1, 1]), "[allocation.ratio]"),
        (lambda r: r["allocation"].update(block_size=5), "[allocation.block_size]"),
        (
            lambda r: r["analysis"]["tests"][0].update(endpoint="nope"),
            "[analysis.tests[0].endpoint]",
        ),
        (lambda r: r["population"].update(inclusion=["WT.__class__"]), "[population.inclusion[0]]"),
        (lambda r: r["arms"][1]["regimens"][0].update(amt="x"), "[arms[1].regimens[0].amt]"),
        # nan passed every bound and failed inside the engine, naming neither (a probe)
        (
            lambda r: r["arms"][1]["regimens"][0].update(amt=float("nan")),
            "[arms[1].regimens[0].amt] must be a finite number",
        ),
        # an endpoint named like a stored column replaced it or was replaced: "WT" tested body
        # weight as Cmax, "arm" overwrote the allocation; "../x" crashed after the simulation
        (
            lambda r: r["endpoints"][1].update(name="WT"),
            "[endpoints[1].name] 'WT' is a covariate or parameter of the prior",
        ),
        (
            lambda r: r["endpoints"][1].update(name="arm"),
            "[endpoints[1].name] 'arm' is a column every trial stores",
        ),
        (
            lambda r: r["endpoints"][1].update(name="../../x"),
            "[endpoints[1].name] '../../x': use letters, digits and _",
        ),
        (lambda r: r["trial"].update(model="nope"), "[trial.model]"),
        (lambda r: r["pta"][0].update(target="auc2 > 1"), "[pta[0].target]"),
        # found by a new user's session: each ran before, with a wrong or silent result
        (lambda r: r["arms"][1].pop("regimens"), "[arms[1]] dose = 200 but no regimens"),
        (
            lambda r: [r["arms"][1].pop(k) for k in ("regimens", "dose")],
            "[arms[1]] no regimens and no dose",
        ),
        (lambda r: r["arms"][1].update(dose=999), "[arms[1].dose] 999 is not an amount"),
        (lambda r: r["arms"][1].update(dose=0), "[arms[1].dose] 0 is not an amount"),
        (lambda r: r["arms"][2].update(control=True), "2 arms have control = true"),
        (lambda r: r["arms"][1].update(dose=-100), "[arms[1].dose]"),
        (
            lambda r: (
                r["arms"][1].pop("dose"),
                r["arms"][1]["regimens"].append({"amt": 100, "cmt": "depot", "time": 48}),
            ),
            "[arms[1].dose] missing: the regimens give several amounts (100, 200)",
        ),
        (lambda r: r["endpoints"][0].update(end=48), "[endpoints[0].end] 48 is after"),
        (lambda r: r["sampling"].update(times=[0.5, 12, 24]), "[endpoints[0].start] 0 is before"),
        (lambda r: r["endpoints"][2].update(time=48), "[endpoints[2].time] 48 is not a sampling"),
        (lambda r: r["endpoints"][1].update(start=30), "[endpoints[1]] start (30)"),
        (lambda r: r["endpoints"][0].update(observed="false"), "[endpoints[0].observed]"),
        (lambda r: r["analysis"]["tests"][1].update(covariate="WTT"), "unknown name 'WTT'"),
        (
            lambda r: r["analysis"]["tests"][1].update(test="responder"),
            "[analysis.tests[1].test] a responder test needs a responder",
        ),
        (
            lambda r: r["analysis"]["tests"][1].update(test="logrank"),
            "[analysis.tests[1].test] logrank compares times to event",
        ),
        (lambda r: r["allocation"].update(strata=["WTT >= 70"]), "[allocation.strata[0]]"),
        (lambda r: r["endpoints"][1].update(output="cp"), "[endpoints[1].output] 'cp' is not"),
        (lambda r: r["sampling"]["assay"][0].update(output="cp"), "[sampling.assay[0].output]"),
        (
            lambda r: r["trial"].update(model="pk2_oral"),
            "[population.prior] adult_pk_oral.toml is a prior for pk1_oral (its model key), not "
            "for the trial's model pk2_oral",
        ),
        # a prior whose parameters all exist in the trial's model (CL, V) was accepted:
        # neonates got the adult doses, KA its default, power 1.000 (a probe)
        (
            lambda r: r["population"].update(prior="../priors/neonate_phenobarbital.toml"),
            "neonate_phenobarbital.toml is a prior for pk1_iv (its model key), not for the "
            "trial's model pk1_oral",
        ),
        # an unknown compartment was an error about "dosing record row 1" (there is no file)
        (
            lambda r: r["arms"][1]["regimens"][0].update(cmt="gut"),
            "[arms[1].regimens[0].cmt] 'gut' cannot be dosed in pk1_oral",
        ),
        (lambda r: r["arms"][1]["regimens"][0].update(cmt=7), "[arms[1].regimens[0].cmt] 7"),
        # both were errors about a "dosing record row 1" / after the whole simulation
        (
            lambda r: r["arms"][1]["regimens"][0].update(addl=3, ii=0),
            "[arms[1].regimens[0].ii] addl = 3 repeats the dose",
        ),
        (
            lambda r: r["endpoints"][2].update(observed=False, time=2.3),
            "[endpoints[2].time] 2.3 is not on the simulation grid",
        ),
        # keys a type does not read were dropped: a cmax "at 12 h" was the window's maximum,
        # a trough's `above` made no responder (a probe)
        (
            lambda r: r["endpoints"][1].update(time=12),
            "[endpoints[1].time] not used by a cmax endpoint (it takes end, observed, output, "
            "start): drop time",
        ),
        (
            lambda r: r["endpoints"][2].update(above=5.0),
            "[endpoints[2].above] not used by a ctrough endpoint",
        ),
        (lambda r: r["allocation"].update(ratio="1:2"), "[allocation.ratio] a list of whole"),
        # a biostatistician's probe: each ran with a silently wrong or merged result
        (
            lambda r: r["analysis"]["tests"].append(dict(r["analysis"]["tests"][1])),
            "[analysis.tests[2]] the same comparison as tests[1] (cmax, ancova on WT)",
        ),
        (
            lambda r: r["analysis"]["tests"][1].update(test="ttest"),
            "[analysis.tests[1].covariate] a covariate adjusts an ANCOVA; a ttest test takes",
        ),
        (
            lambda r: r["analysis"]["tests"][0].update(log=True),
            "[analysis.tests[0].log] log = true takes logs of a continuous endpoint",
        ),
    ],
)
def test_spec_errors_name_file_and_key(mutate, key):
    raw = _raw()
    mutate(raw)
    with pytest.raises(TrialSpecError) as err:
        parse(raw, "experiments/x.toml", base=THEO.parent)
    assert "experiments/x.toml" in str(err.value) and key in str(err.value)


def test_an_arms_dose_is_one_administration_given_or_not():
    """Left out, an arm's dose was the total over its doses (400 for 200 mg x 2) while the
    shipped specs give it per administration: a PTA dose sweep scaled such arms by the wrong
    reference (a 200 mg sweep point gave 100 mg doses)."""
    raw = _raw()
    for arm in raw["arms"]:
        arm.pop("dose")
    spec = parse(raw, "experiments/x.toml", base=THEO.parent)
    assert [a.dose for a in spec.arms] == [0.0, 200.0, 300.0, 400.0]


def test_too_few_eligible_patients_says_what_was_needed(tmp_path):
    """The count needed is the trials' total (replicates x n), said as such: "200 needed"
    after --n 40 read as if the spec's n had been used (a new user's session)."""
    from cohort.trial.design import EligibilityError

    old = 'inclusion = ["WT >= 50", "WT <= 100"]'
    text = THEO.read_text().replace(old, 'inclusion = ["WT >= 500"]')
    prior = (THEO.parent / "../priors/adult_pk_oral.toml").resolve().as_posix()
    path = tmp_path / "t.toml"
    path.write_text(text.replace('"../priors/adult_pk_oral.toml"', f'"{prior}"'))
    with pytest.raises(EligibilityError, match=r"200 \(5 trial\(s\) x 40 patients\) needed"):
        ct.run(path, replicates=5, n=40)


def test_too_few_patients_for_the_arms_is_refused():
    """3 patients for 4 arms ran and reported power and PTA tables of NaN."""
    with pytest.raises(TrialSpecError, match="each of the 4 arms the two patients") as err:
        ct.run(THEO, replicates=1, n=3)
    assert "theophylline_dose_ranging.toml: [trial.n] (or --n) 3 patients" in str(err.value)
    with pytest.raises(TrialSpecError, match="use n >= 8"):
        ct.run(THEO, replicates=1, n=7)


def test_power_counts_trials_that_could_not_be_analysed_as_not_rejecting():
    """Power over the analysable replicates only reported 0.99 where 0.245 of all trials
    rejected; a replicate without a p-value is a trial that did not reject."""
    reject = np.array([1.0, 1.0, np.nan, np.nan, 0.0, np.nan, np.nan, np.nan])
    out = stats.power_summary(reject)
    assert out["power"] == 2 / 8 and out["replicates"] == 8 and out["not_analysable"] == 5


def test_logrank_tests_a_trial_with_no_events_in_one_arm():
    """Such trials (the drug works best) were skipped, biasing power down; the test is
    defined there, and its p-value is statsmodels' survdiff's."""
    from statsmodels.duration.survfunc import survdiff

    rng = np.random.default_rng(4)
    time = np.concatenate([np.full(20, 10.0), rng.uniform(1, 10, 20)])
    event = np.concatenate([np.zeros(20), np.ones(20)])  # treatment: no events, censored
    arm = np.repeat([1, 0], 20)
    res = stats.logrank(time[None], arm[None], 1, 0, np.ones((1, 40), bool), event[None])
    _, p = survdiff(time, event, (arm == 1).astype(int))
    assert res["p"][0] == pytest.approx(p) and p < 1e-4
    assert res["z"][0] < 0 and np.isfinite(res["estimate"][0])  # lower hazard on treatment


def test_interrupted_trial_resumes_to_the_clean_store(tmp_path):
    """`cohort trial --resume` (the error for an existing store suggests it) finishes the
    simulation where it stopped; endpoints equal a clean run's."""

    def stop_after_first_chunk(done, total):
        if done:
            raise KeyboardInterrupt

    out = tmp_path / "t.zarr"
    with pytest.raises(KeyboardInterrupt):
        ct.run(THEO, out=out, replicates=3, n=40, chunk_size=32, progress=stop_after_first_chunk)
    seen = []
    resumed = ct.run(
        THEO, out=out, replicates=3, n=40, chunk_size=32, resume=True,
        progress=lambda done, total: seen.append(done),
    )  # fmt: skip
    assert seen[0] > 0  # the finished chunk was kept, not solved again
    clean = ct.run(THEO, out=tmp_path / "c.zarr", replicates=3, n=40, chunk_size=32)
    for k in ("auc", "cmax", "ctrough", "arm"):
        np.testing.assert_array_equal(resumed.patients[k].values, clean.patients[k].values)
    np.testing.assert_array_equal(
        resumed.simulation["conc"].values, clean.simulation["conc"].values
    )


def _killed_trial(monkeypatch, module: str, step: str, args: list[str]):
    """A `trial`/`report`/`info` app, after `cohort trial args` was killed (KeyboardInterrupt)
    when it reached ``module.step``."""
    import typer
    from typer.testing import CliRunner

    from cohort.cli.info import info
    from cohort.cli.trial import report, trial

    app = typer.Typer()
    for cmd in (trial, report, info):
        app.command()(cmd)
    where = importlib.import_module(module)  # by import: some module names are functions

    def killed(*a, **kw):
        raise KeyboardInterrupt(f"killed at {step}")

    with monkeypatch.context() as patched:
        patched.setattr(where, step, killed)
        assert CliRunner().invoke(app, args).exit_code != 0
    return app


def test_trial_killed_before_its_tables_is_flagged_not_reported_short(tmp_path, monkeypatch):
    """Killed after the simulation but before the dose sweep was stored, the store read as a
    finished trial: `cohort report` wrote it without the sweep and `cohort info` flagged
    nothing. Now both name what is missing and the --resume that finishes it."""
    from typer.testing import CliRunner

    store = tmp_path / "t.zarr"
    args = ["trial", str(THEO), "-o", str(store), "--replicates", "3", "--n", "40",
            "--pta-doses", "100,400"]  # fmt: skip
    app = _killed_trial(monkeypatch, "cohort.trial.report", "save_tables", args)
    res = CliRunner().invoke(app, ["report", str(store), "-o", str(tmp_path / "r.md")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "before it finished writing dose_pta" in text, res.output
    assert not (tmp_path / "r.md").exists()
    res = CliRunner().invoke(app, ["info", str(store)])
    assert "INCOMPLETE" in res.output and "--resume" in " ".join(res.output.split())
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0
    res = CliRunner().invoke(app, ["report", str(store), "-o", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output
    assert "Dose–PTA" in (tmp_path / "r.md").read_text()


def test_trial_killed_after_its_simulation_before_its_table_is_flagged(tmp_path, monkeypatch):
    """Killed after the last batch but before the ``trial`` table, the store read as a
    finished simulation (`cohort info`: ok=60,000) and `cohort report` said it "holds no
    trial" without naming --resume (a probe's kill test)."""
    from typer.testing import CliRunner

    store = tmp_path / "t.zarr"
    args = ["trial", str(THEO), "-o", str(store), "--replicates", "2", "--n", "40"]
    app = _killed_trial(monkeypatch, "cohort.trial.run", "_endpoint_values", args)
    res = CliRunner().invoke(app, ["info", str(store)])
    assert "INCOMPLETE" in res.output and "--resume" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["report", str(store), "-o", str(tmp_path / "r.md")])
    assert res.exit_code == 2 and "--resume" in " ".join(res.output.split()), res.output
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0
    res = CliRunner().invoke(app, ["report", str(store), "-o", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output


def test_missing_spec_file():
    with pytest.raises(TrialSpecError, match="no such trial spec"):
        ct.load("experiments/does_not_exist.toml")


def test_a_shipped_spec_is_found_by_name_anywhere(tmp_path, monkeypatch):
    """README's ``experiments/...`` paths exist only in a source checkout: cohort's own specs
    are also found by their bare name (a new user's session)."""
    monkeypatch.chdir(tmp_path)
    spec = ct.load("theophylline_dose_ranging")
    assert Path(spec.path).resolve() == THEO.resolve()
    with pytest.raises(TrialSpecError, match="found by name alone: pkpd_idr_sequential"):
        ct.load("experiments/theophylline_dose_ranging.toml")


def test_a_trial_specs_prior_may_be_named_like_on_the_command_line(tmp_path):
    """``prior = "adult_pk_oral"`` in a user's own trial spec was "no such prior spec",
    although README says cohort's own specs are found by name (a probe)."""
    text = THEO.read_text().replace('"../priors/adult_pk_oral.toml"', '"adult_pk_oral"')
    own = tmp_path / "mine.toml"
    own.write_text(text)
    spec = ct.load(own)
    assert Path(spec.prior).name == "adult_pk_oral.toml"
    own.write_text(text.replace('"adult_pk_oral"', '"adult_pk_orall"'))
    with pytest.raises(TrialSpecError, match="found by name alone: adult_pk_oral"):
        ct.load(own)


# --- escalation --------------------------------------------------------------------------


def test_three_plus_three_rules():
    draws = np.arange(36)
    none = np.zeros((4, 36), bool)
    assert escalation._three_plus_three(none, draws, 3, 36)[0] == 3
    assert escalation._three_plus_three(~none, draws, 3, 36)[0] == -1
    tox = none.copy()
    tox[2] = True  # level 2 always toxic -> MTD is level 1 (expanded to 6)
    mtd, n, _ = escalation._three_plus_three(tox, draws, 3, 36)
    assert mtd == 1 and n[1] == 6 and n[3] == 0


def test_boin_boundaries_published():
    le, ld = escalation.boin_bounds(0.3)  # Liu & Yuan (2015), table 1: 0.236 / 0.358
    assert (le, ld) == pytest.approx((0.236, 0.358), abs=1e-3)


@pytest.mark.slow
def test_idr_sequential_experiment_runs(tmp_path):
    res = ct.run(IDR, replicates=20, n=60)
    analysis = ct.analyze(res)
    assert analysis.bounds is not None and len(analysis.summary) == 8
    assert np.isfinite(res.patients["flare"].values).all()
    path = ct.report(res, tmp_path / "r.md", analysis=analysis)
    assert (tmp_path / "r_figures" / "km_flare.png").stat().st_size > 1000
    assert path.exists()


@pytest.mark.slow
def test_trial_power_reaches_analytic_within_mc_error_on_pk_trial():
    # Full pipeline on a PK endpoint: log-AUC t-test; power vs the analytic formula using the
    # simulated between-patient SD (1,000 replicates x 24 patients).
    spec = ct.load(THEO)
    # 230 vs 200 mg: a power near 0.8, where the comparison can fail (300 vs 200 mg gave
    # power 1.0 against an analytic 1 - 1e-12: a check that could not fail)
    low = spec.arms[1]
    high = ct.spec.Arm("230 mg", ({**low.regimens[0], "amt": 230},), 230.0, False)
    spec = spec.with_(
        arms=(low, high),
        ratio=(1, 1),
        block_size=4,
        control="200 mg",
        n=24,
        replicates=1000,
        tests=(ct.spec.Test("auc", "ttest", log=True, primary=True),),
        pta=(),
        dropout_hazard=0.0,
    )
    res = ct.run(spec)
    analysis = ct.analyze(res)
    y = np.log(res.grid("auc"))
    arm = res.grid("arm")
    sd = np.sqrt(0.5 * (np.nanvar(y[arm == 0], ddof=1) + np.nanvar(y[arm == 1], ddof=1)))
    delta = np.nanmean(y[arm == 1]) - np.nanmean(y[arm == 0])
    analytic = stats.analytic_power_ttest(delta, sd, 12, 0.05)
    assert 0.5 < analytic < 0.95  # an informative comparison
    assert abs(analysis.summary["power"].iloc[0] - analytic) < _mc_tol(analytic, 1000) + 0.01


@pytest.mark.slow
def test_group_sequential_type_one_error_full_pipeline():
    # Two identical 300 mg arms (H0 true), log-AUC t-test, OBF with one interim: 2,000 trials.
    from cohort.trial.schema import Arm, Sequential, Test

    spec = ct.load(THEO)
    same = spec.arms[2]
    spec = spec.with_(
        arms=(same, Arm("300 mg B", same.regimens, 300.0)),
        ratio=(1, 1),
        block_size=4,
        control="300 mg",
        n=100,
        replicates=2000,
        pta=(),
        sequential=Sequential((0.5, 1.0)),
        tests=(Test("auc", "ttest", log=True, primary=True),),
    )
    summary = ct.analyze(ct.run(spec)).summary.iloc[0]
    rate = summary["power"] + summary["harm_rate"]  # two-sided: crossings either way
    assert abs(rate - 0.05) < _mc_tol(0.05, 2000), rate


@pytest.mark.slow
def test_sample_size_search_and_escalation():
    table = ct.sample_size(THEO, sizes=[12, 48], replicates=30)
    assert list(table["n"].unique()) == [12, 48]
    esc = ct.escalate(ROOT / "experiments" / "theophylline_escalation.toml", replicates=100)
    assert esc["p_select"].sum() + esc.attrs["none_selected"] == pytest.approx(1.0)
    assert np.all(np.diff(esc["p_dlt"]) >= 0)  # toxicity rises with dose
    # the pool is a sample: its DLT rates come with their Wilson interval
    assert np.all((esc["p_dlt_low"] <= esc["p_dlt"]) & (esc["p_dlt"] <= esc["p_dlt_high"]))
    from statsmodels.stats.proportion import proportion_confint

    k = round(esc["p_dlt"].iloc[-1] * esc.attrs["pool"])
    lo, hi = proportion_confint(k, esc.attrs["pool"], method="wilson")
    assert (esc["p_dlt_low"].iloc[-1], esc["p_dlt_high"].iloc[-1]) == pytest.approx((lo, hi))


def test_cli_trial_and_report(tmp_path):
    import typer
    from typer.testing import CliRunner

    from cohort.cli.trial import report, trial

    app = typer.Typer()
    app.command()(trial)
    app.command()(report)
    store = tmp_path / "t.zarr"
    args = ["trial", str(THEO), "-o", str(store), "--replicates", "4", "--n", "40"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "power per comparison" in res.output
    assert "probability of target attainment" in res.output  # a table, not a pandas dump
    assert "Ctrough >= 5 mg/L" in res.output
    res = CliRunner().invoke(app, ["report", str(store), "-o", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.md").exists()
    bad = CliRunner().invoke(app, ["trial", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "no such trial spec" in bad.output
    esc = ROOT / "experiments" / "theophylline_escalation.toml"
    esc_store = tmp_path / "esc.zarr"
    res = CliRunner().invoke(
        app, ["trial", str(esc), "--escalation", "--replicates", "20", "-o", str(esc_store)]
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    # each probability with its interval, and the pool it comes from
    assert "P(DLT)" in text and "from a pool of" in text and "virtual patients" in text
    assert re.search(r"0\.\d{3} \(0\.\d{3}–0\.\d{3}\)", text)
    # kept in the store: a report written later shows the escalation (it was dropped)
    res = CliRunner().invoke(app, ["report", str(esc_store), "-o", str(tmp_path / "e.md")])
    assert res.exit_code == 0, res.output
    assert "## Dose escalation" in (tmp_path / "e.md").read_text()


# --- endpoints ---------------------------------------------------------------------------


def _compute(eps, y, times, dropout, estimand="complete_case", lloq=0.0):
    from cohort.trial import endpoints as E

    obs = {"conc": y.copy()}
    blq = {"conc": y < lloq}
    return E.compute(
        eps,
        E.Samples(obs, obs, blq, blq),
        {"conc": lloq},
        times,
        {"conc": y},
        times,
        dropout,
        estimand,
        np.random.default_rng(0),
    )


def test_exposure_endpoints_blq_and_estimands():
    from cohort.trial.schema import Endpoint

    times = np.array([0.0, 1.0, 2.0, 4.0])
    y = np.array([[0.0, 4.0, 2.0, 0.1], [0.0, 2.0, 1.0, 0.5]])
    eps = (
        Endpoint("auc", "auc", "conc", start=0, end=4),
        Endpoint("cmax", "cmax", "conc", start=0, end=4),
        Endpoint("trough", "ctrough", "conc", time=4.0),
        Endpoint("resp", "responder", of="cmax", above=3.0),
    )
    dropout = np.array([np.inf, 3.0])
    out = _compute(eps, y, times, dropout, lloq=0.2)
    # BLQ (0.1 < 0.2) counts as 0 in AUC and LLOQ/2 = 0.1 for a trough
    assert out["auc"][0] == pytest.approx(np.trapezoid([0, 4, 2, 0], times))
    assert out["trough"][0] == pytest.approx(0.1)
    assert out["cmax"][0] == 4.0 and out["resp"][0] == 1.0
    assert np.isnan(out["auc"][1]) and np.isnan(out["resp"][1])  # dropped out at t = 3
    hyp = _compute(eps, y, times, dropout, "hypothetical", lloq=0.2)
    assert hyp["cmax"][1] == 2.0 and hyp["resp"][1] == 0.0


def test_time_to_event_constant_hazard_is_exponential():
    from cohort.trial.schema import Endpoint

    times = np.linspace(0, 100, 201)
    n, h0 = 20_000, 0.01
    y = np.zeros((n, len(times)))
    ep = (Endpoint("tte", "tte", "conc", baseline_hazard=h0, coefficient=0.5),)
    out = _compute(ep, y, times, np.full(n, np.inf))
    frac = out["tte_event"].mean()
    expected = 1 - np.exp(-h0 * 100)
    assert abs(frac - expected) < _mc_tol(expected, n)
    ev = out["tte"][out["tte_event"] == 1]
    assert ev.max() <= 100 and np.all(out["tte"][out["tte_event"] == 0] == 100)


def test_assay_error_model():
    from cohort.trial import endpoints as E
    from cohort.trial.schema import Assay

    true = np.full((50_000, 1), 10.0)
    obs, blq = E.observe(true, Assay("conc", 0.1, 0.5, lloq=9.0), np.random.default_rng(1))
    assert np.std(obs) == pytest.approx(np.sqrt(1.0**2 + 0.5**2), rel=0.02)
    assert blq.mean() == pytest.approx(
        0.5 * (1 + math.erf(-1 / math.sqrt(1.25) / math.sqrt(2))), abs=0.01
    )


def test_response_adaptive_randomization_favours_better_arm():
    from cohort.trial.schema import Adaptive

    spec = ct.load(THEO).with_(replicates=1, n=40)  # x 4 arms = the fixture's compiled shape
    rar = spec.with_(adaptive=Adaptive("in_range", burn_in=8, batch=8, power=1.0))
    res = ct.run(rar)
    arm = res.grid("arm")
    late = arm[:, 8:]
    # in_range (trough > 5 mg/L) is most likely at 400 mg (arm 3), never on placebo (arm 0)
    assert (late == 3).mean() > (late == 0).mean()
    assert res.simulation.sizes["patient"] == 4 * 40  # potential outcomes under every arm
    hit = res.grid("in_range")
    assert np.nanmean(hit[arm == 0]) == 0.0
    again = ct.run(rar)
    np.testing.assert_array_equal(again.grid("arm"), arm)
    assert len(ct.analyze(res).summary) == 6


def test_dose_pta_sweep_monotone_for_trough_target():
    table = ct.dose_pta(THEO, [100, 300, 450, 600], pool=40)  # 160 rows: fixture's compiled shape
    trough = table[table["target"] == "Ctrough >= 5 mg/L"]["pta"].to_numpy()
    assert np.all(np.diff(trough) >= 0) and trough[0] < 0.05 and trough[-1] > 0.9


@pytest.mark.parametrize("design_name", ["boin", "crm"])
def test_model_based_escalation_selects_dose_nearest_target(design_name):
    gen = np.random.default_rng(4)
    probs = np.array([0.05, 0.10, 0.25, 0.50, 0.70])
    u = gen.random(2000)  # one latent tolerance per patient: monotone toxicity in dose
    tox = u[None, :] < probs[:, None]
    picks = np.zeros(len(probs) + 1)
    skel = escalation.crm_skeleton(5, 0.25)
    for _ in range(200):
        draws = gen.integers(0, 2000, 30)
        if design_name == "boin":
            mtd = escalation._boin(tox, draws, 3, 30, 0.25)[0]
        else:
            mtd = escalation._crm(tox, draws, 3, 30, 0.25, skel)[0]
        picks[mtd] += 1
    assert np.argmax(picks[:5]) == 2 and picks[2] / 200 > 0.45


@pytest.mark.parametrize("n", [20, 48])
def test_responder_test_holds_its_size_by_exact_enumeration(n):
    """Every possible pair of responder counts, weighted by its binomial probability under
    the null: the rejection rate at nominal 5 % (two-sided) stays within 0.5 point of 5 % for
    p in {0.1, 0.3, 0.5} (the unpooled Wald test reached 8.1 %), and the reported interval
    excludes 0 exactly when the test rejects."""
    from scipy import stats as sps

    from cohort.trial import stats as tstats

    k = np.arange(n + 1)
    ka, kb = np.meshgrid(k, k, indexing="ij")
    ka, kb = ka.ravel(), kb.ravel()
    y = np.zeros((len(ka), 2 * n))
    for r, (a, b) in enumerate(zip(ka, kb)):
        y[r, :a] = 1.0
        y[r, n : n + b] = 1.0
    arm = np.tile(np.repeat([1, 0], n), (len(ka), 1))
    res = tstats.responder(y, arm, 1, 0, np.ones_like(y, bool), alpha=0.05, sided=2)
    reject = res["p"] < 0.05
    excludes = (res["ci_low"] > 0) | (res["ci_high"] < 0)
    np.testing.assert_array_equal(excludes, reject)
    for p in (0.1, 0.3, 0.5):
        weight = sps.binom.pmf(ka, n, p) * sps.binom.pmf(kb, n, p)
        size = float(np.sum(weight * reject))
        assert size <= 0.055, (n, p, size)


def test_score_test_is_miettinen_nurminen():
    """The statistic at 0 equals statsmodels' score test; the restricted estimates are the
    constrained likelihood maximum (numerical check); the interval's ends are where the
    statistic crosses the critical value."""
    import warnings

    from scipy import stats as sps
    from scipy.optimize import minimize_scalar
    from statsmodels.stats.proportion import test_proportions_2indep

    from cohort.trial import proportions

    for x1, n1, x2, n2 in [(7, 20, 3, 20), (15, 48, 9, 40), (30, 50, 31, 52), (1, 12, 6, 15)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = test_proportions_2indep(x1, n1, x2, n2, method="score")
        assert proportions.score_z(x1, n1, x2, n2) == pytest.approx(ref.statistic, rel=1e-9)
        for d in (-0.3, -0.05, 0.1, 0.25):

            def nll(q, d=d, x1=x1, n1=n1, x2=x2, n2=n2):
                return -(
                    x1 * np.log(q) + (n1 - x1) * np.log1p(-q)
                    + x2 * np.log(q - d) + (n2 - x2) * np.log1p(-(q - d))
                )  # fmt: skip

            best = minimize_scalar(
                nll, bounds=(max(0, d) + 1e-12, min(1, 1 + d) - 1e-12), method="bounded",
                options={"xatol": 1e-12},
            )  # fmt: skip
            got = proportions.restricted_mle(float(x1), n1, float(x2), n2, d)[0]
            assert float(got) == pytest.approx(best.x, abs=1e-7)
        lo, hi = proportions.score_interval(x1, n1, x2, n2, alpha=0.05)
        crit = sps.norm.isf(0.025)
        assert float(proportions.score_z(x1, n1, x2, n2, float(lo))) == pytest.approx(crit, 1e-6)
        assert float(proportions.score_z(x1, n1, x2, n2, float(hi))) == pytest.approx(-crit, 1e-6)


def test_harmful_crossings_never_count_as_power():
    """The issue's design: d = -0.5 (harmful), 50 per arm, looks (0.5, 1), futility -1,
    two-sided. Crossings happen, all with z < 0: they are harm, never power."""
    from cohort.trial import sequential

    out = sequential.simulate_normal(50, -0.5, 1.0, (0.5, 1.0), futility=-1.0, replicates=4000)
    z_stop = out["z"][np.arange(len(out["look"])), out["look"]]
    assert out["reject"].sum() == 0
    assert out["harm"].mean() > 0.05 and np.all(z_stop[out["harm"]] < 0)
    ok = sequential.simulate_normal(50, 0.5, 1.0, (0.5, 1.0), futility=-1.0, replicates=4000)
    assert ok["reject"].mean() > 0.6 and ok["harm"].sum() == 0


@pytest.mark.parametrize("estimate", ["plugin", "posterior_mean"])
def test_crm_recommends_only_tried_doses(estimate):
    """Few patients and a safe dose range: the CRM's last allocation may be an untried level,
    but the MTD it recommends was given to patients (it used to return min(best, last + 1))."""
    gen = np.random.default_rng(5)
    probs = np.array([0.01, 0.02, 0.03, 0.05, 0.08])  # every dose below the 0.3 target
    tox = gen.random(500)[None, :] < probs[:, None]
    skel = escalation.crm_skeleton(5, 0.3)
    for _ in range(100):
        draws = gen.integers(0, 500, 9)  # 3 cohorts: at most levels 0, 1, 2 are tried
        mtd, n, _ = escalation._crm(tox, draws, 3, 9, 0.3, skel, estimate)
        assert mtd == -1 or n[mtd] > 0, (mtd, n)


def test_sequential_look_table_reports_stopping_and_expected_n():
    """Operating characteristics per look from the replicates: stopping probabilities that sum
    to 1, expected sample size, and the naive estimate at an early stop (biased upward)."""
    import xarray as xr

    from cohort.trial.analysis import look_table

    out = sequential.simulate_normal(50, 0.3, 1.0, (0.5, 1.0), futility=0.0, replicates=3000)
    n_rep = len(out["look"])
    est = out["z"][np.arange(n_rep), out["look"]]  # any statistic that grows with the effect
    reps = xr.Dataset(
        {
            "look": (("comparison", "replicate"), out["look"][None].astype(float)),
            "reject": (("comparison", "replicate"), out["reject"][None].astype(float)),
            "harm": (("comparison", "replicate"), out["harm"][None].astype(float)),
            "futile": (("comparison", "replicate"), out["futile"][None].astype(float)),
            "p": (("comparison", "replicate"), np.full((1, n_rep), 0.5)),
            "estimate": (("comparison", "replicate"), est[None]),
        },
        coords={"comparison": ["y: treat vs control"]},
    )
    table = look_table(reps, (0.5, 1.0), 100)
    stop = table["p_stop_efficacy"] + table["p_stop_harm"] + table["p_stop_futility"]
    assert table["p_stopped_by_now"].iloc[-1] == pytest.approx(1.0)
    assert stop.iloc[0] == pytest.approx(table["p_stopped_by_now"].iloc[0])
    assert table["p_stop_futility"].iloc[0] > 0.05 and table["p_stop_efficacy"].iloc[0] > 0.01
    p1 = table["p_stopped_by_now"].iloc[0]
    assert table.attrs["expected_n"]["y: treat vs control"] == pytest.approx(
        50 * p1 + 100 * (1 - p1)
    )
    # trials that stop early for efficacy have the largest estimates, for futility the
    # smallest: the table keeps the two apart (their mean hid both biases)
    efficacy_early = (out["look"] == 0) & out["reject"]
    futile_early = (out["look"] == 0) & out["futile"]
    assert est[efficacy_early].mean() > est.mean() > est[futile_early].mean()
    first = table.iloc[0]
    assert first["mean_estimate_efficacy"] == pytest.approx(est[efficacy_early].mean())
    assert first["mean_estimate_futility"] == pytest.approx(est[futile_early].mean())
    assert first["mean_estimate_all"] == pytest.approx(est[out["look"] == 0].mean())
    assert np.isnan(table.iloc[1]["mean_estimate_futility"])  # no futility stop at the end


# Lan-DeMets boundaries, two-sided 0.05 as one-sided 0.025 per side, equally spaced looks.
# Six-decimal values printed by R gsDesign (gsDesign(k, test.type = 1, alpha = 0.025, sfu =
# sfLDOF / sfLDPocock)$upper$bound; K = 2 OBF also by lrstat::getBound's documented example);
# O'Brien-Fleming K = 5 only to three decimals (Jennison & Turnbull 2000; gsDesign's rounded
# summary): no six-decimal print of it was found, so its tolerance is that rounding.
LAN_DEMETS = {
    ("obrien_fleming", 2): ([2.962588, 1.968596], 1e-5),
    ("obrien_fleming", 3): ([3.710303, 2.511427, 1.993048], 1e-5),
    ("obrien_fleming", 4): ([4.332634, 2.963131, 2.359044, 2.014090], 1e-5),
    ("obrien_fleming", 5): ([4.877, 3.357, 2.680, 2.290, 2.031], 6e-4),
    ("pocock", 2): ([2.156999, 2.200977], 1e-5),
    ("pocock", 3): ([2.279428, 2.294910, 2.295939], 1e-5),
    ("pocock", 4): ([2.368328, 2.367524, 2.358168, 2.350036], 1e-5),
    ("pocock", 5): ([2.437977, 2.426814, 2.410194, 2.396649, 2.386000], 1e-5),
}


@pytest.mark.parametrize(("kind", "k"), list(LAN_DEMETS))
def test_lan_demets_boundaries_fast_and_converged(kind, k, monkeypatch):
    """Published values within 1e-5 (six-decimal gsDesign prints), each design in well under a
    second, and the recursive integration converged: a 4x finer grid moves no boundary by 1e-6."""
    import time

    looks = tuple((i + 1) / k for i in range(k))
    sequential._boundaries.cache_clear()
    t0 = time.perf_counter()
    got = sequential.boundaries(looks, 0.05, 2, kind)
    assert time.perf_counter() - t0 < 1.0
    published, atol = LAN_DEMETS[(kind, k)]
    np.testing.assert_allclose(got, published, atol=atol)
    monkeypatch.setattr(sequential, "GRID_STEP", sequential.GRID_STEP / 4)
    sequential._boundaries.cache_clear()
    np.testing.assert_allclose(sequential.boundaries(looks, 0.05, 2, kind), got, atol=1e-6)
    sequential._boundaries.cache_clear()


def test_samples_at_a_dose_time_are_drawn_before_the_dose(tmp_path):
    """1-cpt IV bolus (CL 5, V 10: k = 0.5/h), 10 mg at 0 and 12 h, no variability: a trough
    at 12 h is C(12-) = e^-6, not C(12+) = 1 + e^-6 (400x larger); an AUC or Cmax window
    ending at 12 h stops before the dose there; a change from a baseline at the first dose is
    from the pre-dose value 0."""
    prior = tmp_path / "iv.toml"
    prior.write_text(
        '[population]\nname = "iv"\nmodel = "pk1_iv"\ncitation = "test"\n'
        '[parameters.CL]\ntypical = 5.0\nunits = "L/h"\ncitation = "test"\n'
        '[parameters.V]\ntypical = 10.0\nunits = "L"\ncitation = "test"\n'
    )
    spec = tmp_path / "t.toml"
    spec.write_text(
        f"""[trial]
name = "trough"
model = "pk1_iv"
method = "closed_form"
n = 4
seed = 1
grid_step = 1.0
[population]
prior = "{prior}"
[[arms]]
name = "placebo"
control = true
dose = 0
[[arms]]
name = "10 mg q12h"
regimens = [{{ amt = 10, cmt = "central", ii = 12, addl = 1 }}]
[sampling]
times = [0, 4, 8, 12, 24]
[[endpoints]]
name = "trough12"
type = "ctrough"
output = "conc"
time = 12
[[endpoints]]
name = "auc0_12"
type = "auc"
output = "conc"
start = 0
end = 12
[[endpoints]]
name = "cmax0_12"
type = "cmax"
output = "conc"
start = 0
end = 12
observed = false
[[endpoints]]
name = "auc_true"
type = "auc"
output = "conc"
start = 0
end = 12
observed = false
[[endpoints]]
name = "trough_true"
type = "ctrough"
output = "conc"
time = 12
observed = false
[[endpoints]]
name = "rise"
type = "change"
output = "conc"
time = 4
baseline = 0
[analysis]
tests = [{{ endpoint = "trough12", test = "ttest" }}]
"""
    )
    res = ct.run(spec)
    pts = res.patients
    active = pts["arm"].values == 1
    c = np.exp(-0.5 * np.array([4.0, 8.0, 12.0]))
    for name in ("trough12", "trough_true"):
        np.testing.assert_allclose(pts[name].values[active], np.exp(-6.0), rtol=1e-5)
    # samples: C(0+) = 1 starts the window, C(12-) ends it (linear trapezoid)
    expected = np.trapezoid([1.0, *c], [0.0, 4.0, 8.0, 12.0])
    np.testing.assert_allclose(pts["auc0_12"].values[active], expected, rtol=1e-5)
    # on the 1-h grid: the trapezoid of the exact curve from 0+ to 12-
    grid = np.arange(0.0, 13.0)
    np.testing.assert_allclose(
        pts["auc_true"].values[active], np.trapezoid(np.exp(-0.5 * grid), grid), rtol=1e-5
    )
    np.testing.assert_allclose(pts["cmax0_12"].values[active], 1.0, rtol=1e-9)
    np.testing.assert_allclose(pts["rise"].values[active], c[0], rtol=1e-5)
    assert np.all(pts["trough12"].values[~active] == 0.0)
    assert pts["auc0_12"].attrs["units"] == "mg/L·h" and pts["trough12"].attrs["units"] == "mg/L"


def test_more_replicates_leave_the_first_ones_unchanged():
    """Common random numbers: running 2 or 5 replicates of the same spec and seed gives the
    same first 2 trials (assay errors were drawn for all patients at once, and stratified
    blocks sized by the strata seen in all replicates, so both changed)."""
    spec = ct.load(THEO).with_(n=12, strata=("WT > 75",), block_size=4)
    few, more = ct.run(spec.with_(replicates=2)), ct.run(spec.with_(replicates=5))
    first = few.patients.sizes["patient"]
    for name in ("arm", "stratum", *(e.name for e in spec.endpoints)):
        a = few.patients[name].values
        b = more.patients[name].values[:first]
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_trough_at_a_steady_state_dose_time_is_refused(tmp_path):
    """SS=1 at time 0: the engines impose the steady state at the record time, so a
    'pre-dose' value there was the empty state (trough 0); the spec is refused with the time
    one interval later."""
    spec = ct.load(THEO)
    arms = tuple(
        dataclasses.replace(a, regimens=tuple({**g, "ss": True} for g in a.regimens))
        for a in spec.arms
    )
    eps = (dataclasses.replace(spec.endpoints[2], time=0.0),)
    bad = spec.with_(arms=arms, endpoints=eps, tests=(), replicates=1, n=8)
    with pytest.raises(TrialSpecError, match=r"\[endpoints\[0\].time\] 0 is the time of a "
                       r"steady-state dose .* one interval later \(12\)"):  # fmt: skip
        ct.run(bad)


def test_log_scale_test_of_an_endpoint_with_zeros_says_what_it_leaves_out():
    """A placebo arm's AUC of 0 has no logarithm: those patients were left out as missing
    without a word, and the control arm shrank to the few above 0 by assay noise (a probe:
    power 0.95 from 2-6 placebo patients of 961)."""
    from cohort.errors import CohortWarning
    from cohort.trial.schema import Test

    spec = ct.load(THEO)
    spec = spec.with_(
        arms=spec.arms[:2], ratio=(1, 1), block_size=4, control=spec.arms[0].name, n=16,
        replicates=2, pta=(), tests=(Test("auc", "ttest", log=True, primary=True),),
    )  # fmt: skip
    res = ct.run(spec)
    zeros = int(np.sum((res.grid("arm") == 0) & (res.grid("auc") <= 0)))
    assert zeros > 0
    with pytest.warns(
        CohortWarning, match=f"{zeros:,} of .* in arm '{spec.arms[0].name}' are <= 0"
    ):
        ct.analyze(res)


def test_tests_of_one_endpoint_get_distinct_labels_and_a_marked_primary_is_the_only_one():
    """Two ANCOVAs of one endpoint on different covariates shared a label (and a sequential
    design's tables averaged them); a spec marking its second test primary made both primary
    (the first by default). A probe found both."""
    raw = _raw()
    raw["analysis"]["tests"] = [
        {"endpoint": "cmax", "test": "ancova", "covariate": "WT"},
        {"endpoint": "cmax", "test": "ttest", "log": True, "direction": "lower"},
        {"endpoint": "in_range", "test": "responder", "primary": True},
    ]
    spec = parse(raw, "experiments/x.toml", base=THEO.parent)
    assert [t.primary for t in spec.tests] == [False, False, True]
    assert [t.describe() for t in spec.tests] == [
        "ancova on WT", "ttest, log, lower is better", "responder",
    ]  # fmt: skip
