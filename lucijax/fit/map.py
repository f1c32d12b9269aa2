"""Maximum-a-posteriori (bounded least-squares) fit of ONE spectrum, vectorised once.

Algorithm (design notes, section 4):

1. **Start**: a matched filter of the spectrum with each line's sinc over a velocity grid
   (one matrix product for a whole chunk, no network needed) gives the velocity with the
   highest summed line power; a parabola through the peak refines it.
2. **Variable projection**: amplitudes and continuum enter linearly and are solved in
   closed form for each (velocity, broadening); only the non-linear parameters are
   iterated, by a projected Levenberg-Marquardt that stops once a further step would gain
   little, within an iteration budget (under ``vmap`` a batch runs until its slowest
   pixel stops; the others keep their state). The broadening is iterated as its
   square, on which the line shape depends smoothly at zero.
3. **Amplitudes >= 0**: ``jaxopt.BoxCDQP`` solves the final bounded linear problem.
4. **Noise** from the residuals of the channels away from every fitted line (robust std),
   the real weighted chi2, and **Laplace uncertainties**: the inverse Fisher matrix of all
   parameters at the optimum, propagated to fluxes by the delta method.

Failures are data: each spectrum gets a :class:`Status` code, never an exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np

from lucijax.fit.linalg import spd_inverse, spd_solve
from lucijax.fit.robust import mad_std, masked_median
from lucijax.model import LineModel


class Status(enum.IntEnum):
    """Per-pixel outcome of a fit (the STATUS map)."""

    CONVERGED = 0
    #: NaN/inf, all-zero or masked spectrum (too few valid channels): maps are NaN.
    INVALID_INPUT = 1
    #: The iteration budget ended before the fit converged.
    NOT_CONVERGED = 2
    #: A velocity, or a broadening at its upper limit, sits on a bound.
    AT_BOUND = 3
    #: The broadening went to zero (line unresolved); other quantities are valid.
    UNRESOLVED = 4
    #: The Fisher matrix could not be inverted: uncertainties are NaN.
    SINGULAR = 5


@dataclass(frozen=True)
class FitSettings:
    """Knobs of the MAP fit (static: one compilation per settings).

    Attributes
    ----------
    n_iter : int
        Most Levenberg-Marquardt iterations (see ``stop_chi2``).
    velocity_range_kms : (float, float)
        Velocities searched by the start and bounds of the fit (after de-redshifting).
    broadening_range_kms : (float, float)
        Bounds of the Gaussian broadening (km/s).
    broadening_start_kms : float
        Start of the broadening when no prior guess is given.
    grid_step_kms : float
        Spacing of the velocity grid of the start.
    nonneg_amplitudes : bool
        Constrain line amplitudes to be >= 0.
    line_free_fwhm : float
        Channels closer than this many instrumental FWHM (+3 broadening sigma) to a fitted
        line are excluded from the noise estimate.
    convergence_chi2 : float
        STATUS is CONVERGED when a further Gauss-Newton step would lower chi2 by less than
        this.
    stop_chi2 : float
        A pixel stops iterating (before ``n_iter``) once a further Gauss-Newton step would
        lower chi2 by less than this, in units of its residual variance (a tenth of
        ``convergence_chi2``).
    """

    n_iter: int = 8
    velocity_range_kms: tuple[float, float] = (-600.0, 600.0)
    broadening_range_kms: tuple[float, float] = (0.0, 300.0)
    broadening_start_kms: float = 30.0
    grid_step_kms: float = 12.0
    nonneg_amplitudes: bool = True
    line_free_fwhm: float = 3.0
    convergence_chi2: float = 1e-2
    stop_chi2: float = 1e-3


class PixelFit(NamedTuple):
    """Result of the fit of one spectrum (fields gain a leading pixel axis under vmap).

    Amplitudes, fluxes and noise are in the spectrum's flux unit (fluxes x cm^-1, in the
    de-redshifted frame; the cube driver converts them).
    """

    velocity_kms: jax.Array  # (G,)
    velocity_err_kms: jax.Array
    broadening_kms: jax.Array  # (G,)
    broadening_err_kms: jax.Array
    amplitude: jax.Array  # (L,)
    amplitude_err: jax.Array
    flux_cm1: jax.Array  # (L,)
    flux_err_cm1: jax.Array
    continuum: jax.Array  # scalar: continuum at the window centre
    noise: jax.Array  # scalar
    chi2_reduced: jax.Array
    snr: jax.Array  # brightest line amplitude / noise
    status: jax.Array  # int32
    start_velocity_kms: jax.Array  # (G,)
    linear: jax.Array  # (K,) column amplitudes then continuum coefficients


# ------------------------------------------------------------------------ the start
def start_templates(model: LineModel, fwhm_cm1: float, settings: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm templates of every amplitude column (a primary line with its tied lines)
    over the start's velocity grid, at the start broadening.

    Returns (templates of shape (n_velocities, n_amplitudes, n_channels), velocities km/s).
    """
    spec = model.spec
    vmin, vmax = settings.velocity_range_kms
    n_v = max(3, int(np.ceil((vmax - vmin) / settings.grid_step_kms)) + 1)
    velocities = np.linspace(vmin, vmax, n_v).astype(np.float32)
    G = spec.n_groups
    b0 = float(np.clip(settings.broadening_start_kms, *settings.broadening_range_kms))

    def columns(v):
        theta = jnp.concatenate([jnp.full(G, v), jnp.full(G, b0)]) if spec.has_broadening else jnp.full(G, v)
        return model.design_matrix(theta, jnp.float32(fwhm_cm1))[:, : spec.n_amplitudes].T

    tmpl = np.asarray(jax.jit(jax.vmap(columns))(jnp.asarray(velocities)), np.float64)
    tmpl /= np.maximum(np.linalg.norm(tmpl, axis=-1, keepdims=True), 1e-30)
    return tmpl.astype(np.float32), velocities


