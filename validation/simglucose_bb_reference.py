"""Reference outcomes of simglucose 0.2.11's basal-bolus controller on its 30 virtual patients.

Runs one day per patient with simglucose's own objects (``T1DPatient``, ``CGMSensor`` "Dexcom",
``InsulinPump`` "Insulet", ``CustomScenario``, ``T1DSimEnv``, ``BBController``) and the loop of
``SimObj.simulate`` (``env.reset()``, then ``controller.policy`` / ``env.step`` until one day has
passed), once with the Dexcom sensor noise (seed ``SEED``) and once noise-free (the Dexcom
parameters with the Johnson-SU ``xi`` and ``lambda`` set to 0, so every noise sample is 0).

Metrics use every row of simglucose's history (``env.show_history()``): the 481 samples at
t = 0, 3, ..., 1440 min, equally weighted. ``BG`` at t > 0 is simglucose's 3-min mean of Gsub
at the ends of the three 1-min steps before t; t = 0 is the initial Gsub. ``CHO``/``insulin`` at
t are the means over [t, t + 3) (NaN at t = 1440). Needs simglucose, so it runs in its own venv::

    /work/sgvenv/bin/python validation/simglucose_bb_reference.py

With ``--seeds 1,2,3`` it instead runs only the noisy sensor, once per listed seed, and writes the
seed-to-seed spread to ``simglucose_bb_reference_seeds.csv`` (one row per patient and seed, the
``SEED_COLUMNS`` of the main table); the main files are left alone. If seed ``SEED`` is listed,
its rows are checked against the noisy columns of ``simglucose_bb_reference.csv``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from simglucose.actuator.pump import InsulinPump
from simglucose.controller.basal_bolus_ctrller import BBController
from simglucose.patient.t1dpatient import PATIENT_PARA_FILE, T1DPatient
from simglucose.sensor.cgm import CGMSensor
from simglucose.simulation.env import T1DSimEnv
from simglucose.simulation.scenario import CustomScenario
from simglucose.simulation.sim_engine import SimObj

SEED = 1
START = datetime(2018, 1, 1, 0, 0, 0)
MEALS = [(7, 45), (12, 70), (18, 80)]  # (hours after START, g CHO)
MEAL_NAMES = ("breakfast", "lunch", "dinner")
DURATION = timedelta(days=1)
SENSOR, PUMP = "Dexcom", "Insulet"
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SEED_COLUMNS = ["tir", "tbr", "tbr54", "tar", "mean_bg", "total_insulin_u"]


@dataclass
class Run:
    """One patient-day: simglucose's history plus what the loop saw on the way."""

    history: pd.DataFrame  # env.show_history() with a minute column and Gsub at the sample time
    boluses: list[float]  # U delivered per non-zero controller bolus (after pump rounding)
    basal: float  # U/min delivered as basal (after pump rounding)
    seconds: float


def make_sensor(noise: bool, seed: int = SEED) -> CGMSensor:
    """The Dexcom sensor, or the same with zero Johnson-SU noise (xi = lambda = 0)."""
    sensor = CGMSensor.withName(SENSOR, seed=seed)
    if noise:
        return sensor
    params = sensor._params.copy()
    params["xi"], params["lambda"] = 0.0, 0.0
    return CGMSensor(params, seed=seed)


def simulate(name: str, noise: bool, seed: int = SEED) -> Run:
    """One day of ``name`` under ``BBController``, the loop of ``SimObj.simulate`` made explicit
    so that the Gsub at each sample time and the delivered boluses are recorded too."""
    scenario = CustomScenario(start_time=START, scenario=list(MEALS))
    env = T1DSimEnv(
        T1DPatient.withName(name), make_sensor(noise, seed), InsulinPump.withName(PUMP), scenario
    )
    sim = SimObj(env, BBController(), DURATION, animate=False, path=None)
    tic = time.perf_counter()
    sim.controller.reset()
    obs, reward, done, info = env.reset()
    gsub, boluses, basal = [env.patient.observation.Gsub], [], 0.0
    while env.time < scenario.start_time + sim.sim_time:
        action = sim.controller.policy(obs, reward, done, **info)
        basal = env.pump.basal(action.basal)
        if action.bolus > 0:
            boluses.append(env.pump.bolus(action.bolus) * env.sample_time)
        obs, reward, done, info = env.step(action)
        gsub.append(env.patient.observation.Gsub)
    seconds = time.perf_counter() - tic
    hist = sim.results().reset_index()
    hist.insert(0, "minute", ((hist.pop("Time") - START) / timedelta(minutes=1)).astype(int))
    hist["Gsub"] = gsub
    return Run(hist, boluses, basal, seconds)


