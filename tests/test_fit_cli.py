"""`cohort fit` as a user runs it: no hand-set initial values, the shipped Theoph and pheno
data, the right ka/ke mode, honest exit codes (references: DESIGN §6 in
tests/data/fit_references.json and tests/data/SOURCES-fit.md)."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cohort.cli import app
from cohort.inference import NLME, ErrorModel, Param, load_fit
from cohort.inference.synthetic import design, simulate_data

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "fit_references.json").read_text())
runner = CliRunner()


def _fit(tmp_path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "fit.nc"
    res = runner.invoke(app, ["fit", *map(str, args), "--method", "ml", "-o", str(out)])
    est = None
    if out.exists():
        summary = load_fit(out)["fit_summary"]
        est = {str(k): float(v) for k, v in zip(summary.parameter.values, summary.estimate.values)}
    return res, est, summary.attrs if out.exists() else {}


def _flat(res) -> str:
    return " ".join(res.output.split())


def test_theoph_per_kg_lands_in_the_right_mode(tmp_path):
    """The issue's command: it used to land in the ka/ke mirror (KA 0.081, OFV 171.9)."""
    res, est, attrs = _fit(
        tmp_path,
        DATA / "theoph_nonmem.csv",
        *("--params", "CL,V,KA", "--iiv", "KA,CL"),
        *("--covariate", "CL~WT:power:1:1", "--covariate", "V~WT:power:1:1"),
    )
    assert res.exit_code == 0, res.output
    assert attrs["ofv"] == pytest.approx(138.845, abs=0.05)
    assert est["KA"] > est["CL"] / est["V"]  # absorption faster than elimination
    assert "2 of 2 starts reached the best OFV" in _flat(res)
    assert "mirrored mode (KA <-> CL/V) reaches OFV 171.9" in _flat(res)
    assert "L/h per WT" in _flat(res)  # the typical value is per kg: its units say so
    # the coefficient as the table names it (CL~WT), held from the command line: the same
    # model and OFV (it was "'CL~WT' is not an estimated parameter"; a probe's session)
    res, est, attrs = _fit(
        tmp_path / "named",
        DATA / "theoph_nonmem.csv",
        *("--params", "CL,V,KA", "--iiv", "KA,CL"),
        *("--covariate", "CL~WT:power:1", "--covariate", "V~WT:power:1:1"),
        *("--fix", "CL~WT=1", "--init", "V~WT=1"),
    )
    assert res.exit_code == 0, res.output
    assert attrs["ofv"] == pytest.approx(138.845, abs=0.05) and est["CL~WT"] == 1.0


def test_theoph_defaults_match_nlmixr2(tmp_path):
    """IIV on CL, V and KA, additive error, no inits: nlmixr2 SAEM's estimates (DESIGN §6). The
    flip-flop mirror fits better here but only with its KA variance at zero: a warning, exit 0."""
    res, est, _ = _fit(tmp_path, DATA / "theoph_nonmem.csv", "--params", "CL,V,KA")
    assert res.exit_code == 0, res.output
    ka, cl, v, add = 1.57, 2.77, 31.5, 0.693  # nlmixr2 SAEM, DESIGN §6
    assert est["CL"] == pytest.approx(cl, rel=0.05)
    assert est["V"] == pytest.approx(v, rel=0.05)
    assert est["KA"] == pytest.approx(ka, rel=0.10)
    assert est["sigma_add"] == pytest.approx(add, rel=0.05)
    assert "an IIV collapses to zero there" in _flat(res)
    assert re.search(r"time: startup [\d.]+ s, trace [\d.]+ s, compile", _flat(res))  # on stderr


