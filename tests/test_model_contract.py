"""A user-written model that breaks the Model contract is refused before its first solve with
a message naming the part and the fix (not a KeyError from the engine, diffrax's pytree error,
or plausible numbers from infusions that do nothing or a derivative that mixes patients)."""

import jax.numpy as jnp
import numpy as np
import pytest

import cohort
from cohort.errors import ModelDefinitionError
from cohort.models import Model, Output, Parameter, State, available, get
from cohort.models.contract import check_contract


class OneCpt(Model):
    name = "user_1cpt"
    states = (State("central", "mg"),)
    parameters = (
        Parameter("CL", "L/h", 2.0, "clearance", 1e-3, 1e3),
        Parameter("V", "L", 10.0, "volume", 1e-2, 1e3),
    )
    outputs = (Output("conc", "mg/L", lambda y, p: y["central"] / p["V"]),)
    dose_targets = ("central",)

    def rhs(self, t, y, p, u):
        return {"central": -p["CL"] / p["V"] * y["central"] + u["central"]}


class NoInput(OneCpt):
    def rhs(self, t, y, p, u):
        return {"central": -p["CL"] / p["V"] * y["central"]}


class MixesPatients(OneCpt):
    def rhs(self, t, y, p, u):
        return {"central": -p["CL"] / p["V"] * jnp.mean(y["central"]) + u["central"]}


class WrongKey(OneCpt):
    def rhs(self, t, y, p, u):
        return {"centrl": -p["CL"] / p["V"] * y["central"] + u["central"]}


class WrongInitial(OneCpt):
    def initial(self, p):
        return {"centre": jnp.zeros_like(p["V"])}


class UnknownTarget(OneCpt):
    dose_targets = ("depot",)


class OutputNamedLikeState(OneCpt):
    outputs = (Output("central", "mg/L", lambda y, p: y["central"] / p["V"]),)


class ParameterTwice(OneCpt):
    parameters = OneCpt.parameters + (Parameter("V", "L", 5.0, "again", 1e-2, 1e3),)


class PythonBranch(OneCpt):
    def rhs(self, t, y, p, u):
        k = 0.1 if float(p["CL"]) > 1 else 0.2
        return {"central": -k * y["central"] + u["central"]}


def _run(model, **regimen):
    return cohort.simulate(
        model,
        {"CL": [1.0, 2.0, 4.0]},
        cohort.Regimen(amt=100, cmt="central", ii=12, addl=1, **regimen),
        cohort.grid(0, 24, 1.0),
        method="fast",
    )


@pytest.mark.parametrize(
    ("model", "regimen", "message"),
    [
        (NoInput(), {"rate": 50}, "rhs ignores u['central']"),
        (MixesPatients(), {}, "rhs mixes patients"),
        (WrongKey(), {}, "rhs(t, y, p, u) returned the keys ['centrl']: missing ['central']"),
        (WrongInitial(), {}, "initial(p) returned the keys ['centre']"),
        (UnknownTarget(), {}, "dose_targets names 'depot', which is not a state"),
        (OutputNamedLikeState(), {}, "output 'central' has the name of a state but is not"),
        (ParameterTwice(), {}, "parameter name 'V' is declared twice"),
        (PythonBranch(), {}, "rhs failed on a batch of two patients"),
    ],
)
def test_broken_models_are_refused_naming_the_part(model, regimen, message):
    with pytest.raises(ModelDefinitionError, match="model 'user_1cpt'") as err:
        _run(model, **regimen)
    assert message in str(err.value)


def test_a_model_without_input_is_fine_when_nothing_is_infused():
    ds = _run(NoInput())  # boluses only: u is always zero
    k = np.array([1.0, 2.0, 4.0]) / 10.0
    expected = 10.0 * np.exp(-k * 5.0)  # 100 mg into 10 L, 5 h later
    np.testing.assert_allclose(ds["conc"].sel(time=5.0).values, expected, rtol=1e-5)


