"""Dosing: regimens and NONMEM-style event records -> a padded per-patient event table.

Records follow NONMEM conventions: ``EVID`` 0 observation, 1 dose, 2 other, 3 reset,
4 reset-and-dose; ``AMT``; ``RATE`` (> 0 zero-order rate, 0 bolus, -2 duration modelled by the
parameter ``D_<cmt>``); ``CMT`` (1-based state number or state name); ``ADDL``/``II`` additional
doses; ``SS=1`` steady state (resets the system at the record time to the steady state of
repeated doses every ``II``, each delayed by the compartment's lag like this dose). The table
is padded to the largest record count so a batch of patients with different regimens runs
under one ``vmap``; padding rows have ``evid = 0`` and ``time = +inf``.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cohort.dosing_formats import date_column_problem, rates_from_durations
from cohort.errors import CohortError, CohortWarning


class DosingError(CohortError, ValueError):
    """A dosing record is invalid; the message names the row, the column and the fix."""


@dataclasses.dataclass(frozen=True)
class Regimen:
    """A dose, optionally repeated ``addl`` more times every ``ii`` hours.

    ``rate`` > 0 gives a zero-order infusion at that rate; alternatively give ``duration``
    (the rate ``amt / duration``: into a compartment with a bioavailability F < 1 it then
    lasts ``F·duration``, as NONMEM's RATE > 0 does). ``rate=-2`` takes the duration from the
    model parameter ``D_<cmt>`` (NONMEM ``RATE=-2``), which F does not change.
    ``ss=True`` starts the regimen at steady state.
    """

    amt: float
    cmt: str | int = 0
    time: float = 0.0
    ii: float = 0.0
    addl: int = 0
    rate: float = 0.0
    duration: float | None = None
    ss: bool = False

    def to_frame(self) -> pd.DataFrame:
        for name in ("amt", "time", "ii", "rate"):
            value = getattr(self, name)
            if not (
                isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value)
            ):
                raise DosingError(f"Regimen: {name} must be a finite number, got {value!r}")
        rate = self.rate
        if self.duration is not None:
            if self.rate:
                raise DosingError("Regimen: give either rate or duration, not both")
            if not self.duration > 0:
                raise DosingError(f"Regimen: duration must be > 0, got {self.duration}")
            rate = self.amt / self.duration
        return pd.DataFrame(
            {
                "TIME": [float(self.time)],
                "EVID": [1],
                "AMT": [float(self.amt)],
                "CMT": [self.cmt],
                "RATE": [float(rate)],
                "ADDL": [int(self.addl)],
                "II": [float(self.ii)],
                "SS": [int(self.ss)],
            }
        )


@dataclasses.dataclass(frozen=True)
class EventTable:
    """Padded event records, arrays of shape ``[n_patients, n_records]``.

    ``cmt`` indexes ``state_names``; ADDL is already expanded; EVID 4 is split into a reset
    record followed by a dose record.
    """

    time: np.ndarray
    amt: np.ndarray
    rate: np.ndarray
    cmt: np.ndarray
    evid: np.ndarray
    ss: np.ndarray
    ii: np.ndarray
    state_names: tuple[str, ...]

    @property
    def n_patients(self) -> int:
        return self.time.shape[0]

    @property
    def n_records(self) -> int:
        return self.time.shape[1]

    @property
    def has_infusion(self) -> bool:
        return bool(np.any((self.rate != 0) & (self.evid == 1)))

    @property
    def has_reset(self) -> bool:
        return bool(np.any(self.evid == 3))

    @property
    def has_ss(self) -> bool:
        return bool(np.any(self.ss & (self.evid == 1)))

    def select(self, index: Any) -> EventTable:
        """Rows for a subset of patients (e.g. a chunk)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return EventTable(**{k: (v if k == "state_names" else v[index]) for k, v in fields.items()})

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "state_names"
        }

    def __reduce__(self):
        """Records shared by every patient (broadcast views) pickle once, not once per
        patient: a distributed task's table stays a few bytes for a regimen."""
        compact = {k: (v[:1] if shared_rows(v) else v) for k, v in self.arrays().items()}
        return (_shared_rows, (compact, self.state_names, self.n_patients))


