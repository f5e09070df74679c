"""validation/t1d_real.py's reader of Dexcom Clarity exports, on a synthetic export (the real
data are downloaded by the script, never by the tests): events, eligible days, the
long-acting insulin as a 72-h mean rate, and records the CGM twin accepts."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

HEADER = (
    "Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,"
    "Source Device ID,Glucose Value (mg/dL),Insulin Value (u),Carb Value (grams)\n"
    "1,,FirstName,,Patient,,,,,\n"
    "2,,Device,,,Dexcom G6 Mobile App,Android G6,,,\n"
)


def _module():
    path = Path(__file__).parent.parent / "validation" / "t1d_real.py"
    spec = importlib.util.spec_from_file_location("t1d_real", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _export(tmp_path: Path) -> Path:
    rows, k = [], 3
    start = pd.Timestamp("2020-01-01 00:01:15")
    for i in range(3 * 288):  # three days of 5-min readings
        t = start + pd.Timedelta(minutes=5 * i)
        if t.day == 3 and 600 <= t.hour * 60 + t.minute < 900:
            continue  # day 3 loses 5 h of readings: not eligible
        g = "Low" if i == 100 else str(120 + (i % 7))
        rows.append(f"{k},{t.isoformat()},EGV,,,,Android G6,{g},,")
        k += 1
    events = [
        ("2019-12-28T21:00:00", "Insulin", "Long-Acting", "", "9", ""),  # outside the 72 h
        ("2019-12-30T21:00:00", "Insulin", "Long-Acting", "", "11", ""),
        ("2019-12-31T21:00:00", "Insulin", "Long-Acting", "", "10", ""),
        ("2020-01-01T09:00:00", "Insulin", "Long-Acting", "", "12", ""),
        ("2020-01-01T07:30:20", "Carbs", "", "", "", "40"),
        ("2020-01-01T07:30:40", "Insulin", "Fast-Acting", "", "4", ""),
        ("2020-01-01T12:00:00", "Carbs", "", "", "", "60"),
        ("2020-01-01T12:05:00", "Insulin", "Fast-Acting", "", "6", ""),
        ("2020-01-02T08:00:00", "Carbs", "", "", "", "30"),
        ("2020-01-02T08:00:00", "Insulin", "Fast-Acting", "", "3", ""),
    ]
    for t, et, sub, g, u, c in events:
        rows.append(f"{k},{t},{et},{sub},,,Android G6,{g},{u},{c}")
        k += 1
    data = (HEADER + "\n".join(rows) + "\n").encode("utf-8-sig")
    path = tmp_path / "cgm_format-0.3.2.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cgm_format-0.3.2/data/000-1 ian-3 ian 2020.csv")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_clarity_export_to_twin_records(tmp_path):
    from cohort.twin import cgm_data

    mod = _module()
    ev = mod.clarity_events(_export(tmp_path))
    counts = ev.kind.value_counts()
    assert counts["long"] == 4 and counts["bolus"] == 3 and counts["carbs"] == 3
    assert ev[ev.kind == "cgm"].value.min() == 39  # "Low" is the sensor's floor
    table = mod.twin_days(ev, 5, 60.0)
    # day 1 only: day 2 has one logged meal, day 3 a 5-h gap
    assert table.DATE.unique().tolist() == ["2020-01-01"]
    day = table[table.ID == 0].set_index("TIME")
    # the 72 h before the day's start at 04:00: 11 + 10 U (not the 09:00 dose of that day,
    # nor the one 79 h before); TIME counts minutes from 04:00
    assert day.BASAL.dropna().tolist() == [21.0 / 72.0]
    assert day.CHO.dropna().to_dict() == {210: 40.0, 480: 60.0}
    assert day.BOLUS.dropna().to_dict() == {210: 4.0, 485: 6.0}
    assert day.CGM.notna().sum() == 288
    checked = cgm_data.read_cgm(table.drop(columns="DATE"))
    assert np.all(np.diff(checked.TIME.to_numpy()) > 0)
