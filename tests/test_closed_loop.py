"""Closed-loop glucose cohorts: agreement with the fast path, controller efficacy, seeding,
batch independence, scenarios and the zarr round trip."""

import dataclasses
import importlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cohort
from cohort.glucose import controllers, scenarios
from cohort.glucose.loop import ClosedLoopOptions
from cohort.glucose.sensor import Sensor
from cohort.glucose.simulate import run
from cohort.models.glucose import combine, insulin_records, meal_records, reference_patients
from cohort.store import StoreError, open_result

DATA = Path(__file__).parent / "data"
SIMGLUCOSE_POINTS = {200: 127.24, 300: 78.47, 500: 61.38}  # DESIGN §6, adolescent#001
NOISY = ClosedLoopOptions(sensor=Sensor(delay=5.0), pump_increment=0.05)
N = 6  # one batch shape for most tests: a single compilation per controller


@pytest.fixture(scope="module")
def adolescents():
    return reference_patients("adolescent").iloc[:N].reset_index(drop=True)


@pytest.fixture(scope="module")
def meal_day(adolescents):
    """Two days of seeded random meals (skipped meals, jitter) for the six patients."""
    return scenarios.random_scenario(N, 2, seed=7)


@pytest.fixture(scope="module")
def open_loop_run(adolescents, meal_day):
    return run(adolescents, meal_day, controllers.OpenLoop(), days=2)


def _simglucose_scenario(options):
    """adolescent#001, 80 g at 100 min with an 80/6 U bolus in that minute (DESIGN §6)."""
    df = reference_patients().iloc[[0]]
    sc = scenarios.single_meal(1, 100.0, 80.0, 80.0 / 6.0)
    return df, run(df, sc, "open-loop", options=options, out_dtype="float64")


def test_overlapping_meals_queue_as_in_simglucose():
    """A meal that starts while another is eaten extends that bout (simglucose eats at most
    5 g/min): 100 g at 120 min and 30 g at 130 min. Summing the two eating rates put child#003
    24.5 mg/dL above simglucose; the engine's meal records queue the same way."""
    ref = pd.read_csv(DATA / "simglucose_child003_overlapping_meals.csv", comment="#")
    df = reference_patients().query("Name == 'child#003'").reset_index(drop=True)
    sc = scenarios.MealScenario(
        start=np.array([[130.0, 120.0]]),  # in any order
        grams=np.array([[30.0, 100.0]]),
        eat_rate=np.full((1, 2), 5.0),
        announced=np.zeros((1, 2), bool),
        bolus=np.zeros((1, 2)),
        profile=np.zeros(1),
    )
    ds = run(df, sc, "open-loop", days=0.5, out_dtype="float64")
    gsub = ds.Gsub.sel(time=ref["time"].to_numpy()).values[0]
    assert np.max(np.abs(gsub - ref["Gsub"].to_numpy())) < 0.01
    records = meal_records([130.0, 120.0], [30.0, 100.0])
    assert records[["TIME", "AMT", "RATE"]].values.tolist() == [[120.0, 130000.0, 5000.0]]
    times = ref["time"].to_numpy(float)
    fast = cohort.simulate("uva_padova", df, records, times, method="fast", outputs=["Gsub"])
    assert np.max(np.abs(fast.Gsub.values[0] - ref["Gsub"].to_numpy())) < 0.05


def test_queued_meals_merge_only_meals_that_start_during_a_bout():
    from cohort.models.glucose import queued_meals

    # 12 g eats 5, 5, 2 in minutes 0-2: a meal at minute 2 joins the bout, one at 3 does not
    assert queued_meals([0.0, 2.0], [12.0, 10.0]).tolist() == [22.0, 0.0]
    assert queued_meals([0.0, 3.0], [12.0, 10.0]).tolist() == [12.0, 10.0]
    # rows are patients; a chain of overlaps joins the first meal's bout; padding stays
    got = queued_meals([[3.0, 0.0, 5.0, np.inf], [0.0, 100.0, 200.0, np.inf]],
                       [[10.0, 20.0, 5.0, 0.0], [10.0, 10.0, 10.0, 0.0]])  # fmt: skip
    assert got.tolist() == [[0.0, 35.0, 0.0, 0.0], [10.0, 10.0, 10.0, 0.0]]


