"""CLI: demo writes a store + figure + table; bad arguments give clear errors, not tracebacks."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cohort
from cohort.cli import app

runner = CliRunner()


def flat(res) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def test_demo_writes_store_plot_and_summary(tmp_path):
    out, png = tmp_path / "demo.zarr", tmp_path / "demo.png"
    res = runner.invoke(app, ["demo", "--n", "200", "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "peak p5" in flat(res) and "ok=200" in flat(res)
    assert "mg/L·h" in flat(res)  # the AUC's units beside the concentration's
    ds = cohort.open_result(out)
    assert ds.sizes["patient"] == 200 and ds.sizes["time"] == 337
    assert bool(ds.chunk_done.all()) and int((ds.status == 0).sum()) == 200
    assert png.stat().st_size > 10_000
    assert np.all(np.isfinite(ds.conc.values)) and float(ds.conc.max()) > 1.0


def test_simulate_info_and_resume(tmp_path):
    out = tmp_path / "x.zarr"
    args = [
        "simulate",
        "--model",
        "pk1_oral",
        "--n",
        "50",
        "--amt",
        "500",
        "--ii",
        "12",
        "--addl",
        "2",
        "--t-end",
        "48",
        "-o",
        str(out),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "already exists" in flat(res)
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "mg/L" in flat(res) and "closed_form" in flat(res)
    # the regimen is part of the provenance (ADDL 2 -> 3 doses, 0-24 h)
    dosing = "same records for every patient: 3 dose(s) into depot, 500 each, at 0-24 h (bolus)"
    assert cohort.open_result(out).attrs["dosing"] == dosing and dosing in flat(res)
    on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert f"({on_disk / 1e3:,.1f} kB on disk)" in flat(res) or "MB on disk" in flat(res)
    lines = [ln for ln in res.output.splitlines() if "│" in ln]
    names = [ln.split("│")[1].strip() for ln in lines]
    assert names.index("conc") < names.index("status") < names.index("CL")  # outputs first


def test_bad_arguments_are_clear(tmp_path):
    cases = [
        (["simulate", "--model", "nope"], "unknown model 'nope'"),
        (["simulate", "--model", "pk1_oral", "--cmt", "periph"], "--cmt"),
        (["simulate", "--method", "magic", "-o", str(tmp_path / "a.zarr")], "method"),
        (["simulate", "--n", "0"], "--n must be >= 1"),
        (["simulate", "--dosing", str(tmp_path / "missing.csv")], "no such file"),
        (["info", str(tmp_path / "none.zarr")], "no result store"),
        (["models", "pk7"], "unknown model"),
    ]
    for args, text in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert text in flat(res), (args, res.output)
        assert "Traceback" not in res.output


def test_models_listing():
    res = runner.invoke(app, ["models", "pk2_oral"])
    assert res.exit_code == 0 and "L/h" in res.output and "depot" in res.output


def test_simulate_refuses_a_store_without_patients_as_population(tmp_path):
    """A twin store (or any cohort store without per-patient parameters) given as
    --population: a clear error naming the store and its kind, not a traceback."""
    import zarr

    store = tmp_path / "twins.zarr"
    zarr.open_group(str(store), mode="w").attrs.update(written_by="cohort", kind="cohort-twins")
    res = runner.invoke(app, ["simulate", "--population", str(store), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert "holds no per-patient parameters (it is a cohort-twins store)" in flat(res)
    assert "Traceback" not in res.output and not (tmp_path / "x").exists()


def test_generate_then_simulate_population_store(tmp_path):
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "priors" / "neonate_phenobarbital.toml"
    pop, png = tmp_path / "pop.zarr", tmp_path / "pop.png"
    res = runner.invoke(
        app, ["generate", str(spec), "--n", "500", "-o", str(pop), "--plot", str(png)]
    )
    assert res.exit_code == 0, res.output
    assert "acceptance rate" in flat(res) and png.stat().st_size > 5_000
    out = tmp_path / "sim.zarr"
    res = runner.invoke(
        app,
        [
            "simulate",
            "--model",
            "pk1_iv",
            "--population",
            str(pop),
            "--amt",
            "20",
            "--t-end",
            "24",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    ds, p = cohort.open_result(out), cohort.population.generate(spec, 500, seed=1)
    np.testing.assert_array_equal(ds.CL.values, p.CL.values)
    # 1-cpt IV bolus: C(0) = 20 / V for every virtual neonate.
    np.testing.assert_allclose(ds.conc.values[:, 0], 20 / p.V.values, rtol=1e-12)
    res = runner.invoke(app, ["generate", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "no such spec file" in flat(res)


def test_demo_with_other_settings_into_its_store_is_a_clear_error(tmp_path):
    out = tmp_path / "demo.zarr"
    args = ["demo", "--out", str(out), "--plot", str(tmp_path / "d.png")]
    assert runner.invoke(app, [*args, "--n", "50"]).exit_code == 0
    figure = (tmp_path / "d.png").read_bytes()
    res = runner.invoke(app, [*args, "--n", "60"])
    assert res.exit_code == 2 and "holds a demo run with other settings" in flat(res)
    assert cohort.open_result(out).sizes["patient"] == 50  # untouched
    assert (tmp_path / "d.png").read_bytes() == figure  # the refused run kept its figure too


def test_simulate_summary_reads_the_store_chunk_by_chunk(tmp_path):
    """The printed summary is computed a few stored chunks at a time (a 10⁷-patient output
    does not fit in memory) and equals the whole-array computation."""
    from cohort.cli._summary import per_patient

    out = tmp_path / "s.zarr"
    args = ["simulate", "--model", "pk1_oral", "--n", "50", "--chunk-size", "8", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = cohort.open_result(out)
    assert ds.conc.encoding["chunks"][0] == 8
    v, t = ds.conc.values, ds.time.values
    assert f"{np.quantile(v.max(axis=1), 0.5):.4g}" in flat(res)
    ok = np.asarray(ds.status.values) == 0
    ok[[3, 8, 9, 10, 11, 12, 13, 14, 15]] = False  # a failed patient; a chunk with none kept
    for read_bytes in (1, 3 * 8 * t.size * 8, 1 << 26):  # one chunk, three chunks, all
        cmax, auc, last = per_patient(ds, "conc", ok, read_bytes=read_bytes)
        np.testing.assert_array_equal(cmax, v[ok].max(axis=1))
        np.testing.assert_array_equal(auc, np.trapezoid(v[ok], t, axis=1))
        np.testing.assert_array_equal(last, v[ok, -1])


def test_simulate_summary_holds_one_read_at_a_time(tmp_path):
    """Reading block by block must not keep the blocks (e.g. through a view of the last
    column): the summary's peak allocation stays far below one output's size."""
    import tracemalloc

    from cohort.cli._summary import per_patient

    out = tmp_path / "m.zarr"
    args = ["simulate", "--model", "pk1_oral", "--n", "2000", "--chunk-size", "100"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = cohort.open_result(out)
    ok = np.asarray(ds.status.values) == 0
    whole = ds.conc.size * ds.conc.dtype.itemsize  # 1.6 MB
    tracemalloc.start()
    try:
        per_patient(ds, "conc", ok, read_bytes=1)  # one 100-patient chunk (78 kB) a read
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.4 * whole, (peak, whole)


def test_band_figure_reads_only_the_first_patients(tmp_path):
    """The demo's band figure uses the first ``max_patients`` patients with status 0 (an
    i.i.d. sample), so a 10⁷-patient figure does not load the whole store."""
    import xarray as xr

    from cohort.plots import band, band_quantiles

    rng = np.random.default_rng(0)
    v = rng.lognormal(size=(50, 7))
    status = np.zeros(50, int)
    status[[1, 4]] = 3
    ds = xr.Dataset(
        {"conc": (("patient", "time"), v), "status": ("patient", status)},
        coords={"time": np.arange(7.0)},
    )
    q = (0.05, 0.5, 0.95)
    got, used = band_quantiles(ds, "conc", q, max_patients=10)
    keep = np.flatnonzero(status[:10] == 0)
    assert used == 8
    np.testing.assert_array_equal(got, np.nanquantile(v[keep], q, axis=0))
    got_all, used_all = band_quantiles(ds, "conc", q)
    assert used_all == 48
    np.testing.assert_array_equal(got_all, np.nanquantile(v[status == 0], q, axis=0))
    assert band(ds, ["conc"], tmp_path / "b.png", max_patients=10).stat().st_size > 5_000


def test_population_csv_is_paired_with_the_dosing_by_id(tmp_path):
    """A population CSV with an ID column is matched to the dosing file's patients by ID (not
    by row order); IDs on one side only are an error naming them."""
    pop = tmp_path / "pop.csv"
    pop.write_text("ID,CL,V,KA\n2,30,31,1\n1,2.5,30,1\n")  # listed in the other order
    dose = tmp_path / "dose.csv"
    dose.write_text("ID,TIME,AMT,EVID,CMT\n1,0,100,1,1\n2,0,1000,1,1\n")
    out = tmp_path / "x.zarr"
    args = ["simulate", "--model", "pk1_oral", "--population", str(pop), "--dosing", str(dose)]
    res = runner.invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    ds = cohort.open_result(out)
    np.testing.assert_array_equal(ds.CL.values, [2.5, 30.0])  # dosing order: ID 1, then 2
    np.testing.assert_array_equal(ds.ID.values, [1, 2])  # the file's IDs kept (coordinate)
    ref = cohort.simulate(
        "pk1_oral",
        {"CL": np.array([2.5, 30.0]), "V": np.array([30.0, 31.0]), "KA": np.ones(2)},
        [[cohort.Regimen(100.0, "depot")], [cohort.Regimen(1000.0, "depot")]],
        ds.time.values,
    )
    np.testing.assert_allclose(ds.conc.values, ref.conc.values, rtol=1e-12)
    pop.write_text("ID,CL,V,KA\n5,30,31,1\n1,2.5,30,1\n")
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "y.zarr")])
    assert res.exit_code == 2
    assert "ID 2 has dose records but no parameters; ID 5 has parameters but no dose" in flat(res)
    pop.write_text("ID,CL,V,KA\n2,30,31,1\n2,2.5,30,1\n")
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "z.zarr")])
    assert res.exit_code == 2 and "ID 2 is on more than one row" in flat(res)
    # without --dosing the population's IDs were dropped (results and warnings said patient
    # 0, 1, ...; a new user's session): they are the results' ID coordinate, and unique
    pop.write_text("ID,CL,V,KA\n101,-2.5,30,1.2\n205,3,35,0.8\n")
    alone = ["simulate", "--model", "pk1_oral", "--population", str(pop), "--t-end", "4"]
    res = runner.invoke(app, [*alone, "-o", str(tmp_path / "a.zarr")])
    assert res.exit_code == 0, res.output
    assert "(e.g. ID 101: -2.5)" in flat(res)
    assert cohort.open_result(tmp_path / "a.zarr").ID.values.tolist() == [101, 205]
    pop.write_text("ID,CL,V,KA\n101,2.5,30,1.2\n101,3,35,0.8\n")
    res = runner.invoke(app, [*alone, "-o", str(tmp_path / "b.zarr")])
    assert res.exit_code == 2 and "ID 101 is on more than one row" in flat(res)
    # no ID column beside a dosing file with IDs: paired by order, and said so
    pop.write_text("CL,V,KA\n2.5,30,1\n30,31,1\n")
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "c.zarr")])
    assert res.exit_code == 0 and "has no ID column: its rows are paired" in flat(res)
    # the Python API keeps a DataFrame population's IDs the same way
    frame = pd.DataFrame({"ID": ["a", "b"], "CL": [2.5, 3.0]})
    mem = cohort.simulate("pk1_oral", frame, cohort.Regimen(100.0, "depot"), [0.0, 1.0])
    assert mem.ID.values.tolist() == ["a", "b"]


def test_population_covariates_and_provenance_are_kept(tmp_path):
    """A population's covariates (WT) and, for a generated one, its provenance were dropped
    from the results: they now ride along, paired by ID like the parameters; a parameter
    written in another case is that parameter; text columns are said to be dropped."""
    pop = tmp_path / "pop.csv"
    pop.write_text("ID,cl,V,KA,WT,SEX,BW\n1,2.5,30,1,70,M,70\n2,30,31,1,82,F,\n")
    dose = tmp_path / "dose.csv"
    dose.write_text("ID,TIME,AMT,EVID,CMT\n2,0,100,1,1\n1,0,100,1,1\n")
    out = tmp_path / "x.zarr"
    args = ["simulate", "--model", "pk1_oral", "--population", str(pop), "--dosing", str(dose)]
    res = runner.invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    # BW (a glucose model's parameter) is a covariate here; an empty cell is NaN
    assert "WT, BW of --population are not parameters of pk1_oral" in flat(res)
    assert "column(s) SEX hold text: not kept" in flat(res)
    ds = cohort.open_result(out)
    assert ds.ID.values.tolist() == [2, 1]
    np.testing.assert_array_equal(ds.CL.values, [30.0, 2.5])  # "cl" read as CL, by ID
    np.testing.assert_array_equal(ds.WT.values, [82.0, 70.0])
    np.testing.assert_array_equal(ds.BW.values, [np.nan, 70.0])
    assert "SEX" not in ds
    # a generated population: its covariates with units, and where it came from
    gen = tmp_path / "gen.zarr"
    spec = Path(__file__).resolve().parents[1] / "priors" / "adult_pk_oral.toml"
    assert runner.invoke(app, ["generate", str(spec), "--n", "30", "-o", str(gen)]).exit_code == 0
    res = runner.invoke(app, ["simulate", "--population", str(gen), "-o", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    sim = cohort.open_result(tmp_path / "g")
    popn = cohort.population.open_population(gen)
    np.testing.assert_array_equal(sim.WT.values, popn.WT.values)
    assert sim.WT.attrs["units"] == popn.WT.attrs["units"]
    assert sim.attrs["population"] == "adult_pk_oral"
    assert sim.attrs["population_spec_hash"] == popn.attrs["spec_hash"]
    assert sim.attrs["population_seed"] == popn.attrs["seed"]
    # `cohort info` names the population's seed (it showed only the unused simulate seed)
    shown = runner.invoke(app, ["info", str(tmp_path / "g")]).output
    assert f"population_seed: {popn.attrs['seed']}" in shown
    assert "acceptance_rate: 100.0%" in runner.invoke(app, ["info", str(gen)]).output
    # in memory, the same
    mem = cohort.simulate("pk1_oral", popn, cohort.Regimen(100.0, "depot"), [0.0, 1.0])
    np.testing.assert_array_equal(mem.WT.values, popn.WT.values)


def test_generate_warns_of_parameters_outside_the_models_range(tmp_path):
    """A log-normal spread on a fraction put F > 1 for half the patients without a word;
    `cohort simulate` then marked them invalid."""
    spec = Path(__file__).resolve().parents[1] / "priors" / "adult_pk_oral.toml"
    text = spec.read_text().replace('parameters = ["KA", "CL"]', 'parameters = ["KA", "CL", "F"]')
    text = text.replace("sd = [0.6436, 0.1669]", "sd = [0.6436, 0.1669, 0.5]")
    wide = tmp_path / "wide_f.toml"
    wide.write_text(text)
    res = runner.invoke(app, ["generate", str(wide), "--n", "400", "-o", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    said = re.search(r"F is outside pk1_oral's range \[0, 1\] for ([\d.]+)% of the patients",
                     flat(res))  # fmt: skip
    f = cohort.population.open_population(tmp_path / "p").F.values
    assert said and float(said.group(1)) == pytest.approx(100 * np.mean(f > 1), abs=0.05)
    assert 40 < float(said.group(1)) < 60  # half of a log-normal around 1


def test_simulate_says_why_patients_failed(tmp_path):
    """Failed patients: each failure kind with its meaning, and the parameters out of bounds
    by name, bound and first offender (it only said "2 of 2 patients failed")."""
    pop = tmp_path / "pop.csv"
    pop.write_text("CL,V,KA,F\n2.5,30,1,1.5\n-2.5,30,1,1\n")
    res = runner.invoke(
        app,
        ["simulate", "--model", "pk1_oral", "--population", str(pop), "-o", str(tmp_path / "x")],
    )
    assert res.exit_code == 1, res.output  # every patient failed: the store is kept, exit 1
    text = flat(res)
    assert "2 of 2 patients failed" in text and "invalid_parameters (2)" in text
    assert "CL outside [0.0001, 1000] L/h for 1 patient(s) (e.g. patient 1: -2.5)" in text
    assert "F outside [0, 1] for 1 patient(s) (e.g. patient 0: 1.5)" in text


def test_messages_are_printed_as_written():
    """rich turned ':END:' in `--target` help ("auc:OUTPUT:START:END:LO:HI") into an emoji."""
    from cohort.cli._common import console, err_console

    for c in (console, err_console):
        with c.capture() as cap:
            c.print("use auc:OUTPUT:START:END:LO:HI or :smile:")
        assert cap.get().strip() == "use auc:OUTPUT:START:END:LO:HI or :smile:"


def _simulated_ids(tmp_path, name: str, records: str) -> list:
    """The ID coordinate of `cohort simulate --dosing` on ``records`` (a CSV text)."""
    dosing = tmp_path / f"{name}.csv"
    dosing.write_text(records)
    out = tmp_path / f"{name}.zarr"
    args = ["simulate", "--model", "pk1_oral", "--dosing", str(dosing), "-o", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return cohort.open_result(out).ID.values.tolist()


def test_engine_refusals_name_the_records_id(tmp_path):
    """An engine's refusal named the patient by its position in the batch ("patient index
    1"), which a user cannot find in the file: the record's ID is named too (a probe)."""
    dose = tmp_path / "twoss.csv"
    dose.write_text(
        "ID,TIME,AMT,EVID,CMT,SS,II\n101,0,100,1,1,0,0\n205,0,100,1,1,1,12\n205,24,100,1,1,1,12\n"
    )
    args = ["simulate", "--model", "pk1_mm_oral", "--dosing", str(dose), "--t-end", "48"]
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "x.zarr")])
    assert res.exit_code != 0
    assert "ID 205 (patient index 1) has 2 SS=1 records" in " ".join(res.output.split())


