"""Read and validate NONMEM-style datasets (CSV or whitespace-separated, or a DataFrame).

Every problem found is collected with its row and column before anything is raised, so a user
fixes a file in one pass instead of one error per run. Rows are numbered from 1 as in the file
(header excluded), the convention of :func:`cohort.dosing.records_from_frame`, whose dose-record
checks (RATE, ADDL, II, SS, dose compartments) are reused rather than duplicated here.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohort.data.coincident import warn_observations_at_additional_doses
from cohort.dosing import (
    DosingError,
    EventTable,
    file_rows,
    records_table,
    time_goes_back,
    warn_amount_off_dose,
)
from cohort.dosing_formats import date_column_problem, rates_from_durations
from cohort.errors import CohortWarning, show_id
from cohort.models.base import Model

# Data items with a fixed meaning; every other numeric column is a covariate.
STANDARD = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "ADDL", "II", "SS")
CENSORING = ("BLQ", "CENS", "LLOQ")
REQUIRED = ("ID", "TIME", "DV", "AMT")
_MISSING = {"", ".", "NA", "NAN", "NULL"}
_MAX_LISTED = 25


STANDARD_COLUMNS = frozenset(
    {
        "ID",
        "TIME",
        "DV",
        "AMT",
        "EVID",
        "MDV",
        "CMT",
        "RATE",
        "ADDL",
        "II",
        "SS",
        "CENS",
        "LLOQ",
        "BLQ",
        "DVID",
    }
)
"""NONMEM record columns; every other numeric column of a dataset is a covariate."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One violation: the 1-based data row (None for whole-file problems), column and message."""

    row: int | None
    column: str
    message: str

    def __str__(self) -> str:
        if self.row:
            return f"row {self.row}, column {self.column}: {self.message}"
        if self.column in ("file", ""):  # the message names the file itself
            return self.message
        return f"column {self.column}: {self.message}"


class DataError(DosingError):
    """The dataset is invalid. ``problems`` lists every violation with its row and column."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = _grouped(self.problems)
        shown = "\n  ".join(lines[:_MAX_LISTED])
        more = len(lines) - _MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        if len(self.problems) == 1:
            p = self.problems[0]
            super().__init__(f"dataset {p}" if p.row or p.column not in ("file", "") else str(p))
        else:
            super().__init__(f"dataset: {len(self.problems)} problems\n  {shown}{tail}")


def _grouped(problems: list[Problem]) -> list[str]:
    """One line per distinct (column, message): the same problem on many rows (e.g. a dataset
    written for another model: one unknown compartment on every dose row) is listed once with
    its rows, not once per row."""
    groups: dict[tuple[str, str], list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.column, p.message), []).append(p)
    lines = []
    for (column, message), same in groups.items():
        rows = [p.row for p in same if p.row]
        if len(same) == 1 or len(rows) != len(same):
            lines += [str(p) for p in same]
            continue
        listed = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        lines.append(f"rows {listed} ({len(rows)} rows), column {column}: {message}")
    return lines


def read_columns(path: str | Path) -> list[str]:
    """The column names of a NONMEM-style file, from its header line alone."""
    header, sep, _ = _header(Path(path))
    return _names(header, sep)


def _names(header: str, sep: str) -> list[str]:
    return [h.strip() for h in (header.split(sep) if sep in (",", ";") else header.split())]


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _header(path: Path) -> tuple[str, str, int]:
    """A table file's header line, its separator (comma; else semicolon, as spreadsheets
    write CSVs where the comma is the decimal mark; else whitespace) and its line index.
    Lines starting with ``#`` are comments (NONMEM's default ``IGNORE=#``), except a
    ``#ID TIME ...`` header, read without its ``#``."""
    if not path.exists():
        raise DataError([Problem(None, "file", f"no such file {str(path)!r}")])
    if not path.is_file():
        raise DataError([Problem(None, "file", f"{str(path)!r} is not a file")])
    try:
        with path.open(encoding="utf-8") as fh:
            index, header = 0, fh.readline()
            while _is_comment(header) and not _hash_header(header):
                index, header = index + 1, fh.readline()
    except UnicodeDecodeError:
        raise DataError(
            [Problem(None, "file", f"{str(path)!r} is not a text (UTF-8) table; give a CSV")]
        ) from None
    if not header.strip():
        raise DataError([Problem(None, "file", f"{str(path)!r} is empty (no header line)")])
    header = header.lstrip().removeprefix("#") if _is_comment(header) else header
    return header, next((sep for sep in (",", ";") if sep in header), r"\s+"), index


