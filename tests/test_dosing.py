"""NONMEM-style dosing records: validation messages, resets (EVID 3/4) and RATE=-2."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import cohort
from cohort import DosingError, InputError, Regimen

PK1_IV = cohort.models.get("pk1_iv")
PK2_ORAL = cohort.models.get("pk2_oral")  # states: depot, central, periph
TIMES = cohort.grid(0.0, 24.0, 0.5)


def records(**cols):
    """One patient's records; defaults: a 100 mg bolus into CMT 1 at 0 and an observation."""
    base = {"ID": [1, 1], "TIME": [0.0, 2.0], "AMT": [100.0, 0.0], "EVID": [1, 0], "CMT": [1, 2]}
    base.update(cols)
    return pd.DataFrame(base)


def reject(df, row, column, match="", model=PK2_ORAL, n=1):
    pattern = rf"row {row}, column {column}\b.*{match}"
    with pytest.raises(DosingError, match=pattern):
        cohort.simulate(model, None, df, TIMES, n=n)


# -- malformed records --------------------------------------------------------------------------
def test_negative_amount():
    reject(records(AMT=[-5.0, 0.0]), 1, "AMT", "finite number >= 0")
    reject(
        records(
            AMT=[100.0, 0.0, -1.0],
            ID=[1, 1, 1],
            TIME=[0.0, 1.0, 2.0],
            EVID=[1, 0, 1],
            CMT=[1, 2, 2],
        ),
        3,
        "AMT",
    )


def test_addl_without_interval():
    reject(records(ADDL=[2, 0], II=[0.0, 0.0]), 1, "II", "needs an interdose interval")
    reject(records(ADDL=[2, 0], II=[-12.0, 0.0]), 1, "II")


def test_unknown_compartment_number():
    reject(records(CMT=[4, 2]), 1, "CMT", "unknown compartment number 4")
    reject(records(CMT=[0, 2]), 1, "CMT", "unknown compartment number 0")


def test_unknown_compartment_name():
    reject(records(CMT=["gut", 2]), 1, "CMT", "unknown compartment 'gut'")


@pytest.mark.parametrize("cmt", ["periph", 3])
def test_non_dosable_compartment(cmt):
    # pk2_oral doses go to depot or central; the peripheral compartment cannot receive doses.
    reject(records(CMT=[cmt, 2]), 1, "CMT", "cannot receive doses")


def test_time_not_monotone_within_id():
    df = pd.DataFrame(
        {
            "ID": [1, 1, 2, 2, 2],
            "TIME": [0.0, 4.0, 0.0, 6.0, 5.0],
            "AMT": [10.0, 0, 10.0, 0, 0],
            "EVID": [1, 0, 1, 0, 0],
            "CMT": 1,
        }
    )
    reject(df, 5, "TIME", "earlier than the previous record", n=2)


def test_non_numeric_values():
    reject(records(AMT=["ten", 0]), 1, "AMT", "not a number")
    reject(records(TIME=[0.0, "2h"]), 2, "TIME", "not a number")
    reject(records(II=[12.0, "x"], ADDL=[1, 0]), 2, "II", "not a number")
    reject(records(AMT=["500,5", 0]), 1, "AMT", "a decimal comma")
    reject(records(TIME=["08:00", 2.0]), 1, "TIME", "a clock time")


def test_a_dose_row_given_twice_is_refused_not_summed():
    """A pasted-twice dose row doubled the exposure without a word (the fit's reader refused
    it); two different doses at one time stay two doses."""
    twice = pd.DataFrame({"ID": [1, 1, 2], "TIME": 0.0, "AMT": [500.0, 500.0, 400.0],
                          "EVID": 1, "CMT": 1})  # fmt: skip
    reject(twice, 2, "AMT", "repeats row 1 in every column")
    two = twice.assign(AMT=[500.0, 250.0, 400.0])
    run = cohort.simulate(PK2_ORAL, None, two, TIMES, n=2)
    one = cohort.simulate(PK2_ORAL, None, two.iloc[[0, 2]].assign(AMT=[750.0, 400.0]), TIMES, n=2)
    np.testing.assert_allclose(run["conc"].values, one["conc"].values, rtol=1e-12)