def test_parameters_the_observed_output_cannot_inform_are_not_estimated(tmp_path):
    """A PK/PD model fitted to concentrations estimated its PD parameters too (a flat
    likelihood: a new user's pk2_oral_idr fit of Theoph ran for minutes). By default only the
    parameters that can change the fitted output are estimated (said in a note): here the
    same fit as pk1_oral's (nlmixr2's estimates); naming one in --params is refused."""
    res, est, _ = _fit(tmp_path / "a", DATA / "theoph_nonmem.csv", "--model", "pk1_oral+emax")
    assert res.exit_code == 0, res.output
    assert "E0, EMAX, EC50, GAMMA cannot change 'conc'" in _flat(res)
    assert not {"E0", "EMAX", "EC50", "GAMMA"} & set(est)
    assert est["CL"] == pytest.approx(2.77, rel=0.05) and est["V"] == pytest.approx(31.5, rel=0.05)
    res, _, _ = _fit(tmp_path / "b", DATA / "theoph_nonmem.csv", "--model", "pk1_oral+emax",
                     "--params", "CL,V,KA,EC50")  # fmt: skip
    assert res.exit_code == 2 and "['EC50'] cannot change 'conc'" in _flat(res)


def test_pheno_as_shipped_reproduces_nonmem(tmp_path):
    """NONMEM's pheno control stream, from the command line, no inits: FOCE-I estimates and
    OFV (it used to fail with OFV 4e17/inf from default starts)."""
    res, est, attrs = _fit(
        tmp_path,
        DATA / "pheno.dta",
        *("--model", "pk1_iv", "--params", "CL,V", "--error", "proportional", "--se", "sandwich"),
        *("--covariate", "CL~WGT:power:1:1", "--covariate", "V~WGT:power:1:1"),
        *("--covariate", "V~APGR:binary:5", "--report", tmp_path / "report"),
    )
    assert res.exit_code == 0, res.output
    # CWRES as NONMEM's $TABLE prints them (whitened by the symmetric root of the linearised
    # covariance; a Cholesky factor gave -0.186 for ID 1's first sample instead of -0.401)
    tab = pd.read_csv(tmp_path / "report" / "sdtab.csv")
    nm = pd.read_csv(DATA / "pheno_cwres_nonmem.csv")
    both = tab.merge(nm, on=["ID", "TIME"], suffixes=("", "_nm"))
    assert len(both) == 155
    np.testing.assert_allclose(both["CWRES"], both["CWRES_nm"], atol=0.02)
    # NONMEM's pheno.lst: ETASHRINKSD 47.580 / 13.581 %, EPSSHRINKSD 21.198 %
    assert attrs["diagnostic_shrinkage_eta_CL"] == pytest.approx(47.58, abs=0.3)
    assert attrs["diagnostic_shrinkage_eta_V"] == pytest.approx(13.58, abs=0.3)
    # its SD of IWRES is taken about 0, not about their mean (which gave 21.3 %)
    assert attrs["diagnostic_shrinkage_eps"] == pytest.approx(21.198, abs=0.01)
    assert "shrinkage (SD, as NONMEM's ETASHRINKSD): η CL 47." in res.output
    ref = REF["pheno_nonmem_focei"]
    assert attrs["ofv"] == pytest.approx(ref["ofv"], abs=0.5)
    assert est["CL"] == pytest.approx(ref["theta"]["CL"], rel=0.02)
    assert est["V"] == pytest.approx(ref["theta"]["V"], rel=0.02)
    assert est["V~APGR"] == pytest.approx(ref["theta"]["APGR_V"], rel=0.05)
    assert est["omega2_CL"] == pytest.approx(ref["omega2"]["CL"], rel=0.05)
    assert est["sigma_prop"] ** 2 == pytest.approx(ref["sigma2"], rel=0.05)
    # σ² printed beside σ, as NONMEM's $SIGMA reports it (0.0132410), with its delta-method SE
    row = re.search(r"sigma2_prop\s*│\s*([0-9.e-]+)\s*│\s*([0-9.e-]+)", res.output)
    assert row is not None and float(row.group(1)) == pytest.approx(ref["sigma2"], rel=0.05)
    assert float(row.group(2)) == pytest.approx(0.00228, rel=0.25)  # NONMEM's sandwich SE