def _hash_header(line: str) -> bool:
    """``#ID,TIME,...``: a header written as a comment (NONMEM tables, some exports)."""
    words = {w.strip().upper() for w in re.split(r"[,;\s]+", line.lstrip().removeprefix("#"))}
    return {"ID", "TIME"} <= words


def read_table(path: str | Path) -> pd.DataFrame:
    """Raw cells of a NONMEM-style file as strings (comma-, semicolon- or
    whitespace-separated)."""
    path = Path(path)
    header, sep, index = _header(path)
    try:  # read once, parsed from memory (comment lines need the text anyway)
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(
            [Problem(None, "file", f"{str(path)!r} is not a text (UTF-8) table; give a CSV")]
        ) from None
    numbered = None
    # comment lines (and a #-header) left out before parsing; blank lines too, which pandas
    # would skip itself, shifting the numbers of the rows after them (a probe)
    if "#" in text or re.search(r"\n[ \t\r]*(\n|$)", text.rstrip("\r\n")):
        lines = text.splitlines(keepends=True)
        kept = [k for k, line in enumerate(lines[index + 1 :], 1)
                if line.strip() and not _is_comment(line)]  # fmt: skip
        rest = [lines[index + k] for k in kept]
        text = "".join([header if header.endswith("\n") else header + "\n", *rest])
        if len(kept) < len(lines) - index - 1:
            numbered = np.asarray(kept)  # each record's row as the file numbers it
    try:
        table = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(
            [Problem(None, "file", f"{str(path)!r} is not a readable table: {exc}")]
        ) from None
    names = _names(header, sep)
    dupes = sorted({h for h in names if names.count(h) > 1})
    if dupes:
        raise DataError(
            [Problem(None, "header", f"column(s) {dupes} appear more than once; keep one of each")]
        )
    table.columns = [str(c).strip() for c in table.columns]  # "RATE " is RATE
    if numbered is not None and len(numbered) == len(table):
        table.attrs["file_rows"] = numbered
    return table


def _cells_missing(raw: pd.Series) -> np.ndarray:
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        text = raw.astype(str).str.strip().str.upper()
        return (raw.isna() | text.isin(_MISSING)).to_numpy()
    return raw.isna().to_numpy()


def _numbers(raw: pd.Series, column: str, rows: np.ndarray, problems: list[Problem]) -> np.ndarray:
    """Numeric values (NaN where missing); non-numeric cells become problems."""
    missing = _cells_missing(raw)
    text = raw.where(~missing) if raw.dtype == object else raw
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isnan(values) & ~missing)
    if column == "ID" and bad.size > 1:  # text IDs (e.g. 'A01'): one problem, not one per row
        shown = ", ".join(repr(v) for v in pd.unique(raw.iloc[bad])[:3])
        problems.append(
            Problem(
                int(rows[bad[0]]),
                column,
                f"IDs are text ({shown}, ... in {bad.size} rows); NONMEM-style records need "
                "numeric IDs: number the patients (1, 2, 3, ...) and keep the key beside",
            )
        )
        return values
    for i in bad:
        cell = str(raw.iloc[i]).strip()
        hint = (
            " (a decimal comma? write 1.5, not 1,5)" if re.fullmatch(r"[-+]?\d+,\d+", cell) else ""
        )
        if column == "DV" and re.fullmatch(r"(<|&lt;|BLQ|BQL|LLOQ).*", cell, re.I):
            hint = (
                " (a result below the limit of quantification: write CENS=1, or BLQ=1, with "
                "the limit in an LLOQ column or in DV; it is then fitted as censored, M3)"
            )
        elif column == "TIME" and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?|\d{4}-\d\d-\d\d.*", cell):
            hint = (
                " (a clock time or date: write TIME as the time since the first record, e.g. "
                "hours from the first dose)"
            )
        problems.append(Problem(int(rows[i]), column, f"value {cell!r} is not a number{hint}"))
    return values


