"""Property-based fuzzing (hypothesis, bounded): whatever a user feeds the dataset reader, the
dosing records, prior and trial specs or the CLI, a failure is a cohort error with a message,
never a traceback from deep inside pandas/JAX, and never a hang (issue 12)."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cohort
from cohort.errors import CohortError

ROOT = Path(__file__).resolve().parents[1]
# A warning (e.g. a text column left out of the covariates) is a legitimate answer to odd input;
# these tests are about failures, which must be cohort errors.
pytestmark = pytest.mark.filterwarnings("ignore::cohort.errors.CohortWarning")
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CELL = st.one_of(
    st.integers(-5, 500).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", ".", "NA", "depot", "central", "1e308", "-0", "abc", " 3 "]),
    st.text(string.printable, max_size=6),
)
COLUMNS = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "ADDL", "II", "SS", "WT"]


@FUZZ
@given(
    cols=st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=9),
    rows=st.lists(st.lists(CELL, min_size=9, max_size=9), min_size=0, max_size=6),
)
def test_dataset_reader_fails_only_with_cohort_errors(tmp_path, cols, rows):
    text = ",".join(cols) + "\n" + "\n".join(",".join(r[: len(cols)]) for r in rows)
    path = tmp_path / "data.csv"
    path.write_text(text)
    try:
        data = cohort.read_nonmem(path, "pk1_oral")
    except CohortError as exc:
        assert str(exc)
        return
    assert data is not None


@FUZZ
@given(
    amt=st.floats(allow_nan=True, allow_infinity=True),
    ii=st.floats(allow_nan=True, allow_infinity=True),
    addl=st.integers(-3, 50),
    rate=st.floats(allow_nan=True, allow_infinity=True),
    cmt=st.sampled_from(["depot", "central", "periph", "", "DEPOT"]),
    time=st.floats(allow_nan=True, allow_infinity=True),
)
def test_dosing_records_fail_only_with_cohort_errors(amt, ii, addl, rate, cmt, time):
    from cohort.dosing import event_table

    model = cohort.models.get("pk1_oral")
    records = pd.DataFrame(
        {"ID": [1], "TIME": [time], "AMT": [amt], "CMT": [cmt], "II": [ii], "ADDL": [addl],
         "RATE": [rate], "EVID": [1]}
    )  # fmt: skip
    try:
        table = event_table(records, model.state_names, model.dose_targets, 1)
    except CohortError as exc:
        assert str(exc)
        return
    assert np.all(np.isfinite(table.amt[np.isfinite(table.time)]))


def _mutations():
    """Edits of a valid spec: drop a key, retype a value, add a stray key."""
    value = st.one_of(
        st.none(), st.integers(-10, 10), st.floats(allow_nan=True), st.text(max_size=5),
        st.lists(st.integers(-2, 2), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                   st.integers(), max_size=2),
    )  # fmt: skip
    return st.lists(
        st.tuples(st.sampled_from(["drop", "set", "add"]), st.integers(0, 10_000), value),
        min_size=1,
        max_size=3,
    )


def _paths(tree, prefix=()):
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _mutate(raw: dict, edits) -> dict:
    raw = copy.deepcopy(raw)
    for kind, pick, value in edits:
        paths = _paths(raw)
        if not paths:
            break
        path = paths[pick % len(paths)]
        parent = raw
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if kind == "drop":
            del parent[key]
        elif kind == "set":
            parent[key] = value
        elif isinstance(parent, dict):
            parent[f"stray_{pick}"] = value
    return raw


PRIOR = tomllib.loads((ROOT / "priors" / "adult_pk_oral.toml").read_text())
TRIAL = tomllib.loads((ROOT / "experiments" / "theophylline_dose_ranging.toml").read_text())


@FUZZ
@given(edits=_mutations())
def test_prior_specs_fail_only_with_cohort_errors(edits):
    from cohort.population import parse_spec

    raw = _mutate(PRIOR, edits)
    try:
        spec = parse_spec(raw, "fuzz.toml")
    except CohortError as exc:
        assert "fuzz.toml" in str(exc)
        return
    try:
        pop = cohort.population.generate(spec, 5, seed=0, max_candidates=2_000)
    except CohortError:
        return
    assert pop.sizes["patient"] == 5


@FUZZ
@given(edits=_mutations())
def test_trial_specs_fail_only_with_cohort_errors(edits):
    from cohort.trial.spec import parse

    raw = _mutate(TRIAL, edits)
    try:
        parse(raw, "fuzz.toml", base=ROOT / "experiments")
    except CohortError as exc:
        assert str(exc)


NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400", "", "x", "3", "0.5", "1e-9"]),
    st.text(string.printable, max_size=5),
)


@settings(max_examples=40, deadline=None)
@given(
    flag=st.sampled_from(
        ["--n", "--iiv", "--amt", "--ii", "--addl", "--rate", "--t-end", "--step", "--dt",
         "--chunk-size", "--method", "--dtype", "--cmt", "--model"]
    ),
    value=NUMBERS,
)  # fmt: skip
def test_cli_arguments_never_give_a_traceback(flag, value):
    """A bad value is typer's usage error or cohort's ``error:`` line, both with exit 2; a
    valid one runs (tiny cohort, into a fresh folder)."""
    import tempfile

    from cohort.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "o.zarr")
        args = ["simulate", "--model", "pk1_oral", "--t-end", "2", "--step", "1", "-o", out]
        if flag in ("--model", "--t-end", "--step"):
            args = [a for i, a in enumerate(args) if flag not in (a, args[i - 1])]
        if flag != "--n":
            args += ["--n", "2"]
        res = CliRunner().invoke(app, [*args, flag, value])
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        flag,
        value,
        repr(res.exception),
    )
    assert res.exit_code in (0, 2), (flag, value, res.output)
    if res.exit_code == 2:
        assert "Traceback" not in res.output
        assert "error" in res.output.lower() or "invalid value" in res.output.lower()


@pytest.mark.parametrize("bad", ["", "\x00\x01", "[population\n", "a = = 1"])
def test_unreadable_spec_files(tmp_path, bad):
    path = tmp_path / "s.toml"
    path.write_text(bad)
    with pytest.raises(CohortError, match="s.toml"):
        cohort.population.load_spec(path)
