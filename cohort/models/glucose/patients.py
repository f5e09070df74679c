"""UVA/Padova virtual patients: the 30 reference patients and a population prior fitted to them.

The reference table is simglucose 0.2.11's ``vpatient_params.csv`` (MIT licence, see
``data/LICENSE-simglucose.txt``; parameters of the UVA/Padova S2008 simulator, Dalla Man et al.
2007, Kovatchev et al. 2009). The prior is a multivariate normal on the log (``b``, ``d``:
logit) of the *primary* parameters, mean and covariance estimated per group (10 patients each)
with shrinkage towards the diagonal, because 10 patients cannot determine a full-rank
covariance of 25 parameters. Parameters that the basal steady state determines (``kp1``,
``Vm0``, ``u2ss`` and the basal states) are recomputed from the draw as in Dalla Man 2007, so
every sampled patient starts exactly at its basal steady state.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources

import numpy as np
import pandas as pd

import cohort._prng as _prng
from cohort.errors import CohortError, OptionError
from cohort.models.glucose.uva_padova import UvaPadova

GROUPS = ("adolescent", "adult", "child")
PRIMARY = (
    "BW", "EGPb", "Gb", "Ib", "kabs", "kmax", "kmin", "b", "d", "Vg", "Vi", "Vmx", "Km0",
    "k2", "k1", "p2u", "m1", "m2", "ki", "kp2", "kp3", "kd", "ksc", "ka1", "ka2",
)  # fmt: skip
THERAPY = ("CR", "CF")  # carbohydrate ratio g/U, correction factor mg/dL/U (Quest.csv)
SAMPLED = PRIMARY + THERAPY  # drawn jointly, so therapy keeps its correlation with physiology
LOGIT = frozenset({"b", "d"})  # fractions in (0, 1)
FIXED = ("HEb", "f", "ke1", "ke2", "Fsnc")  # constant across the 30 reference patients


class PatientSamplingError(CohortError, RuntimeError):
    """Too many prior draws were implausible (e.g. negative basal tissue glucose)."""


@functools.lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    path = resources.files("cohort.models.glucose") / "data" / "uva_padova_patients.csv"
    with path.open("r") as fh:
        df = pd.read_csv(fh)
    df.insert(1, "group", df["Name"].str.split("#").str[0])
    path = resources.files("cohort.models.glucose") / "data" / "uva_padova_therapy.csv"
    with path.open("r") as fh:
        quest = pd.read_csv(fh)
    return df.merge(quest[["Name", "CR", "CF", "TDI", "Age"]], on="Name", how="left")


def reference_patients(group: str | None = None) -> pd.DataFrame:
    """The 30 simglucose patients (or one ``group``), one row each, usable as a population.

    Columns are simglucose's (``Name``, model parameters such as ``kp1``/``Vm0``/``u2ss``, basal
    values such as ``Gpb``/``EGPb``, initial states ``x0_*``) plus ``group`` and each patient's
    therapy from simglucose's ``Quest.csv``: carbohydrate ratio ``CR`` (g/U), correction factor
    ``CF`` (mg/dL/U), total daily insulin ``TDI`` (U/day) and ``Age`` (years); controllers use
    ``CR``/``CF``.
    """
    df = _table()
    if group is not None:
        _check_group(group)
        df = df[df["group"] == group]
    return df.reset_index(drop=True).copy()


def as_population(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The UVA/Padova model parameters of ``df`` as a dict of arrays (a strict population)."""
    return {k: df[k].to_numpy(float) for k in UvaPadova().parameter_names if k in df}


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise OptionError(f"unknown patient group {group!r}; choose from {GROUPS}")


def derive_basal(df: pd.DataFrame) -> pd.DataFrame:
    """Recompute steady-state-dependent parameters from the primary ones (Dalla Man 2007).

    Adds/overwrites ``Gpb, Ipb, m30, m4, Ilb, Gtb, Vm0, kp1, u2ss, isc1ss, isc2ss, Rdb, CL``:
    basal plasma glucose ``Gb·Vg`` balances production (``EGPb``), utilisation and renal loss;
    basal insulin ``Ib·Vi`` is what the basal delivery ``u2ss`` sustains.
    """
    out = df.copy()
    heb = out["HEb"]
    out["Gpb"] = out["Gb"] * out["Vg"]
    out["Ipb"] = out["Ib"] * out["Vi"]
    out["m30"] = heb * out["m1"] / (1.0 - heb)
    out["m4"] = (2.0 / 3.0) * heb * out["m2"]
    out["Ilb"] = out["m2"] * out["Ipb"] / (out["m1"] + out["m30"])
    renal = out["ke1"] * np.maximum(out["Gpb"] - out["ke2"], 0.0)
    out["Gtb"] = (out["Fsnc"] + renal - out["EGPb"] + out["k1"] * out["Gpb"]) / out["k2"]
    out["Vm0"] = (out["EGPb"] - out["Fsnc"] - renal) * (out["Km0"] + out["Gtb"]) / out["Gtb"]
    out["kp1"] = out["EGPb"] + out["kp2"] * out["Gpb"] + out["kp3"] * out["Ib"]
    clearance = out["m2"] + out["m4"] - out["m1"] * out["m2"] / (out["m1"] + out["m30"])
    out["u2ss"] = out["Ipb"] * clearance
    out["isc1ss"] = out["u2ss"] / (out["ka1"] + out["kd"])
    out["isc2ss"] = out["kd"] * out["isc1ss"] / out["ka2"]
    out["Rdb"] = out["EGPb"]
    out["CL"] = out["m4"] * out["Vi"] * out["BW"] / 0.4
    return out