def _cmt_problem(value: Any, model: Model, dose: bool) -> str | None:
    """Why ``value`` is not a valid compartment of ``model`` (None when it is)."""
    names = model.state_names
    targets = model.dose_targets if dose else names + model.output_names
    try:
        num = float(value)
    except (TypeError, ValueError):
        num = None
    if num is None:
        if value not in targets:
            kind = "dose compartment" if dose else "compartment"
            return f"unknown {kind} {value!r}; use one of {list(targets)}"
        return None
    if num != int(num) or not 1 <= num <= len(names):
        return (
            f"unknown compartment number {value}; model {model.name!r} has compartments "
            f"1..{len(names)} ({', '.join(names)})"
        )
    if dose and names[int(num) - 1] not in model.dose_targets:
        return (
            f"compartment {int(num)} ({names[int(num) - 1]!r}) cannot receive doses; "
            f"use one of {list(model.dose_targets)}"
        )
    return None


def _order_problems(
    ids: np.ndarray, time: np.ndarray, rows: np.ndarray, evid: np.ndarray
) -> list[Problem]:
    out: list[Problem] = []
    seen: dict[Any, int] = {}
    for i in range(len(ids)):
        if i and ids[i] != ids[i - 1] and ids[i] in seen:
            out.append(
                Problem(
                    int(rows[i]),
                    "ID",
                    f"records of ID {show_id(ids[i])} are split (also at row {seen[ids[i]]}); "
                    "keep each subject's records contiguous",
                )
            )
        seen.setdefault(ids[i], int(rows[i]))
        if i and ids[i] == ids[i - 1] and time[i] < time[i - 1]:
            out.append(
                Problem(
                    int(rows[i]),
                    "TIME",
                    time_goes_back(
                        time[i],
                        time[i - 1],
                        int(evid[i]),
                        f"ID {show_id(ids[i])}",
                        int(evid[i - 1]),
                    ),  # fmt: skip
                )
            )
    return out


# Two records equal in these are one record given twice.
DUPLICATE_KEYS = ("ID", "TIME", "EVID", "CMT", "AMT", "DV", "RATE")


def _duplicates(frame: pd.DataFrame, rows: np.ndarray) -> list[Problem]:
    keys = [c for c in DUPLICATE_KEYS if c in frame]
    dup = frame.duplicated(subset=keys, keep="first").to_numpy()
    first = frame.reset_index(drop=True).groupby(keys, dropna=False, sort=False).ngroup()
    first_row = {g: int(rows[i]) for i, g in reversed(list(enumerate(first)))}
    return [
        Problem(
            int(rows[i]),
            "ID",
            f"duplicate of row {first_row[first.iloc[i]]} (same {keys}); remove one of them",
        )
        for i in np.flatnonzero(dup)
    ]


def dvid_label(value: Any) -> str:
    """One ``DVID`` cell as a label: numbers in their shortest form (``1``, ``1.0`` and
    ``"1"`` are ``"1"``), text stripped, ``""`` where missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value).strip()
    if text.upper() in _MISSING:
        return ""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)  # 1e6+1 stays apart


def dvid_labels(column: pd.Series) -> np.ndarray:
    """:func:`dvid_label` of every cell (an object array)."""
    return np.array([dvid_label(v) for v in column.tolist()], dtype=object)


def observation_kinds(records: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{DVID label: ROW numbers}`` of the observations (EVID 0, MDV 0) of validated
    ``records``, kinds in order of appearance (``""``: no DVID); ``{}`` without DVID."""
    if "DVID" not in records:
        return {}
    obs = records[(records["EVID"] == 0) & (records["MDV"] == 0)]
    labels = obs["DVID"].astype(str).to_numpy()
    rows = obs["ROW"].to_numpy()
    return {k: rows[labels == k] for k in dict.fromkeys(labels.tolist())}


