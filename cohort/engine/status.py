"""Per-patient solve status: the codes stored in every result's ``status`` variable, a message
per code saying what to change (as diffrax's ``RESULTS``), and the rules that assign them, once
for every engine."""

from __future__ import annotations

import enum

import jax.numpy as jnp


class Status(enum.IntEnum):
    OK = 0
    MAX_STEPS = 1
    NONFINITE = 2
    NEGATIVE = 3
    SOLVER_FAILED = 4
    INVALID_PARAMETERS = 5
    SS_NOT_REACHED = 6
    STEP_UNSTABLE = 7


STATUS_MEANINGS = {s.value: s.name.lower() for s in Status}

STATUS_MESSAGES = {
    Status.OK: "solved",
    Status.MAX_STEPS: "the adaptive solver hit max_steps: raise max_steps or loosen rtol/atol, "
    "or use a stiff solver (Kvaerno5) if the model is stiff; in float32 the default rtol 1e-8 "
    "is below the precision (a stiff model's Newton steps then fail): use float64, the fast "
    "path, or rtol 1e-5 and atol 1e-8 (CLI: --rtol 1e-5 --atol 1e-8; Python: "
    "method=Adaptive(rtol=1e-5, atol=1e-8))",
    Status.NONFINITE: "the solution became NaN or infinite: check the parameters (extreme "
    "values), or use a smaller fixed step / the adaptive engine",
    Status.NEGATIVE: "a non-negative state went negative beyond round-off: on the fast path "
    "use a smaller step or the adaptive engine; on the adaptive engine tighten rtol/atol or "
    "use a stiff solver (Adaptive(solver='Kvaerno5'))",
    Status.SOLVER_FAILED: "the solver failed (e.g. a singular Jacobian): check the parameters "
    "or try another solver",
    Status.INVALID_PARAMETERS: "a parameter is non-finite or outside its bounds (see "
    "`cohort models MODEL`), or a RATE=-2 dose's modelled duration is not > 0 (or, at SS=1, "
    "longer than II): fix the population; the patient was not simulated",
    Status.SS_NOT_REACHED: "steady state (SS=1) not reached: the state still changed over a "
    "dosing interval after ss_max_cycles intervals (e.g. doses above a saturable "
    "elimination's capacity); for linear PK use the closed form (--method closed_form), "
    "otherwise raise ss_max_cycles (Python: Adaptive(ss_max_cycles=...) or RK4(...))",
    Status.STEP_UNSTABLE: "the fixed step is beyond RK4's stability limit for this patient "
    "(its fastest rate x dt > 2.8), so its values are meaningless: give a smaller dt (or tol=), "
    "or use the adaptive engine (--method diffrax)",
}

NEGATIVE_TOLERANCE = 1e-6  # relative to the largest state, what counts as round-off


def status_attrs() -> dict:
    """The provenance attributes every result carries to decode its ``status`` variable."""
    return {
        "status_codes": [int(s) for s in Status],
        "status_meanings": " ".join(STATUS_MEANINGS[int(s)] for s in Status),
    }


def stepping_status(finite, min_scaled, outputs=()):
    """Status of fixed-step batched solves from their health checks (``[N]`` arrays): whether
    every state stayed finite, the smallest non-negative state relative to the largest, and the
    saved time-major outputs ``[T, N]`` (which must be finite too)."""
    status = jnp.where(
        ~finite,
        Status.NONFINITE,
        jnp.where(min_scaled < -NEGATIVE_TOLERANCE, Status.NEGATIVE, Status.OK),
    )
    for out in outputs:
        status = jnp.where(
            (status == Status.OK) & ~jnp.all(jnp.isfinite(out), 0), Status.NONFINITE, status
        )
    return status


def output_status(outputs, n: int):
    """Status of exact (closed-form) solves: NONFINITE where a saved output is not finite."""
    status = jnp.zeros(n, jnp.int32)
    for out in outputs:
        status = jnp.where(~jnp.all(jnp.isfinite(out), 0), Status.NONFINITE, status)
    return status
