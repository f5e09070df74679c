"""CGM sensor model for closed-loop cohorts: first-order delay, simglucose's autocorrelated
Johnson-SU noise, range clipping; pure functions on ``[N]`` arrays, noise keyed by a global
patient id so that a patient's readings do not depend on the rest of its batch."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Sensor:
    """CGM model: first-order delay, autocorrelated Johnson-SU noise, range clipping.

    The noise is simglucose's sensor model (Breton & Kovatchev 2008; its Dexcom parameters by
    default), generated as simglucose's ``CGMNoise`` does: a normal AR(1) ``e`` at 15-min
    knots (``e ← pacf·(e + z)``), mapped to mg/dL by ``xi + lam·sinh((e - gamma)/delta)``, and
    interpolated to the sampling times by a cubic spline (not-a-knot) through blocks of 10
    knot intervals (150 min). Between knots the noise is smooth: at 5-min sampling successive
    readings' noise correlates ~0.95 (an AR(1) at the sampling period would give 0.88, with
    a one-step change of twice the size). ``delay`` is the time constant
    (min) of a first-order lag of the interstitial glucose ``Gsub`` (0: none; ``Gsub`` already
    lags plasma glucose through the model's ``ksc``). ``noise=False`` keeps only delay/clip.
    Readings are clipped to [``low``, ``high``] = [39, 600] mg/dL as simglucose's Dexcom
    (a Dexcom G6/G7 displays 40-400: ``Sensor(high=400)`` for that).
    """

    noise: bool = True
    delay: float = 0.0
    pacf: float = 0.7
    gamma: float = -0.5444
    lam: float = 15.9574
    delta: float = 1.6898
    xi: float = -5.47
    low: float = 39.0
    high: float = 600.0

    def __post_init__(self):
        from cohort.errors import OptionError

        def number(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(f"Sensor.{name}: a number, got {value!r}")
            if not math.isfinite(value):
                raise OptionError(f"Sensor.{name}: must be finite, got {value!r}")
            return value

        for name in ("delay", "gamma", "xi", "low", "high", "lam", "delta"):
            number(name)
        if self.delay < 0:
            raise OptionError(f"Sensor.delay: a time constant >= 0 min, got {self.delay!r}")
        if not 0 <= number("pacf") < 1:
            raise OptionError(f"Sensor.pacf: a correlation in [0, 1), got {self.pacf!r}")
        for name in ("lam", "delta"):
            if not getattr(self, name) > 0:
                raise OptionError(f"Sensor.{name}: must be > 0, got {getattr(self, name)!r}")
        if not self.low < self.high:
            raise OptionError(f"Sensor.low ({self.low!r}) must be below high ({self.high!r})")


KNOT_INTERVAL = 15.0  # min between noise knots (simglucose's CGMNoise.MDL_SAMPLE_TIME)
BLOCK_KNOTS = 10  # knot intervals per interpolated block (simglucose's CGMNoise.PRECOMPUTE)


class SensorState(NamedTuple):
    level: jax.Array  # delayed glucose, mg/dL
    e: jax.Array  # the AR(1) normal at the current block's last knot
    knots: jax.Array  # [BLOCK_KNOTS + 1, N] the current block's knot noise values, mg/dL


def initial_state(n: int, dtype) -> SensorState:
    zeros = jnp.zeros(n, dtype)
    return SensorState(zeros, zeros, jnp.zeros((BLOCK_KNOTS + 1, n), dtype))


def samples_per_block(period: float) -> int:
    """Readings per interpolated block: ``floor(150/period)`` as simglucose (0 for periods
    over 150 min, where the knots are used directly as an AR(1) at the period)."""
    return math.floor(BLOCK_KNOTS * KNOT_INTERVAL / period + 1e-9)


@functools.lru_cache(maxsize=16)
def spline_weights(period: float) -> np.ndarray:
    """``[m, 11]``: the noise at offsets ``period, 2·period, ..., m·period`` into a block as
    weights of the block's 11 knot values, by the not-a-knot cubic spline that simglucose's
    ``interp1d(kind='cubic')`` fits (the interpolant is linear in the knot values)."""
    from scipy.interpolate import make_interp_spline

    knots = np.arange(BLOCK_KNOTS + 1) * KNOT_INTERVAL
    offsets = np.arange(1, samples_per_block(period) + 1) * period
    return make_interp_spline(knots, np.eye(BLOCK_KNOTS + 1), k=3)(offsets)


def knot_count(sensor: Sensor | None, period: float, n_periods: int) -> int:
    """Standard normals per patient that readings ``0 .. n_periods`` use (0 without noise):
    one per knot of every block a reading falls in, or one per reading for periods over a
    block."""
    if sensor is None or not sensor.noise:
        return 0
    m = samples_per_block(period)
    if m == 0:
        return n_periods + 1
    return (n_periods // m + 1) * BLOCK_KNOTS + 1


def knot_normals(seed: int, patient_ids, count: int, dtype) -> np.ndarray:
    """``[N, count]`` standard normals of the sensor noise: patient ``i``'s ``j``-th from
    ``fold_in(fold_in(PRNGKey(seed), i), j)`` by ``jax.random.normal``'s recipe, in float64
    and then rounded to ``dtype`` (a float32 run reads the same noise as a float64 one; drawn
    in float32 the same key gave other numbers, up to 96 mg/dL apart: a probe).

    Drawn on the host (:mod:`cohort._prng`, JAX's bits hashed in numpy; scipy's erfinv agrees
    with XLA's to ~1e-14) and handed to the closed loop as an input: drawn inside it, the
    random-bits program added ~0.85 s to every cold compile of the loop."""
    import cohort._prng as _prng

    keys = _prng.fold_in(_prng.key(int(seed)), np.asarray(patient_ids)[:, None])
    keys = _prng.fold_in(keys, np.arange(count)[None, :])
    return _prng.normal(keys, ()).astype(dtype)


def _johnson(sensor: Sensor, e, xp=jnp):
    """Noise in mg/dL from the standard normal ``e`` (Johnson SU; ``xp``: jnp or numpy)."""
    return sensor.xi + sensor.lam * xp.sinh((e - sensor.gamma) / sensor.delta)


def _new_block(sensor: Sensor, s: SensorState, z, block) -> SensorState:
    """The next block's knots: the AR(1) continued from the last block's final knot (the
    first block draws its first knot); ``z [count, N]``: the knots' normals
    (:func:`knot_normals`, time-major), knot ``j`` of block ``b`` at ``1 + 10 b + j``."""
    fresh = jax.lax.dynamic_slice_in_dim(z, 1 + block * BLOCK_KNOTS, BLOCK_KNOTS, 0)
    e = jnp.where(block == 0, z[0], s.e)
    chain = [e]
    for q in range(BLOCK_KNOTS):
        e = sensor.pacf * (e + fresh[q])
        chain.append(e)
    return SensorState(s.level, e, _johnson(sensor, jnp.stack(chain)))


def read_sensor(sensor: Sensor | None, period: float, s: SensorState, g, z, k):
    """Advance the sensor by one period (``k`` > 0) or start it (``k`` = 0); return CGM.

    ``z [count, N]``: the noise's standard normals (:func:`knot_normals`, transposed; unused
    without noise). Reading ``k`` takes the noise ``(k mod m) + 1`` periods into block
    ``k // m`` (``m`` readings a block), as simglucose's sensor draws its first reading one
    period into the first block; a block's knots are formed when its first reading is due."""
    if sensor is None:
        return s, g
    a = 1.0 - math.exp(-period / sensor.delay) if sensor.delay > 0 else 1.0
    level = jnp.where(k == 0, g, s.level + a * (g - s.level))
    s = s._replace(level=level)
    noise = 0.0
    m = samples_per_block(period)
    if sensor.noise and m == 0:  # periods over a block: an AR(1) of the knots themselves
        phi = sensor.pacf ** (period / KNOT_INTERVAL)
        zk = z[k]
        e = jnp.where(k == 0, zk, phi * s.e + math.sqrt(1.0 - phi**2) * zk)
        s, noise = s._replace(e=e), _johnson(sensor, e)
    elif sensor.noise:
        block, offset = k // m, k % m
        s = jax.lax.cond(offset == 0, lambda st: _new_block(sensor, st, z, block), lambda st: st, s)
        weights = jnp.asarray(spline_weights(float(period)), g.dtype)[offset]
        noise = jnp.tensordot(weights, s.knots, axes=1)
    return s, jnp.clip(level + noise, sensor.low, sensor.high)


def noise_series(sensor: Sensor, n: int, samples: int, period: float, seed: int):
    """``[n, samples]`` CGM noise (mg/dL) with :class:`Sensor`'s marginal distribution and
    15-min correlation, sampled every ``period`` min, in numpy: for records generated outside
    a closed loop (CGM twins' test data). An AR(1) at the sampling period: the residual model
    CGM twins fit, rougher between knots than the closed loop's simglucose spline."""
    rng = np.random.default_rng(seed)
    phi = sensor.pacf ** (period / 15.0)
    z = rng.standard_normal((n, samples))
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for k in range(1, samples):
        e[:, k] = phi * e[:, k - 1] + math.sqrt(1.0 - phi**2) * z[:, k]
    return _johnson(sensor, e, np)