def rows_of_kind(raw: pd.DataFrame, dvid: Any) -> np.ndarray:
    """Rows to keep for observations of kind ``dvid``: every row but the observations
    (``EVID`` 0, or without EVID no ``AMT``) of another ``DVID``."""
    want = dvid_label(dvid)
    if not want:
        raise DataError([Problem(None, "DVID", f"dvid must name a kind, got {dvid!r}")])
    if "DVID" not in raw:
        raise DataError(
            [Problem(None, "DVID", f"dvid={want} was given but the dataset has no DVID column")]
        )
    labels = dvid_labels(raw["DVID"])
    if "EVID" in raw:
        observed = pd.to_numeric(raw["EVID"], errors="coerce").to_numpy() == 0
    else:
        amt = pd.to_numeric(raw["AMT"], errors="coerce").to_numpy() if "AMT" in raw else None
        observed = np.ones(len(raw), bool) if amt is None else ~(np.nan_to_num(amt) > 0)
    if not np.any(observed & (labels == want)):
        found = sorted({str(k) for k in labels[observed] if k})
        raise DataError(
            [
                Problem(
                    None,
                    "DVID",
                    f"no observation has DVID {want}; the observations' DVIDs are "
                    f"{', '.join(found) or 'all missing'}",
                )
            ]
        )
    return ~observed | (labels == want)


