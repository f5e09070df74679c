"""Population prior specs (``priors/*.toml``): parsing and validation with clear errors.

A spec declares covariates (marginal distributions + a Gaussian-copula correlation), parameters
(typical value × covariate effects × exp(η), η ~ N(0, Ω)), bounds, plausibility filters and
optional targets to match; every number carries a ``citation``. Files are read with
``tomllib`` only. Every error names the file and the key, and says what is allowed.

(Over ~400 lines because every key of the spec format is validated here with a message naming
the file and key; the parser is one idea, split only by section.)
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from cohort._toml import read_toml
from cohort.errors import CohortError
from cohort.population.expr import ExpressionError, names_in


class SpecError(CohortError, ValueError):
    """A prior spec is malformed; the message names the file, the key and the fix."""


DISTRIBUTIONS = {
    "normal": ("mean", "sd"),
    "lognormal": ("median", "cv"),
    "truncnormal": ("mean", "sd", "lower", "upper"),
    "uniform": ("lower", "upper"),
    "beta": ("alpha", "beta"),
    "categorical": ("categories", "probabilities"),
    "empirical": ("quantiles",),
    "constant": ("value",),
}
MAX_LOG_SD = 3.0  # above this an [iiv] SD is a percentage typed as a log-scale SD
_COV_OPTIONAL = {"units", "citation", "description", "lower", "upper"}
# keys only some distributions read (a scipy-style ``scale`` on a lognormal was ignored)
_COV_EXTRA = {"beta": {"loc", "scale"}, "empirical": {"probabilities"}}
EFFECTS = {
    "power": ("covariate", "reference", "coefficient"),
    "linear": ("covariate", "reference", "coefficient"),
    "exponential": ("covariate", "reference", "coefficient"),
    "categorical": ("covariate", "factors"),
    "expression": ("expression",),
}
_TOP = {
    "population",
    "covariates",
    "correlation",
    "parameters",
    "iiv",
    "iov",
    "error",
    "filters",
    "targets",
}
ERROR_KINDS = ("additive", "proportional", "combined", "log-additive")


@dataclasses.dataclass(frozen=True)
class Covariate:
    name: str
    distribution: str
    args: dict[str, Any]
    units: str
    citation: str


@dataclasses.dataclass(frozen=True)
class Effect:
    type: str
    args: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    name: str
    typical: float
    units: str
    citation: str
    effects: tuple[Effect, ...] = ()
    lower: float = -np.inf
    upper: float = np.inf


@dataclasses.dataclass(frozen=True)
class Filter:
    name: str
    expression: str
    lower: float = -np.inf
    upper: float = np.inf


@dataclasses.dataclass(frozen=True)
class Target:
    """Observed distribution that the virtual population's ``expression`` should match."""

    name: str
    expression: str
    distribution: str  # normal | lognormal | data
    args: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ResidualError:
    """The published residual error (``[error]``): what a digital twin's likelihood uses.
    ``add`` is an SD in the output's units (log scale for ``log-additive``), ``prop`` an SD as
    a fraction of the prediction; ``output`` the observed model output."""

    kind: str
    add: float
    prop: float
    output: str | None
    citation: str
    # Optional, for dense sampling (CGM): each patient's additive SD is estimated with a
    # log-normal prior (median ``add``, log-SD ``add_sd_log``), and residuals are AR(1) with
    # correlation ``ar1`` over ``ar1_interval`` (logit-normal prior, SD ``ar1_sd_logit``).
    # ``initial_sd``: the state at the first reading is estimated too (normal prior centred on
    # that reading with this SD, which takes the place of the reading's own error term).
    add_sd_log: float | None = None
    ar1: float | None = None
    ar1_sd_logit: float | None = None
    ar1_interval: float | None = None
    initial_sd: float | None = None


