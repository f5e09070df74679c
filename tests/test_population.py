"""Virtual population generation: marginals, correlations, effects, filters, errors, matching."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cohort.errors import CohortWarning
from cohort.population import SpecError, generate, load_spec, match
from cohort.population.generate import PopulationError, open_population

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
[population]
name = "test"
[covariates.WT]
distribution = "normal"
mean = 70.0
sd = 12.0
units = "kg"
citation = "test"
[covariates.AGE]
distribution = "lognormal"
median = 40.0
cv = 0.3
units = "y"
citation = "test"
[covariates.HT]
distribution = "normal"
mean = 170.0
sd = 9.0
units = "cm"
citation = "test"
[covariates.SEX]
distribution = "categorical"
categories = ["F", "M"]
probabilities = [0.4, 0.6]
units = "1"
citation = "test"
[covariates.EGFR]
distribution = "truncnormal"
mean = 90.0
sd = 25.0
lower = 30.0
upper = 150.0
units = "mL/min/1.73m2"
citation = "test"
[correlation]
variables = ["WT", "HT", "AGE"]
matrix = [[1.0, 0.6, 0.2], [0.6, 1.0, -0.1], [0.2, -0.1, 1.0]]
citation = "test"
[parameters.CL]
typical = 3.0
units = "L/h"
citation = "test"
effects = [
  { type = "power", covariate = "WT", reference = 70.0, coefficient = 0.75 },
  { type = "categorical", covariate = "SEX", factors = { M = 1.2 } },
]
[parameters.V]
typical = 30.0
units = "L"
citation = "test"
effects = [{ type = "power", covariate = "WT", reference = 70.0, coefficient = 1.0 }]
[iiv]
parameters = ["CL", "V"]
omega = [[0.09, 0.03], [0.03, 0.04]]
citation = "test"
"""


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "test.toml"
    p.write_text(SPEC)
    return p


@pytest.fixture(scope="module")
def big(spec_path):
    return generate(spec_path, 100_000, seed=3)


def _within_3se(x, mean, sd):
    n = x.size
    assert abs(x.mean() - mean) < 3 * sd / np.sqrt(n), (x.mean(), mean)
    assert abs(x.std(ddof=1) - sd) < 3 * sd / np.sqrt(2 * (n - 1)), (x.std(ddof=1), sd)


def test_marginals_match_spec(big):
    _within_3se(big.WT.values, 70.0, 12.0)
    _within_3se(big.HT.values, 170.0, 9.0)
    s = np.sqrt(np.log1p(0.3**2))
    _within_3se(np.log(big.AGE.values), np.log(40.0), s)
    tn = stats.truncnorm((30 - 90) / 25, (150 - 90) / 25, loc=90, scale=25)
    _within_3se(big.EGFR.values, tn.mean(), tn.std())
    p_m = np.mean(big.SEX.values == 1)
    assert abs(p_m - 0.6) < 3 * np.sqrt(0.24 / 1e5)
    assert big.WT.attrs["units"] == "kg" and big.SEX.attrs["categories"] == ["F", "M"]


def test_correlations_match_spec(big):
    z = np.stack([big.WT.values, big.HT.values, np.log(big.AGE.values)])
    target = np.array([[1.0, 0.6, 0.2], [0.6, 1.0, -0.1], [0.2, -0.1, 1.0]])
    assert np.max(np.abs(np.corrcoef(z) - target)) < 0.02


def test_parameter_model_effects_and_omega(big):
    sex = np.where(big.SEX.values == 1, 1.2, 1.0)
    eta_cl = np.log(big.CL.values / (3.0 * (big.WT.values / 70) ** 0.75 * sex))
    eta_v = np.log(big.V.values / (30.0 * big.WT.values / 70))
    cov = np.cov(np.stack([eta_cl, eta_v]))
    np.testing.assert_allclose(cov, [[0.09, 0.03], [0.03, 0.04]], atol=0.003)
    assert abs(eta_cl.mean()) < 3 * 0.3 / np.sqrt(1e5)


