"""Glucose validity: cohort's basal-bolus controller against simglucose 0.2.11's
``BBController`` on its 30 reference patients (one fixed day; reference outcomes in
``tests/data/simglucose_bb_reference*.csv``, see ``tests/data/SOURCES-glucose.md``), sampled
patients constrained to plausible outcomes, and ``cohort glucose`` as a user runs it."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cohort.cli import app
from cohort.glucose import fixed_scenario, run
from cohort.glucose.loop import ClosedLoopOptions
from cohort.glucose.patients import (
    SCREENING_DTYPE,
    reference_envelope,
    sample_plausible,
    standard_day,
)
from cohort.glucose.sensor import Sensor
from cohort.models.glucose import reference_patients, sample_patients
from cohort.store import open_result

DATA = Path(__file__).parent / "data"
REF = pd.read_csv(DATA / "simglucose_bb_reference.csv")
# simglucose's set-up: Dexcom CGM every 3 min (range 39-600 mg/dL), Insulet pump (no rounding)
DEXCOM = Sensor(high=600.0)


def _simglucose_day(noise: bool, seed: int = 1):
    df = reference_patients()
    assert df["Name"].tolist() == REF["Name"].tolist()
    sensor = DEXCOM if noise else Sensor(noise=False, high=600.0)
    options = ClosedLoopOptions(period=3.0, sensor=sensor)
    return run(df, fixed_scenario(30, 1), "basal-bolus", days=1, seed=seed, options=options)


def test_basal_bolus_reproduces_simglucose_noise_free():
    """Without sensor noise both simulators are deterministic: the same model, meals, therapy
    (Quest.csv CR/CF) and bolus timing must give the same day for every patient."""
    ds = _simglucose_day(noise=False)
    d_tir = ds.tir_70_180.values - REF["tir_noisefree"].to_numpy()
    d_tbr = ds.tbr_70.values - REF["tbr_noisefree"].to_numpy()
    d_mean = ds["mean"].values - REF["mean_bg_noisefree"].to_numpy()
    assert np.all(ds.status.values == 0)
    assert np.max(np.abs(d_tir)) < 1.0, d_tir  # measured 0.46
    assert np.max(np.abs(d_tbr)) < 0.5, d_tbr  # measured 0.31
    assert np.max(np.abs(d_mean)) < 1.0, d_mean  # mg/dL
    # the outcomes span the range that makes this a test: children go low, adults do not
    assert REF["tbr_noisefree"].max() > 30 and REF["tir_noisefree"].min() < 50


def test_basal_bolus_with_cgm_noise_within_tolerance():
    """With CGM noise (seed 1 each; the noise streams differ, so correction boluses differ):
    per-patient TIR within 5 points and TBR within 2 points of simglucose."""
    ds = _simglucose_day(noise=True)
    d_tir = ds.tir_70_180.values - REF["tir"].to_numpy()
    d_tbr = ds.tbr_70.values - REF["tbr"].to_numpy()
    assert np.max(np.abs(d_tir)) <= 5.0, d_tir
    assert np.max(np.abs(d_tbr)) <= 2.0, d_tbr


def test_basal_bolus_noise_averaged_over_seeds():
    """Sensor noise moves simglucose's own per-patient TIR by up to 5.8 points between seeds
    (``simglucose_bb_reference_seeds.csv``, seeds 1-6): averaged over six seeds each, every
    patient's TIR is within 5 points and TBR within 2 points of simglucose's average."""
    seeds = pd.read_csv(DATA / "simglucose_bb_reference_seeds.csv")
    theirs = seeds.groupby("Name")[["tir", "tbr"]].mean().loc[REF["Name"]]
    ours = [_simglucose_day(noise=True, seed=s) for s in range(1, 7)]
    tir = np.mean([d.tir_70_180.values for d in ours], axis=0)
    tbr = np.mean([d.tbr_70.values for d in ours], axis=0)
    assert np.max(np.abs(tir - theirs["tir"].to_numpy())) <= 5.0  # measured 1.81 (AR(1) noise 2.62)
    assert np.max(np.abs(tbr - theirs["tbr"].to_numpy())) <= 2.0  # measured 1.07 (AR(1) noise 1.72)


def test_sampled_patients_have_plausible_outcomes():
    env = reference_envelope("adult")
    ref = standard_day(reference_patients("adult"))
    # the envelope comes from float32 standard days (screening's): within 0.25 of float64
    assert env.tir_min == pytest.approx(ref.tir_70_180.values.min() - 5.0, abs=0.25)
    # unconstrained draws include patients unlike any reference patient ...
    raw = standard_day(sample_patients("adult", 64, seed=5))
    assert not env.accepts(raw).all()
    # ... the constrained sampler keeps only plausible ones, each independent of n
    pop = sample_plausible("adult", 64, seed=5)
    assert 0.2 < pop.attrs["acceptance"] < 1.0
    again = standard_day(pop, dtype=SCREENING_DTYPE)
    assert env.accepts(again).all()
    np.testing.assert_allclose(again.tir_70_180.values, pop["tir_70_180"].to_numpy())
    # screening in float32 reports each patient's outcomes as float64 does, to rounding
    exact = standard_day(pop)
    assert np.max(np.abs(exact.tir_70_180.values - pop["tir_70_180"].to_numpy())) <= 0.25
    assert np.max(np.abs(exact["mean"].values - pop["mean"].to_numpy())) <= 0.01
    pd.testing.assert_frame_equal(sample_plausible("adult", 9, seed=5), pop.iloc[:9])
    assert {"CR", "CF"} <= set(pop.columns) and (pop["CR"] > 0).all()


def test_sampler_keeps_each_patients_first_passing_candidate():
    """Rounds screen several candidates per patient (their padding slots take the next
    candidates): each patient must still get the first candidate, in attempt order, that is
    physiological and passes the envelope, as when candidates are tried one at a time."""
    from cohort.models.glucose.patients import sample_candidates

    n, seed, attempts = 8, 3, 32
    pop = sample_plausible("adult", n, seed=seed)  # 8 patients + 10 references: 3 chunks of 8
    frame, ok = sample_candidates("adult", n, seed, 0.1, attempts)
    rows = np.flatnonzero(ok.ravel())  # every physiological candidate of the 8 patients
    day = standard_day(frame.iloc[rows].reset_index(drop=True), chunk_size=8, dtype="float32")
    passes = np.zeros(n * attempts, bool)
    passes[rows] = reference_envelope("adult").accepts(day)
    first = np.argmax(passes.reshape(n, attempts), axis=1)
    np.testing.assert_array_equal(pop["attempt"].to_numpy(), first)
    assert (first > 0).any()  # some patient's first candidate failed: a later one was kept
    tried = sum(int(ok[i, : first[i] + 1].sum()) for i in range(n))
    assert pop.attrs["acceptance"] == pytest.approx(n / tried)


def test_sampler_runs_then_once_after_drawing_candidates():
    """``then`` (the CLI compiles its run's program there) runs once, on another thread,
    after the first candidates are drawn; the patients are those of a call without it."""
    import threading

    calls, called = [], threading.Event()

    def then():
        calls.append(threading.current_thread())
        called.set()

    pop = sample_plausible("adult", 8, seed=3, then=then)
    assert called.wait(10) and len(calls) == 1 and calls[0] is not threading.main_thread()
    pd.testing.assert_frame_equal(pop, sample_plausible("adult", 8, seed=3))


def test_candidates_drawn_as_needed_equal_those_drawn_up_front():
    """The samplers draw a patient's attempts a few at a time, as they need them: each
    attempt is the same draw as when every attempt of every patient is drawn up front."""
    from cohort.models.glucose.patients import Candidates, sample_candidates

    n, attempts = 20, 12
    frame, ok = sample_candidates("child", n, 4, 0.1, attempts)
    lazy = Candidates("child", n, 4, 0.1, attempts)
    lazy.extend(np.arange(n))
    lazy.extend(np.array([3, 17]))  # two patients need more attempts
    assert lazy.drawn.tolist() == [8 if i in (3, 17) else 4 for i in range(n)]
    for i, a in ((0, 0), (3, 6), (17, 7), (19, 3)):
        row = lazy.frame.iloc[lazy.row[i, a]]
        pd.testing.assert_series_equal(row, frame.iloc[i * attempts + a], check_names=False)
        assert lazy.ok[i, a] == ok[i, a]
    assert not lazy.ok[0, 4:].any()  # not drawn yet


def test_cli_glucose_samples_runs_and_resumes(tmp_path):
    """`cohort glucose` with a user's defaults (sampled plausible adults, random meals, CGM
    noise, 5-min basal-bolus) writes a complete store; --resume on it changes nothing."""
    runner = CliRunner()
    out = tmp_path / "g.zarr"
    res = runner.invoke(app, ["glucose", "--n", "12", "--days", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "TIR 70–180 %" in res.output
    ds = open_result(out)
    assert ds.sizes["patient"] == 12 and bool(ds.chunk_done.all())
    assert np.all(ds.status.values == 0) and np.all(np.isfinite(ds.tir_70_180.values))
    before = ds.Gsub.values.copy()
    # the CLI compiles the run's program while it samples the patients: the same values as
    # the Python API given the same patients and options
    options = ClosedLoopOptions(period=5.0, sensor=Sensor(), pump_increment=0.05)
    ref = run(sample_plausible("adult", 12, seed=0), "random", "basal-bolus", options=options)
    for name in ("Gsub", "CGM", "insulin"):
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)
    res = runner.invoke(app, ["glucose", "--n", "12", "--days", "1", "-o", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(open_result(out).Gsub.values, before)
    res = runner.invoke(app, ["glucose", "--n", "12", "--days", "1", "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
