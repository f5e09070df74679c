"""`cohort twin` as a user runs it: fit → update → forecast → dose on a CSV, and the MIPD
study; bad records exit 2 with a message naming the record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cohort.cli import app
from cohort.twin import TwinPrior, open_twins

runner = CliRunner()
PRIOR = Path(__file__).parent.parent / "priors" / "vancomycin_goti2018.toml"
REGIMEN = ["--start", "48", "--ii", "12", "--addl", "3", "--duration", "1"]  # day 2 on


def flat(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    from test_twin import simulate_tdm

    d = tmp_path_factory.mktemp("twin_cli")
    records, _ = simulate_tdm(TwinPrior.from_spec(PRIOR), 6, 8, [11.5, 13.0, 35.5, 37.0])
    records[records.TIME <= 13.0].to_csv(d / "day0.csv", index=False)
    records[records.TIME > 13.0].drop(columns=["WT", "CRCL", "DIAL"]).to_csv(
        d / "day1.csv", index=False
    )
    return d


def test_fit_update_forecast_dose(csvs, monkeypatch):
    monkeypatch.chdir(csvs)
    res = runner.invoke(app, ["twin", "fit", "day0.csv", "--prior", str(PRIOR), "--report", "r0"])
    assert res.exit_code == 0, res.output
    assert "6 twins (laplace)" in flat(res) and Path("twins.zarr").is_dir()
    assert (csvs / "r0" / "shrinkage.png").stat().st_size > 5_000
    res = runner.invoke(app, ["twin", "update", "twins.zarr", "day1.csv"])
    assert res.exit_code == 0, res.output
    assert "update 1 stored" in flat(res)
    tw = open_twins("twins.zarr")
    assert tw.data.n_observations == 24 and len(tw.history) == 2
    assert open_twins("twins.zarr", update=0).data.n_observations == 12
    res = runner.invoke(app, ["info", "twins.zarr"])
    assert res.exit_code == 0, res.output
    out = flat(res)
    assert "twins of 6 patient(s), model pk2_iv" in out and "usable posteriors: 6/6" in out
    assert "│ identify │ 12 observations" in out and "│ update │ 24 observations" in out
    target = "auc:conc:72:96:400:600"
    res = runner.invoke(
        app,
        [
            "twin",
            "forecast",
            "twins.zarr",
            "--amt",
            "1000",
            *REGIMEN,
            "--target",
            target,
            "--draws",
            "200",
        ],
    )
    assert res.exit_code == 0, res.output
    fc = pd.read_csv(csvs / "twin_forecast" / "forecast.csv")
    assert {"conc", "conc_obs", "quantile", "time"} <= set(fc.columns)
    pta = pd.read_csv(csvs / "twin_forecast" / "attainment.csv", index_col=0)
    assert pta.shape == (6, 4)
    p = pta.filter(like="P(").to_numpy()
    assert p.shape == (6, 1) and np.all((p >= 0) & (p <= 1))
    # the predicted AUC beside its attainment, in mg/L·h, its interval around its median
    mid, lo, hi = (pta.filter(like=k).to_numpy()[:, 0] for k in ("median (mg/L·h)", "5 %", "95 %"))
    assert np.all((lo < mid) & (mid < hi)) and np.all((mid > 50) & (mid < 5000))
    res = runner.invoke(
        app,
        [
            "twin",
            "dose",
            "twins.zarr",
            "--target",
            target,
            *REGIMEN,
            "--max-dose",
            "3000",
            "--strength",
            "250",
            "--draws",
            "200",
        ],
    )
    assert res.exit_code == 0, res.output
    dose = pd.read_csv(csvs / "twin_dose" / "dose.csv", index_col=0)
    assert dose["agree"].all() and set(dose["dose"]) <= set(np.arange(250.0, 3001.0, 250.0))
    # the recommended dose attains the target at least as often as 1000 mg
    assert np.all(dose["pta"].to_numpy() >= p[:, 0] - 0.02)
    # one patient (--id), the same recommendation; a dose range too narrow is said per
    # patient and a target after the planned doses is warned about
    one = dose.index[2]
    res = runner.invoke(
        app,
        ["twin", "dose", "twins.zarr", "--target", "auc:conc:150:174:400:600", *REGIMEN,
         "--max-dose", "500", "--min-dose", "250", "--strength", "250", "--draws", "200",
         "--id", str(one), "--report", "d1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    d1 = pd.read_csv(csvs / "d1" / "dose.csv", index_col=0)
    assert list(d1.index) == [one] and d1["dose"].iloc[0] in (250.0, 500.0)
    assert "more than one dosing interval after the last planned dose" in flat(res)
    assert d1["bound"].iloc[0] in ("max dose", "min dose")
    for args, text in (
        (["forecast", "twins.zarr", "--draws", "0"], "--draws must be >= 2"),
        (["forecast", "twins.zarr", "--id", "99"], "--id 99: no such patient"),
    ):
        res = runner.invoke(app, ["twin", *args, "--report", "bad"])
        assert res.exit_code == 2 and text in flat(res), res.output
        assert not (csvs / "bad").exists()  # a failed command leaves no report folder


def test_implausible_records_and_changed_covariates_are_warned(csvs, tmp_path, monkeypatch):
    """Accepted (a real patient may lie outside a design range) but said: a weight in grams,
    a negative concentration, the parameter estimates they lead to, and a covariate that
    changes in an update (twins use baseline covariates)."""
    monkeypatch.chdir(tmp_path)
    day0 = pd.read_csv(csvs / "day0.csv")
    day0.loc[day0.ID == 1, "WT"] *= 1000.0
    day0.loc[(day0.ID == 2) & (day0.EVID == 0), "DV"] = -2.0
    day0.to_csv("grams.csv", index=False)
    res = runner.invoke(app, ["twin", "fit", "grams.csv", "--prior", str(PRIOR), "-o", "g.zarr"])
    assert res.exit_code == 0, res.output
    out = flat(res)
    assert "ID 1: WT" in out and "outside the prior's range 40-180" in out
    assert "outside the prior's plausible range" in out and "negative concentration" in out
    res = runner.invoke(app, ["twin", "fit", str(csvs / "day0.csv"), "--prior", str(PRIOR)])
    assert res.exit_code == 0 and "warning" not in res.output
    day1 = pd.read_csv(csvs / "day1.csv").merge(day0[["ID", "CRCL"]].drop_duplicates("ID"), on="ID")
    day1["CRCL"] = day1["CRCL"] / 4.0
    day1.to_csv("day1_crcl.csv", index=False)
    res = runner.invoke(app, ["twin", "update", "twins.zarr", "day1_crcl.csv"])
    assert res.exit_code == 0, res.output
    assert "twins use baseline covariates" in flat(res) and "CRCL" in flat(res)


def test_update_with_bad_records_exits_2_and_keeps_the_store(csvs, monkeypatch):
    monkeypatch.chdir(csvs)
    store = "bad.zarr"
    assert (
        runner.invoke(
            app, ["twin", "fit", "day0.csv", "--prior", str(PRIOR), "--out", store]
        ).exit_code
        == 0
    )
    bad = pd.read_csv("day1.csv")
    bad.loc[0, "TIME"] = 2.0
    bad.to_csv("late.csv", index=False)
    res = runner.invoke(app, ["twin", "update", store, "late.csv"])
    assert res.exit_code == 2
    assert "update record 1 (ID 1, TIME 2): earlier than the last record" in flat(res)
    assert len(open_twins(store).history) == 1
    res = runner.invoke(app, ["twin", "forecast", store, "--amt", "1000", "--addl", "3"])
    assert res.exit_code == 2 and "--ii must be > 0 with --addl 3" in flat(res)
    res = runner.invoke(app, ["twin", "forecast", store, "--amt", "1000", "--start", "1"])
    assert res.exit_code == 2 and "is at TIME 1, before its last record" in flat(res)
    res = runner.invoke(app, ["twin", "fit", "day0.csv", "--prior", "nowhere.toml", "-o", "n.zarr"])
    assert res.exit_code == 2 and "nowhere.toml" in flat(res)
    # an update running elsewhere holds the store from reading to saving: a second one is
    # refused before it reads (two at once each read the same state and the later save
    # dropped the earlier's records; a probe)
    import json
    import os
    import socket

    from cohort.store.lock import lock_path

    held = {"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}
    lock_path(store).write_text(json.dumps(held))
    try:
        res = runner.invoke(app, ["twin", "update", store, "day1.csv"])
    finally:
        lock_path(store).unlink()
    assert res.exit_code == 2 and f"is being written by process {os.getppid()}" in flat(res)
    assert len(open_twins(store).history) == 1


@pytest.mark.slow
def test_mipd_twin_arm_beats_label_dosing(tmp_path):
    res = runner.invoke(app, ["twin", "mipd", "--n", "100", "--report", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "m" / "mipd.csv")
    day2 = table[table.day == 2].set_index("arm")["in_target"]
    assert day2["twin"] > day2["label"] + 0.15


def test_example_writes_records_the_twin_commands_take(tmp_path, monkeypatch):
    """`cohort twin example` with its defaults: vancomycin TDM split into day 0 (doses and
    the two day-0 samples) and day 1 (the two day-1 samples), the true parameters, and two
    days of CGM records that CGMTwins reads; a second run refuses to replace them unless
    --overwrite, and never writes into a folder cohort did not make."""
    from cohort.twin import cgm_data
    from cohort.twin.problem import read_records

    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["twin", "example"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "twin_example"
    day0, day1 = pd.read_csv(folder / "day0.csv"), pd.read_csv(folder / "day1.csv")
    truth = pd.read_csv(folder / "truth.csv")
    assert len(truth) == 20 and set(truth.columns) >= {"ID", "CL", "V1"}
    assert sorted(day0.loc[day0.EVID == 0, "TIME"].unique()) == [2.5, 11.75]
    assert sorted(day1["TIME"].unique()) == [26.5, 35.75] and (day1.EVID == 0).all()
    assert set(day0.ID) == set(day1.ID) == set(truth.ID)
    prior = TwinPrior.from_spec(PRIOR)
    assert read_records(day0, prior).n_subjects == 20
    c1 = cgm_data.read_cgm(pd.read_csv(folder / "cgm_day1.csv"))
    c2 = pd.read_csv(folder / "cgm_day2.csv")
    assert c1["TIME"].max() < 1440 <= c2["TIME"].min() and c1["ID"].nunique() == 3
    assert c1["CHO"].sum() > 0 and c1["BOLUS"].sum() > 0 and np.isfinite(c1["CGM"]).all()
    again = runner.invoke(app, ["twin", "example"])
    assert again.exit_code != 0 and "overwrite" in again.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user's")
    res = runner.invoke(app, ["twin", "example", "mine"])
    assert res.exit_code != 0 and (tmp_path / "mine" / "notes.txt").read_text() == "user's"


def test_fit_rerun_after_a_crash_reuses_the_finished_blocks(csvs, monkeypatch):
    """`cohort twin fit` killed in its second block of patients (2 blocks of 3 here) leaves the
    first in k.blocks.zarr; the same command again says so, computes only the second block,
    saves the twins and removes the checkpoint."""
    from cohort.twin import blocks, twins

    monkeypatch.chdir(csvs)
    monkeypatch.setattr(blocks, "BLOCK", 4)
    real, calls = twins._compute, []

    def crash_once(prior, bm, eta0, method, opts, previous, index):
        calls.append(int(index[0]))
        if calls == [0, 3]:
            raise KeyboardInterrupt("killed")
        return real(prior, bm, eta0, method, opts, previous, index)

    monkeypatch.setattr(twins, "_compute", crash_once)
    argv = ["twin", "fit", "day0.csv", "--prior", str(PRIOR), "-o", "k.zarr"]
    res = runner.invoke(app, argv)
    assert res.exit_code != 0
    assert Path("k.blocks.zarr").exists() and not Path("k.zarr").exists()
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert "interrupted run" in flat(res) and calls == [0, 3, 3]
    assert not Path("k.blocks.zarr").exists()
    assert open_twins("k.zarr").n == 6


def test_fit_killed_while_saving_keeps_every_block(csvs, monkeypatch):
    """The checkpoint outlives the identification until the twin store is saved: a crash in
    the save leaves every block in s.blocks.zarr, and the same command again computes none,
    saves the twins and only then removes the checkpoint. The API's own checkpoint (a path)
    is still removed when the twins are returned."""
    from cohort.twin import Twins, blocks, twins

    monkeypatch.chdir(csvs)
    monkeypatch.setattr(blocks, "BLOCK", 4)
    real_compute, calls = twins._compute, []

    def counted(prior, bm, eta0, method, opts, previous, index):
        calls.append(int(index[0]))
        return real_compute(prior, bm, eta0, method, opts, previous, index)

    monkeypatch.setattr(twins, "_compute", counted)
    real_save = Twins.save

    def killed(self, *a, **kw):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(Twins, "save", killed)
    argv = ["twin", "fit", "day0.csv", "--prior", str(PRIOR), "-o", "s.zarr"]
    assert runner.invoke(app, argv).exit_code != 0
    assert Path("s.blocks.zarr").exists() and calls == [0, 3]
    monkeypatch.setattr(Twins, "save", real_save)
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert "interrupted run" in flat(res) and calls == [0, 3]  # nothing computed again
    assert not Path("s.blocks.zarr").exists() and open_twins("s.zarr").n == 6
    Twins.identify(str(PRIOR), "day0.csv", method="laplace", checkpoint="api.blocks.zarr")
    assert not Path("api.blocks.zarr").exists()


def test_fit_killed_inside_its_first_save_reruns_without_overwrite(csvs, monkeypatch):
    """Killed after the store's layout was created but before its first commit, the twin
    store holds no result: the same command again writes it (it was refused as an existing
    --out), reusing the finished blocks; a committed store still needs --overwrite."""
    from cohort.twin import store

    monkeypatch.chdir(csvs)
    real = store._datasets

    def killed(twins):
        raise KeyboardInterrupt("killed inside the save")

    monkeypatch.setattr(store, "_datasets", killed)
    argv = ["twin", "fit", "day0.csv", "--prior", str(PRIOR), "-o", "f.zarr"]
    assert runner.invoke(app, argv).exit_code != 0
    assert store.interrupted_first_save("f.zarr") and Path("f.blocks.zarr").exists()
    monkeypatch.setattr(store, "_datasets", real)
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert "interrupted run" in flat(res) and not Path("f.blocks.zarr").exists()
    assert open_twins("f.zarr").n == 6 and not store.interrupted_first_save("f.zarr")
    res = runner.invoke(app, argv)
    assert res.exit_code == 2 and "overwrite" in flat(res)


def test_a_twin_store_path_without_zarr_is_refused_before_any_work(csvs, monkeypatch):
    monkeypatch.chdir(csvs)
    res = runner.invoke(app, ["twin", "fit", "day0.csv", "--prior", str(PRIOR), "-o", "t.out"])
    assert res.exit_code == 2 and ".zarr directory" in flat(res)
    res = runner.invoke(app, ["twin", "cgm", "day0.csv", "-o", "c.out"])
    assert res.exit_code == 2 and ".zarr directory" in flat(res)
    assert not Path("t.out").exists() and not Path("c.out").exists()
