"""`cohort twin cgm` as a user runs it: identify from a CSV, replay with altered therapy,
update with the next day; bad records exit with a message naming the row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cohort.cli import app
from cohort.twin import CGMTwins, open_twins

runner = CliRunner()


def flat(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    from test_cgm_twin import _truth_records

    d = tmp_path_factory.mktemp("cgm_cli")
    df = _truth_records(seed=11, days=2)
    df[df.TIME < 1440].to_csv(d / "day1.csv", index=False)
    df[df.TIME >= 1440].drop(columns=["BW", "BASAL"]).to_csv(d / "day2.csv", index=False)
    return d


def test_packaged_cgm_prior_is_the_priors_spec():
    root = Path(__file__).parent.parent
    packaged = root / "cohort" / "twin" / "data" / "t1d_cgm_twin.toml"
    assert packaged.read_bytes() == (root / "priors" / "t1d_cgm_twin.toml").read_bytes()


def test_cgm_identify_replay_update(csvs, monkeypatch):
    monkeypatch.chdir(csvs)
    res = runner.invoke(app, ["twin", "cgm", "day1.csv", "--method", "laplace", "--report", "r"])
    assert res.exit_code == 0, res.output
    out = flat(res)
    assert "1 twins (laplace)" in out and "with bolus x0.8, basal x1.2" in out
    assert float(out.split("fit MARD to the CGM readings: median ")[1].split()[0]) < 5
    replay = pd.read_csv(csvs / "r" / "replay.csv")
    lived = replay[replay.therapy == "as lived"].iloc[0]
    altered = replay[replay.therapy != "as lived"].iloc[0]
    assert lived.mean_q05 <= lived.mean_q50 <= lived.mean_q95
    assert 60 < lived.mean_q50 < 300 and altered.mean_q50 != lived.mean_q50
    assert (csvs / "r" / "replay.png").stat().st_size > 10_000
    ind = pd.read_csv(csvs / "r" / "individual.csv")
    assert ind.loc[0, "mard"] < 5 and bool(ind.loc[0, "ok"])
    res = runner.invoke(
        app,
        ["twin", "update", "cgm_twins.zarr", "day2.csv", "--report", "r2", "--basal-scale", "1.1"],
    )
    assert res.exit_code == 0, res.output
    assert "update 1 stored" in flat(res) and "with bolus x0.8, basal x1.1" in flat(res)
    # the update's report replays both days (it wrote nothing before)
    both = pd.read_csv(csvs / "r2" / "replay.csv")
    assert set(both.therapy) == {"as lived", "bolus x0.8, basal x1.1"}
    assert (csvs / "r2" / "replay.png").stat().st_size > 10_000
    tw = open_twins("cgm_twins.zarr")
    assert isinstance(tw, CGMTwins) and len(tw.records) == 2 * 288 and len(tw.history) == 2
    first = open_twins("cgm_twins.zarr", update=0)
    assert len(first.records) == 288
    # reopened twins replay exactly as the ones that were saved
    again = tw.replay(n_draws=20)["mean"].values
    np.testing.assert_allclose(again, open_twins("cgm_twins.zarr").replay(n_draws=20)["mean"])
    # the day-1 twin (update 0) forecasts day 2 from its meals and insulin
    args = ["--at-update", "0", "--records", "day2.csv", "--later", "day2.csv", "--report", "fc"]
    res = runner.invoke(app, ["twin", "forecast", "cgm_twins.zarr", *args])
    assert res.exit_code == 0, res.output
    assert "forecast of 1 CGM twins (500 draws)" in flat(res)
    fc = pd.read_csv(csvs / "fc" / "forecast.csv")
    # from the first grid time after the last day-1 reading to one step after the plan's last row
    assert fc.time.min() == 1440 and fc.time.max() == 2880
    day2 = pd.read_csv("day2.csv").merge(fc, left_on="TIME", right_on="time")
    inside = (day2.cgm_q05 <= day2.CGM) & (day2.CGM <= day2.cgm_q95)
    assert len(day2) == 288 and inside.mean() > 0.8
    assert fc.p_below_70.between(0, 1).all() and (csvs / "fc" / "forecast.png").is_file()
    # said in one line, nothing left behind: CGM twins need --records, take no PK regimen,
    # and `dose` is for PK twins
    for args, said in (
        (["forecast"], "give --records"),
        (["forecast", "--records", "day2.csv", "--amt", "5"], "--amt: for PK twins"),
        (["dose", "--target", "min:glucose:0:24:70", "--start", "0", "--max-dose", "10"],
         "holds CGM (type 1 diabetes) twins"),
    ):  # fmt: skip
        res = runner.invoke(app, ["twin", *args, "cgm_twins.zarr", "--report", "fc2"])
        assert res.exit_code == 2 and said in flat(res), res.output
        assert "Traceback" not in res.output and not (csvs / "fc2").exists()


def test_cgm_bad_records_exit_with_the_row(csvs, monkeypatch):
    monkeypatch.chdir(csvs)
    df = pd.read_csv("day1.csv")
    df.loc[10, "BOLUS"] = -2
    df.to_csv("bad.csv", index=False)
    res = runner.invoke(app, ["twin", "cgm", "bad.csv", "--method", "laplace", "-o", "b.zarr"])
    assert res.exit_code != 0
    assert "row 11" in flat(res) and "BOLUS" in flat(res)
    assert not Path("b.zarr").exists()


@pytest.mark.slow
def test_cgm_cli_defaults_give_converged_nuts_twins(csvs, monkeypatch):
    """The command a user types, with its defaults (NUTS): converged chains, a fit MARD."""
    monkeypatch.chdir(csvs)
    res = runner.invoke(app, ["twin", "cgm", "day1.csv", "-o", "nuts.zarr"])
    assert res.exit_code == 0, res.output
    assert "converged (R-hat < 1.01, ESS > 400, <= 1 % divergent): 1/1" in flat(res)
