"""Convergence diagnostics on the device (lucijax.bayes.diagnostics) against numpyro's
numpy versions in float64 (the reference the maps were defined by): a table of chain sets
(mixed and unmixed, correlated and anti-correlated, odd lengths, one chain) and one
parametrised test over it, plus the per-pixel summary inside a vmapped program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lucijax.bayes.diagnostics import effective_sample_size, rhat_and_ess, split_rhat

pytestmark = pytest.mark.timeout(120)


def ar1(rng, C, N, D, phi, offsets=None):
    """C chains of an AR(1) process with coefficient ``phi`` per parameter, plus per-chain offsets."""
    x = np.zeros((C, N, D))
    e = rng.normal(size=(C, N, D))
    x[:, 0] = e[:, 0] / np.sqrt(1 - np.square(phi))
    for t in range(1, N):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    if offsets is not None:
        x += np.asarray(offsets)[:, None, None]
    return x


CASES = {  # name: (C, N, D, phi per parameter, per-chain offsets, location, scale)
    "white noise, 2 chains": (2, 500, 3, [0.0, 0.0, 0.0], None, 0.0, 1.0),
    "correlated, 4 chains": (4, 250, 2, [0.5, 0.9], None, 0.0, 1.0),
    "anti-correlated": (2, 400, 2, [-0.6, 0.3], None, 0.0, 1.0),
    "unmixed chains": (2, 500, 2, [0.7, 0.2], [0.0, 1.5], 0.0, 1.0),
    "odd length": (3, 333, 2, [0.4, 0.8], None, 0.0, 1.0),
    "one chain": (1, 600, 2, [0.3, 0.95], None, 0.0, 1.0),
    "velocity-like offset": (2, 500, 2, [0.6, 0.2], None, 1200.0, 3.0),  # km/s: float32 centring matters
}


@pytest.mark.parametrize("name", list(CASES))
def test_diagnostics_match_numpyro(name):
    from numpyro.diagnostics import effective_sample_size as np_ess, split_gelman_rubin

    C, N, D, phi, offsets, loc, scale = CASES[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    x = loc + scale * ar1(rng, C, N, D, np.asarray(phi), offsets)
    x32 = jnp.asarray(x, jnp.float32)
    ref_x = np.asarray(x32, np.float64)  # the same float32 draws, diagnosed in float64
    ess_ref = np_ess(ref_x)
    np.testing.assert_allclose(np.asarray(effective_sample_size(x32)), ess_ref, rtol=2e-4)
    rhat, ess = jax.jit(rhat_and_ess)(x32)
    assert float(ess) == pytest.approx(float(np.min(ess_ref)), rel=2e-4)
    if C >= 2:
        rhat_ref = split_gelman_rubin(ref_x)
        np.testing.assert_allclose(np.asarray(split_rhat(x32)), rhat_ref, atol=1e-5)
        assert float(rhat) == pytest.approx(float(np.max(rhat_ref)), abs=1e-5)
    else:
        assert np.isnan(float(rhat))
    if offsets is not None:  # the unmixed case is told apart
        assert float(rhat) > 1.1


def test_non_finite_draws_give_nan_and_vmap_equals_one_by_one():
    rng = np.random.default_rng(3)
    x = np.stack([ar1(rng, 2, 200, 3, np.asarray([0.5, 0.1, 0.8])) for _ in range(5)]).astype(np.float32)
    x[2, 1, 17, 0] = np.nan
    r, e = jax.jit(jax.vmap(rhat_and_ess))(jnp.asarray(x))
    assert np.isnan(r[2]) and np.isnan(e[2])
    for i in (0, 1, 3, 4):
        ri, ei = rhat_and_ess(jnp.asarray(x[i]))
        assert float(r[i]) == pytest.approx(float(ri), abs=1e-6) and float(e[i]) == pytest.approx(float(ei), rel=1e-5)
        assert np.isfinite(float(r[i])) and 10 < float(e[i]) < 400 * 2
