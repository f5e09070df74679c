"""Trial specs (``experiments/*.toml``): parsing and validation into frozen dataclasses.

Specs are data: every table and key is checked here, and errors name the file and the key
(``experiments/x.toml: [arms[2].regimens[0].amt] must be a number``) so a user can fix the spec
without reading code. Expressions (inclusion criteria, strata, PTA targets, toxicity) are parsed
with the safe evaluator of :mod:`cohort.population.expr`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from cohort._toml import read_toml, shipped_folders, shipped_names
from cohort.population.expr import ExpressionError, names_in
from cohort.trial.schema import (  # noqa: F401  (re-exported: the spec's public types)
    ENDPOINT_TYPES,
    ESCALATION,
    ESTIMANDS,
    SPENDING,
    TESTS,
    Adaptive,
    Arm,
    Assay,
    Endpoint,
    Escalation,
    Sequential,
    Test,
    TrialSpec,
    TrialSpecError,
)


class _Reader:
    """Typed accessors that raise :class:`TrialSpecError` naming ``path`` and the key."""

    def __init__(self, path: str):
        self.path = path

    def err(self, key: str, msg: str) -> TrialSpecError:
        return TrialSpecError(f"{self.path}: [{key}] {msg}")

    def keys(self, key: str, table: Any, allowed: set[str]) -> dict:
        if not isinstance(table, dict):
            raise self.err(key, f"must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.err(key, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return table

    def num(self, key: str, v: Any, lo: float | None = None, hi: float | None = None) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(key, f"must be a number, got {v!r}")
        if not math.isfinite(v):  # TOML's nan and inf passed every bound check (a probe)
            raise self.err(key, f"must be a finite number, got {v!r}")
        if lo is not None and v < lo or hi is not None and v > hi:
            bound = f">= {lo:g}" if hi is None else f"<= {hi:g}" if lo is None else None
            raise self.err(key, f"must be {bound or f'in [{lo:g}, {hi:g}]'}, got {v!r}")
        return float(v)

    def int_(self, key: str, v: Any, lo: int = 0) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise self.err(key, f"must be an integer >= {lo}, got {v!r}")
        return v

    def bool_(self, key: str, v: Any) -> bool:
        if not isinstance(v, bool):
            raise self.err(key, f"must be true or false (no quotes), got {v!r}")
        return v

    def choice(self, key: str, v: Any, options: tuple[str, ...]) -> str:
        if v not in options:
            raise self.err(key, f"{v!r} is not one of {list(options)}")
        return v

    def expr(self, key: str, v: Any, known: set[str] | None = None) -> str:
        if not isinstance(v, str):
            raise self.err(key, f"must be an expression string, got {v!r}")
        try:
            names = names_in(v)
        except ExpressionError as exc:
            raise self.err(key, str(exc)) from None
        if known is not None and names - known:
            raise self.err(key, f"unknown name(s) {sorted(names - known)}; known: {sorted(known)}")
        return v


def load(path: str | Path) -> TrialSpec:
    """Read and validate a trial spec file."""
    raw, digest, path = read_toml(path, TrialSpecError, "trial spec", "experiments")
    return parse(raw, str(path), base=Path(path).parent, digest=digest)


_TOP = {
    "trial",
    "population",
    "arms",
    "allocation",
    "sampling",
    "dropout",
    "endpoints",
    "analysis",
    "pta",
    "escalation",
}


def parse(raw: dict, path: str = "<spec>", base: Path | None = None, digest: str = "") -> TrialSpec:
    """Validate a spec given as a dict (the parsed TOML); ``base`` resolves relative paths."""
    try:
        return _parse(raw, path, base, digest)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # A value of the wrong shape that no specific check caught: still the user's input.
        raise TrialSpecError(
            f"{path}: a value has the wrong type or shape ({type(exc).__name__}: {exc}); "
            "compare the spec with experiments/theophylline_dose_ranging.toml"
        ) from None


def _parse(raw: dict, path: str, base: Path | None, digest: str) -> TrialSpec:
    r = _Reader(path)
    r.keys("top level", raw, _TOP)
    t = r.keys(
        "trial",
        raw.get("trial", {}),
        {"name", "description", "model", "method", "n", "replicates", "seed", "dtype", "grid_step"},
    )
    if not t.get("name"):
        raise r.err("trial.name", "missing")
    if not t.get("model"):
        raise r.err("trial.model", "missing (a model name, see `cohort models`)")
    from cohort.models import available, get

    if not isinstance(t["model"], str) or t["model"] not in available():
        raise r.err("trial.model", f"unknown model {t['model']!r}; see `cohort models`")
    model = get(t["model"])
    method = r.choice("trial.method", t.get("method", "auto"), ("auto", "closed_form", "fast"))
    pop = r.keys("population", raw.get("population", {}), {"prior", "inclusion", "exclusion"})
    if "prior" not in pop:
        raise r.err("population.prior", "missing (path of a priors/*.toml spec)")
    if not isinstance(pop["prior"], str):
        raise r.err("population.prior", f"must be a path string, got {pop['prior']!r}")
    prior = Path(pop["prior"])
    if not prior.is_absolute() and base is not None:
        prior = base / prior
    given = Path(pop["prior"])
    if not prior.exists() and len(given.parts) == 1 and given.suffix in ("", ".toml"):
        # a bare name: cohort's own prior of that name, as on the command line (never a file
        # of the working folder: a spec's paths are relative to the spec)
        own = [f / f"{given.stem}.toml" for f in shipped_folders("priors")]
        prior = next((f for f in own if f.is_file()), prior)
    if not prior.exists():
        names = ", ".join(shipped_names("priors"))
        raise r.err(
            "population.prior",
            f"no such prior spec {str(Path(pop['prior']))!r} (relative to the trial spec's "
            f"folder); cohort's own are also found by name alone: {names}",
        )
    population = _prior_names(r, prior, model, t["model"])
    arms = _arms(r, raw.get("arms"), model)
    names = [a.name for a in arms]
    al = r.keys(
        "allocation", raw.get("allocation", {}), {"ratio", "block_size", "strata", "adaptive"}
    )
    given = al.get("ratio", [1] * len(arms))
    if not isinstance(given, list):  # "1:2" was read character by character
        raise r.err(
            "allocation.ratio", f"a list of whole numbers, one per arm (e.g. [1, 2]), got {given!r}"
        )
    ratio = tuple(r.int_(f"allocation.ratio[{i}]", x, 1) for i, x in enumerate(given))
    if len(ratio) != len(arms):
        raise r.err("allocation.ratio", f"needs one entry per arm ({len(arms)}), got {len(ratio)}")
    block = r.int_("allocation.block_size", al.get("block_size", sum(ratio) * 2))
    if block and block % sum(ratio):
        raise r.err("allocation.block_size", f"must be a multiple of sum(ratio) = {sum(ratio)}")
    strata = tuple(
        r.expr(f"allocation.strata[{i}]", s, population) for i, s in enumerate(al.get("strata", []))
    )
    sa = r.keys("sampling", raw.get("sampling", {}), {"times", "assay"})
    times = tuple(r.num(f"sampling.times[{i}]", x, 0) for i, x in enumerate(sa.get("times", [])))
    if not times or list(times) != sorted(set(times)):
        raise r.err("sampling.times", "give strictly increasing observation times")
    assays = tuple(_assay(r, i, a) for i, a in enumerate(sa.get("assay", [])))
    do = r.keys("dropout", raw.get("dropout", {}), {"hazard", "estimand"})
    endpoints = _endpoints(r, raw.get("endpoints"), population)
    ep_names = {e.name for e in endpoints}
    _check_windows(r, endpoints, times)
    _check_grid_times(r, endpoints, times, r.num("trial.grid_step", t.get("grid_step", 0.5), 1e-6))
    _check_outputs(r, model, t["model"], endpoints, assays)
    an = r.keys(
        "analysis",
        raw.get("analysis", {}),
        {"alpha", "sided", "control", "tests", "sequential", "power_target", "sample_sizes"},
    )
    control = an.get("control", next((a.name for a in arms if a.control), names[0]))
    if control not in names:
        raise r.err("analysis.control", f"unknown arm {control!r}; arms: {names}")
    raw_tests = an.get("tests", [])
    # the first test is primary unless the spec marks one (marking the second made both)
    marked = any(isinstance(x, dict) and "primary" in x for x in raw_tests)
    tests = tuple(
        _test(r, i, x, endpoints, population, default_primary=not marked and i == 0)
        for i, x in enumerate(raw_tests)
    )
    seen: dict[tuple[str, str], int] = {}
    for i, one in enumerate(tests):
        key = (one.endpoint, one.describe())  # what its comparison label is made of
        if key in seen:
            raise r.err(
                f"analysis.tests[{i}]", f"the same comparison as tests[{seen[key]}] "
                f"({one.endpoint}, {one.describe()}): its rows would be indistinguishable"
            )  # fmt: skip
        seen[key] = i
    seq = None
    if "sequential" in an:
        s = r.keys("analysis.sequential", an["sequential"], {"looks", "spending", "futility"})
        looks = tuple(r.num("analysis.sequential.looks", x, 0, 1) for x in s.get("looks", []))
        if not looks or looks[-1] != 1.0 or list(looks) != sorted(set(looks)) or looks[0] <= 0:
            raise r.err("analysis.sequential.looks", "increasing information fractions ending at 1")
        fut = s.get("futility")
        seq = Sequential(
            looks,
            r.choice("analysis.sequential.spending", s.get("spending", SPENDING[0]), SPENDING),
            None if fut is None else r.num("analysis.sequential.futility", fut),
        )
    adaptive = _adaptive(r, al["adaptive"], endpoints) if "adaptive" in al else None
    pta = []
    for i, p in enumerate(raw.get("pta", [])):
        r.keys(f"pta[{i}]", p, {"name", "target"})
        pta.append(
            (str(p.get("name", f"pta{i}")), r.expr(f"pta[{i}].target", p.get("target"), ep_names))
        )
    esc = None
    if "escalation" in raw:
        e = r.keys(
            "escalation",
            raw["escalation"],
            {
                "design",
                "toxicity",
                "target",
                "cohort_size",
                "max_patients",
                "pool",
                "skeleton",
                "crm_estimate",
            },  # fmt: skip
        )
        skeleton = tuple(
            r.num(f"escalation.skeleton[{i}]", x, 0.001, 0.999)
            for i, x in enumerate(e.get("skeleton", []))
        )
        if skeleton and (len(skeleton) != len(arms) or list(skeleton) != sorted(set(skeleton))):
            raise r.err("escalation.skeleton", "one increasing prior DLT probability per arm")
        esc = Escalation(
            r.choice("escalation.design", e.get("design"), ESCALATION),
            r.expr("escalation.toxicity", e.get("toxicity"), ep_names),
            r.num("escalation.target", e.get("target", 0.3), 0.01, 0.99),
            r.int_("escalation.cohort_size", e.get("cohort_size", 3), 1),
            r.int_("escalation.max_patients", e.get("max_patients", 36), 1),
            r.int_("escalation.pool", e.get("pool", 200), 10),
            skeleton,
            r.choice(
                "escalation.crm_estimate",
                e.get("crm_estimate", "plugin"),
                ("plugin", "posterior_mean"),
            ),
        )
    return TrialSpec(
        path=path,
        digest=digest,
        name=str(t["name"]),
        description=str(t.get("description", "")),
        model=t["model"],
        method=method,
        n=r.int_("trial.n", t.get("n", 100), 2),
        replicates=r.int_("trial.replicates", t.get("replicates", 100), 1),
        seed=r.int_("trial.seed", t.get("seed", 0)),
        dtype=r.choice("trial.dtype", t.get("dtype", "float64"), ("float32", "float64")),
        grid_step=r.num("trial.grid_step", t.get("grid_step", 0.5), 1e-6),
        prior=str(prior),
        inclusion=tuple(
            r.expr(f"population.inclusion[{i}]", x, population)
            for i, x in enumerate(pop.get("inclusion", []))
        ),
        exclusion=tuple(
            r.expr(f"population.exclusion[{i}]", x, population)
            for i, x in enumerate(pop.get("exclusion", []))
        ),
        arms=arms,
        ratio=ratio,
        block_size=block,
        strata=strata,
        times=times,
        assays=assays,
        dropout_hazard=r.num("dropout.hazard", do.get("hazard", 0.0), 0),
        estimand=r.choice("dropout.estimand", do.get("estimand", ESTIMANDS[0]), ESTIMANDS),
        endpoints=endpoints,
        tests=tests,
        alpha=r.num("analysis.alpha", an.get("alpha", 0.05), 1e-6, 0.5),
        sided=int(r.choice("analysis.sided", an.get("sided", 2), (1, 2))),
        control=control,
        sequential=seq,
        power_target=r.num("analysis.power_target", an.get("power_target", 0.8), 0.01, 0.999),
        sample_sizes=tuple(
            r.int_("analysis.sample_sizes", x, 2) for x in an.get("sample_sizes", [])
        ),
        pta=tuple(pta),
        escalation=esc,
        raw=raw,
        adaptive=adaptive,
    )


def _compartment(r: _Reader, key: str, value: Any, model) -> None:
    """A regimen's ``cmt``: one of the model's dosable compartments, by name or NONMEM number
    (checked here, so the error names the spec and key, not a dosing file there is none of)."""
    targets = list(model.dose_targets)
    numbers = [model.state_names.index(t) + 1 for t in targets]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise r.err(key, f"give a compartment name or number, got {value!r}")
    if value in targets or value in numbers:
        return
    raise r.err(
        key, f"{value!r} cannot be dosed in {model.name}; use one of {targets} (or their "
        f"numbers {numbers})"
    )  # fmt: skip


def _arms(r: _Reader, arms: Any, model) -> tuple[Arm, ...]:
    if not isinstance(arms, list) or not arms:
        raise r.err("arms", "give at least one [[arms]] table")
    out = []
    for i, a in enumerate(arms):
        r.keys(f"arms[{i}]", a, {"name", "regimens", "dose", "control"})
        if not a.get("name"):
            raise r.err(f"arms[{i}].name", "missing")
        regs = []
        for j, g in enumerate(a.get("regimens", [])):
            key = f"arms[{i}].regimens[{j}]"
            r.keys(key, g, {"amt", "cmt", "time", "ii", "addl", "rate", "duration", "ss"})
            if "amt" not in g:
                raise r.err(f"{key}.amt", "missing")
            for k in ("amt", "time", "ii", "rate", "duration"):
                if k in g:
                    r.num(f"{key}.{k}", g[k], 0)
            if "addl" in g:
                r.int_(f"{key}.addl", g["addl"], 0)
                if g["addl"] > 0 and not float(g.get("ii", 0)) > 0:
                    raise r.err(
                        f"{key}.ii", f"addl = {g['addl']} repeats the dose every ii hours: give "
                        "ii > 0 (or leave addl out for one dose)"
                    )  # fmt: skip
            if "cmt" in g:
                _compartment(r, f"{key}.cmt", g["cmt"], model)
            regs.append(dict(g))
        # An arm's dose is the amount of one administration (what "200 mg q12h" names and
        # what a PTA dose sweep scales); it defaults to the regimens' amount when they share
        # one. (It was the total over all doses when left out, and per administration when
        # given, so a dose sweep scaled defaulted arms by the wrong reference.)
        amounts = sorted({float(g["amt"]) for g in regs})
        if "dose" not in a and len(amounts) > 1:
            raise r.err(
                f"arms[{i}].dose", f"missing: the regimens give several amounts "
                f"({', '.join(f'{x:g}' for x in amounts)}); say which is the arm's dose per "
                "administration (e.g. the maintenance dose) with dose = ..."
            )  # fmt: skip
        if "dose" not in a and not regs and not a.get("control"):
            # a treatment arm whose regimens were forgotten must not run as placebo
            raise r.err(
                f"arms[{i}]", "no regimens and no dose: add its regimens = [{ amt = ..., cmt = "
                "... }], or write dose = 0 for a placebo arm"
            )  # fmt: skip
        dose = r.num(f"arms[{i}].dose", a.get("dose", amounts[0] if amounts else 0.0), 0)
        if dose > 0 and not regs:
            # `dose` only labels the arm: without regimens its patients would get no drug
            raise r.err(
                f"arms[{i}]", f"dose = {dose:g} but no regimens: the arm would be simulated as "
                "placebo; add its regimens = [{ amt = ..., cmt = ... }] (or dose = 0 for placebo)"
            )  # fmt: skip
        if regs and dose not in amounts:
            # a PTA dose sweep scales the arm's amounts by d / dose: a label that is not one
            # of them would simulate other doses than the ones it reports
            raise r.err(
                f"arms[{i}].dose", f"{dose:g} is not an amount of the arm's regimens "
                f"({', '.join(f'{x:g}' for x in amounts)}): dose is the amount per "
                "administration; make it one of them (or leave it out when they share one)"
            )  # fmt: skip
        control = r.bool_(f"arms[{i}].control", a.get("control", False))
        out.append(Arm(str(a["name"]), tuple(regs), dose, control))
    if len({a.name for a in out}) != len(out):
        raise r.err("arms", "arm names must be distinct")
    if sum(a.control for a in out) > 1:
        names = [a.name for a in out if a.control]
        raise r.err("arms", f"{len(names)} arms have control = true ({names}): mark one")
    return tuple(out)


def _assay(r: _Reader, i: int, a: Any) -> Assay:
    r.keys(f"sampling.assay[{i}]", a, {"output", "proportional", "additive", "lloq"})
    if not a.get("output"):
        raise r.err(f"sampling.assay[{i}].output", "missing")
    return Assay(
        str(a["output"]),
        *(
            r.num(f"sampling.assay[{i}].{k}", a.get(k, 0.0), 0)
            for k in ("proportional", "additive", "lloq")
        ),
    )


_EP_KEYS = {f.name for f in dataclasses.fields(Endpoint)}
_EP_USES = {  # the keys each endpoint type reads (cohort/trial/endpoints.py)
    "auc": {"output", "start", "end", "observed"},
    "cmax": {"output", "start", "end", "observed"},
    "ctrough": {"output", "time", "observed"},
    "value": {"output", "time", "observed"},
    "change": {"output", "time", "baseline", "observed"},
    "responder": {"of", "above", "below"},
    "tte": {"output", "baseline_hazard", "coefficient"},
}


# per-patient variables a trial stores beside its endpoints
_TRIAL_COLUMNS = (
    "patient", "replicate", "enrol_index", "arm", "stratum", "dropout_time", "sim_row",
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _endpoints(r: _Reader, eps: Any, population=()) -> tuple[Endpoint, ...]:
    """The ``[[endpoints]]``; their names become per-patient variables of the trial store
    beside the trial's own columns and the prior's ``population`` names, so a name must be
    a plain identifier none of those take (an endpoint "WT" was replaced by body weight and
    tested as Cmax; "../x" failed after the whole simulation: a probe)."""
    if not isinstance(eps, list) or not eps:
        raise r.err("endpoints", "give at least one [[endpoints]] table")
    out: list[Endpoint] = []
    taken = {**{c: "a column every trial stores" for c in _TRIAL_COLUMNS},
             **{c: "a covariate or parameter of the prior" for c in population}}  # fmt: skip
    for i, e in enumerate(eps):
        key = f"endpoints[{i}]"
        r.keys(key, e, _EP_KEYS)
        if not e.get("name"):
            raise r.err(f"{key}.name", "missing")
        name = str(e["name"])
        if not _NAME.fullmatch(name):
            raise r.err(
                f"{key}.name", f"{name!r}: use letters, digits and _ (starting with a letter)"
            )
        made = [name, f"{name}_event"] if e.get("type") == "tte" else [name]
        clash = next((m for m in made if m in taken), None)
        if clash is not None:
            raise r.err(f"{key}.name", f"{clash!r} is {taken[clash]}; name the endpoint otherwise")
        taken.update({m: "another endpoint's variable" for m in made})
        kind = r.choice(f"{key}.type", e.get("type"), ENDPOINT_TYPES)
        unused = sorted(set(e) - {"name", "type"} - _EP_USES[kind])
        if unused:  # a cmax with `time = 12` was the whole window's maximum (a probe)
            raise r.err(
                f"{key}.{unused[0]}", f"not used by a {kind} endpoint (it takes "
                f"{', '.join(sorted(_EP_USES[kind]))}): drop {', '.join(unused)}"
                + (", or make a responder endpoint of it (type = \"responder\", of = ...)"
                   if {"above", "below"} & set(unused) else "")
            )  # fmt: skip
        vals = {k: v for k, v in e.items() if k not in ("name", "type", "output", "of", "observed")}
        for k, v in vals.items():
            r.num(f"{key}.{k}", v)
        if kind == "responder":
            if e.get("of") not in {x.name for x in out}:
                raise r.err(f"{key}.of", "must name an earlier endpoint")
            if ("above" in e) == ("below" in e):
                raise r.err(key, "a responder endpoint needs exactly one of 'above' or 'below'")
        elif not e.get("output"):
            raise r.err(f"{key}.output", "missing (a model output, e.g. 'conc')")
        if kind in ("ctrough", "value", "change") and "time" not in e:
            raise r.err(f"{key}.time", f"a {kind} endpoint needs the observation time")
        if kind == "tte" and not e.get("baseline_hazard", 0) > 0:
            raise r.err(f"{key}.baseline_hazard", "a tte endpoint needs a baseline hazard > 0")
        out.append(
            Endpoint(
                name=str(e["name"]),
                type=kind,
                **{k: float(v) for k, v in vals.items()},
                **{k: str(e[k]) for k in ("output", "of") if k in e},
                observed=r.bool_(f"{key}.observed", e.get("observed", True)),
            )
        )
    if len({e.name for e in out}) != len(out):
        raise r.err("endpoints", "endpoint names must be distinct")
    return tuple(out)


def _test(
    r: _Reader,
    i: int,
    x: Any,
    endpoints: tuple[Endpoint, ...],
    population: set[str],
    default_primary: bool = False,
) -> Test:
    key = f"analysis.tests[{i}]"
    r.keys(key, x, {"endpoint", "test", "covariate", "log", "primary", "direction"})
    kinds = {e.name: e.type for e in endpoints}
    if x.get("endpoint") not in kinds:
        raise r.err(f"{key}.endpoint", f"unknown endpoint {x.get('endpoint')!r}; {sorted(kinds)}")
    test = r.choice(f"{key}.test", x.get("test", "ttest"), TESTS)
    kind = kinds[x["endpoint"]]
    if test == "responder" and kind != "responder":
        raise r.err(
            f"{key}.test", f"a responder test needs a responder (0/1) endpoint; "
            f"{x['endpoint']!r} is {kind}: use ttest or ancova, or test a responder endpoint"
        )  # fmt: skip
    if test == "logrank" and kind != "tte":
        raise r.err(
            f"{key}.test", f"logrank compares times to event; {x['endpoint']!r} is {kind}: "
            "use ttest or ancova, or test a tte endpoint"
        )  # fmt: skip
    if x.get("covariate") and test != "ancova":  # it was ignored without a word
        raise r.err(
            f"{key}.covariate", f"a covariate adjusts an ANCOVA; a {test} test takes none: use "
            "test = \"ancova\", or drop the covariate"
        )  # fmt: skip
    if x.get("log") is True and test in ("responder", "logrank"):  # non-responders became NaN
        raise r.err(
            f"{key}.log", f"log = true takes logs of a continuous endpoint; a {test} test "
            "compares 0/1 outcomes or event times: drop it"
        )  # fmt: skip
    if test == "ancova":
        covariate = x.get("covariate")
        if not covariate:
            raise r.err(f"{key}.covariate", "ANCOVA needs a covariate (a covariate or endpoint)")
        known = set(kinds) | population
        if covariate not in known:
            raise r.err(f"{key}.covariate", f"unknown name {covariate!r}; known: {sorted(known)}")
    return Test(
        x["endpoint"],
        test,
        str(x.get("covariate", "")),
        r.bool_(f"{key}.log", x.get("log", False)),
        r.bool_(f"{key}.primary", x.get("primary", default_primary)),
        r.choice(f"{key}.direction", x.get("direction", "higher"), ("higher", "lower")),
    )


def _prior_names(r: _Reader, prior: Path, model, model_name: str) -> set[str]:
    """The covariate and parameter names the prior gives each patient, checked against the
    trial's model: a parameter the model lacks would be dropped without a word (a pk1_oral
    prior's ``V`` in a pk2_oral trial, whose volume is ``V1``)."""
    from cohort.population.spec import SpecError, load_spec

    try:
        spec = load_spec(prior)
    except SpecError as exc:
        raise r.err("population.prior", str(exc)) from None
    from cohort.engine.inputs import same_model

    if spec.model and not same_model(str(spec.model), model):
        # its parameters may all exist in the trial's model (a pk1_iv prior's CL and V in a
        # pk1_oral trial): accepted, neonates got adult doses and KA its default (a probe)
        raise r.err(
            "population.prior",
            f"{prior.name} is a prior for {spec.model} (its model key), not for the trial's "
            f"model {model_name}; use a prior written for {model_name}",
        )
    extra = [q for q in spec.parameter_names if q not in model.parameter_names]
    if extra:
        made_for = f"a prior for {spec.model}" if spec.model else "a prior"
        raise r.err(
            "population.prior", f"{prior.name} is {made_for}: its parameter(s) "
            f"{', '.join(extra)} are not parameters of {model_name} "
            f"({', '.join(model.parameter_names)}); use a prior written for {model_name}"
        )  # fmt: skip
    return set(spec.covariate_names) | set(spec.parameter_names)


