"""Small dense linear algebra written in ``jax.numpy`` for the per-pixel hot path.

Batched LAPACK custom calls (``jnp.linalg.solve``/``inv``) inside a jitted ``vmap`` hung
for good on this project's CPU build of jaxlib (design notes, section 6); these loops
compile to plain XLA ops, vectorise under ``vmap`` and never call LAPACK.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_UNROLL_MAX = 16


def cholesky(a, jitter=0.0):
    """Lower Cholesky factor of a symmetric positive (semi-)definite matrix.

    Non-positive pivots are replaced by a tiny positive value, so a singular matrix gives a
    finite factor (the caller checks conditioning through its own status logic).
    """
    k = a.shape[-1]
    scale = jnp.maximum(jnp.max(jnp.abs(jnp.diagonal(a))), jnp.finfo(a.dtype).tiny)
    tiny = scale * 1e-30
    a = a + jitter * scale * jnp.eye(k, dtype=a.dtype)
    idx = jnp.arange(k)

    def body(j, low):
        row = low[j]  # entries k < j are filled, the rest are 0
        pivot = a[j, j] - jnp.dot(row, row)
        d = jnp.sqrt(jnp.maximum(pivot, tiny))
        col = (a[:, j] - low @ row) / d
        col = jnp.where(idx > j, col, 0.0)
        return low.at[:, j].set(col).at[j, j].set(d)

    return jax.lax.fori_loop(0, k, body, jnp.zeros_like(a), unroll=k <= _UNROLL_MAX)


def solve_lower(low, b):
    """Solve ``L x = b`` by forward substitution (``b`` of shape (k,) or (k, m))."""
    k = low.shape[-1]

    def body(i, x):
        xi = (b[i] - low[i] @ x) / low[i, i]
        return x.at[i].set(xi)

    return jax.lax.fori_loop(0, k, body, jnp.zeros_like(b), unroll=k <= _UNROLL_MAX)


def solve_upper_t(low, b):
    """Solve ``L^T x = b`` by back substitution."""
    k = low.shape[-1]

    def body(n, x):
        i = k - 1 - n
        xi = (b[i] - low[:, i] @ x) / low[i, i]
        return x.at[i].set(xi)

    return jax.lax.fori_loop(0, k, body, jnp.zeros_like(b), unroll=k <= _UNROLL_MAX)


def cho_solve(low, b):
    """Solve ``(L L^T) x = b``."""
    return solve_upper_t(low, solve_lower(low, b))


def spd_solve(a, b, jitter=0.0):
    """Solve ``a x = b`` for symmetric positive definite ``a``."""
    return cho_solve(cholesky(a, jitter), b)


def spd_inverse(a, jitter=0.0):
    """Inverse of a symmetric positive definite matrix."""
    return spd_solve(a, jnp.eye(a.shape[-1], dtype=a.dtype), jitter)