def describe_events(table: EventTable, time_units: str = "") -> str:
    """A one-line summary of the dose records for a result's provenance (``attrs['dosing']``),
    e.g. ``same records for every patient: 14 doses into depot, 320 each, at 0-156 h``.
    Patients with different records are summarised by their counts and ranges; the exact
    records are in the run's ``spec_hash``."""
    dose = table.evid == 1
    n_dose = dose.sum(axis=1)
    if not n_dose.any():
        return "no doses"
    unit = f" {time_units}" if time_units else ""
    names = table.state_names
    cmts = sorted({names[c] for c in np.unique(table.cmt[dose])})
    kinds = []
    if np.any(dose & (table.rate == 0)):
        kinds.append("bolus")
    if np.any(dose & (table.rate != 0)):
        kinds.append("infusion")
    if np.any(dose & table.ss):
        kinds.append("steady state")
    if np.any(table.evid == 3):
        kinds.append("with resets")
    amt = table.amt[dose]
    t = table.time[dose]
    amounts = f"{amt[0]:g} each" if np.all(amt == amt[0]) else f"{amt.min():g}-{amt.max():g}"
    where = " and ".join(cmts)
    shared = all(shared_rows(v) for v in table.arrays().values()) or table.n_patients == 1
    if shared:
        head = f"same records for every patient: {int(n_dose[0])} dose(s) into {where}"
    else:
        lo, hi = int(n_dose.min()), int(n_dose.max())
        count = f"{lo}" if lo == hi else f"{lo}-{hi}"
        head = f"per-patient records: {count} dose(s) per patient into {where}"
    return f"{head}, {amounts}, at {t.min():g}-{t.max():g}{unit} ({', '.join(kinds)})"


def shared_rows(v: np.ndarray) -> bool:
    """Whether every patient's row of an event array is the same row (a broadcast view: a
    regimen shared by the cohort)."""
    return bool(v.ndim and v.shape[0] > 1 and v.strides[0] == 0)


def _shared_rows(arrays: dict, state_names: tuple[str, ...], n: int) -> EventTable:
    """Unpickle an :class:`EventTable`: shared records broadcast back to ``n`` patients."""
    full = {
        k: (np.broadcast_to(v, (n, *v.shape[1:])) if len(v) != n else v) for k, v in arrays.items()
    }
    return EventTable(**full, state_names=state_names)


_COLUMNS = ("TIME", "EVID", "AMT", "CMT", "RATE", "ADDL", "II", "SS")


def time_goes_back(
    now: float, before: float, evid: int, whose: str = "the same patient", prev_evid: int = 0
) -> str:
    """Why a patient's record earlier than the one before it is refused, and the fix. At a
    reset (EVID 3/4) NONMEM allows time to restart (crossover periods from 0); "sort by TIME"
    would then interleave the periods, so the fix given there is a shift."""
    shift = (
        f"shift this period's times (add {before - now:g} or more to TIME from this row on), "
        "the reset still empties the compartments"
    )
    if evid in (3, 4):
        return (
            f"time {now:g} at a reset record (EVID {evid}) is earlier than the previous record "
            f"({before:g}): NONMEM lets time restart there, cohort keeps one time axis per "
            f"patient; {shift}"
        )
    if prev_evid in (3, 4):  # sorting would move this period before the reset
        return (
            f"time {now:g} is earlier than the reset record before it (EVID {prev_evid} at "
            f"{before:g}) of {whose}: if a new period starts there, cohort keeps one time axis "
            f"per patient; {shift}"
        )
    return (
        f"time {now:g} is earlier than the previous record ({before:g}) of {whose}; sort "
        "records by TIME within ID"
    )


def _err(row: int, column: str, msg: str) -> DosingError:
    return DosingError(f"dosing record row {row}, column {column}: {msg}")


def file_rows(df: pd.DataFrame) -> np.ndarray:
    """Each record's row number as errors and warnings give it: as the file numbers it where
    :func:`cohort.data.reader.read_table` left out comment or blank lines (its
    ``attrs["file_rows"]``), else 1, 2, ... (header excluded)."""
    rows = df.attrs.get("file_rows")
    if rows is not None and len(rows) == len(df):
        return np.asarray(rows, dtype=np.int64)
    return np.arange(1, len(df) + 1)


MISSING_AMT = (
    "a dose record (EVID 1) has no amount (an empty or '.' cell, which NONMEM reads as 0 and "
    "which would dose nothing); give AMT, or make the row an observation (EVID 0)"
)


def _missing_cells(column: pd.Series) -> np.ndarray:
    """Cells that hold no value: empty, ``.`` (NONMEM's missing value) or NaN."""
    if pd.api.types.is_numeric_dtype(column):
        return column.isna().to_numpy()
    return (column.isna() | column.astype(str).str.strip().isin((".", "", "nan"))).to_numpy()