def test_open_loop_equals_fast_path_simglucose_scenario():
    df, ds = _simglucose_scenario(ClosedLoopOptions())
    dosing = combine(meal_records(100.0, 80.0), insulin_records(100.0, 80.0 / 6.0))
    times = ds.time.values
    ref = cohort.simulate("uva_padova", df, dosing, times, method="fast", outputs=["Gsub"])
    assert ds.status.values.tolist() == [0]
    # the fast path steps the continuous meal memory (5e-3 from simglucose), the closed loop
    # simglucose's discrete one (1e-4)
    assert np.max(np.abs(ds.Gsub.values - ref.Gsub.values)) < 0.01
    basal = df["u2ss"].iloc[0] * df["BW"].iloc[0] / 6000.0
    assert float(ds.insulin.sel(time=100.0)[0]) == pytest.approx(basal + 80 / 6 / 5, rel=1e-12)


def test_discrete_meal_memory_tracks_simglucose():
    """The closed loop follows simglucose's per-minute meal bookkeeping."""
    _, ds = _simglucose_scenario(ClosedLoopOptions())
    ref = pd.read_csv(DATA / "simglucose_adolescent001_meal80g.csv", comment="#")
    ref = ref[ref["time"] % 5 == 0]
    ours = ds.Gsub.sel(time=ref["time"].to_numpy()).values[0]
    assert np.max(np.abs(ours - ref["Gsub"].to_numpy())) < 1e-4  # measured 3e-6; fast path 5e-3
    for minute, expected in SIMGLUCOSE_POINTS.items():
        assert float(ds.Gsub.sel(time=minute)[0]) == pytest.approx(expected, abs=0.5)


def test_pid_reduces_hyperglycaemia(adolescents, meal_day, open_loop_run):
    pid = run(adolescents, meal_day, controllers.PID(), days=2)
    assert (pid.status.values == 0).all()
    assert float(pid.tar_180.mean()) < float(open_loop_run.tar_180.mean()) - 20.0
    assert float(pid["mean"].mean()) < float(open_loop_run["mean"].mean())


def test_basal_bolus_and_hybrid_beat_open_loop(adolescents, meal_day, open_loop_run):
    bb = run(adolescents, meal_day, "basal-bolus", days=2)
    hybrid = run(adolescents, meal_day, "hybrid", days=2)
    tir_open = float(open_loop_run.tir_70_180.mean())
    assert float(bb.tir_70_180.mean()) > tir_open + 20.0
    assert float(hybrid.tir_70_180.mean()) > tir_open + 20.0
    # Boluses follow announced meals as in simglucose: insulin above basal only in the period
    # after the one in which a meal starts; with prebolus=True, in that period itself.
    basal = (adolescents["u2ss"] * adolescents["BW"] / 6000.0).to_numpy()[:, None]
    pre = run(adolescents, meal_day, controllers.BasalBolus(prebolus=True), days=2)
    t = bb.time.values
    for ds, lag in ((bb, 5.0), (pre, 0.0)):
        above = ds.insulin.values > basal * (1 + 1e-6)
        meal_periods = np.zeros_like(above)
        for i in range(N):
            for s in meal_day.start[i][np.isfinite(meal_day.start[i])]:
                meal_periods[i, (t - lag <= s) & (s < t - lag + 5.0)] = True
        assert np.array_equal(above, meal_periods)