def _plausible(df: pd.DataFrame) -> np.ndarray:
    """Draws whose basal state is physiological (positive tissue glucose and utilisation, slower
    minimal than maximal gastric emptying) and whose parameters lie within the model's bounds."""
    ok = (df["Gtb"] > 0) & (df["Vm0"] > 0) & (df["kmin"] < df["kmax"]) & (df["kp1"] > 0)
    for q in UvaPadova.parameters:
        if q.name in df:
            ok &= df[q.name].between(q.lower, q.upper)
    return ok.to_numpy()


def _to_latent(values: np.ndarray, names) -> np.ndarray:
    z = np.log(values)
    for j, name in enumerate(names):
        if name in LOGIT:
            z[:, j] = np.log(values[:, j] / (1.0 - values[:, j]))
    return z


def _from_latent(z: np.ndarray, names) -> np.ndarray:
    v = np.exp(z)
    for j, name in enumerate(names):
        if name in LOGIT:
            v[:, j] = 1.0 / (1.0 + np.exp(-z[:, j]))
    return v


@dataclasses.dataclass(frozen=True)
class PatientPrior:
    """Gaussian prior on transformed primary parameters (log, or logit for ``b``/``d``)."""

    group: str
    names: tuple[str, ...]
    mean: np.ndarray  # [P]
    cov: np.ndarray  # [P, P]
    fixed: dict[str, float]


def patient_prior(group: str, shrinkage: float = 0.1) -> PatientPrior:
    """Prior estimated from the 10 reference patients of ``group``.

    ``cov = (1 - shrinkage)·S + shrinkage·diag(S)`` with ``S`` the sample covariance (ddof 1) of
    the transformed primary parameters and therapy settings (``CR``, ``CF``: a clinician
    titrates them to the patient's insulin sensitivity, so they are drawn jointly with it);
    ``shrinkage > 0`` makes it full rank.
    """
    _check_group(group)
    if not 0.0 < shrinkage <= 1.0:
        raise OptionError(f"shrinkage must be in (0, 1], got {shrinkage}")
    df = reference_patients(group)
    z = _to_latent(df[list(SAMPLED)].to_numpy(float), SAMPLED)
    s = np.cov(z, rowvar=False)
    cov = (1.0 - shrinkage) * s + shrinkage * np.diag(np.diag(s))
    fixed = {k: float(df[k].iloc[0]) for k in FIXED}
    return PatientPrior(group, SAMPLED, z.mean(0), cov, fixed)


_WINDOW = 4  # attempts drawn at a time: ~99 % of adult draws are physiological


def _standard_normal_draws(
    seed: int, patients: np.ndarray, first_attempt: int, count: int, dim: int
) -> np.ndarray:
    """N(0, I) draws ``[patients, count, dim]``: patient ``i``'s attempts ``first_attempt,
    ...`` use ``fold_in(fold_in(PRNGKey(seed), i), a)`` and ``jax.random.normal``
    (:func:`cohort._prng.normal`: JAX's bits hashed in numpy, no XLA compile)."""
    keys = _prng.fold_in(_prng.key(seed), np.asarray(patients)[:, None])
    keys = _prng.fold_in(keys, first_attempt + np.arange(count)[None, :])
    return _prng.normal(keys, (dim,))