def _numeric(df: pd.DataFrame, col: str, default: float, rows: np.ndarray) -> np.ndarray:
    if col not in df:
        return np.full(len(df), default, dtype=float)
    raw = df[col]
    if not pd.api.types.is_numeric_dtype(raw):  # NONMEM writes "." for a missing value
        raw = raw.where(~raw.astype(str).str.strip().isin((".", "")))
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        r = int(np.flatnonzero(bad.to_numpy())[0])
        cell = str(df[col].iloc[r]).strip()
        hint = ""
        if re.fullmatch(r"[-+]?\d+,\d+", cell):
            hint = " (a decimal comma? write 1.5, not 1,5)"
        elif col == "TIME" and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", cell):
            hint = (
                " (a clock time? TIME is hours since the start, e.g. 08:00 on the first day "
                "is 8 when the records start at midnight)"
            )
        raise _err(int(rows[r]), col, f"value {df[col].iloc[r]!r} is not a number{hint}")
    return values.fillna(default).to_numpy(dtype=float)


def _cmt_index(value: Any, row: int, state_names: Sequence[str], targets: Sequence[str]) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise _err(row, "CMT", f"missing compartment on a dose record; use one of {list(targets)}")
    if isinstance(value, str) and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
        if value not in state_names:
            raise _err(row, "CMT", f"unknown compartment {value!r}; use one of {list(targets)}")
        idx = state_names.index(value)
    else:
        num = float(value)
        if num != int(num):
            raise _err(row, "CMT", f"compartment number {value!r} is not an integer")
        num = int(num)
        if not 1 <= num <= len(state_names):
            raise _err(
                row,
                "CMT",
                f"unknown compartment number {num}; this model has compartments 1..."
                f"{len(state_names)} ({', '.join(state_names)})",
            )
        idx = num - 1
    if state_names[idx] not in targets:
        raise _err(
            row,
            "CMT",
            f"compartment {state_names[idx]!r} cannot receive doses; use one of {list(targets)}",
        )
    return idx


def records_from_frame(
    df: pd.DataFrame, state_names: Sequence[str], dose_targets: Sequence[str]
) -> list[pd.DataFrame]:
    """Validate NONMEM-style records and split them per patient (ID order kept).

    Rows are numbered as in the file (:func:`file_rows`). Raises :class:`DosingError`.
    """
    ex = _expanded(df, state_names, dose_targets)
    bounds = np.searchsorted(ex["code"], np.arange(ex["n"] + 1))
    cols = ("TIME", "AMT", "RATE", "CMT", "EVID", "SS", "II")
    return [pd.DataFrame({c: ex[c][a:b] for c in cols}) for a, b in zip(bounds[:-1], bounds[1:])]


def warn_amount_off_dose(amt, evid, rows, label: str, stacklevel: int) -> np.ndarray:
    """Warn once about AMT on EVID 0/2/3 records (not doses, as in NONMEM: said rather than
    dropped silently; a dose coded EVID 0 would otherwise fail later as "no dose"). ``rows``:
    the row numbers the user sees; returns ``amt`` with those amounts zeroed."""
    amt = np.asarray(amt, float)
    off = np.isin(evid, (0, 2, 3)) & (np.nan_to_num(amt) != 0)  # EVID 3: a reset only
    found = np.flatnonzero(off)
    if found.size:
        shown = ", ".join(str(int(r)) for r in np.asarray(rows)[found[:5]])
        warnings.warn(
            f"{label} {shown}{' ...' if found.size > 5 else ''}: AMT {amt[found[0]]:g} on an "
            f"EVID {evid[found[0]]:g} record ({found.size} in all) is not a dose and is "
            "ignored; a dose needs EVID=1 (or 4)",
            CohortWarning,
            stacklevel=stacklevel,
        )
    return np.where(off, 0.0, amt)


def records_table(
    df: pd.DataFrame, state_names: Sequence[str], dose_targets: Sequence[str]
) -> EventTable:
    """:func:`records_from_frame` padded straight into an :class:`EventTable` (vectorised: no
    per-patient frames, so 10^4-10^5 patients take well under a second). A user's dose row
    repeated whole is refused, as the fit's reader refuses it."""
    ex = _expanded(df, state_names, dose_targets)
    _refuse_repeated_doses(df, ex["row_dose"], ex["rows"])
    n, code = ex["n"], ex["code"]
    counts = np.bincount(code, minlength=n)
    e = max(1, int(counts.max(initial=0)))
    pos = np.arange(code.size) - np.searchsorted(code, code)  # rank within the patient
    out = {
        "time": np.full((n, e), np.inf),
        "amt": np.zeros((n, e)),
        "rate": np.zeros((n, e)),
        "cmt": np.zeros((n, e), dtype=np.int32),
        "evid": np.zeros((n, e), dtype=np.int32),
        "ss": np.zeros((n, e), dtype=bool),
        "ii": np.zeros((n, e)),
    }
    for key, col in (
        ("time", "TIME"),
        ("amt", "AMT"),
        ("rate", "RATE"),
        ("cmt", "CMT"),
        ("evid", "EVID"),
        ("ss", "SS"),
        ("ii", "II"),
    ):
        out[key][code, pos] = ex[col]
    return EventTable(**out, state_names=tuple(state_names))