def test_reproducible_by_seed_and_independent_of_batch(adolescents, meal_day):
    a = run(adolescents, meal_day, "pid", days=2, seed=3, options=NOISY)
    b = run(adolescents, meal_day, "pid", days=2, seed=3, options=NOISY)
    c = run(adolescents, meal_day, "pid", days=2, seed=4, options=NOISY)
    np.testing.assert_array_equal(a.CGM.values, b.CGM.values)
    assert not np.allclose(a.CGM.values, c.CGM.values)
    noise = a.CGM.values - a.Gsub.values
    assert 3.0 < np.std(noise) < 30.0  # Johnson-SU sensor noise of a few mg/dL
    # pump quantisation: whole 0.05 U per 5-min period
    units = a.insulin.values[:, :-1] * 5.0 / 0.05
    np.testing.assert_allclose(units, np.round(units), atol=1e-3)
    # Chunks of 4 (second chunk padded) give every patient the same trajectory and noise.
    # Bit for bit: the chunk loop is the engine's, and nothing couples patients in a batch.
    for chunk in (4, 3):
        d = run(adolescents, meal_day, "pid", days=2, seed=3, options=NOISY, chunk_size=chunk)
        for name in ("CGM", "Gsub", "insulin", "tir_70_180", "lbgi", "status"):
            np.testing.assert_array_equal(d[name].values, a[name].values, err_msg=name)


def test_float32_reads_the_same_sensor_noise_as_float64(adolescents, meal_day):
    """The same seed drew other noise in float32 (up to 96 mg/dL apart, TIR 7 points; a
    probe): the normals are drawn in float64 and rounded, open loop so the comparison is the
    noise's alone."""
    opts = dataclasses.replace(NOISY, pump_increment=0.0)
    runs = [
        run(adolescents, meal_day, "open-loop", days=2, seed=3, options=opts, dtype=d)
        for d in ("float64", "float32")
    ]
    noise = [r.CGM.values - r.Gsub.values for r in runs]
    assert np.std(noise[0]) > 3.0
    np.testing.assert_allclose(noise[1], noise[0], atol=0.05)


def test_failed_patients_are_said_by_parameter():
    """A body weight of 400 (pounds?) gave status 5 and NaN metrics without a word."""
    df = reference_patients("adult").iloc[:2].copy()
    df.loc[df.index[0], "BW"] = 400.0
    with pytest.warns(cohort.PatientsFailedWarning, match=r"BW outside \[5, 300\] kg"):
        ds = run(df, "fixed", "open-loop", days=0.25)
    assert ds.status.values.tolist() == [5, 0]


def test_random_scenario_is_seeded_per_patient():
    big = scenarios.random_scenario(50, 3, seed=1)
    small = scenarios.random_scenario(5, 3, seed=1)
    k = small.start.shape[1]
    np.testing.assert_array_equal(big.start[:5, :k][np.isfinite(small.start)],
                                  small.start[np.isfinite(small.start)])  # fmt: skip
    starts = big.start[np.isfinite(big.start)]
    assert np.all(starts == np.round(starts)) and starts.max() < 3 * 1440
    eaten = np.isfinite(big.start).sum(axis=1)
    assert eaten.min() < eaten.max()  # meals are skipped at random
    assert not np.array_equal(big.start, scenarios.random_scenario(50, 3, seed=2).start)


def test_random_scenario_draws_as_simglucose_does():
    """simglucose 0.2.11's RandomScenario: snack times SD 30 min (15 here before a probe),
    whole grams. The afternoon snack (15:00, window 14-16 h) over 20,000 patient-days: the SD
    of a normal(900, 30) truncated to [840, 960] is 26.4 min (15-min SD: 15.0)."""
    sc = scenarios.random_scenario(20_000, 1, seed=3)
    snack = (sc.start >= 840) & (sc.start <= 960) & (sc.grams < 40)
    t = sc.start[snack]
    assert np.std(t) == pytest.approx(26.4, abs=1.0)
    grams = sc.grams[np.isfinite(sc.start)]
    assert np.all(grams == np.round(grams))


def test_profile_scenario_equals_schedule():
    """A cohort-level rate profile of 5 g/min for 10 min is the same as a 50 g meal."""
    df = reference_patients().iloc[[0, 0]]
    profile = np.zeros(400)
    profile[60:70] = 5.0
    sc_profile = scenarios.profile_scenario(2, profile)
    # the same array shapes for both runs: one compilation
    sc_meal = dataclasses.replace(scenarios.single_meal(2, 60.0, 50.0), profile=0 * profile)
    a = run(df, sc_profile, "open-loop", days=0.25, out_dtype="float64")
    b = run(df, sc_meal, "open-loop", days=0.25, out_dtype="float64")
    np.testing.assert_allclose(a.Gsub.values, b.Gsub.values, rtol=1e-12)
    assert float(a.Gsub.max()) > 180.0