def start_velocity(y, mask, templates, velocities, group_of_column, n_groups):
    """Velocity of each kinematic group with the largest summed matched-filter power."""
    yc = jnp.where(mask, y - masked_median(y, mask), 0.0)
    response = jnp.einsum("vcn,n->vc", templates, yc)  # (n_v, n_columns)
    power = jnp.maximum(response, 0.0) ** 2
    onehot = jax.nn.one_hot(group_of_column, n_groups, dtype=power.dtype)  # (n_columns, G)
    score = power @ onehot  # (n_v, G)
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


# -------------------------------------------------------------------------- the fit
def _to_internal(theta, has_b, n_groups):
    """(v, b) -> (v, b^2)."""
    if not has_b:
        return theta
    return jnp.concatenate([theta[:n_groups], theta[n_groups:] ** 2])


def _to_external(u, has_b, n_groups):
    if not has_b:
        return u
    return jnp.concatenate([u[:n_groups], jnp.sqrt(jnp.maximum(u[n_groups:], 0.0))])


def _linear_solve(m, y):
    """Least-squares coefficients of the columns ``m`` (unit-diagonal scaled normal
    equations, own Cholesky)."""
    gram = m.T @ m
    d = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
    coef = spd_solve(gram * d[:, None] * d[None, :], (m.T @ y) * d, jitter=1e-6)
    return coef * d


def line_free_noise(model: LineModel, settings: FitSettings, theta, fwhm, resid, finite, leverage):
    """Robust std (1.4826 MAD) of the residuals ``resid`` in the valid channels farther than
    ``settings.line_free_fwhm`` FWHM + 3 broadening sigma from every line at ``theta``.

    When fewer than 20 channels are line-free (a sky spectrum: lines everywhere), all
    valid channels are used. Their residuals are then those of the whole fit, whose free
    parameters absorb part of the noise: channel i keeps a variance ``(1 - h_i) sigma^2``,
    with ``h_i`` the ``leverage`` (diagonal of the fit's hat matrix), so the residuals are
    divided by ``sqrt(1 - h_i)`` first (studentized).
    """
    x0_rel, _, sg = model.line_kinematics(theta)
    near = jnp.abs(model.axis[:, None] - x0_rel[None, :]) < settings.line_free_fwhm * fwhm + 3.0 * sg[None, :]
    line_free = (~jnp.any(near, axis=1)) & finite
    enough = jnp.sum(line_free) >= 20
    use = jnp.where(enough, line_free, finite)
    studentized = resid / jnp.sqrt(jnp.clip(1.0 - leverage, 0.05, 1.0))
    return mad_std(jnp.where(enough, resid, studentized), use)