def implied_evid(amt, rate, ss) -> np.ndarray:
    """EVID of rows that give none (numbers, missing as 0): a dose (1) where the row gives an
    amount, a rate or a steady state, else an observation (0). An SS=1 infusion with AMT 0
    and a RATE was read as an observation: all zeros (a probe)."""
    amt, rate, ss = (np.asarray(x, float) for x in (amt, rate, ss))
    return np.where((amt > 0) | (rate != 0) | (ss > 0), 1.0, 0.0)


def _refuse_repeated_doses(df: pd.DataFrame, dose: np.ndarray, rows: np.ndarray) -> None:
    """A dose row (``dose``: per row of ``df``, as :func:`_expanded` read it) equal in every
    column to an earlier one is a row pasted twice far more often than two identical doses
    meant (which one row with their sum gives): summed without a word, it doubled the
    patient's exposure (a probe), where `cohort fit` refused it."""
    frame = df.reset_index(drop=True)
    repeated = np.flatnonzero(frame.duplicated(keep="first").to_numpy() & dose)
    if repeated.size:
        i = int(repeated[0])
        group = frame.groupby(list(frame.columns), dropna=False, sort=False).ngroup()
        first = int(np.flatnonzero((group == group.iloc[i]).to_numpy())[0])
        raise _err(
            int(rows[i]),
            "AMT",
            f"the dose repeats row {rows[first]} in every column ({repeated.size} such row(s)); "
            "remove the copy, or give two doses at one time as one row with their sum",
        )


MAX_RECORDS_PER_PATIENT = 100_000  # e.g. 11 years of hourly doses


def _warn_dose_before_ss(time, code, dosing, ss, addl, ii, rows) -> None:
    """A dose before an SS=1 record at the same time, written as a row or implied by an
    earlier row's ADDL: NONMEM processes the rows in order and the SS=1 record resets the
    system, so that dose is lost there; cohort applies the steady state first and keeps it (a
    probe: 9.7 vs NONMEM's 2.2 mg/L 12 h later). Said, so that a dataset meant for NONMEM is
    not read two ways without a word."""
    repeating = np.flatnonzero(dosing & (addl > 0) & (ii > 0))
    for i in np.flatnonzero(dosing & (ss == 1)):
        j = i - 1
        while j >= 0 and code[j] == code[i] and time[j] == time[i]:
            if dosing[j]:
                warnings.warn(
                    f"dosing records: row {rows[j]} doses at TIME {time[i]:g}, before the SS=1 "
                    f"record of row {rows[i]} at the same time; NONMEM's SS=1 resets the system "
                    "and that dose is lost there, cohort applies the steady state first and "
                    "keeps it: put the SS=1 record first to keep the dose, or remove it",
                    CohortWarning,
                    stacklevel=4,
                )
                return
            j -= 1
        # a patient's rows are contiguous (checked before), codes in order of appearance
        first = np.searchsorted(code, code[i])
        for j in repeating[(repeating >= first) & (repeating < i)]:
            k = (time[i] - time[j]) / ii[j]  # the additional dose due at the SS record's time
            if 1 <= round(k) <= addl[j] and abs(k - round(k)) < 1e-9:
                warnings.warn(
                    f"dosing records: the ADDL doses of row {rows[j]} (every {ii[j]:g} from TIME "
                    f"{time[j]:g}) include one at TIME {time[i]:g}, the time of the SS=1 record "
                    f"of row {rows[i]}; NONMEM's SS=1 resets the system and that dose is lost "
                    "there, cohort applies the steady state first and keeps it: end the ADDL "
                    f"before it (ADDL={round(k) - 1}) to drop it, or give it as its own row "
                    "after the SS=1 record to keep it",
                    CohortWarning,
                    stacklevel=4,
                )
                return


