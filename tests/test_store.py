"""zarr result stores: round trip, provenance, refusing to clobber, crash and resume."""

from __future__ import annotations

import dataclasses
import datetime
import re

import numpy as np
import pytest
import xarray as xr
import zarr

import cohort
from cohort import Regimen
from cohort.store import ResultStore, StoreError

MODEL = cohort.models.get("pk1_iv")
N = 10
CHUNK = 3  # chunks of 3, 3, 3 and 1 patients
POP = {"CL": np.linspace(1.0, 5.0, N), "V": np.linspace(15.0, 40.0, N)}
DOSE = Regimen(100.0, "central", ii=12.0, addl=1)
TIMES = cohort.grid(0.0, 24.0, 1.0)
VARS = ("conc", "status", "CL", "V")


def run(out=None, pop=POP, dose=DOSE, chunk_size=CHUNK, **kw):
    return cohort.simulate(
        MODEL, pop, dose, TIMES, method="closed_form", chunk_size=chunk_size, out=out, **kw
    )


def assert_same_store(a: xr.Dataset, b: xr.Dataset):
    for name in (*VARS, "chunk_done", "patient", "time"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
        assert a[name].dtype == b[name].dtype, name


def test_round_trip_values_and_provenance(tmp_path):
    mem = run()
    ds = run(tmp_path / "x.zarr")
    assert ds.conc.dims == ("patient", "time")
    for name in VARS:
        np.testing.assert_array_equal(ds[name].values, mem[name].values, err_msg=name)
    np.testing.assert_array_equal(ds.time.values, TIMES)
    np.testing.assert_array_equal(ds.patient.values, np.arange(N))
    np.testing.assert_array_equal(ds.status.values, 0)
    assert ds.conc.values[0, 0] == pytest.approx(100.0 / POP["V"][0], rel=1e-12)
    assert bool(ds.chunk_done.all()) and ds.chunk_done.size == 4
    assert "incomplete" not in ds.attrs
    # Units and provenance.
    assert ds.conc.attrs["units"] == "mg/L"
    assert ds.CL.attrs["units"] == "L/h" and ds.time.attrs["units"] == "h"
    assert ds.attrs["model"] == "pk1_iv"
    assert ds.attrs["model_hash"] == MODEL.fingerprint()
    assert ds.attrs["cohort_version"] == cohort.__version__
    assert ds.attrs["spec_hash"] == mem.attrs["spec_hash"] and len(ds.attrs["spec_hash"]) > 8
    assert ds.attrs["method"] == "closed_form" and ds.attrs["chunk_size"] == CHUNK
    created = datetime.datetime.fromisoformat(ds.attrs["created"])
    age = datetime.datetime.now(datetime.timezone.utc) - created
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=10)
    # open_result reads the same thing back.
    again = cohort.open_result(tmp_path / "x.zarr")
    assert_same_store(again, ds)


def test_existing_path_is_not_clobbered(tmp_path):
    path = tmp_path / "x.zarr"
    first = run(path).conc.values
    with pytest.raises(StoreError, match="already exists"):
        run(path, dose=Regimen(200.0, "central"))
    np.testing.assert_array_equal(cohort.open_result(path).conc.values, first)
    # overwrite=True replaces it.
    ds = run(path, dose=Regimen(200.0, "central"), overwrite=True)
    assert ds.conc.values[0, 0] == pytest.approx(200.0 / POP["V"][0], rel=1e-12)