def test_simulate_takes_one_patient_per_dosing_id_by_default(tmp_path):
    """--dosing with 3 IDs and no --n: 3 virtual patients (it asked for the hidden default
    1000 to match); an explicit --n that disagrees is still an error."""
    dose = tmp_path / "dose.csv"
    dose.write_text("ID,TIME,AMT,EVID,CMT\n1,0,100,1,1\n2,0,200,1,1\n7,0,300,1,1\n")
    out = tmp_path / "x.zarr"
    res = runner.invoke(
        app, ["simulate", "--model", "pk1_oral", "--dosing", str(dose), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    ds = cohort.open_result(out)
    assert ds.sizes["patient"] == 3
    # the file's IDs are kept, so results join back to its patients (text IDs as text)
    assert "ID" in ds.coords and ds.ID.values.tolist() == [1, 2, 7]
    info = runner.invoke(app, ["info", str(out)])
    assert "│ ID " in info.output and "(coordinate)" in flat(info)
    text_ids = "ID,TIME,AMT,EVID,CMT\nP-01,0,100,1,1\nP-01,12,100,1,1\nQ,0,200,1,1\n"
    assert _simulated_ids(tmp_path, "text_ids", text_ids) == ["P-01", "Q"]
    padded = "ID,TIME,AMT,EVID,CMT\n007,0,100,1,1\n010,0,200,1,1\n"  # names, kept as written
    assert _simulated_ids(tmp_path, "padded", padded) == ["007", "010"]
    frame = pd.read_csv(tmp_path / "text_ids.csv")
    mem = cohort.simulate("pk1_oral", None, frame, [0.0, 24.0], n=2)  # in memory: the same
    assert mem.ID.values.tolist() == ["P-01", "Q"]
    per_patient = [
        [cohort.Regimen(100.0, "depot", ii=12, addl=1)],
        [cohort.Regimen(200.0, "depot")],
    ]
    ref = cohort.simulate("pk1_oral", None, per_patient, [0.0, 24.0], n=2)
    np.testing.assert_array_equal(mem.conc.values, ref.conc.values)
    res = runner.invoke(
        app,
        [
            "simulate",
            "--model",
            "pk1_oral",
            "--dosing",
            str(dose),
            "--n",
            "5",
            "-o",
            str(tmp_path / "y"),
        ],
    )
    assert res.exit_code == 2 and "--n 5, but --dosing describes 3 patients" in flat(res)
    assert "note: each of" not in flat(res)  # no note about 5 patients of a 3-ID file


def test_tol_or_dt_alone_selects_the_fast_path(tmp_path):
    """--tol (or --dt) without --method: the fast path is meant (it was refused)."""
    out = tmp_path / "x.zarr"
    res = runner.invoke(
        app, ["simulate", "--model", "pk1_oral", "--n", "4", "--dt", "0.05", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert cohort.open_result(out).attrs["method"] == "fast"


def test_cli_modelled_infusion_duration_from_a_population_column(tmp_path):
    """RATE=-2 needs D_<compartment>: the population CSV refused that column, so RATE=-2 could
    not be run from the CLI (a new user's session); now it gives the analytic infusion."""
    pop = tmp_path / "pop.csv"
    pop.write_text("ID,CL,V,D_central\n1,5,50,2\n2,4,40,4\n")
    dosing = tmp_path / "dose.csv"
    dosing.write_text("ID,TIME,AMT,EVID,CMT,RATE\n1,0,100,1,1,-2\n2,0,100,1,1,-2\n")
    out = tmp_path / "r2.zarr"
    args = ["simulate", "--model", "pk1_iv", "--population", str(pop), "--dosing", str(dosing)]
    res = CliRunner().invoke(app, [*args, "--t-end", "6", "--step", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    conc = cohort.open_result(out).conc.values
    t = np.arange(7.0)
    for i, (cl, v, d) in enumerate([(5.0, 50.0, 2.0), (4.0, 40.0, 4.0)]):
        k, rate = cl / v, 100.0 / d
        during = rate / cl * (1 - np.exp(-k * t))
        after = rate / cl * (1 - np.exp(-k * d)) * np.exp(-k * (t - d))
        ref = np.where(t <= d, during, after)
        np.testing.assert_allclose(conc[i], ref, rtol=1e-10, atol=1e-12)
    # a duration <= 0 marks its patient (the dose vanished or went negative, status ok), and
    # the warning names the patient by its ID in the files
    pop.write_text("ID,CL,V,D_central\n7,5,50,2\n9,4,40,-1\n")
    dosing.write_text("ID,TIME,AMT,EVID,CMT,RATE\n7,0,100,1,1,-2\n9,0,100,1,1,-2\n")
    res = CliRunner().invoke(app, [*args, "--t-end", "6", "-o", str(tmp_path / "bad.zarr")])
    assert res.exit_code == 0, res.output
    assert "D_central (modelled infusion duration" in res.output
    assert "(e.g. ID 9: -1)" in " ".join(res.output.split())
    ds = cohort.open_result(tmp_path / "bad.zarr")
    np.testing.assert_array_equal(ds.status.values, [0, 5])


def test_cli_cmt_by_number_as_in_dosing_files(tmp_path):
    """--cmt 1 was refused while CMT=1 worked in files (a new user's session)."""
    by_name, by_number = tmp_path / "a.zarr", tmp_path / "b.zarr"
    base = ["simulate", "--model", "pk1_oral", "--n", "3", "--t-end", "4"]
    assert CliRunner().invoke(app, [*base, "--cmt", "central", "-o", str(by_name)]).exit_code == 0
    assert CliRunner().invoke(app, [*base, "--cmt", "2", "-o", str(by_number)]).exit_code == 0
    a, b = cohort.open_result(by_name), cohort.open_result(by_number)
    np.testing.assert_array_equal(a.conc.values, b.conc.values)
    assert a.conc.values[0, 0] > 0  # into central: a concentration at once


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, monkeypatch):
    """SIGINT ended a run with exit 130 and no word (two new users' sessions)."""
    import cohort.engine.simulate as engine_simulate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_simulate, "simulate", interrupted)
    res = CliRunner().invoke(app, ["simulate", "--n", "3", "-o", str(tmp_path / "x.zarr")])
    assert res.exit_code == 130
    assert "interrupted:" in res.output and "--resume" in res.output


def test_ctrl_c_inside_a_finaliser_still_interrupts():
    """A Ctrl-C landing in a gc callback or finaliser (JAX runs both during a long compile) was
    printed as "Exception ignored" and the command ran on to the end (a probe's session). In a
    fresh interpreter: the interrupt goes to its main thread (pytest-xdist runs tests in
    another), and the hook is process-wide."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import signal, sys, time
        from cohort.cli import keep_interrupts

        # as in a terminal: a test runner started in the background inherits SIGINT ignored,
        # and then no Ctrl-C (nor interrupt_main) reaches Python at all
        signal.signal(signal.SIGINT, signal.default_int_handler)

        errors = []
        sys.unraisablehook = lambda args: errors.append(args.exc_type.__name__)
        keep_interrupts()

        class Failing:
            def __del__(self):
                raise ValueError("not an interrupt")

        obj = Failing()
        del obj
        print("other:", errors)  # other unraisable errors go to the previous hook

        class Finalised:
            def __del__(self):
                raise KeyboardInterrupt

        try:
            obj = Finalised()
            del obj  # unraisable here; raised again in the main thread just after
            for _ in range(200):
                time.sleep(0.01)
            print("ran on")
        except KeyboardInterrupt:
            print("interrupted")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["other: ['ValueError']", "interrupted"], proc.stdout


def test_simulate_says_what_the_dosing_file_holds_beyond_the_run(tmp_path):
    """A dose at 48 h with the default --t-end 24 gave an all-zero result and exit 0 without a
    word; an ID with observation rows only was simulated as zeros (a new user's session)."""
    dose = tmp_path / "late.csv"
    dose.write_text("ID,TIME,AMT,EVID,CMT\n1,0,100,1,1\n1,48,100,1,1\n2,0,0,0,2\n2,72,0,0,2\n")
    args = ["simulate", "--model", "pk1_oral", "--dosing", str(dose), "-o", str(tmp_path / "x")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert "2 record(s) of the dosing file are after --t-end 24 (the last at 72)" in said
    assert "give --t-end 72 or more" in said
    assert "1 patient(s) of the dosing file have no dose record (ID 2)" in said
    res = runner.invoke(app, [*args[:-2], "-o", str(tmp_path / "y"), "--t-end", "72"])
    assert res.exit_code == 0 and "are after --t-end" not in res.stderr


def test_simulate_exits_1_when_every_patient_failed(tmp_path):
    """A fast-path step far too large for the model: every patient step_unstable, the store
    kept, and the exit status says so (it was 0)."""
    out = tmp_path / "x.zarr"
    args = ["simulate", "--model", "pk1_oral", "--n", "5", "--method", "fast", "--dt", "20"]
    res = runner.invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == 1, res.output
    assert "5 of 5 patients failed" in flat(res)
    assert (np.asarray(cohort.open_result(out).status.values) != 0).all()


def test_os_errors_name_the_file_and_say_what_a_full_disk_keeps():
    """A full disk printed 'error: : No space left on device' (a probe's 3 MB tmpfs)."""
    import errno
    import os

    from cohort.cli._common import _os_error

    full = _os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert full.startswith("No space left on device (the disk or quota is full)")
    assert "--resume" in full
    denied = _os_error(PermissionError(errno.EACCES, "Permission denied", "runs/x.zarr"))
    assert denied == "runs/x.zarr: Permission denied"


def test_adaptive_tolerances_from_the_command_line(tmp_path):
    """tmdd_qss in float32 failed every patient at the default rtol 1e-8 (below float32's
    precision: Kvaerno5's Newton steps fail), and the message's fix (loosen rtol/atol) had no
    flag (a probe). --rtol/--atol set them; they belong to the adaptive engine."""
    out = tmp_path / "t.zarr"
    args = ["simulate", "--model", "tmdd_qss", "--n", "2", "--amt", "30", "--ii", "24",
            "--addl", "2", "--t-end", "72", "--step", "24", "--dtype", "float32"]  # fmt: skip
    res = runner.invoke(app, [*args, "--rtol", "1e-5", "--atol", "1e-8", "-o", str(out)])
    assert res.exit_code == 0, res.output
    ds = cohort.store.open_result(out)
    assert (ds.status.values == 0).all() and np.isfinite(ds.conc.values).all()
    assert "'rtol': 1e-05" in str(ds.attrs["solver_settings"])
    res = runner.invoke(app, [*args, "--rtol", "1e-5", "--method", "fast", "-o", str(out) + "2"])
    assert res.exit_code == 2 and "--rtol/--atol set the adaptive engine" in res.output


def test_a_categorical_covariates_coding_goes_with_its_codes(tmp_path):
    """Which of 0/1 was M was lost from a simulation's SEX (a probe); its source too."""
    spec = tmp_path / "sex.toml"
    spec.write_text(
        '[population]\nname = "s"\nmodel = "pk1_oral"\n[covariates.SEX]\n'
        'distribution = "categorical"\ncategories = ["M", "F"]\nprobabilities = [0.5, 0.5]\n'
        'units = "1"\ncitation = "a trial\'s table 1"\n'
        '[parameters.CL]\ntypical = 3.0\nunits = "L/h"\ncitation = "t"\n'
        'effects = [{ type = "categorical", covariate = "SEX", factors = { F = 0.8 } }]\n'
    )
    pop = cohort.population.generate(spec, 8, seed=1)
    sim = cohort.simulate("pk1_oral", pop, cohort.Regimen(100.0, "depot"), [0.0, 1.0])
    assert sim.SEX.attrs["categories"] == ["M", "F"]
    assert sim.SEX.attrs["citation"] == "a trial's table 1"
    np.testing.assert_array_equal(sim.SEX.values, pop.SEX.values)


def test_time_units_other_than_the_models_are_refused():
    """``time_units="min"`` relabelled a run solved in hours (a probe)."""
    with pytest.raises(cohort.engine.inputs.InputError, match="pk1_iv runs in h"):
        cohort.simulate("pk1_iv", {"CL": [2.0]}, cohort.Regimen(100.0, "central"), [0.0, 1.0],
                        time_units="min")  # fmt: skip


def test_a_dosing_header_with_spaces_is_read_as_written(tmp_path, monkeypatch):
    """ "RATE " (a space before the comma) was no RATE column: the infusion ran as a bolus
    (C(0) = 100/V instead of 0), and "ID " made one patient of each row (a probe). AMT on
    an EVID 3 row is said, not dropped silently."""
    import warnings

    import numpy as np

    from cohort.store import open_result

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("ID ,TIME,AMT,RATE ,EVID\n1,0,100,10,1\n2,0,100,10,1\n")
    res = runner.invoke(app, ["simulate", "--dosing", "d.csv", "--model", "pk1_iv", "--iiv",
                              "0", "--t-end", "10", "--step", "5", "-o", "d.zarr"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_result(tmp_path / "d.zarr")
    assert ds.sizes["patient"] == 2
    cl, v = ds["CL"].values[0], ds["V"].values[0]
    k = cl / v  # a 10-h infusion of 10/h from 0: C(t) = 10/CL (1 - exp(-k t))
    np.testing.assert_allclose(ds.conc.values[0], 10 / cl * (1 - np.exp(-k * ds.time.values)),
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    from cohort.dosing import records_table

    frame = __import__("pandas").DataFrame(
        {"ID": [1, 1], "TIME": [0.0, 5.0], "AMT": [100.0, 100.0], "EVID": [1, 3]}
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        records_table(frame, ("central",), ("central",))
    assert any("AMT 100 on an EVID 3 record" in str(w.message) for w in seen)


def test_dosing_rows_are_numbered_as_the_file_numbers_them(tmp_path):
    """With `#` comment lines the dosing reader numbered records by position: its warnings
    pointed at the line above the record (errors were patched afterwards, in the text)."""
    dose = tmp_path / "c.csv"
    dose.write_text("ID,TIME,AMT,EVID,CMT\n# a comment\n# another\n1,0,100,1,1\n1,1,5,0,1\n")
    args = ["simulate", "--model", "pk1_iv", "--dosing", str(dose), "-o", str(tmp_path / "x")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "dosing records: row(s) 4: AMT 5 on an EVID 0 record" in " ".join(res.stderr.split())
    dose.write_text(dose.read_text() + "# x\n1,2,abc,1,1\n1,3,100,1,1\n1,3,100,1,1\n")
    res = runner.invoke(app, [*args[:-2], "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "dosing record row 6, column AMT: value 'abc'" in flat(res)
    dose.write_text(dose.read_text().replace("abc", "100"))
    res = runner.invoke(app, [*args[:-2], "-o", str(tmp_path / "z")])
    assert res.exit_code == 2
    assert "dosing record row 8, column AMT: the dose repeats row 7 in every column" in flat(res)


def test_ids_1_and_01_are_one_patient_as_nonmem_reads_them(tmp_path):
    """The CLI counted "1" and "01" as one patient (numbers), the event table as two (text):
    the run was refused as "dosing describes 2 patients but the population has 1"."""
    records = "ID,TIME,AMT,EVID,CMT\n1,0,100,1,1\n01,12,100,1,1\n2,0,100,1,1\n"
    assert _simulated_ids(tmp_path, "one", records) == [1, 2]
    frame = pd.read_csv(tmp_path / "one.csv", dtype=str)  # "01" kept as written
    assert cohort.simulate("pk1_oral", None, frame, [0.0, 24.0]).ID.values.tolist() == [1, 2]
    dose = tmp_path / "apart.csv"  # not contiguous: refused, both spellings named
    dose.write_text("ID,TIME,AMT,EVID,CMT\n1,0,100,1,1\n2,0,100,1,1\n01,12,100,1,1\n")
    res = runner.invoke(app, ["simulate", "--dosing", str(dose), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "dosing record row 3, column ID: IDs 1 (row 1) and 01 are one subject" in flat(res)
    assert "write each subject's ID one way" in flat(res)


def test_zero_padded_ids_pair_a_population_with_its_dosing_records():
    """A population read with ID 001 as the number 1 and dosing records keeping "001" as text
    were refused: "ID 001 has dose records but no parameters; ID 1 has parameters ..."."""
    import io

    pop = pd.read_csv(io.StringIO("ID,CL,V,KA\n001,2,20,1\n002,3,30,1\n"))
    rows = "ID,TIME,AMT,EVID,CMT\n002,0,100,1,1\n001,0,50,1,1\n"
    dose = pd.read_csv(io.StringIO(rows), dtype=str)
    ds = cohort.simulate("pk1_oral", pop, dose, [0.0, 2.0])
    assert ds.ID.values.tolist() == ["002", "001"]
    # patient 002 (CL 3, V 30) took 100, patient 001 (CL 2, V 20) 50: paired by ID, not row
    conc = ds["conc"].values[:, 1]
    alone = cohort.simulate("pk1_oral", pop.iloc[[1]], dose.iloc[[0]], [0.0, 2.0])
    np.testing.assert_allclose(conc[0], alone["conc"].values[0, 1], rtol=1e-12)
    assert conc[0] > conc[1] > 0


def test_ids_beyond_float_precision_stay_apart_and_one_subject_is_one_row():
    """IDs read as numbers: two 17-digit IDs were one float (one patient got both doses),
    and a population listing "1" and "01" lost a row without a word (a review)."""
    import io

    rows = "ID,TIME,AMT,EVID,CMT\n90071992547409921,0,100,1,1\n90071992547409922,0,50,1,1\n"
    for dose in (pd.read_csv(io.StringIO(rows), dtype=str), pd.read_csv(io.StringIO(rows))):
        ds = cohort.simulate("pk1_iv", None, dose, [0.0, 1.0])
        assert ds.ID.values.tolist() == ["90071992547409921", "90071992547409922"]
        np.testing.assert_allclose(ds["conc"].values[0] / ds["conc"].values[1], 2.0)
    pop = pd.DataFrame({"ID": ["1", "01"], "CL": [1.0, 2.0], "V": [10.0, 10.0], "KA": [1.0, 1.0]})
    dose = pd.DataFrame({"ID": ["1"], "TIME": [0.0], "AMT": [100.0], "EVID": [1], "CMT": [1]})
    with pytest.raises(ValueError, match="IDs 1 and 01 are one patient"):
        cohort.simulate("pk1_oral", pop, dose, [0.0, 1.0])


def test_blank_lines_do_not_shift_row_numbers(tmp_path):
    """pandas skips blank lines: with one before a bad record, the dosing, fit and population
    readers named the wrong row (row 2 for the file's row 4; a probe)."""
    dose = tmp_path / "d.csv"
    dose.write_text("ID,TIME,AMT,EVID,CMT\n1,0,100,1,1\n\n# comment\n1,12,abc,1,1\n")
    res = runner.invoke(app, ["simulate", "--model", "pk1_oral", "--dosing", str(dose),
                              "-o", str(tmp_path / "a")])  # fmt: skip
    assert res.exit_code == 2 and "row 4, column AMT" in flat(res)
    pop = tmp_path / "pop.csv"
    pop.write_text("ID,CL,V\n# c\n1,2.5,30\n\n2,abc,20\n")
    good = tmp_path / "g.csv"
    good.write_text("ID,TIME,AMT,EVID,CMT\n1,0,100,1,1\n2,0,100,1,1\n")
    res = runner.invoke(app, ["simulate", "--model", "pk1_iv", "--population", str(pop),
                              "--dosing", str(good), "-o", str(tmp_path / "b")])  # fmt: skip
    assert res.exit_code == 2 and "row 4, column CL" in flat(res)
    fit = tmp_path / "fit.csv"
    fit.write_text("ID,TIME,AMT,DV\n1,0,100,.\n\n1,1,.,abc\n")
    with pytest.raises(ValueError, match="row 3, column DV"):
        cohort.data.read_nonmem(fit)
