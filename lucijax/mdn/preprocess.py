"""What the network sees of one spectrum (pure ``jax.numpy``, one spectrum; vmap it).

1. The channels of the spectrum (any evenly or unevenly sampled axis, NaN = bad channel)
   give a robust continuum (median) and a robust noise (1.4826 median of the absolute
   first differences / sqrt 2); medians by bisection (:func:`masked_median`).
2. The continuum-subtracted spectrum is resampled by linear interpolation onto the
   filter's fixed rest-frame grid (:class:`lucijax.mdn.config.FilterRecipe`); grid points
   outside the spectrum's axis are 0.
3. The resampled spectrum is divided by ``scale = max(peak, noise)`` and three scalars
   join it: ``log(fwhm / grid step)`` (resolution), ``log(channel width / grid step)``
   (sampling), ``log(scale / noise)`` (signal to noise).

The interpolation is written as precomputed indices and weights (:func:`interp_weights`
for a fixed axis on the host, :func:`uniform_interp_weights` for a traced evenly sampled
axis in training) so both paths share :func:`features`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NOISE_FROM_DIFF = 1.4826 / np.sqrt(2.0)


def interp_weights(axis_cm1, grid_cm1):
    """Host-side linear interpolation weights of ``grid_cm1`` on an increasing ``axis_cm1``.

    Returns ``(lo, w, inside)``: value at grid point j = ``(1 - w_j) y[lo_j] + w_j y[lo_j + 1]``
    where ``inside_j``, else 0. Equal to ``numpy.interp(grid, axis, y, left=0, right=0)``.
    """
    axis = np.asarray(axis_cm1, np.float64)
    grid = np.asarray(grid_cm1, np.float64)
    if axis.ndim != 1 or axis.size < 2 or np.any(np.diff(axis) <= 0):
        raise ValueError("the spectral axis must be a 1-D, strictly increasing array of at least 2 wavenumbers")
    lo = np.clip(np.searchsorted(axis, grid, side="right") - 1, 0, axis.size - 2)
    w = (grid - axis[lo]) / (axis[lo + 1] - axis[lo])
    inside = (grid >= axis[0]) & (grid <= axis[-1])
    w = np.where(inside, np.clip(w, 0.0, 1.0), 0.0)
    return lo.astype(np.int32), w.astype(np.float32), inside


def uniform_interp_weights(grid_rel_cm1, first_cm1, step_cm1, n_valid):
    """Traced version of :func:`interp_weights` for the axis ``first + k step``,
    ``k < n_valid`` (the array holding the spectrum may be longer, NaN-padded)."""
    pos = (grid_rel_cm1 - first_cm1) / step_cm1
    lo = jnp.clip(jnp.floor(pos), 0, jnp.maximum(n_valid - 2, 0)).astype(jnp.int32)
    w = jnp.clip(pos - lo, 0.0, 1.0)
    inside = (pos >= 0) & (pos <= n_valid - 1)
    return lo, jnp.where(inside, w, 0.0), inside


#: Bisection steps of :func:`masked_median` (the bracket shrinks by 2^-n of the data range).
MEDIAN_BISECTIONS = 24


def masked_median(v, valid, n_steps: int = MEDIAN_BISECTIONS):
    """Median of ``v[valid]`` by bisection on the value (no sort: cheap under vmap on CPU).

    Returns the midpoint of a bracket ``[lo, hi]`` holding the lower median, whose width
    is ``(max - min) / 2^n_steps``; NaN if no value is valid.
    """
    n = jnp.sum(valid)
    k = (n + 1) // 2  # rank of the lower median
    lo = jnp.min(jnp.where(valid, v, jnp.inf))
    hi = jnp.max(jnp.where(valid, v, -jnp.inf))

    def step(_, bracket):
        a, b = bracket
        mid = 0.5 * (a + b)
        enough = jnp.sum(valid & (v <= mid)) >= k
        return jnp.where(enough, a, mid), jnp.where(enough, mid, b)

    lo, hi = jax.lax.fori_loop(0, n_steps, step, (lo, hi))
    return jnp.where(n > 0, 0.5 * (lo + hi), jnp.nan)


def robust_level_and_noise(y):
    """(median, noise) of a spectrum, ignoring non-finite channels."""
    valid = jnp.isfinite(y)
    level = masked_median(y, valid)
    d = jnp.abs(jnp.diff(y))
    noise = _NOISE_FROM_DIFF * masked_median(d, valid[1:] & valid[:-1])
    return level, noise


def features(y, lo, w, inside, fwhm_cm1, channel_cm1, grid_step_cm1):
    """Network input of one spectrum: ``(x (n_grid,), scalars (3,))``, float32.

    Parameters
    ----------
    y : (n,) spectrum (NaN/inf channels ignored)
    lo, w, inside : interpolation of the grid on the spectrum's axis (see
        :func:`interp_weights`)
    fwhm_cm1 : instrumental sinc FWHM in the frame of the grid (de-redshifted)
    channel_cm1 : channel width of the spectrum in that frame
    grid_step_cm1 : spacing of the input grid
    """
    y = jnp.asarray(y, jnp.float32)
    level, noise = robust_level_and_noise(y)
    yc = jnp.where(jnp.isfinite(y), y - level, 0.0)
    g = jnp.where(inside, (1.0 - w) * yc[lo] + w * yc[lo + 1], 0.0)
    scale = jnp.maximum(jnp.max(g), noise)
    x = g / scale
    scalars = jnp.stack([
        jnp.log(fwhm_cm1 / grid_step_cm1),
        jnp.log(channel_cm1 / grid_step_cm1),
        jnp.log(scale / noise),
    ]).astype(jnp.float32)
    return x.astype(jnp.float32), scalars