def test_crash_then_resume_equals_clean_run(tmp_path, monkeypatch):
    clean = run(tmp_path / "clean.zarr")
    path = tmp_path / "x.zarr"
    calls = []

    def crash_after_two_chunks(done, total):
        calls.append(done)
        assert total == N
        if done >= 2 * CHUNK:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(path, progress=crash_after_two_chunks)
    assert calls == [0, 3, 6]
    partial = cohort.open_result(path)
    np.testing.assert_array_equal(partial.chunk_done.values, [True, True, False, False])
    assert "incomplete" in partial.attrs
    np.testing.assert_array_equal(partial.status.values[: 2 * CHUNK], 0)
    np.testing.assert_array_equal(partial.status.values[2 * CHUNK :], -1)  # not computed yet
    np.testing.assert_array_equal(partial.conc.values[: 2 * CHUNK], clean.conc.values[: 2 * CHUNK])
    chunk_files = [path / "conc" / "c" / str(k) / "0" for k in (0, 1)]
    stamps = [f.stat().st_mtime_ns for f in chunk_files]

    written = []
    original = ResultStore.write_chunk

    def spy(self, k, *args, **kw):
        written.append(k)
        return original(self, k, *args, **kw)

    monkeypatch.setattr(ResultStore, "write_chunk", spy)
    resumed_calls = []
    ds = run(path, resume=True, progress=lambda done, total: resumed_calls.append(done))
    # Only the unfinished chunks were computed and written.
    assert written == [2, 3]
    assert resumed_calls == [6, 9, 10]
    assert [f.stat().st_mtime_ns for f in chunk_files] == stamps
    assert "incomplete" not in ds.attrs
    assert_same_store(ds, clean)
    assert ds.attrs["spec_hash"] == clean.attrs["spec_hash"]

    # Resuming a finished store computes nothing.
    written.clear()
    again = run(path, resume=True)
    assert written == []
    assert_same_store(again, clean)


def test_resume_with_different_inputs_is_refused(tmp_path):
    path = tmp_path / "x.zarr"
    run(path)
    with pytest.raises(StoreError, match=r"different inputs .* it differs in dosing \(was "):
        run(path, dose=Regimen(150.0, "central", ii=12.0, addl=1), resume=True)
    # a long description is shown around its difference (cut at its start, "was" and "now"
    # read the same: a new user's session)
    with pytest.raises(StoreError) as info:
        run(path, dose=dataclasses.replace(DOSE, amt=DOSE.amt * 2), resume=True)
    was, now = re.search(r"dosing \(was (.*?), now (.*?)\);", str(info.value)).groups()
    assert f"{DOSE.amt:g} each" in was and f"{2 * DOSE.amt:g} each" in now
    with pytest.raises(StoreError, match="different inputs"):
        run(path, pop={"CL": POP["CL"] * 1.01, "V": POP["V"]}, resume=True)
    with pytest.raises(StoreError, match="chunk_size"):
        run(path, chunk_size=4, resume=True)
    # another save grid is named too (it said only 'a different population, dosing or option')
    with pytest.raises(StoreError, match=r"differs in save_times \(was .* every .*, now "):
        cohort.simulate(MODEL, POP, DOSE, TIMES[:-1] * 0.5, method="closed_form",
                        chunk_size=CHUNK, out=path, resume=True)  # fmt: skip


def test_store_errors_for_missing_or_foreign_paths(tmp_path):
    with pytest.raises(StoreError, match="no result store"):
        cohort.open_result(tmp_path / "missing.zarr")
    foreign = tmp_path / "notastore"
    foreign.mkdir()
    (foreign / "readme.txt").write_text("hello")
    with pytest.raises(StoreError):
        run(foreign, resume=True)


def test_torn_chunk_is_recomputed_on_resume(tmp_path, monkeypatch):
    clean = run(tmp_path / "clean.zarr")
    path = tmp_path / "x.zarr"
    original = ResultStore.write_chunk

    def torn(self, k, outputs, status, params):
        if k == 1:  # die after writing garbage outputs, before chunk_done is flagged
            self.group["conc"][k * CHUNK : (k + 1) * CHUNK, :] = -1.0
            raise OSError("disk vanished")
        return original(self, k, outputs, status, params)

    monkeypatch.setattr(ResultStore, "write_chunk", torn)
    with pytest.raises(OSError, match="disk vanished"):
        run(path)
    done = cohort.open_result(path).chunk_done.values
    assert done[0] and not done[1]
    monkeypatch.setattr(ResultStore, "write_chunk", original)
    assert_same_store(run(path, resume=True), clean)


