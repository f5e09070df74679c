"""Malformed input, as a new user types it: every case is one ``error:`` line on stderr naming
the flag/file/key/row, exit status 2, no traceback (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohort.cli import app

ROOT = Path(__file__).resolve().parents[1]
PRIOR = (ROOT / "priors" / "adult_pk_oral.toml").read_text()
TRIAL = ROOT / "experiments" / "theophylline_dose_ranging.toml"
ESCALATION = ROOT / "experiments" / "theophylline_escalation.toml"
SEQUENTIAL = ROOT / "experiments" / "pkpd_idr_sequential.toml"
runner = CliRunner()


def _files(d: Path) -> None:
    (d / "empty.csv").write_text("")
    (d / "binary.csv").write_bytes(bytes(range(256)) * 2)
    (d / "folder").mkdir()
    (d / "dup.csv").write_text("ID,TIME,AMT,AMT\n1,0,100,100\n")
    (d / "badamt.csv").write_text("ID,TIME,AMT,CMT\n1,0,abc,depot\n")
    (d / "negamt.csv").write_text("ID,TIME,AMT,CMT\n1,0,-5,depot\n")
    (d / "badcmt.csv").write_text("ID,TIME,AMT,CMT\n1,0,100,liver\n")
    (d / "nottime.csv").write_text("ID,TIME,AMT,CMT\n1,x,100,depot\n")
    (d / "reset_back.csv").write_text(
        "ID,TIME,AMT,CMT,EVID\n1,0,100,1,1\n1,10,0,1,0\n1,0,100,1,4\n"
    )
    (d / "ss_constant.csv").write_text("ID,TIME,AMT,CMT,EVID,SS,II,RATE\n1,0,0,1,1,1,0,10\n")
    (d / "pop_extra.csv").write_text("CL,V,KA,HEIGHT\n1,10,1,180\n")
    (d / "pop_other.csv").write_text("CL,V,KA,V1\n1,10,1,180\n")  # another model's parameter
    (d / "pop_text.csv").write_text("CL,V,KA\nfast,10,1\n")
    (d / "pop_header.csv").write_text("CL,V,KA\n")
    (d / "theo.csv").write_text((ROOT / "tests" / "data" / "theoph_nonmem.csv").read_text())
    import numpy as np
    import pandas as pd

    blq = pd.read_csv(d / "theo.csv").assign(BLQ=lambda f: (f["EVID"] == 0).astype(int), DV=0.5)
    blq.to_csv(d / "allblq.csv", index=False)
    theo = pd.read_csv(d / "theo.csv")
    dv = pd.to_numeric(theo["DV"], errors="coerce").clip(lower=0.01)
    logged = theo.assign(DV=np.where(theo["EVID"] == 0, np.log(dv), 0))
    logged.to_csv(d / "logdv.csv", index=False)
    (d / "spec_model.toml").write_text(PRIOR.replace('model = "pk1_oral"', 'model = "pk1_orl"'))
    (d / "spec_typo.toml").write_text(PRIOR.replace("distribution = ", "distributon = ", 1))
    (d / "spec_bad.toml").write_text("[population\nname = 1")
    (d / "spec_key.toml").write_text(PRIOR.replace("[population]", "[population]\ncolour = 1"))
    (d / "mine").mkdir()
    (d / "mine" / "thesis.txt").write_text("x")
    (d / "notes.nc").write_text("my notes")
    # found by a probe: a missing ID became a patient "."; a row number pointed at a comment
    (d / "noid.csv").write_text("ID,TIME,AMT,EVID\n1,0,100,1\n.,12,100,1\n")
    (d / "commented.csv").write_text(
        "# a comment\nID,TIME,AMT,EVID\n# note\n1,0,100,1\n# x\n1,-5,100,1\n"
    )
    (d / "fitc.csv").write_text(
        "# c\nID,TIME,AMT,DV,EVID,CMT\n# note\n1,0,100,.,1,1\n1,1,0,5,0,1\n# x\n1,0.5,0,4,0,1\n"
    )


S = ["simulate", "--model", "pk1_oral", "-o", "out.zarr"]
CASES = [
    # simulate: numbers and choices
    (["simulate", "--n", "0"], "--n must be >= 1"),
    (["simulate", "--n", "-3"], "--n must be >= 1"),
    (["simulate", "--iiv", "-0.1"], "--iiv must be >= 0"),
    (["simulate", "--t-end", "0"], "--t-end must be > 0"),
    (["simulate", "--t-end", "nan"], "--t-end must be > 0"),
    (["simulate", "--step", "-1"], "--step must be > 0"),
    (["simulate", "--method", "magic"], "--method must be auto"),
    (["simulate", "--dtype", "float16"], "--dtype must be float32"),
    (["simulate", "--method", "fast", "--dt", "0"], "--dt must be > 0"),
    (["simulate", "--method", "diffrax", "--dt", "0.1"], "--dt sets the fast path's step"),
    (["simulate", "--method", "closed_form", "--tol", "1e-3"], "--tol sets the fast path's"),
    (["simulate", "--chunk-size", "0"], "--chunk-size must be >= 1"),
    (["simulate", "--addl", "-1"], "--addl must be >= 0"),
    (["simulate", "--addl", "2", "--ii", "0"], "--ii must be > 0"),
    (["simulate", "--amt", "nan"], "--amt must be a finite number >= 0, got nan"),
    (["simulate", "--amt", "-100"], "--amt must be a finite number >= 0"),
    (["simulate", "--rate", "nan"], "--rate must be a finite number >= 0"),
    (["simulate", "--rate", "-5"], "--rate must be a finite number >= 0"),
    (["simulate", "--ii", "inf", "--addl", "1"], "--ii must be a finite number"),
    (["simulate", "--model", "nope"], "unknown model 'nope'"),
    (["simulate", "--model", "pk1_oral", "--cmt", "periph"], "--cmt"),
    (["simulate", "--n", "100000000000"], "GiB"),
    (["simulate", "--resume", "--overwrite"], "--resume and --overwrite"),
    # simulate: conflicting flags
    (["simulate", "--dosing", "badamt.csv", "--amt", "5"], "--dosing and --amt"),
    (["simulate", "--dosing", "badamt.csv", "--ii", "12", "--addl", "1"], "--dosing and --ii"),
    (["simulate", "--population", "pop_extra.csv", "--n", "5"], "--population and --n"),
    # simulate: files
    (["simulate", "--dosing", "missing.csv"], "no such file"),
    (["simulate", "--dosing", "folder"], "no such file folder"),
    (["simulate", "--dosing", "empty.csv"], "is empty"),
    (["simulate", "--dosing", "binary.csv"], "not a text (UTF-8) table"),
    (["simulate", "--dosing", "dup.csv"], "['AMT'] appear more than once"),
    ([*S, "--dosing", "badamt.csv"], "row 1, column AMT"),
    ([*S, "--dosing", "noid.csv"], "--dosing noid.csv: dosing record row 2, column ID: missing"),
    ([*S, "--dosing", "commented.csv"], "commented.csv: dosing record row 4, column TIME"),
    (
        ["fit", "fitc.csv", "--model", "pk1_iv", "-o", "f.nc"],
        "fitc.csv: dataset row 5, column TIME",
    ),
    ([*S, "--dosing", "nottime.csv"], "column TIME"),
    ([*S, "--dosing", "badcmt.csv"], "liver"),
    # NONMEM lets time restart at a reset; "sort records by TIME" would mix the periods
    ([*S, "--dosing", "reset_back.csv"], "row 3, column TIME: time 0 at a reset record (EVID 4)"),
    ([*S, "--dosing", "ss_constant.csv"], "II=24, AMT=240 (RATE x II), RATE=10, SS=1"),
    (["simulate", "--population", "missing.csv"], "no such file or store"),
    (["simulate", "--population", "empty.csv"], "is empty"),
    (["simulate", "--population", "binary.csv"], "not a text (UTF-8) table"),
    (["simulate", "--population", "folder"], "not a readable zarr store"),
    (
        ["simulate", "--model", "pk1_oral", "--population", "pop_other.csv"],
        "['V1'] are not parameters of 'pk1_oral'",
    ),  # fmt: skip
    (
        ["simulate", "--model", "pk1_oral", "--population", "pop_text.csv"],
        "row 1, column CL: 'fast' is not a number",
    ),
    (["simulate", "--model", "pk1_oral", "--population", "pop_header.csv"], "no patients"),
    # outputs
    (["simulate", "-o", ""], "--out: empty path"),  # a path or a store URL: kept as given
    (["simulate", "-o", ".", "--overwrite"], "refusing to write"),
    (["simulate", "-o", "mine", "--overwrite"], "not written by cohort"),
    # not "pass --overwrite": that would be refused too
    (["simulate", "-o", "mine"], "already exists and was not written by cohort; choose another"),
    (["simulate", "-o", "/proc/cohort-test/x.zarr"], "cannot create the folder"),
    # generate
    (["generate", "missing.toml"], "no such spec file"),
    (["generate", "spec_model.toml", "-o", "p.zarr"], "population.model"),
    (["generate", "spec_typo.toml", "-o", "p.zarr"], "['distributon']"),
    (["generate", "spec_bad.toml", "-o", "p.zarr"], "not valid TOML"),
    (["generate", "spec_key.toml", "-o", "p.zarr"], "['colour']"),
    (["generate", "binary.csv", "-o", "p.zarr"], "not valid TOML"),
    (["generate", "spec_typo.toml", "--n", "0"], "--n must be >= 1"),
    (["generate", "spec_typo.toml", "--chunk-size", "0"], "--chunk-size must be >= 1"),
    # info / report
    (["info", "missing.zarr"], "no result store"),
    (["info", "folder"], "not a readable zarr store"),
    (["report", "folder"], "not a readable zarr store"),
    (["report", "missing.zarr"], "no such store"),
    # fit
    (["fit", "missing.csv"], "no such file"),
    (["fit", "theo.csv", "-o", "fit.txt"], "use a .nc (netCDF) or .zarr path"),
    (["fit", "theo.csv", "--method", "mcmc"], "--method must be nuts, svi or ml"),
    (["fit", "theo.csv", "--chains", "0"], "--chains must be >= 1"),
    # options another method would use were ignored without a word
    (["fit", "theo.csv", "--method", "svi", "--chains", "4"], "--chains has no effect with"),
    (["fit", "theo.csv", "--method", "nuts", "--approx", "laplace"], "--approx sets the ML"),
    # the README's pheno command without --method ml ran NUTS and ignored --se (a probe)
    (["fit", "theo.csv", "--se", "sandwich"], "--se has no effect with --method nuts"),
    (["fit", "theo.csv", "--method", "ml", "--fix", "CL=2", "--init", "CL=3"], "both set CL"),
    (["fit", "theo.csv", "--draws", "0"], "--draws must be >= 1"),
    # one line, not one per row (56 repeats of a 300-character message, a probe)
    (["fit", "logdv.csv", "--error", "log-additive"], "these look log-transformed already"),
    # F with V from oral doses only ran F to 0.022, V to 1 L, "accepted" (a new user's session)
    (["fit", "theo.csv", "--method", "ml", "--params", "CL,V,KA,F"], "identify only V/F, CL/F"),
    (["fit", "theo.csv", "--model", "pk9"], "unknown model 'pk9'"),
    (["fit", "theo.csv", "--iiv", "Q"], "--iiv"),
    (["fit", "theo.csv", "--covariate", "CL"], "--covariate 'CL'"),
    (["fit", "theo.csv", "-o", "notes.nc"], "already exists"),
    # every observation BLQ was fitted to OFV 0 and reported converged
    (["fit", "allblq.csv", "-o", "f.nc"], "every observation is below the LLOQ"),
    (["fit", "theo.csv", "-o", "notes.nc", "--overwrite"], "not written by cohort"),
    # trial
    # a zarr folder was written under a file's name, which then failed to open as that file
    (["simulate", "--n", "5", "-o", "results.nc"], "writes a zarr store (a folder), not a .nc"),
    (["trial", "missing.toml"], "no such trial spec"),
    (["trial", str(TRIAL), "--replicates", "0"], "--replicates must be >= 1"),
    (["trial", str(TRIAL), "--n", "0"], "--n must be >= 1"),
    (["trial", str(TRIAL), "--pta-doses", "1,x"], "--pta-doses"),
    (["trial", str(TRIAL), "--report", "r.pdf"], "--report r.pdf: give a .md or .html path"),
    (["trial", str(TRIAL), "--n", "3"], "use n >= 8"),
    (["trial", str(TRIAL), "--resume"], "--resume needs --out"),
    # what --sample-size/--escalation/--pta-doses need: tracebacks after the whole trial ran
    (["trial", str(ESCALATION), "--sample-size"], "add [analysis] sample_sizes"),
    (["trial", str(TRIAL), "--escalation"], "no [escalation] table"),
    (["trial", str(SEQUENTIAL), "--pta-doses", "100,200"], "needs at least one [[pta]] target"),
    (["trial", str(TRIAL), "--pta-doses", "100,-5"], "doses must be finite and > 0"),
    # glucose
    (["glucose", "--n", "0"], "--n must be >= 1"),
    (["glucose", "--days", "0"], "--days must be > 0"),
    (["glucose", "--pump-increment", "-1"], "--pump-increment must be >= 0"),
    (["glucose", "--period", "0"], "--period must be a whole number of minutes from 1 to 15"),
    (["glucose", "--period", "1440"], "CGMs read every 1-15 min), got 1440"),
    (["glucose", "--period", "7"], "that divides a day"),
    (["glucose", "--patients", "elderly"], "--patients must be one of"),
    (
        ["generate", str(ROOT / "priors" / "adult_pk_oral.toml"), "--plot", "fig"],
        "--plot fig: give a .png path",
    ),  # fmt: skip
    # twin replay scales: refused before identifying (or updating) the twins
    (["twin", "cgm", "x.csv", "--bolus-scale", "-1"], "--bolus-scale must be a finite number"),
    (["twin", "update", "t.zarr", "x.csv", "--basal-scale", "nan"], "--basal-scale must be"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_malformed_input_is_one_clear_line(tmp_path, monkeypatch, args, message):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert message in " ".join(res.stderr.split()), res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error:")
    assert res.stdout.strip() == ""  # errors go to stderr, nothing half-printed on stdout
    # nothing of the user's was touched
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "x"
    assert (tmp_path / "notes.nc").read_text() == "my notes"


def test_enough_malformed_cases():
    assert len(CASES) >= 40


def test_version_and_help_keep_brackets():
    from cohort._version import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.stdout
    res = runner.invoke(app, ["simulate", "--help"])
    assert "[default: 1000, or one per ID of --dosing]" in " ".join(res.output.split())
    assert "dosing interval in the model's time unit (h;" in " ".join(res.output.split())


def test_a_save_grid_too_long_for_memory_is_refused_up_front(tmp_path, monkeypatch):
    """A mistyped step (1e-9 h over 2 h: 2e9 save times, 16 GB of times alone) is a clear
    error naming the fix, from the API and the CLI, not an out-of-memory kill."""
    import pytest
    from typer.testing import CliRunner

    import cohort
    from cohort.cli import app

    with pytest.raises(cohort.errors.CohortError, match="larger step"):
        cohort.grid(0.0, 2.0, 1e-9)
    with pytest.raises(cohort.errors.CohortError, match="finite"):
        cohort.grid(0.0, float("inf"), 1.0)
    assert cohort.grid(0.0, 2.0, 0.5).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    # a step that does not divide the span: the grid still ends at stop, never past it
    assert cohort.grid(0.0, 10.0, 3.0).tolist() == [0.0, 3.0, 6.0, 9.0, 10.0]
    assert cohort.grid(0.0, 10.0, 2.8).tolist() == pytest.approx([0.0, 2.8, 5.6, 8.4, 10.0])
    assert len(cohort.grid(0.0, 24.0, 1 / 12)) == 289  # round-off does not add a point
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        app, ["simulate", "--model", "pk1_oral", "--n", "2", "--t-end", "2", "--step", "1e-9"]
    )
    assert res.exit_code == 2 and "larger step" in " ".join(res.output.split())
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_python_api_input_errors_are_cohort_errors_naming_the_argument():
    """A new user's Python session: these raised numpy/JAX internals (a stride error, "'int'
    object is not iterable", "could not convert string to float", an IndexError after the ML
    start fit had run, "cannot convert float NaN to integer") or plain ValueErrors; each is now
    a CohortError naming the argument, raised before any work."""
    import numpy as np

    import cohort
    from cohort import glucose
    from cohort.inference import fit
    from cohort.models.glucose.patients import reference_patients

    reg, t = cohort.Regimen(100.0, "central"), cohort.grid(0, 4, 1)
    theo = ROOT / "tests" / "data" / "theoph_nonmem.csv"
    adults = reference_patients("adult")
    cases = [
        (lambda: cohort.simulate("pk1_iv", {"CL": np.ones((2, 2))}, reg, t), "'CL' has shape"),
        (lambda: cohort.simulate("pk1_iv", {"CL": [2.0]}, 100, t), "dosing: give a Regimen"),
        (lambda: cohort.simulate("pk1_iv", {"CL": [2.0]}, reg, "0:24"), "times: give numbers"),
        (lambda: cohort.simulate("pk1_iv", {"CL": []}, reg, t), "population: no patients"),
        (lambda: cohort.simulate("pk1_iv", None, reg, t, n=0), "population: no patients"),
        (lambda: fit("pk1_oral", theo, "nuts", chains=0), "chains must be an integer >= 1"),
        (lambda: fit("pk1_oral", theo, "svi", steps=-1), "steps must be an integer >= 1"),
        (lambda: fit("pk1_oral", theo, "saem"), "method must be one of"),
        (lambda: fit("pk1_oral", [1, 2], "ml"), "data must be a Dataset"),
        (lambda: glucose.run(adults.iloc[:2], days=float("nan")), "days: a finite number"),
        (lambda: glucose.run(adults.iloc[:0]), "patients: no patients"),
        (lambda: glucose.run(adults.iloc[:2], controller="mpc"), "unknown controller 'mpc'"),
    ]
    for call, message in cases:
        with pytest.raises(cohort.CohortError, match=message):
            call()


def test_python_api_pairs_a_population_with_dosing_records_by_id():
    """`cohort.simulate` matched a population table to NONMEM records by row order, ignoring
    both ID columns (the CLI matched by ID): patient 1 got patient 2's CL. Now by ID, with
    differing or repeated IDs refused; records alone give one patient per ID."""
    import numpy as np
    import pandas as pd

    import cohort

    records = pd.DataFrame({"ID": [1, 2], "TIME": 0.0, "AMT": [100.0, 200.0], "EVID": 1,
                            "CMT": 1})  # fmt: skip
    t = cohort.grid(0, 4, 1)
    run = cohort.simulate("pk1_iv", pd.DataFrame({"ID": [2, 1], "CL": [1.0, 20.0]}), records, t)
    assert run.ID.values.tolist() == [1, 2] and run.CL.values.tolist() == [20.0, 1.0]
    v = cohort.models.get("pk1_iv").defaults()["V"]
    np.testing.assert_allclose(run.conc.values[0], 100.0 / v * np.exp(-20.0 / v * t), rtol=1e-10)
    for ids, message in (([1, 3], "ID 2 has dose records but no parameters; ID 3 has"),
                         ([1, 1], "ID 1 is on more than one row")):  # fmt: skip
        with pytest.raises(cohort.InputError, match=message):
            cohort.simulate("pk1_iv", pd.DataFrame({"ID": ids, "CL": [1.0, 2.0]}), records, t)
    alone = cohort.simulate("pk1_iv", None, records, t)
    assert alone.ID.values.tolist() == [1, 2]
    np.testing.assert_allclose(alone.conc.values[1] / alone.conc.values[0], 2.0, rtol=1e-12)


def test_python_api_warns_about_failed_patients():
    """A patient with F = 1.2 came back all NaN without a word from ``cohort.simulate`` (the
    CLI named F and the patient): the run now warns with the same reasons."""
    import numpy as np

    import cohort

    pop = {"CL": [2.0, 2.0], "V": [20.0, 20.0], "F": [1.2, 1.0]}
    with pytest.warns(cohort.PatientsFailedWarning) as caught:
        r = cohort.simulate("pk1_oral", pop, cohort.Regimen(amt=100, cmt="depot"), [0.0, 1.0])
    assert "1 of 2 patients failed" in str(caught[0].message)
    assert "F outside [0, 1] for 1 patient(s) (e.g. patient 0: 1.2)" in str(caught[0].message)
    assert r.status.values.tolist() == [5, 0] and np.isfinite(r.conc.values[1]).all()


def test_vpc_bins_follow_a_nominal_design():
    """Nominal times 1, 4, 8, 12, 24, 30 h: quantile edges put a bin at 10-12 h with no sample
    in it, and ``cohort fit --report`` raised an IndexError after the fit."""
    import numpy as np

    from cohort.inference.plots import _time_bins

    t = np.repeat([1.0, 4.0, 8.0, 12.0, 24.0, 30.0], 10)
    assert _time_bins(t, 8).tolist() == np.repeat(np.arange(6), 10).tolist()
    spread = np.linspace(0.0, 24.0, 200) ** 2 / 24.0  # many distinct times: quantile bins
    which = _time_bins(spread, 8)
    assert which.max() == 7 and np.all(np.bincount(which) > 0)


SEEDED = [["trial", str(TRIAL)], ["generate", "adult_pk_oral"], ["simulate", "--n", "2"],
          ["glucose", "--n", "2"]]  # fmt: skip


@pytest.mark.parametrize("command", SEEDED)
@pytest.mark.parametrize("seed", ["-1", str(2**64 - 1)])
def test_seeds_outside_what_jax_takes_are_refused_as_options(tmp_path, monkeypatch, command, seed):
    """A seed of 2**64 - 1 was a traceback from inside JAX after the output was created (a
    probe): every command's --seed takes 0 to 2**63 - 1, checked as the option is read."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*command, "--seed", seed, "-o", str(tmp_path / "out.zarr")])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--seed'" in " ".join(res.stderr.split())
    assert not (tmp_path / "out.zarr").exists()
