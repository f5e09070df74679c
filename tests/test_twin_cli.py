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
    assert pta.shape == (6, 1) and np.all((pta.to_numpy() >= 0) & (pta.to_numpy() <= 1))
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
    assert np.all(dose["pta"].to_numpy() >= pta.iloc[:, 0].to_numpy() - 0.02)


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
    res = runner.invoke(app, ["twin", "fit", "day0.csv", "--prior", "nowhere.toml", "-o", "n.zarr"])
    assert res.exit_code == 2 and "nowhere.toml" in flat(res)


@pytest.mark.slow
def test_mipd_twin_arm_beats_label_dosing(tmp_path):
    res = runner.invoke(app, ["twin", "mipd", "--n", "100", "--report", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "m" / "mipd.csv")
    day2 = table[table.day == 2].set_index("arm")["in_target"]
    assert day2["twin"] > day2["label"] + 0.15
