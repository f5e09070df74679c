"""The table of a fit's estimates, as `cohort fit` prints it after fitting and `cohort info`
prints it for a saved fit: NONMEM's layout (estimate, SE, RSE, held parameters "fixed",
$SIGMA's variance beside the SD) or posterior summaries."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # pandas costs 0.2 s to import: `cohort --help` must not pay it
    import pandas as pd


def _shown(value, spec: str) -> str:
    value = float(value)
    return format(value, spec) if math.isfinite(value) else ""


def estimates_table(s: pd.DataFrame, title: str, method: str) -> Table:
    """Estimates (ML) or posterior summaries (NUTS/SVI) of a fit's summary (one row per
    parameter), log-scale duplicates left out; held parameters say "fixed"."""
    if "estimate" in s:
        table = Table("parameter", "estimate", "SE", "RSE %", "units", title=title)
        for name, row in s.iterrows():
            if name.startswith("log_"):
                continue
            if bool(row["fixed"]):  # held (--fix, FIX): shown, as NONMEM lists them
                table.add_row(name, f"{row['estimate']:.4g}", "fixed", "", str(row["units"]))
                continue
            table.add_row(
                name,
                f"{row['estimate']:.4g}",
                _shown(row["se"], ".3g"),  # blank without SEs (--se none, failed covariance)
                _shown(row["rse_percent"], ".1f"),
                str(row["units"]),
            )
            if name.startswith("sigma_") and "sigma2_" + name[6:] not in s.index:
                # NONMEM's $SIGMA is a variance, shown beside the SD: saved with the estimates
                # since 2026-12-07, derived here for fits saved before
                est, se = float(row["estimate"]), float(row["se"])
                table.add_row(
                    "sigma2_" + name[6:],
                    f"{est**2:.4g}",
                    _shown(2 * est * se, ".3g"),  # delta method
                    _shown(200 * se / est if est else float("nan"), ".1f"),
                    f"({row['units']})²" if str(row["units"]) not in ("", "1") else "1",
                )
        return table
    # SVI draws come from the fitted guide, independent and in one chain: R-hat and ESS
    # describe MCMC chains and would be NaN or meaningless there
    mcmc = method == "nuts"
    table = Table(title=title)
    table.add_column("parameter", no_wrap=True)  # names whole (they were cut to "omega_…")
    # the interval is arviz's 90 % highest-density interval, not the 5th/95th percentiles
    diagnostics = ("R-hat", "ESS bulk") if mcmc else ()
    for col in ("mean", "sd", "90 % HDI low", "90 % HDI high"):
        table.add_column(col, justify="right")
    for col in diagnostics:  # whole headers: the units column wraps first on a narrow terminal
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("units")
    for name, row in s.iterrows():
        if name.startswith("log_"):
            continue
        diag = (f"{row['r_hat']:.3f}", f"{row['ess_bulk']:.0f}") if mcmc else ()
        table.add_row(
            name,
            f"{row['mean']:.4g}",
            f"{row['sd']:.3g}",
            f"{row['hdi_5%']:.4g}",
            f"{row['hdi_95%']:.4g}",
            *diag,
            str(row["units"]),
        )
    return table
