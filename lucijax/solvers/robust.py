"""Robust statistics of one spectrum without sorting (sorts are slow under ``vmap`` on CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Bisection steps: the bracket of each middle value shrinks to 2^-32 of the data range
#: before it is snapped to the data value it holds.
_BISECTIONS = 32


def masked_median(x, valid):
    """Median of ``x[valid]`` (mean of the two middle values for an even count); NaN when
    no value is valid. Equal to ``jnp.nanmedian(jnp.where(valid, x, jnp.nan))``.

    The two middle order statistics are bracketed by bisection on counts, then snapped to
    the largest valid value inside their bracket: O(32 n) comparisons and no sort.
    ``x`` must be finite where ``valid``.
    """
    valid = jnp.asarray(valid, bool)
    n = jnp.sum(valid)
    ranks = jnp.stack([(n + 1) // 2, n // 2 + 1])  # 1-based ranks of the two middle values
    lo = jnp.min(jnp.where(valid, x, jnp.inf))
    hi = jnp.max(jnp.where(valid, x, -jnp.inf))

    def count_at_most(t):  # (2,) -> number of valid values <= each threshold
        return jnp.sum(valid[None, :] & (x[None, :] <= t[:, None]), axis=1)

    def step(_, bracket):
        a, b = bracket
        mid = a + 0.5 * (b - a)
        enough = count_at_most(mid) >= ranks  # the rank-th value is <= mid
        return jnp.where(enough, a, mid), jnp.where(enough, mid, b)

    _, b = jax.lax.fori_loop(0, _BISECTIONS, step, (jnp.stack([lo, lo]), jnp.stack([hi, hi])))
    middle = jnp.max(jnp.where(valid[None, :] & (x[None, :] <= b[:, None]), x[None, :], -jnp.inf), axis=1)
    return jnp.where(n > 0, 0.5 * (middle[0] + middle[1]), jnp.nan)


def mad_std(x, valid):
    """Robust standard deviation ``1.4826 median(|x - median(x)|)`` of ``x[valid]``."""
    med = masked_median(x, valid)
    return 1.4826 * masked_median(jnp.abs(x - med), valid)