def test_bit_identical_across_chunk_sizes(spec_path, tmp_path):
    a = generate(spec_path, 5_000, seed=11, chunk_size=5_000)
    b = generate(spec_path, 5_000, seed=11, chunk_size=333)
    for k in a.data_vars:
        assert np.array_equal(a[k].values, b[k].values), k
    # the acceptance rate too (it counted the last chunk's draws after the n-th patient)
    filtered = tmp_path / "filtered.toml"
    filtered.write_text(SPEC + '[[filters]]\nexpression = "CL / V"\nupper = 0.1\n')
    rates = {
        cs: generate(filtered, 2_000, seed=11, chunk_size=cs).attrs["acceptance_rate"]
        for cs in (2_000, 777)
    }
    assert rates[2_000] == rates[777] and 0.05 < rates[777] < 0.95
    c = generate(spec_path, 5_000, seed=12)
    assert not np.array_equal(a.CL.values, c.CL.values)


def test_streaming_store_equals_memory(spec_path, tmp_path):
    mem = generate(spec_path, 3_000, seed=5, chunk_size=700)
    disk = generate(spec_path, 3_000, seed=5, chunk_size=700, out=tmp_path / "pop.zarr")
    for k in mem.data_vars:
        assert np.array_equal(mem[k].values, disk[k].values), k
    assert disk.CL.attrs["units"] == "L/h" and disk.attrs["seed"] == 5


def test_filters_resample_until_n_accepted(tmp_path):
    spec = SPEC + textwrap.dedent("""
        [[filters]]
        name = "half-life"
        expression = "0.693 * V / CL"
        lower = 6.0
        upper = 8.0
        """)
    p = tmp_path / "f.toml"
    p.write_text(spec)
    ds = generate(p, 2_000, seed=1)
    thalf = 0.693 * ds.V.values / ds.CL.values
    assert ds.sizes["patient"] == 2_000
    assert thalf.min() >= 6.0 and thalf.max() <= 8.0
    assert 0.05 < ds.attrs["acceptance_rate"] < 0.9
    assert ds.attrs["rejected_by"].startswith("rejected by filter 'half-life' (0.693 * V / CL)")