def test_zarr_output_round_trip(tmp_path):
    df = reference_patients("adult").iloc[:4]
    sc = scenarios.fixed_scenario(4, 1)
    mem = run(df, sc, "basal-bolus", days=1, chunk_size=2)
    ds = run(df, sc, "basal-bolus", days=1, out=str(tmp_path / "g.zarr"), chunk_size=2)
    np.testing.assert_array_equal(ds.Gsub.values, mem.Gsub.values)
    np.testing.assert_allclose(ds.tir_70_180.values, mem.tir_70_180.values)
    np.testing.assert_array_equal(ds.cvga_zone.values, mem.cvga_zone.values)
    assert ds.Gsub.attrs["units"] == "mg/dL" and ds.time.attrs["units"] == "min"
    assert ds.attrs["model"] == "uva_padova"
    assert len(ds.attrs["spec_hash"]) == 24  # a real hash of the inputs, not a constant


def test_interrupted_run_resumes_to_identical_store(tmp_path):
    """A run stopped after its first chunk (the progress callback raises, as Ctrl-C would)
    resumes to the store a clean run writes; resuming other inputs into it is refused."""
    df = reference_patients("adult").iloc[:5]
    sc = scenarios.fixed_scenario(5, 1)
    clean = run(df, sc, "basal-bolus", out=str(tmp_path / "clean.zarr"), chunk_size=2)
    calls = []

    def stop_after_first(done, total):
        calls.append(done)
        if done >= 2:
            raise KeyboardInterrupt

    path = str(tmp_path / "cut.zarr")
    with pytest.raises(KeyboardInterrupt):
        run(df, sc, "basal-bolus", out=path, chunk_size=2, progress=stop_after_first)
    assert open_result(path).chunk_done.values.tolist() == [True, False, False]
    # the refusal names what differs (it only gave two spec hashes)
    with pytest.raises(StoreError, match=r"different inputs .* differs in controller \(was "):
        run(df, sc, "pid", out=path, chunk_size=2, resume=True)
    resumed = run(df, sc, "basal-bolus", out=path, chunk_size=2, resume=True)
    for name in ("Gsub", "CGM", "insulin", "status", "tir_70_180", "cvga_zone", "BW"):
        np.testing.assert_array_equal(resumed[name].values, clean[name].values, err_msg=name)


def test_sensor_noise_follows_simglucose_cgm_noise():
    """simglucose's CGMNoise: an AR(1) ``e <- pacf (e + z)`` at 15-min knots, Johnson-SU
    transformed, interpolated by scipy's cubic ``interp1d`` over blocks of 10 knot intervals,
    the first reading one period into the first block. Rebuilt here from the same normals, the
    closed loop's readings match it; an AR(1) at the 5-min period had twice simglucose's
    reading-to-reading change (probe of simglucose 0.2.11: lag-1 correlation 0.955, change SD
    3.5 mg/dL at 5 min; the AR(1): 0.88, 5.8)."""
    import jax
    import jax.numpy as jnp
    from scipy.interpolate import interp1d

    from cohort.glucose.sensor import initial_state, knot_count, knot_normals, read_sensor

    sensor, period, n, readings = Sensor(), 5.0, 64, 600
    count = knot_count(sensor, period, readings - 1)
    z = jnp.asarray(knot_normals(3, np.arange(n), count, np.float64).T)
    level = jnp.full(n, 150.0)

    def step(s, k):
        s, cgm = read_sensor(sensor, period, s, level, z, k)
        return s, cgm

    _, cgm = jax.lax.scan(step, initial_state(n, jnp.float64), jnp.arange(readings))
    noise = np.asarray(cgm).T - 150.0
    # simglucose's generator from the same normals (knot j of patient i: key i folded with j,
    # drawn here by jax.random itself)
    m, blocks = 30, readings // 30
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(jnp.arange(n))
    z = np.asarray(jax.vmap(lambda key: jax.vmap(
        lambda j: jax.random.normal(jax.random.fold_in(key, j), (), jnp.float64)
    )(jnp.arange(blocks * 10 + 1)))(keys))  # fmt: skip
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for j in range(1, e.shape[1]):
        e[:, j] = sensor.pacf * (e[:, j - 1] + z[:, j])
    knots = sensor.xi + sensor.lam * np.sinh((e - sensor.gamma) / sensor.delta)
    ref = np.concatenate(
        [interp1d(np.arange(11) * 15.0, knots[:, 10 * b : 10 * b + 11], kind="cubic")(
            np.arange(1, m + 1) * period) for b in range(blocks)], axis=1,
    )  # fmt: skip
    np.testing.assert_allclose(noise, ref, rtol=1e-9, atol=1e-9)
    lag1 = np.mean([np.corrcoef(x[:-1], x[1:])[0, 1] for x in noise])
    assert 0.93 < lag1 < 0.98
    assert 2.8 < np.std(np.diff(noise, axis=1)) < 4.2


