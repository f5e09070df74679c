"""Glycaemic metrics on small hand-computed examples."""

import math

import numpy as np
import pytest
import xarray as xr

from cohort.glucose import (
    CVGA_ZONES,
    cvga,
    cvga_counts,
    glycemic_metrics,
    risk_function,
    time_weights,
)

TIMES = [0.0, 5.0, 10.0, 15.0, 20.0]  # trapezoid weights 1/8, 1/4, 1/4, 1/4, 1/8
SERIES = {
    "lower_d": [60, 100, 200, 260, 50],
    "flat": [120, 120, 120, 120, 120],
    "upper_c": [95, 150, 320, 200, 100],
    "lower_b": [80, 170, 150, 120, 100],
    "edge_a": [90, 180, 150, 120, 100],  # min 90 and max 180 still count as zone A
    "edge_b": [70, 300, 150, 120, 100],  # min 70 and max 300: zone B
    "failed": [np.nan] * 5,  # a failed simulation: no reading (a gap alone is left out)
}


def _glucose(order=("patient", "time")) -> xr.DataArray:
    da = xr.DataArray(
        np.array(list(SERIES.values()), dtype=float),
        dims=("patient", "time"),
        coords={"patient": list(SERIES), "time": TIMES},
        attrs={"units": "mg/dL"},
    )
    return da.transpose(*order)


def _kovatchev_risk(g: float) -> float:
    f = 1.509 * (math.log(g) ** 1.084 - 5.381)
    return 10.0 * f * f


def test_time_weights_are_trapezoid():
    np.testing.assert_allclose(time_weights(TIMES), [0.125, 0.25, 0.25, 0.25, 0.125])
    np.testing.assert_allclose(time_weights([0.0, 10.0, 15.0]), [5 / 15, 7.5 / 15, 2.5 / 15])
    assert time_weights([3.0]).tolist() == [1.0]
    with pytest.raises(ValueError, match="increasing"):
        time_weights([0.0, 0.0])


def test_ranges_mean_sd_gmi_by_hand():
    m = glycemic_metrics(_glucose()).sel(patient="lower_d")
    # 60 and 50 (weight 1/8 each) are low, 50 very low, 100 in range, 200 and 260 high.
    assert float(m.tir_70_180) == pytest.approx(25.0)
    assert float(m.tbr_70) == pytest.approx(25.0)
    assert float(m.tbr_54) == pytest.approx(12.5)
    assert float(m.tar_180) == pytest.approx(50.0)
    assert float(m.tar_250) == pytest.approx(25.0)
    assert float(m["mean"]) == pytest.approx(153.75)  # 7.5 + 25 + 50 + 65 + 6.25
    assert float(m.sd) == pytest.approx(math.sqrt(6523.4375))  # sum of w·(g - mean)^2
    assert float(m.cv) == pytest.approx(100 * math.sqrt(6523.4375) / 153.75)
    assert float(m.gmi) == pytest.approx(3.31 + 0.02392 * 153.75)  # 6.9877 %
    assert m.tir_70_180.attrs["units"] == "%"
    flat = glycemic_metrics(_glucose()).sel(patient="flat")
    assert float(flat.tir_70_180) == 100.0 and float(flat.sd) == 0.0 and float(flat.cv) == 0.0


def test_kovatchev_risk_indices_by_hand():
    assert abs(float(risk_function(112.5))) < 0.01  # the scale's symmetry point
    assert 10 * float(risk_function(20.0)) ** 2 == pytest.approx(100.0, abs=0.5)
    assert 10 * float(risk_function(600.0)) ** 2 == pytest.approx(100.0, abs=0.5)
    m = glycemic_metrics(_glucose()).sel(patient="lower_d")
    # f < 0 at 60, 100 and 50; f > 0 at 200 and 260. Averages are over all five samples.
    lbgi = 0.125 * _kovatchev_risk(60) + 0.25 * _kovatchev_risk(100) + 0.125 * _kovatchev_risk(50)
    hbgi = 0.25 * _kovatchev_risk(200) + 0.25 * _kovatchev_risk(260)
    # r(60) = 13.571, r(100) = 0.482, r(50) = 22.500, r(200) = 11.605, r(260) = 24.710
    assert lbgi == pytest.approx(4.6294, abs=1e-4) and hbgi == pytest.approx(9.0788, abs=1e-4)
    assert float(m.lbgi) == pytest.approx(lbgi, rel=1e-12)
    assert float(m.hbgi) == pytest.approx(hbgi, rel=1e-12)
    assert float(m.bgri) == pytest.approx(lbgi + hbgi, rel=1e-12)