def validate(
    raw: pd.DataFrame,
    model: Model | None = None,
    durations: bool = True,
    dvid: Any = None,
) -> pd.DataFrame:
    """Check NONMEM records and return them normalised (upper-case names, EVID/MDV filled).

    Raises :class:`DataError` listing every problem. The returned frame has a ``ROW`` column
    (1-based row of the input), float columns for the standard items, ``CENS``/``LLOQ``, the
    compartment column as given (numbers or state names) and one column per covariate.
    ``durations=False`` keeps a ``DUR`` column as a covariate (a control stream's data, where
    ``$PK`` says what DUR is) instead of reading it as infusion durations. ``DVID`` is kept as
    text labels (``"1"``, ``"cp"``; ``""`` where missing); ``dvid`` keeps only the
    observations of that kind (before anything else is checked: another kind's rows may name
    a compartment the model lacks), rows still numbered as in the input.
    """
    rows = file_rows(raw)  # as the file numbers them (comment and blank lines counted)
    raw = raw.reset_index(drop=True)
    raw.columns = [str(c).strip().upper() for c in raw.columns]
    if dvid is not None:
        keep = rows_of_kind(raw, dvid)
        raw, rows = raw[keep].reset_index(drop=True), rows[keep]
    dated = date_column_problem(raw.columns)
    if dated:
        raise DataError([Problem(None, *dated)])
    if durations and not raw.columns.duplicated().any():
        raw, found = rates_from_durations(raw, rows)  # DUR (rxode2, Pmetrics) as NONMEM's RATE
        if found:
            raise DataError([Problem(*p) for p in found])
    dupe_cols = raw.columns[raw.columns.duplicated()].tolist()
    missing = [c for c in REQUIRED if c not in raw]
    problems = [Problem(None, c, "column appears more than once") for c in dupe_cols]
    # the columns found, e.g. a file separated by ';' reads as one column "ID;TIME;AMT"
    found = ", ".join(repr(str(c)) for c in list(raw.columns)[:12])
    separator = next(
        (sep for sep in (";", "\t", "|") if any(sep in str(c) for c in raw.columns)), None
    )
    hint = (
        f"; the header holds {separator!r}: write the file comma-separated (a CSV)"
        if missing and separator
        else ""
    )
    problems += [
        Problem(None, c, f"missing column {c}{_HINTS.get(c, '')} (columns found: {found}){hint}")
        for c in missing
    ]
    if problems:
        raise DataError(problems)
    if len(raw) == 0:
        raise DataError([Problem(None, "ID", "the dataset has no rows")])
    if "C" in raw:  # NONMEM's IGNORE=C: flagged rows must not be fitted as data
        flagged = np.flatnonzero(raw["C"].astype(str).str.strip().isin(("C", "#")).to_numpy())
        if flagged.size:
            more = " ..." if flagged.size > 5 else ""
            shown = ", ".join(str(r) for r in rows[flagged[:5]]) + more
            raise DataError(
                [Problem(int(rows[flagged[0]]), "C",
                         f"column C flags row(s) {shown} as comments (NONMEM IGNORE=C); cohort "
                         "would use them as data: remove those rows from the file (a control "
                         "stream's $DATA IGNORE=C is applied by `cohort fit run.mod`)")]
            )  # fmt: skip
    out = pd.DataFrame({"ROW": rows})
    for col in ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "RATE", "ADDL", "II", "SS", *CENSORING):
        if col in raw:
            out[col] = _numbers(raw[col], col, rows, problems)
    if "DVID" in raw:  # the kind of each observation: a label, numbers or text (nlmixr2's "cp")
        out["DVID"] = dvid_labels(raw["DVID"])
    covariates = [c for c in raw.columns if c not in STANDARD + CENSORING + ("DVID", "C")]
    for col in covariates:
        out[col] = _numbers(raw[col], col, rows, problems)
    ids = out["ID"].to_numpy()
    if np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
        out["ID"] = ids.astype(np.int64)
    amt = np.nan_to_num(out["AMT"].to_numpy(), nan=0.0)
    out["AMT"] = amt
    if "EVID" not in out:
        out["EVID"] = np.where(amt > 0, 1.0, 0.0)
    evid = out["EVID"].to_numpy()
    for i in np.flatnonzero(~np.isin(evid, (0, 1, 2, 3, 4)) & ~np.isnan(evid)):
        problems.append(Problem(int(rows[i]), "EVID", f"EVID {evid[i]:g} is not 0, 1, 2, 3 or 4"))
    flagged_empty = _censored_without_dv(out, raw, evid, rows, problems)
    dv_missing = np.isnan(out["DV"].to_numpy())
    dv_text = dv_missing & ~_cells_missing(raw["DV"])  # e.g. '<0.1': a problem of its own
    if "MDV" not in out:
        out["MDV"] = np.where((evid != 0) | dv_missing, 1.0, 0.0)
        unused = np.flatnonzero((evid == 0) & dv_missing & ~dv_text & ~flagged_empty)
        if unused.size:  # said, not dropped silently
            shown = ", ".join(str(int(r)) for r in rows[unused][:5])
            warnings.warn(
                f"record(s) {shown}{' ...' if unused.size > 5 else ''}: EVID 0 without a DV "
                f"({unused.size} in all) are not used as observations (MDV=1); give the DV, or "
                "an MDV column to say so explicitly",
                CohortWarning,
                stacklevel=3,
            )
    mdv = out["MDV"].to_numpy()
    for i in np.flatnonzero(~np.isin(mdv, (0, 1))):
        problems.append(Problem(int(rows[i]), "MDV", f"MDV {mdv[i]:g} is not 0 or 1"))
    dose = np.isin(evid, (1, 4))
    # said once, not again downstream
    amt = warn_amount_off_dose(amt, evid, rows, "record(s)", 4)
    out["AMT"] = amt
    dv = out["DV"].to_numpy()
    on_dose = np.flatnonzero(dose & ~dv_missing & (dv != 0))
    if on_dose.size:  # NONMEM reads no observation from a dose record: said, then ignored
        shown = ", ".join(str(int(r)) for r in rows[on_dose][:5])
        warnings.warn(
            f"record(s) {shown}{' ...' if on_dose.size > 5 else ''}: DV on a dose record "
            f"({on_dose.size} in all) is ignored, as NONMEM does; an observation at a dose "
            "time goes on its own row with EVID=0",
            CohortWarning,
            stacklevel=3,
        )
    for i in np.flatnonzero((evid != 0) & (mdv == 0)):
        problems.append(
            Problem(int(rows[i]), "MDV", "MDV=0 on a non-observation record; set MDV=1")
        )
    obs = (evid == 0) & (mdv == 0)
    for i in np.flatnonzero(obs & dv_missing & ~dv_text):
        problems.append(
            Problem(int(rows[i]), "DV", "observation record without a DV; give DV or set MDV=1")
        )
    for i in np.flatnonzero(obs & np.isinf(dv)):
        problems.append(
            Problem(
                int(rows[i]),
                "DV",
                f"DV {dv[i]:g} is not a finite number; give the measured value, or MDV=1 to "
                "leave the record out",
            )
        )
    amt_missing = _cells_missing(raw["AMT"])
    for i in np.flatnonzero(dose & (amt_missing | (amt < 0))):
        problems.append(Problem(int(rows[i]), "AMT", "dose record needs an amount AMT >= 0"))
    for col in ("ID", "TIME"):
        v = out[col].to_numpy()
        for i in np.flatnonzero(_cells_missing(raw[col])):
            problems.append(Problem(int(rows[i]), col, f"missing {col}"))
        for i in np.flatnonzero(np.isinf(v)):
            problems.append(Problem(int(rows[i]), col, f"{col} must be finite"))
    _censoring(out, obs, rows, problems)
    if "CMT" in raw:
        out["CMT"] = _compartments(raw["CMT"], dose, obs, rows, model, problems)
    if not any(p.column in ("ID", "TIME") for p in problems):
        problems += _order_problems(
            out["ID"].to_numpy(), out["TIME"].to_numpy(), rows, out["EVID"].to_numpy()
        )
        frame = out.assign(CMT=out["CMT"].astype(str)) if "CMT" in out else out
        problems += _duplicates(frame, rows)
    if problems:
        raise DataError(sorted(problems, key=lambda p: (p.row or 0, p.column)))
    if model is not None:
        dose_records(out, model)  # RATE/ADDL/II/SS rules of the dosing module
    warn_observations_at_additional_doses(out, stacklevel=3)
    return out


