"""The sort-free median of the fit against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lucijax.solvers.robust import mad_std, masked_median

pytestmark = pytest.mark.timeout(120)

_MEDIAN = jax.jit(jax.vmap(masked_median))


@pytest.mark.parametrize("n", [1, 2, 7, 400, 401])
def test_masked_median_equals_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.standard_t(3, size=(200, n)).astype(np.float32) * rng.uniform(1e-20, 1e3, size=(200, 1)).astype(np.float32)
    x[:50] = np.round(x[:50])  # ties
    x[50:60] = 1.0  # all equal
    valid = rng.uniform(size=(200, n)) < 0.8
    valid[60:70] = True
    valid[70] = False  # nothing valid
    got = np.asarray(_MEDIAN(jnp.asarray(np.where(valid, x, np.nan)), jnp.asarray(valid)))
    ref = np.array([np.median(r[v]) if v.any() else np.nan for r, v in zip(x.astype(np.float64), valid)])
    np.testing.assert_allclose(got, ref, rtol=1e-6, equal_nan=True)
    assert np.isnan(got[70])


def test_mad_std_of_gaussian_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(64, 4000)).astype(np.float32)
    got = np.asarray(jax.jit(jax.vmap(mad_std))(jnp.asarray(x), jnp.ones(x.shape, bool)))
    ref = 1.4826 * np.median(np.abs(x - np.median(x, axis=1, keepdims=True)), axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert abs(got.mean() / 2.0 - 1) < 0.02