def test_bad_options_are_reported():
    df = reference_patients().iloc[[0]]
    with pytest.raises(cohort.InputError, match="dt"):
        run(df, scenarios.fixed_scenario(1, 1), "pid", options=ClosedLoopOptions(dt=0.7))
    with pytest.raises(ValueError, match="unknown controller"):
        run(df, scenarios.fixed_scenario(1, 1), "mpc")
    # 0 means no quantisation, as the CLI's --pump-increment 0 (it divided by 0: NaN for all)
    assert ClosedLoopOptions(pump_increment=0.0) == ClosedLoopOptions(pump_increment=None)
    for bad in (-0.05, float("nan")):
        with pytest.raises(ValueError, match="pump_increment"):
            ClosedLoopOptions(pump_increment=bad)


def test_closed_loop_batches_are_larger_on_an_accelerator(monkeypatch):
    """The closed loop's default batch: 2,048 patients on CPU devices, 16,384 on a GPU (where
    a control period's kernel launches cost the same for any batch; measured on an H200)."""
    import jax

    from cohort.glucose import simulate as glucose_simulate

    assert jax.default_backend() == "cpu"
    assert glucose_simulate.base_chunk() == glucose_simulate.DEFAULT_CHUNK == 2_048
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert glucose_simulate.base_chunk() == glucose_simulate.ACCELERATOR_CHUNK == 16_384


