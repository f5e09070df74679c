"""Reading a user's population file for ``cohort simulate``: a ``cohort generate`` store or a
CSV of parameters (any case), with its covariates, paired to a dosing file by patient ID.
Every problem ends the command with a message naming the file, row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cohort.cli._common import err_console, fail


def read_population(path: Path, model_name: str | None):
    """Parameters from a population store (``cohort generate``) or a CSV, and the model."""
    import pandas as pd

    from cohort.data.reader import DataError, read_table
    from cohort.dosing import file_rows
    from cohort.engine.inputs import InputError, check_population_model
    from cohort.models import get as get_model
    from cohort.population import open_population

    if not path.exists():
        fail(f"--population: no such file or store {path}")
    if path.is_dir():
        ds = open_population(path)
        made_for = ds.attrs.get("model") or None
        if model_name is None and made_for is None:
            fail(f"--population {path}: the store names no model; pass --model")
        model = get_model(model_name or made_for)
        try:  # before any note about the population's parameters
            check_population_model(model, ds)
        except InputError as exc:
            fail(f"--population {path}: {str(exc).removeprefix('population: ')}")
        return model, ds
    model = get_model(model_name or "pk2_oral_idr")
    try:
        table = read_table(path)
    except DataError as exc:
        fail(f"--population {exc}")
    rows = file_rows(table)  # as the file numbers them (comment and blank lines counted)
    id_col = id_column(table)
    ids = None if id_col is None else id_keys(table[id_col])
    table = table.drop(columns=[] if id_col is None else [id_col])
    # besides the model's parameters: the modelled infusion durations RATE=-2 records read
    durations = {model.duration.get(s, f"D_{s}") for s in model.dose_targets}
    known = [*model.parameter_names, *sorted(durations)]
    # a column named like a parameter in another case ("cl" for CL) is that parameter
    by_case = {k.upper(): [q for q in known if q.upper() == k.upper()] for k in known}
    table = table.rename(
        columns={
            c: by_case[str(c).upper()][0]
            for c in table.columns
            if c not in known and len(by_case.get(str(c).upper(), [])) == 1
        }
    )
    if table.columns.duplicated().any():
        dup = table.columns[table.columns.duplicated()][0]
        fail(f"--population {path}: parameter {dup} is given twice (names differing in case)")
    unknown = [c for c in table.columns if c not in known]
    other_models = _parameters_of_other_models(unknown, model)
    if other_models:
        names = sorted(other_models)
        fail(
            f"--population {path}: column(s) {names} are not parameters of {model.name!r} "
            f"({', '.join(model.parameter_names)}) but of other models (e.g. "
            f"{other_models[names[0]]}); pass --model for the population's model, or rename "
            "or remove them"
        )
    if table.empty:
        fail(f"--population {path}: no patients (the file has no rows)")
    for c, v in table[[c for c in table.columns if c in known]].items():
        bad = pd.to_numeric(v, errors="coerce").isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            cell = str(v.iloc[i]).strip()
            shown = (
                "the cell is empty" if cell in ("", "nan", "None") else f"{cell!r} is not a number"
            )
            fail(f"--population {path}: row {rows[i]}, column {c}: {shown}; give a number")
    # numbers (an empty cell: NaN) ride along; a column with text in it is left out, said
    blank = {c: table[c].astype(str).str.strip().isin(("", "nan", ".")) for c in unknown}
    numbers = {c: pd.to_numeric(table[c].where(~blank[c]), errors="coerce") for c in unknown}
    covariates = [c for c in unknown if (numbers[c].notna() | blank[c]).all()]
    text = [c for c in unknown if c not in covariates]
    if text:
        err_console.print(
            f"note: column(s) {', '.join(map(str, text))} hold text: not kept (covariates are "
            "kept as numbers; code categories as numbers to keep them)"
        )
    if covariates:
        # covariates (WT, AGE, ...) are kept with the results for exposure-covariate plots;
        # said out loud, so that a misspelt parameter is seen too
        err_console.print(
            f"note: column(s) {', '.join(map(str, covariates))} of --population are not "
            f"parameters of {model.name} ({', '.join(model.parameter_names)}): kept in the "
            "results as covariates, not used by the model"
        )
    pop = {c: v.to_numpy() for c, v in table.items() if c in known}
    pop.update({c: numbers[c].to_numpy(dtype=float) for c in covariates})
    return model, pop if ids is None else (pop, ids)


def _parameters_of_other_models(columns, model) -> dict[str, str]:
    """The columns that name a parameter of a related model, one sharing parameters with
    ``model`` (a population written for it: pk1's V in a pk2 file would otherwise ride along
    as a covariate while V1 took its typical value), each with one such model. An unrelated
    model's parameter is a covariate here (BW is a glucose model's parameter and a PK
    population's covariate)."""
    from cohort.models import available
    from cohort.models import get as get_model

    ours = set(model.parameter_names)
    found: dict[str, str] = {}
    for name in available():
        theirs = get_model(name).parameter_names
        if not ours & set(theirs):
            continue
        for q in theirs:
            if q in columns and q not in found:
                found[q] = name
    return found