def _expanded(df: pd.DataFrame, state_names: Sequence[str], dose_targets: Sequence[str]) -> dict:
    """Checked records expanded to engine records (ADDL copies, EVID 3/4 resets), sorted by
    patient (first-appearance order) then time, generation order breaking ties: columns
    ``TIME AMT RATE CMT EVID SS II``, ``code`` (patient index), ``n`` (patients) and ``rows``
    (each input row's number in errors and warnings, :func:`file_rows`)."""
    rows = file_rows(df)
    df = df.reset_index(drop=True)
    # "RATE " (a space before the comma) was read as no RATE column: infusions ran as boluses
    df.columns = [str(c).strip().upper() for c in df.columns]
    dated = date_column_problem(df.columns)
    if dated:
        raise DosingError(f"dosing records: column {dated[0]}: {dated[1]}")
    df, problems = rates_from_durations(df, rows)
    if problems:
        raise _err(*problems[0])
    if "TIME" not in df:
        raise DosingError(
            f"dosing records: missing column TIME (hours since start); columns: {list(df.columns)}"
        )
    if "AMT" not in df:
        raise DosingError(
            f"dosing records: missing column AMT (dose amount); columns: {list(df.columns)}"
        )
    if "C" in df:
        flagged = np.flatnonzero(df["C"].astype(str).str.strip().isin(("C", "#")).to_numpy())
        if flagged.size:
            shown = ", ".join(str(r) for r in rows[flagged[:5]]) + " ..." * (flagged.size > 5)
            raise DosingError(
                f"dosing records: column C flags row(s) {shown} as comments (NONMEM IGNORE=C); "
                "cohort would dose them: remove those rows from the file"
            )
    if "ID" in df:  # a missing ID made a patient called "." (a probe)
        no_id = np.flatnonzero(_missing_cells(df["ID"]))
        if no_id.size:
            raise _err(int(rows[no_id[0]]), "ID", "missing ID; give every row its patient's ID")
    ids = _id_key_array(df["ID"]) if "ID" in df else np.zeros(len(df), dtype=int)
    time = _numeric(df, "TIME", np.nan, rows)
    amt = _numeric(df, "AMT", 0.0, rows)
    evid = _numeric(df, "EVID", np.nan, rows)
    no_amt = _missing_cells(df["AMT"])
    rate = _numeric(df, "RATE", 0.0, rows)
    addl = _numeric(df, "ADDL", 0.0, rows)
    ii = _numeric(df, "II", 0.0, rows)
    ss = _numeric(df, "SS", 0.0, rows)
    evid = np.where(np.isnan(evid), implied_evid(amt, rate, ss), evid)
    warn_amount_off_dose(amt, evid, rows, "dosing records: row(s)", 5)
    default_cmt = state_names.index(dose_targets[0]) + 1 if dose_targets else 1
    cmt_raw = df["CMT"].to_numpy() if "CMT" in df else np.full(len(df), default_cmt)
    cmt = np.zeros(len(df), dtype=int)
    cmt_cache: dict = {}
    for i in range(len(df)):
        row = int(rows[i])
        if np.isnan(time[i]):
            raise _err(row, "TIME", "missing time")
        if not np.isfinite(time[i]):
            raise _err(row, "TIME", f"TIME {time[i]:g} must be a finite number")
        if evid[i] not in (0, 1, 2, 3, 4):
            raise _err(row, "EVID", f"EVID {evid[i]:g} is not one of 0, 1, 2, 3, 4")
        dose = evid[i] in (1, 4)
        if not dose:
            continue
        if not np.isfinite(rate[i]):
            raise _err(row, "RATE", f"RATE {rate[i]:g} must be finite")
        if not np.isfinite(ii[i]):
            raise _err(row, "II", f"II {ii[i]:g} must be finite")
        if not np.isfinite(amt[i]) or amt[i] < 0:
            raise _err(row, "AMT", f"dose amount {amt[i]:g} must be a finite number >= 0")
        if evid[i] == 1 and no_amt[i]:
            raise _err(row, "AMT", MISSING_AMT)
        if rate[i] < 0 and rate[i] != -2:
            raise _err(
                row,
                "RATE",
                f"RATE {rate[i]:g} must be >= 0 (an infusion rate, 0 for a bolus) or -2 (a "
                "duration modelled by a D_<cmt> parameter, in simulations); NONMEM's RATE=-1 "
                "(modelled rate) is not supported: give the rate itself",
            )
        if not np.isfinite(addl[i]) or addl[i] < 0 or addl[i] != int(addl[i]):
            raise _err(row, "ADDL", f"ADDL {addl[i]:g} must be a non-negative integer")
        if ii[i] < 0:
            raise _err(row, "II", f"II {ii[i]:g} must be >= 0")
        if addl[i] > 0 and ii[i] <= 0:
            raise _err(row, "II", f"ADDL={addl[i]:g} needs an interdose interval II > 0")
        if ss[i] not in (0, 1):
            raise _err(row, "SS", f"SS={ss[i]:g} is not supported; use 0 or 1")
        if ss[i] == 1 and ii[i] <= 0 and amt[i] == 0 and rate[i] > 0:
            raise _err(
                row,
                "II",
                "SS=1 with AMT=0, RATE > 0 and II=0 (a constant infusion at steady state) is "
                "not supported; give the same as a steady-state infusion lasting its interval: "
                f"II=24, AMT={24 * rate[i]:g} (RATE x II), RATE={rate[i]:g}, SS=1 and ADDL "
                "covering the run",
            )
        if ss[i] == 1 and ii[i] <= 0:
            raise _err(row, "II", "SS=1 needs the dosing interval II > 0")
        if ss[i] == 1 and rate[i] > 0 and amt[i] / rate[i] > ii[i]:
            raise _err(
                row,
                "RATE",
                f"the SS=1 infusion lasts AMT/RATE = {amt[i]:g}/{rate[i]:g} = "
                f"{amt[i] / rate[i]:g}, longer than its interval II {ii[i]:g}: a steady state "
                "of overlapping infusions is not supported; raise RATE (or lower AMT) so that "
                "each infusion ends within II, or drop SS=1 and give the doses explicitly "
                "(ADDL with II, enough of them to reach steady state)",
            )
        key = (type(cmt_raw[i]), cmt_raw[i])
        if key not in cmt_cache:  # the same compartment value on many rows: checked once
            cmt_cache[key] = _cmt_index(cmt_raw[i], row, state_names, dose_targets)
        cmt[i] = cmt_cache[key]
    code, uniques = pd.factorize(ids)
    n = len(uniques)
    # records of one patient must be contiguous: each patient's rows form one run
    runs = np.flatnonzero(np.diff(code) != 0) + 1
    starts = np.concatenate([[0], runs]) if len(code) else np.zeros(0, int)
    seen_twice = np.flatnonzero(pd.Series(code[starts]).duplicated().to_numpy())
    if seen_twice.size:
        i = int(starts[seen_twice[0]])
        first = int(np.argmax(code == code[i]))
        said = df["ID"].astype(str).str.strip().to_numpy() if "ID" in df else None
        why = "records of one patient must be contiguous"
        if said is not None and said[i] != said[first]:  # "01" after "1" (and "2")
            why = (
                f"IDs {said[first]} (row {rows[first]}) and {said[i]} are one subject, as "
                f"NONMEM reads IDs (numbers), and {why}: write each subject's ID one way, "
                "and give different subjects different numbers"
            )
        raise _err(int(rows[i]), "ID", why)
    back = np.flatnonzero((np.diff(time) < 0) & (np.diff(code) == 0))
    if back.size:
        j = int(back[0])
        why = time_goes_back(time[j + 1], time[j], int(evid[j + 1]), prev_evid=int(evid[j]))
        raise _err(int(rows[j + 1]), "TIME", why)
    _warn_dose_before_ss(time, code, np.isin(evid, (1, 4)), ss, addl, ii, rows)
    # expansion, in the order the records are generated per row: reset, then doses k = 0..
    # EVID 4 with SS=1 is EVID 1 with SS=1 (the steady state resets the system itself, as in
    # NONMEM): a separate reset record at the same time was applied after the steady state
    # and wiped it (a single dose's 3.125 for a steady state's 5.119; a probe)
    reset = (evid == 3) | ((evid == 4) & (ss != 1))
    dosing = np.isin(evid, (1, 4))
    reps = np.where(dosing, np.minimum(addl, 2**62).astype(np.int64) + 1, 0)
    per_patient = np.bincount(code, weights=reps.astype(float), minlength=n)
    if per_patient.max(initial=0) > MAX_RECORDS_PER_PATIENT:
        # every dose record is held in memory and stepped through: ADDL=1e8 was killed
        who = int(np.argmax(per_patient))
        j = int(np.flatnonzero((code == who) & dosing)[np.argmax(reps[(code == who) & dosing])])
        raise _err(
            rows[j], "ADDL", f"{per_patient[who]:,.0f} doses for one patient after ADDL expansion "
            f"(ADDL {addl[j]:g} every II {ii[j]:g}); at most {MAX_RECORDS_PER_PATIENT:,} are "
            "supported: check the units of II and ADDL, or give only the doses that fall in "
            "the simulated time"
        )  # fmt: skip
    src = np.repeat(np.arange(len(df)), reps)
    k = np.arange(src.size) - np.repeat(np.cumsum(reps) - reps, reps)
    r_rows = np.flatnonzero(reset)
    with np.errstate(over="ignore", invalid="ignore"):  # the last dose of each dosing row
        too_far = ~np.isfinite(time + np.where(dosing, addl, 0) * np.where(dosing, ii, 0))
    if (too_far & dosing).any():
        j = int(np.flatnonzero(too_far & dosing)[0])
        raise _err(int(rows[j]), "ADDL", f"ADDL x II ({addl[j]:g} x {ii[j]:g}) is beyond any time; "
                   "check the units of II and the number of additional doses")  # fmt: skip
    rec = {
        "TIME": np.concatenate([time[r_rows], time[src] + k * ii[src]]),
        "AMT": np.concatenate([np.zeros(r_rows.size), amt[src]]),
        "RATE": np.concatenate([np.zeros(r_rows.size), rate[src]]),
        "CMT": np.concatenate([np.zeros(r_rows.size, int), cmt[src]]),
        "EVID": np.concatenate([np.full(r_rows.size, 3), np.ones(src.size, int)]),
        "SS": np.concatenate([np.zeros(r_rows.size, int), np.where(k == 0, ss[src], 0)]).astype(
            int
        ),
        "II": np.concatenate([np.zeros(r_rows.size), ii[src]]),
    }
    rcode = np.concatenate([code[r_rows], code[src]])
    # generation order: by row, the reset (slot 0) before the dose copies (slots 1, 2, ...)
    gen = np.lexsort(
        (np.concatenate([np.zeros(r_rows.size), 1.0 + k]), np.concatenate([r_rows, src]))
    )
    rank = np.empty_like(gen)
    rank[gen] = np.arange(gen.size)  # generation order of each record
    idx = np.lexsort((rank, rec["TIME"], rcode))
    out = {c: v[idx] for c, v in rec.items()}
    out["code"], out["n"] = rcode[idx], n
    out["row_dose"] = dosing  # per input row: a dose (EVID 1/4, as inferred without EVID)
    out["rows"] = rows
    return out