def test_an_effect_that_goes_nonpositive_is_said(tmp_path):
    """``1 - 0.05 * (AGE - 40)`` is <= 0 above 60 y: those candidates were rejected and the
    AGE distribution cut without a word (a probe)."""
    p = tmp_path / "neg.toml"
    p.write_text(SPEC.replace(
        '{ type = "categorical", covariate = "SEX", factors = { M = 1.2 } },',
        '{ type = "expression", expression = "1 - 0.05 * (AGE - 40)" },',
    ))  # fmt: skip
    with pytest.warns(CohortWarning, match=r"\[parameters.CL\]: its typical value x covariate"):
        generate(p, 500, seed=1)


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (
            (
                "matrix = [[1.0, 0.6, 0.2], [0.6, 1.0, -0.1], [0.2, -0.1, 1.0]]",
                "matrix = [[1.0, 0.99, 0.99], [0.99, 1.0, -0.9], [0.99, -0.9, 1.0]]",
            ),
            "correlation.matrix",
            "positive definite",
        ),
        (
            ('distribution = "lognormal"', 'distribution = "lognormall"'),
            "covariates.AGE.distribution",
            "unknown distribution",
        ),
        (('units = "cm"\n', ""), "covariates.HT.units", "missing unit"),
        (("sd = 9.0", "sd = -9.0"), "covariates.HT.sd", "must be > 0"),
        (("typical = 30.0", "typicl = 30.0"), "parameters.V", "unknown key"),
        (
            (
                'covariate = "WT", reference = 70.0, coefficient = 1.0',
                'covariate = "WGT", reference = 70.0, coefficient = 1.0',
            ),
            "effects[0].covariate",
            "unknown covariate",
        ),
        # found by a new user's session: each gave a silently wrong population or a crash
        (
            ("factors = { M = 1.2 }", "factors = { Male = 1.2 }"),
            "effects[1].factors",
            "['Male'] are not categories of 'SEX'",
        ),  # fmt: skip
        (("[covariates.EGFR]", "[covariates.V]"), "parameters.V", "is also a covariate"),
        (
            ("typical = 30.0", "typical = 30.0\nlower = 5.0\nupper = 1.0"),
            "parameters.V",
            "lower (5) must be below upper (1)",
        ),  # fmt: skip
        (
            ("[iiv]", '[[filters]]\nexpression = "CL / V"\n[iiv]'),
            "filters[0]",
            "needs lower and/or upper",
        ),  # fmt: skip
        # bounds on a categorical covariate were accepted and ignored; a repeated iiv name
        # silently dropped its SD
        (
            ("probabilities = [0.4, 0.6]", "probabilities = [0.4, 0.6]\nlower = 1"),
            "covariates.SEX.lower",
            "bounds do not apply to a categorical covariate",
        ),  # fmt: skip
        (('parameters = ["CL", "V"]', 'parameters = ["CL", "CL"]'), "iiv.parameters", "twice"),
        # 5 % of patients sat exactly at each end of the quantiles (a probe)
        (
            (
                'distribution = "normal"\nmean = 170.0\nsd = 9.0',
                'distribution = "empirical"\nquantiles = [155.0, 170.0, 185.0]\n'
                "probabilities = [0.05, 0.5, 0.95]",
            ),
            "covariates.HT.probabilities",
            "must run from 0 to 1",
        ),  # fmt: skip
        # numpy took an extra argument as its output array: minimum(KA, 100, CL) wrote over
        # CL, silently (a probe); too few was a traceback that left a store behind
        (
            (
                "coefficient = 1.0 }]",
                "coefficient = 1.0 }]\n"
                '[[filters]]\nexpression = "minimum(CL, 100.0, V)"\nupper = 50',
            ),
            "filters[0]",
            "minimum() takes 2 arguments, got 3",
        ),  # fmt: skip
        (
            (
                "coefficient = 1.0 }]",
                'coefficient = 1.0 }]\n[[filters]]\nexpression = "sqrt() + CL"\nupper = 50',
            ),
            "filters[0]",
            "sqrt() takes 1 argument, got 0",
        ),  # fmt: skip
        # keys only some distributions read were accepted and ignored on the others
        (("cv = 0.3", "cv = 0.3\nscale = 70.0"), "covariates.AGE", "unknown key(s) ['scale']"),
        (
            ("matrix = [[1.0, 0.6, 0.2]", "matrix = [[1.0, nan, 0.2]"),
            "correlation.matrix",
            "finite numbers",
        ),  # fmt: skip
        # a percent CV typed as a variance drew CL from 1e-20 to 1e21 (a new user's session)
        (
            ("omega = [[0.09, 0.03], [0.03, 0.04]]", "omega = [[900.0, 0.0], [0.0, 0.04]]"),
            "iiv.omega",
            "log-scale SD CL 30 above 3",
        ),  # fmt: skip
    ],
)
def test_malformed_specs_name_file_and_key(tmp_path, edit, key, words):
    p = tmp_path / "bad.toml"
    assert edit[0] in SPEC
    p.write_text(SPEC.replace(edit[0], edit[1], 1))
    with pytest.raises(SpecError) as exc:
        load_spec(p)
    msg = str(exc.value)
    assert str(p) in msg and key in msg and words in msg, msg


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('units = "L/h"', "[parameters.CL.units] 'mL/min', but pk1_oral's CL is in 'L/h'"),
        ("typical = 3.0", "[parameters.CL.typical] -3 is outside pk1_oral's range for CL"),
    ],
)
def test_parameters_are_checked_against_the_model(tmp_path, edit, message):
    """A CL in mL/min was simulated as L/h (60x) and a typical CL of -3 drawn at 100 %
    acceptance: a spec for a model is checked against its units and ranges."""
    p = tmp_path / "model.toml"
    text = SPEC.replace('name = "test"', 'name = "test"\nmodel = "pk1_oral"', 1)
    assert load_spec(_written(p, text)).model == "pk1_oral"
    bad = {'units = "L/h"': 'units = "mL/min"', "typical = 3.0": "typical = -3.0"}[edit]
    with pytest.raises(SpecError) as exc:
        load_spec(_written(p, text.replace(edit, bad, 1)))
    assert message in str(exc.value)