def fit_spectrum(model: LineModel, settings: FitSettings, y, fwhm_cm1, theta_start, theta_lo, theta_hi) -> PixelFit:
    """Fit one spectrum (window channels).

    Parameters
    ----------
    model : LineModel
    settings : FitSettings
    y : (n_channels,) array
        Spectrum on the model's grid; NaN/inf channels are ignored.
    fwhm_cm1 : scalar
        Instrumental sinc FWHM of this pixel in the de-redshifted frame.
    theta_start, theta_lo, theta_hi : (n_nonlinear,) arrays
        Start and bounds of (velocities..., broadenings...) in km/s.
    """
    spec = model.spec
    G, has_b = spec.n_groups, spec.has_broadening
    P, K = spec.n_nonlinear, spec.n_linear
    dtype = jnp.float32

    finite, mask = model.channel_mask(y)  # mask: the channel weights (0 = not used)
    y0 = jnp.where(finite, y, 0.0).astype(dtype)
    scale = jnp.max(jnp.abs(y0))
    n_valid = jnp.sum(finite)
    valid = (scale > 0) & jnp.isfinite(scale) & (n_valid >= P + K + 5) & jnp.isfinite(fwhm_cm1) & (fwhm_cm1 > 0)
    scale = jnp.where(valid, scale, 1.0)
    fwhm = jnp.where(valid, fwhm_cm1, 1.0).astype(dtype)
    ys = y0 / scale

    lo_u = _to_internal(theta_lo, has_b, G)
    hi_u = _to_internal(theta_hi, has_b, G)
    u0 = jnp.clip(_to_internal(theta_start, has_b, G), lo_u, hi_u)

    def columns(u):
        return model.design_matrix(_to_external(u, has_b, G), fwhm) * mask[:, None]

    def residual(u):
        m = columns(u)
        r = ys * mask - m @ _linear_solve(m, ys * mask)
        return r, r

    def value_and_jac(u):
        jac, r = jax.jacfwd(residual, has_aux=True)(u)
        return r, jac

    dof = jnp.maximum(n_valid - P - K, 1.0)

    def gauss_newton_decrease(u, r, jac):
        """chi2 decrease (in units of the residual variance) a projected Gauss-Newton step
        from ``u`` predicts."""
        g = jac.T @ r
        h = jac.T @ jac
        step = -spd_solve(h + 1e-6 * jnp.diag(jnp.maximum(jnp.diagonal(h), 1e-12)), g, jitter=1e-7)
        step = jnp.clip(u + step, lo_u, hi_u) - u
        return -(g @ step) - 0.5 * step @ (h @ step)

    def settled(u, r, jac):
        return gauss_newton_decrease(u, r, jac) < settings.stop_chi2 * jnp.sum(r**2) / dof

    def iterate(state):
        # evaluate the trial point, keep it if it lowers chi2, then propose the next one;
        # the first trial is the start (the residual is traced once, inside the loop)
        i, u, r, jac, lam, _, u_try = state
        r_try, jac_try = value_and_jac(u_try)
        better = (jnp.sum(r_try**2) < jnp.sum(r**2)) & jnp.all(jnp.isfinite(r_try)) & jnp.all(jnp.isfinite(jac_try))
        u = jnp.where(better, u_try, u)
        r = jnp.where(better, r_try, r)
        jac = jnp.where(better, jac_try, jac)
        lam = jnp.where(i == 0, lam, jnp.where(better, jnp.maximum(lam * 0.3, 1e-7), lam * 10.0))
        g = jac.T @ r
        h = jac.T @ jac
        dh = jnp.maximum(jnp.diagonal(h), 1e-12)
        delta = -spd_solve(h + lam * jnp.diag(dh), g, jitter=1e-7)
        return i + 1, u, r, jac, lam, settled(u, r, jac), jnp.clip(u + delta, lo_u, hi_u)

    # at most n_iter steps after the start; a pixel stops once settled (under vmap, a batch
    # runs until its last pixel stops, and the settled ones keep their state)
    n = ys.shape[0]
    state = (jnp.asarray(0), u0, jnp.full(n, jnp.inf, dtype), jnp.zeros((n, P), dtype), jnp.asarray(1e-3, dtype),
             jnp.asarray(False), u0)
    _, u, r, jac, _, _, _ = jax.lax.while_loop(lambda st: (st[0] <= settings.n_iter) & ~st[5], iterate, state)
    theta = _to_external(u, has_b, G)

    # -- convergence: remaining predicted chi2 decrease of a projected Gauss-Newton step
    predicted_decrease = gauss_newton_decrease(u, r, jac)

    # -- final amplitudes (>= 0 for lines) with jaxopt's box-constrained QP
    m = columns(u)
    alpha_free = _linear_solve(m, ys * mask)
    if settings.nonneg_amplitudes:
        gram = m.T @ m
        d = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
        q = gram * d[:, None] * d[None, :]
        c = -(m.T @ (ys * mask)) * d
        lower = jnp.concatenate([jnp.zeros(spec.n_amplitudes, dtype), jnp.full(K - spec.n_amplitudes, -jnp.inf, dtype)])
        upper = jnp.full(K, jnp.inf, dtype)
        z0 = jnp.clip(alpha_free / d, lower, upper)
        qp = jaxopt.BoxCDQP(maxiter=100, tol=1e-6, implicit_diff=False)
        alpha = qp.run(z0, params_obj=(q, c), params_ineq=(lower, upper)).params * d
    else:
        alpha = alpha_free
    resid = ys * mask - m @ alpha

    # -- Laplace approximation: Fisher matrix of all parameters (v, b, alpha), in units of
    #    the inverse noise variance (the noise is estimated below)
    def model_of_theta(th):
        return model.spectrum(th, alpha, fwhm) * mask

    p_hat = jnp.concatenate([theta, alpha])
    # d model / d alpha is the design matrix itself: forward-mode only for (v, b)
    jfull = jnp.concatenate([jax.jacfwd(model_of_theta)(theta), model.design_matrix(theta, fwhm) * mask[:, None]], axis=1)
    info = jfull.T @ jfull
    vel_at_bound = (theta[:G] <= theta_lo[:G] + 1e-3) | (theta[:G] >= theta_hi[:G] - 1e-3)
    if has_b:
        b_at_low = u[G:] <= lo_u[G:] + 1e-3 * (hi_u[G:] - lo_u[G:]) + 1e-6
        b_at_high = u[G:] >= hi_u[G:] * (1 - 1e-4)
        frozen = jnp.concatenate([jnp.zeros(G, bool), b_at_low, jnp.zeros(K, bool)])
    else:
        b_at_low = b_at_high = jnp.zeros(0, bool)
        frozen = jnp.zeros(P + K, bool)
    diag = jnp.diagonal(info)
    info = jnp.where(frozen[:, None] | frozen[None, :], 0.0, info) + jnp.diag(jnp.where(frozen, 1.0, 0.0))
    dscale = 1.0 / jnp.sqrt(jnp.where(frozen, 1.0, jnp.maximum(diag, 1e-30)))
    cov_unit = spd_inverse(info * dscale[:, None] * dscale[None, :], jitter=1e-7) * dscale[:, None] * dscale[None, :]
    cov_unit = jnp.where(frozen[:, None] | frozen[None, :], 0.0, cov_unit)
    # diagonal of the hat matrix: the share of each channel's noise the free parameters absorb
    leverage = jnp.sum((jfull @ cov_unit) * jfull, axis=1)

    # -- noise from line-free channels
    noise_s = line_free_noise(model, settings, theta, fwhm, resid, finite, leverage)
    noise_s = jnp.where(noise_s > 0, noise_s, jnp.sqrt(jnp.sum(resid**2) / dof))
    chi2_red = jnp.sum(resid**2) / noise_s**2 / dof
    cov = cov_unit * noise_s**2
    perr = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 0.0))
    perr = jnp.where(frozen, jnp.nan, perr)

    def derived(p):
        th, al = p[:P], p[P:]
        return jnp.concatenate([model.line_amplitudes(th, al, fwhm), model.line_fluxes_cm1(th, al, fwhm)])

    dq = derived(p_hat)
    jd = jax.jacfwd(derived)(p_hat)
    dq_err = jnp.sqrt(jnp.maximum(jnp.einsum("ip,pq,iq->i", jd, cov, jd), 0.0))
    L = spec.line_set.n_lines

    # -- status
    converged = predicted_decrease / noise_s**2 < settings.convergence_chi2
    cov_ok = jnp.all(jnp.isfinite(cov)) & jnp.all(jnp.isfinite(perr) | frozen)
    status = jnp.where(~valid, Status.INVALID_INPUT,
             jnp.where(~cov_ok, Status.SINGULAR,
             jnp.where(jnp.any(vel_at_bound) | jnp.any(b_at_high), Status.AT_BOUND,
             jnp.where(~converged, Status.NOT_CONVERGED,
             jnp.where(jnp.any(b_at_low), Status.UNRESOLVED, Status.CONVERGED)))))
    status = status.astype(jnp.int32)

    nan = jnp.asarray(jnp.nan, dtype)

    def out(x, scale_by=1.0):
        return jnp.where(valid, x * scale_by, nan)

    noise = noise_s * scale
    amplitude = dq[:L] * scale
    broadening = theta[G:] if has_b else jnp.full(G, jnp.nan, dtype)
    broadening_err = perr[G:P] if has_b else jnp.full(G, jnp.nan, dtype)
    return PixelFit(
        velocity_kms=out(theta[:G]),
        velocity_err_kms=out(perr[:G]),
        broadening_kms=out(broadening),
        broadening_err_kms=out(broadening_err),
        amplitude=out(amplitude),
        amplitude_err=out(dq_err[:L], scale),
        flux_cm1=out(dq[L:], scale),
        flux_err_cm1=out(dq_err[L:], scale),
        continuum=out(model.continuum_at_centre(alpha), scale),
        noise=out(noise),
        chi2_reduced=out(chi2_red),
        snr=out(jnp.max(amplitude) / noise),
        status=status,
        start_velocity_kms=out(theta_start[:G]),
        linear=out(alpha, scale),
    )