def metrics(run: Run) -> dict[str, float]:
    """Time in ranges (% of the 481 samples), BG summary, insulin totals of one run."""
    bg = run.history["BG"].to_numpy()
    insulin = run.history["insulin"].dropna().to_numpy()  # U/min over each 3-min step
    if len(run.boluses) != len(MEALS):
        raise RuntimeError(f"expected {len(MEALS)} boluses, got {run.boluses}")
    out = {
        "tir": 100 * np.mean((bg >= 70) & (bg <= 180)),
        "tbr": 100 * np.mean(bg < 70),
        "tbr54": 100 * np.mean(bg < 54),
        "tar": 100 * np.mean(bg > 180),
        "tar250": 100 * np.mean(bg > 250),
        "mean_bg": bg.mean(),
        "min_bg": bg.min(),
        "max_bg": bg.max(),
        "total_insulin_u": insulin.sum() * 3.0,
        "basal_u_per_min": run.basal,
    }
    out.update({f"bolus_{m}_u": b for m, b in zip(MEAL_NAMES, run.boluses)})
    return out


def reference(names: list[str]) -> None:
    """The main table and trajectories: seed ``SEED`` with noise, and noise-free."""
    rows, trajectories, seconds = [], [], []
    for name in names:
        row: dict[str, object] = {"Name": name, "group": name.split("#")[0]}
        for noise, suffix in ((True, ""), (False, "_noisefree")):
            run = simulate(name, noise)
            seconds.append(run.seconds)
            row.update({k + suffix: v for k, v in metrics(run).items()})
            traj = run.history[["minute", "BG", "Gsub", "CGM", "CHO", "insulin"]].copy()
            traj.insert(0, "sensor_noise", int(noise))
            traj.insert(0, "Name", name)
            trajectories.append(traj)
        rows.append(row)
        print(f"{name}: TIR {row['tir']:.1f} % TBR {row['tbr']:.1f} % ({run.seconds:.1f} s)")
    table = pd.DataFrame(rows).round(3)
    table.to_csv(DATA / "simglucose_bb_reference.csv", index=False)
    pd.concat(trajectories).to_csv(
        DATA / "simglucose_bb_trajectories.csv.gz",
        index=False,
        float_format="%.6g",
        compression={"method": "gzip", "mtime": 0},
    )
    print(f"{len(seconds)} patient-days, {np.mean(seconds):.2f} s each (mean)")


def seed_spread(names: list[str], seeds: list[int]) -> None:
    """``SEED_COLUMNS`` of the noisy sensor for every patient and seed, long format."""
    rows, seconds = [], []
    for seed in seeds:
        for name in names:
            run = simulate(name, noise=True, seed=seed)
            seconds.append(run.seconds)
            values = metrics(run)
            rows.append(
                {"Name": name, "group": name.split("#")[0], "seed": seed}
                | {k: values[k] for k in SEED_COLUMNS}
            )
            print(f"seed {seed} {name}: TIR {values['tir']:.1f} % TBR {values['tbr']:.1f} %")
    table = pd.DataFrame(rows).round(3)
    table.to_csv(DATA / "simglucose_bb_reference_seeds.csv", index=False)
    print(f"{len(seconds)} patient-days, {np.mean(seconds):.2f} s each (mean)")
    if SEED in seeds:
        main_table = pd.read_csv(DATA / "simglucose_bb_reference.csv")
        ours = pd.read_csv(DATA / "simglucose_bb_reference_seeds.csv")
        ours = ours[ours["seed"] == SEED].drop(columns="seed").reset_index(drop=True)
        pd.testing.assert_frame_equal(
            ours, main_table[["Name", "group", *SEED_COLUMNS]], check_exact=True
        )
        print(f"seed {SEED} rows equal the noisy columns of simglucose_bb_reference.csv")


def parse_seeds(text: str) -> list[int]:
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"need distinct comma-separated seeds, got {text!r}")
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        help="comma-separated CGM seeds: write simglucose_bb_reference_seeds.csv (noisy sensor "
        "only) instead of the main files",
    )
    args = parser.parse_args()
    names = pd.read_csv(PATIENT_PARA_FILE)["Name"].tolist()
    if args.seeds is None:
        reference(names)
    else:
        seed_spread(names, args.seeds)


if __name__ == "__main__":
    main()
