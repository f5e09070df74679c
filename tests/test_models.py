"""Model contract: names/units, registry, vmap == structure-of-arrays, PD against analytic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cohort
from cohort.models import available, get


def test_registry_lists_models_with_units():
    names = available()
    for expected in ("pk1_iv", "pk2_oral", "pk3_oral", "pk1_mm_iv", "tmdd_qss", "pk2_oral_idr"):
        assert expected in names
    for name in names:
        m = get(name)
        assert m.states and m.parameters and m.outputs
        assert all(s.units for s in m.states)
        assert all(q.units and q.lower <= q.default <= q.upper for q in m.parameters)
        assert set(m.dose_targets) <= set(m.state_names)


def test_unknown_model_error_lists_choices():
    with pytest.raises(KeyError, match="available models: .*pk1_iv"):
        get("pk9_iv")


@pytest.mark.parametrize(
    "name", ["pk3_oral", "pk1_mm_oral", "tmdd_qss", "pk2_oral+idr4", "pk1_oral+effect"]
)
def test_rhs_vmap_equals_structure_of_arrays(name):
    """The same rhs runs on scalars under vmap and on [N] arrays; results must agree."""
    m = get(name)
    rng = np.random.default_rng(0)
    n = 7
    p = {
        q.name: jnp.asarray(q.default * np.exp(0.1 * rng.standard_normal(n))) for q in m.parameters
    }
    p["F"] = jnp.full(n, 0.9) if "F" in p else None
    p = {k: v for k, v in p.items() if v is not None}
    y = {s: jnp.asarray(rng.uniform(0.1, 5.0, n)) for s in m.state_names}
    u = {s: jnp.asarray(rng.uniform(0.0, 1.0, n)) for s in m.state_names}
    soa = m.rhs(0.0, y, p, u)
    per = jax.vmap(lambda yy, pp, uu: m.rhs(0.0, yy, pp, uu))(y, p, u)
    for s in m.state_names:
        np.testing.assert_allclose(np.asarray(soa[s]), np.asarray(per[s]), rtol=1e-14)


def test_idr_baseline_is_steady_state_and_emax_is_analytic():
    m = get("pk1_oral+idr1")
    p = {k: jnp.asarray(v) for k, v in m.defaults().items()}
    y0 = m.initial(p)
    d = m.rhs(0.0, y0, p, {s: 0.0 for s in m.state_names})
    assert abs(float(d["response"])) < 1e-12
    assert float(y0["response"]) == pytest.approx(p["KIN"] / p["KOUT"])
    # Direct sigmoid Emax: E = E0 + Emax C^g / (EC50^g + C^g) at every saved time.
    em = get("pk1_iv+emax")
    pop = {"E0": 10.0, "EMAX": 50.0, "EC50": 2.0, "GAMMA": 2.0, "CL": 3.0, "V": 30.0}
    ds = cohort.simulate(
        em, pop, cohort.Regimen(amt=200, cmt="central"), cohort.grid(0, 24, 1.0), method="diffrax"
    )
    c = ds.conc.values[0]
    np.testing.assert_allclose(ds.response.values[0], 10 + 50 * c**2 / (4 + c**2), rtol=1e-12)


def test_effect_compartment_matches_analytic_1cpt_bolus():
    """Ce(t) = D/V · ke0/(ke0-k) · (e^{-kt} - e^{-ke0 t}) for a 1-cpt IV bolus."""
    m = get("pk1_iv+effect")
    pop = {"CL": 3.0, "V": 30.0, "KE0": 0.7}
    ds = cohort.simulate(
        m,
        pop,
        cohort.Regimen(amt=100, cmt="central"),
        cohort.grid(0, 24, 0.5),
        outputs=["effect_site"],
        method="diffrax",
    )
    t = ds.time.values
    k, ke0 = 0.1, 0.7
    ref = 100 / 30 * ke0 / (ke0 - k) * (np.exp(-k * t) - np.exp(-ke0 * t))
    np.testing.assert_allclose(ds.effect_site.values[0], ref, rtol=1e-6, atol=1e-9)


def test_tmdd_linear_limit_matches_one_compartment():
    """With no target (R0 -> 0) TMDD-QSS reduces to linear 1-cpt elimination CL/V."""
    m = get("tmdd_qss")
    pop = {"R0": 1e-6, "CL": 0.2, "V": 3.0}
    ds = cohort.simulate(
        m, pop, cohort.Regimen(amt=30, cmt="central"), cohort.grid(0, 48, 2.0), method="diffrax"
    )
    t = ds.time.values
    np.testing.assert_allclose(ds.conc.values[0], 10 * np.exp(-0.2 / 3 * t), rtol=1e-5)
    assert int(ds.status.values[0]) == 0


def test_parameters_reaching_an_output_follow_the_equations():
    """The parameters that can change an output, found from the structure of the equations:
    PD parameters never reach a PK concentration; every parameter reaches the response of
    a PK/PD model; a term gated by a threshold (Bergman's secretion above h) still counts."""
    from cohort.models.structure import parameters_reaching

    idr = get("pk2_oral_idr")
    pd_names = {"KIN", "KOUT", "IMAX", "EC50", "GAMMA"}
    assert parameters_reaching(idr, "conc") == set(idr.parameter_names) - pd_names
    assert parameters_reaching(idr, "response") == set(idr.parameter_names)
    bergman = get("bergman")
    assert {"gamma", "h"} <= parameters_reaching(bergman, "glucose")
    oral = get("pk1_oral")
    assert {"F", "ALAG"} & set(oral.parameter_names) <= parameters_reaching(oral, "conc")
    uva = get("uva_padova")  # subcutaneous insulin is not driven by glucose in T1D
    assert "kabs" not in parameters_reaching(uva, "insulin")
    assert "kabs" in parameters_reaching(uva, "Gsub")


def test_fits_estimate_only_what_the_output_can_inform():
    from cohort.inference import NLME, Param, SpecError

    spec = NLME("pk1_oral+emax")  # default parameters: those reaching 'conc'
    assert [p.name for p in spec.params] == ["CL", "V", "KA"]
    assert {p.name for p in NLME("pk1_oral+emax", output="response").params} >= {"EC50", "CL"}
    with pytest.raises(SpecError, match=r"\['EMAX'\] cannot change 'conc'"):
        NLME("pk1_oral+emax", params=(Param("CL"), Param("EMAX")))
    held = NLME(
        "pk1_oral+emax", params=(Param("CL"), Param("EMAX", init=1.0, fixed=True, iiv=False))
    )
    assert [p.name for p in held.params] == ["CL", "EMAX"]


def test_fingerprint_follows_the_equations():
    """A model redefined with other equations (a notebook cell edited) kept its fingerprint:
    fits reused the old compiled equations, and a store of the old model was resumed."""
    from cohort.models import Model, Output, Parameter, State

    def make(k_factor, extra=0.0):
        class Decay(Model):
            name = "decay"
            states = (State("central", "mg"),)
            parameters = (Parameter("CL", "L/h", 1.0, "", 1e-3, 1e3),
                          Parameter("V", "L", 10.0, "", 1e-3, 1e3))  # fmt: skip
            outputs = (Output("conc", "mg/L", lambda y, p: y["central"] / p["V"]),)
            dose_targets = ("central",)

            def rhs(self, t, y, p, u):
                k = k_factor * p["CL"] / p["V"]
                return {"central": -k * y["central"] + u["central"] + extra}

        return Decay()

    assert make(1.0).fingerprint() == make(1.0).fingerprint()
    assert make(1.0).fingerprint() != make(5.0).fingerprint()
    assert make(1.0).fingerprint() != make(1.0, extra=1.0).fingerprint()


def test_tmdd_free_concentration_does_not_cancel():
    """Drug far below its target (Ctot << Rtot): the textbook root cancelled, 150 % off in
    float32 and exactly 0 late in a run. Against the float64 root of C² − bC − KSS·Ctot."""
    from cohort.models.pk import _tmdd_free

    ctot = np.array([1e-9, 1e-6, 1e-3, 1.0, 50.0])
    for rtot, kss in ((5.0, 1.0), (100.0, 1e-3)):
        b = ctot - rtot - kss
        exact = 2 * kss * ctot / (np.sqrt(b * b + 4 * kss * ctot) - b)  # b < 0 at small ctot
        big = b >= 0
        exact[big] = 0.5 * (b[big] + np.sqrt(b[big] ** 2 + 4 * kss * ctot[big]))
        got = np.asarray(_tmdd_free(jnp.asarray(ctot, jnp.float32), rtot, kss))
        np.testing.assert_allclose(got, exact, rtol=2e-6)
        assert np.all(got > 0)
    grad = jax.grad(lambda c: _tmdd_free(c, 5.0, 1.0))(0.0)  # finite at zero drug
    assert np.isfinite(float(grad)) and float(grad) == pytest.approx(1.0 / 6.0)
