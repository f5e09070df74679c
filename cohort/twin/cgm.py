"""CGM digital twins of people with type 1 diabetes: personalised from CGM, insulin and meal
records, updated day by day, replaying the same days under altered therapy.

Model: ``t1d_minimal`` (see its module for why a reduced model): the parameters with a random
effect in the prior (``Gb, SG, SI, p2, kempt, kabs`` in ``priors/t1d_cgm_twin.toml``) are
estimated per patient, together with the residual SD and the AR(1) correlation of CGM
residuals where the prior's ``[error]`` asks for them (sensor noise and model misfit are
serially correlated at 5-min sampling; independent errors would make the posterior far too
narrow) and the glucose at the first record where it gives ``initial_sd`` (one noisy first
reading would otherwise set the first hours of the curve). With ``[iov]``, the listed
parameters also vary from occasion to occasion (a day, NONMEM's inter-occasion variability):
one day of data cannot show how far the next will stray from it, and without it a twin
forecasts the next day as if it were the same one. Everything else is fixed at the prior's
values. Posteriors are MAP + Laplace, then
per-patient NUTS (numpyro's kernel), for all patients in one vectorised program
(:mod:`cohort.twin.posterior`), on the parallel-in-time solution of :mod:`cohort.twin.cgm_solve`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from cohort.errors import CohortWarning
from cohort.twin import cgm_data, cgm_forecast, cgm_replay, posterior
from cohort.twin.blocks import blocks, solve_blocks, take_rows
from cohort.twin.cgm_likelihood import (
    Layout,
    layout,
    model_params,
    natural,
    potential_factory,
    prior_moments,
)
from cohort.twin.cgm_solve import insulin_curve
from cohort.twin.prior import TwinError, TwinPrior, show_id

# Prior draws started from besides the prior mode (and the warm start): a day of CGM leaves
# local modes (meal absorption vs insulin action), which 2 draws missed for a third of the
# reference patients (fit MARD 9.0 % instead of 5.7 % with 8).
STARTS = 8
MAX_UPDATE_GAP = 12 * 60.0  # min between a patient's last record and its update's first


@dataclasses.dataclass(eq=False, repr=False)
class CGMTwins:
    """CGM twins of one or many patients: ``identify`` → ``update`` → ``replay``.

    ``posterior``: MAP + Laplace in the standardised coordinates ``η``; ``samples``: NUTS
    draws (``None`` for ``method="map"``); ``records``: every row seen (checked table).
    """

    prior: TwinPrior
    records: pd.DataFrame
    posterior: posterior.Laplace
    samples: posterior.Samples | None
    eat_rate: float = cgm_data.EAT_RATE
    history: list = dataclasses.field(default_factory=list)

    def __repr__(self) -> str:  # the dataclass's printed every covariance array (15 kB)
        return (
            f"CGMTwins({self.n} patients, model={self.prior.model.name!r}, prior="
            f"{self.prior.name!r}, method={self.method!r}, records={len(self.records)}, "
            f"updates={max(len(self.history) - 1, 0)})"
        )

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def identify(
        cls,
        prior: TwinPrior | str,
        records: pd.DataFrame | str,
        *,
        method: str = "nuts",
        eat_rate: float = cgm_data.EAT_RATE,
        chains: int = 4,
        warmup: int = 500,
        draws: int = 1000,
        seed: int = 0,
        max_tree_depth: int = 8,
        cluster=None,
        checkpoint=None,
    ) -> CGMTwins:
        """Personalise a twin per patient of ``records`` (see :mod:`cohort.twin.cgm_data`).

        ``method``: ``"nuts"`` (MAP + Laplace, then NUTS: ``chains`` × (``warmup`` +
        ``draws``) per patient, started at the Laplace approximation with its covariance as
        mass matrix; patients not converged are rerun with 2× warmup and 3× draws: a day of
        CGM can leave a multimodal posterior, where 300 + 300 left a chain in a minor mode;
        1,000 draws because one day leaves SG and p2 weakly identified, slowly mixed
        directions: with 500 the benchmark day's first pass reached R-hat 1.019 and bulk ESS
        447, and its rerun tripled the time) or ``"laplace"`` (MAP + Laplace only; ``"map"``
        is the same). Patients are sampled one after another inside one compiled program
        (chains vmapped), so a patient needing long trajectories does not hold up the
        others. ``cluster``: a Dask Client, Cluster or scheduler address: blocks of patients
        are identified as tasks on its workers, with the numbers of a local run
        (:mod:`cohort.twin.blocks`). ``checkpoint``: a store path where finished blocks are
        kept until the twins are returned (or a ``KeptCheckpoint``, kept until you have
        saved them and call its ``remove``), so that the same call after a crash computes
        only the rest (:mod:`cohort.twin.checkpoint`)."""
        prior = prior if isinstance(prior, TwinPrior) else TwinPrior.from_file(prior)
        layout(prior)
        table = cgm_data.read_cgm(records)
        twins = cls(prior, table, None, None, eat_rate)  # type: ignore[arg-type]
        twins._fit(method, None, chains, warmup, draws, seed, max_tree_depth, cluster, checkpoint)
        return twins

    def update(
        self,
        new_records: pd.DataFrame | str,
        *,
        method: str | None = None,
        chains: int = 4,
        warmup: int = 300,
        draws: int = 1000,
        seed: int = 1,
        max_tree_depth: int = 8,
        cluster=None,
        checkpoint=None,
    ) -> CGMTwins:
        """Add rows (later than each patient's last) and update every posterior, warm-started
        from the current one (MAP search from its mode, NUTS from its Laplace approximation
        at the new mode). Returns a new object; this one is left unchanged. ``cluster``,
        ``checkpoint``: as in :meth:`identify`."""
        table = self._merged(new_records, "update")
        out = CGMTwins(self.prior, table, None, None, self.eat_rate, [*self.history])  # type: ignore[arg-type]
        method = method or self.method
        # a new day's occasion factors start at their prior mean
        warm = self.posterior.eta
        warm = np.pad(warm, ((0, 0), (0, len(out.names) - warm.shape[1])))
        out._fit(
            method, warm, chains, warmup, draws, seed, max_tree_depth, cluster,
            checkpoint,
        )  # fmt: skip
        return out

    def _merged(
        self, new_records: pd.DataFrame | str, what: str, min_readings: int = 3
    ) -> pd.DataFrame:
        """The records with ``new_records`` added (checked: known patients, later than each
        patient's last row, the same body weight; the running basal carries over)."""
        new = pd.read_csv(new_records) if isinstance(new_records, str) else new_records.copy()
        new.columns = [str(c).strip().upper() for c in new.columns]
        if "ID" not in new:
            if len(self.ids) != 1:
                raise TwinError(
                    f"{what}: the rows need an ID column (these twins are of many patients)"
                )
            new["ID"] = self.ids[0]
        known = set(self.ids.tolist())
        unknown = [i for i in pd.unique(new["ID"]) if i not in known]
        if unknown:
            row = int(np.flatnonzero((new["ID"] == unknown[0]).to_numpy())[0]) + 1
            raise TwinError(
                f"{what}: row {row}: patient ID {show_id(unknown[0])} has no twin (known: "
                f"{', '.join(show_id(k) for k in sorted(known)[:10])}); identify new "
                "patients with `cohort twin cgm` (Python: CGMTwins.identify)"
            )
        # body weight and the running basal rate carry over from the rows already seen
        last = self.records.groupby("ID", sort=False).last()
        known_bw = new["ID"].map(last["BW"]).astype(float)
        if "BW" in new:
            given = pd.to_numeric(new["BW"], errors="coerce")
            differs = given.notna() & (given != known_bw)
            if differs.any():
                i = int(np.flatnonzero(differs.to_numpy())[0])
                raise TwinError(
                    f"{what}: row {i + 1} (ID {show_id(new['ID'].iloc[i])}): BW = "
                    f"{given.iloc[i]:g} kg, but the twin was identified with "
                    f"{known_bw.iloc[i]:g} kg; a twin keeps one body weight (leave BW empty "
                    "or drop the column to keep it, or identify a new twin)"
                )
        new["BW"] = known_bw
        if "BASAL" not in new:
            new["BASAL"] = np.nan
        new["BASAL"] = pd.to_numeric(new["BASAL"], errors="coerce").astype(float)
        first = (~new["ID"].duplicated()).to_numpy()
        carry = first & new["BASAL"].isna().to_numpy()
        if carry.any():  # the running basal rate carries over
            new.loc[carry, "BASAL"] = new["ID"][carry].map(last["BASAL"]).astype(float)
        new = cgm_data.read_cgm(new, min_readings)
        last_time = self.records.groupby("ID")["TIME"].max()
        gap = new.groupby("ID", sort=False)["TIME"].min() - last_time.reindex(new["ID"].unique())
        if (gap > MAX_UPDATE_GAP).any():
            pid = gap[gap > MAX_UPDATE_GAP].index[0]
            warnings.warn(
                f"{what}: patient {show_id(pid)}'s new records start "
                f"{float(gap[pid]) / 60:.1f} h after its last record; the twin assumes no "
                "meals or boluses in between (basal at the last rate): add the records of the "
                "gap, or identify from the new records alone",
                CohortWarning,
                stacklevel=3,
            )
        early = new["TIME"].to_numpy() <= new["ID"].map(last_time).to_numpy()
        if early.any():
            row = new.iloc[int(np.flatnonzero(early)[0])]
            raise TwinError(
                f"{what}: row {int(row['ROW'])} (ID {show_id(row['ID'])}, TIME "
                f"{row['TIME']:g}) is not after that patient's last record: {what} takes "
                "later rows only"
            )
        table = pd.concat([self.records.drop(columns="ROW"), new.drop(columns="ROW")])
        order = {pid: k for k, pid in enumerate(self.ids)}
        table = table.sort_values(
            ["ID", "TIME"], key=lambda c: c.map(order) if c.name == "ID" else c
        )
        with warnings.catch_warnings():  # the new rows were warned about above, the old ones
            warnings.simplefilter("ignore", CohortWarning)  # when the twin was identified
            table = cgm_data.read_cgm(table.reset_index(drop=True))
        return table

    # -- inference ------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return pd.unique(self.records["ID"])

    @property
    def method(self) -> str:
        return "laplace" if self.samples is None else "nuts"

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def ok(self) -> np.ndarray:
        """Per patient: a usable posterior (mode found; converged chains when sampled)."""
        ok = self.posterior.ok.copy()
        return ok & self.samples.converged if self.samples is not None else ok

    def individual(self, n_draws: int = 1000) -> pd.DataFrame:
        """One row per patient: posterior median and 90 % interval of each estimated
        quantity, the fit's MARD (%) and ``ok``."""
        ps = self.parameters(n_draws)
        out = pd.DataFrame(index=pd.Index(self.ids, name="ID"))
        for name in self.names:
            for q, tag in ((0.5, ""), (0.05, "_q05"), (0.95, "_q95")):
                out[name + tag] = ps[name].sel(quantile=q).values
        out["mard"] = self.fitted().mard.values
        out["ok"] = self.ok
        return out

    # -- storage (layout of cohort.twin.store) ----------------------------------------------
    def save(self, path, *, overwrite: bool = False):
        """Append the current state to the twin store ``path`` (``.zarr``; see
        :func:`cohort.twin.store.save_twins`); reopen with :func:`cohort.twin.open_twins`."""
        from cohort.twin.store import save_twins

        return save_twins(self, path, overwrite=overwrite)

    def store_datasets(self) -> dict[str, xr.Dataset]:
        """The ``records``, ``map`` and ``posterior`` groups of one update."""
        from cohort.twin.store import posterior_groups, records_group

        lay = self._bound()[0]
        if self.samples is not None:
            eta = self.samples.eta
        else:
            eta = posterior.laplace_draws(self.posterior, 1000, 0, self.ids)[:, None]
        nat = natural(lay, self._z_of(eta))
        values = {n: nat[..., k] for k, n in enumerate(lay.names)}
        fit, post = posterior_groups(self.posterior, self.samples, self.ids, lay.names, eta, values)
        history = json.dumps(self.history)
        fit.attrs.update(method=self.method, eat_rate=self.eat_rate, history=history)
        return {"records": records_group(self.records), "map": fit, "posterior": post}

    @classmethod
    def from_store(cls, prior: TwinPrior, read) -> CGMTwins:
        """Rebuild from the groups of one stored update (``read(name)`` → Dataset)."""
        rec = read("records")
        table = pd.DataFrame({c: rec[c].to_numpy() for c in rec.data_vars})
        table = cgm_data.read_cgm(table.drop(columns="ROW"))
        from cohort.twin.store import read_posterior

        fit = read("map")
        twins = cls(prior, table, None, None, float(fit.attrs["eat_rate"]))  # type: ignore[arg-type]
        twins.posterior, twins.samples = read_posterior(fit, read, twins.names)
        twins.history = json.loads(fit.attrs["history"])
        return twins

    @property
    def names(self) -> tuple[str, ...]:
        return self._bound()[0].names

    def _bound(self):
        """Layout, grid inputs, per-patient data, potential factory and prior Cholesky factor
        (computed once per object: records and prior do not change after construction)."""
        cached = self.__dict__.get("_bound_cache")
        if cached is None:
            cached = self.__dict__["_bound_cache"] = self._bind()
        return cached

    def _bind(self):
        grid = cgm_data.grid_inputs(self.records, self.eat_rate)
        lay = layout(self.prior, grid["meal"].shape[1])
        ids = self.ids
        mu_model = self.prior.log_typical(
            pd.DataFrame(index=pd.Index(ids, name="ID"))
        )  # no covariates used by the CGM prior yet: typical values
        mu, chol = prior_moments(self.prior, lay, mu_model, grid["G0"])
        fixed = np.exp(mu_model[:, [self.prior.names.index(k) for k in lay.fixed]])
        defaults = {
            k: np.full(len(ids), v)
            for k, v in self.prior.model.defaults().items()
            if k not in (*self.prior.names, "BW", "G0", "basal", "Ib")
        }
        data = {
            **{k: jnp.asarray(grid[k]) for k in ("meal", "basal", "bolus", "dv", "mask", "lag")},
            "obs_idx": jnp.asarray(grid["obs_idx"]),
            "BW": jnp.asarray(grid["BW"]),
            "G0": jnp.asarray(grid["G0"]),
            "u0": jnp.asarray(grid["u0"]),
            "mu": jnp.asarray(mu),
            "fixed": jnp.asarray(fixed),
            "defaults": {k: jnp.asarray(v) for k, v in defaults.items()},
        }
        if lay.insulin_fixed:
            params = jax.vmap(lambda z, d: model_params(lay, z, d))(data["mu"], data)
            data["plasma"] = jax.vmap(insulin_curve)(params, data["basal"] + data["bolus"])
        err = self.prior.spec.error
        make = potential_factory(lay, float(err.add), float(err.prop), float(err.ar1 or 0.0))
        return lay, grid, data, make, jnp.asarray(chol)

    def _fit(
        self, method, warm, chains, warmup, draws, seed, max_tree_depth=8, cluster=None,
        checkpoint=None,
    ) -> None:  # fmt: skip
        method = {"laplace": "map"}.get(method, method)
        if method not in ("map", "nuts"):
            raise TwinError(f"method: 'laplace' (MAP + Laplace) or 'nuts', got {method!r}")
        t0 = time.perf_counter()
        lay, _, data, make, chol = self._bound()
        n, q = data["mu"].shape
        eta0 = posterior.starts(np.eye(q), n, warm=warm, draws=STARTS)
        settings = {"chains": chains, "warmup": warmup, "draws": draws, "seed": seed,
                    "max_tree_depth": max_tree_depth}  # fmt: skip
        compute = functools.partial(_fit_blocks, make, np.asarray(chol), lay, method, settings)
        parts = [(rows, take_rows(data, rows, n), eta0[:, rows]) for rows in blocks(n)]
        key = ("cgm", self.prior.to_json(), lay, method, settings, parts)
        self.posterior, self.samples = solve_blocks(
            compute, parts, n, cluster=cluster, checkpoint=checkpoint, key=key
        )
        self.history.append(
            {
                "step": "update" if self.history else "identify",
                "seconds": time.perf_counter() - t0,
                "rows": len(self.records),
                "method": method,
                "posterior_sd": self._z_draws(400, 0).std(axis=1).tolist(),  # [N, q], z scale
            }
        )

    # -- results --------------------------------------------------------------------------
    def _z_of(self, eta: np.ndarray) -> np.ndarray:
        """``z = μ + L·η`` for draws ``eta [N, ..., q]`` in the standardised coordinates."""
        _, _, data, _, chol = self._bound()
        mu = np.asarray(data["mu"])
        return (
            mu.reshape(mu.shape[:1] + (1,) * (eta.ndim - 2) + mu.shape[1:])
            + eta @ np.asarray(chol).T
        )

    def _z_draws(self, n_draws: int, seed: int) -> np.ndarray:
        """``[N, S, q]`` posterior draws of ``z`` (NUTS draws thinned, else Laplace)."""
        if self.samples is not None:
            eta = self.samples.eta.reshape(
                self.samples.eta.shape[0], -1, self.samples.eta.shape[-1]
            )
            idx = np.linspace(0, eta.shape[1] - 1, min(n_draws, eta.shape[1])).astype(int)
            eta = eta[:, idx]
        else:
            eta = posterior.laplace_draws(self.posterior, n_draws, seed, self.ids)
        return self._z_of(_with_new_occasions(eta, len(self.names), seed))

    def parameters(self, n_draws: int = 1000) -> xr.Dataset:
        """Posterior median and 5 %/95 % quantiles of every estimated quantity per patient
        (natural scale), with R-hat and bulk ESS when sampled."""
        lay = self._bound()[0]
        nat = natural(lay, self._z_draws(n_draws, 0))
        q = np.quantile(nat, [0.05, 0.5, 0.95], axis=1)
        units = self.prior.model.units()
        ds = xr.Dataset(coords={"patient": self.ids, "quantile": [0.05, 0.5, 0.95]})
        for j, name in enumerate(lay.names):
            base = name.split("_occ")[0]  # an occasion's value of an [iov] parameter
            attrs = {"units": units.get(base, "mg/dL" if name == "sigma" else "1")}
            ds[name] = (("quantile", "patient"), q[..., j], attrs)
        if self.samples is not None:
            ds["rhat"] = (("patient", "param"), self.samples.rhat)
            ds["ess_bulk"] = (("patient", "param"), self.samples.ess_bulk)
            ds["converged"] = ("patient", self.samples.converged)
            ds = ds.assign_coords(param=list(lay.names))
        return ds

    # the records' days under altered therapy, and the fit to the CGM readings (MARD)
    replay = cgm_replay.replay
    fitted = cgm_replay.fitted
    # the readings to come, given the meals and insulin planned after the last record
    forecast = cgm_forecast.forecast


def _with_new_occasions(eta: np.ndarray, q: int, seed: int) -> np.ndarray:
    """``eta [..., q0]`` extended to ``q`` coordinates: the factors of occasions after those the
    posterior has seen (records added for a forecast or an update: ``[iov]``'s occasions come
    last) are drawn from their prior (standard normal in these coordinates)."""
    extra = q - eta.shape[-1]
    if extra <= 0:
        return eta
    new = np.random.default_rng([seed, 7]).standard_normal((*eta.shape[:-1], extra))
    return np.concatenate([eta, new], axis=-1)


def _fit_blocks(make, chol, lay: Layout, method: str, settings: dict, parts: list) -> list:
    """MAP + Laplace (and NUTS) of each block of patients in ``parts`` (``(rows, data,
    starts)``; see :mod:`cohort.twin.blocks`): ``[(rows, laplace, samples), ...]``."""
    key, chol = ("cgm", lay), jnp.asarray(chol)
    out = []
    for rows, data, eta0 in parts:
        data = jax.tree_util.tree_map(jnp.asarray, data)
        lap = posterior.modes(
            make, chol, eta0, data, key=key, steps=25, hessian=posterior.fd_hessian
        )
        samples = None
        if method == "nuts":
            samples = posterior.sample(
                make, chol, data, lap, key=key, lockstep=False, index=rows, **settings
            )
        out.append((rows, lap, samples))
    return out