def test_store_killed_while_its_layout_was_created_is_incomplete(tmp_path, monkeypatch):
    """Killed after its arrays were created but before chunk_done (cohort generate, cohort
    glucose), a store read as complete and full of NaN: `cohort info` flagged nothing and a
    simulation of that population ran to exit 0 with every patient invalid. It is now
    incomplete everywhere it is read, and --resume finishes it."""
    import importlib
    from pathlib import Path

    from typer.testing import CliRunner

    from cohort.cli import app
    from cohort.population import PopulationError, open_population

    layout_module = importlib.import_module("cohort.store.zarr_store")  # generate imports it
    spec = Path(__file__).resolve().parents[1] / "priors" / "neonate_phenobarbital.toml"
    path = tmp_path / "p.zarr"

    def killed(*a, **kw):
        raise KeyboardInterrupt("killed while creating the layout")

    monkeypatch.setattr(layout_module, "add_done_flags", killed)
    with pytest.raises(KeyboardInterrupt):
        cohort.population.generate(spec, 40, seed=1, out=path)
    monkeypatch.undo()
    assert "before any result" in cohort.open_result(path).attrs["incomplete"]
    with pytest.raises(PopulationError, match="layout was never finished.*--resume"):
        open_population(path)
    res = CliRunner().invoke(app, ["info", str(path)])
    assert "INCOMPLETE" in res.output
    finished = cohort.population.generate(spec, 40, seed=1, out=path, resume=True)
    clean = cohort.population.generate(spec, 40, seed=1)
    np.testing.assert_array_equal(finished["CL"].values, clean["CL"].values)
    assert "incomplete" not in cohort.open_result(path).attrs


@pytest.mark.parametrize("method", ["closed_form", "fast"])
def test_store_equals_memory_with_a_failed_patient(tmp_path, method):
    """Stores get patient-major blocks straight from the engine (transposed on the device);
    in-memory results are time-major: both hold the same values, NaN rows for bad patients."""
    pop = {k: v.copy() for k, v in POP.items()}
    pop["CL"][4] = -1.0  # invalid: flagged, its outputs NaN, the others untouched
    kw = {"method": method, "chunk_size": CHUNK}
    mem = cohort.simulate(MODEL, pop, DOSE, TIMES, **kw)
    ds = cohort.simulate(MODEL, pop, DOSE, TIMES, out=tmp_path / "f.zarr", **kw)
    assert int(ds.status.values[4]) == int(cohort.Status.INVALID_PARAMETERS)
    assert np.all(np.isnan(ds.conc.values[4])) and np.all(np.isfinite(ds.conc.values[5:]))
    np.testing.assert_array_equal(ds.conc.values, mem.conc.values)
    np.testing.assert_array_equal(ds.status.values, mem.status.values)


def test_large_batches_write_several_whole_output_chunks(tmp_path, monkeypatch):
    from cohort.store import zarr_store

    # ~16 MB target chunks in production; a tiny target here makes each batch of 4 patients
    # (25 float64 times each) two output chunks of 2 patients.
    monkeypatch.setattr(zarr_store, "OUTPUT_CHUNK_BYTES", 2 * 25 * 8)
    assert zarr_store.output_chunk_rows(4, 25, 8) == 2
    ds = run(tmp_path / "x.zarr", chunk_size=4)
    assert ds.attrs["chunk_size"] == 4
    np.testing.assert_array_equal(ds.chunk_done.values, True)
    group = zarr.open_group(str(tmp_path / "x.zarr"), mode="r")
    assert group["conc"].chunks == (2, len(TIMES)) and group["status"].chunks == (4,)
    # parameters are written whole once: chunks of whole batches up to ~2 MB (here all 10)
    n = group["CL"].shape[0]
    assert group["CL"].chunks == (n,) == (zarr_store.whole_array_rows(4, n),)
    assert zarr_store.whole_array_rows(16_384, 10**7) == 262_144
    assert_same_store(ds, run(chunk_size=4).assign(chunk_done=ds.chunk_done))
    # Production sizes: 100,000 float32 patients x 289 times split into 8 chunks of 14 MB.
    monkeypatch.undo()
    assert zarr_store.output_chunk_rows(100_000, 289, 4) == 12_500
    assert zarr_store.output_chunk_rows(10_007, 289, 8) == 10_007  # prime: one chunk per batch


