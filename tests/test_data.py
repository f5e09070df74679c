"""NONMEM-style data reader: every malformed case names its row and column; arrays for fits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cohort
from cohort.data import DataError, read_nonmem
from cohort.errors import CohortWarning

DATA = Path(__file__).parent / "data"
PK1_ORAL = cohort.models.get("pk1_oral")  # states: depot, central


def frame(**cols) -> pd.DataFrame:
    """Two subjects: a dose into the depot then two observations each."""
    base = {
        "ID": [1, 1, 1, 2, 2, 2],
        "TIME": [0.0, 1.0, 4.0, 0.0, 2.0, 8.0],
        "AMT": [100.0, 0, 0, 50.0, 0, 0],
        "DV": [".", 3.1, 2.2, ".", 1.9, 0.7],
        "EVID": [1, 0, 0, 1, 0, 0],
        "CMT": [1, 2, 2, 1, 2, 2],
        "WT": [70.0, 70.0, 70.0, 55.0, 55.0, 55.0],
    }
    base.update(cols)
    return pd.DataFrame(base)


def problems(df, model=None) -> list:
    with pytest.raises(DataError) as info:
        read_nonmem(df, model)
    return [(p.row, p.column) for p in info.value.problems]


def test_valid_dataset_arrays():
    ds = read_nonmem(frame(), PK1_ORAL)
    assert ds.n_subjects == 2 and ds.n_observations == 4
    assert ds.covariate_names == ("WT",)
    obs = ds.observations
    assert obs.time.shape == (2, 2)
    np.testing.assert_allclose(obs.dv, [[3.1, 2.2], [1.9, 0.7]])
    np.testing.assert_array_equal(obs.row, [[2, 3], [5, 6]])
    np.testing.assert_allclose(ds.covariates["WT"], [70.0, 55.0])
    table = ds.event_table()
    assert table.n_patients == 2
    np.testing.assert_allclose(table.amt[:, 0], [100.0, 50.0])
    assert table.state_names[table.cmt[0, 0]] == "depot"


def test_padding_keeps_times_non_decreasing():
    df = frame(ID=[1, 1, 1, 2, 2, 2], EVID=[1, 0, 0, 1, 0, 2], DV=[".", 3.1, 2.2, ".", 1.9, "."])
    obs = read_nonmem(df).observations
    assert obs.mask.tolist() == [[True, True], [True, False]]
    assert obs.time[1, 1] == obs.time[1, 0]  # padded with the last observation time
    assert np.all(np.diff(obs.time, axis=1) >= 0)


def test_event_table_matches_dosing_module():
    df = frame(ADDL=[2, 0, 0, 0, 0, 0], II=[12.0, 0, 0, 0, 0, 0])
    ours = read_nonmem(df, PK1_ORAL).event_table()
    dose_rows = df[df.EVID == 1][["ID", "TIME", "AMT", "EVID", "CMT", "ADDL", "II"]]
    ref = cohort.dosing.event_table(dose_rows, PK1_ORAL.state_names, PK1_ORAL.dose_targets)
    for k, v in ref.arrays().items():
        np.testing.assert_array_equal(getattr(ours, k), v)


def test_missing_columns_listed_together():
    df = frame().drop(columns=["TIME", "DV"])
    assert problems(df) == [(None, "TIME"), (None, "DV")]
    with pytest.raises(DataError, match="missing column TIME"):
        read_nonmem(frame().drop(columns=["TIME"]))


def test_non_numeric_values():
    df = frame(TIME=[0.0, "1h", 4.0, 0.0, 2.0, 8.0], WT=[70, 70, 70, "heavy", 55, 55])
    assert problems(df) == [(2, "TIME"), (4, "WT")]
    with pytest.raises(DataError, match=r"row 2, column TIME: value '1h' is not a number"):
        read_nonmem(df)


def test_text_ids_are_one_problem_with_the_fix():
    df = frame(ID=["A01"] * 3 + ["B02"] * 3)
    assert problems(df) == [(1, "ID")]
    with pytest.raises(DataError, match=r"IDs are text \('A01', 'B02', ... in 6 rows\)"):
        read_nonmem(df)


def test_unsorted_time_within_id():
    df = frame(TIME=[0.0, 4.0, 1.0, 0.0, 2.0, 8.0])
    with pytest.raises(DataError, match=r"row 3, column TIME: time 1 is earlier"):
        read_nonmem(df)


def test_dv_on_dose_rows_is_ignored_as_nonmem_does_and_said():
    """NONMEM reads no observation from a dose record (pharmpy's moxonidine example carries DVs
    on its EVID=4 rows): a warning naming the rows, the same fit as without them; an
    infinite DV on an observation is refused by row (it gave OFV inf and "converged")."""
    df = frame(DV=[5.0, 3.1, 2.2, ".", 1.9, 0.7])
    with pytest.warns(CohortWarning, match=r"record\(s\) 1: DV on a dose record .* ignored"):
        with_dv = read_nonmem(df)
    without = read_nonmem(frame(DV=[0, 3.1, 2.2, 0, 1.9, 0.7]))  # DV=0 on dose rows is fine
    np.testing.assert_array_equal(with_dv.observations.dv, without.observations.dv)
    with pytest.raises(DataError, match=r"row 2, column DV: DV inf is not a finite number"):
        read_nonmem(frame(DV=[0, np.inf, 2.2, 0, 1.9, 0.7]))


def test_observation_at_an_addl_dose_time_is_post_dose_as_in_nonmem_and_said():
    """PREDPP gives an ADDL-implied dose before an observation at its time (mrgsolve's default
    record sort matches it): the observation is predicted after the dose, and a warning names
    its row, since a trough coded that way is otherwise fitted as a peak with nothing said. An
    explicit dose written after the observation stays pre-dose (file order); observations
    between the doses, or past the last additional one, raise nothing."""
    addl = pd.DataFrame(
        {
            "ID": [1, 1, 1, 1, 1, 2, 2, 2, 2],
            "TIME": [0.0, 6.0, 12.0, 13.0, 36.0, 0.0, 12.0, 12.0, 13.0],
            "AMT": [100.0, 0, 0, 0, 0, 100.0, 0, 100.0, 0],
            "DV": [".", 2.8, 1.5, 5.9, 0.4, ".", 1.6, ".", 6.0],
            "EVID": [1, 0, 0, 0, 0, 1, 0, 1, 0],
            "ADDL": [1, 0, 0, 0, 0, 0, 0, 0, 0],
            "II": [12.0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    )
    with pytest.warns(CohortWarning, match=r"record\(s\) 3 \(1 in all\): an observation at the "
                      r"time of an additional dose \(row 1: ADDL/II, here TIME 12\)"):  # fmt: skip
        data = read_nonmem(addl)
    obs = data.observations
    np.testing.assert_array_equal(obs.before_dose[:, :4], [[0, 0, 0, 0], [1, 0, 0, 0]])
    # the ADDL-coincident sample is evaluated at 12 (after the dose), the explicit one before
    assert obs.prediction_times()[0, 1] == 12.0 and obs.prediction_times()[1, 0] < 12.0
    quiet = addl.assign(TIME=[0.0, 6.0, 11.5, 13.0, 24.0, 0.0, 12.0, 12.0, 13.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nonmem(quiet)  # 24 = 0 + 2 x II is past the one additional dose


@pytest.mark.parametrize(
    ("cmt", "row", "match"),
    [
        ([5, 2, 2, 1, 2, 2], 1, "unknown compartment number 5"),
        (["gut", 2, 2, 1, 2, 2], 1, "unknown dose compartment 'gut'"),
        ([1, 2, 2, 1, 2, 7], 6, "unknown compartment number 7"),
        ([1, 2, 2, "central", "plasma", 2], 5, "unknown compartment 'plasma'"),
    ],
)
def test_unknown_compartment(cmt, row, match):
    with pytest.raises(DataError, match=rf"row {row}, column CMT: {match}"):
        read_nonmem(frame(CMT=cmt), PK1_ORAL)


def test_compartment_checked_when_model_given_later():
    ds = read_nonmem(frame(CMT=[9, 2, 2, 1, 2, 2]))  # no model: compartments unchecked
    with pytest.raises(DataError, match=r"row 1, column CMT"):
        ds.with_model(PK1_ORAL)
    sub = read_nonmem(frame(CMT=[1, 2, 2, 1, 9, 2])).subset([2])
    with pytest.raises(DataError, match=r"row 5, column CMT"):  # rows of the original input
        sub.with_model(PK1_ORAL)


def test_duplicate_records():
    df = pd.concat([frame().iloc[:2], frame().iloc[1:]], ignore_index=True)
    with pytest.raises(DataError, match=r"row 3, column ID: duplicate of row 2"):
        read_nonmem(df)


def test_split_subject_records():
    df = frame(
        ID=[1, 1, 2, 2, 1, 1],
        TIME=[0.0, 1.0, 0.0, 2.0, 4.0, 8.0],
        EVID=[1, 0, 1, 0, 0, 0],
        AMT=[100.0, 0, 50.0, 0, 0, 0],
        DV=[".", 3.1, ".", 1.9, 0.7, 0.5],
    )
    with pytest.raises(DataError, match=r"row 5, column ID: records of ID 1 are split"):
        read_nonmem(df)


def test_observation_rules():
    assert problems(frame(DV=[".", ".", 2.2, ".", 1.9, 0.7], MDV=[1, 0, 0, 1, 0, 0])) == [(2, "DV")]
    assert problems(frame(MDV=[0, 0, 0, 1, 0, 0])) == [(1, "MDV")]
    assert problems(frame(EVID=[1, 0, 0, 7, 0, 0])) == [(4, "EVID")]
    assert problems(frame(AMT=[-1.0, 0, 0, 50.0, 0, 0])) == [(1, "AMT")]


def test_all_problems_reported_at_once():
    df = frame(
        TIME=[0.0, "x", 4.0, 0.0, 2.0, 8.0],
        DV=[0.0, 3.1, np.inf, ".", 1.9, 0.7],
        EVID=[1, 0, 0, 1, 0, 9],
    )
    err = pytest.raises(DataError, read_nonmem, df).value
    assert [(p.row, p.column) for p in err.problems] == [(2, "TIME"), (3, "DV"), (6, "EVID")]
    assert "3 problems" in str(err)


def test_dose_record_rules_come_from_dosing_module():
    df = frame(ADDL=[2, 0, 0, 0, 0, 0], II=[0.0, 0, 0, 0, 0, 0])
    with pytest.raises(DataError, match=r"row 1, column II: ADDL=2 needs an interdose"):
        read_nonmem(df, PK1_ORAL)
    assert isinstance(DataError([]), cohort.DosingError)  # one except clause catches both


def test_censoring_columns():
    ds = read_nonmem(frame(BLQ=[0, 0, 1, 0, 0, 0], DV=[".", 3.1, 0.5, ".", 1.9, 0.7]))
    obs = ds.observations
    assert obs.cens.tolist() == [[False, True], [False, False]]
    assert obs.lloq[0, 1] == 0.5  # DV holds the limit when there is no LLOQ column
    ds = read_nonmem(
        frame(CENS=[0, 0, 1, 0, 0, 0], LLOQ=[0, 0, 0.4, 0, 0, 0], DV=[".", 3.1, 0, ".", 1.9, 0.7])
    )
    assert ds.observations.lloq[0, 1] == 0.4
    assert problems(
        frame(BLQ=[0, 0, 1, 0, 0, 0], DV=[".", 3.1, ".", ".", 1.9, 0.7], MDV=[1, 0, 0, 1, 0, 0])
    ) == [(3, "DV"), (3, "LLOQ")]
    assert problems(frame(BLQ=[0, 0, 2, 0, 0, 0])) == [(3, "BLQ")]
    # flagged below the LLOQ with a measured value above it: fitted as censored, and said
    with pytest.warns(CohortWarning, match=r"record\(s\) 3: flagged below the LLOQ .* DV 2.2"):
        read_nonmem(frame(BLQ=[0, 0, 1, 0, 0, 0], LLOQ=[0, 0, 0.05, 0, 0, 0]))


def test_rows_flagged_as_comments_are_refused_not_fitted():
    """A C column flagging rows (NONMEM IGNORE=C) was left out as a column while its rows
    were fitted as data (a new user's session); the dosing reader refused them already."""
    assert problems(frame(C=[".", "C", ".", ".", "#", "."])) == [(2, "C")]
    with pytest.raises(DataError, match=r"column C flags row\(s\) 2, 5 as comments"):
        read_nonmem(frame(C=[".", "C", ".", ".", "#", "."]))
    data = read_nonmem(frame(C=["."] * 6))  # no row flagged: read, C not a covariate
    assert "C" not in data.covariates


def test_files_and_frames_agree(tmp_path):
    path = tmp_path / "study.csv"
    frame().to_csv(path, index=False)
    a, b = read_nonmem(path), read_nonmem(frame())
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    with pytest.raises(DataError, match="no such file"):
        read_nonmem(tmp_path / "missing.csv")


def test_reads_published_datasets():
    theoph = read_nonmem(DATA / "theoph_nonmem.csv", "pk1_oral")
    assert (theoph.n_subjects, theoph.n_observations) == (12, 132)
    pheno = read_nonmem(DATA / "pheno.dta", "pk1_iv")  # whitespace-separated, no EVID/CMT
    assert (pheno.n_subjects, pheno.n_observations) == (59, 155)
    assert set(pheno.covariate_names) >= {"WGT", "APGR"}
    assert pheno.event_table().n_patients == 59
    assert pheno.subset([1, 2]).n_subjects == 2


def test_drop_ignores_text_columns():
    df = frame(NOTE=["a", "b", "c", "d", "e", "f"])
    assert read_nonmem(df, drop=["note"]).covariate_names == ("WT",)  # no warning


def test_semicolon_separated_files_are_read(tmp_path):
    """A spreadsheet's CSV with ';' read as one column 'ID;TIME;...' ("missing column ID")."""
    comma = frame()
    comma.to_csv(tmp_path / "comma.csv", index=False)
    comma.to_csv(tmp_path / "semi.csv", index=False, sep=";")
    a, b = read_nonmem(tmp_path / "comma.csv"), read_nonmem(tmp_path / "semi.csv")
    np.testing.assert_array_equal(a.observations.dv, b.observations.dv)
    assert list(a.records.columns) == list(b.records.columns)


def test_decimal_commas_are_named():
    with pytest.raises(DataError, match=r"value '3,1' is not a number \(a decimal comma"):
        read_nonmem(frame(DV=[".", "3,1", 2.2, ".", 1.9, 0.7]))


def test_comment_lines_and_a_hash_header_are_read_as_nonmem_does(tmp_path):
    """NONMEM skips '#' lines by default (IGNORE=#); a '#ID,TIME,...' header is a header. A
    leading comment line was read as the header ("missing column ID")."""
    plain = tmp_path / "plain.csv"
    frame().to_csv(plain, index=False)
    body = plain.read_text().splitlines()
    (tmp_path / "notes.csv").write_text(
        "\n".join(["# study XYZ, conc in mg/L", body[0], *body[1:3], "# sample lost", *body[3:]])
    )
    (tmp_path / "hashed.csv").write_text("\n".join(["#" + body[0], *body[1:]]))
    ref = read_nonmem(plain)
    for name in ("notes.csv", "hashed.csv"):
        got = read_nonmem(tmp_path / name)
        np.testing.assert_array_equal(got.observations.dv, ref.observations.dv)
        assert got.n_subjects == ref.n_subjects


def test_text_columns_are_left_out_with_a_warning(tmp_path):
    """A STUDY or SEX column as M/F stopped a fit ("value 'M' is not a number" on every
    row) though the model did not use it; a number column with one text cell is a typo."""
    from cohort.errors import CohortWarning

    path = tmp_path / "d.csv"
    frame(SEX=["M", "M", "M", "F", "F", "F"]).to_csv(path, index=False)
    with pytest.warns(CohortWarning, match=r"column SEX holds text \(e.g. 'M' on row 1\)"):
        ds = read_nonmem(path)
    assert ds.covariate_names == ("WT",)
    with pytest.raises(DataError, match=r"column WT: value 'x' is not a number"):
        read_nonmem(frame(WT=[70.0, "x", 70.0, 55.0, 55.0, 55.0]))


def test_a_result_flagged_below_the_limit_with_an_empty_dv_is_censored():
    """Laboratory exports flag a result below the limit and leave DV empty: it was left out as
    "EVID 0 without a DV", the fit that of the data without it (a probe)."""
    ds = read_nonmem(frame(CENS=[0, 0, 1, 0, 0, 0], LLOQ=[0, 0, 0.4, 0, 0, 0],
                           DV=[".", 3.1, ".", ".", 1.9, 0.7]))  # fmt: skip
    obs = ds.observations
    assert obs.cens.tolist() == [[False, True], [False, False]]
    assert obs.lloq[0, 1] == 0.4
    with pytest.raises(DataError, match="value '<0.4' is not a number .*write CENS=1"):
        read_nonmem(frame(DV=[".", 3.1, "<0.4", ".", 1.9, 0.7]))


def test_infusion_durations_and_date_columns_of_other_tools():
    """A DUR column (rxode2, Pmetrics) was an unused covariate and the infusions were fitted
    as boluses; with a DATE column TIME is a clock time in NONMEM, and was read as elapsed
    (a sample the next day placed 24 h early). DUR becomes NONMEM's RATE; dates are refused."""
    iv = cohort.models.get("pk1_iv")
    with pytest.warns(CohortWarning, match="column DUR read as infusion durations .* row 1"):
        dur = read_nonmem(frame(CMT=[1, 1, 1, 1, 1, 1], DUR=[2, ".", ".", 0, ".", "."]), iv)
    rate = read_nonmem(frame(CMT=[1, 1, 1, 1, 1, 1], RATE=[50, 0, 0, 0, 0, 0]), iv)
    assert dur.covariate_names == ("WT",)
    np.testing.assert_array_equal(dur.event_table(iv).rate, rate.event_table(iv).rate)
    assert problems(frame(DUR=[2, ".", ".", 0, ".", "."], RATE=[50, 0, 0, 0, 0, 0])) == [(1, "DUR")]
    for col in ("DAT1", "DATE"):
        with pytest.raises(DataError, match=f"a {col} column makes TIME the clock time"):
            read_nonmem(frame(**{col: ["01/05/2024"] * 6}))
    with pytest.raises(DataError, match="value '08:00' is not a number .*a clock time"):
        read_nonmem(frame(TIME=["08:00", 1.0, 4.0, 0.0, 2.0, 8.0]))
    # the dosing reader of `cohort simulate --dosing` reads them the same way
    with pytest.warns(CohortWarning, match="column DUR read as infusion durations"):
        table = cohort.dosing.records_table(
            pd.DataFrame({"ID": [1], "TIME": [0.0], "AMT": [100.0], "DUR": [2.0]}),
            ["central"],
            ["central"],
        )
    # a control stream's data: $PK says what DUR is (kept as a covariate)
    marked = frame(DUR=[2, ".", ".", 0, ".", "."])
    marked.attrs["nonmem_items"] = True
    assert "DUR" in read_nonmem(marked).covariate_names
    assert table.rate[0, 0] == 50.0
    with pytest.raises(cohort.DosingError, match="column DAT2: a DAT2 column"):
        cohort.dosing.records_table(
            pd.DataFrame({"TIME": [0.0], "AMT": [1.0], "DAT2": ["2024-01-05"]}),
            ["central"],
            ["central"],
        )


def test_fit_dataset_dose_warnings_number_rows_as_the_file(tmp_path):
    """The fit path handed the dosing module records without the file's row numbers: with
    `#` comment lines its warnings named the rows by position (row 1 and 2 below)."""
    path = tmp_path / "ss.csv"
    path.write_text(
        "ID,TIME,AMT,DV,EVID,CMT,SS,II\n# comment\n1,0,100,.,1,1,0,0\n# another\n"
        "1,0,200,.,1,1,1,12\n1,1,.,5,0,1,0,0\n"
    )
    data = read_nonmem(path)
    said = r"row 2 doses at TIME 0, before the SS=1 record of row 4"
    with pytest.warns(CohortWarning, match=said):
        data.event_table(cohort.models.get("pk1_iv"))


def test_rows_flagged_in_column_c_are_named_as_the_file_numbers_them(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("ID,TIME,AMT,DV,C\n# one\n# two\n1,0,100,.,.\n1,1,.,5,C\n")
    with pytest.raises(DataError, match=r"row 4, column C: column C flags row\(s\) 4 as"):
        read_nonmem(path)