def _pad(per_patient: list[pd.DataFrame], state_names: Sequence[str]) -> EventTable:
    n = len(per_patient)
    e = max(1, max((len(f) for f in per_patient), default=0))
    time = np.full((n, e), np.inf)
    amt = np.zeros((n, e))
    rate = np.zeros((n, e))
    cmt = np.zeros((n, e), dtype=np.int32)
    evid = np.zeros((n, e), dtype=np.int32)
    ss = np.zeros((n, e), dtype=bool)
    ii = np.zeros((n, e))
    for i, f in enumerate(per_patient):
        k = len(f)
        if not k:
            continue
        time[i, :k] = f["TIME"]
        amt[i, :k] = f["AMT"]
        rate[i, :k] = f["RATE"]
        cmt[i, :k] = f["CMT"]
        evid[i, :k] = f["EVID"]
        ss[i, :k] = f["SS"].astype(bool)
        ii[i, :k] = f["II"]
    return EventTable(time, amt, rate, cmt, evid, ss, ii, tuple(state_names))


def regimens_frame(regs: Sequence[Regimen], targets: Sequence[str]) -> pd.DataFrame:
    """NONMEM dose rows of ``regs`` (time order); CMT 0 becomes the first of ``targets``."""
    frames = []
    for r in regs:
        f = r.to_frame()
        if r.cmt == 0 and targets:  # default compartment: the model's first dose target
            f["CMT"] = targets[0]
        frames.append(f)
    return pd.concat(frames, ignore_index=True).sort_values("TIME", kind="stable")


