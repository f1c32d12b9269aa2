"""The network: a velocity "comb" over 1-D convolutional evidence maps, then dense layers
(flax.linen).

1. The input grid, folded into ``space_to_depth`` channels (and joined by the three
   scalars as constant channels), goes through 1-D convolutions that keep the grid's
   resolution; the last one unfolds back to ``C`` evidence maps on the full grid.
2. For every velocity of a fixed velocity grid, the evidence maps are read (linear
   interpolation) at the position of every line of the filter and summed with learned
   weights: a learned matched filter whose softmax over velocities is a discrete
   posterior of the velocity. Its mean (soft-argmax) and spread feed the head.
3. The input spectrum is read around each line at the soft-argmax velocity (``n_offsets``
   points per line): the aligned line profiles, with the scalars and the spread, go
   through dense layers giving a velocity correction, the broadening and (MDN) the
   softplus standard deviations of both.

The MDN variant returns a Gaussian posterior (means, sigmas) of velocity and broadening;
the CNN variant returns the two point estimates only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lucijax.constants import C_KMS
from lucijax.physics.lines import LINE_CATALOGUE_NM
from lucijax.mdn.config import TARGET_CENTER, TARGET_SCALE, FilterRecipe, NetConfig

#: Floor on the predicted standard deviation, in units of the target scale.
SIGMA_FLOOR = 1e-3


def _interp(values, pos):
    """Linear interpolation of ``values`` (L, ...) at fractional indices ``pos``; 0 outside."""
    n = values.shape[0]
    lo = jnp.clip(jnp.floor(pos), 0, n - 2).astype(jnp.int32)
    w = pos - lo
    inside = (pos >= 0) & (pos <= n - 1)
    out = values[lo] * (1.0 - w)[..., None] + values[lo + 1] * w[..., None] if values.ndim > 1 else \
        values[lo] * (1.0 - w) + values[lo + 1] * w
    mask = inside[..., None] if values.ndim > 1 else inside
    return jnp.where(mask, out, 0.0)


class SpectrumNet(nn.Module):
    """``(x (n_grid,), scalars (3,)) -> raw outputs (4 | 2,)`` for ONE spectrum (vmap it)."""

    cfg: NetConfig
    recipe: FilterRecipe

    def setup_constants(self):
        r = self.recipe
        c = self.cfg
        rest = np.array([1e7 / LINE_CATALOGUE_NM[n] for n in r.lines])
        v = np.linspace(-c.comb_velocity_kms, c.comb_velocity_kms, c.n_velocities)
        beta = v / C_KMS
        pos = (rest[None, :] * np.sqrt((1 - beta) / (1 + beta))[:, None] - r.grid_min_cm1) / r.grid_step_cm1
        # d position / d velocity per line (grid points per km/s), for the aligned read-out
        dpos = -rest / C_KMS / r.grid_step_cm1
        return v, pos, (rest - r.grid_min_cm1) / r.grid_step_cm1, dpos

    @nn.compact
    def __call__(self, x, scalars):
        c = self.cfg
        n = x.shape[-1]
        v_grid, pos, pos0, dpos = self.setup_constants()
        k = c.space_to_depth
        h = x.reshape(n // k, k)
        h = jnp.concatenate([h, jnp.broadcast_to(scalars, (n // k, scalars.shape[-1]))], axis=-1)
        for i, feat in enumerate(c.conv_features):
            h = nn.relu(nn.Conv(feat, (c.kernel_size,), kernel_dilation=(1 + i % 2,))(h))
        ev = nn.Conv(k * c.n_evidence, (c.kernel_size,))(h).reshape(n, c.n_evidence)
        ev = jnp.concatenate([x[:, None], ev], axis=1)  # the spectrum itself is evidence 0
        # the comb: evidence at every line position for every velocity
        at_lines = _interp(ev, jnp.asarray(pos, jnp.float32))  # (V, lines, 1 + C)
        n_lines = at_lines.shape[1]
        init_w = np.zeros((n_lines, 1 + c.n_evidence), np.float32)
        init_w[:, 0] = 5.0  # start as a plain matched comb of the spectrum
        weights = self.param("comb_weights", lambda key, shape: jnp.asarray(init_w)
                             + 0.1 * jax.random.normal(key, shape), init_w.shape)
        score = jnp.sum(at_lines * weights, axis=(1, 2))
        score = score + self.param("velocity_bias", nn.initializers.zeros, (c.n_velocities,))
        p = jax.nn.softmax(score)
        dv = float(v_grid[1] - v_grid[0])
        v_grid = jnp.asarray(v_grid, jnp.float32)
        v_soft = jnp.sum(p * v_grid)
        spread = jnp.sqrt(jnp.sum(p * (v_grid - v_soft) ** 2) + 1.0)
        # sub-bin peak: parabola through the best score and its neighbours
        kb = jnp.clip(jnp.argmax(score), 1, c.n_velocities - 2)
        sm, s0, sp = score[kb - 1], score[kb], score[kb + 1]
        curv = sm - 2.0 * s0 + sp
        shift = jnp.where(curv < 0, 0.5 * (sm - sp) / jnp.minimum(curv, -1e-6), 0.0)
        v_peak = jax.lax.stop_gradient(v_grid[kb]) + dv * jnp.clip(shift, -1.0, 1.0)
        self.sow("intermediates", "comb_peak_velocity_kms", v_peak)
        self.sow("intermediates", "comb_soft_velocity_kms", v_soft)
        # aligned line profiles at the comb's peak velocity
        offsets = jnp.arange(c.n_offsets, dtype=jnp.float32) - (c.n_offsets - 1) / 2
        centre = jnp.asarray(pos0, jnp.float32) + jnp.asarray(dpos, jnp.float32) * v_peak
        aligned = _interp(x, centre[:, None] + offsets[None, :] * c.offset_step)  # (lines, offsets)
        ev_aligned = _interp(ev[:, 1:], centre[:, None] + offsets[None, :] * c.offset_step)  # (lines, offsets, C)
        f = jnp.concatenate([aligned.ravel(), ev_aligned.ravel(), scalars,
                             jnp.stack([jnp.log(spread / 100.0), jnp.max(p), (v_soft - v_peak) / 100.0])])
        for feat in c.dense_features:
            f = nn.relu(nn.Dense(feat)(f))
        out = nn.Dense(c.n_out)(f)
        # velocity = comb peak + a learned correction (normalised units)
        v_norm = (v_peak - TARGET_CENTER[0]) / TARGET_SCALE[0]
        return out.at[0].add(v_norm)


def split_outputs(raw, mdn: bool):
    """Raw outputs -> (mean, sigma) in normalised units (sigma NaN for the CNN)."""
    mean = raw[..., :2]
    if mdn:
        sigma = jax.nn.softplus(raw[..., 2:4]) + SIGMA_FLOOR
    else:
        sigma = jnp.full_like(mean, jnp.nan)
    return mean, sigma


def to_kms(mean, sigma):
    """Normalised (mean, sigma) -> km/s: [velocity, broadening]."""
    center = jnp.asarray(TARGET_CENTER, jnp.float32)
    scale = jnp.asarray(TARGET_SCALE, jnp.float32)
    return center + scale * mean, scale * sigma


def to_normalised(theta_kms):
    center = jnp.asarray(TARGET_CENTER, jnp.float32)
    scale = jnp.asarray(TARGET_SCALE, jnp.float32)
    return (theta_kms - center) / scale


def apply_batch(net: SpectrumNet, params, x, scalars):
    """Raw outputs of a batch (B, n_grid), (B, 3)."""
    return jax.vmap(lambda a, b: net.apply(params, a, b))(x, scalars)
