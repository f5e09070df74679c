"""Draw virtual patients from a :class:`PopulationSpec`, chunk by chunk, reproducibly.

Candidate ``j`` draws its uniforms from ``fold_in(PRNGKey(seed), j)`` (integer bits from
``jax.random``, turned into normals by elementwise scipy functions, with correlations applied by
an explicit fixed-order sum), so a patient depends only on the seed and its candidate index:
the cohort is bit-identical whatever the chunk size. Candidates failing a bound or plausibility
filter are skipped; the first ``n`` accepted candidates form the population.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import cohort._prng as _prng
from cohort._seed import check_seed
from cohort._version import __version__
from cohort.errors import CohortError, CohortWarning, OutputError
from cohort.population import marginals
from cohort.population.expr import evaluate
from cohort.population.marginals import category_values
from cohort.population.spec import PopulationSpec, load_spec
from cohort.store.lock import locks_output
from cohort.store.safety import (
    NODES,
    check_store_name,
    is_empty_directory,
    prepare_output,
    remove_own,
)


class PopulationError(CohortError, RuntimeError):
    """Generation could not produce the requested population (e.g. filters reject too much)."""


def _uniforms(seed: int, start: int, count: int, k: int) -> np.ndarray:
    """Uniforms in (0, 1), shape [count, k], for candidates start..start+count-1."""
    if k == 0:
        return np.zeros((count, 0))
    # jax.random.bits(fold_in(PRNGKey(seed), i), (k,), uint64), hashed in numpy: no XLA
    # compile, and 64-bit whatever the caller did to JAX's x64 switch (under jax.random with
    # x64 off, the bits came back as uint32 and every uniform was ~1e-10: a probe)
    keys = _prng.fold_in(_prng.key(seed), np.arange(start, start + count).astype(np.uint32))
    bits = _prng.bits64(keys, (k,))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _correlate(z: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """``z @ chol.T`` with a fixed summation order (a BLAS matmul could round differently
    for different batch sizes, which would break bit-identical chunking)."""
    out = np.zeros_like(z)
    for j in range(chol.shape[0]):
        acc = np.zeros(z.shape[0])
        for i in range(j + 1):
            acc = acc + chol[j, i] * z[:, i]
        out[:, j] = acc
    return out


def _covariates(spec: PopulationSpec, u: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import special  # here: `cohort simulate` never needs scipy

    names = spec.covariate_names
    cvars = spec.correlation_vars
    u = u.copy()
    if cvars:
        idx = [names.index(v) for v in cvars]
        z = special.ndtri(u[:, idx])
        u[:, idx] = special.ndtr(_correlate(z, np.linalg.cholesky(spec.correlation)))
    return {c.name: marginals.draw(c, u[:, i]) for i, c in enumerate(spec.covariates)}


def _parameters(spec: PopulationSpec, cov: dict[str, np.ndarray], u_eta: np.ndarray):
    from scipy import special  # here: `cohort simulate` never needs scipy

    n = u_eta.shape[0]
    eta = (
        _correlate(special.ndtri(u_eta), np.linalg.cholesky(spec.omega))
        if spec.eta_names
        else np.zeros((n, 0))
    )
    out = typical_values(spec, cov, n)
    with np.errstate(over="ignore"):  # an overflowing draw is inf, rejected as not finite
        for p in spec.parameters:
            if p.name in spec.eta_names:
                out[p.name] = out[p.name] * np.exp(eta[:, spec.eta_names.index(p.name)])
    return out, eta


def typical_values(spec: PopulationSpec, cov: dict[str, np.ndarray], n: int) -> dict:
    """Each parameter's typical value × covariate effects for covariates ``cov`` (``[n]``
    arrays): the individual values at η = 0 (digital twins' prior medians)."""
    by_name = {c.name: c for c in spec.covariates}
    out = {}
    for p in spec.parameters:
        v = np.full(n, p.typical)
        for e in p.effects:
            a = e.args
            x = cov.get(a.get("covariate"))
            if e.type == "power":
                v = v * (x / a["reference"]) ** a["coefficient"]
            elif e.type == "linear":
                v = v * (1.0 + a["coefficient"] * (x - a["reference"]))
            elif e.type == "exponential":
                v = v * np.exp(a["coefficient"] * (x - a["reference"]))
            elif e.type == "categorical":
                cov_spec = by_name[a["covariate"]]
                factor = np.ones(n)
                for label, value in zip(cov_spec.args["categories"], category_values(cov_spec)):
                    factor = np.where(x == value, a["factors"].get(str(label), 1.0), factor)
                v = v * factor
            else:
                v = v * evaluate(a["expression"], cov)
        out[p.name] = v
    return out


def _accept(spec: PopulationSpec, values: dict[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(values.values())))
    ok = np.ones(n, bool)
    for v in values.values():
        ok &= np.isfinite(v)
    for p in spec.parameters:
        ok &= (values[p.name] >= p.lower) & (values[p.name] <= p.upper)
    for f in spec.filters:
        x = evaluate(f.expression, values)
        ok &= np.isfinite(x) & (x >= f.lower) & (x <= f.upper)
    return ok


def _first_draws(spec: PopulationSpec, seed: int, tried: int) -> dict[str, np.ndarray]:
    """Covariates and parameters of the first candidates again (at most 10,000 of the
    ``tried``): what the diagnostics below look at."""
    values, _ = draw_candidates(spec, seed, 0, min(tried, 10_000))
    return values


def _rejections(spec: PopulationSpec, values: dict[str, np.ndarray]) -> str:
    """What rejects the candidates ``values`` (:func:`_first_draws`), the commonest reasons
    first: "relax [[filters]]" was all a user was told when a covariate effect's expression
    gave inf or NaN for every patient (a probe)."""
    n = len(next(iter(values.values())))
    reasons: dict[str, int] = {}
    for k, v in values.items():
        bad = int(np.sum(~np.isfinite(v)))
        if bad:
            what = "its expression or effects" if k in spec.parameter_names else "its draws"
            reasons[f"{k} not finite (inf/NaN from {what})"] = bad
    for p in spec.parameters:
        v = np.where(np.isfinite(values[p.name]), values[p.name], np.nan)  # counted above
        for bad, side in ((v < p.lower, f"below its lower bound {p.lower:g}"),
                          (v > p.upper, f"above its upper bound {p.upper:g}")):  # fmt: skip
            if bad.any():
                reasons[f"{p.name} {side}"] = int(bad.sum())
    for f in spec.filters:
        with np.errstate(all="ignore"):
            x = evaluate(f.expression, values)
            bad = ~(np.isfinite(x) & (x >= f.lower) & (x <= f.upper))
        if bad.any():
            named = f"{f.name!r} ({f.expression})" if f.name != f.expression else repr(f.name)
            reasons[f"filter {named}"] = int(bad.sum())
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    if not top:
        return ""
    # the shares are of the candidates looked at (the first 10,000), not of all draws
    of = "of draws" if n < 10_000 else f"of the first {n:,} draws"
    return "rejected by " + ", ".join(f"{k}: {100 * v / n:.3g}% {of}" for k, v in top)


def _warn_nonpositive_effects(spec: PopulationSpec, values: dict[str, np.ndarray]) -> None:
    """Warn where a parameter's typical value × covariate effects is <= 0 for some draws: an
    effect (e.g. ``1 - 0.05 * (AGE - 40)``) then rejects the candidates of some covariate
    values, which reshapes the covariates' declared distribution without a word (AGE
    uniform 20-80 came out with median 39.8; a probe), or, unbounded, gives patients a
    negative clearance. A spec mistake, not a filter (``values``: :func:`_first_draws`)."""
    cov = {c: values[c] for c in spec.covariate_names}
    typical = typical_values(spec, cov, len(next(iter(values.values()))))
    for p in spec.parameters:
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(typical[p.name]) & (typical[p.name] <= 0)
        if p.effects and bad.any():
            i = int(np.flatnonzero(bad)[0])
            shown = ", ".join(
                f"{c} = {cov[c][i]:.4g}" for c in spec.covariate_names if np.ndim(cov[c][i]) == 0
            )
            warnings.warn(
                f"{spec.path}: [parameters.{p.name}]: its typical value x covariate effects is "
                f"<= 0 for {bad.mean():.1%} of the candidates (e.g. {typical[p.name][i]:.4g} at "
                f"{shown}): rejected by the parameter's bounds they change the covariates' "
                "distribution from the one declared, kept they are not valid patients: keep "
                "each effect > 0 over the covariates' range (e.g. an exponential effect), or "
                "bound the covariate",
                CohortWarning,
                stacklevel=4,
            )


def draw_candidates(spec: PopulationSpec, seed: int, start: int, count: int):
    """Covariates, parameters and acceptance of candidates ``start .. start+count-1``."""
    k_cov, k_eta = len(spec.covariates), len(spec.eta_names)
    u = _uniforms(seed, start, count, k_cov + k_eta)
    cov = _covariates(spec, u[:, :k_cov])
    params, _ = _parameters(spec, cov, u[:, k_cov:])
    values = {**cov, **params}
    return values, _accept(spec, values)


def _var_attrs(spec: PopulationSpec) -> dict[str, dict[str, Any]]:
    attrs = {}
    for c in spec.covariates:
        a = {
            "units": c.units,
            "long_name": f"covariate {c.name}",
            "citation": c.citation,
            "distribution": c.distribution,
        }
        if c.distribution == "categorical":
            a["categories"] = [str(x) for x in c.args["categories"]]
            if np.array_equal(category_values(c), np.arange(len(c.args["categories"]))):
                a["comment"] = "integer codes index 'categories'"
        attrs[c.name] = a
    for p in spec.parameters:
        attrs[p.name] = {
            "units": p.units,
            "long_name": f"parameter {p.name}",
            "citation": p.citation,
        }
    return attrs


@locks_output("out")
def generate(
    spec: PopulationSpec | str | Path,
    n: int,
    seed: int = 0,
    *,
    chunk_size: int = 200_000,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    max_candidates: int | None = None,
    progress=None,
) -> xr.Dataset:
    """``n`` virtual patients (dim ``patient``): covariates and parameters with units.

    With ``out`` the population streams into a zarr store chunk by chunk (memory stays flat up
    to 10^7 patients) and is returned lazily; each chunk is flagged in ``chunk_done`` once
    written, and ``resume=True`` completes an interrupted store (identical to a clean run:
    the candidates are drawn again, only the missing chunks are written). ``attrs`` report
    the acceptance rate.
    """
    if not isinstance(spec, PopulationSpec):
        spec = load_spec(spec)
    marginals.check(spec)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise PopulationError(f"n: must be a positive integer, got {n!r}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise PopulationError(f"chunk_size: must be a positive integer, got {chunk_size!r}")
    check_seed(seed, PopulationError)
    if spec.iov is not None:
        warnings.warn(
            f"{spec.path}: [iov] ({', '.join(spec.iov.parameters)}) is not drawn here: each "
            "virtual patient gets one set of parameters (CGM twins read [iov])",
            CohortWarning,
            stacklevel=2,
        )
    names = spec.covariate_names + spec.parameter_names
    max_candidates = max_candidates or max(100 * n, 10_000)
    var_attrs = _var_attrs(spec)
    n_chunks = math.ceil(n / chunk_size)
    group = None
    done = np.zeros(n_chunks, bool)
    # A spec that cannot give n patients fails here, before the output path is touched (an
    # --overwrite of a good store, or the user's empty folder, was removed for a run that then
    # gave nothing: a probe).
    first = _feasible(spec, n, seed, max_candidates, chunk_size)
    if out is not None:
        fresh = not (resume and Path(out).exists())
        was_empty_folder = is_empty_directory(Path(out))
        group, done = _open_store(
            Path(out), spec, n, seed, chunk_size, names, var_attrs, resume, overwrite
        )
    try:
        return _fill(spec, n, seed, chunk_size, names, var_attrs, max_candidates, group, done,
                     out, progress, first)  # fmt: skip
    except PopulationError:
        # A population the spec cannot give: the store this run created would only say
        # "incomplete, rerun with --resume", which fails the same way, and block a rerun
        # with a corrected spec (a probe). It is this run's own: removed.
        if out is not None and fresh:
            with contextlib.suppress(OutputError):  # a file a user put there meanwhile: kept
                remove_own(Path(out), "population store")
                if was_empty_folder:  # the user's folder, written into: left as it was
                    Path(out).mkdir()
        raise


def _feasible(spec: PopulationSpec, n: int, seed: int, max_candidates: int, chunk_size: int):
    """The first batch of candidates :func:`_fill` draws (``(values, ok)``, handed to it: drawn
    once, in the one shape its compiled draw program has), refusing first a spec whose
    acceptance there cannot give ``n`` patients within ``max_candidates`` draws: even at a
    generous upper bound on the acceptance rate ((accepted + 3) / draws: the "rule of three"
    when none passed), fewer than half of ``n`` would pass. A rare acceptance with many
    candidates allowed (1e-4 with 10^7) goes on."""
    count = min(chunk_size, max_candidates)
    values, ok = draw_candidates(spec, seed, 0, count)
    accepted = int(ok.sum())
    if accepted >= n or (accepted + 3) / count * max_candidates >= n / 2:
        return values, ok
    looked_at = {k: v[:10_000] for k, v in values.items()}  # as _first_draws
    raise PopulationError(
        f"{spec.path}: {accepted} of the first {count:,} candidate draws passed the bounds "
        f"and filters (acceptance {accepted / count:.2%}; {_rejections(spec, looked_at)}): "
        f"{n} patients need about {n * count / max(accepted, 1):,.0f} draws, more than the "
        f"{max_candidates:,} allowed; relax [[filters]] or parameter bounds, or allow more "
        "draws (--max-candidates; Python: max_candidates=...)"
    )


def _fill(spec, n, seed, chunk_size, names, var_attrs, max_candidates, group, done, out,
          progress, first=None) -> xr.Dataset:  # fmt: skip
    """Draw candidates until ``n`` pass, writing each full chunk (see :func:`generate`);
    ``first``: the first batch's draws when :func:`_feasible` made them."""
    arrays = {name: group[name] for name in names} if group is not None else {}
    buffers: dict[str, list[np.ndarray]] = {k: [] for k in names}
    buffered = written = tried = used = 0
    kept: dict[str, list[np.ndarray]] = {k: [] for k in names}
    while written + buffered < n:
        if tried >= max_candidates:
            why = _rejections(spec, _first_draws(spec, seed, tried))
            raise PopulationError(
                f"{spec.path}: only {written + buffered} of the {n} patients asked for passed "
                f"the bounds and filters in {tried:,} candidate draws (acceptance "
                f"{(written + buffered) / tried:.2%}; {why}); "
                "relax [[filters]] or parameter bounds, or allow more draws "
                "(--max-candidates; Python: max_candidates=...)"
            )
        count = min(chunk_size, max_candidates - tried)
        if tried == 0 and first is not None:
            values, ok = first
        else:
            values, ok = draw_candidates(spec, seed, tried, count)
        take = np.flatnonzero(ok)[: n - written - buffered]
        if take.size and written + buffered + take.size == n:
            # candidates up to the n-th accepted one: the same whatever the chunk size
            # (the draws of the last chunk after it do not count)
            used = tried + int(take[-1]) + 1
        tried += count
        for k in names:
            buffers[k].append(values[k][take])
        buffered += len(take)
        while buffered >= chunk_size or (written + buffered == n and buffered):
            m = min(chunk_size, buffered)
            chunk = written // chunk_size
            for k in names:
                cat = np.concatenate(buffers[k])
                block, buffers[k] = cat[:m], [cat[m:]]
                if group is None:
                    kept[k].append(block)
                elif not done[chunk]:
                    arrays[k][written : written + m] = block
            if group is not None and not done[chunk]:
                group["chunk_done"][chunk] = True  # only after every variable is written
            written += m
            buffered -= m
            if progress:
                progress(written, n)
    attrs = {
        "population": spec.name,
        "spec_path": spec.path,
        "spec_hash": spec.digest,
        "seed": int(seed),
        "n_candidates": int(used),
        "acceptance_rate": n / used,
        "model": spec.model or "",
    }
    # effects that can reach 0 or below are checked on the same first draws
    can_vanish = any(e.type in ("linear", "expression") for p in spec.parameters for e in p.effects)
    if used > n or can_vanish:
        first = _first_draws(spec, seed, used)
        if used > n:  # what the rejected candidates fell to, for the user to see
            attrs["rejected_by"] = _rejections(spec, first)
        if can_vanish:
            _warn_nonpositive_effects(spec, first)
    if group is not None:
        group.attrs.update(attrs)
        return open_population(out)
    data = {k: (("patient",), np.concatenate(kept[k]), var_attrs[k]) for k in names}
    return xr.Dataset(data, coords={"patient": np.arange(n)}, attrs=attrs)


def _open_store(out, spec, n, seed, chunk_size, names, var_attrs, resume, overwrite):
    """The population store's group and its done flags: a new layout, or the one of an
    interrupted run of the same spec, n, seed and chunk size when ``resume``."""
    from cohort.store.zarr_store import (
        add_done_flags,
        add_patient_axis,
        new_layout,
        resumable_layout,
    )

    key = {"spec_hash": spec.digest, "n": int(n), "seed": int(seed), "chunk_size": chunk_size}
    check_store_name(out)
    out = prepare_output(out, overwrite=overwrite, resume=resume, resumable=True)
    group = resumable_layout(out, "population store") if resume and out.exists() else None
    if group is not None:
        old = {k: group.attrs.get(k) for k in key}
        if old != key:
            raise PopulationError(
                f"--resume: {str(out)!r} was not written by this generate run (it holds "
                f"{old}, this run {key}); use the same spec, --n, --seed and --chunk-size, or "
                "--overwrite"
            )
        return group, np.asarray(group["chunk_done"][:], bool)
    n_chunks = math.ceil(n / chunk_size)
    group = new_layout(out)
    for name in names:
        a = group.create_array(
            name,
            shape=(n,),
            dtype="float64",
            chunks=(chunk_size,),
            dimension_names=["patient"],
            fill_value=np.nan,
        )
        a.attrs.update(var_attrs[name])
    add_patient_axis(group, n, chunk_size)
    add_done_flags(group, n_chunks, "chunk of patients fully written")
    group.attrs.update(
        {**key, "population": spec.name, "cohort_version": __version__,
         NODES: sorted(group.keys()), "layout_complete": True}
    )  # fmt: skip
    return group, np.zeros(n_chunks, bool)


def open_population(path: str | Path) -> xr.Dataset:
    """A population store written by :func:`generate`, refusing one that is incomplete."""
    from cohort.store.zarr_store import open_result

    ds = open_result(path)
    if "patient" not in ds.dims or not any(v.dims == ("patient",) for v in ds.data_vars.values()):
        what = ds.attrs.get("kind")
        raise PopulationError(
            f"{str(path)!r} holds no per-patient parameters"
            + (f" (it is a {what} store)" if what else "")
            + ": give a population store from `cohort generate`, a result store of `cohort "
            "simulate`, or a CSV with one row per patient"
        )
    if "incomplete" in ds.attrs:
        missing = (
            f"{int((~ds['chunk_done'].values).sum())} of {ds.sizes['chunk']} chunks missing"
            if "chunk_done" in ds
            else "its layout was never finished"
        )
        raise PopulationError(
            f"{str(path)!r} is incomplete ({missing}: the generate run was interrupted); "
            "finish it with `cohort generate ... --resume`"
        )
    return ds.drop_vars("chunk_done", errors="ignore")
