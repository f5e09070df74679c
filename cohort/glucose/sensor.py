"""CGM sensor model for closed-loop cohorts: first-order delay, simglucose's autocorrelated
Johnson-SU noise, range clipping; pure functions on ``[N]`` arrays, noise keyed by a global
patient id so that a patient's readings do not depend on the rest of its batch."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sensor:
    """CGM model: first-order delay, autocorrelated Johnson-SU noise, range clipping.

    The noise is simglucose's sensor model (Breton & Kovatchev 2008; its Dexcom parameters by
    default): a stationary AR(1) standard normal ``e`` with correlation ``pacf`` per 15 min,
    mapped to mg/dL by ``xi + lam·sinh((e - gamma)/delta)``. ``delay`` is the time constant
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


class SensorState(NamedTuple):
    level: jax.Array  # delayed glucose, mg/dL
    e: jax.Array  # AR(1) standard normal innovation process


def sensor_keys(seed, patient_ids):
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(patient_ids)


def _normals(keys, k, dtype):
    return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, k), (), dtype))(keys)


def read_sensor(sensor: Sensor | None, period: float, s: SensorState, g, keys, k):
    """Advance the sensor by one period (``k`` > 0) or start it (``k`` = 0); return CGM."""
    if sensor is None:
        return s, g
    a = 1.0 - math.exp(-period / sensor.delay) if sensor.delay > 0 else 1.0
    level = jnp.where(k == 0, g, s.level + a * (g - s.level))
    e = s.e
    if sensor.noise:
        phi = sensor.pacf ** (period / 15.0)
        z = _normals(keys, k, g.dtype)
        e = jnp.where(k == 0, z, phi * s.e + math.sqrt(1.0 - phi**2) * z)
        noise = sensor.xi + sensor.lam * jnp.sinh((e - sensor.gamma) / sensor.delta)
    else:
        noise = 0.0
    cgm = jnp.clip(level + noise, sensor.low, sensor.high)
    return SensorState(level, e), cgm


def noise_series(sensor: Sensor, n: int, samples: int, period: float, seed: int):
    """``[n, samples]`` CGM noise (mg/dL) of :class:`Sensor` sampled every ``period`` min, in
    numpy: for records generated outside a closed loop (e.g. CGM twins' test data)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    phi = sensor.pacf ** (period / 15.0)
    z = rng.standard_normal((n, samples))
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for k in range(1, samples):
        e[:, k] = phi * e[:, k - 1] + math.sqrt(1.0 - phi**2) * z[:, k]
    return sensor.xi + sensor.lam * np.sinh((e - sensor.gamma) / sensor.delta)