class Candidates:
    """The prior draws behind the samplers, drawn as they are needed: patient ``i``'s attempt
    ``a`` comes from ``fold_in(fold_in(PRNGKey(seed), i), a)`` whenever it is drawn, so a
    patient never depends on ``n`` or on how many attempts others needed. Most patients keep
    one of their first attempts; drawing all ``max_attempts`` up front (10,000 patients × 32:
    320,000 rows with basal values derived) took longer than screening them.

    ``ok [n, max_attempts]``: drawn and physiologically plausible; ``drawn [n]``: attempts
    drawn so far per patient; ``row [n, max_attempts]``: where each drawn attempt is in
    :attr:`frame`."""

    def __init__(self, group: str, n: int, seed: int, shrinkage: float, max_attempts: int):
        if n < 1:
            raise OptionError(f"n must be >= 1, got {n}")
        if max_attempts < 1:
            raise OptionError(f"max_attempts must be >= 1, got {max_attempts}")
        self.group, self.seed, self.max_attempts = group, seed, max_attempts
        self.prior = patient_prior(group, shrinkage)
        p = len(self.prior.names)
        self._chol = np.linalg.cholesky(self.prior.cov + 1e-12 * np.eye(p))
        self.drawn = np.zeros(n, int)
        self.ok = np.zeros((n, max_attempts), bool)
        self.row = np.full((n, max_attempts), -1)
        self._parts: list[pd.DataFrame] = []
        self._rows = 0  # candidates drawn so far
        self._frame: pd.DataFrame | None = None  # their concatenation, rebuilt after a draw

    @property
    def frame(self) -> pd.DataFrame:
        """Every candidate drawn so far (rows as in :attr:`row`)."""
        if self._frame is None:
            self._frame = pd.concat(self._parts, ignore_index=True)
        return self._frame

    def extend(self, patients: np.ndarray) -> None:
        """Draw the next attempts (up to :data:`_WINDOW`) of ``patients``."""
        patients = np.asarray(patients, int)
        patients = patients[self.drawn[patients] < self.max_attempts]
        drawn = self.drawn[patients]  # before any of these draws: one window per patient
        for lo in np.unique(drawn):
            self._draw(patients[drawn == lo], int(lo))

    def _draw(self, patients: np.ndarray, lo: int) -> None:
        hi = min(lo + _WINDOW, self.max_attempts)
        dim = len(self.prior.names)
        # [patients, attempts, P]
        eps = _standard_normal_draws(self.seed, patients, lo, hi - lo, dim)
        z = self.prior.mean + eps @ self._chol.T
        frame = pd.DataFrame(
            _from_latent(z.reshape(-1, dim), self.prior.names), columns=list(self.prior.names)
        )
        for k, v in self.prior.fixed.items():
            frame[k] = v
        frame = derive_basal(frame)
        self._parts.append(frame)
        self._frame = None
        shape = (len(patients), hi - lo)
        self.row[patients, lo:hi] = self._rows + np.arange(frame.shape[0]).reshape(shape)
        self._rows += frame.shape[0]
        self.ok[patients, lo:hi] = _plausible(frame).reshape(shape)
        self.drawn[patients] = hi

    def ensure(self, patients: np.ndarray, after: np.ndarray, count: np.ndarray) -> None:
        """Draw until each of ``patients`` has ``count`` plausible candidates from attempt
        ``after`` on, or has all ``max_attempts`` drawn."""
        patients = np.asarray(patients, int)
        attempt = np.arange(self.max_attempts)
        while True:
            avail = (self.ok[patients] & (attempt >= np.asarray(after)[:, None])).sum(axis=1)
            short = (avail < count) & (self.drawn[patients] < self.max_attempts)
            if not short.any():
                return
            self.extend(patients[short])

    def pick(self, choice: np.ndarray) -> pd.DataFrame:
        """Patient ``i``'s attempt ``choice[i]``, named (``Name``, ``group``)."""
        n = len(choice)
        out = self.frame.iloc[self.row[np.arange(n), choice]].reset_index(drop=True)
        out.insert(0, "group", self.group)
        out.insert(0, "Name", [f"{self.group}#s{self.seed}-{i:05d}" for i in range(n)])
        return out


def sample_candidates(
    group: str, n: int, seed: int, shrinkage: float = 0.1, max_attempts: int = 16
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every prior draw behind :func:`sample_patients`, all drawn: ``max_attempts`` candidates
    per patient (row ``i·max_attempts + a`` is patient ``i``'s attempt ``a``; see
    :class:`Candidates`) with basal values derived, and ``ok [n, max_attempts]``, whether each
    is physiologically plausible."""
    cands = Candidates(group, n, seed, shrinkage, max_attempts)
    cands.ensure(np.arange(n), np.zeros(n, int), np.full(n, max_attempts))
    frame = cands.frame.iloc[cands.row.ravel()].reset_index(drop=True)
    return frame, cands.ok


def sample_patients(
    group: str, n: int, seed: int, shrinkage: float = 0.1, max_attempts: int = 16
) -> pd.DataFrame:
    """Draw ``n`` new virtual patients of ``group`` at their basal steady state.

    Patient ``i`` is drawn from ``jax.random.fold_in(PRNGKey(seed), i)`` (implausible draws are
    redrawn from further folds), so a patient does not depend on ``n``: the first ``m`` of ``n``
    patients equal those of a call with ``n = m``. Returns one row per patient with ``Name``,
    ``group``, every UVA/Padova parameter, the basal values (``Gpb``, ``Gtb``, ...) and the
    therapy settings ``CR``/``CF`` that controllers use. (Constraining patients by their
    outcomes under a standard day is :func:`cohort.glucose.patients.sample_plausible`.)
    """
    cands = Candidates(group, n, seed, shrinkage, max_attempts)
    cands.ensure(np.arange(n), np.zeros(n, int), np.ones(n, int))
    if not cands.ok.any(axis=1).all():
        bad = int(np.flatnonzero(~cands.ok.any(axis=1))[0])
        raise PatientSamplingError(
            f"patient {bad}: no plausible draw in {max_attempts} attempts; raise max_attempts "
            "or shrinkage"
        )
    return cands.pick(np.argmax(cands.ok, axis=1))