def _start_inputs(model: LineModel, settings: FitSettings, templates, velocities):
    """What the matched-filter start needs (templates, velocity grid, group of each
    amplitude column) and the settings' full bounds of (velocities..., broadenings...)."""
    spec = model.spec
    G, has_b = spec.n_groups, spec.has_broadening
    group_of_column = jnp.asarray(np.asarray(spec.line_set.groups)[list(spec.line_set.primary_lines)], jnp.int32)
    vlo, vhi = settings.velocity_range_kms
    blo, bhi = settings.broadening_range_kms
    lo = np.array([vlo] * G + ([blo] * G if has_b else []), np.float32)
    hi = np.array([vhi] * G + ([bhi] * G if has_b else []), np.float32)
    return jnp.asarray(templates), jnp.asarray(velocities, jnp.float32), group_of_column, lo, hi


def _stored(fn, key, name):
    """``fn`` as a :class:`~lucijax.fit.programs.StoredProgram` when a key is given."""
    if key is None:
        return fn
    from lucijax.fit.programs import StoredProgram

    return StoredProgram(fn, f"{name}\n{key}")


def make_batch_fitter(model: LineModel, settings: FitSettings, templates, velocities, key: str | None = None):
    """A jitted function fitting a batch of spectra ``(B, n)`` with their FWHM ``(B,)``.

    Signature: ``fit(y, fwhm, theta_start=None, theta_lo=None, theta_hi=None)``; without a
    start, the matched-filter start is used and the bounds are the settings' ranges.
    With ``key`` (text naming everything the fit depends on), the traced programs are
    kept on disk for later processes (:mod:`lucijax.fit.programs`).
    """
    spec = model.spec
    G, has_b = spec.n_groups, spec.has_broadening
    templates, velocities, group_of_column, lo, hi = _start_inputs(model, settings, templates, velocities)
    b0 = float(np.clip(settings.broadening_start_kms, *settings.broadening_range_kms))

    def one(y, fwhm):
        mask = jnp.isfinite(y)
        yz = jnp.where(mask, y, 0.0)
        v0 = start_velocity(yz, mask, templates, velocities, group_of_column, G)
        theta0 = jnp.concatenate([v0, jnp.full(G, b0, jnp.float32)]) if has_b else v0
        return fit_spectrum(model, settings, y, fwhm, theta0, jnp.asarray(lo), jnp.asarray(hi))

    def one_with_start(y, fwhm, theta0, tlo, thi):
        return fit_spectrum(model, settings, y, fwhm, theta0, tlo, thi)

    batch = _stored(jax.jit(jax.vmap(one)), key, "matched-filter start")
    batch_start = _stored(jax.jit(jax.vmap(one_with_start)), key, "given start")

    def fit(y, fwhm, theta_start=None, theta_lo=None, theta_hi=None):
        y = jnp.asarray(y, jnp.float32)
        fwhm = jnp.asarray(fwhm, jnp.float32)
        if theta_start is None:
            return batch(y, fwhm)
        n = y.shape[0]
        tlo = jnp.broadcast_to(jnp.asarray(lo if theta_lo is None else theta_lo, jnp.float32), (n, spec.n_nonlinear))
        thi = jnp.broadcast_to(jnp.asarray(hi if theta_hi is None else theta_hi, jnp.float32), (n, spec.n_nonlinear))
        return batch_start(y, fwhm, jnp.asarray(theta_start, jnp.float32), tlo, thi)

    return fit