def test_flip_flop_data_is_reported_and_exits_nonzero(tmp_path):
    """Data simulated with absorption slower than elimination (KA 0.08 < CL/V 0.2): the fit
    says so, names the mirrored mode's OFV and exits 1 with the results kept."""
    spec = NLME(
        "pk1_oral",
        params=(Param("CL"), Param("V", iiv=False), Param("KA", iiv=False)),
        error=ErrorModel("proportional"),
    )
    frame = design(40, [0.5, 1, 2, 4, 6, 8, 12, 24, 36, 48], 100.0, cmt=1, obs_cmt=2)
    data, _ = simulate_data(
        spec,
        frame,
        seed=3,
        typical={"CL": 4.0, "V": 20.0, "KA": 0.08},
        omega={"CL": 0.3},
        sigma={"prop": 0.1},
    )
    path = tmp_path / "flipflop.csv"
    data.to_csv(path, index=False)
    args = (path, "--params", "CL,V,KA", "--iiv", "CL", "--error", "proportional")
    res, _, attrs = _fit(tmp_path, *args)
    assert res.exit_code == 1, res.output
    assert "flip-flop mode (KA below CL/V) fits better" in _flat(res)
    assert "--allow-unconverged" in _flat(res) and (tmp_path / "fit.nc").exists()
    assert attrs["diagnostic_mirror_ofv"] < attrs["ofv"] - 100
    # the verdict is stored with the result, not "converged" alone
    assert attrs["diagnostic_verdict"].startswith("rejected: the flip-flop mode")
    info = runner.invoke(app, ["info", str(tmp_path / "fit.nc")])
    assert "diagnostic_verdict: rejected" in _flat(info)
    # starting from the flip-flop mode itself gives the truth, and says it is flip-flop
    (tmp_path / "fit.nc").unlink()
    inits = ("--init", "CL=3", "--init", "V=15", "--init", "KA=0.05")
    res, est, _ = _fit(tmp_path, *args, *inits)
    assert res.exit_code == 1 and "estimate is the flip-flop mode" in _flat(res)
    assert est["KA"] == pytest.approx(0.08, rel=0.1) and est["V"] == pytest.approx(20, rel=0.1)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--init", "CL"], "--init 'CL': use NAME=VALUE"),
        (["--init", "CL=-1"], "VALUE > 0"),
        (["--init", "Q=2"], "'Q' is not an estimated parameter"),
        (["--starts", "0"], "--starts must be >= 1"),
        (["--fix", "CL"], "--fix CL: give the value to hold"),
        (["--fix", "CL+V"], "correlations are held by fixing a whole Ω block"),
        (["--init", "CL+V=1.5"], "a correlation A+B=R with -1 < R < 1"),
        (["--init", "CL+KA=0.3", "--omega", "CL+V"], "omega_corr 'CL+KA'"),
        (["--init", "CL~WT=0.5"], "there is no covariate CL~WT to start or hold"),
        (["--init", "CL~WT", "--covariate", "CL~WT"], "use PARAM~COLUMN=VALUE"),
        (["--fix", "CL~WT", "--covariate", "CL~WT"], "--fix CL~WT: give the value to hold"),
    ],
)
def test_bad_init_flags(tmp_path, args, message):
    res = runner.invoke(app, ["fit", str(DATA / "theoph_nonmem.csv"), "--method", "ml", *args])
    assert res.exit_code == 2 and message in _flat(res), res.output