def _written(path, text):
    path.write_text(text)
    return path


def test_unsafe_expression_rejected(tmp_path):
    p = tmp_path / "evil.toml"
    p.write_text(SPEC + "[[filters]]\nexpression = \"__import__('os').system('true')\"\n")
    with pytest.raises(SpecError, match="only the functions"):
        load_spec(p)


def test_match_targets_reduces_ks(big):
    from cohort.population.spec import Target

    big = big.isel(patient=slice(0, 30_000))

    target = [Target("CL", "CL", "normal", {"mean": 3.6, "sd": 0.5})]
    res = match(big, target, method="acceptance", seed=0)
    assert res.ks_after["CL"] < 0.03 < res.ks_before["CL"]
    sel = big.CL.values[res.selected]
    assert abs(sel.mean() - 3.6) < 0.05 and abs(sel.std() - 0.5) < 0.05
    w = match(big, target, method="weights")
    assert w.ks_after["CL"] < 0.03 and abs(np.sum(w.weights * big.CL.values) - 3.6) < 0.05


@pytest.mark.parametrize("name", ["adult_pk_oral", "neonate_phenobarbital"])
def test_shipped_specs_generate(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "priors" / f"{name}.toml"
    spec = load_spec(path)
    ds = generate(spec, 20_000, seed=2)
    assert set(spec.parameter_names) <= set(ds.data_vars)
    if name == "neonate_phenobarbital":
        # V/WGT = 0.984258 (1 + 0.15892 [APGR < 5]) exp(eta): check the APGAR factor.
        r = np.log(ds.V.values / ds.WGT.values / 0.984258)
        low = ds.APGR.values < 5
        assert abs((r[low].mean() - r[~low].mean()) - np.log(1.158920)) < 0.01


def test_quick_cohort_keeps_fractions_within_bounds():
    """`cohort simulate`'s quick cohort: fractions (UVA/Padova b, d, f) vary on the logit
    scale and stay in (0, 1), with their default as median; other positive parameters are
    log-normal with the requested CV and the default as median (NONMEM's TV·exp(ETA); it was
    their mean); 30 of 50 patients used to be invalid."""
    from cohort.models import get
    from cohort.population import lognormal
    from cohort.population.lognormal import is_fraction

    model = get("uva_padova")
    pop = lognormal(model, 20_000, seed=3, cv=0.3)
    fractions = [q for q in model.parameters if is_fraction(q)]
    assert {q.name for q in fractions} == {"b", "d", "f"}
    for q in fractions:
        v = pop[q.name]
        assert 0 < v.min() and v.max() < 1
        assert np.median(v) == pytest.approx(q.default, rel=0.01)
        logit = np.log(v / (1 - v))
        assert np.std(logit) == pytest.approx(np.sqrt(np.log1p(0.09)), rel=0.03)
    kabs = pop["kabs"] / model.defaults()["kabs"]  # TV·exp(η): the default is the median
    assert np.median(kabs) == pytest.approx(1.0, abs=0.01)
    assert np.mean(kabs) == pytest.approx(np.sqrt(1.09), abs=0.01)
    assert np.std(kabs) / np.mean(kabs) == pytest.approx(0.3, rel=0.03)


BETA = """
[covariates.ALB]
distribution = "beta"
alpha = 4.0
beta = 4.0
loc = 15.0
scale = 35.0
lower = 25.0
upper = 35.0
units = "g/L"
citation = "test"
"""


def test_bounds_truncate_a_beta_covariate(tmp_path):
    """A new user's beta ALB with bounds 25-35 came out between 20 and 43: the bounds were
    accepted and ignored. Now the draw follows the truncated beta."""
    ds = generate(_written(tmp_path / "b.toml", SPEC + BETA), 20_000, seed=2)
    alb = ds.ALB.values
    assert alb.min() >= 25.0 and alb.max() <= 35.0
    beta = stats.beta(4.0, 4.0, loc=15.0, scale=35.0)
    lo, hi = beta.cdf(25.0), beta.cdf(35.0)
    truncated_cdf = lambda x: (beta.cdf(x) - lo) / (hi - lo)  # noqa: E731
    assert stats.kstest(alb, truncated_cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # a normal(10, 10) AGE with a power effect: the negative ages came out NaN and were
        # rejected silently, leaving AGE with mean 13.3 and SD 7.8
        (
            ("mean = 70.0\nsd = 12.0", "mean = 10.0\nsd = 10.0"),
            "[parameters.CL] power effect of WT: WT must be > 0, but normal(mean=10, sd=10) "
            "gives 0.159 of the patients a value <= 0",
        ),
        # bounds far outside the distribution: "relax [[filters]] or parameter bounds"
        (
            ("lower = 30.0\nupper = 150.0", "lower = 400.0\nupper = 500.0"),
            "[covariates.EGFR] lower/upper: the bounds [400, 500] hold no probability",
        ),
    ],
)
def test_covariates_that_break_their_effects_are_refused_before_drawing(tmp_path, edit, message):
    assert edit[0] in SPEC
    p = _written(tmp_path / "bad.toml", SPEC.replace(edit[0], edit[1], 1))
    with pytest.raises(SpecError) as exc:
        generate(p, 10, seed=1)
    assert message in str(exc.value)


