"""Dask backend: a run spread over a LocalCluster (2 worker processes) writes a store
bit-identical to a local run, also when a worker is killed mid-run; the CLI's --scheduler."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import dask
import numpy as np
import pytest
from dask.distributed import Client, LocalCluster
from typer.testing import CliRunner

from cohort.cli import app
from cohort.distributed import DistributedError, connect
from cohort.distributed.backend import chunk_ranges
from cohort.engine.inputs import InputError
from cohort.engine.simulate import simulate
from cohort.models import get
from cohort.population import lognormal
from cohort.store import open_result


@pytest.fixture(scope="module")
def client():
    # Workers with as many XLA CPU devices as this process: a batch split over another
    # number of devices is padded and vectorised differently, which XLA may round 1 ulp
    # differently (the same holds between two local runs with different device counts).
    import jax

    flags = f"--xla_force_host_platform_device_count={jax.local_device_count()}"
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
            env={"XLA_FLAGS": flags},
        ) as cluster,
        # not this process's default scheduler: a default Client sets dask's global config
        # ("scheduler": "dask.distributed"), and a suite run once left it set after this
        # module, so xarray's writes in later tests on that worker failed ("no Client active")
        Client(cluster, set_as_default=False) as c,
    ):
        yield c
    assert dask.config.get("scheduler", None) is None, "dask's default scheduler leaked"


def _same_store(a, b) -> None:
    a, b = open_result(a), open_result(b)
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        assert x.tobytes() == y.tobytes(), name  # bit for bit, NaN patterns included
    np.testing.assert_array_equal(b["patient"].values, np.arange(b.sizes["patient"]))
    assert bool(b["chunk_done"].all()) and "incomplete" not in b.attrs
    assert int((b["status"].values != 0).sum()) == 0


def test_killed_worker_leaves_a_store_identical_to_a_local_run(client, tmp_path):
    model = get("pk2_oral_idr")
    pop = lognormal(model, 3000, seed=4)
    args = dict(times=np.linspace(0.0, 48.0, 97), method="fast", chunk_size=75)
    from cohort.dosing import Regimen

    dose = Regimen(amt=320.0, ii=12.0, addl=3, cmt="depot")
    simulate(model, pop, dose, out=str(tmp_path / "local.zarr"), **args)

    pids = client.run(os.getpid)
    killed: list[str] = []
    ticks: list[int] = []

    def progress(done: int, total: int) -> None:
        ticks.append(done)
        if done and not killed:  # the first task finished: kill a worker that still has work
            busy = [w for w, tasks in client.processing().items() if tasks]
            assert busy, "no worker had tasks left to lose"
            killed.append(busy[0])
            os.kill(pids[busy[0]], signal.SIGKILL)  # the nanny starts a new worker

    simulate(model, pop, dose, out=str(tmp_path / "dask.zarr"), cluster=client,
             progress=progress, **args)  # fmt: skip
    assert killed and ticks[-1] == 3000 and ticks == sorted(ticks)
    _same_store(tmp_path / "local.zarr", tmp_path / "dask.zarr")


def test_cli_scheduler_matches_local_run(client, tmp_path):
    runner = CliRunner()
    base = ["simulate", "--model", "pk1_oral", "--n", "500", "--chunk-size", "60",
            "--t-end", "24", "--seed", "3"]  # fmt: skip
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "local.zarr")])
    assert res.exit_code == 0, res.output
    address = client.scheduler.address
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "dask.zarr"), "--scheduler", address])
    assert res.exit_code == 0, res.output
    _same_store(tmp_path / "local.zarr", tmp_path / "dask.zarr")


def test_resume_on_a_cluster_writes_only_missing_chunks(client, tmp_path):
    model = get("pk1_oral")
    pop = lognormal(model, 400, seed=2)
    args = dict(times=np.linspace(0.0, 24.0, 49), chunk_size=50)
    simulate(model, pop, None, out=str(tmp_path / "local.zarr"), **args)
    store = tmp_path / "dask.zarr"
    simulate(model, pop, None, out=str(store), **args)
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    group["chunk_done"][[1, 5]] = False  # as if those chunks were lost in a crash
    group["conc"][50:100] = -1.0
    seen: list[int] = []
    simulate(model, pop, None, out=str(store), resume=True, cluster=client,
             progress=lambda done, total: seen.append(done), **args)  # fmt: skip
    assert seen[0] == 300 and seen[-1] == 400  # 6 of 8 chunks were already written
    _same_store(tmp_path / "local.zarr", store)


def test_chunk_ranges_cover_pending_chunks_once():
    done = np.zeros(40, bool)
    done[[0, 7, 8, 39]] = True
    ranges = chunk_ranges(done, 8)
    covered = np.concatenate([np.arange(a, b) for a, b in ranges])
    assert len(covered) == len(set(covered.tolist()))
    assert set(np.flatnonzero(~done)) <= set(covered.tolist())
    assert len(ranges) == 8
    # the tasks' pending chunks differ by at most one (36 = 4 x 5 + 4 x 4), larger first
    sizes = [int((~done[a:b]).sum()) for a, b in ranges]
    assert sizes == [5, 5, 5, 5, 4, 4, 4, 4]
    # never more than MAX_CHUNKS_PER_TASK chunks a task, one chunk a task when few
    from cohort.distributed.backend import MAX_CHUNKS_PER_TASK

    many = chunk_ranges(np.zeros(1000, bool), 8)
    assert max(b - a for a, b in many) <= MAX_CHUNKS_PER_TASK
    assert chunk_ranges(np.zeros(3, bool), 8) == [(0, 1), (1, 2), (2, 3)]
    assert chunk_ranges(np.ones(5, bool), 4) == []


def test_bad_cluster_arguments_are_clear_errors():
    with pytest.raises(InputError, match="cluster: a distributed run writes into a store"):
        simulate("pk1_oral", None, None, np.linspace(0, 1, 3), n=4, cluster="tcp://x:1")
    with pytest.raises(DistributedError, match="expected a dask Client"):
        with connect(42):
            pass
    with pytest.raises(DistributedError, match="cannot reach the Dask scheduler"):
        with connect("tcp://127.0.0.1:9", timeout="1s"):
            pass


def test_unreachable_scheduler_leaves_no_store(tmp_path, monkeypatch):
    """The scheduler is reached before the store is created: a wrong address is reported
    without an empty, incomplete store left at --out."""
    import cohort.distributed as dist

    reach = dist.check_reachable
    monkeypatch.setattr(dist, "check_reachable", lambda c, out=None: reach(c, out, timeout="1s"))
    out = tmp_path / "x.zarr"
    with pytest.raises(DistributedError, match="cannot reach the Dask scheduler"):
        simulate("pk1_oral", None, None, np.linspace(0, 1, 3), n=4, out=str(out),
                 cluster="tcp://127.0.0.1:9")  # fmt: skip
    assert not out.exists()


@pytest.mark.slow
def test_glucose_run_on_a_cluster_is_bit_identical(client, tmp_path):
    import pandas as pd

    from cohort.glucose import run
    from cohort.models.glucose import reference_patients

    pop = pd.concat([reference_patients("adult")] * 4, ignore_index=True)
    args = dict(days=0.25, seed=3, chunk_size=10)
    run(pop, out=str(tmp_path / "local.zarr"), **args)
    run(pop, out=str(tmp_path / "dask.zarr"), cluster=client, **args)
    _same_store(tmp_path / "local.zarr", tmp_path / "dask.zarr")


def test_fsspec_url_store_round_trip_resume_and_safety(tmp_path):
    """A store named by an fsspec URL (here file://, as for s3:// or a shared filesystem):
    same bytes as a local path, resumable, never replacing what cohort did not write."""
    from cohort.errors import OutputError

    model = get("pk1_oral")
    pop = lognormal(model, 200, seed=5)
    args = dict(times=np.linspace(0.0, 24.0, 25), chunk_size=40)
    simulate(model, pop, None, out=str(tmp_path / "local.zarr"), **args)
    url = f"file://{tmp_path}/url.zarr"
    simulate(model, pop, None, out=url, **args)
    _same_store(tmp_path / "local.zarr", tmp_path / "url.zarr")
    with pytest.raises(OutputError, match="already exists"):
        simulate(model, pop, None, out=url, **args)
    simulate(model, pop, None, out=url, resume=True, **args)  # finished: nothing to do
    theirs = tmp_path / "theirs.zarr"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not written by cohort"):
        simulate(model, pop, None, out=f"file://{theirs}", overwrite=True, **args)
    assert (theirs / "notes.txt").read_text() == "keep me"
    # cohort's store with a user's object added, at the top or inside an array: kept
    for rel in ("notes.txt", "conc/notes.txt", "conc/c/0/notes.txt"):
        (tmp_path / "url.zarr" / rel).write_text("keep me")
        with pytest.raises(OutputError, match=f"did not write \\({rel}\\)"):
            simulate(model, pop, None, out=url, overwrite=True, **args)
        assert (tmp_path / "url.zarr" / rel).read_text() == "keep me"
        (tmp_path / "url.zarr" / rel).unlink()
    simulate(model, pop, None, out=url, overwrite=True, **args)
    _same_store(tmp_path / "local.zarr", tmp_path / "url.zarr")
    for bad, why in [
        ("s3://key:secret@bucket/runs/x.zarr", "carries credentials"),
        ("file:///x.zarr", "top of a bucket"),
        (f"file://{tmp_path}/../x.zarr", "'..'"),
    ]:
        with pytest.raises(OutputError, match=why) as info:
            simulate(model, pop, None, out=bad, **args)
        assert "secret" not in str(info.value)


def test_cluster_writes_a_url_store(client, tmp_path):
    runner = CliRunner()
    base = ["simulate", "--model", "pk1_oral", "--n", "300", "--chunk-size", "50",
            "--t-end", "12"]  # fmt: skip
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "local.zarr")])
    assert res.exit_code == 0, res.output
    url = f"file://{tmp_path}/shared/url.zarr"
    res = runner.invoke(app, [*base, "--out", url, "--scheduler", client.scheduler.address])
    assert res.exit_code == 0, res.output
    _same_store(tmp_path / "local.zarr", tmp_path / "shared" / "url.zarr")


def test_trial_on_a_cluster_with_a_relative_store_path(client, tmp_path, monkeypatch):
    """`cohort trial --scheduler` with `-o` relative to the user's folder (the workers run
    elsewhere): the trial's simulation and its per-patient table equal a local run's."""
    import xarray as xr

    spec = str(
        Path(__file__).resolve().parents[1] / "experiments" / "theophylline_dose_ranging.toml"
    )
    monkeypatch.chdir(tmp_path)
    base = ["trial", spec, "--replicates", "10"]
    res = runner_invoke([*base, "-o", "local.zarr"])
    assert res.exit_code == 0, res.output
    res = runner_invoke([*base, "-o", "dask.zarr", "--scheduler", client.scheduler.address])
    assert res.exit_code == 0, res.output
    _same_store(tmp_path / "local.zarr", tmp_path / "dask.zarr")
    a, b = (xr.open_zarr(p, group="trial", consolidated=False, chunks=None)
            for p in ("local.zarr", "dask.zarr"))  # fmt: skip
    for name in a.data_vars:
        assert a[name].values.tobytes() == b[name].values.tobytes(), name


def runner_invoke(args):
    return CliRunner().invoke(app, args)


def _vancomycin_records(n: int):
    from cohort.dosing import Regimen
    from cohort.twin import TwinPrior
    from cohort.twin.synthetic import simulate_records

    prior = TwinPrior.from_spec(Path(__file__).parents[1] / "priors" / "vancomycin_goti2018.toml")
    reg = Regimen(amt=1000.0, ii=12.0, addl=3, duration=1.0)
    records, _ = simulate_records(prior, n, [2.5, 11.75, 26.5, 35.75], reg, seed=5)
    first = records[(records.EVID == 1) | records.TIME.isin([2.5, 11.75])]
    later = records[(records.EVID == 0) & records.TIME.isin([26.5, 35.75])]
    return prior, first, later


@pytest.mark.slow  # 28 s; the store acceptance tests above stay in the default suite
def test_twins_identified_on_a_cluster_match_a_local_run(client):
    """Twin identification as Dask tasks (blocks of patients per task): bit for bit the MAP
    and Laplace covariance of a local run, patients in their order, whether the cohort is
    one block or several."""
    from cohort.twin import Twins, blocks

    prior, first, _ = _vancomycin_records(12)
    local = Twins.identify(prior, first)
    remote = Twins.identify(prior, first, cluster=client)
    np.testing.assert_array_equal(remote.ids, local.ids)
    assert remote.ok.all() and local.ok.all()
    np.testing.assert_array_equal(remote.laplace.eta, local.laplace.eta)
    np.testing.assert_array_equal(remote.laplace.cov, local.laplace.cov)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blocks, "BLOCK", 5)  # three blocks of 4
        small_local = Twins.identify(prior, first)
        small_remote = Twins.identify(prior, first, cluster=client)
    np.testing.assert_array_equal(small_remote.laplace.eta, small_local.laplace.eta)
    np.testing.assert_array_equal(small_remote.laplace.cov, small_local.laplace.cov)
    np.testing.assert_allclose(small_local.laplace.eta, local.laplace.eta, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_twins_updated_on_a_cluster_match_a_local_update(client):
    from cohort.twin import Twins

    prior, first, later = _vancomycin_records(12)
    local = Twins.identify(prior, first)
    up_local, up_remote = local.update(later), local.update(later, cluster=client)
    np.testing.assert_array_equal(up_remote.laplace.eta, up_local.laplace.eta)
    assert len(up_remote.history) == 2


@pytest.mark.slow
def test_nuts_twins_on_a_cluster_sample_the_local_posterior(client):
    """NUTS twins on the workers: each patient's chains are seeded by its position and each
    block is the computation a local run does, so the draws are the local run's."""
    from cohort.twin import Twins

    prior, first, _ = _vancomycin_records(6)
    kw = dict(method="nuts", warmup=250, draws=500)
    local = Twins.identify(prior, first, **kw)
    remote = Twins.identify(prior, first, cluster=client, **kw)
    np.testing.assert_array_equal(remote.samples.eta, local.samples.eta)
    np.testing.assert_array_equal(remote.samples.rhat, local.samples.rhat)
    assert remote.samples.converged.all()


