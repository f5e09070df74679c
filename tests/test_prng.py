"""cohort._prng is JAX's threefry stream bit for bit (it replaces jitted jax.random draws
whose XLA compile dominated a cold command's sampling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cohort import _prng


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32 + 5, 2**63 - 1])
def test_fold_in_bits_and_uniforms_equal_jax_random(seed):
    ids = np.arange(0, 3000, 7)
    key = jax.random.PRNGKey(seed)
    keys = _prng.fold_in(_prng.key(seed), ids)
    bits = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (3, 4), jnp.uint64))
    np.testing.assert_array_equal(_prng.bits64(keys, (3, 4)), np.asarray(bits(ids)))
    unif = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (5,), jnp.float64))
    np.testing.assert_array_equal(_prng.uniform(keys, (5,)), np.asarray(unif(ids)))


def test_nested_fold_in_and_bounds_equal_jax_random():
    lo = np.nextafter(-1.0, 0.0)
    key = jax.random.PRNGKey(42)

    def one(i, a):
        k = jax.random.fold_in(jax.random.fold_in(key, i), a)
        return jax.random.uniform(k, (6,), jnp.float64, lo, 1.0)

    ids, attempts = np.arange(50), np.arange(3, 7)
    ref = jax.vmap(lambda i: jax.vmap(lambda a: one(i, a))(attempts))(ids)
    keys = _prng.fold_in(_prng.fold_in(_prng.key(42), ids[:, None]), attempts[None, :])
    got = _prng.uniform(keys, (6,), lo, 1.0)
    assert got.shape == (50, 4, 6)
    np.testing.assert_array_equal(got, np.asarray(ref))
    assert got.min() > -1.0 and got.max() < 1.0


def test_normals_follow_jax_random_normal():
    keys = _prng.fold_in(_prng.key(9), np.arange(300))
    ref = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(9), i), (4,)))
    np.testing.assert_allclose(
        _prng.normal(keys, (4,)), ref(np.arange(300)), rtol=1e-12, atol=1e-13
    )


def test_patient_normals_follow_jax_random_normal():
    from cohort.models.glucose.patients import _standard_normal_draws

    key = jax.random.PRNGKey(3)
    ref = jax.vmap(
        lambda i: jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), 2), (10,))
    )(np.arange(200))
    got = _standard_normal_draws(3, np.arange(200), 2, 1, 10)[:, 0]
    # same uniforms; scipy's erfinv and XLA's differ in the last bits only
    np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-12, atol=1e-13)