def test_a_steady_state_infusion_without_evid_is_a_dose():
    """Without EVID, an SS=1 infusion row (AMT 0, a RATE) was read as an observation: zeros."""
    reject(
        pd.DataFrame({"TIME": [0.0], "AMT": [0.0], "RATE": [50.0], "SS": [1], "II": [0.0],
                      "CMT": [2]}),  # fmt: skip
        1, "II", "constant infusion at steady state",
    )  # fmt: skip


def test_time_restarting_after_a_reset_row_gets_the_shift_not_sort():
    df = pd.DataFrame({"ID": 1, "TIME": [0.0, 12.0, 0.0], "AMT": 500.0, "EVID": [1, 4, 1],
                       "CMT": 1})  # fmt: skip
    reject(df, 3, "TIME", r"reset record before it \(EVID 4 at 12\).*add 12 or more")


@pytest.mark.parametrize(
    ("cols", "column"),
    [
        ({"EVID": [7, 0]}, "EVID"),
        ({"RATE": [-1.0, 0.0]}, "RATE"),
        ({"ADDL": [1.5, 0], "II": [12.0, 0.0]}, "ADDL"),
        ({"SS": [2, 0], "II": [12.0, 0.0]}, "SS"),
        ({"SS": [1, 0], "II": [0.0, 0.0]}, "II"),
        ({"TIME": [np.nan, 2.0]}, "TIME"),
        ({"TIME": [np.inf, 2.0], "EVID": [0, 1], "AMT": [0.0, 100.0]}, "TIME"),  # observation
        ({"AMT": [np.inf, 0.0]}, "AMT"),
    ],
)
def test_other_invalid_fields(cols, column):
    reject(records(**cols), 1, column)


def test_an_amount_on_a_record_that_is_not_a_dose_is_said_to_be_ignored():
    """An EVID 0 row with AMT was dropped silently (a dose miscoded as an observation)."""
    df = records(EVID=[0, 1], AMT=[100.0, 50.0], TIME=[0.0, 1.0])
    with pytest.warns(cohort.CohortWarning, match=r"row\(s\) 1: AMT 100 on an EVID 0 record"):
        ds = cohort.simulate(PK2_ORAL, None, df, TIMES, n=1)
    assert float(ds["conc"].sel(time=TIMES[TIMES < 1.0]).max()) == 0.0  # no dose before 1 h


def test_an_amount_off_a_dose_is_said_once_in_a_fit():
    """The fit's reader warned, then the dosing table built from its records twice more."""
    from cohort.inference.fit import _dataset

    df = pd.DataFrame({"ID": 1, "TIME": [0.0, 0.0, 1.0, 2.0], "AMT": [100.0, 50.0, 0.0, 0.0],
                       "EVID": [1, 0, 0, 0], "DV": [np.nan, 3.0, 2.0, 1.0]})  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _dataset(df, cohort.models.get("pk1_iv"))
    said = [w for w in seen if "is not a dose" in str(w.message)]
    assert len(said) == 1 and "record(s) 2: AMT 50 on an EVID 0 record" in str(said[0].message)


def test_records_of_a_patient_must_be_contiguous():
    df = pd.DataFrame(
        {"ID": [1, 2, 1], "TIME": [0.0, 0.0, 1.0], "AMT": [1.0, 1.0, 1.0], "EVID": 1, "CMT": 1}
    )
    reject(df, 3, "ID", n=2)


def test_patient_count_mismatch():
    df = pd.DataFrame({"ID": [1, 2], "TIME": 0.0, "AMT": 1.0, "EVID": 1, "CMT": 1})
    with pytest.raises(DosingError, match="2 patients but the population has 3"):
        cohort.simulate(PK2_ORAL, None, df, TIMES, n=3)


# Malformed records that are currently accepted or fail without naming row and column.
def test_missing_cmt_on_a_dose_row_names_row_and_column():
    # Currently a bare ValueError("cannot convert float NaN to integer") from _cmt_index.
    reject(records(CMT=[np.nan, 2]), 1, "CMT")