_HINTS = {
    "ID": " (subject identifier)",
    "TIME": " (time since the first record, in the model's time units)",
    "DV": " (observed value; '.' or 0 on dose rows)",
    "AMT": " (dose amount; 0 on observation rows)",
}


def _censored_without_dv(out, raw, evid, rows, problems) -> np.ndarray:
    """A result flagged below the limit (CENS or BLQ = 1) with an empty DV, as laboratory
    exports write it, is a censored observation at its LLOQ: it was left out as "EVID 0
    without a DV" and the fit was that of the data without it (a probe)."""
    flag = np.zeros(len(out), bool)
    for col in ("BLQ", "CENS"):
        if col in out:
            flag |= out[col].to_numpy() == 1
    empty = flag & (evid == 0) & _cells_missing(raw["DV"])
    if "MDV" in out:
        empty &= out["MDV"].to_numpy() != 1  # MDV=1 leaves the record out, as said
    if not empty.any():
        return empty
    lloq = out["LLOQ"].to_numpy() if "LLOQ" in out else np.full(len(out), np.nan)
    # (with an MDV column the record is an observation and its missing DV and LLOQ are
    # reported as such; without one it would become MDV=1, so it is reported here)
    for i in np.flatnonzero(empty & ~(lloq > 0) & ("MDV" not in out)):
        problems.append(
            Problem(int(rows[i]), "LLOQ", "flagged below the limit (CENS/BLQ = 1) with no DV "
                    "and no LLOQ: give the limit in an LLOQ column (or in DV)")
        )  # fmt: skip
    dv = out["DV"].to_numpy().copy()
    given = empty & (lloq > 0)
    dv[given] = lloq[given]  # M3 uses only the limit
    out["DV"] = dv
    return empty