def test_open_result_equals_xarray_default_open_without_importing_pint(tmp_path):
    """open_result builds the dimension indexes itself (from pandas.Index): the dataset is
    identical to ``xr.open_zarr``'s, indexes included, and opening it does not import pint
    (xarray's own index creation does where pint is installed: ~0.16 s of every CLI run)."""
    import subprocess
    import sys

    run(tmp_path / "x.zarr")
    ds = cohort.open_result(tmp_path / "x.zarr")
    ref = xr.open_zarr(str(tmp_path / "x.zarr"), consolidated=False, chunks=None)
    assert ref.attrs.pop("written_by") == "cohort"  # the mark stays with the store itself
    xr.testing.assert_identical(ds, ref)
    assert set(ds.indexes) == set(ref.indexes) == {"patient", "time"}
    assert ds.time.attrs["units"] == "h" and ds.time.encoding["dtype"] == ref.time.encoding["dtype"]
    np.testing.assert_array_equal(ds.conc.sel(time=12.0).values, ref.conc.sel(time=12.0).values)
    pytest.importorskip("pint")  # the [dev] install has it (pharmpy-core)
    code = (
        "import sys\n"
        "from cohort.store import open_result\n"
        f"ds = open_result({str(tmp_path / 'x.zarr')!r})\n"
        "ds.conc.sel(time=12.0).values\n"
        "import cohort\n"  # an in-memory result builds its coordinates the same way
        "mem = cohort.simulate('pk1_iv', None, cohort.Regimen(100.0, 'central'),\n"
        "                      cohort.grid(0.0, 4.0, 1.0), n=2, method='closed_form')\n"
        "mem.conc.sel(time=2.0).values\n"
        "print('pint' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


def test_a_task_planned_for_a_replaced_store_writes_nothing_there(tmp_path):
    """A Dask task of a killed client ran on and wrote its chunks, flagged done, into the store
    a new run had created at the same path with --overwrite (its chunks were then skipped: 8
    of 30 held the old seed's results, a probe). Each creation has its own run token; a task
    attached for another is refused, and one attached before the replacement writes nothing
    and flags nothing."""
    path = tmp_path / "x.zarr"
    run(path)
    planned = ResultStore.attach(path)  # a task of the first run, planned before the kill
    old_token = planned.token
    assert old_token is not None
    new = run(path, pop={k: v * 2 for k, v in POP.items()}, overwrite=True, seed=2)
    assert new.attrs["run_token"] != old_token
    with pytest.raises(StoreError, match="was replaced since this task was planned"):
        ResultStore.attach(path, old_token)
    status = np.zeros(CHUNK, np.int8)
    with pytest.raises(StoreError, match="was replaced"):
        planned.write_chunk(1, {"conc": np.full((CHUNK, len(TIMES)), -7.0)}, status, {})
    after = cohort.open_result(path)
    np.testing.assert_array_equal(after.conc.values, new.conc.values)
    assert after.chunk_done.values.all()
    # a resume keeps its store's token (its tasks are planned for the same creation)
    assert (
        run(path, pop={k: v * 2 for k, v in POP.items()}, resume=True, seed=2).attrs["run_token"]
        == new.attrs["run_token"]
    )


def test_status_is_written_after_the_outputs(tmp_path, monkeypatch):
    """A chunk killed while its outputs were written read status 0 (ok) over NaN outputs in
    `cohort info` (4 of 6 kills, a probe): the status now follows the outputs."""
    path = tmp_path / "x.zarr"
    order = []
    original = zarr.Array.__setitem__

    def spy(self, key, value):
        order.append(self.basename)
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", spy)
    run(path)
    written = [name for name in order if name in ("conc", "status", "chunk_done")]
    per_chunk = [written[i : i + 3] for i in range(0, len(written), 3)][-4:]
    assert per_chunk == [["conc", "status", "chunk_done"]] * 4, written


def test_a_store_that_fails_while_its_program_compiles_leaves_a_clean_exit(tmp_path):
    """A first simulate compiles its program on a background thread while the store is
    created; when the creation failed the process ended under a running XLA compile and
    aborted in C++ (exit 134, "terminate called ...": a review). It now waits for it."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import numpy as np, cohort
        from cohort.store import zarr_store
        def refuse(cls, *a, **k):
            raise OSError("disk full")
        zarr_store.ResultStore.create = classmethod(refuse)
        try:
            cohort.simulate("pk2_oral_idr", {"CL": np.full(100, 2.0)},
                            cohort.Regimen(amt=100.0, cmt="depot"), cohort.grid(0.0, 24.0, 1.0),
                            out="x.zarr")
        except OSError as e:
            print("refused:", e)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: disk full" in proc.stdout
