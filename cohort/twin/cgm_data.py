"""CGM, insulin and meal records of people with type 1 diabetes, checked and put on the 1-min
grid of :mod:`cohort.twin.cgm_solve`.

One table, one row per CGM sample time (a 5-min grid is usual; any whole minutes work), as
a pump/CGM export or ReplayBG's input gives it::

    ID     patient (optional: one patient)       TIME   minutes (whole), increasing per patient
    CGM    mg/dL; NaN or empty = gap              CHO    carbohydrate started at TIME, g
    BOLUS  insulin bolus at TIME, U               BASAL  basal rate from TIME on, U/h (empty:
    BW     body weight, kg (constant per patient)        unchanged)

Meals are eaten at ``eat_rate`` g/min from their time (simglucose's 5 g/min by default), a
bolus is delivered within its minute, a basal rate holds until the next one. The patient's
first basal rate is its usual basal (insulin starts at that steady state) and its first CGM
reading its starting glucose. Rows of one patient at the same minute (a pump export writes a
bolus, a meal and a reading as separate rows) are merged: meals and boluses add up, the
later basal rate holds, and two different readings at one minute are refused. Meals that
overlap queue as in simglucose: one starting while another is eaten extends that bout.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cohort.errors import CohortWarning
from cohort.models.glucose import queued_meals
from cohort.twin.prior import TwinError, show_id

REQUIRED = ("TIME", "CGM", "BASAL", "BW")
OPTIONAL = ("ID", "CHO", "BOLUS")
EAT_RATE = 5.0  # g/min, simglucose's T1DPatient.EAT_RATE
GRID_STEP = 60  # min; horizons are padded up to a multiple (one compiled program per hour)


def read_cgm(table: pd.DataFrame | str, min_readings: int = 3) -> pd.DataFrame:
    """The checked table (columns ``ID, TIME, CGM, CHO, BOLUS, BASAL, BW, ROW``); errors name
    the row (1-based data row), patient and column, and say what to fix. ``min_readings``:
    CGM readings each patient needs (0 for rows planned ahead, as a forecast reads)."""
    try:
        df = pd.read_csv(table) if isinstance(table, str) else table.copy()
    except pd.errors.EmptyDataError:  # a 0-byte file: pandas' traceback reached the user
        raise TwinError(f"CGM records: {table} is empty; give a CSV with a header row") from None
    if not isinstance(df, pd.DataFrame):
        raise TwinError(f"CGM records: expected a DataFrame or CSV path, got {type(table)}")
    df.columns = [str(c).strip().upper() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df]
    if missing:
        raise TwinError(
            f"CGM records: missing column(s) {missing}; a CGM twin needs {list(REQUIRED)} "
            f"(and optionally {list(OPTIONAL)}), columns given: {list(df.columns)}"
        )
    if df.empty:
        raise TwinError("CGM records: the table has no rows; give at least one day of readings")
    df["ROW"] = np.arange(1, len(df) + 1)
    if "ID" not in df:
        df["ID"] = 1
    no_id = df["ID"].isna() | df["ID"].astype(str).str.strip().isin(["", "."])
    if no_id.any():  # it was "row 85 (ID nan): ... needs its body weight" (a probe)
        raise TwinError(
            f"CGM records, row {int(df['ROW'][no_id].iloc[0])}: no ID; every row needs its "
            "patient's ID (or leave the ID column out for one patient)"
        )
    unread = [c for c in df.columns if c not in (*REQUIRED, *OPTIONAL, "ROW")]
    extra = [c for c in unread if c not in ("CHO", "BOLUS")]
    if extra and "CHO" in df and "BOLUS" in df:  # with both present nothing else is read
        warnings.warn(
            f"CGM records: column(s) {extra} are not read (a twin reads {list(REQUIRED)} "
            f"and {list(OPTIONAL)}; an extended bolus's duration, for one, is not: each "
            "BOLUS is delivered within its minute)",
            CohortWarning,
            stacklevel=2,
        )
    meals_given = "CHO" in df
    for c, what in (("CHO", "meals"), ("BOLUS", "boluses")):
        if c not in df:  # a renamed column (INSULIN) was read as no insulin at all (a probe)
            hint = f"; column(s) {unread} are not read: rename yours to {c}" if unread else ""
            warnings.warn(
                f"CGM records: no {c} column: the twin is identified with no {what}{hint}",
                CohortWarning,
                stacklevel=2,
            )
            df[c] = 0.0
    for c in ("TIME", "CGM", "CHO", "BOLUS", "BASAL", "BW"):
        df[c] = _numeric(df, c)
    _check_times(df)
    df = _merge_same_minute(df)
    _check(df, min_readings)
    _implausible_units(df)
    if meals_given:  # (a missing CHO column was said above)
        _boluses_without_meals(df)
    df["CHO"] = df["CHO"].fillna(0.0)
    df["BOLUS"] = df["BOLUS"].fillna(0.0)
    df["BASAL"] = df.groupby("ID", sort=False)["BASAL"].ffill()
    df["BW"] = df.groupby("ID", sort=False)["BW"].transform("first")
    return df[["ID", "TIME", "CGM", "CHO", "BOLUS", "BASAL", "BW", "ROW"]]


# Outside these an entry is more likely in other units than a real dose: a bolus of 4,600 U
# (mU) or a basal of 0.02 U/h (U/min) fitted without a word, and the replays differed.
MAX_BOLUS = 50.0  # U in one entry
MAX_READING_STEP = 60.0  # min: the median step between readings of a CGM, far above 5-15
BASAL_RANGE = (0.05, 10.0)  # U/h, a patient's median non-zero basal rate


MAX_MEAL = 300.0  # g of carbohydrate in one entry
EXCHANGE_MEDIAN = 5.0  # g: a patient's median meal below this looks like carb exchanges
EXCHANGE_LARGEST = 15.0  # g: ... as does a patient whose every meal is at most this
BW_RANGE = (2.0, 250.0)  # kg


def _implausible_units(df: pd.DataFrame) -> None:
    """Warn (naming the row) about entries that look like other units: carbohydrate in mg or
    in exchanges/bread units, body weight in pounds, insulin in mU, U/min or U/day."""
    _above(df, "CHO", MAX_MEAL, "g", "any usual meal", "g, not mg or mmol (1 g = 5.55 mmol)")
    meals = df["CHO"].where(df["CHO"] > 0)
    median = meals.groupby(df["ID"], sort=False).median()
    counts = meals.groupby(df["ID"], sort=False).count()
    largest = meals.groupby(df["ID"], sort=False).max()
    # a median meal under 5 g, or every meal at most 15 g (meals of 2-8 exchanges of 10 g
    # passed the median alone, a probe)
    small = median[((median < EXCHANGE_MEDIAN) | (largest <= EXCHANGE_LARGEST)) & (counts >= 3)]
    if len(small):
        i = int(np.flatnonzero((df["ID"] == small.index[0]).to_numpy())[0])
        warnings.warn(
            f"{_where(df, i)}: the patient's meals are a median {float(small.iloc[0]):g} g of "
            "carbohydrate: check the units (grams, not carb exchanges or bread units of "
            "10-12 g)",
            CohortWarning,
            stacklevel=3,
        )
    bw = df["BW"].to_numpy()
    lo, hi = BW_RANGE
    odd = np.flatnonzero(np.isfinite(bw) & ((bw < lo) | (bw > hi)))
    if odd.size:
        i = int(odd[0])
        warnings.warn(
            f"{_where(df, i)}: BW = {bw[i]:g} kg is outside {lo:g}-{hi:g} kg: check the units "
            "(kg, not pounds)",
            CohortWarning,
            stacklevel=3,
        )
    _implausible_insulin(df)


def _boluses_without_meals(df: pd.DataFrame) -> None:
    """Warn where a patient has boluses but no meal logged: the twin then takes the day as
    fasting and bends its insulin sensitivity to fit (a probe: SI 2.7e-4 -> 1.0e-4 without
    a word); usually the meals were not exported."""
    units = df["BOLUS"].fillna(0.0).groupby(df["ID"], sort=False).sum()
    grams = df["CHO"].fillna(0.0).groupby(df["ID"], sort=False).sum()
    odd = units[(units > 0) & (grams <= 0)]
    if len(odd):
        pid = odd.index[0]
        i = int(np.flatnonzero((df["ID"] == pid).to_numpy())[0])
        warnings.warn(
            f"{_where(df, i)}: the patient has {float(odd.iloc[0]):g} U of boluses but no meal "
            f"logged ({len(odd)} patient(s)); the twin takes the days as fasting: add the "
            "meals (CHO, g) if they were eaten",
            CohortWarning,
            stacklevel=3,
        )


def _above(df: pd.DataFrame, col: str, limit: float, units: str, what: str, fix: str) -> None:
    """Warn, naming the first row, where ``col`` exceeds ``limit`` (a value in other units)."""
    values = df[col].to_numpy()
    big = np.flatnonzero(values > limit)
    if big.size:
        i = int(big[0])
        warnings.warn(
            f"{_where(df, i)}: {col} = {values[i]:g} {units} is larger than {what} (over "
            f"{limit:g} {units}; {big.size} such row(s)): check the units ({fix})",
            CohortWarning,
            stacklevel=4,
        )


def _implausible_insulin(df: pd.DataFrame) -> None:
    """Warn (naming the row) about insulin entries that look like other units."""
    _above(df, "BOLUS", MAX_BOLUS, "U", "any usual bolus", "U, not mU")
    basal = df["BASAL"].where(df["BASAL"] > 0)
    median = basal.groupby(df["ID"], sort=False).median()
    lo, hi = BASAL_RANGE
    odd = median[(median < lo) | (median > hi)]
    if len(odd):
        pid, rate = odd.index[0], float(odd.iloc[0])
        i = int(np.flatnonzero((df["ID"] == pid).to_numpy())[0])
        warnings.warn(
            f"{_where(df, i)}: BASAL is {rate:g} U/h (the patient's median), outside "
            f"{lo:g}-{hi:g} U/h ({len(odd)} patient(s)): give U/h (not U/min or U/day)",
            CohortWarning,
            stacklevel=4,
        )


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    raw = df[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        text = str(raw.iloc[i]).strip().upper()
        hint = "give a number (or leave it empty)"
        if col == "CGM" and text in ("LOW", "HIGH", "LO", "HI"):
            hint = (
                "a sensor's out-of-range flag: leave it empty (the reading is then not used) "
                "or give the sensor's limit in mg/dL (e.g. 40 for LOW, 400 for HIGH)"
            )
        elif col == "TIME":
            hint = (
                "TIME is minutes since the start of the records (0, 5, 10, ...), not a clock "
                "time or date: convert, e.g. (timestamp - first timestamp) in minutes"
            )
        raise TwinError(f"{_where(df, i)}: {col} = {show_id(raw.iloc[i])} is not a number; {hint}")
    return values.astype(float)


def _where(df: pd.DataFrame, i: int) -> str:
    return f"row {int(df['ROW'].iloc[i])} (ID {show_id(df['ID'].iloc[i])})"


def _first_bad(df: pd.DataFrame, mask, col: str, what: str) -> None:
    mask = np.asarray(mask, bool)
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        raise TwinError(f"{_where(df, i)}: {col} = {show_id(df[col].iloc[i])}: {what}")


def _check_times(df: pd.DataFrame) -> None:
    t = df["TIME"].to_numpy()
    _first_bad(df, ~np.isfinite(t), "TIME", "every row needs a time (min)")
    _first_bad(df, np.abs(t - np.round(t)) > 1e-6, "TIME", "times are whole minutes")
    prev = df.groupby("ID", sort=False)["TIME"].shift()
    _first_bad(
        df,
        (df["TIME"] < prev).to_numpy(),
        "TIME",
        "before the previous row of this patient: sort the rows by time",
    )


def _merge_same_minute(df: pd.DataFrame) -> pd.DataFrame:
    """One row per patient and minute: a pump/CGM export lists a bolus, a meal and a reading
    at the same minute as separate rows. CHO and BOLUS add up (all empty stays empty), the
    last basal rate given holds (the setting in force from that minute), BW and the row
    number are the first row's; two different readings at one minute are refused."""
    dup = df.duplicated(["ID", "TIME"], keep=False).to_numpy()
    if not dup.any():
        return df
    given = [c for c in df.columns if c != "ROW"]
    dosed = (df["CHO"].fillna(0).gt(0) | df["BOLUS"].fillna(0).gt(0)).to_numpy()
    same = df.duplicated(given, keep="first").to_numpy() & dosed
    if same.any():
        i = int(np.flatnonzero(same)[0])
        warnings.warn(
            f"{_where(df, i)}: the same as an earlier row in every column; rows at one minute "
            "add up, so its meal and bolus count twice: if it is a repeated export row, "
            "remove it",
            CohortWarning,
            stacklevel=4,
        )
    groups = df.groupby(["ID", "TIME"], sort=False)
    spread = groups["CGM"].transform(lambda c: c.max() - c.min()).to_numpy()
    _first_bad(
        df,
        dup & (spread > 0),
        "CGM",
        "another row of this patient at the same TIME has a different reading; keep one "
        "reading per minute (or give the later one the next minute)",
    )
    merged = groups.agg(
        CGM=("CGM", "first"),
        CHO=("CHO", lambda c: c.sum(min_count=1)),
        BOLUS=("BOLUS", lambda c: c.sum(min_count=1)),
        BASAL=("BASAL", "last"),
        BW=("BW", "first"),
        ROW=("ROW", "first"),
    )
    return merged.reset_index()