def test_fractional_cmt_is_rejected():
    # Currently CMT=1.7 is silently truncated to compartment 1.
    reject(records(CMT=[1.7, 2]), 1, "CMT")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_infinite_interval_is_rejected():
    # Currently II=inf with ADDL=1 makes the first dose time 0 + 0*inf = nan: the dose silently
    # disappears and the patient is reported with status OK and zero concentrations.
    reject(records(ADDL=[1, 0], II=[np.inf, 0.0]), 1, "II")


# -- accepted spellings ---------------------------------------------------------------------------
def test_cmt_name_number_and_regimen_agree():
    dose = {"ID": [1, 1], "TIME": [0.0, 6.0], "AMT": [100.0, 50.0], "EVID": [1, 1]}
    by_number = pd.DataFrame({**dose, "CMT": [1, 2]})
    by_name = pd.DataFrame({**dose, "cmt": ["depot", "central"]})  # lower-case column too
    by_text = pd.DataFrame({**dose, "CMT": ["1", "2"]})
    regs = [Regimen(100.0, "depot"), Regimen(50.0, "central", time=6.0)]
    runs = [
        cohort.simulate(PK2_ORAL, None, d, TIMES, n=1, method="closed_form").conc.values
        for d in (by_number, by_name, by_text, regs)
    ]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    assert runs[0].max() > 1.0


# -- EVID 3 / EVID 4 / RATE=-2 against analytic solutions ------------------------------------------
CL, V = 2.0, 20.0
K = CL / V
D_CENTRAL = np.array([1.0, 1.0, 1.0, 2.5, 4.0, 1.0])


def bolus(t, dose):
    return np.where(t >= 0, dose / V * np.exp(-K * np.maximum(t, 0.0)), 0.0)


def infusion(t, rate, dur):
    t = np.asarray(t, float)
    during = rate / CL * (1.0 - np.exp(-K * np.clip(t, 0.0, dur)))
    after = rate / CL * (1.0 - np.exp(-K * dur)) * np.exp(-K * np.maximum(t - dur, 0.0))
    return np.where(t < 0, 0.0, np.where(t <= dur, during, after))


RESET_RECORDS = pd.DataFrame(
    [
        # ID 1: bolus, reset (EVID 3) at 5, new bolus at 10
        (1, 0.0, 100.0, 1, 1, 0.0),
        (1, 5.0, 0.0, 3, 1, 0.0),
        (1, 10.0, 50.0, 1, "central", 0.0),
        # ID 2: 10-h infusion interrupted by a reset at 4; its scheduled end must not go negative
        (2, 0.0, 100.0, 1, 1, 10.0),
        (2, 4.0, 0.0, 3, 1, 0.0),
        # ID 3: bolus, then reset-and-dose (EVID 4) at 8
        (3, 0.0, 100.0, 1, 1, 0.0),
        (3, 8.0, 70.0, 4, 1, 0.0),
        # ID 4: RATE=-2 infusion, duration D_central = 2.5 h
        (4, 1.0, 100.0, 1, 1, -2.0),
        # ID 5: bolus, then EVID 4 with a RATE=-2 infusion (D_central = 4 h) at 6
        (5, 0.0, 80.0, 1, 1, 0.0),
        (5, 6.0, 120.0, 4, 1, -2.0),
        # ID 6: observation and other-type records only
        (6, 0.0, 0.0, 0, 1, 0.0),
        (6, 3.0, 0.0, 2, 1, 0.0),
    ],
    columns=["ID", "TIME", "AMT", "EVID", "CMT", "RATE"],
)


def reset_reference(t):
    ref = np.zeros((6, len(t)))
    ref[0] = np.where(t < 5.0, bolus(t, 100.0), 0.0) + bolus(t - 10.0, 50.0)
    ref[1] = np.where(t < 4.0, infusion(t, 10.0, 10.0), 0.0)
    ref[2] = np.where(t < 8.0, bolus(t, 100.0), bolus(t - 8.0, 70.0))
    ref[3] = infusion(t - 1.0, 100.0 / 2.5, 2.5)
    ref[4] = np.where(t < 6.0, bolus(t, 80.0), infusion(t - 6.0, 120.0 / 4.0, 4.0))
    return ref