def network_start(mean, sigma, settings: FitSettings, n_groups: int, has_b: bool, n_sigma: float = 3.0):
    """Start and bounds of one pixel's fit from a network's posterior ``mean`` / ``sigma``
    = [velocity_kms, broadening_kms]: start at the mean, bounds mean +- ``n_sigma`` sigma
    clipped to the settings' physical ranges (the full range where sigma is not finite,
    as for the point-estimate CNN, or where the network returned no finite answer)."""
    vlo, vhi = settings.velocity_range_kms
    blo, bhi = settings.broadening_range_kms
    ok = jnp.all(jnp.isfinite(mean))
    mean = jnp.where(ok, mean, jnp.asarray([0.0, settings.broadening_start_kms], jnp.float32))
    has_sigma = jnp.isfinite(sigma) & ok
    half = jnp.where(has_sigma, n_sigma * jnp.where(has_sigma, sigma, 0.0), jnp.inf)
    v0 = jnp.clip(mean[0], vlo, vhi)
    v_lo = jnp.clip(mean[0] - half[0], vlo, vhi)
    v_hi = jnp.clip(mean[0] + half[0], vlo, vhi)
    # a bound interval must hold the start and keep some width
    v_lo = jnp.minimum(v_lo, v0 - 1e-3)
    v_hi = jnp.maximum(v_hi, v0 + 1e-3)
    start, lo, hi = [jnp.full(n_groups, v0)], [jnp.full(n_groups, v_lo)], [jnp.full(n_groups, v_hi)]
    if has_b:
        b0 = jnp.clip(mean[1], blo, bhi)
        b_lo = jnp.clip(mean[1] - half[1], blo, bhi)
        b_hi = jnp.clip(mean[1] + half[1], blo, bhi)
        b_hi = jnp.maximum(b_hi, jnp.minimum(b0 + 1.0, bhi))
        start.append(jnp.full(n_groups, b0))
        lo.append(jnp.full(n_groups, b_lo))
        hi.append(jnp.full(n_groups, b_hi))
    return tuple(jnp.concatenate(p).astype(jnp.float32) for p in (start, lo, hi))