def test_fixed_elements_from_the_command_line(tmp_path):
    """``--fix omega_KA=SD`` holds that IIV (reported as fixed, not estimated), ``--fix CL=V``
    holds a typical value; a block with every SD fixed holds its ``--init A+B=R`` correlation;
    the OFV of a fit with ω(KA) held away from its optimum is worse than the free fit's."""
    theoph = DATA / "theoph_nonmem.csv"
    free, est_free, attrs_free = _fit(tmp_path / "free", theoph, "--params", "CL,V,KA")
    held, est, attrs = _fit(
        tmp_path / "held", theoph, "--params", "CL,V,KA", "--fix", "omega_KA=0.3",
        "--fix", "V=32", "--omega", "CL+V", "--init", "CL+V=0.4",
        "--fix", "omega_CL=0.25", "--fix", "omega_V=0.15",
    )  # fmt: skip
    assert held.exit_code in (0, 1), held.output
    assert est["omega_KA"] == pytest.approx(0.3, rel=1e-12)
    assert est["V"] == pytest.approx(32.0, rel=1e-12)
    assert est["omega_CL"] == pytest.approx(0.25, rel=1e-12)
    assert est["corr_CL_V"] == pytest.approx(0.4, rel=1e-9)
    assert est["KA"] != pytest.approx(est_free["KA"], rel=1e-6)  # the rest is estimated
    assert attrs["omega_fixed"] == "CL,V,KA"
    assert attrs["ofv"] > attrs_free["ofv"] + 1.0
    summary = load_fit(tmp_path / "held" / "fit.nc")["fit_summary"]
    fixed = {str(k): bool(v) for k, v in zip(summary.parameter.values, summary.fixed.values)}
    assert fixed["omega_KA"] and fixed["V"] and fixed["corr_CL_V"] and not fixed["KA"]
    assert re.search(r"│ V\s+│ 32\s+│ fixed", held.output)  # held values stay in the table
    info = runner.invoke(app, ["info", str(tmp_path / "held" / "fit.nc")])
    assert re.search(r"│ V\s+│ 32\s+│ fixed", info.output)  # `info` said SE 0 (new user)
    # a residual SD's initial value (it was "not an estimated parameter"): from 3x the
    # estimate, the same fit as nlmixr2's (DESIGN §6, as test_theoph_defaults_match_nlmixr2)
    res, est, _ = _fit(tmp_path / "sigma", theoph, "--params", "CL,V,KA", "--init",
                       "sigma_add=2.1")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert est["sigma_add"] == pytest.approx(0.693, rel=0.05)
    res = runner.invoke(app, ["fit", str(theoph), "--init", "sigma_prop=0.2", "-o",
                              str(tmp_path / "x.nc")])  # fmt: skip
    assert res.exit_code == 2 and "the additive error model has no such SD" in _flat(res)


