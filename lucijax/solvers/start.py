"""Where a fit starts: the matched filter over a velocity grid, and a network's posterior.

* :func:`start_templates` / :func:`start_velocity`: each amplitude column's unit-norm
  template over the velocity grid of the settings; the velocity of each kinematic group
  with the largest summed matched-filter power, refined by a parabola through the peak;
* :func:`network_start`: start and bounds (mean +- k sigma) from a network's posterior
  (:mod:`lucijax.mdn`); :func:`maps_start`: from given kinematic maps;
* :func:`projected_rss`: the residual sum of squares at given kinematics with the linear
  parameters solved, to compare starts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.model import LineModel, placed
from lucijax.solvers.fitting import FitSettings, linear_solve
from lucijax.solvers.robust import mad_std, masked_median


def start_templates(model: LineModel, fwhm_cm1: float, settings: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm templates of every amplitude column (a primary line with its tied lines)
    over the start's velocity grid, at the start broadening.

    Returns (templates of shape (n_velocities, n_amplitudes, n_channels), velocities km/s).
    """
    return start_templates_many(model, fwhm_cm1, [settings])[0]


def start_templates_many(model: LineModel, fwhm_cm1: float, settings_list) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`start_templates` of several settings (the global-optimum check's broadenings)
    from ONE compiled program: each start broadening stays a constant of its own copy of the
    line model, so every template is bit for bit what its own program gives, but XLA
    compiles once instead of once per broadening (~0.7 s each)."""
    spec = model.spec
    G, B = spec.n_groups, spec.n_broadening
    grids, fns = [], []
    for settings in settings_list:
        vmin, vmax = settings.velocity_range_kms
        n_v = max(3, int(np.ceil((vmax - vmin) / settings.grid_step_kms)) + 1)
        grids.append(np.linspace(vmin, vmax, n_v).astype(np.float32))
        b0 = float(np.clip(settings.broadening_start_kms, *settings.broadening_range_kms))

        def columns(v, b0=b0):
            theta = jnp.concatenate([jnp.full(G, v), jnp.full(B, b0)]) if spec.has_broadening else jnp.full(G, v)
            return model.design_matrix(theta, jnp.float32(fwhm_cm1))[:, : spec.n_amplitudes].T

        fns.append(jax.vmap(columns))
    outs = jax.jit(lambda vs: [f(v) for f, v in zip(fns, vs)])(grids)  # numpy in: no `stage` program
    result = []
    for out, velocities in zip(outs, grids):
        tmpl = np.asarray(out, np.float64)
        tmpl /= np.maximum(np.linalg.norm(tmpl, axis=-1, keepdims=True), 1e-30)
        result.append((tmpl.astype(np.float32), velocities))
    return result


def grid_score(y, mask, templates, group_of_column, n_groups):
    """Summed matched-filter power of each kinematic group at each grid velocity, (n_v, G).

    With unit-norm templates the power of a column is the chi2 its best non-negative
    amplitude removes from the median-subtracted spectrum (exactly for one column; for
    several, where their templates barely overlap, as lines a few FWHM apart): in units of
    the noise variance, differences of scores are differences of chi2.
    """
    yc = jnp.where(mask, y - masked_median(y, mask), 0.0)
    response = jnp.einsum("vcn,n->vc", templates, yc)  # (n_v, n_columns)
    power = jnp.maximum(response, 0.0) ** 2
    onehot = jax.nn.one_hot(group_of_column, n_groups, dtype=power.dtype)  # (n_columns, G)
    return power @ onehot


def start_velocity(y, mask, templates, velocities, group_of_column, n_groups):
    """Velocity of each kinematic group with the largest summed matched-filter power."""
    score = grid_score(y, mask, templates, group_of_column, n_groups)
    k = jnp.argmax(score, axis=0)  # (G,)
    n_v = velocities.shape[0]
    km = jnp.clip(k - 1, 0, n_v - 1)
    kp = jnp.clip(k + 1, 0, n_v - 1)
    g = jnp.arange(n_groups)
    s0, sm, sp = score[k, g], score[km, g], score[kp, g]
    denom = sm - 2 * s0 + sp
    shift = jnp.where((denom < 0) & (k > 0) & (k < n_v - 1), 0.5 * (sm - sp) / jnp.where(denom < 0, denom, -1.0), 0.0)
    dv = velocities[1] - velocities[0]
    return velocities[k] + jnp.clip(shift, -0.5, 0.5) * dv



def start_inputs(model: LineModel, settings: FitSettings, templates, velocities):
    """What the matched-filter start needs (templates, velocity grid, group of each
    amplitude column) and the settings' full bounds of (velocities..., broadenings...)
    (the absorption groups' broadenings: ``settings.absorption_broadening_range_kms``)."""
    spec = model.spec
    G, B = spec.n_groups, spec.n_broadening
    group_of_column = placed(np.asarray(spec.line_set.groups)[list(spec.line_set.primary_lines)], np.int32)
    vlo, vhi = settings.velocity_range_kms
    blo, bhi = settings.broadening_range_kms
    lo = np.array([vlo] * G + [blo] * B, np.float32)
    hi = np.array([vhi] * G + [bhi] * B, np.float32)
    if B and spec.line_set.absorption:
        ab = [G + k for k in spec.line_set.absorption_broadening_groups]
        lo[ab], hi[ab] = settings.absorption_broadening_range_kms
    return placed(templates), placed(velocities, np.float32), group_of_column, lo, hi


def running_median(y, width: int):
    """Median of ``y`` over a window of ``width`` (odd) channels around each channel (the
    window clipped at the ends by repeating the edge channels): a baseline that follows
    features much wider than the window (a stellar absorption trough) and not narrower ones
    (emission lines)."""
    half = int(width) // 2
    n = y.shape[0]
    idx = jnp.clip(jnp.arange(n)[:, None] + jnp.arange(-half, half + 1)[None, :], 0, n - 1)
    return jnp.median(y[idx], axis=1)


def absorption_start(line_set, settings: FitSettings, v0, b0):
    """Start of the absorption groups (:attr:`LineSet.absorption`) from the matched filter's
    start of the emission groups: each absorption group starts at the velocity of the
    emission group of its first line's namesake (group 0 when no emission line has its rest
    wavelength) and at the geometric mean of ``settings.absorption_broadening_range_kms``
    (a broad trough under narrow emission has no matched-filter peak of its own).
    ``v0``: (G,) velocity starts, ``b0``: (B,) broadening starts of the broadening groups;
    returns them updated."""
    blo, bhi = settings.absorption_broadening_range_kms
    b_abs = float(np.sqrt(max(blo, 1.0) * bhi))
    source = np.arange(line_set.n_groups)
    for g in line_set.absorption_groups:
        first = min(i for i in line_set.absorption if line_set.groups[i] == g)
        twins = [i for i in range(line_set.n_lines)
                 if i not in line_set.absorption and abs(line_set.rest_nm[i] - line_set.rest_nm[first]) < 1e-6]
        source[g] = line_set.groups[twins[0]] if twins else 0
    is_abs = np.zeros(line_set.n_broadening_groups, bool)
    is_abs[list(line_set.absorption_broadening_groups)] = True
    return v0[source], jnp.where(is_abs, jnp.float32(b_abs), b0)


#: A network's bound that comes within this fraction of its training range of the range's
#: edge is opened to the fit's physical range: beyond its training set a network does not
#: know (broad lines of 250 km/s read as 200 by a network trained up to 200 would otherwise
#: be clipped there).
TRAINING_EDGE = 0.1


def network_start(mean, sigma, settings: FitSettings, n_groups: int, has_b: bool, n_sigma: float = 3.0,
                  trained=None, *, n_broadening: int | None = None):
    """Start and bounds of one pixel's fit from a network's posterior ``mean`` / ``sigma``
    = [velocity_kms, broadening_kms]: start at the mean, bounds mean +- ``n_sigma`` sigma
    clipped to the settings' physical ranges (the full range where sigma is not finite,
    as for the point-estimate CNN, or where the network returned no finite answer).
    ``trained`` = ((vmin, vmax), (bmin, bmax)), the ranges of the network's training set: a
    bound within :data:`TRAINING_EDGE` of their width from an edge opens to the settings'
    limit on that side. Every kinematic group gets the velocity's, every broadening group
    (``n_broadening``, default ``n_groups``) the broadening's."""
    n_broadening = n_groups if n_broadening is None else int(n_broadening)
    vlo, vhi = settings.velocity_range_kms
    blo, bhi = settings.broadening_range_kms
    ok = jnp.all(jnp.isfinite(mean))
    mean = jnp.where(ok, mean, jnp.asarray([0.0, settings.broadening_start_kms], jnp.float32))
    has_sigma = jnp.isfinite(sigma) & ok
    half = jnp.where(has_sigma, n_sigma * jnp.where(has_sigma, sigma, 0.0), jnp.inf)
    lo_raw, hi_raw = mean - half, mean + half
    if trained is not None:
        (tv0, tv1), (tb0, tb1) = trained
        ev, eb = TRAINING_EDGE * (tv1 - tv0), TRAINING_EDGE * (tb1 - tb0)
        lo_raw = jnp.where(lo_raw <= jnp.asarray([tv0 + ev, tb0 + eb], jnp.float32), -jnp.inf, lo_raw)
        hi_raw = jnp.where(hi_raw >= jnp.asarray([tv1 - ev, tb1 - eb], jnp.float32), jnp.inf, hi_raw)
    v0 = jnp.clip(mean[0], vlo, vhi)
    v_lo = jnp.clip(lo_raw[0], vlo, vhi)
    v_hi = jnp.clip(hi_raw[0], vlo, vhi)
    # a bound interval must hold the start and keep some width
    v_lo = jnp.minimum(v_lo, v0 - 1e-3)
    v_hi = jnp.maximum(v_hi, v0 + 1e-3)
    start, lo, hi = [jnp.full(n_groups, v0)], [jnp.full(n_groups, v_lo)], [jnp.full(n_groups, v_hi)]
    if has_b:
        b0 = jnp.clip(mean[1], blo, bhi)
        b_lo = jnp.clip(lo_raw[1], blo, bhi)
        b_hi = jnp.clip(hi_raw[1], blo, bhi)
        b_hi = jnp.maximum(b_hi, jnp.minimum(b0 + 1.0, bhi))
        start.append(jnp.full(n_broadening, b0))
        lo.append(jnp.full(n_broadening, b_lo))
        hi.append(jnp.full(n_broadening, b_hi))
    return tuple(jnp.concatenate(p).astype(jnp.float32) for p in (start, lo, hi))


def maps_start(theta, err, settings: FitSettings, n_groups: int, has_b: bool, n_sigma: float = 3.0,
               halfwidth_kms: float = 10.0, *, n_broadening: int | None = None):
    """Start and bounds of one pixel's fit from given kinematics ``theta`` (velocities of
    each kinematic group then broadenings of each broadening group, ``n_broadening``,
    default ``n_groups``; km/s) with errors ``err``: start at ``theta`` (clipped to
    the settings' ranges), bounds ``theta`` +- max(``n_sigma`` x ``err``, ``halfwidth_kms``)
    (errors that are not finite count as 0). Returns ``(start, lo, hi, ok)``; ``ok`` is
    False where a value is not finite (start and bounds are then the settings' defaults and
    full ranges, for the caller to replace)."""
    G = n_groups
    B = (G if n_broadening is None else int(n_broadening)) if has_b else 0
    vlo, vhi = settings.velocity_range_kms
    blo, bhi = settings.broadening_range_kms
    theta = jnp.asarray(theta, jnp.float32)
    ok = jnp.all(jnp.isfinite(theta))
    rlo = jnp.asarray([vlo] * G + [blo] * B, jnp.float32)
    rhi = jnp.asarray([vhi] * G + [bhi] * B, jnp.float32)
    default = jnp.asarray([0.0] * G + [settings.broadening_start_kms] * B, jnp.float32)
    theta = jnp.where(ok, theta, jnp.clip(default, rlo, rhi))
    err = jnp.where(jnp.isfinite(err), jnp.asarray(err, jnp.float32), 0.0)
    half = jnp.where(ok, jnp.maximum(n_sigma * err, halfwidth_kms), jnp.inf)
    start = jnp.clip(theta, rlo, rhi)
    lo = jnp.minimum(jnp.clip(theta - half, rlo, rhi), start - 1e-3)
    hi = jnp.maximum(jnp.clip(theta + half, rlo, rhi), start + 1e-3)
    return start, lo, hi, ok


def diff_noise2(y, mask):
    """Noise variance of a spectrum from its channel-to-channel differences (robust; the
    lines, a few channels wide, barely move it): ``MAD-std(diff)^2 / 2`` over the pairs of
    valid channels."""
    d = jnp.diff(jnp.where(mask, y, 0.0))
    both = mask[1:] & mask[:-1]
    return mad_std(d, both) ** 2 / 2.0


def second_solution(score, velocities, v_fit, noise2, separation_kms):
    """The best other velocity of each kinematic group on the matched filter's grid.

    ``score`` (n_v, G): :func:`grid_score`; ``v_fit`` (G,): the fitted velocities. Peaks
    (local maxima) of the score farther than ``separation_kms`` from the fit are other
    solutions; returns ``(velocity (G,), delta_chi2 (G,))`` of the highest one, ``delta_chi2``
    = (the best score within ``separation_kms`` of the fit - that peak's score) / ``noise2``:
    how much worse in chi2 the other solution fits (negative: better, the fit sits in the
    wrong minimum). No other peak: NaN velocity and +inf.
    """
    n_v = score.shape[0]
    up = jnp.concatenate([jnp.full((1, score.shape[1]), -jnp.inf, score.dtype), score[:-1]])
    down = jnp.concatenate([score[1:], jnp.full((1, score.shape[1]), -jnp.inf, score.dtype)])
    peak = (score >= up) & (score >= down) & (score > 0)
    far = jnp.abs(velocities[:, None] - v_fit[None, :]) > separation_kms
    near_best = jnp.max(jnp.where(far, -jnp.inf, score), axis=0)
    near_best = jnp.where(jnp.isfinite(near_best), near_best, 0.0)  # the fit off the grid: compare with 0
    other = jnp.where(far & peak, score, -jnp.inf)
    k = jnp.argmax(other, axis=0)
    best_other = other[k, jnp.arange(score.shape[1])]
    found = jnp.isfinite(best_other) & (n_v > 2)
    velocity = jnp.where(found, velocities[k], jnp.nan)
    delta = jnp.where(found, (near_best - best_other) / jnp.maximum(noise2, 1e-30), jnp.inf)
    return velocity.astype(jnp.float32), delta.astype(jnp.float32)


def projected_rss(model: LineModel, y, mask, fwhm, theta):
    """Residual sum of squares of ``y`` at ``theta`` with the linear parameters solved."""
    m = model.design_matrix(theta, fwhm) * mask[:, None]
    r = y * mask - m @ linear_solve(m, y * mask)
    return jnp.sum(r**2)



__all__ = ["start_templates", "start_templates_many", "grid_score", "start_velocity", "diff_noise2", "second_solution", "start_inputs", "network_start", "maps_start", "projected_rss",
           "absorption_start", "running_median"]