def patient_ids(dosing: Any) -> np.ndarray | None:
    """The ``ID`` of each patient of a NONMEM-style records frame, in the order
    :func:`event_table` gives the patients (first appearance), or None for other dosing: whole
    numbers as int64, other numbers as float64, anything else as text. Kept with the results
    so that a user can join them back to the file's patients."""
    if not isinstance(dosing, pd.DataFrame):
        return None
    col = next((c for c in dosing.columns if str(c).strip().upper() == "ID"), None)
    if col is None:
        return None
    first = ~pd.Series(_id_key_array(dosing[col])).duplicated().to_numpy()  # as first written
    return id_values(dosing[col].to_numpy()[first])


def id_keys(column) -> list:
    """Patient IDs of a column as the records' patients are told apart: numbers where every
    ID is one, as NONMEM reads ID ("1", "01" and "1.0" are one subject; the CLI, the fit's
    reader and the event table must count them alike), else the text as written."""
    return _id_key_array(column).tolist()


def _id_key_array(column) -> np.ndarray:
    """:func:`id_keys` as an array (float, or text as objects)."""
    column = pd.Series(column)
    numbers = pd.to_numeric(column, errors="coerce")
    # numbers only where a float holds each one exactly: two IDs beyond 2**53 (e.g. 17-digit
    # record numbers) were one float, and one patient got both patients' doses (a review)
    if numbers.notna().all() and (numbers.abs() < 2.0**53).all():
        return numbers.to_numpy(dtype=float)
    return column.astype(str).str.strip().to_numpy(dtype=object)


