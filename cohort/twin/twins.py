"""Digital twins: a population prior, each patient's records, and the current individual
posterior, identified and updated for every patient in one vectorised computation."""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.data import Dataset
from cohort.errors import CohortWarning
from cohort.inference.problem import check_measured_zeros
from cohort.twin import posterior
from cohort.twin.blocks import blocks, solve_blocks, take_rows
from cohort.twin.prior import TwinError, TwinPrior
from cohort.twin.problem import (
    TwinBound,
    bind_twins,
    far_from_prior,
    implausible_parameters,
    prior_pop,
    read_records,
    uninformed,
)

METHODS = ("laplace", "nuts")


@dataclasses.dataclass(frozen=True, eq=False)
class Twins:
    """A set of digital twins (build with :meth:`identify`; reopen with :func:`open_twins`).

    ``laplace`` always holds the MAP and Laplace covariance; ``samples`` the NUTS draws when
    ``method == "nuts"``. ``history``: one row per identification/update (time, observations
    seen, posterior SDs), so shrinkage across updates can be shown. Instances are immutable:
    :meth:`update` returns new twins and leaves these untouched.
    """

    prior: TwinPrior
    data: Dataset
    bound: TwinBound
    laplace: posterior.Laplace
    method: str = "laplace"
    samples: posterior.Samples | None = None
    history: tuple[dict, ...] = ()
    options: dict = dataclasses.field(default_factory=dict)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def identify(
        cls,
        prior: TwinPrior | str | Path,
        records: pd.DataFrame | str | Path,
        *,
        method: str = "laplace",
        chains: int = 4,
        warmup: int = 250,
        draws: int = 500,
        seed: int = 0,
        cluster=None,
        checkpoint: str | Path | None = None,
    ) -> Twins:
        """Personalise a twin per patient of ``records`` (NONMEM-style: ID, TIME, DV, AMT,
        EVID, ..., plus the covariates the prior needs). ``method``: ``laplace`` (MAP +
        Laplace) or ``nuts`` (per-patient NUTS started from the Laplace approximation, whose
        covariance is the mass matrix: ``warmup`` adapts the step size only; patients not
        converged are rerun with an adapted mass matrix, see :func:`posterior.nuts`).
        ``cluster``: a Dask Client, Cluster or scheduler address: groups of patients are
        identified as tasks on its workers (each patient's starts and chains are seeded by
        its position, so the twins are those of a local run). ``checkpoint``: a store path
        where finished blocks of patients are kept until the twins are returned (or a
        ``KeptCheckpoint``, kept until you have saved them and call its ``remove``), so that
        the same call after a crash computes only the rest (:mod:`cohort.twin.checkpoint`)."""
        if not isinstance(prior, TwinPrior):
            prior = TwinPrior.from_file(prior)  # a priors spec or a saved `cohort fit` result
        if method not in METHODS:
            raise TwinError(f"method: {method!r} is not one of {METHODS}")
        data = read_records(records, prior)
        bm = bind_twins(prior, data)
        check_measured_zeros(bm)  # where records are accepted (not when a store is reopened)
        eta0 = posterior.starts(prior.omega, data.n_subjects)
        opts = {"chains": chains, "warmup": warmup, "draws": draws, "seed": seed}
        return cls._posterior(
            prior, data, bm, eta0, method, opts, (), "identify", cluster=cluster,
            checkpoint=checkpoint,
        )  # fmt: skip

    @classmethod
    def _posterior(
        cls, prior, data, bm, eta0, method, opts, history, what, previous=None, cluster=None,
        checkpoint=None,
    ) -> Twins:  # fmt: skip
        t0 = time.perf_counter()
        parts = [_block_inputs(bm, eta0, previous, rows) for rows in blocks(data.n_subjects)]
        compute = functools.partial(_compute_blocks, prior, method, opts)
        key = (
            "twins", prior.to_json(), method, opts,
            [(p["bound"].arrays, p["bound"].features, p["eta0"], p["previous"], p["rows"])
             for p in parts],
        )  # fmt: skip
        lap, samples = solve_blocks(
            compute, parts, data.n_subjects, cluster=cluster, checkpoint=checkpoint, key=key
        )
        sd = _posterior_sd(lap, samples)
        entry = {
            "step": what,
            "seconds": time.perf_counter() - t0,
            "n_observations": data.observations.count.astype(int).tolist(),
            "last_time": data.records.groupby("ID", sort=False)["TIME"].max().tolist(),
            "posterior_sd": sd.tolist(),
        }
        twins = cls(prior, data, bm, lap, method, samples, (*history, entry), opts)
        ind = twins.individual()
        texts = implausible_parameters(prior, twins.ids, {n: ind[n] for n in prior.names})
        texts += uninformed(prior, twins.ids, sd, data.observations.count)
        texts += far_from_prior(prior, twins.ids, lap.eta)
        for text in texts:
            warnings.warn(text, CohortWarning, stacklevel=3)
        return twins

    # -- basic views ---------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self.data.ids

    @property
    def n(self) -> int:
        return self.data.n_subjects

    def __repr__(self) -> str:
        return (
            f"Twins({self.n} patients, model={self.prior.model.name!r}, prior="
            f"{self.prior.name!r}, method={self.method!r}, updates={len(self.history) - 1})"
        )

    def select(self, ids) -> Twins:
        """These twins of the patients ``ids`` only (in the records' order), e.g. to forecast
        or dose one patient of a ward's store."""
        ids = list(np.atleast_1d(ids))
        index = {pid: k for k, pid in enumerate(self.ids.tolist())}
        missing = [i for i in ids if i not in index]
        if missing:
            raise TwinError(f"select: no twin of patient {missing[0]!r}")
        data = self.data.subset(ids)
        rows = np.array([index[i] for i in data.ids.tolist()])

        def take(result):
            fields = {k: v[rows] for k, v in posterior.per_patient(result).items()}
            return dataclasses.replace(result, **fields)

        history = tuple(
            {k: ([v[r] for r in rows] if isinstance(v, list) and len(v) == self.n else v)
             for k, v in entry.items()}
            for entry in self.history
        )  # fmt: skip
        samples = None if self.samples is None else take(self.samples)
        return Twins(
            self.prior, data, bind_twins(self.prior, data), take(self.laplace), self.method,
            samples, history, self.options,
        )  # fmt: skip

    @property
    def ok(self) -> np.ndarray:
        """Per patient: the posterior was found (and, for NUTS, converged)."""
        ok = self.laplace.ok
        if self.samples is not None:
            ok = ok & self.samples.converged
        return ok

    def eta_draws(self, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
        """``[N, S, q]`` posterior draws of the random effects (NUTS draws pooled over chains,
        thinned or recycled to ``n_draws``; else draws from the Laplace approximation)."""
        if self.samples is not None:
            z = self.samples.eta.reshape(self.n, -1, self.samples.eta.shape[-1])
            idx = np.random.default_rng(seed).choice(z.shape[1], n_draws, z.shape[1] < n_draws)
            return z[:, np.sort(idx)]
        return posterior.laplace_draws(self.laplace, n_draws, seed, self.ids)

    def log_params(self, eta: np.ndarray) -> np.ndarray:
        """``[N, ..., K]`` log individual parameters for ``eta [N, ..., q]``."""
        mu = np.asarray(self.bound.features, float)
        mu = mu.reshape(mu.shape[:1] + (1,) * (eta.ndim - 2) + mu.shape[1:])
        return self.bound.log_params(None, np.asarray(eta, float), mu)  # μ + η (TwinBound)

    def individual(self) -> pd.DataFrame:
        """Per patient: MAP individual parameters, posterior SD of each log parameter (≈ CV),
        and the status."""
        lp = self.log_params(self.laplace.eta)
        table = pd.DataFrame(
            {n: np.exp(lp[:, k]) for k, n in enumerate(self.prior.names)},
            index=pd.Index(self.ids, name="ID"),
        )
        sd = _posterior_sd(self.laplace, self.samples)
        for j, n in enumerate(self.prior.eta_names):
            table[f"sd_log_{n}"] = sd[:, j]
        table["ok"] = self.ok
        return table

    # -- updating ------------------------------------------------------------------------------
    def update(
        self,
        new_records: pd.DataFrame | str | Path,
        *,
        method: str | None = None,
        cluster=None,
        checkpoint: str | Path | None = None,
    ) -> Twins:
        """Twins that have also seen ``new_records`` (observations and doses at or after each
        patient's last record). The posterior search starts from the current one (modes, and
        for NUTS the current draws' covariance as mass matrix); these twins are unchanged.
        ``cluster``, ``checkpoint``: as in :meth:`identify`."""
        from cohort.twin.records import append_records

        method = method or self.method
        if method not in METHODS:
            raise TwinError(f"method: {method!r} is not one of {METHODS}")
        combined, new_rows = append_records(self.data, new_records, self.prior.model)
        data = read_records(combined, self.prior, new_rows)
        bm = bind_twins(self.prior, data)
        check_measured_zeros(bm)
        previous = None
        if method == "nuts" and self.samples is not None:  # the previous draws' covariance
            z = self.samples.eta.reshape(self.n, -1, self.samples.eta.shape[-1])
            dev = z - z.mean(1, keepdims=True)
            previous = np.einsum("nsi,nsj->nij", dev, dev) / (z.shape[1] - 1)
        eta0 = posterior.starts(self.prior.omega, self.n, warm=self.laplace.eta)
        return self._posterior(
            self.prior,
            data,
            bm,
            eta0,
            method,
            self.options,
            self.history,
            "update",
            previous,
            cluster,
            checkpoint,
        )

    def refit(self, method: str | None = None) -> Twins:
        """The reference: the posterior on all records seen so far, searched from the prior."""
        return Twins.identify(
            self.prior, self.data.to_frame(), method=method or self.method, **self.options
        )

    # -- forecasting and decisions ------------------------------------------------------------
    def forecast(self, regimen=None, times=None, **kwargs):
        """Posterior-predictive bands; see :func:`cohort.twin.forecast.forecast`."""
        from cohort.twin.forecast import forecast

        return forecast(self, regimen, times, **kwargs)

    def recommend(self, template, target, **kwargs):
        """Dose recommendation; see :func:`cohort.twin.decide.recommend`."""
        from cohort.twin.decide import recommend

        return recommend(self, template, target, **kwargs)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write (or append this update to) a twin store; see :mod:`cohort.twin.store`."""
        from cohort.twin.store import save_twins

        return save_twins(self, path, overwrite=overwrite)


def _compute(prior, bm, eta0, method, opts, previous, index):
    """MAP + Laplace (and NUTS) for the patients of ``bm``; ``index``: their positions among
    all patients (seeds their chains); ``previous [N, q, q]``: an update's previous draws'
    covariance, the mass matrix where the new Laplace approximation failed."""
    pop = prior_pop(prior)
    lap = posterior.map_laplace(bm, pop, eta0)
    samples = None
    if method == "nuts":
        init = lap
        if previous is not None:
            ok = lap.ok & np.all(np.isfinite(previous), axis=(1, 2))
            init = dataclasses.replace(lap, cov=np.where(ok[:, None, None], lap.cov, previous))
        samples = posterior.nuts(
            bm, pop, init, chains=opts["chains"], warmup=opts["warmup"], draws=opts["draws"],
            seed=opts["seed"], index=index,
        )  # fmt: skip
    return lap, samples


def _block_inputs(bm: TwinBound, eta0, previous, rows: np.ndarray) -> dict:
    """What one block's computation needs: the bound model's per-patient arrays at ``rows``
    (the whole cohort's shapes and compiled-code flags kept), starts and previous draws'
    covariances, and the rows (their positions seed each patient's chains)."""
    sub = dataclasses.replace(
        bm,
        data=bm.data.subset(bm.data.ids[np.unique(rows)]),
        features=np.asarray(bm.features)[rows],
        arrays=take_rows(bm.arrays, rows, bm.features.shape[0]),
    )
    return {
        "bound": sub,
        "eta0": np.asarray(eta0)[:, rows],
        "previous": None if previous is None else np.asarray(previous)[rows],
        "rows": rows,
    }


def _compute_blocks(prior, method, opts, parts: list[dict]) -> list[tuple]:
    """Twins of each block in ``parts`` (see :func:`cohort.twin.blocks.run_blocks`):
    ``[(rows, laplace, samples), ...]``."""
    from cohort.twin.problem import to_device

    out = []
    for part in parts:
        bm = dataclasses.replace(part["bound"], arrays=to_device(part["bound"].arrays))
        lap, samples = _compute(
            prior, bm, part["eta0"], method, opts, part["previous"], part["rows"]
        )
        out.append((part["rows"], lap, samples))
    return out


def _posterior_sd(lap: posterior.Laplace, samples: posterior.Samples | None) -> np.ndarray:
    if samples is not None:
        z = samples.eta.reshape(samples.eta.shape[0], -1, samples.eta.shape[-1])
        return z.std(axis=1, ddof=1)
    return np.sqrt(np.diagonal(lap.cov, axis1=1, axis2=2))