def id_column(table):
    """The name of a table's ID column (any case), or None."""
    return next((c for c in table.columns if str(c).strip().upper() == "ID"), None)


def id_keys(column) -> list:
    """Patient IDs of a table column, comparable across files ("7" and "7.0" are one ID),
    read as the dosing reader tells its patients apart."""
    from cohort.dosing import id_keys as keys  # here: --help imports no pandas

    return keys(column)


def horizon_notes(dose, t_end: float, flag: str = "--t-end") -> list[tuple[str, str]]:
    """``(level, text)`` for what a dosing file holds that a run ending at ``t_end`` will not
    show: records after it (a warning: they were cut off without a word, the default --t-end
    being 24 h), and patients with no dose at all (a note: simulated from the model's initial
    state, all zeros for PK; a placebo patient of a PD model is one)."""
    import pandas as pd

    cols = {str(c).upper(): c for c in dose.columns}
    if "TIME" not in cols:
        return []  # the dosing reader names the missing column
    time = pd.to_numeric(dose[cols["TIME"]], errors="coerce").to_numpy(float)
    notes = []
    late = time > t_end
    if late.any():
        last = float(np.nanmax(time))
        notes.append(
            (
                "warning",
                f"{int(late.sum()):,} record(s) of the dosing file are after {flag} {t_end:g} "
                f"(the last at {last:g}): they are not simulated; give {flag} {last:g} or more "
                "to see them",
            )
        )
    amt = pd.to_numeric(dose[cols["AMT"]], errors="coerce") if "AMT" in cols else None
    if amt is not None:

        def column(name):
            if name not in cols:
                return pd.Series(0.0, index=dose.index)
            return pd.to_numeric(dose[cols[name]], errors="coerce").fillna(0)

        from cohort.dosing import implied_evid

        rate, ss = column("RATE"), column("SS")
        implied = pd.Series(implied_evid(amt.fillna(0), rate, ss), index=dose.index)
        evid = pd.to_numeric(dose[cols["EVID"]], errors="coerce") if "EVID" in cols else implied
        # an SS=1 constant infusion has AMT 0 and a RATE
        doses = evid.isin((1, 4)).to_numpy() & ((amt.fillna(0) > 0) | (rate > 0)).to_numpy()
        unread = amt.isna() & dose[cols["AMT"]].notna()
        unread &= ~dose[cols["AMT"]].astype(str).str.strip().isin(("", "."))
        if unread.any():
            return notes  # the dosing reader names the cell that is not a number
        id_col = id_column(dose)
        if id_col is not None:
            keys = pd.Series(id_keys(dose[id_col]), index=dose.index)
            dosed = set(keys[doses])
            undosed = [k for k in dict.fromkeys(keys) if k not in dosed]
            if undosed:
                shown = ", ".join(f"{k:g}" if isinstance(k, float) else str(k) for k in undosed[:5])
                shown += " ..." if len(undosed) > 5 else ""
                notes.append(
                    (
                        "note",
                        f"{len(undosed):,} patient(s) of the dosing file have no dose record (ID "
                        f"{shown}): they are simulated from the model's initial state",
                    )
                )
        elif not doses.any():
            notes.append(("warning", "the dosing file has no dose record (EVID 1 or 4, AMT > 0)"))
    return notes


def pair_by_id(pop: dict, pop_ids: list, dose, population: Path, dosing: Path) -> dict:
    """The population's rows in the order of the dosing file's patients (its first appearance
    of each ID), matched by ID as :func:`cohort.engine.inputs.paired_by_id` matches them
    (pairing by row order would give one patient's parameters to another's doses), with the
    two files named in its errors."""
    import pandas as pd

    from cohort.engine.inputs import InputError, paired_by_id

    table = pd.DataFrame({**pop, "ID": pop_ids})
    try:
        paired = paired_by_id(table, dose)
    except InputError as exc:
        reason = str(exc).removeprefix("population and dosing: ").removeprefix("population: ")
        fail(f"--population {population} and --dosing {dosing}: {reason}")
    return {k: paired[k].to_numpy() for k in pop}
