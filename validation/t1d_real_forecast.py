"""Day-ahead forecast calibration of CGM twins on real data: the person of
``validation/t1d_real.py`` (cgm-format 0.3.2's Dexcom G6 Clarity exports, MIT per the package;
downloaded into a cache, nothing copied here), 20 pairs of consecutive eligible days (04:00 to
04:00). Day d's twin (MAP + Laplace) forecasts day d+1 from its logged meals and insulin
(:meth:`CGMTwins.forecast`); reported: how often the 90 % and 50 % bands cover day d+1's
readings, with the shipped prior and with its ``[iov]`` removed, and the day-d fit MARD.
Run: ``python validation/t1d_real_forecast.py`` -> ``validation/results/t1d_real_forecast.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import t1d_real  # noqa: E402

from cohort._toml import read_toml  # noqa: E402
from cohort.twin.cgm import CGMTwins  # noqa: E402
from cohort.twin.prior import TwinError, TwinPrior  # noqa: E402

PRIOR = Path(__file__).resolve().parents[1] / "priors" / "t1d_cgm_twin.toml"


def coverage(fc, plan: pd.DataFrame, ids) -> dict:
    t = fc.time.to_numpy()
    q = {x: fc.cgm_q.sel(quantile=x).to_numpy() for x in (0.05, 0.25, 0.75, 0.95)}
    h90, h50 = [], []
    for i, pid in enumerate(ids):
        rows = plan[(plan.ID == pid) & plan.CGM.notna()]
        k = np.searchsorted(t, rows.TIME.to_numpy(float))
        keep = k < t.size
        k, y = k[keep], rows.CGM.to_numpy(float)[keep]
        h90.extend((q[0.05][i, k] <= y) & (y <= q[0.95][i, k]))
        h50.extend((q[0.25][i, k] <= y) & (y <= q[0.75][i, k]))
    return {"coverage_90": round(float(np.mean(h90)), 4),
            "coverage_50": round(float(np.mean(h50)), 4), "readings": len(h90)}  # fmt: skip


def main() -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    ev = t1d_real.clarity_events(t1d_real.sdist(Path.home() / ".cache" / "cohort" / "data"))
    table = t1d_real.twin_days(ev, 20, 60.0)
    days = pd.unique(table["ID"])
    pairs = [d for d in days[:20] if d + 1 in days]
    fit = table[table.ID.isin(pairs)].drop(columns="DATE")
    nxt = pd.concat([table[table.ID == d + 1].assign(ID=d) for d in pairs]).drop(columns="DATE")
    nxt["TIME"] = nxt["TIME"] + 1440  # day d+1 follows day d's 24 h
    last = fit.groupby("ID")["TIME"].max()
    nxt = nxt[nxt["TIME"] > last.reindex(nxt["ID"]).to_numpy()]
    raw, _, _ = read_toml(str(PRIOR), TwinError, "priors spec")
    priors = {
        "shipped": TwinPrior.from_spec(str(PRIOR)),
        "without [iov]": TwinPrior.from_raw({k: v for k, v in raw.items() if k != "iov"}, "x"),
    }
    out = {"data": "cgm-format 0.3.2 sdist, Dexcom G6 Clarity exports (one person)",
           "day_pairs": len(pairs), "body_weight_kg": 60.0}  # fmt: skip
    for name, prior in priors.items():
        tw = CGMTwins.identify(prior, fit, method="laplace")
        fc = tw.forecast(nxt.drop(columns=["CGM", "BW"]), n_draws=400)
        out[name] = coverage(fc, nxt, tw.ids) | {
            "fit_mard_median": round(float(np.median(tw.fitted().mard.values)), 1)
        }
    print(json.dumps(out, indent=2))
    path = Path(__file__).parent / "results" / "t1d_real_forecast.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
