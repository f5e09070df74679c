"""A user's files are sacred: overwrite only what cohort wrote, one writer per store, complete
or marked stores, resume after kill -9 (issue 12)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import cohort
from cohort.cli import app

ROOT = Path(__file__).resolve().parents[1]
PRIOR = ROOT / "priors" / "adult_pk_oral.toml"
runner = CliRunner()


def flat(res) -> str:
    return " ".join(res.output.split())


def sim_args(out, *extra):
    return ["simulate", "--model", "pk1_oral", "--n", "10", "-o", str(out), *extra]


def test_overwrite_refuses_a_directory_cohort_did_not_write(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("x")
    res = runner.invoke(app, sim_args(d, "--overwrite"))
    assert res.exit_code == 2
    assert "was not written by cohort" in flat(res) and "Traceback" not in res.output
    assert (d / "thesis.txt").read_text() == "x"
    # a plain file is just as safe
    f = tmp_path / "notes.zarr"
    f.write_text("mine")
    res = runner.invoke(app, sim_args(f, "--overwrite"))
    assert res.exit_code == 2 and f.read_text() == "mine"


def test_glucose_plots_never_replace_a_users_files(tmp_path, monkeypatch):
    """`cohort glucose --plots DIR`: a folder holding the user's own files (even one named
    like a figure) is refused before anything runs, with or without --overwrite; a file is
    refused too; cohort's own folder is reused, its figures replaced only with --overwrite."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "glucose_band.png").write_bytes(b"my figure")
    (mine / "notes.txt").write_text("notes")
    args = ["glucose", "--n", "2", "--days", "0.125"]
    for extra in ([], ["--overwrite"]):
        res = runner.invoke(app, [*args, "--plots", str(mine), *extra])
        assert res.exit_code == 2, res.output
        assert "was not written by cohort" in flat(res) and "Traceback" not in res.output
        assert "patients ×" not in res.output  # refused before the simulation
    assert (mine / "glucose_band.png").read_bytes() == b"my figure"
    assert sorted(p.name for p in mine.iterdir()) == ["glucose_band.png", "notes.txt"]
    (tmp_path / "file.txt").write_text("x")
    res = runner.invoke(app, [*args, "--plots", "file.txt"])
    assert res.exit_code == 2 and "is a file" in flat(res) and "patients ×" not in res.output
    assert (tmp_path / "file.txt").read_text() == "x"
    ours = tmp_path / "figs"
    res = runner.invoke(app, [*args, "--plots", str(ours)])
    assert res.exit_code == 0, res.output
    assert (ours / "glucose_band.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, [*args, "--plots", str(ours)])
    assert res.exit_code == 2 and "--overwrite" in flat(res)
    res = runner.invoke(app, [*args, "--plots", str(ours), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_an_empty_directory_is_a_new_output(tmp_path):
    """A folder made beforehand and still empty holds nothing to lose: written into without
    --overwrite (it was refused even with it); once filled, the usual rules apply."""
    d = tmp_path / "made_first"
    d.mkdir()
    res = runner.invoke(app, sim_args(d))
    assert res.exit_code == 0, res.output
    assert cohort.open_result(d).sizes["patient"] == 10
    res = runner.invoke(app, sim_args(d))
    assert res.exit_code == 2 and "already exists" in flat(res)
    demo = tmp_path / "demo_dir"
    demo.mkdir()
    res = runner.invoke(
        app, ["demo", "--n", "50", "--out", str(demo), "--plot", str(tmp_path / "p.png")]
    )
    assert res.exit_code == 0, res.output


def test_overwrite_replaces_cohorts_own_store(tmp_path):
    out = tmp_path / "x.zarr"
    assert runner.invoke(app, sim_args(out)).exit_code == 0
    first = cohort.open_result(out)["CL"].values.copy()
    res = runner.invoke(app, [*sim_args(out, "--overwrite"), "--seed", "2"])
    assert res.exit_code == 0, res.output
    second = cohort.open_result(out)
    assert second.attrs["seed"] == 2 and not np.array_equal(first, second["CL"].values)


@pytest.mark.filterwarnings("ignore:Object at:UserWarning")  # zarr notices the user's files
def test_overwrite_keeps_a_users_files_dropped_into_cohorts_store(tmp_path):
    """A user's notes saved inside a cohort store were deleted with it by --overwrite (a new
    user's session): now the overwrite is refused, naming them, and nothing is removed."""
    out = tmp_path / "x.zarr"
    assert runner.invoke(app, sim_args(out)).exit_code == 0
    (out / "my_notes.txt").write_text("keep me")
    (out / "analysis").mkdir()
    (out / "analysis" / "fig.txt").write_text("mine")
    res = runner.invoke(app, [*sim_args(out, "--overwrite"), "--seed", "2"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    # a folder beside cohort's arrays is named whole (the store lists what it created)
    assert "did not write (analysis, my_notes.txt)" in " ".join(res.stderr.split())
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert cohort.open_result(out).attrs["seed"] == 1  # the store is untouched too
    (out / "my_notes.txt").unlink()
    shutil.rmtree(out / "analysis")
    # inside an array's folder too (its chunks were all that was looked for: a new user's
    # session lost conc/mynotes.txt), at any depth of the chunk folders
    for where in (out / "conc" / "mynotes.txt", out / "conc" / "c" / "0" / "x.R"):
        where.write_text("keep me")
        res = runner.invoke(app, [*sim_args(out, "--overwrite"), "--seed", "2"])
        assert res.exit_code == 2, res.output
        shown = where.relative_to(out).as_posix()
        assert f"did not write ({shown})" in " ".join(res.stderr.split())
        assert where.read_text() == "keep me"
        where.unlink()
    assert runner.invoke(app, [*sim_args(out, "--overwrite"), "--seed", "2"]).exit_code == 0


@pytest.mark.parametrize("path", ["", "   ", ".", "/", "~"])
def test_empty_and_root_like_paths_refused(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    res = runner.invoke(app, sim_args(path, "--overwrite"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "empty path" in flat(res) or "refusing to write" in flat(res)
    assert (tmp_path / "keep.txt").exists()


def test_demo_into_existing_directory_refuses_and_reuses_its_own(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "data.csv").write_text("1,2")
    res = runner.invoke(
        app, ["demo", "--n", "20", "--out", str(d), "--plot", str(tmp_path / "p.png")]
    )
    assert res.exit_code == 2 and "not a cohort result store" in flat(res)
    assert (d / "data.csv").read_text() == "1,2"
    out, png = tmp_path / "demo.zarr", tmp_path / "demo.png"
    args = ["demo", "--n", "20", "--out", str(out), "--plot", str(png)]
    assert runner.invoke(app, args).exit_code == 0
    before = cohort.open_result(out)["conc"].values.copy()
    res = runner.invoke(app, args)  # the same demo again: reused, not deleted
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(cohort.open_result(out)["conc"].values, before)
    # a user's PNG at --plot is not overwritten
    user_png = tmp_path / "holiday.png"
    user_png.write_bytes(b"\x89PNG\r\n\x1a\nmine")
    res = runner.invoke(app, ["demo", "--n", "20", "--out", str(out), "--plot", str(user_png)])
    assert res.exit_code == 2 and user_png.read_bytes().endswith(b"mine")


def test_lock_refuses_second_writer_and_recovers_stale_lock(tmp_path):
    from cohort.store import write_lock
    from cohort.store.lock import lock_path

    out = tmp_path / "x.zarr"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from cohort.store import write_lock
            with write_lock({str(out)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = runner.invoke(app, sim_args(out))
        assert res.exit_code == 2
        assert f"being written by process {holder.pid}" in flat(res)
        assert not out.exists()
        # through a symlink or with a trailing slash it is the same store, and the same lock
        link = tmp_path / "lnk"
        link.symlink_to(out, target_is_directory=True)
        for other in (link, f"{out}/"):
            res = runner.invoke(app, sim_args(other))
            assert res.exit_code == 2 and f"being written by process {holder.pid}" in flat(res)
        assert not out.exists()
        holder.kill()
        # Dead but not yet reaped (a zombie: kill(pid, 0) still succeeds, and in a container
        # whose PID 1 never reaps it stays so): the lock is already stale.
        os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)
        assert lock_path(out).exists()
        with pytest.warns(cohort.CohortWarning, match="stale write lock"):
            with write_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: the lock is stale, reported and taken over.
    lock_path(out).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
    with pytest.warns(cohort.CohortWarning, match="stale write lock"):
        with write_lock(out):
            pass
    assert not lock_path(out).exists()
    res = runner.invoke(app, sim_args(out))
    assert res.exit_code == 0, res.output


def test_a_stale_lock_is_taken_over_by_one_writer_only(tmp_path):
    """Several writers finding the same dead process's lock: one takes it over, the others
    are refused (each used to remove the lock it had read as stale, the first's fresh one
    among them, and two ran at once; a probe). Each writer holds the lock for a while and
    says when it got in and out; no two holds overlap, and the lock is gone at the end."""
    from cohort.store.lock import lock_path

    out = tmp_path / "x.zarr"
    lock_path(out).write_text(
        json.dumps({"pid": 999_999_999, "host": socket.gethostname(), "started": "then"})
    )
    start = time.time() + 5.0  # after every process has imported: all try at once
    script = textwrap.dedent(f"""
        import time, warnings
        from cohort.errors import OutputError
        from cohort.store import write_lock
        warnings.simplefilter("ignore")
        time.sleep(max(0.0, {start!r} - time.time()))
        try:
            with write_lock({str(out)!r}):
                t0 = time.time()
                time.sleep(1.0)
                print("held", t0, time.time(), flush=True)
        except OutputError:
            print("refused", flush=True)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    said = [p.communicate(timeout=120)[0].split() for p in procs]
    holds = sorted((float(w[1]), float(w[2])) for w in said if w and w[0] == "held")
    assert holds and all(w and w[0] in ("held", "refused") for w in said), said
    for (_, end), (start, _) in zip(holds, holds[1:]):
        assert start >= end, holds  # one writer at a time
    assert not lock_path(out).exists()


def test_concurrent_overwrite_is_refused_and_first_store_intact(tmp_path):
    """A real second writer while the first is mid-run: refused, the first store complete."""
    out = tmp_path / "big.zarr"
    script = textwrap.dedent(f"""
        import sys, time, cohort
        def slow(done, total):
            if done:
                print("progress", flush=True); time.sleep(0.3)
        cohort.simulate("pk1_oral", n=4000, dosing=cohort.Regimen(100.0, "depot"),
                        times=cohort.grid(0, 24, 1.0), out={str(out)!r}, chunk_size=500,
                        seed=8, progress=slow)
    """)
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "progress"
        res = runner.invoke(app, [*sim_args(out, "--overwrite"), "--seed", "7"])
        assert res.exit_code == 2 and "being written by process" in flat(res)
    finally:
        assert first.wait(timeout=120) == 0
    ds = cohort.open_result(out)
    assert "incomplete" not in ds.attrs and ds.attrs["seed"] == 8
    assert bool(ds.chunk_done.all()) and int((ds.status == 0).sum()) == 4000


def test_kill_during_generate_then_resume_is_identical(tmp_path):
    clean = cohort.population.generate(PRIOR, 3000, seed=3, chunk_size=500)
    out = tmp_path / "pop.zarr"
    script = textwrap.dedent(f"""
        import os, signal, cohort
        def bomb(done, total):
            if done >= 1500:
                os.kill(os.getpid(), signal.SIGKILL)
        cohort.population.generate({str(PRIOR)!r}, 3000, seed=3, chunk_size=500,
                                   out={str(out)!r}, progress=bomb)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    # The killed store is refused by readers and flagged by `info`.
    with pytest.raises(cohort.population.PopulationError, match="incomplete"):
        cohort.population.open_population(out)
    res = runner.invoke(app, ["simulate", "--population", str(out), "-o", str(tmp_path / "s")])
    assert res.exit_code == 2 and "incomplete" in flat(res)
    res = runner.invoke(app, ["info", str(out)])
    assert "INCOMPLETE" in res.output
    res = runner.invoke(
        app,
        ["generate", str(PRIOR), "--n", "3000", "--seed", "3", "--chunk-size", "500",
         "-o", str(out), "--resume"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    resumed = cohort.population.open_population(out)
    for k in clean.data_vars:
        np.testing.assert_array_equal(resumed[k].values, clean[k].values)
    # a resume with different inputs is refused, nothing changed
    res = runner.invoke(
        app, ["generate", str(PRIOR), "--n", "3000", "--seed", "4", "--chunk-size", "500",
              "-o", str(out), "--resume"],
    )  # fmt: skip
    assert res.exit_code == 2 and "was not written by this generate run" in flat(res)


def test_population_model_mismatch_is_an_error(tmp_path):
    pop = tmp_path / "pop.zarr"
    assert runner.invoke(app, ["generate", str(PRIOR), "--n", "50", "-o", str(pop)]).exit_code == 0
    res = runner.invoke(
        app,
        [
            "simulate",
            "--model",
            "pk2_oral_idr",
            "--population",
            str(pop),
            "-o",
            str(tmp_path / "s"),
        ],
    )
    assert res.exit_code == 2 and "generated for model 'pk1_oral'" in flat(res)
    assert "typical values are used" not in flat(res)  # no note about a run that never happens
    # without --model the population's own model is used
    res = runner.invoke(app, ["simulate", "--population", str(pop), "-o", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert cohort.open_result(tmp_path / "s").attrs["model"] == "pk1_oral"
    # the library refuses it too
    ds = cohort.population.open_population(pop)
    with pytest.raises(cohort.InputError, match="generated for model 'pk1_oral'"):
        cohort.simulate("pk2_oral", ds, cohort.Regimen(100.0, "depot"), cohort.grid(0, 4, 1))
    # a CSV with a column the model lacks
    csv = tmp_path / "p.csv"
    csv.write_text("CL,V,KA\n1,10,1\n")
    res = runner.invoke(app, ["simulate", "--model", "pk2_oral", "--population", str(csv)])
    assert res.exit_code == 2 and "['V'] are not parameters of 'pk2_oral'" in flat(res)


def test_prior_spec_with_unknown_model_is_refused(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(PRIOR.read_text().replace('model = "pk1_oral"', 'model = "pk1_orl"'))
    with pytest.raises(cohort.population.SpecError, match="population.model.*unknown model"):
        cohort.population.load_spec(spec)


def test_fit_refuses_to_overwrite_and_round_trips(tmp_path):
    from cohort.inference import load_fit

    theoph = ROOT / "tests" / "data" / "theoph_nonmem.csv"
    out = tmp_path / "fit.nc"
    out.write_text("my notes")
    args = ["fit", str(theoph), "--method", "ml", "--params", "CL,V,KA", "--iiv", "CL,KA",
            "-o", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "already exists" in flat(res)
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 2 and "not written by cohort" in flat(res)
    assert out.read_text() == "my notes"
    out.unlink()
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    groups = load_fit(out)
    assert groups["fit_summary"].attrs["method"] == "ml"


@pytest.fixture(scope="module")
def three_fits():
    """Quick ML, SVI and NUTS fits of Theoph (the short runs fail the convergence gates)."""
    import warnings

    from cohort.inference import NLME, ErrorModel, Param, fit

    spec = NLME(
        model=cohort.models.get("pk1_oral"),
        params=(Param("CL"), Param("V", iiv=False), Param("KA")),
        error=ErrorModel("additive"),
    )
    data = ROOT / "tests" / "data" / "theoph_nonmem.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cohort.CohortWarning)
        return {
            "ml": fit(spec, data, "ml"),
            "svi": fit(spec, data, "svi", steps=200, draws=50),
            "nuts": fit(spec, data, "nuts", chains=1, warmup=30, draws=20),
        }


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_every_fit_method_round_trips(tmp_path, suffix, three_fits):
    """ML, SVI and NUTS results (NUTS/SVI with their posterior groups) written and read back:
    arviz cannot write zarr >= 3, cohort writes the groups through xarray."""
    from cohort.inference import load_fit

    for method, res in three_fits.items():
        path = res.save(tmp_path / f"{method}{suffix}")
        groups = load_fit(path)
        summary = groups["fit_summary"]
        assert summary.attrs["method"] == method
        assert summary.sizes["subject"] == 12
        if method != "ml":
            post = groups["posterior"]
            np.testing.assert_allclose(
                post["log_CL"].values, res.idata.posterior["log_CL"].values, rtol=0, atol=0
            )
        with pytest.raises(cohort.OutputError, match="already exists"):
            res.save(path)
        res.save(path, overwrite=True)  # cohort's own result may be replaced
        # `cohort info` prints the table `cohort fit` printed (it showed a held parameter's
        # SE as 0 and left out sigma2: a new user's session)
        shown = runner.invoke(app, ["info", str(path)])
        assert shown.exit_code == 0, shown.output
        assert "sigma_add" in shown.output and "omega2_CL" in shown.output
        assert ("R-hat" in shown.output) == (method == "nuts")
        if method == "ml":
            assert "sigma2_add" in shown.output


def test_fit_tables_show_whole_names_and_only_meaningful_diagnostics(three_fits):
    """The CLI's posterior table: parameter names whole (SVI showed "omega_…"), R-hat and ESS
    for NUTS chains only (for SVI's independent guide draws they were NaN)."""
    from rich.console import Console

    from cohort.cli.fit import _table

    def text(result):
        c = Console(width=80)
        with c.capture() as cap:
            c.print(_table(result))
        return cap.get()

    svi, nuts = text(three_fits["svi"]), text(three_fits["nuts"])
    assert "omega_CL" in svi and "omega2_CL" in svi and "sigma_add" in svi
    assert "R-hat" not in svi and "nan" not in svi
    assert "R-hat" in nuts and "ESS bulk" in nuts


def test_info_describes_a_fit_result(tmp_path, three_fits):
    """`cohort info fit.nc` (it could not open a fit result): settings and estimates."""
    path = three_fits["ml"].save(tmp_path / "fit.nc")
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "fit of pk1_oral (ml), 12 subjects" in text and "ofv:" in text
    est = float(three_fits["ml"].summary.loc["CL", "estimate"])
    assert re.search(rf"│ CL +│ {re.escape(f'{est:.4g}')} ", res.output) and "log_CL" not in text


def test_overwrite_through_a_symlink_is_refused_and_nothing_is_touched(tmp_path):
    """``--overwrite`` on a link to a cohort store: shutil refused deep inside ("Cannot call
    rmtree on a symbolic link", with an empty path); now a clear refusal naming the target."""
    out = tmp_path / "x.zarr"
    assert runner.invoke(app, sim_args(out)).exit_code == 0
    before = cohort.open_result(out)["conc"].values.copy()
    link = tmp_path / "lnk"
    link.symlink_to(out, target_is_directory=True)
    res = runner.invoke(app, [*sim_args(link), "--overwrite"])
    assert res.exit_code == 2
    assert "symbolic link" in flat(res) and str(out.resolve()) in flat(res)
    assert link.is_symlink()
    np.testing.assert_array_equal(cohort.open_result(out)["conc"].values, before)


def test_zarr_leftovers_of_a_kill_are_cohorts_and_a_linked_folder_is_the_users(tmp_path):
    """zarr writes each chunk to '<key>.<uuid hex>.partial' and renames it: a SIGKILL between
    the two left a file that made --resume and --overwrite refuse the store as holding files
    cohort did not write. It is zarr's (so cohort's): resume removes it, overwrite accepts it.
    A symlink to a user's folder inside the store is the user's (--overwrite removed it)."""
    out = tmp_path / "x.zarr"
    assert runner.invoke(app, sim_args(out, "--chunk-size", "5")).exit_code == 0
    leftovers = [out / "CL" / "c" / "1.a7ad857332464907b7ffbab0c3b83b83.partial",
                 out / "conc" / "zarr.0123456789abcdef0123456789abcdef.partial"]  # fmt: skip
    for f in leftovers:
        f.write_bytes(b"\x00" * 7)
    res = runner.invoke(app, sim_args(out, "--chunk-size", "5", "--resume"))
    assert res.exit_code == 0, res.output
    assert not any(f.exists() for f in leftovers)
    leftovers[0].write_bytes(b"\x00")
    res = runner.invoke(app, [*sim_args(out, "--overwrite"), "--seed", "2"])
    assert res.exit_code == 0, res.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for link in (out / "mylink", out / "conc" / "c" / "mylink"):
        link.symlink_to(mine, target_is_directory=True)
        res = runner.invoke(app, [*sim_args(out, "--overwrite"), "--seed", "3"])
        assert res.exit_code == 2, res.output
        assert link.relative_to(out).as_posix() in " ".join(res.stderr.split())
        assert link.is_symlink() and (mine / "notes.txt").read_text() == "keep"
        link.unlink()


def test_a_killed_zarr_writes_temporary_file_is_cohorts_own(tmp_path):
    """zarr writes metadata through ``<name>.<32 hex>.partial`` files; one left by a killed
    write in a group folder was taken for a user's file, so an interrupted checkpoint or
    twin update could not be replaced (a reviewer); a real user's file still is."""
    import zarr

    from cohort.store.safety import foreign_files, remove_own
    from cohort.store.zarr_store import new_layout

    path = tmp_path / "ck.blocks.zarr"
    root = new_layout(path)
    root.create_group("block_0").create_array("rows", shape=(3,), dtype="i8")[...] = 1
    (path / "block_0" / f"zarr.json.{'0123456789abcdef' * 2}.partial").write_text("{")
    assert foreign_files(path) == []
    (path / "block_0" / "notes.txt").write_text("mine")
    assert foreign_files(path) == ["block_0/notes.txt"]
    with pytest.raises(cohort.errors.OutputError, match="notes.txt"):
        remove_own(path / "block_0", "checkpoint block")
    assert (path / "block_0" / "notes.txt").read_text() == "mine"
    (path / "block_0" / "notes.txt").unlink()
    remove_own(path / "block_0", "checkpoint block")
    assert not (path / "block_0").exists() and zarr.open_group(str(path), mode="r") is not None


def test_a_fits_temporary_name_holding_the_users_files_is_not_deleted(tmp_path, three_fits):
    """A fit is saved under `.NAME.partial` and renamed; whatever was there was deleted
    unchecked (`.myfit.zarr.partial/thesis.txt`, a probe). A killed save's own leftover (a
    zarr group with cohort's mark, an HDF5 file) is still replaced."""
    res = three_fits["ml"]
    mine = tmp_path / ".myfit.zarr.partial"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    with pytest.raises(cohort.OutputError, match="not a fit cohort was saving"):
        res.save(tmp_path / "myfit.zarr")
    assert (mine / "thesis.txt").read_text() == "x"
    note = tmp_path / ".notes.nc.partial"
    note.write_text("my notes")
    with pytest.raises(cohort.OutputError, match="not a fit cohort was saving"):
        res.save(tmp_path / "notes.nc")
    assert note.read_text() == "my notes"
    import h5py  # a user's own HDF5 file under the name: kept (it was deleted; a probe)

    with h5py.File(tmp_path / ".mine.nc.partial", "w") as f:
        f["thesis"] = np.arange(5)
    with pytest.raises(cohort.OutputError, match="not a fit cohort was saving"):
        res.save(tmp_path / "mine.nc")
    with h5py.File(tmp_path / ".mine.nc.partial", "r") as f:
        assert f["thesis"][:].tolist() == [0, 1, 2, 3, 4]
    res.save(tmp_path / "a.nc")  # a killed save's leftovers: replaced
    (tmp_path / "a.nc").rename(tmp_path / ".b.nc.partial")
    res.save(tmp_path / "b.nc")
    assert not (tmp_path / ".b.nc.partial").exists() and (tmp_path / "b.nc").is_file()


def test_a_store_the_user_derived_from_a_result_is_not_taken_for_cohorts(tmp_path):
    """`open_result(...).isel(...).to_zarr("derived.zarr")` copied cohort's mark and its
    provenance attributes, and --overwrite then deleted the user's store (a probe)."""
    times = cohort.grid(0, 4, 1)
    run = tmp_path / "run.zarr"
    cohort.simulate("pk1_oral", n=6, dosing=cohort.Regimen(100.0, "depot"), times=times, out=run)
    ds = cohort.open_result(run)
    assert "written_by" not in ds.attrs and "cohort_version" in ds.attrs
    derived = tmp_path / "derived.zarr"
    ds.isel(patient=slice(0, 3)).assign_attrs(note="mine").to_zarr(derived, consolidated=False)
    with pytest.raises(cohort.OutputError, match="not written by cohort"):
        cohort.simulate("pk1_oral", n=6, dosing=cohort.Regimen(100.0, "depot"), times=times,
                        out=derived, overwrite=True)  # fmt: skip
    assert zarr.open_group(str(derived), mode="r").attrs["note"] == "mine"
    cohort.simulate("pk1_oral", n=6, dosing=cohort.Regimen(100.0, "depot"), times=times, out=run,
                    overwrite=True)  # fmt: skip  # cohort's own: still replaced


def test_a_group_the_user_saved_into_a_result_store_stops_an_overwrite(tmp_path):
    """`ds.to_zarr(store, group="analysis")` into a cohort store: --overwrite deleted it (zarr
    metadata and chunks pass for cohort's own files; a probe). The store records the arrays
    its layout was created with, and a trial's groups; anything else is named and kept."""
    times = cohort.grid(0, 4, 1)
    run = tmp_path / "run.zarr"

    def simulate(**kw):
        return cohort.simulate(
            "pk1_oral", n=6, dosing=cohort.Regimen(100.0, "depot"), times=times, out=run, **kw
        )

    ds = simulate()
    ds[["conc"]].mean("patient").to_zarr(run, group="analysis", consolidated=False)
    with pytest.raises(cohort.OutputError, match="analysis"):
        simulate(overwrite=True)
    assert (run / "analysis" / "zarr.json").exists()
    shutil.rmtree(run / "analysis")
    simulate(overwrite=True)  # cohort's own arrays alone: replaced as before


def test_a_group_the_user_saved_into_a_population_store_stops_an_overwrite(tmp_path):
    """Population (and fit, twin) stores did not record their own members: a group the user
    saved into one was deleted by `cohort generate --overwrite` (a probe)."""
    out = tmp_path / "pop.zarr"
    args = ["generate", str(PRIOR), "--n", "20", "--chunk-size", "10", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    zarr.open_group(str(out), mode="r+").create_group("mywork").attrs["thesis"] = 1
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 2 and "mywork" in res.output, res.output
    assert zarr.open_group(str(out / "mywork"), mode="r").attrs["thesis"] == 1
    shutil.rmtree(out / "mywork")
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_an_output_that_is_the_population_input_is_refused(tmp_path):
    """`simulate --population pop.zarr -o pop.zarr --overwrite` replaced the population store
    (and its generate provenance) with the results (a probe)."""
    pop = tmp_path / "pop.zarr"
    gen = ["generate", str(PRIOR), "--n", "10", "-o", str(pop)]
    assert runner.invoke(app, gen).exit_code == 0
    res = runner.invoke(app, ["simulate", "--population", str(pop), "-o", str(pop) + "/",
                              "--overwrite"])  # fmt: skip
    assert res.exit_code == 2 and "is the --population input" in res.output, res.output
    assert "spec_hash" in zarr.open_group(str(pop), mode="r").attrs


def test_a_file_named_like_a_chunk_beyond_the_arrays_grid_is_the_users(tmp_path):
    """Any chunk-shaped name inside an array's folder passed for cohort's: `CL/c/2026` in an
    array of 5 chunks, and v2-style `CL/c/0.1`, were deleted by --overwrite (a probe)."""
    out = tmp_path / "pop.zarr"
    args = ["generate", str(PRIOR), "--n", "50", "--chunk-size", "10", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    for name in ("2026", "0.1"):
        (out / "CL" / "c" / name).write_text("notes")
        res = runner.invoke(app, [*args, "--overwrite"])
        assert res.exit_code == 2 and f"CL/c/{name}" in res.output, res.output
        assert (out / "CL" / "c" / name).read_text() == "notes"
        (out / "CL" / "c" / name).unlink()
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0  # its own chunks only


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_a_fit_overwrite_killed_midway_keeps_the_old_result(tmp_path, three_fits, suffix,
                                                              monkeypatch):  # fmt: skip
    """--overwrite deleted the old fit before the new one was written: killed in between,
    neither was left (a probe). The old one now stays until the new one is complete."""
    import xarray as xr

    from cohort.inference import load_fit

    res = three_fits["ml"]
    out = tmp_path / f"fit{suffix}"
    res.save(out)
    before = float(load_fit(out)["fit_summary"].attrs["ofv"])
    writer = "to_zarr" if suffix == ".zarr" else "to_netcdf"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, writer, killed)
    with pytest.raises(KeyboardInterrupt):
        res.save(out, overwrite=True)
    monkeypatch.undo()
    assert float(load_fit(out)["fit_summary"].attrs["ofv"]) == before
    res.save(out, overwrite=True)  # the killed save's leftover is cohort's: replaced
    assert float(load_fit(out)["fit_summary"].attrs["ofv"]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"fit{suffix}"]


def test_a_users_figure_under_a_name_cohort_once_wrote_is_kept(tmp_path):
    """A user's own PNG saved over a report figure was replaced by ``--overwrite``: the
    folder's list of files cohort wrote counted, not the file (a probe)."""
    from cohort.errors import OutputError
    from cohort.store.safety import claim_file, report_directory

    folder = report_directory(tmp_path / "r_figures", overwrite=False, flag="report figures")
    from matplotlib.figure import Figure

    from cohort.store.figures import save_figure

    fig = save_figure(Figure(), claim_file(folder, "forest.png", overwrite=False))
    assert claim_file(folder, "forest.png", overwrite=True) == fig  # cohort's own: replaceable
    fig.write_bytes(b"\x89PNG\r\n\x1a\n a user's own figure")
    with pytest.raises(OutputError, match="not written by cohort"):
        claim_file(folder, "forest.png", overwrite=True)
    assert fig.read_bytes().endswith(b"a user's own figure")


def test_a_figure_killed_while_written_leaves_nothing_under_its_name(tmp_path, monkeypatch):
    """A kill while matplotlib wrote a PNG left an empty, unsigned file under the figure's
    name, which no rerun replaced (not cohort's, said --resume and --overwrite; a probe). The
    figure is written beside its name and renamed into place; the next save cleans up."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cohort.store.figures import save_figure
    from cohort.store.safety import claim_file, report_directory, written_by_cohort

    folder = report_directory(tmp_path / "figs", overwrite=False, flag="--plots")
    target = claim_file(folder, "band.png", overwrite=False, flag="--plots")
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])

    def killed(self, fname, **kwargs):
        Path(fname).write_bytes(b"")  # the file exists, empty, when the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, target)
    assert not target.exists()
    monkeypatch.undo()
    leftover = folder / f".band.png.{os.getpid() + 1}.tmp"  # another process's, killed
    leftover.write_bytes(b"")
    again = claim_file(folder, "band.png", overwrite=False, flag="--plots")
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    save_figure(fig, again)
    assert written_by_cohort(again) and again.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in folder.iterdir()) == [".cohort", "band.png"]