def _check(df: pd.DataFrame, min_readings: int = 3) -> None:
    cgm = df["CGM"].to_numpy()
    out_of_range = ~np.isnan(cgm) & ~((cgm >= 10) & (cgm <= 1000))  # inf too
    readings = cgm[np.isfinite(cgm)]
    if readings.size and np.nanmedian(readings) < 30:
        # No one's readings stay below 30 mg/dL: a whole file in mmol/L (median 4-15), also
        # when every reading is >= 10 mmol/L (a hyperglycaemic day was read as 11.8-20 mg/dL,
        # a probe). Named at its first reading out of range, else its first reading.
        _first_bad(df, out_of_range if out_of_range.any() else np.isfinite(cgm), "CGM",
                   f"the readings are a median {np.nanmedian(readings):g}: they look like "
                   "mmol/L; give mg/dL (mmol/L x 18.016)")  # fmt: skip
    _first_bad(df, out_of_range, "CGM", "not in 10-1000 mg/dL")
    for col in ("CHO", "BOLUS", "BASAL"):
        v = df[col].to_numpy()
        _first_bad(df, np.isinf(v) | (v < 0), col, "must be finite and >= 0")
    first = df.groupby("ID", sort=False).head(1)
    _first_bad(
        first,
        first["BASAL"].isna(),
        "BASAL",
        "each patient's first row needs its basal rate (U/h; 0 for none)",
    )
    bw = df.groupby("ID", sort=False)["BW"].transform("first").to_numpy()
    _first_bad(df, ~(bw > 0), "BW", "each patient's first row needs its body weight (kg, > 0)")
    _first_bad(
        df,
        np.isfinite(df["BW"].to_numpy()) & (df["BW"].to_numpy() != bw),
        "BW",
        "body weight changes within a patient; give one value per patient",
    )
    n_obs = df.groupby("ID", sort=False)["CGM"].transform(lambda c: c.notna().sum()).to_numpy()
    _first_bad(
        df, n_obs < min_readings, "CGM", f"a patient needs at least {min_readings} CGM readings"
    )
    readings = df[df["CGM"].notna()]
    steps = readings.groupby("ID", sort=False)["TIME"].diff().dropna()
    seconds = (
        len(steps)
        and float(steps.median()) == MAX_READING_STEP
        and bool(np.all(np.mod(readings["TIME"].to_numpy(), MAX_READING_STEP) == 0))
        and float(steps.min()) >= MAX_READING_STEP
    )
    if seconds:  # 1-min readings (Libre 3) with TIME in seconds: every step 60, none shorter
        # said, not refused: hourly readings in minutes (SMBG) look the same, and a store
        # holding them must still open
        warnings.warn(
            "CGM records, column TIME: the readings are whole hours apart (60, 120, ... min), "
            "where a CGM reads every 1-15 min: if TIME is in seconds of a 1-min sensor, give "
            "minutes (divide by 60)",
            CohortWarning,
            stacklevel=3,
        )
    if len(steps) and float(steps.median()) > MAX_READING_STEP:
        raise TwinError(
            f"CGM records, column TIME: readings are a median {float(steps.median()):g} min "
            f"apart, where a CGM reads every 1-15 min: TIME is in minutes (seconds? divide by "
            "60; hours? multiply by 60)"
        )


