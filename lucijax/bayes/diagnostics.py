"""Convergence diagnostics of one pixel's chains, on the device (jax.numpy).

The formulas are those of :mod:`numpyro.diagnostics` (split Gelman-Rubin R-hat; bulk
effective sample size from the chains' FFT autocovariances with Geyer's initial monotone
sequence, Stan reference manual 2.18), written for one pixel's draws ``(C, N, D)`` so that
they run inside the compiled sampler program, vectorised over pixels by the engine like
everything else. numpyro's versions are numpy, in float64, one pixel at a time on the host:
on a GPU they took longer than the sampling itself (3.5 s against 2.4 s for 4096 pixels),
and every draw had to be copied back to the host only to be diagnosed. Here the draws stay
on the device unless they are kept; the results agree with numpyro's to float32 rounding
(``tests/test_bayes.py``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _fast_len(n: int) -> int:
    """The smallest length >= n whose only prime factors are 2, 3 and 5 (the FFT length
    numpyro pads to: the same padding gives the same autocovariances)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1 or n <= 2:
            return n
        n += 1


def _chain_variances(x):
    """(within-chain variance, pooled variance estimate) of ``x`` (C, N, D), per parameter."""
    C, N = x.shape[:2]
    var_within = jnp.mean(jnp.var(x, axis=1, ddof=1), axis=0)
    var_estimator = var_within * (N - 1) / N
    if C > 1:
        var_estimator = var_estimator + jnp.var(jnp.mean(x, axis=1), axis=0, ddof=1)
    else:
        var_within = var_estimator
    return var_within, var_estimator


def split_rhat(x):
    """Split R-hat of every parameter of draws ``x`` (C, N, D): each chain cut in halves,
    then Gelman-Rubin over the 2C half chains. NaN for one chain of fewer than 4 draws."""
    N = x.shape[1]
    if N < 4:
        return jnp.full(x.shape[2:], jnp.nan, x.dtype)
    h = N // 2
    var_within, var_estimator = _chain_variances(jnp.concatenate([x[:, :h], x[:, -h:]], axis=0))
    return jnp.sqrt(var_estimator / var_within)


def autocovariance(x):
    """Biased autocovariance of every chain along its draws: ``x`` (C, N, D) -> (C, N, D)."""
    N = x.shape[1]
    centred = x - jnp.mean(x, axis=1, keepdims=True)
    n_fft = 2 * _fast_len(N)
    f = jnp.fft.rfft(centred, n=n_fft, axis=1)
    return jnp.fft.irfft(f * jnp.conj(f), n=n_fft, axis=1)[:, :N] / N


def effective_sample_size(x):
    """Bulk effective sample size of every parameter of draws ``x`` (C, N, D), N >= 2."""
    C, N = x.shape[:2]
    gamma = autocovariance(x)
    var_within, var_estimator = _chain_variances(x)
    rho = 1.0 - (var_within - jnp.mean(gamma, axis=0)) / var_estimator
    rho = rho.at[0].set(1.0)
    pairs = rho[: 2 * (N // 2) - 1: 2] + rho[1: 2 * (N // 2): 2]  # Geyer's initial positive sequence
    # the initial monotone sequence: clipped at zero, then never increasing
    monotone = jnp.concatenate([pairs[:1], lax.cummin(jnp.clip(pairs[1:], 0.0, None), axis=0)], axis=0)
    tau = -1.0 + 2.0 * jnp.sum(monotone, axis=0)
    return C * N / tau


def rhat_and_ess(x):
    """(max split R-hat, min bulk ESS) over the parameters of one pixel's draws ``x``
    (C, N, D), NaN where a draw is not finite; R-hat is NaN for a single chain."""
    finite = jnp.all(jnp.isfinite(x))
    safe = jnp.where(finite, x, 0.0)
    C = x.shape[0]
    rhat = jnp.nanmax(split_rhat(safe)) if C >= 2 else jnp.asarray(jnp.nan, x.dtype)
    ess = jnp.nanmin(effective_sample_size(safe))
    nan = jnp.asarray(jnp.nan, x.dtype)
    return jnp.where(finite, rhat, nan), jnp.where(finite, ess, nan)


__all__ = ["split_rhat", "effective_sample_size", "autocovariance", "rhat_and_ess"]