def test_fit_checks_a_user_model_too():
    data = cohort.data.read_nonmem(
        __import__("pathlib").Path(__file__).parent / "data" / "theoph_nonmem.csv"
    )
    with pytest.raises(ModelDefinitionError, match="rhs mixes patients"):
        cohort.fit(MixesPatients(), data)


FAMILIES = (
    *("pk1_iv", "pk3_oral", "pk2_oral+effect", "pk1_iv+idr4", "pk1_oral+emax", "pk1_mm_oral"),
    *("tmdd_qss", "pk2_oral_idr", "bergman", "uva_padova", "t1d_minimal"),
)


@pytest.mark.parametrize("name", FAMILIES)
def test_builtin_models_meet_the_contract(name):
    assert name in available()
    model = get(name)
    check_contract(model, model.dose_targets)  # no false alarm on cohort's own equations


class WithClock(OneCpt):
    states = (State("central", "mg"), State("clock", "h"))

    def rhs(self, t, y, p, u):
        return {"central": -p["CL"] / p["V"] * y["central"] + u["central"], "clock": 1.0}


class Oscillator(Model):
    """A damped oscillation with one state in other units (S rescales it): |λ| = W."""

    name = "user_osc"
    states = (State("A", "1", nonnegative=False), State("B", "1", nonnegative=False))
    parameters = (Parameter("W", "1/h", 6.0, "frequency", 1e-3, 1e3),
                  Parameter("S", "1", 10.0, "scale of A", 1e-3, 1e3),
                  Parameter("C", "1/h", 0.5, "damping", 0.0, 1e3))  # fmt: skip
    outputs = (Output("a", "1", lambda y, p: y["A"]),)
    dose_targets = ("A",)

    def initial(self, p):
        return {"A": jnp.ones_like(p["W"]), "B": jnp.ones_like(p["W"])}

    def rhs(self, t, y, p, u):
        return {"A": p["W"] * p["S"] * (y["B"] - 1) + u["A"],
                "B": -(p["W"] / p["S"]) * (y["A"] - 1) - p["C"] * (y["B"] - 1)}  # fmt: skip


def test_constant_derivatives_and_rescaled_oscillations_are_fine():
    """A derivative given as a constant (a clock) was called "mixing patients"; an
    oscillation whose Jacobian has a large singular value (W·S = 60/h) but spectral radius
    6/h (|λ|·dt = 0.5) was flagged step_unstable by a one-product rate reading."""
    ds = cohort.simulate(WithClock(), {"CL": [1.0, 2.0]}, cohort.Regimen(amt=100, cmt="central"),
                         cohort.grid(0, 5, 1.0), outputs=["conc", "clock"])  # fmt: skip
    np.testing.assert_allclose(ds["clock"].values[:, -1], 5.0)
    pop = {"W": [6.0, 6.0], "S": [10.0, 1.0], "C": [0.5, 0.5]}
    times = cohort.grid(0, 24, 0.25)
    fast = cohort.simulate(Oscillator(), pop, cohort.Regimen(amt=1.0, cmt="A"), times,
                           method="fast")  # fmt: skip
    ref = cohort.simulate(Oscillator(), pop, cohort.Regimen(amt=1.0, cmt="A"), times,
                          method="diffrax")  # fmt: skip
    assert fast.status.values.tolist() == [0, 0]
    np.testing.assert_allclose(fast["a"].values, ref["a"].values, atol=1e-2)


def test_fit_refuses_a_user_model_that_ignores_infusions_in_the_data():
    """simulate checked it; a fit to RATE > 0 records ran with the infusions doing nothing."""
    import pandas as pd

    rows = []
    for i in (1, 2, 3):
        rows.append(dict(ID=i, TIME=0.0, AMT=100.0, RATE=50.0, DV=0.0, EVID=1, CMT=1))
        rows += [dict(ID=i, TIME=t, AMT=0.0, RATE=0.0, DV=5.0 / t, EVID=0, CMT=1)
                 for t in (1.0, 2.0, 4.0, 8.0)]  # fmt: skip
    with pytest.raises(ModelDefinitionError, match=r"rhs ignores u\['central'\]"):
        cohort.fit(NoInput(), pd.DataFrame(rows))