def test_a_population_for_a_model_alias_simulates_under_either_name(tmp_path):
    """illustrative_pkpd_idr.toml is for ``pk2_oral_idr``, registered as an alias of
    ``pk2_oral+idr1``: both names (and numpy's float32) are accepted, the Python API and the
    CLI alike; another model is still refused."""
    from typer.testing import CliRunner

    import cohort
    from cohort.cli import app
    from cohort.engine.inputs import InputError

    pop = generate(ROOT / "priors" / "illustrative_pkpd_idr.toml", n=4, seed=1)
    dose = cohort.Regimen(amt=320, ii=12, addl=1, cmt="depot")
    for name in ("pk2_oral_idr", "pk2_oral+idr1"):
        ds = cohort.simulate(name, pop, dose, cohort.grid(0, 24, 6), dtype=np.float32)
        assert ds.sizes["patient"] == 4 and np.all(ds.status.values == 0)
        assert ds.conc.dtype == np.float32
    with pytest.raises(InputError, match="generated for model 'pk2_oral_idr'"):
        cohort.simulate("pk2_oral+idr2", pop, dose, cohort.grid(0, 24, 6))
    runner = CliRunner()
    store = tmp_path / "pop.zarr"
    res = runner.invoke(app, ["generate", str(ROOT / "priors" / "illustrative_pkpd_idr.toml"),
                              "--n", "4", "-o", str(store)])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["simulate", "--population", str(store), "--t-end", "24",
                              "-o", str(tmp_path / "sim.zarr")])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_a_population_nobody_passes_says_what_rejects_it(tmp_path):
    """Every candidate rejected was "relax [[filters]] or parameter bounds" even when an
    expression gave inf/NaN for everyone (a probe); the commonest reasons are now named."""
    from cohort.population.generate import PopulationError

    text = SPEC + '[[filters]]\nexpression = "CL / V"\nupper = 0.01\n'
    with pytest.raises(PopulationError, match=r"rejected by filter 'CL / V': 100% of draws"):
        generate(_written(tmp_path / "f.toml", text), 10, seed=1, max_candidates=500)
    text = SPEC.replace(
        '{ type = "categorical", covariate = "SEX", factors = { M = 1.2 } },',
        '{ type = "expression", expression = "1 / (WT - WT)" },',
        1,
    )
    assert text != SPEC
    with pytest.raises(PopulationError, match=r"CL not finite \(inf/NaN from its expression"):
        generate(_written(tmp_path / "e.toml", text), 10, seed=1, max_candidates=500)


PK1 = """
[population]
name = "named like a parameter"
model = "pk1_oral"
[covariates.F]
distribution = "categorical"
categories = [0, 1]
probabilities = [0.5, 0.5]
units = "1"
citation = "test"
[parameters.CL]
typical = 3.0
units = "L/h"
citation = "test"
[parameters.V]
typical = 30.0
units = "L"
citation = "test"
"""