def _censoring(out: pd.DataFrame, obs: np.ndarray, rows: np.ndarray, problems: list) -> None:
    """Fill ``CENS`` (1: below the LLOQ, M3) and ``LLOQ``; DV is the LLOQ where none given."""
    cens = np.zeros(len(out))
    for col in ("BLQ", "CENS"):
        if col in out:
            v = out[col].to_numpy()
            for i in np.flatnonzero(~np.isin(v, (0, 1)) & ~np.isnan(v)):
                problems.append(
                    Problem(int(rows[i]), col, f"{col}={v[i]:g}; use 1 (below LLOQ) or 0")
                )
            cens = np.maximum(cens, np.nan_to_num(v, nan=0.0))
    lloq = out["LLOQ"].to_numpy() if "LLOQ" in out else np.full(len(out), np.nan)
    lloq = np.where(np.isnan(lloq) & (cens == 1), out["DV"].to_numpy(), lloq)
    for i in np.flatnonzero(obs & (cens == 1) & ~(lloq > 0)):
        problems.append(
            Problem(
                int(rows[i]),
                "LLOQ",
                "censored observation needs a positive LLOQ "
                "(an LLOQ column, or DV holding the LLOQ)",
            )
        )
    dv = out["DV"].to_numpy()
    above = np.flatnonzero(obs & (cens == 1) & (dv > lloq) & (lloq > 0))
    if above.size:  # M3 uses only the LLOQ: a measured value above it is thrown away
        shown = ", ".join(str(int(r)) for r in rows[above][:5])
        warnings.warn(
            f"record(s) {shown}{' ...' if above.size > 5 else ''}: flagged below the LLOQ "
            f"({above.size} in all) with a DV above it (e.g. DV {dv[above[0]]:g}, LLOQ "
            f"{lloq[above[0]]:g}); they are fitted as censored (only P(conc < LLOQ) counts): "
            "check the flag or the LLOQ",
            CohortWarning,
            stacklevel=4,
        )
    out["CENS"] = cens
    out["LLOQ"] = lloq
    if "BLQ" in out:  # in place (``drop(inplace=True)`` is deprecated in pandas 3.1)
        del out["BLQ"]


def _compartments(raw, dose, obs, rows, model, problems) -> pd.Series:
    values = raw.where(~pd.Series(_cells_missing(raw))).reset_index(drop=True)
    parsed = pd.to_numeric(values, errors="coerce")
    values = (
        parsed
        if parsed.notna().sum() == values.notna().sum()
        else values.where(parsed.isna(), parsed)
    )
    if model is None:
        return values
    for i in range(len(values)):
        v = values.iloc[i]
        if (dose[i] or obs[i]) and not pd.isna(v):
            msg = _cmt_problem(v, model, bool(dose[i]))
            if msg:
                problems.append(Problem(int(rows[i]), "CMT", msg))
    return values


def dose_frame(records: pd.DataFrame, model: Model) -> pd.DataFrame:
    """The dose-relevant columns of ``records`` as the dosing module expects them."""
    cols = ("ID", "TIME", "EVID", "AMT", "CMT", "RATE", "ADDL", "II", "SS")
    frame = records[[c for c in cols if c in records]].copy()
    if "CMT" in frame:  # observation rows may name outputs; the dosing module ignores them
        is_dose = frame["EVID"].isin((1, 4)).to_numpy()
        frame["CMT"] = frame["CMT"].where(is_dose, model.dose_targets[0])
    if "ROW" in records:  # the dosing module's errors and warnings then number rows as the file
        frame.attrs["file_rows"] = records["ROW"].to_numpy()
    return frame


def as_data_error(exc: DosingError) -> DataError:
    """A dosing-module error as the dataset's: its rows are the file's already
    (:func:`dose_frame` hands the dosing module each record's ``ROW``)."""
    text = str(exc)
    m = re.match(r"dosing record row (\d+), column (\w+): (.*)", text, re.S)
    if m:
        return DataError([Problem(int(m.group(1)), m.group(2), m.group(3))])
    return DataError([Problem(None, "records", text)])


def dose_records(records: pd.DataFrame, model: Model) -> EventTable:
    """Expanded dose records for ``model`` (validated by the dosing module) as its padded
    event table."""
    try:
        return records_table(dose_frame(records, model), model.state_names, model.dose_targets)
    except DosingError as exc:
        raise as_data_error(exc) from None