def test_observation_table_like_nonmem_sdtab(tmp_path):
    """`cohort fit --report` writes sdtab.csv (one row per observation) and the result file
    holds the same table; residuals are standardised (CWRES mean ~0, SD ~1 at the ML fit)."""
    out, rep = tmp_path / "fit.nc", tmp_path / "report"
    args = ["fit", str(DATA / "pheno.dta"), "--method", "ml", "-o", str(out), "--report", str(rep)]
    args += ["--model", "pk1_iv", "--params", "CL,V", "--error", "proportional"]
    args += ["--covariate", "CL~WGT:power:1:1", "--covariate", "V~WGT:power:1:1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    import pandas as pd

    tab = pd.read_csv(rep / "sdtab.csv")
    assert len(tab) == 155 and tab["ID"].nunique() == 59
    assert list(tab.columns[:8]) == ["ID", "TIME", "DV", "PRED", "IPRED", "IWRES", "CWRES", "CENS"]
    assert {"ETA_CL", "ETA_V"} <= set(tab.columns)
    assert abs(tab["CWRES"].mean()) < 0.2 and 0.7 < tab["CWRES"].std() < 1.3
    assert abs(tab["IWRES"].mean()) < 0.3
    stored = load_fit(out)["observations"]
    np.testing.assert_allclose(stored["IPRED"].values, tab["IPRED"].to_numpy(), rtol=1e-10)
    # dense PRED/IPRED curves per subject (curves.csv and the result's "curves" group): each
    # grid ends at the subject's last observation, where it equals that row of sdtab
    curves = pd.read_csv(rep / "curves.csv")
    assert list(curves.columns) == ["ID", "TIME", "PRED", "IPRED"]
    assert len(curves) == 59 * 241 and curves.notna().all().all()
    last_grid = curves.groupby("ID").tail(1).set_index("ID")
    last_obs = tab.groupby("ID").tail(1).set_index("ID")
    np.testing.assert_allclose(last_grid["TIME"], last_obs["TIME"], rtol=1e-12)
    for col in ("PRED", "IPRED"):
        np.testing.assert_allclose(last_grid[col], last_obs[col], rtol=1e-9)
    group = load_fit(out)["curves"]
    np.testing.assert_allclose(group["IPRED"].values.ravel(), curves["IPRED"], rtol=1e-12)


@pytest.mark.slow  # three fits of 80 subjects: keeps the default suite under 10 minutes
def test_block_omega_recovers_the_covariance(tmp_path):
    """A 2x2 block for CL, V (correlation 0.6) plus a diagonal KA, simulated for 80 subjects:
    `--omega CL+V` estimates the block's correlation, leaves KA uncorrelated, and its OFV lies
    between the diagonal and the full Ω fits (nested models)."""
    spec = NLME(
        "pk1_oral",
        params=(Param("CL"), Param("V"), Param("KA")),
        error=ErrorModel("proportional"),
        omega="full",
    )
    frame = design(80, [0.5, 1, 2, 3, 4, 6, 8, 12, 24], 100.0, cmt=1, obs_cmt=2)
    corr = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 1.0]])
    data, _ = simulate_data(
        spec,
        frame,
        seed=11,
        typical={"CL": 4.0, "V": 30.0, "KA": 1.2},
        omega={"CL": 0.3, "V": 0.25, "KA": 0.4},
        sigma={"prop": 0.1},
        corr=corr,
    )
    path = tmp_path / "block.csv"
    data.to_csv(path, index=False)
    base = (path, "--params", "CL,V,KA", "--error", "proportional")
    ofv, est = {}, {}
    for omega in ("diagonal", "CL+V", "full"):
        (tmp_path / "fit.nc").unlink(missing_ok=True)
        res, est[omega], attrs = _fit(tmp_path, *base, "--omega", omega)
        assert res.exit_code == 0, res.output
        ofv[omega] = attrs["ofv"]
    assert est["CL+V"]["corr_CL_V"] == pytest.approx(0.6, abs=0.2)
    assert "corr_CL_KA" not in est["CL+V"] and "corr_V_KA" not in est["CL+V"]
    assert ofv["full"] - 0.05 <= ofv["CL+V"] <= ofv["diagonal"] + 0.05
    assert ofv["diagonal"] - ofv["CL+V"] > 3.84  # the correlation is detected (LRT, 1 df)
    for name, truth in (("omega_CL", 0.3), ("omega_V", 0.25), ("omega_KA", 0.4)):
        assert est["CL+V"][name] == pytest.approx(truth, rel=0.35)


def test_zero_prediction_under_log_error_is_reported_and_exits_nonzero(tmp_path):
    """One observation recorded before the dose (prediction exactly 0) under log-additive
    error: the fit names the record and exits 1 (it used to 'converge' to sigma = 21.5)."""
    import pandas as pd

    frame = pd.read_csv(DATA / "theoph_nonmem.csv")
    frame["DV"] = pd.to_numeric(frame["DV"], errors="coerce")  # '.' on dose rows -> NaN
    first = frame.index[(frame["ID"] == frame["ID"].iloc[0]) & (frame["EVID"] == 0)][0]
    frame.loc[first, "TIME"] = -0.5  # an observation half an hour before subject 1's dose
    frame.loc[first, "DV"] = 0.2
    frame = frame.sort_values(["ID", "TIME"], kind="stable")
    frame = frame[frame["DV"].isna() | (frame["DV"] > 0)]  # log error needs DV > 0
    path = tmp_path / "zero.csv"
    frame.to_csv(path, index=False)
    res, _, attrs = _fit(tmp_path, path, "--params", "CL,V,KA", "--error", "log-additive")
    assert res.exit_code == 1, res.output
    assert "predicted as 0 under log-additive error" in _flat(res)
    assert "TIME -0.5" in _flat(res)
    assert attrs["diagnostic_zero_predictions"] == 1