def id_values(ids) -> np.ndarray:
    """Patient IDs as a result keeps them: whole numbers as int64, other numbers as float64,
    anything else as text."""
    ids = np.asarray(ids, dtype=object).reshape(-1)
    numbers = pd.to_numeric(pd.Series(ids), errors="coerce").to_numpy(dtype=float)
    # "007" or "7.0" written as text are kept as written (zero-padded IDs are names)
    padded = any(isinstance(i, str) and re.match(r"\s*[-+]?0\d", i) for i in ids)
    # beyond 2**53 a float64 no longer holds every whole number: such IDs stay text
    if len(ids) and np.isfinite(numbers).all() and not padded and np.abs(numbers).max() < 2**53:
        whole = np.all(numbers == np.round(numbers))
        return numbers.astype(np.int64) if whole else numbers
    return np.asarray([str(i).strip() for i in ids], dtype=str)


def event_table(
    dosing: Any,
    state_names: Sequence[str],
    dose_targets: Sequence[str],
    n_patients: int | None = None,
) -> EventTable:
    """Build an :class:`EventTable` from any supported dosing description.

    ``dosing`` may be a :class:`Regimen`, a list of them (same for every patient), a list of
    per-patient lists, a NONMEM-style :class:`pandas.DataFrame` (one patient per ``ID``), an
    existing :class:`EventTable`, or ``None`` (no doses). Shared regimens are broadcast to
    ``n_patients``.
    """
    if isinstance(dosing, EventTable):
        table = dosing
    elif dosing is None:
        table = _pad([pd.DataFrame(columns=_COLUMNS)] * (n_patients or 1), state_names)
    elif isinstance(dosing, pd.DataFrame):
        table = records_table(dosing, state_names, dose_targets)
    else:
        if not isinstance(dosing, (Regimen, list, tuple)):
            raise DosingError(
                "dosing: give a Regimen, a list of Regimens (shared by every patient), a list "
                "of such lists (one per patient) or NONMEM-style records (a DataFrame); got "
                f"{type(dosing).__name__}"
            )
        regs = [dosing] if isinstance(dosing, Regimen) else list(dosing)
        if regs and all(isinstance(r, Regimen) for r in regs):
            shared = records_from_frame(
                regimens_frame(regs, dose_targets), state_names, dose_targets
            )
            table = _pad(shared, state_names)
        elif all(isinstance(r, (list, tuple)) for r in regs):
            per = []
            for i, pr in enumerate(regs):
                if not all(isinstance(r, Regimen) for r in pr):
                    raise DosingError(f"patient {i}: expected a list of Regimen objects")
                frame = regimens_frame(pr, dose_targets) if pr else pd.DataFrame(columns=_COLUMNS)
                per += records_from_frame(frame, state_names, dose_targets) if pr else [frame]
            table = _pad(per, state_names)
        else:
            raise DosingError(
                "dosing must be a Regimen, a list of Regimens, a list of per-patient lists of "
                f"Regimens, a NONMEM-style DataFrame or an EventTable; got {type(dosing).__name__}"
            )
    if n_patients is not None and table.n_patients != n_patients:
        if table.n_patients == 1:
            # Read-only views of the one row: a shared regimen costs no memory per patient
            # (10^7 patients would otherwise hold 10^7 copies of its records).
            table = _shared_rows(table.arrays(), table.state_names, n_patients)
        else:
            raise DosingError(
                f"dosing describes {table.n_patients} patients but the population has "
                f"{n_patients}; give one regimen for all or one per patient"
            )
    if tuple(table.state_names) != tuple(state_names):
        raise DosingError("event table was built for a different model (state names differ)")
    return table