def test_cvga_zones_and_counts():
    m = glycemic_metrics(_glucose(order=("time", "patient")))  # time need not be last
    zones = dict(zip(m.patient.values, m.cvga_zone.values))
    assert zones == {
        "lower_d": "Lower D",
        "flat": "A",
        "upper_c": "Upper C",
        "lower_b": "Lower B",
        "edge_a": "A",
        "edge_b": "B",
        "failed": "",
    }
    plot = cvga(_glucose())
    assert plot.x.sel(patient="lower_d") == 50.0 and plot.y.sel(patient="upper_c") == 320.0
    assert plot.x.sel(patient="flat") == 110.0 and plot.y.sel(patient="flat") == 120.0
    counts = cvga_counts(m.cvga_zone)
    assert counts.zone.values.tolist() == list(CVGA_ZONES)
    assert counts.sel(zone="A") == 2 and int(counts.sum()) == 6
    assert counts.zone.dtype.kind == "U"  # as xarray makes it from a list (not object)
    letters = cvga_counts(m.cvga_zone, letters=True)
    assert letters.values.tolist() == [2, 2, 1, 1, 0]  # A, B (lower B + B), C, D, E


def test_missing_values_give_nan_and_irregular_grid_is_time_weighted():
    m = glycemic_metrics(_glucose()).sel(patient="failed")
    assert np.isnan(float(m["mean"])) and np.isnan(float(m.tir_70_180))
    gap = xr.DataArray([[100.0, np.nan, 120, 130, 140]], dims=("patient", "time"))
    # a gap is left out with its trapezoid share: weights 1/8, -, 1/4, 1/4, 1/8 renormalised
    expect = (100 / 8 + 120 / 4 + 130 / 4 + 140 / 8) / (1 / 8 + 1 / 4 + 1 / 4 + 1 / 8)
    assert float(glycemic_metrics(gap)["mean"][0]) == pytest.approx(expect, rel=1e-12)
    da = xr.DataArray(
        [[100.0, 200.0, 300.0]], dims=("patient", "time"), coords={"time": [0, 10, 15]}
    )
    m = glycemic_metrics(da).isel(patient=0)
    assert float(m["mean"]) == pytest.approx((500 + 1500 + 750) / 15)
    assert float(m.tar_180) == pytest.approx(100 * 10 / 15)
    with pytest.raises(ValueError, match="no dimension"):
        glycemic_metrics(da.rename(time="t"))


def test_rows_missing_from_a_cgm_export_weigh_as_nan_readings():
    """A day of 5-min readings at 120 mg/dL with 06:00-18:00 missing and 60 mg/dL on both edges
    of the gap: the two edge readings stood for the 12 hours (TBR 50.5 %) when the rows were
    absent, against 1.4 % with the same gap written as NaN."""
    t = np.arange(0.0, 1440.0, 5.0)
    g = np.full(t.size, 120.0)
    gap = (t > 360) & (t < 1080)
    g[[np.argmax(gap) - 1, len(t) - np.argmax(gap[::-1])]] = 60.0
    with_nan = glycemic_metrics(xr.DataArray(np.where(gap, np.nan, g), coords={"time": t}))
    absent = glycemic_metrics(xr.DataArray(g[~gap], coords={"time": t[~gap]}))
    for name in ("tbr_70", "tir_70_180", "mean", "sd", "lbgi"):
        assert float(absent[name]) == pytest.approx(float(with_nan[name]), rel=1e-12), name
    # each edge reading stands for 5 min: 2.5 on its side, 2.5 of the gap (one interval)
    assert float(absent.tbr_70) == pytest.approx(100 * 10 / (t[~gap].size * 5 - 5), rel=1e-12)
    # an irregular grid without gaps (no interval over twice the median) is weighted as before
    np.testing.assert_allclose(
        time_weights([0.0, 5.0, 10.0, 20.0]), np.array([2.5, 5, 7.5, 5]) / 20
    )


def test_units_are_honoured_and_unlikely_readings_are_flagged():
    """A trace in mmol/L gave TIR 0 % and LBGI 234 without a word; numpy input raised an
    AttributeError. mmol/L with units is converted; without units it is warned about."""
    import cohort

    mg = _glucose().isel(patient=[0, 1, 2])
    mmol = mg / 18.0156
    mmol.attrs["units"] = "mmol/L"
    xr.testing.assert_allclose(glycemic_metrics(mmol), glycemic_metrics(mg))
    bare = mmol.copy()
    bare.attrs = {}
    with pytest.warns(cohort.CohortWarning, match="were these mmol/L"):
        glycemic_metrics(bare)
    below = mg.copy()
    below[0, 0] = -5.0
    with pytest.warns(cohort.CohortWarning, match=r"1 reading\(s\) <= 0"):
        glycemic_metrics(below)
    # a numpy array: equally spaced readings along its last axis
    values = np.array([[100.0, 200.0, 150.0]])
    np.testing.assert_allclose(
        glycemic_metrics(values)["mean"].values,
        glycemic_metrics(xr.DataArray(values, dims=("p", "time")))["mean"].values,
    )
    with pytest.raises(ValueError, match="units 'mg'"):
        glycemic_metrics(mg.assign_attrs(units="mg"))