@pytest.mark.slow
def test_nuts_prints_a_verdict_and_fails_its_gates_loudly(tmp_path):
    """Too few draws for the gates (bulk ESS >= 100 per chain): the verdict line says so with
    the numbers, the run exits 1 and keeps the draws; --allow-unconverged exits 0."""
    out = tmp_path / "fit.nc"
    args = ["fit", str(DATA / "theoph_nonmem.csv"), "--params", "CL,V,KA", "--chains", "2",
            "--warmup", "20", "--draws", "20", "-o", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    text = _flat(res)
    assert "NUTS verdict: NOT converged — max R-hat" in text and "(gate >= 200)" in text
    assert "NUTS gates failed" in " ".join(res.stderr.split()) and out.exists()
    res = runner.invoke(app, [*args, "--overwrite", "--allow-unconverged"])
    assert res.exit_code == 0 and "NUTS verdict: NOT converged" in _flat(res)


def test_svi_stopped_short_exits_nonzero(tmp_path):
    """An SVI fit whose ELBO gradient is still far from zero is not converged: README says the
    fit exits 1 then, as ML and NUTS fits do (it exited 0 after its warning)."""
    out = tmp_path / "fit.nc"
    args = ["fit", str(DATA / "theoph_nonmem.csv"), "--params", "CL,V,KA", "--method", "svi",
            "--steps", "20", "--draws", "50", "-o", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "SVI did not converge in --steps" in " ".join(res.stderr.split()) and out.exists()
    res = runner.invoke(app, [*args, "--overwrite", "--allow-unconverged"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "rows, message",
    [
        (["1,0,.,320,1,1,1", "2,0,.,280,1,1,1"], "no observations (EVID 0 rows with a DV"),
        (["1,0.5,2.7,0,0,2,0", "1,2,5.0,0,0,2,0"], "no dose records (EVID 1 or 4 with AMT > 0)"),
        # found by a pharmacometrician's probe: each ran to a wrong or meaningless fit
        (
            ["1,0,.,320,1,1,1", "1,1,5.1,0,0,2,0", "2,1,4.0,0,0,2,0"],
            "row 3, column ID: ID 2 (1 subject(s)) has observations but no dose",
        ),
        (
            ["1,0,.,320,1,1,1", "1,1,5.1,0,0,2,0", "1,2,4.0,0,0,1,0"],
            "row 3, column CMT: CMT 1 (depot) on an observation (rows 3; 1 in all): the fit "
            "compares every DV with 'conc', which reads CMT 2 (central)",
        ),
        (["1,0,.,320,1,1,1", "1,1,inf,0,0,2,0"], "row 2, column DV: DV inf is not a finite"),
    ],
)
def test_fit_refuses_data_it_cannot_learn_from(tmp_path, rows, message):
    """No observations, or no dose for a dosed model: an error, not the initial values
    reported as estimates with OFV 0 and exit code 0."""
    data = tmp_path / "d.csv"
    data.write_text("\n".join(["ID,TIME,DV,AMT,EVID,CMT,MDV", *rows]) + "\n")
    res = runner.invoke(app, ["fit", str(data), "--method", "ml", "-o", str(tmp_path / "f.nc")])
    assert res.exit_code == 2, res.output
    assert message in _flat(res) and "Traceback" not in res.output
    assert not (tmp_path / "f.nc").exists()


def test_measured_zeros_under_proportional_error_are_refused_by_row(tmp_path):
    """A DV of 0 under proportional error has the residual -1/sigma whatever the prediction:
    it can only inflate sigma (seen: CL 0.027 for 3, every SE NaN). Refused before the fit,
    one line naming the rows; without a CMT column the CLI says where the doses go."""
    import pandas as pd

    frame = pd.read_csv(DATA / "theoph_nonmem.csv").drop(columns=["CMT"])
    frame["DV"] = pd.to_numeric(frame["DV"], errors="coerce")
    first = frame.index[frame["EVID"] == 0][:2]
    frame.loc[first, "DV"] = 0.0
    frame.to_csv(tmp_path / "zeros.csv", index=False)
    res, _, _ = _fit(tmp_path, tmp_path / "zeros.csv", "--params", "CL,V,KA", "--error",
                     "proportional")  # fmt: skip
    assert res.exit_code == 2, res.output
    text = _flat(res)
    # rows 2 and 3 made 0 here, and the pre-dose zeros Theoph has already (9 subjects)
    assert "rows 2, 3, 14, 26, 38, ... (11 rows), column DV: DV 0 under proportional" in text
    assert "no CMT column: every dose goes into 'depot' of pk1_oral" in text
    assert not (tmp_path / "fit.nc").exists()


def test_an_iiv_at_its_boundary_is_said():
    """An IIV whose SD ends below 0.01 (CV < 1 %) is a boundary solution: said as NONMEM
    says "near its boundary", naming the parameter and value."""
    import pandas as pd

    from cohort.data import read_nonmem
    from cohort.inference.fit import _boundary_iiv
    from cohort.inference.problem import bind

    spec = NLME("pk1_oral", params=(Param("CL"), Param("V"), Param("KA")))
    bm = bind(spec, read_nonmem(pd.read_csv(DATA / "theoph_nonmem.csv"), spec.model))
    pop = bm.default_pop()
    assert _boundary_iiv(bm, pop) == ""
    low = pop._replace(omega=np.asarray([0.3, 1e-19, 0.5]))
    text = _boundary_iiv(bm, low)
    assert "IIV at its boundary (omega_V = 1e-19" in text and "--iiv without V" in text


def test_nonmem_method_names_are_understood(tmp_path):
    """``--method FOCE`` / ``laplace`` are ML fits with that approximation (any case); FO and
    SAEM are refused with what to use instead, before any work."""
    res = runner.invoke(app, ["fit", str(DATA / "theoph_nonmem.csv"), "--method", "SAEM"])
    assert res.exit_code == 2 and "--method saem: not available; --method ml" in _flat(res)
    out = tmp_path / "f.nc"
    res = runner.invoke(app, ["fit", str(DATA / "theoph_nonmem.csv"), "--method", "FOCE",
                              "--params", "CL,V,KA", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    attrs = load_fit(out)["fit_summary"].attrs
    assert attrs["approximation"] == "foce" and float(attrs["ofv"]) == pytest.approx(
        116.803, abs=0.01
    )


def test_parameters_left_out_of_params_are_named_and_can_be_fixed():
    """With --params, the other parameters that change the fitted output were held at the
    model's values without a word, and --fix CL=5 was refused as "not estimated" (a probe)."""
    args = ["fit", str(DATA / "theoph_nonmem.csv"), "--model", "pk1_oral+emax", "--output",
            "response", "--params", "E0,EMAX,EC50", "--iiv", "NOPE"]  # fmt: skip
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert "note: CL 2.8 L/h, V 32 L, KA 1 1/h, GAMMA 1 can change 'response' but are not" in text
    res = runner.invoke(app, [*args, "--fix", "CL=5"])
    text = " ".join(res.output.split())
    assert "note: V 32 L, KA 1 1/h, GAMMA 1 can change" in text
    assert "--iiv: ['NOPE'] are not among the estimated parameters" in text
    assert "'CL'" in text  # now among the parameters (held at 5)


def test_a_degenerate_basin_of_the_scan_is_left_for_the_models_defaults(tmp_path):
    """An Emax dataset (30 subjects simulated with E0 100, EMAX 50, EC50 1.5 by a probe's
    own simulator, tests/data/emax_degenerate_start.csv) whose scan's best candidates all led
    to EMAX and EC50 at 1e-10 (OFV 1160.458, "2 of 2 starts reached the best OFV"); the
    model's defaults are now tried when the estimate leaves the plausible range, and reach
    OFV 820.215 (the probe's own fit from E0 100, EMAX 50, EC50 1.5)."""
    out = tmp_path / "emax.nc"
    res = runner.invoke(app, [
        "fit", str(DATA / "emax_degenerate_start.csv"), "--model", "pk1_oral+emax", "--output",
        "response", "--method", "ml", "--params", "E0,EMAX,EC50", "--iiv", "E0,EMAX,EC50",
        "-o", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "the model's defaults among them" in " ".join(res.output.split())
    fit = load_fit(out)["fit_summary"]
    assert fit.attrs["ofv"] == pytest.approx(820.215, abs=0.01)
    every = {str(k): float(v) for k, v in zip(fit.parameter.values, fit.estimate.values)}
    est = {k: every[k] for k in ("E0", "EMAX", "EC50")}
    assert est == pytest.approx({"E0": 100.5, "EMAX": 54.06, "EC50": 1.799}, rel=2e-3)


def test_a_parameter_held_by_fix_alone_has_no_random_effect():
    """``--params E0,EMAX,EC50 --fix CL=5``: CL is held at 5, without an IIV the user did not
    ask for (a review: the default IIV set took every name, the held one too)."""
    from cohort.cli.fit import _spec

    spec = _spec("pk1_oral+emax", "E0,EMAX,EC50", None, "additive", "diagonal", None,
                 fix=["CL=5"], output="response")  # fmt: skip
    cl = next(p for p in spec.params if p.name == "CL")
    assert cl.fixed and cl.init == 5.0 and not cl.iiv
    assert all(p.iiv for p in spec.params if p.name != "CL")


def test_observations_of_several_dvids_are_refused_or_selected(tmp_path):
    """A PK/PD file (DVID 1 concentrations, DVID 2 effects around 80-100) was fitted as one
    output without a word: σ_add 31 mg/L. It is refused by row, naming the kinds; ``--dvid 1``
    fits the concentrations alone and recovers the simulated CL, V and KA."""
    spec = NLME(model="pk1_oral", error=ErrorModel("proportional"))
    frame = design(12, [0.5, 1, 2, 4, 8, 24, 48, 72, 96, 120], amt=100.0, cmt="depot")
    pk, _ = simulate_data(
        spec,
        frame,
        seed=4,
        typical={"CL": 0.135, "V": 8.0, "KA": 1.0},
        omega={"CL": 0.2, "V": 0.2, "KA": 0.2},
        sigma={"prop": 0.1},
    )
    pk["DVID"] = 1
    effects = pk[pk["EVID"] == 0].assign(DVID=2, DV=lambda d: 100.0 - 50.0 * d["DV"] / 10.0)
    both = pd.concat([pk, effects]).sort_values(["ID", "TIME", "DVID"], kind="stable")
    path = tmp_path / "pkpd.csv"
    both.to_csv(path, index=False)
    common = ("--model", "pk1_oral", "--error", "proportional")
    res, est, _ = _fit(tmp_path / "mixed", path, *common)
    assert res.exit_code != 0 and est is None
    said = _flat(res)
    assert "column DVID" in said and "DVID 1: 120, DVID 2: 120" in said and "--dvid 1" in said
    res, est, _ = _fit(tmp_path / "pk", path, *common, "--dvid", "1")
    assert res.exit_code == 0, res.output
    assert est["CL"] == pytest.approx(0.135, rel=0.15)
    assert est["V"] == pytest.approx(8.0, rel=0.15)
    assert est["KA"] == pytest.approx(1.0, rel=0.25)
    assert est["sigma_prop"] == pytest.approx(0.1, rel=0.25)
    res, _, _ = _fit(tmp_path / "none", path, *common, "--dvid", "3")
    assert res.exit_code != 0 and "no observation has DVID 3" in _flat(res)
    from cohort.data import read_nonmem

    kept = read_nonmem(path, "pk1_oral", dvid=2)  # the effects, with every dose kept
    assert kept.n_observations == 120 and (kept.records["EVID"] == 1).sum() == 12
    # nlmixr2's text kinds, the effects in a compartment pk1_oral lacks (NONMEM's CMT 3 of a
    # PK/PD file): selected before the compartments are checked, rows numbered as in the file
    text = both.assign(DVID=both["DVID"].map({1: "cp", 2: "pca"}))
    text["CMT"] = np.where(text["DVID"].eq("pca") & text["EVID"].eq(0), "3", text["CMT"])
    pk_only = read_nonmem(text, "pk1_oral", dvid="cp")
    assert pk_only.n_observations == 120
    assert set(pk_only.records["DVID"]) == {"cp"}
    assert pk_only.records["ROW"].max() > 200  # the input's numbering, not the kept rows'
    with pytest.raises(Exception, match="compartment number 3"):
        read_nonmem(text, "pk1_oral")