def _projected_rss(model: LineModel, y, mask, fwhm, theta):
    """Residual sum of squares of ``y`` at ``theta`` with the linear parameters solved."""
    m = model.design_matrix(theta, fwhm) * mask[:, None]
    r = y * mask - m @ _linear_solve(m, y * mask)
    return jnp.sum(r**2)


def make_network_fitter(model: LineModel, settings: FitSettings, predict, templates, velocities, n_sigma: float = 3.0,
                        guard_chi2: float = 9.0, max_sigma_kms: float = 20.0, key: str | None = None):
    """A jitted batch fitter started and bounded by a network (see :mod:`lucijax.mdn`).

    ``predict(y, fwhm) -> (mean, sigma)`` runs in the same compiled program as the fit.
    The network's start is checked against the matched-filter start: when the latter fits
    the spectrum better by more than ``guard_chi2`` (in chi2, noise from the channel-to-
    channel scatter), the network missed the line (an alias or a faint-line lock) and the
    fit starts from the matched filter over the settings' full ranges instead. So it does
    where the network is unsure (velocity sigma above ``max_sigma_kms``: faint spectra,
    whose posterior mean can fall between two aliases).
    Returns ``fit(y, fwhm) -> (PixelFit, mean (B, 2), sigma (B, 2))``. ``key``: as for
    :func:`make_batch_fitter` (it must then name the network's weights too).
    """
    spec = model.spec
    G, has_b = spec.n_groups, spec.has_broadening
    templates, velocities, group_of_column, full_lo, full_hi = _start_inputs(model, settings, templates, velocities)

    def one(y, fwhm):
        mean, sigma = predict(y, fwhm)
        theta_net, lo, hi = network_start(mean, sigma, settings, G, has_b, n_sigma)
        mask = jnp.isfinite(y)
        yz = jnp.where(mask, y, 0.0)
        v_mf = start_velocity(yz, mask, templates, velocities, group_of_column, G)
        theta_mf = jnp.concatenate([v_mf, theta_net[G:]]) if has_b else v_mf
        scale = jnp.maximum(jnp.max(jnp.abs(yz)), 1e-30)
        ys, fm = yz / scale, mask.astype(jnp.float32)
        d = jnp.diff(ys)
        noise2 = jnp.maximum(mad_std(d, jnp.ones(d.shape, bool)) ** 2 / 2.0, 1e-12)
        # both starts' residuals in one vmapped evaluation (one traced copy of the model)
        rss_mf, rss_net = jax.vmap(lambda th: _projected_rss(model, ys, fm, fwhm, th))(jnp.stack([theta_mf, theta_net]))
        worse = rss_mf < rss_net - guard_chi2 * noise2
        worse = worse | (sigma[0] > max_sigma_kms)  # False for the CNN's NaN sigma
        theta0 = jnp.where(worse, theta_mf, theta_net)
        lo = jnp.where(worse, full_lo, lo)
        hi = jnp.where(worse, full_hi, hi)
        return fit_spectrum(model, settings, y, fwhm, theta0, lo, hi), mean, sigma

    batch = _stored(jax.jit(jax.vmap(one)), key, f"network start {n_sigma} {guard_chi2} {max_sigma_kms}")

    def fit(y, fwhm):
        return batch(jnp.asarray(y, jnp.float32), jnp.asarray(fwhm, jnp.float32))

    return fit