@pytest.mark.parametrize("method", ["closed_form", "diffrax", "fast"])
def test_reset_reset_dose_and_modelled_duration(method):
    pop = {"CL": CL, "V": V, "D_central": D_CENTRAL}
    ds = cohort.simulate(PK1_IV, pop, RESET_RECORDS, TIMES, method=method)
    np.testing.assert_array_equal(ds.status.values, 0)
    got = ds.conc.values
    ref = reset_reference(TIMES)
    scale = ref.max(axis=1, keepdims=True)
    scale[5] = 1.0
    np.testing.assert_array_less(np.abs(got - ref) / scale, 1e-6)
    # Resets give exact zeros (right-continuous: already zero at the reset time itself).
    assert np.all(got[0][(TIMES >= 5.0) & (TIMES < 10.0)] == 0.0)
    assert np.all(got[1][TIMES >= 4.0] == 0.0)
    assert np.all(got[5] == 0.0)
    # EVID 4 at t = 8 reports the new dose only.
    assert got[2][TIMES == 8.0][0] == pytest.approx(70.0 / V, rel=1e-12)
    # The duration parameter is reported with the other parameters.
    np.testing.assert_array_equal(ds.D_central.values, D_CENTRAL)


def test_rate_minus_two_needs_duration_parameter():
    df = pd.DataFrame(
        {"ID": [1], "TIME": [0.0], "AMT": [100.0], "EVID": [1], "CMT": [1], "RATE": [-2.0]}
    )
    with pytest.raises(InputError, match=r"D_central.*ID 1, TIME 0, CMT central.*add a D_"):
        cohort.simulate(PK1_IV, {"CL": CL, "V": V}, df, TIMES)
    with pytest.raises(InputError, match="D_depot"):
        cohort.simulate(PK2_ORAL, None, df, TIMES, n=1)
    # Unknown population names are rejected, but D_<cmt> durations are accepted.
    with pytest.raises(InputError, match="unknown parameter"):
        cohort.simulate(PK1_IV, {"CL": CL, "DUR": 2.0}, df, TIMES)


@pytest.mark.parametrize("method", ["closed_form", "diffrax", "fast"])
def test_modelled_duration_not_above_zero_marks_the_patient_invalid(method):
    """A RATE=-2 dose over D <= 0 hours: the dose vanished (D = 0) or went negative (D < 0,
    closed form) with status ok (a new user's session). Such patients are now
    ``invalid_parameters`` in every engine; a patient without RATE=-2 doses is not affected
    by its D, and the others equal their analytic infusion."""
    df = pd.DataFrame({"ID": [1, 2, 3, 4], "TIME": 0.0, "AMT": 100.0, "EVID": 1, "CMT": 1,
                       "RATE": [-2.0, -2.0, -2.0, 0.0]})  # fmt: skip
    pop = {"CL": np.full(4, 5.0), "V": np.full(4, 50.0), "D_central": [0.0, -2.0, 2.0, 0.0]}
    ds = cohort.simulate(PK1_IV, pop, df, TIMES, method=method)
    np.testing.assert_array_equal(ds.status.values, [5, 5, 0, 0])
    assert np.isnan(ds.conc.values[:2]).all()
    k, rate, t = 0.1, 50.0, TIMES
    ref = np.where(t <= 2, rate / 5 * (1 - np.exp(-k * t)),
                   rate / 5 * (1 - np.exp(-2 * k)) * np.exp(-k * (t - 2)))  # fmt: skip
    np.testing.assert_allclose(ds.conc.values[2], ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ds.conc.values[3], 2.0 * np.exp(-k * t), rtol=1e-6)


def test_addl_times_ii_beyond_any_time_is_a_clear_error():
    """A dose series whose last dose overflows float64 is refused by row and column, not
    turned into infinite times with a numpy overflow warning."""
    from cohort.dosing import records_table

    df = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 1.0], "AMT": [0.0, 1.0], "EVID": [0, 1],
                       "CMT": [2, 1], "ADDL": [0, 10], "II": [0.0, 1e308]})  # fmt: skip
    with pytest.raises(DosingError, match=r"row 2, column ADDL: ADDL x II \(10 x 1e\+308\)"):
        records_table(df, ("depot", "central"), ("depot", "central"))