def _check_outputs(r: _Reader, model, model_name: str, endpoints, assays) -> None:
    """Every endpoint and assay names an output (or state) of the model."""
    known = tuple(model.output_names) + tuple(model.state_names)
    named = [(f"endpoints[{i}].output", e.output) for i, e in enumerate(endpoints) if e.output]
    named += [(f"sampling.assay[{i}].output", a.output) for i, a in enumerate(assays)]
    for key, name in named:
        if name not in known:
            raise r.err(key, f"{name!r} is not an output or state of {model_name}: {list(known)}")


def _check_grid_times(r: _Reader, endpoints, times: tuple[float, ...], step: float) -> None:
    """Unobserved endpoints read the simulation grid (multiples of ``grid_step`` up to the
    last sampling time, and the sampling times): their times must be on it (an endpoint at
    2.5 h on a 1-h grid failed after the whole simulation)."""
    last = times[-1]
    for i, e in enumerate(endpoints):
        if e.observed or e.type in ("responder", "tte"):
            continue
        names = ("time", "baseline") if e.type in ("ctrough", "value", "change") else ("end",)
        for name in names:
            t = getattr(e, name, None)
            if t is None:
                continue
            on_grid = abs(t / step - round(t / step)) < 1e-9 * max(1.0, t / step)
            if not (0 <= t <= last + 1e-9) or not (on_grid or np.isclose(times, t).any()):
                raise r.err(
                    f"endpoints[{i}].{name}", f"{t:g} is not on the simulation grid (multiples "
                    f"of trial.grid_step = {step:g} from 0 to the last sampling time {last:g}, "
                    "and the sampling times): choose such a time, or add it to sampling.times"
                )  # fmt: skip


