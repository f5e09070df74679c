"""CGM twins on real data: one person with type 1 diabetes on multiple daily injections.

Data: the Dexcom G6 Clarity exports shipped in the source distribution of ``cgm-format``
0.3.2 on PyPI (GlucoseDAO, MIT licence per its PKG-INFO and LICENSE; the data were dropped
from later releases, and the package carries no separate data licence or consent statement —
read the numbers with that in mind). CGM every 5 min, rapid-acting boluses and long-acting
(basal) injections in U, carbohydrate in g. Nothing of it is copied into this repository:
the script downloads the sdist from the package registry into a cache folder (or takes
``--sdist``), reads only the anonymised Clarity exports and reports aggregate numbers.

Each day (04:00 to 04:00, see :func:`twin_days`) with complete records (≥ 95 % of its CGM
readings, ≥ 2 carbohydrate entries, ≥ 1 bolus, a long-acting dose within the previous 72 h)
becomes one twin-day:
``t1d_minimal`` under ``priors/t1d_cgm_twin.toml``. The model has a constant basal delivery:
a long-acting analogue (near peakless) is taken as its previous 72 h total spread evenly
(U/h; 72 h so that the timing of twice-daily injections does not matter). Body weight is
not in the exports: ``--bw`` (default 60 kg; it scales the glucose and insulin volumes,
which the estimated parameters partly absorb). Reported: fit MARD per day
(Laplace for all days, NUTS for the first ``--nuts`` days with convergence and time), and
the day-ahead check: day d's twin (MAP) replays the next eligible day's recorded meals and
insulin from that day's first reading — the MARD of that forecast against its readings.

Run: ``python validation/t1d_real.py [--days 20] [--nuts 3]`` (downloads ~10 MB once).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PRIOR = str(Path(__file__).resolve().parents[1] / "priors" / "t1d_cgm_twin.toml")
PACKAGE = "cgm-format==0.3.2"


def sdist(cache: Path) -> Path:
    """The cgm-format 0.3.2 source distribution, downloaded once into ``cache``."""
    found = sorted(cache.glob("cgm_format-0.3.2*.tar.gz"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--ignore-requires-python", PACKAGE, "-d", str(cache)],
            check=True,
        )  # fmt: skip
        found = sorted(cache.glob("cgm_format-0.3.2*.tar.gz"))
    return found[0]


def clarity_events(path: Path) -> pd.DataFrame:
    """All Clarity exports of the sdist as one event table: ``time, kind, value``
    (kind: ``cgm`` mg/dL, ``bolus`` U, ``long`` U, ``carbs`` g)."""
    frames = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            name = m.name.split("/")[-1]
            if "/data/" not in m.name or "/parsed/" in m.name or not name.endswith(".csv"):
                continue
            if not (name[:3].isdigit() or name.startswith("Clarity_Export")):
                continue  # only the anonymised Clarity exports
            raw = pd.read_csv(tar.extractfile(m), encoding="utf-8-sig", low_memory=False)
            cols = {c: c.split(" (")[0] for c in raw.columns}
            raw = raw.rename(columns=cols)
            if not {"Timestamp", "Event Type", "Glucose Value"} <= set(raw.columns):
                continue
            t = pd.to_datetime(raw["Timestamp"], errors="coerce")
            et, sub = raw["Event Type"].astype(str), raw.get("Event Subtype", "").astype(str)
            glucose = pd.to_numeric(
                raw["Glucose Value"].replace({"Low": 39, "High": 400}), errors="coerce"
            )
            insulin = pd.to_numeric(raw.get("Insulin Value"), errors="coerce")
            carbs = pd.to_numeric(raw.get("Carb Value"), errors="coerce")
            parts = [
                pd.DataFrame({"time": t, "kind": "cgm", "value": glucose})[et == "EGV"],
                pd.DataFrame({"time": t, "kind": "bolus", "value": insulin})[
                    (et == "Insulin") & sub.str.startswith("Fast")
                ],
                pd.DataFrame({"time": t, "kind": "long", "value": insulin})[
                    (et == "Insulin") & sub.str.startswith("Long")
                ],
                pd.DataFrame({"time": t, "kind": "carbs", "value": carbs})[et == "Carbs"],
            ]
            frames.extend(parts)
    ev = pd.concat(frames).dropna()
    return ev.drop_duplicates().sort_values("time").reset_index(drop=True)


DAY_START = pd.Timedelta("4h")  # a twin-day runs 04:00 -> 04:00 (see twin_days)


def twin_days(ev: pd.DataFrame, n_days: int, bw: float) -> pd.DataFrame:
    """CGM-twin records (one ID per eligible day, TIME in minutes from its start at 04:00).

    Days start at 04:00, as ReplayBG's do (Cappon et al. 2023; py_replay_bg's twinning
    procedure): the twin starts at the steady state of the basal insulin, which holds only
    hours after the last meal and bolus (here the last bolus of an evening comes as late as
    23:47), and dinner keeps the night after it. From midnight, every day started with the
    evening's 8-13 U and 50-100 g still acting, unrecorded (fit MARD 24.4 vs 23.1 %)."""
    ev = ev.assign(day=(ev["time"] - DAY_START).dt.normalize() + DAY_START)
    tables = []
    for day, g in ev.groupby("day"):
        if ev["time"].iloc[0] > day - pd.Timedelta("72h"):
            continue  # the records do not cover the 72 h whose long-acting doses set the basal
        cgm = g[g.kind == "cgm"]
        long_prev = ev[(ev.kind == "long") & (ev.time > day - pd.Timedelta("72h"))
                       & (ev.time <= day)]  # fmt: skip
        if (len(cgm) < 0.95 * 288 or (g.kind == "carbs").sum() < 2
                or (g.kind == "bolus").sum() < 1 or long_prev.empty):  # fmt: skip
            continue
        minute = ((g["time"] - day).dt.total_seconds() // 60).astype(int)
        rec = pd.DataFrame({"TIME": minute, "kind": g["kind"].to_numpy(), "v": g["value"]})
        wide = rec.pivot_table(index="TIME", columns="kind", values="v", aggfunc="sum")
        if "cgm" in wide:  # two readings in one minute: their mean, not their sum
            wide["cgm"] = rec[rec.kind == "cgm"].groupby("TIME")["v"].mean()
        wide = wide.reindex(columns=["cgm", "carbs", "bolus"]).reset_index()
        wide = wide.rename(columns={"cgm": "CGM", "carbs": "CHO", "bolus": "BOLUS"})
        wide["BASAL"] = np.nan
        wide.loc[0, "BASAL"] = long_prev["value"].sum() / 72.0  # mean rate over 3 days
        wide["BW"] = bw
        wide["ID"] = len(tables)
        wide["DATE"] = day.date().isoformat()
        tables.append(wide)
        if len(tables) == n_days + 1:  # one more: the last day's day-ahead check
            break
    return pd.concat(tables, ignore_index=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=20, help="eligible days to fit")
    ap.add_argument("--nuts", type=int, default=3, help="of which identified by NUTS")
    ap.add_argument("--bw", type=float, default=60.0, help="body weight, kg (not recorded)")
    ap.add_argument("--sdist", type=Path, default=None, help="cgm_format-0.3.2.tar.gz")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "cohort" / "data")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default validation/results/)")
    ap.add_argument("--prior", default=PRIOR, help="twin prior spec (default: the shipped one)")
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from cohort.twin import cgm_data
    from cohort.twin.cgm import CGMTwins

    ev = clarity_events(args.sdist or sdist(args.cache))
    table = twin_days(ev, args.days, args.bw)
    days = pd.unique(table["ID"])
    fit_ids = days[: args.days]
    fit_table = table[table.ID.isin(fit_ids)].drop(columns="DATE")
    out = {"data": f"{PACKAGE} sdist, Dexcom G6 Clarity exports (MIT per the package)",
           "days": int(len(fit_ids)), "body_weight_kg": args.bw,
           "prior": Path(args.prior).name, "day_starts": "04:00"}  # fmt: skip
    # no dates in the output: dates of a person's records identify them

    t0 = time.perf_counter()
    lap = CGMTwins.identify(args.prior, fit_table, method="laplace")
    out["seconds_laplace"] = round(time.perf_counter() - t0, 1)
    mard = lap.fitted().mard.values
    out["fit_mard_laplace"] = _summary(mard)
    out["laplace_ok"] = int(lap.ok.sum())

    # day-ahead: day d's posterior with day d+1's logged meals and insulin, against day d+1's
    # readings (the posterior-median replay, as CGMTwins.fitted gives for the day it was fit on)
    pairs = [d for d in fit_ids if d + 1 in days]
    nxt = pd.concat([table[table.ID == d + 1].assign(ID=d) for d in pairs]).drop(columns="DATE")
    take = np.array([list(lap.ids).index(d) for d in pairs])
    post = lap.posterior
    ahead_post = type(post)(post.eta[take], post.cov[take], post.objective[take], post.ok[take])
    ahead = CGMTwins(lap.prior, cgm_data.read_cgm(nxt), ahead_post, None, lap.eat_rate)
    out["day_ahead_mard"] = _summary(ahead.fitted().mard.values)

    if args.nuts > 0:
        sub = fit_table[fit_table.ID.isin(fit_ids[: args.nuts])]
        t0 = time.perf_counter()
        tw = CGMTwins.identify(args.prior, sub, method="nuts")
        out["nuts"] = {
            "days": int(args.nuts),
            "seconds_per_day": round((time.perf_counter() - t0) / args.nuts, 1),
            "converged": int(tw.ok.sum()),
            "max_rhat": float(np.max(tw.samples.rhat)),
            "fit_mard": _summary(tw.fitted().mard.values),
        }
    path = args.out or Path(__file__).parent / "results" / "t1d_real.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


def _summary(v: np.ndarray) -> dict:
    v = np.asarray(v, float)
    return {"median": round(float(np.median(v)), 2), "p90": round(float(np.quantile(v, 0.9)), 2),
            "max": round(float(v.max()), 2), "n": int(v.size)}  # fmt: skip


if __name__ == "__main__":
    main()