@pytest.mark.parametrize("field", ["amt", "time", "ii", "rate"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_regimen_refuses_non_finite_numbers(field, value):
    """A NaN amount used to simulate as no dose at all (every concentration 0, status ok)."""
    kw = {"amt": 100.0, "cmt": "depot", field: value}
    with pytest.raises(DosingError, match=f"Regimen: {field} must be a finite number"):
        cohort.simulate("pk1_oral", None, Regimen(**kw), cohort.grid(0.0, 24.0, 1.0), n=2)


def test_an_absurd_addl_is_refused_before_it_is_expanded():
    """ADDL = 1e8 every 0.0001 h was expanded into memory until the process was killed (a
    new user's session); now one line names the row and the limit."""
    from cohort.dosing import event_table

    df = pd.DataFrame({"ID": [1], "TIME": [0.0], "AMT": [100.0], "EVID": [1], "CMT": [1],
                       "II": [1e-4], "ADDL": [100_000_000]})  # fmt: skip
    with pytest.raises(DosingError, match=r"row 1, column ADDL: 100,000,001 doses .* at most"):
        event_table(df, ("depot", "central"), ("depot", "central"))


def test_nonmem_dots_are_missing_and_comment_rows_are_refused():
    """NONMEM writes "." for a missing AMT on sample rows (was: "not a number"); a C column
    flagging comment rows (IGNORE=C) was read as a covariate and the rows were dosed."""
    from cohort.dosing import event_table

    states, targets = ("depot", "central"), ("depot", "central")
    df = pd.DataFrame({"ID": ["1", "1"], "TIME": ["0", "1"], "AMT": ["100", "."],
                       "EVID": ["1", "0"], "CMT": ["2", "2"]})  # fmt: skip
    table = event_table(df, states, targets)
    assert table.amt[0, 0] == 100.0 and (table.evid[0] == 1).sum() == 1
    df["C"] = ["C", ""]
    with pytest.raises(DosingError, match=r"column C flags row\(s\) 1 as comments"):
        event_table(df, states, targets)
    # a dose record whose AMT is "." or empty dosed nothing, silently (a new user's session)
    for cell in (".", "", None):
        bad = df.drop(columns="C").assign(AMT=[cell, "."])
        with pytest.raises(DosingError, match=r"row 1, column AMT: a dose record \(EVID 1\)"):
            event_table(bad, states, targets)


def test_a_dose_written_before_an_ss_record_at_its_time_is_said():
    """NONMEM's SS=1 resets the system, so a dose on an earlier row at the same time is lost
    there; cohort keeps it (the steady state first). Said, not read two ways silently."""
    from cohort.errors import CohortWarning

    rows = {"ID": [1, 1], "TIME": [0.0, 0.0], "AMT": [500.0, 100.0], "EVID": [1, 1],
            "CMT": [1, 1], "SS": [0, 1], "II": [0.0, 12.0]}  # fmt: skip
    said = "row 1 doses at TIME 0, before the SS=1 record of row 2"
    with pytest.warns(CohortWarning, match=said):
        cohort.dosing.event_table(pd.DataFrame(rows), ["central"], ["central"])
    swapped = {k: v[::-1] for k, v in rows.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort.dosing.event_table(pd.DataFrame(swapped), ["central"], ["central"])


def test_an_addl_dose_due_at_an_ss_record_is_said():
    """The same for a dose implied by an earlier row's ADDL: 500 mg q12h x3 from 0, then 250 mg
    SS=1 at 24 kept the third 500 mg dose without a word (a new user's session)."""
    from cohort.errors import CohortWarning

    rows = {"ID": [1, 1], "TIME": [0.0, 24.0], "AMT": [500.0, 250.0], "EVID": [1, 1],
            "CMT": [1, 1], "SS": [1, 1], "II": [12.0, 12.0], "ADDL": [2, 0]}  # fmt: skip
    said = r"ADDL doses of row 1 \(every 12 from TIME 0\) include one at TIME 24.*ADDL=1"
    with pytest.warns(CohortWarning, match=said):
        cohort.dosing.event_table(pd.DataFrame(rows), ["central"], ["central"])
    for addl, time in ((1, 24.0), (2, 30.0)):  # ending before it, or off its grid: nothing
        other = {**rows, "ADDL": [addl, 0], "TIME": [0.0, time]}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cohort.dosing.event_table(pd.DataFrame(other), ["central"], ["central"])


@pytest.mark.parametrize("method", ["closed_form", "diffrax", "fast"])
def test_an_infusion_starting_at_a_later_reset_is_reset_away(method):
    """An ADDL infusion due at the time of a later EVID 3 row: the reset stopped its start but
    its end still ran, leaving a negative rate (closed form: every later dose vanished, status
    ok; ODE engines: 'negative'). Now it is reset away like a bolus, and the later ADDL
    infusions run: as the same doses written without the overlap."""
    model = cohort.models.get("pk2_iv")
    overlap = pd.DataFrame({"ID": 1, "TIME": [0.0, 12.0], "AMT": [100.0, 0.0], "EVID": [1, 3],
                            "CMT": 1, "RATE": [20.0, 0.0], "ADDL": [3, 0],
                            "II": [12.0, 0.0]})  # fmt: skip
    apart = pd.DataFrame({"ID": 1, "TIME": [0.0, 12.0, 24.0], "AMT": [100.0, 0.0, 100.0],
                          "EVID": [1, 3, 1], "CMT": 1, "RATE": [20.0, 0.0, 20.0],
                          "ADDL": [0, 0, 1], "II": [0.0, 0.0, 12.0]})  # fmt: skip
    grid = cohort.grid(0.0, 48.0, 0.5)
    a = cohort.simulate(model, None, overlap, grid, method=method)
    b = cohort.simulate(model, None, apart, grid, method=method)
    assert a.status.values.tolist() == [0]
    np.testing.assert_allclose(a.conc.values, b.conc.values, rtol=1e-9, atol=1e-12)
    assert a.conc.values[0, grid > 30].min() > 0.1  # the later infusions ran


@pytest.mark.parametrize("method", ["closed_form", "diffrax"])
def test_evid_4_with_ss_is_evid_1_with_ss(method):
    """EVID 4 + SS=1 gave a single dose (3.125 for 5.119): its reset was applied after the
    steady state and wiped it. NONMEM (and mrgsolve) treat it as EVID 1 + SS=1."""
    model = cohort.models.get("pk2_iv")
    rows = {"ID": [1], "TIME": [10.0], "AMT": [100.0], "CMT": [1], "II": [12.0], "SS": [1]}
    grid = cohort.grid(0.0, 36.0, 1.0)
    four = cohort.simulate(model, None, pd.DataFrame({**rows, "EVID": [4]}), grid, method=method)
    one = cohort.simulate(model, None, pd.DataFrame({**rows, "EVID": [1]}), grid, method=method)
    np.testing.assert_array_equal(four.conc.values, one.conc.values)


def test_a_modelled_duration_longer_than_ii_at_steady_state_marks_the_patient():
    """SS=1 with RATE=-2 and D_central > II came out wrong with status ok (a given RATE that
    long is refused): the patient is now invalid, its neighbour kept."""
    rows = pd.DataFrame({"ID": [1, 2], "TIME": 0.0, "AMT": 120.0, "EVID": 1, "CMT": 1,
                         "RATE": -2.0, "II": 12.0, "SS": 1, "ADDL": 2})  # fmt: skip
    pop = {"D_central": np.array([15.0, 6.0])}
    with pytest.warns(cohort.PatientsFailedWarning, match="longer than the SS=1 dose's II"):
        ds = cohort.simulate(PK1_IV, pop, rows, TIMES, n=2)
    assert ds.status.values.tolist() == [5, 0]


def test_a_steady_state_infusion_longer_than_ii_says_the_fix():
    """The refusal said "not supported" and no more."""
    df = records(SS=[1, 0], RATE=[2.0, 0.0], II=[12.0, 0.0])
    reject(df, 1, "RATE", r"lasts AMT/RATE = 100/2 = 50, longer than its interval II 12")
    reject(df, 1, "RATE", r"raise RATE \(or lower AMT\) so that each infusion ends within II")
    reject(df, 1, "RATE", r"or drop SS=1 and give the doses explicitly \(ADDL with II")