def test_cvga_figure_uses_the_stored_per_patient_extremes(open_loop_run, tmp_path):
    """The CVGA figure of a closed-loop result reads its per-patient g_min/g_max/cvga_zone
    (three numbers per patient) and they place every patient where the trajectories do."""
    from cohort.glucose.plots import cvga_plot, cvga_points

    ds = open_loop_run
    x, y, zones = cvga_points(ds)
    bare = ds.drop_vars(["g_min", "g_max", "cvga_zone"])  # forces the trajectory path
    x2, y2, zones2 = cvga_points(bare)
    assert len(x) == int((ds.status.values == 0).sum()) == N
    np.testing.assert_allclose(x, x2, rtol=1e-6)
    np.testing.assert_allclose(y, y2, rtol=1e-6)
    np.testing.assert_array_equal(zones, zones2)
    assert len(set(zones)) > 1  # open loop over two days: not every patient in one zone
    png = cvga_plot(ds, tmp_path / "cvga.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_only_equals_the_runs_metrics():
    """``metrics_only`` (screening, the CLI without --out) gives the per-patient metrics of
    ``run`` to the bit, and refuses a store."""
    from cohort.glucose.metrics import CVGA_ZONES
    from cohort.glucose.simulate import metrics_only

    pop = reference_patients("adolescent")
    args = (pop, "random", "basal-bolus")
    kw = dict(days=1.0, seed=2, options=ClosedLoopOptions(period=5.0, sensor=Sensor()))
    ds = run(*args, **kw)
    m = metrics_only(*args, **kw)
    np.testing.assert_array_equal(m["status"], ds.status.values)
    for k in ("tir_70_180", "tbr_70", "mean", "cv", "lbgi", "hbgi", "gmi"):
        np.testing.assert_array_equal(m[k], ds[k].values)
    np.testing.assert_array_equal(np.asarray(CVGA_ZONES)[m["cvga_code"]], ds.cvga_zone.values)
    with pytest.raises(ValueError, match="metrics_only keeps nothing on disk"):
        metrics_only(*args, out="x.zarr", **kw)


def test_bad_meals_therapy_sensor_and_seed_are_refused_before_solving():
    """Found by a diabetes modeller's session: NaN or negative-time meals were dropped, 10^6 g
    and infinite meals ran "ok" at thousands of mg/dL, a carb ratio of 0 gave NaN and a
    negative one dosed the wrong way, Sensor(pacf=2) failed in math, seed=1.5 inside JAX."""
    one = reference_patients().iloc[[0]]
    for time, grams, words in (
        (100.0, float("nan"), "meal grams: nan (patient 0, meal 0)"),
        (100.0, float("inf"), "meal grams: inf"),
        (100.0, 1e6, "beyond any meal"),
        (float("nan"), 50.0, "meal start: nan"),
        (-100.0, 50.0, "meal start: -100.0"),
    ):
        with pytest.raises(cohort.CohortError, match=re.escape(words)):
            scenarios.single_meal(1, time, grams)
    for bad in (0.0, -10.0, float("nan")):
        with pytest.raises(cohort.CohortError, match="BasalBolus.carb_ratio: must be"):
            controllers.BasalBolus(carb_ratio=bad)
    # a NaN threshold silently turned corrections off; a negative target dosed to 0 mg/dL
    for kwargs in ({"correction_threshold": float("nan")}, {"target": -500.0}):
        with pytest.raises(cohort.CohortError, match=f"BasalBolus.{next(iter(kwargs))}: must"):
            controllers.BasalBolus(**kwargs)
    with pytest.raises(cohort.CohortError, match="PID.target: must"):
        controllers.PID(target=float("inf"))
    with pytest.raises(cohort.InputError, match=r"CR \(carbohydrate ratio, g/U\) of patient 0"):
        run(one.assign(CR=0.0), scenarios.fixed_scenario(1, 1), "basal-bolus")
    # a carbohydrate ratio in U/g (0.2) ran to 0 mg/dL with only the generic floor warning
    with pytest.warns(cohort.CohortWarning, match="CR .* below 1 g/U .* looks like U/g"):
        simulate_module = importlib.import_module("cohort.glucose.simulate")
        simulate_module._check_therapy({"CR": np.array([0.2])}, one)
    for kwargs, words in (({"pacf": 2.0}, "Sensor.pacf"), ({"delay": -5.0}, "Sensor.delay")):
        with pytest.raises(cohort.CohortError, match=words):
            Sensor(**kwargs)
    with pytest.raises(cohort.InputError, match="seed: an integer"):
        run(one, "random", "basal-bolus", seed=1.5)
    with pytest.raises(cohort.InputError, match="beyond this machine's memory"):
        run(one, "fixed", "open-loop", days=1e7)
    # a meal after the run's end is said not to be eaten (chunk_size=0 then stops the run)
    late = scenarios.fixed_scenario(1, 1, meals=[(30.0, 50.0)])
    with pytest.warns(cohort.CohortWarning, match=r"1 meal\(s\) start at or after the run's end"):
        with pytest.raises(cohort.InputError, match="chunk_size"):
            run(one, late, "open-loop", days=1, chunk_size=0)


def test_days_off_the_control_period_grid_are_said_and_recorded():
    """--days 1.003 ran to 1,445 min without a word (a probe): the horizon is a whole number
    of control periods, said in a warning, and ``attrs['days']`` is what was simulated."""
    from cohort.errors import CohortWarning

    df = reference_patients().iloc[[0]]
    with pytest.warns(CohortWarning, match=r"144 min\) is not a whole number of 5-min"):
        ds = run(df, scenarios.single_meal(1, 60.0, 50.0), "open-loop", days=0.1)
    assert float(ds.time.values[-1]) == 145.0 and ds.attrs["days"] == 145.0 / 1440.0