def test_a_covariate_named_like_a_model_parameter(tmp_path):
    """A covariate is read by name in a simulation: a categorical ``F`` ("female") was
    simulated as pk1_oral's bioavailability 0 or 1 without a word (a probe). Refused where it
    cannot be meant, said where it can."""
    p = tmp_path / "f.toml"
    p.write_text(PK1)
    with pytest.raises(SpecError, match=r"\[covariates.F\] has the name of pk1_oral's parameter F"):
        load_spec(p)
    p.write_text(PK1.replace(
        'distribution = "categorical"\ncategories = [0, 1]\nprobabilities = [0.5, 0.5]',
        'distribution = "uniform"\nlower = 0.5\nupper = 1.0',
    ))  # fmt: skip
    with pytest.warns(CohortWarning, match="a simulation of this population uses its values"):
        load_spec(p)


def test_a_population_the_spec_cannot_give_leaves_no_store(tmp_path):
    """Its store only said "incomplete, rerun with --resume", which fails the same way, and
    blocked a rerun with a corrected spec (a probe); a seed beyond 2**63 - 1 was a traceback
    from inside JAX after the store was made."""
    p = tmp_path / "tight.toml"
    p.write_text(SPEC + '[[filters]]\nname = "none"\nexpression = "CL"\nlower = 1e6\n')
    out = tmp_path / "pop.zarr"
    with pytest.raises(PopulationError, match="0 of the first 10,000 candidate draws passed"):
        generate(p, 50, seed=1, out=out)
    assert not out.exists()
    with pytest.raises(PopulationError, match=r"seed: an integer from 0 to 2\*\*63 - 1"):
        generate(p, 50, seed=2**64 - 1, out=out)
    assert not out.exists()
    # refused before the output is touched: an --overwrite keeps the good store it would have
    # replaced, and the user's empty folder stays (both were removed for a run that gave
    # nothing: a probe)
    good = generate(_written(tmp_path / "ok.toml", SPEC), 20, seed=1, out=out)
    before = good["CL"].values.copy()
    with pytest.raises(PopulationError, match="relax"):
        generate(p, 50, seed=1, out=out, overwrite=True)
    np.testing.assert_array_equal(open_population(out)["CL"].values, before)
    folder = tmp_path / "mine"
    folder.mkdir()
    with pytest.raises(PopulationError, match="relax"):
        generate(p, 50, seed=1, out=folder)
    assert folder.is_dir() and not any(folder.iterdir())
    # a spec that passes its first draws but not enough of them is refused up front too
    rare = SPEC + '[[filters]]\nname = "rare"\nexpression = "CL"\nlower = 4.5\n'
    with pytest.raises(PopulationError, match=r"need about .* draws, more than the 1,000 allowed"):
        generate(_written(tmp_path / "rare.toml", rare), 500, seed=1, out=folder,
                 max_candidates=1000)  # fmt: skip
    assert folder.is_dir() and not any(folder.iterdir())


def test_populations_are_the_same_with_jax_x64_switched_off(spec_path):
    """JAX's x64 off (cohort turns it on at import): the 64-bit draws came back 32-bit and
    every weight sat at its lower bound, with only a JAX warning (a probe)."""
    import jax

    ref = generate(spec_path, 200, seed=5)
    jax.config.update("jax_enable_x64", False)
    try:
        got = generate(spec_path, 200, seed=5)
    finally:
        jax.config.update("jax_enable_x64", True)
    for name in ref.data_vars:
        np.testing.assert_array_equal(got[name].values, ref[name].values, name)


def test_a_shipped_prior_is_found_by_name_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = generate("adult_pk_oral", 20, seed=1)
    assert Path(ds.attrs["spec_path"]).resolve() == (ROOT / "priors/adult_pk_oral.toml").resolve()
    with pytest.raises(SpecError, match="also found by name alone: adult_pk_oral"):
        load_spec("priors/adult_pk_oral.toml")