def _check_windows(r: _Reader, endpoints: tuple[Endpoint, ...], times: tuple[float, ...]):
    """Observed endpoints read the samples: their times must be sampling times, an AUC's
    window must lie within the sampling (an AUC to 48 h from samples to 24 h was AUC 0-24)
    and a maximum's hold a sample."""
    first, last = times[0], times[-1]
    for i, e in enumerate(endpoints):
        key = f"endpoints[{i}]"
        if not e.observed or e.type in ("responder", "tte"):
            continue
        if e.type in ("ctrough", "value", "change"):
            points = [("time", e.time)] + ([("baseline", e.baseline)] if e.type == "change" else [])
            for name, t in points:
                if not np.isclose(times, t).any():  # the rule endpoints.compute reads by
                    raise r.err(
                        f"{key}.{name}", f"{t:g} is not a sampling time {list(times)}: add it "
                        "to sampling.times or choose one of them"
                    )  # fmt: skip
            continue
        if e.start >= e.end:
            raise r.err(key, f"start ({e.start:g}) must be before end ({e.end:g})")
        inside = sum(e.start - 1e-9 <= x <= e.end + 1e-9 for x in times)
        if e.type != "auc":  # a maximum over the samples in the window needs one of them
            if not inside:
                raise r.err(key, f"no sampling time in [{e.start:g}, {e.end:g}]: {list(times)}")
            continue
        if e.start < first - 1e-9:
            raise r.err(
                f"{key}.start", f"{e.start:g} is before the first sampling time {first:g}: the "
                f"{e.type} would start at {first:g}; add {e.start:g} to sampling.times "
                f"(e.g. a pre-dose sample) or set start = {first:g}"
            )  # fmt: skip
        if np.isfinite(e.end) and e.end > last + 1e-9:
            raise r.err(
                f"{key}.end", f"{e.end:g} is after the last sampling time {last:g}: the "
                f"{e.type} would end at {last:g}; add {e.end:g} to sampling.times or set "
                f"end = {last:g}"
            )  # fmt: skip
        if inside < 2:
            raise r.err(key, "an AUC needs at least two sampling times in its window")


def _adaptive(r: _Reader, a: Any, endpoints: tuple[Endpoint, ...]) -> Adaptive:
    key = "allocation.adaptive"
    r.keys(key, a, {"endpoint", "burn_in", "batch", "power", "direction", "draws"})
    binary = [e.name for e in endpoints if e.type == "responder"]
    if a.get("endpoint") not in binary:
        raise r.err(f"{key}.endpoint", f"must name a responder (binary) endpoint: {binary}")
    power = a.get("power")
    return Adaptive(
        a["endpoint"],
        r.int_(f"{key}.burn_in", a.get("burn_in", 20), 1),
        r.int_(f"{key}.batch", a.get("batch", 10), 1),
        None if power is None else r.num(f"{key}.power", power, 0, 10),
        r.choice(f"{key}.direction", a.get("direction", "higher"), ("higher", "lower")),
        r.int_(f"{key}.draws", a.get("draws", 1000), 10),
    )