def _cgm_records(n: int):
    from cohort.models.glucose.patients import reference_patients
    from cohort.twin.cgm_synthetic import meal_plan, uva_days

    times, grams = meal_plan(n, 1, seed=4, jitter=30.0)
    table, _ = uva_days(reference_patients("adult").iloc[:n], times, grams, 1, seed=4)
    return table


@pytest.mark.slow  # 60-80 s: four identifications, two of them compiled on both workers
def test_cgm_twins_on_a_cluster_equal_a_local_run(client, tmp_path):
    """CGM twins in blocks (2 patients per block here: [0, 1], [2, 2]) as Dask tasks: bit for
    bit the MAP and Laplace covariance of the local run; the CLI's --scheduler gives the
    stored twins of the same computation."""
    from cohort.twin import CGMTwins, blocks, open_twins

    table = _cgm_records(3)
    csv = tmp_path / "cgm.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "cgm.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blocks, "BLOCK", 2)  # blocks are cut on the client
        local = CGMTwins.identify("priors/t1d_cgm_twin.toml", table, method="laplace")
        remote = CGMTwins.identify(
            "priors/t1d_cgm_twin.toml", table, method="laplace", cluster=client
        )
        res = CliRunner().invoke(
            app,
            ["twin", "cgm", str(csv), "--method", "laplace", "--out", str(out),
             "--scheduler", client.scheduler.address],
        )  # fmt: skip
    assert local.ok.all()
    np.testing.assert_array_equal(remote.posterior.eta, local.posterior.eta)
    np.testing.assert_array_equal(remote.posterior.cov, local.posterior.cov)
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(open_twins(out).posterior.eta, local.posterior.eta)


def test_clusters_that_cannot_run_cohort_are_refused_up_front(client, tmp_path, monkeypatch):
    """Found by an HPC user: a scheduler without workers, or with workers that cannot import
    cohort, made the run wait for ever without a word; an http:// address and a memory://
    store gave a traceback and a misleading 'not a complete store'."""
    import cohort.distributed.backend as backend

    with pytest.raises(DistributedError, match="is not a Dask scheduler address"):
        with connect("http://127.0.0.1:8799"):
            pass
    out = "memory://runs/x.zarr"
    with pytest.raises(DistributedError, match="in this process's memory"):
        simulate("pk1_oral", None, None, np.linspace(0, 1, 3), n=4, out=out, cluster=client)
    monkeypatch.setattr(backend, "WORKER_WAIT", 1.0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        with pytest.raises(DistributedError, match="no Dask worker joined"):
            with connect(empty):
                pass
    # workers whose cohort differs from this process's (here: this process's is changed)
    mine = dict(backend.environment(), cohort="9.9.9")
    monkeypatch.setattr(backend, "environment", lambda: mine)
    with pytest.raises(DistributedError, match=r"runs cohort '0.1.0', this process '9.9.9'"):
        with connect(client):
            pass