@dataclasses.dataclass(frozen=True)
class Occasions:
    """Inter-occasion variability (``[iov]``): each ``interval`` (min, from a patient's first
    record; default a day) of a record multiplies ``parameters`` by ``exp(κ)``, ``κ ~ N(0,
    sd²)`` drawn per occasion, as NONMEM's IOV on top of the between-patient ``[iiv]``. Read
    by CGM twins (the day-to-day variation one day of data cannot show)."""

    parameters: tuple[str, ...]
    sd: tuple[float, ...]
    interval: float
    citation: str


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
    path: str
    name: str
    model: str | None
    citation: str
    covariates: tuple[Covariate, ...]
    correlation_vars: tuple[str, ...]
    correlation: np.ndarray
    parameters: tuple[ParameterSpec, ...]
    eta_names: tuple[str, ...]
    omega: np.ndarray
    filters: tuple[Filter, ...]
    targets: tuple[Target, ...]
    digest: str
    error: ResidualError | None = None
    iov: Occasions | None = None

    @property
    def covariate_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.covariates)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)


def _err(path, key, msg) -> SpecError:
    return SpecError(f"{path}: [{key}] {msg}")


def _num(path, key, v, positive=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(path, key, f"must be a number, got {v!r}")
    v = float(v)
    if not np.isfinite(v):
        raise _err(path, key, "must be finite")
    if positive and v <= 0:
        raise _err(path, key, f"must be > 0, got {v:g}")
    return v


def _check_keys(path, key, table: dict, allowed: set[str]):
    if not isinstance(table, dict):
        raise _err(path, key, f"must be a table, got {type(table).__name__} {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(path, key, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _covariate(path, name, t) -> Covariate:
    key = f"covariates.{name}"
    if not isinstance(t, dict):
        raise _err(path, key, "must be a table")
    dist = t.get("distribution")
    if dist is None:
        stray = sorted(
            set(t)
            - {"distribution", *_COV_OPTIONAL, *set().union(*_COV_EXTRA.values())}
            - set().union(*DISTRIBUTIONS.values())
        )
        hint = f" (unknown key(s) {stray}: a misspelling?)" if stray else ""
        raise _err(
            path,
            f"{key}.distribution",
            f"missing key 'distribution'{hint}; choose from {sorted(DISTRIBUTIONS)}",
        )
    if dist not in DISTRIBUTIONS:
        raise _err(
            path,
            f"{key}.distribution",
            f"unknown distribution {dist!r}; choose from {sorted(DISTRIBUTIONS)}",
        )
    required = DISTRIBUTIONS[dist]
    _check_keys(
        path, key, t, {"distribution", *required} | _COV_OPTIONAL | _COV_EXTRA.get(dist, set())
    )
    for r in required:
        if r not in t and not (dist == "empirical" and r == "probabilities"):
            raise _err(path, key, f"distribution {dist!r} needs key {r!r}")
    if "units" not in t:
        raise _err(path, f"{key}.units", 'missing unit (use "1" for dimensionless)')
    if not t.get("citation"):
        raise _err(path, f"{key}.citation", "every number needs a citation")
    args = {k: t[k] for k in t if k not in ("distribution", "units", "citation", "description")}
    if dist in ("normal", "truncnormal"):
        args["mean"] = _num(path, f"{key}.mean", t["mean"])
        args["sd"] = _num(path, f"{key}.sd", t["sd"], positive=True)
    if dist == "lognormal":
        args["median"] = _num(path, f"{key}.median", t["median"], positive=True)
        args["cv"] = _num(path, f"{key}.cv", t["cv"], positive=True)
    if dist in ("categorical", "constant") and ("lower" in t or "upper" in t):
        raise _err(
            path,
            f"{key}.{'lower' if 'lower' in t else 'upper'}",
            f"bounds do not apply to a {dist} covariate (they were ignored); remove them, or "
            "select patients with a [[filters]] entry",
        )
    if dist in ("truncnormal", "uniform") or "lower" in t or "upper" in t:
        args["lower"], args["upper"] = _bounds(path, key, t)
    if dist == "beta":
        args["alpha"] = _num(path, f"{key}.alpha", t["alpha"], positive=True)
        args["beta"] = _num(path, f"{key}.beta", t["beta"], positive=True)
        args["loc"] = _num(path, f"{key}.loc", t.get("loc", 0.0))
        args["scale"] = _num(path, f"{key}.scale", t.get("scale", 1.0), positive=True)
    if dist == "categorical":
        cats, probs = t["categories"], t["probabilities"]
        if not isinstance(cats, list) or not cats or len(cats) != len(probs):
            raise _err(path, key, "categories and probabilities must be lists of equal length")
        probs = np.array([_num(path, f"{key}.probabilities", p) for p in probs])
        if np.any(probs < 0) or abs(probs.sum() - 1) > 1e-6:
            raise _err(
                path, f"{key}.probabilities", f"must be >= 0 and sum to 1 (sum {probs.sum():g})"
            )
        args["probabilities"] = probs
    if dist == "empirical":
        q = np.asarray([_num(path, f"{key}.quantiles", v) for v in t["quantiles"]])
        if q.size < 2 or np.any(np.diff(q) < 0):
            raise _err(path, f"{key}.quantiles", "needs >= 2 non-decreasing values")
        p = np.asarray(t.get("probabilities", np.linspace(0, 1, q.size)), dtype=float)
        if p.size != q.size or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 1:
            raise _err(
                path,
                f"{key}.probabilities",
                "must increase within [0, 1] and match quantiles in length",
            )
        if p[0] != 0 or p[-1] != 1:  # interpolation holds the end values beyond them
            raise _err(
                path, f"{key}.probabilities", f"must run from 0 to 1 (the covariate's smallest "
                f"and largest values), got {p[0]:g} to {p[-1]:g}: the patients beyond them "
                f"would all sit exactly at {q[0]:g} or {q[-1]:g}; add the extremes"
            )  # fmt: skip
        args["quantiles"], args["probabilities"] = q, p
    if dist == "constant":
        args["value"] = _num(path, f"{key}.value", t["value"])
    return Covariate(name, dist, args, str(t["units"]), str(t["citation"]))


def _effect(path, key, e, covariates) -> Effect:
    if not isinstance(e, dict) or e.get("type") not in EFFECTS:
        raise _err(path, f"{key}.type", f"effect type must be one of {sorted(EFFECTS)}")
    kind = e["type"]
    _check_keys(path, key, e, {"type", "citation", *EFFECTS[kind]})
    for r in EFFECTS[kind]:
        if r not in e:
            raise _err(path, key, f"effect {kind!r} needs key {r!r}")
    args = {k: v for k, v in e.items() if k not in ("type", "citation")}
    if "covariate" in args and args["covariate"] not in covariates:
        raise _err(
            path,
            f"{key}.covariate",
            f"unknown covariate {args['covariate']!r}; defined: {sorted(covariates)}",
        )
    if kind in ("power", "linear", "exponential"):
        args["reference"] = _num(path, f"{key}.reference", e["reference"], positive=kind == "power")
        args["coefficient"] = _num(path, f"{key}.coefficient", e["coefficient"])
    if kind == "categorical":
        if not isinstance(e["factors"], dict):
            raise _err(path, f"{key}.factors", "must be a table category = factor")
        args["factors"] = {
            str(k): _num(path, f"{key}.factors.{k}", v, positive=True)
            for k, v in e["factors"].items()
        }
        cov = covariates[args["covariate"]]
        labels = [str(c) for c in cov.args.get("categories", ())]
        if cov.distribution != "categorical":
            raise _err(path, f"{key}.covariate", f"{cov.name!r} is not a categorical covariate")
        unknown = [k for k in args["factors"] if k not in labels]
        if unknown:  # a label matching no category was a factor of 1, silently
            raise _err(
                path, f"{key}.factors", f"{unknown} are not categories of {cov.name!r} "
                f"({labels}); give a factor per category label"
            )  # fmt: skip
    if kind == "expression":
        try:
            unknown = names_in(e["expression"]) - set(covariates)
        except ExpressionError as exc:
            raise _err(path, f"{key}.expression", str(exc)) from None
        if unknown:
            raise _err(path, f"{key}.expression", f"unknown covariate(s) {sorted(unknown)}")
    return Effect(kind, args)


def _bounds(path, key, t: dict) -> tuple[float, float]:
    """``(lower, upper)`` of a covariate, parameter or filter table (infinite where not
    given), refused unless lower < upper."""
    lo = _num(path, f"{key}.lower", t["lower"]) if "lower" in t else -np.inf
    hi = _num(path, f"{key}.upper", t["upper"]) if "upper" in t else np.inf
    if not lo < hi:
        raise _err(path, key, f"lower ({lo:g}) must be below upper ({hi:g})")
    return lo, hi


def _check_against_model(path, params, model) -> None:
    """Each parameter in the model's units, its typical value inside the model's bounds: a
    CL in mL/min was simulated as L/h (60x), a typical CL of -5 drawn at 100 % acceptance."""
    bounds = {q.name: q for q in model.parameters}
    for p in params:
        q = bounds[p.name]
        if _unit(p.units) != _unit(q.units):
            raise _err(
                path, f"parameters.{p.name}.units", f"{p.units!r}, but {model.name}'s "
                f"{p.name} is in {q.units!r}: convert the typical value (and bounds) to "
                f"{q.units}"
            )  # fmt: skip
        # (a positive parameter's typical value may sit below the model's solve bound, e.g.
        # CL 1e-9 to switch elimination off in a test prior: only its sign is checked)
        positive = q.lower > 0 and not p.typical > 0
        if positive or p.typical > q.upper or p.typical < min(q.lower, 0.0):
            raise _err(
                path, f"parameters.{p.name}.typical", f"{p.typical:g} is outside "
                f"{model.name}'s range for {p.name} [{q.lower:g}, {q.upper:g}] {q.units}"
            )  # fmt: skip


def _check_covariate_names(path, covariates, model) -> None:
    """A covariate named like one of the model's parameters is that parameter in a simulation
    (a population variable is read by name): a categorical ``F`` meant as "female" was
    simulated as bioavailability 0 or 1 without a word (a probe). Refused where it cannot be
    meant (a categorical covariate, or other units); a warning where it can (``BW`` in kg as
    the glucose models' body weight)."""
    import warnings

    from cohort.errors import CohortWarning

    params = {q.name: q for q in model.parameters}
    for c in covariates:
        q = params.get(c.name)
        if q is None:
            continue
        what = f"{model.name}'s parameter {c.name} ({q.description}, {q.units})"
        if c.distribution == "categorical" or _unit(c.units) != _unit(q.units):
            kind = "a categorical covariate" if c.distribution == "categorical" else (
                f"in {c.units!r}")  # fmt: skip
            raise _err(
                path, f"covariates.{c.name}", f"has the name of {what}, and a simulation "
                f"would use it as that parameter, but it is {kind}: rename the covariate "
                f"(e.g. {c.name}_COV, and in the effects that use it)"
            )  # fmt: skip
        warnings.warn(
            f"{path}: covariate {c.name} has the name of {what}: a simulation of this "
            f"population uses its values as that parameter (rename it if that is not meant)",
            CohortWarning,
            stacklevel=4,
        )


def _unit(units: str) -> str:
    """Units compared as written, up to spaces and the usual spellings of 'per hour'."""
    u = str(units).replace(" ", "").replace("h-1", "/h").replace("1/hr", "1/h")
    return {"": "1", "-": "1", "none": "1"}.get(u, u)


def _matrix(path, key, m, size, what) -> np.ndarray:
    try:
        a = np.asarray(m, dtype=float)
    except (TypeError, ValueError):
        raise _err(path, key, f"{what} must be a numeric square matrix") from None
    if a.shape != (size, size):
        raise _err(path, key, f"{what} must be {size}x{size}, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise _err(path, key, f"{what} must hold finite numbers (got nan or inf)")
    if not np.allclose(a, a.T):
        raise _err(path, key, f"{what} must be symmetric")
    if np.min(np.linalg.eigvalsh(a)) <= 0:
        raise _err(
            path,
            key,
            f"{what} is not positive definite (smallest eigenvalue "
            f"{np.min(np.linalg.eigvalsh(a)):.3g})",
        )
    return a


def load_spec(path: str | Path) -> PopulationSpec:
    """Read and validate a TOML prior spec."""
    raw, digest, path = read_toml(path, SpecError, "spec file", "priors")
    return parse_spec(raw, str(path), digest)


def _model(path: str, name: object) -> str | None:
    """The spec's ``population.model``: a registered model whose parameters the spec's must be."""
    if name is None:
        return None
    from cohort.models import available

    if not isinstance(name, str) or name not in available():
        raise _err(
            path,
            "population.model",
            f"unknown model {name!r}; use one of `cohort models`: {', '.join(available())}",
        )
    return name


def parse_spec(raw: dict, path: str = "<spec>", digest: str | None = None) -> PopulationSpec:
    """Validate a prior spec given as a dict (the parsed TOML)."""
    try:
        return _parse_spec(raw, path, digest)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # A value of the wrong shape that no specific check caught: still the user's input.
        raise SpecError(
            f"{path}: a value has the wrong type or shape ({type(exc).__name__}: {exc}); "
            "compare the spec with priors/adult_pk_oral.toml"
        ) from None


def _parse_spec(raw: dict, path: str, digest: str | None) -> PopulationSpec:
    _check_keys(path, "top level", raw, _TOP)
    meta = raw.get("population", {})
    _check_keys(path, "population", meta, {"name", "description", "model", "citation"})
    if not meta.get("name"):
        raise _err(path, "population.name", "missing name")
    model = _model(path, meta.get("model"))
    covs = raw.get("covariates", {})
    covariates = tuple(_covariate(path, n, t) for n, t in covs.items())
    cov_names = {c.name for c in covariates}
    corr = raw.get("correlation", {})
    _check_keys(path, "correlation", corr, {"variables", "matrix", "citation"})
    cvars = tuple(corr.get("variables", ()))
    for v in cvars:
        if v not in cov_names:
            hint = (
                f": {v} is a parameter; parameters are correlated through their random effects "
                "([iiv] omega, off-diagonal entries), [correlation] ties covariates"
                if v in raw.get("parameters", {})
                else f"; covariates: {', '.join(sorted(cov_names)) or 'none'}"
            )
            raise _err(path, "correlation.variables", f"unknown covariate {v!r}{hint}")
    if len(set(cvars)) != len(cvars):
        raise _err(path, "correlation.variables", "variables must be distinct")
    if cvars:
        if not corr.get("citation"):
            raise _err(path, "correlation.citation", "every number needs a citation")
        cm = _matrix(
            path, "correlation.matrix", corr.get("matrix"), len(cvars), "correlation matrix"
        )
        if not np.allclose(np.diag(cm), 1.0):
            raise _err(path, "correlation.matrix", "diagonal must be 1")
    else:
        cm = np.zeros((0, 0))
    params = []
    for name, t in raw.get("parameters", {}).items():
        key = f"parameters.{name}"
        if not isinstance(t, dict):
            raise _err(path, key, "must be a table")
        _check_keys(
            path,
            key,
            t,
            {"typical", "units", "citation", "effects", "lower", "upper", "description"},
        )
        if "typical" not in t:
            raise _err(path, f"{key}.typical", "missing typical value")
        if "units" not in t:
            raise _err(path, f"{key}.units", 'missing unit (use "1" for dimensionless)')
        if not t.get("citation"):
            raise _err(path, f"{key}.citation", "every number needs a citation")
        effects = tuple(
            _effect(path, f"{key}.effects[{i}]", e, {c.name: c for c in covariates})
            for i, e in enumerate(t.get("effects", []))
        )
        lo, hi = _bounds(path, key, t)
        if name in cov_names:
            raise _err(path, key, f"{name!r} is also a covariate; give them different names")
        params.append(
            ParameterSpec(
                name,
                _num(path, f"{key}.typical", t["typical"]),
                str(t["units"]),
                str(t["citation"]),
                effects,
                lo,
                hi,
            )
        )
    pnames = {p.name for p in params}
    if model is not None:
        from cohort.models import get

        lacking = sorted(pnames - set(get(model).parameter_names))
        if lacking:
            raise _err(
                path,
                "parameters",
                f"{lacking} are not parameters of model {model!r} "
                f"({', '.join(get(model).parameter_names)})",
            )
        _check_against_model(path, params, get(model))
        _check_covariate_names(path, covariates, get(model))
    iiv = raw.get("iiv", {})
    _check_keys(path, "iiv", iiv, {"parameters", "omega", "sd", "citation"})
    eta = tuple(iiv.get("parameters", ()))
    for k, v in enumerate(eta):
        if v in eta[:k]:  # the second SD was silently dropped
            raise _err(path, "iiv.parameters", f"{v!r} is listed twice; give each once")
        if v not in pnames:
            raise _err(
                path, "iiv.parameters", f"unknown parameter {v!r}; defined: {sorted(pnames)}"
            )
    if eta:
        if not iiv.get("citation"):
            raise _err(path, "iiv.citation", "every number needs a citation")
        if ("omega" in iiv) == ("sd" in iiv):
            raise _err(path, "iiv", "give exactly one of omega (variance matrix) or sd (list)")
        if "sd" in iiv:
            sd = [_num(path, "iiv.sd", s) for s in iiv["sd"]]
            if len(sd) != len(eta) or min(sd) <= 0:
                raise _err(path, "iiv.sd", f"needs {len(eta)} positive standard deviations")
            omega = np.diag(np.square(sd))
        else:
            omega = _matrix(path, "iiv.omega", iiv["omega"], len(eta), "omega")
        # log-scale SDs above 3 (a CV of ~9,000 %) are percentages typed as SDs: [30, 25, 40]
        # drew CL from 1e-20 to 1e21 with only a parameter-range warning (a new user's session)
        wide = [(n, float(v)) for n, v in zip(eta, np.sqrt(np.diag(omega))) if v > MAX_LOG_SD]
        if wide:
            key = "iiv.sd" if "sd" in iiv else "iiv.omega"
            shown = ", ".join(f"{n} {v:g}" for n, v in wide)
            raise _err(
                path, key, f"log-scale SD {shown} above {MAX_LOG_SD:g}: the SD is of "
                "log(parameter) (~CV for small values: 0.3 for 30 %); give 0.3, not 30 (omega "
                "holds variances: 0.09)"
            )  # fmt: skip
    else:
        omega = np.zeros((0, 0))
    iov = _occasions(path, raw["iov"], eta) if "iov" in raw else None
    known = cov_names | pnames
    filters = []
    for i, f in enumerate(raw.get("filters", [])):
        key = f"filters[{i}]"
        _check_keys(path, key, f, {"name", "expression", "lower", "upper", "citation"})
        if "expression" not in f:
            raise _err(path, f"{key}.expression", "missing expression")
        try:
            unknown = names_in(f["expression"]) - known
        except ExpressionError as exc:
            raise _err(path, f"{key}.expression", str(exc)) from None
        if unknown:
            raise _err(
                path, f"{key}.expression",
                f"unknown name(s) {sorted(unknown)}; known: {', '.join(sorted(known))}",
            )  # fmt: skip
        if "lower" not in f and "upper" not in f:
            raise _err(path, key, "a filter needs lower and/or upper (it would filter nothing)")
        lo, hi = _bounds(path, key, f)
        filters.append(Filter(str(f.get("name", f["expression"])), f["expression"], lo, hi))
    targets = []
    for i, t in enumerate(raw.get("targets", [])):
        key = f"targets[{i}]"
        _check_keys(
            path,
            key,
            t,
            {
                "name",
                "expression",
                "distribution",
                "mean",
                "sd",
                "median",
                "cv",
                "values",
                "citation",
            },
        )
        dist = t.get("distribution")
        if dist not in ("normal", "lognormal", "data"):
            raise _err(path, f"{key}.distribution", "must be normal, lognormal or data")
        if "expression" not in t:
            raise _err(path, f"{key}.expression", "missing expression")
        if not t.get("citation"):
            raise _err(path, f"{key}.citation", "every number needs a citation")
        try:
            unknown = names_in(t["expression"]) - known
        except ExpressionError as exc:
            raise _err(path, f"{key}.expression", str(exc)) from None
        if unknown:
            raise _err(
                path, f"{key}.expression",
                f"unknown name(s) {sorted(unknown)}; known: {', '.join(sorted(known))}",
            )  # fmt: skip
        args = {k: t[k] for k in ("mean", "sd", "median", "cv", "values") if k in t}
        targets.append(Target(str(t.get("name", t["expression"])), t["expression"], dist, args))
    digest = digest or hashlib.sha256(repr(raw).encode()).hexdigest()[:16]
    error = _error(path, raw["error"]) if "error" in raw else None
    return PopulationSpec(
        path,
        str(meta["name"]),
        model,
        str(meta.get("citation", "")),
        covariates,
        cvars,
        cm,
        tuple(params),
        eta,
        omega,
        tuple(filters),
        tuple(targets),
        digest,
        error,
        iov,
    )


def _occasions(path: str, t: dict, eta: tuple[str, ...]) -> Occasions:
    _check_keys(path, "iov", t, {"parameters", "sd", "interval", "citation"})
    names = t.get("parameters")
    if not isinstance(names, list) or not names:
        raise _err(path, "iov.parameters", 'a list of parameter names, e.g. ["Gb"]')
    names = tuple(str(n) for n in names)
    for k, v in enumerate(names):
        if v in names[:k]:
            raise _err(path, "iov.parameters", f"{v!r} is listed twice; give each once")
        if v not in eta:  # log-normal parameters: exp(η + κ)
            raise _err(
                path, "iov.parameters", f"{v!r} has no [iiv] entry; IOV is on log-normal "
                f"parameters with between-patient variability ({', '.join(eta) or 'none'})"
            )  # fmt: skip
    if not t.get("citation"):
        raise _err(path, "iov.citation", "every number needs a citation")
    sd = t.get("sd")
    if not isinstance(sd, list) or len(sd) != len(names):
        raise _err(path, "iov.sd", f"needs a list of {len(names)} log-scale SDs, one per parameter")
    sd = tuple(_num(path, "iov.sd", v, positive=True) for v in sd)
    if max(sd) > MAX_LOG_SD:
        raise _err(path, "iov.sd", f"log-scale SDs above {MAX_LOG_SD:g}: give 0.2 for ~20 %")
    interval = _num(path, "iov.interval", t.get("interval", 1440.0), positive=True)
    if not float(interval).is_integer():
        raise _err(path, "iov.interval", f"a whole number of minutes, got {interval}")
    return Occasions(names, sd, float(interval), str(t["citation"]))


def _error(path: str, t: dict) -> ResidualError:
    serial = ("add_sd_log", "ar1", "ar1_sd_logit", "ar1_interval", "initial_sd")
    _check_keys(path, "error", t, {"kind", "add", "prop", "output", "citation", *serial})
    kind = t.get("kind")
    if kind not in ERROR_KINDS:
        raise _err(path, "error.kind", f"must be one of {ERROR_KINDS}, got {kind!r}")
    if not t.get("citation"):
        raise _err(path, "error.citation", "every number needs a citation")
    needs = {"additive": ("add",), "log-additive": ("add",), "proportional": ("prop",)}
    needs = needs.get(kind, ("add", "prop"))
    for key in needs:
        if key not in t:
            raise _err(path, f"error.{key}", f"a {kind} error needs {key} (an SD)")
    add = _num(path, "error.add", t["add"], positive=True) if "add" in needs else 0.0
    prop = _num(path, "error.prop", t["prop"], positive=True) if "prop" in needs else 0.0
    output = t.get("output")
    extra = {k: _num(path, f"error.{k}", t[k], positive=True) for k in serial if k in t}
    if "ar1" in extra and not extra["ar1"] < 1:
        raise _err(path, "error.ar1", f"a correlation must be in (0, 1), got {extra['ar1']}")
    if ("ar1" in extra) != ("ar1_interval" in extra):
        raise _err(path, "error.ar1_interval", "ar1 and ar1_interval (min) go together")
    return ResidualError(
        kind, add, prop, None if output is None else str(output), t["citation"], **extra
    )