def grid_inputs(df: pd.DataFrame, eat_rate: float = EAT_RATE, horizon: int | None = None):
    """Per-patient arrays on the 1-min grid from :func:`read_cgm`'s table: ``meal [N, T]``
    (mg/min), ``basal``/``bolus [N, T]`` (U/min), the observations (``obs_idx``, ``dv``,
    ``mask``, ``lag`` minutes since the previous reading, ``[N, M]``) and per patient
    ``BW``, ``G0``, ``u0`` (usual basal, U/min), ``start`` (first TIME) and ``end`` (min)."""
    if not eat_rate > 0:
        raise TwinError(f"eat_rate: must be > 0 g/min, got {eat_rate}")
    groups = [g for _, g in df.groupby("ID", sort=False)]
    start = np.array([g["TIME"].iloc[0] for g in groups])
    ends = []
    for g in groups:
        t = g["TIME"].to_numpy() - g["TIME"].iloc[0]
        step = float(np.median(np.diff(t))) if len(t) > 1 else 5.0
        meal_end = max(
            (ti + np.ceil(c / eat_rate) for ti, c in zip(t, g["CHO"].to_numpy()) if c > 0),
            default=0.0,
        )
        ends.append(int(max(t[-1] + step, meal_end + 1)))
    n_min = max(ends) if horizon is None else int(horizon)
    n_min = int(np.ceil(n_min / GRID_STEP) * GRID_STEP)
    n, m = len(groups), max(int(g["CGM"].notna().sum()) for g in groups)
    out = {
        "meal": np.zeros((n, n_min)),
        "basal": np.zeros((n, n_min)),
        "bolus": np.zeros((n, n_min)),
        "obs_idx": np.zeros((n, m), np.int32),
        "dv": np.zeros((n, m)),
        "mask": np.zeros((n, m)),
        "lag": np.full((n, m), np.inf),
    }
    for i, g in enumerate(groups):
        t = (g["TIME"].to_numpy() - start[i]).astype(int)
        keep = t < n_min
        t = t[keep]
        g = g[keep]
        basal = g["BASAL"].to_numpy() / 60.0
        edges = np.append(t, n_min)
        for k in range(len(t)):
            out["basal"][i, edges[k] : edges[k + 1]] = basal[k]
        for ti, units in zip(t, g["BOLUS"].to_numpy()):
            out["bolus"][i, ti] += units
        for ti, grams in zip(t, queued_meals(t, g["CHO"].to_numpy(), eat_rate)):
            _eat(out["meal"][i], ti, grams, eat_rate)
        seen = g["CGM"].notna().to_numpy()
        k = int(seen.sum())
        out["obs_idx"][i, :k] = t[seen]
        out["dv"][i, :k] = g["CGM"].to_numpy()[seen]
        out["mask"][i, :k] = 1.0
        out["lag"][i, 1:k] = np.diff(t[seen])
    first = [g["CGM"].dropna().iloc[0] for g in groups]
    out.update(
        BW=np.array([g["BW"].iloc[0] for g in groups]),
        G0=np.array(first, float),
        u0=np.array([g["BASAL"].iloc[0] / 60.0 for g in groups]),
        start=start,
        end=np.minimum(np.array(ends), n_min),
    )
    return out


def _eat(row: np.ndarray, t: int, grams: float, eat_rate: float) -> None:
    """``grams`` eaten at ``eat_rate`` g/min from minute ``t`` (mg/min per minute)."""
    left, k = float(grams), t
    while left > 1e-12 and k < row.size:
        bite = min(eat_rate, left)
        row[k] += 1000.0 * bite
        left -= bite
        k += 1
