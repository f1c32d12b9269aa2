"""Maximum-a-posteriori (bounded least-squares) fit of ONE spectrum.

Algorithm (design notes, section 4):

1. **Start**: given (a network's posterior mean, or the matched filter of
   :mod:`lucijax.solvers.start`), with box bounds on every non-linear parameter.
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

Failures are data: each spectrum gets a :class:`~lucijax.status.Status` code, never an
exception. Everything here is for one spectrum; the engine vectorises it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from lucijax.model import LineModel
from lucijax.solvers.linalg import spd_inverse, spd_solve
from lucijax.solvers.robust import mad_std
from lucijax.status import Status


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
        Constrain line amplitudes to be >= 0 (absorption lines' to be <= 0).
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
    detection_chi2 : float
        STATUS is NO_LINE when the line amplitudes' joint significance (their chi2 against
        zero, :func:`detection_statistic`) is below this.
    absorption_broadening_range_kms : (float, float)
        Bounds of the broadening of the kinematic groups of absorption lines (its start:
        their geometric mean).
    lm_chunk : int
        Under ``vmap`` (the engine's batch), run the Levenberg-Marquardt loop over chunks of
        this many spectra one after another (:func:`chunked_under_vmap`); 0: the whole batch
        at once. A batch's loop runs until its slowest spectrum settles, so on a CPU the loop
        wastes less in narrow chunks, while the rest of the fit runs faster in a wide batch.
    lm_first : int
        With ``lm_chunk``: the whole batch makes its first ``lm_first`` fit evaluations (the
        start and ``lm_first - 1`` steps) together, then only the spectra still iterating go
        on, gathered in groups of ``lm_chunk`` (:func:`compacted_under_vmap`); 0: every chunk
        of ``lm_chunk`` runs from the start. Each spectrum's iterations are the same either way.
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
    detection_chi2: float = 9.0
    absorption_broadening_range_kms: tuple[float, float] = (50.0, 1000.0)
    lm_chunk: int = 0
    lm_first: int = 0



def noise_floor(ys):
    """The smallest noise a float32 spectrum can have: its largest value's rounding. A
    noise-free spectrum gets errors at that floor, never zero."""
    return jnp.max(jnp.abs(ys)) * 2.0**-24


def detection_statistic(amplitudes, cov):
    """Joint significance of the line amplitudes: ``a^T C^-1 a`` (their chi2 against all
    zero; ~ chi2 with as many degrees of freedom for noise at fixed kinematics)."""
    d = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 1e-30))
    z = amplitudes * d
    return z @ spd_solve(cov * d[:, None] * d[None, :], z, 1e-7)


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
    #: Correlation of the line fluxes, pairs (i < j) in ``numpy.triu_indices(L, 1)`` order
    #: (empty beyond :data:`MAX_CORRELATED_LINES` lines).
    flux_corr: jax.Array
    #: 1-sigma flux error of each line if its amplitude were zero, at the fitted kinematics
    #: (the detection limit's unit: 3 x this is the 3-sigma flux limit).
    flux_null_err_cm1: jax.Array  # (L,)
    #: 1-sigma error of ``continuum`` (the continuum at the window centre, a linear
    #: combination of the continuum coefficients), from the covariance of all parameters.
    continuum_err: jax.Array  # scalar


class ScaledCovariance(NamedTuple):
    """The covariance ``matrix * units[:, None] * units[None, :]`` of all parameters of one
    fit, in two float32 factors: products of flux units (1e-17 erg/cm^2/s/A squared) fall
    below float32's smallest normal number (1.2e-38), which device arithmetic flushes to
    zero, so the product is taken on the host in float64
    (:func:`lucijax.solvers.map.finish_map`)."""

    matrix: jax.Array  # (D, D) in the fit's internal units (flux parameters / the spectrum's scale)
    units: jax.Array  # (D,) 1 for velocities and broadenings, the spectrum's scale for linear parameters


#: Fits of more lines than this (sky-line fits) carry no flux correlations.
MAX_CORRELATED_LINES = 12


def flux_correlations(cov_flux):
    """Upper-triangle correlations ``(L(L-1)/2,)`` of a flux covariance ``(L, L)``."""
    L = cov_flux.shape[0]
    if L > MAX_CORRELATED_LINES:
        return jnp.zeros((0,), cov_flux.dtype)
    sd = jnp.sqrt(jnp.maximum(jnp.diagonal(cov_flux), 0.0))
    i, j = np.triu_indices(L, 1)
    return jnp.clip(cov_flux[i, j] / (sd[i] * sd[j]), -1.0, 1.0)


def null_flux_errors(flux_per_linear, cov_linear):
    """Flux error of each line at zero amplitude and the given kinematics: ``flux_per_linear``
    ``(L, K)`` is d flux / d linear parameter (each line moves with its one amplitude
    column), ``cov_linear`` ``(K, K)`` the covariance of the linear parameters at fixed
    kinematics; a line's null error is its column's error times its flux per unit of it."""
    var = jnp.maximum(jnp.diagonal(cov_linear), 0.0)
    return jnp.sqrt(flux_per_linear**2 @ var)


def continuum_error(model: LineModel, cov_linear):
    """1-sigma error of the continuum at the window centre (``model.continuum_at_centre``)
    from the covariance ``(K, K)`` of the linear parameters (amplitudes, then continuum
    coefficients): ``sqrt(w^T C w)``, ``w`` the continuum coefficients' weights at the centre."""
    w = model.continuum_centre
    lo, hi = model.spec.n_amplitudes, model.spec.n_amplitudes + model.spec.n_continuum
    c = cov_linear[lo:hi, lo:hi]
    return jnp.sqrt(jnp.maximum(w @ (c @ w), 0.0))


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


def linear_solve(m, y):
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


def nonneg_amplitudes(m, y, alpha_free, n_amplitudes: int, bounded=None):
    """Least-squares amplitudes of the columns of ``m`` for ``y`` with the first
    ``n_amplitudes`` (the lines) >= 0 (or the columns where the boolean ``bounded`` is
    true): jaxopt's box-constrained QP on the Gram matrix scaled to a unit diagonal, started
    from the unbounded solution ``alpha_free``."""
    import jaxopt  # here, not at import: a program loaded from disk never calls it (0.4 s of start-up)

    K = m.shape[1]
    gram = m.T @ m
    d = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
    q = gram * d[:, None] * d[None, :]
    c = -(m.T @ y) * d
    if bounded is None:
        bounded = np.arange(K) < n_amplitudes
    lower = jnp.where(jnp.asarray(bounded), jnp.zeros(K, m.dtype), jnp.full(K, -jnp.inf, m.dtype))
    upper = jnp.full(K, jnp.inf, m.dtype)
    z0 = jnp.clip(alpha_free / d, lower, upper)
    qp = jaxopt.BoxCDQP(maxiter=100, tol=1e-6, implicit_diff=False)
    return qp.run(z0, params_obj=(q, c), params_ineq=(lower, upper)).params * d


def cone_columns(model: LineModel) -> tuple[int, ...]:
    """The amplitude columns of the model's ratio ranges (each range's two cone coefficients,
    both >= 0; :class:`~lucijax.model.LineModel`)."""
    return tuple(j for jp, jd, *_ in model.ratio_pairs for j in (jp, jd))


def cone_solve(m, y, columns: tuple[int, ...]):
    """Least-squares coefficients of the columns ``m`` for ``y`` with those of ``columns`` >= 0
    and the others free, exactly: the best (smallest residual) of the unconstrained solutions
    on every subset of ``columns`` held at zero that keeps the rest >= 0 (2^len(columns)
    small solves; the optimum of a convex QP is one of them). Piecewise smooth in ``m``:
    the variable projection of a fit whose ratio ranges must hold while it iterates."""
    K = m.shape[1]
    gram = m.T @ m
    d = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
    q = gram * d[:, None] * d[None, :]
    c = (m.T @ y) * d
    held = np.asarray(list(itertools.product((False, True), repeat=len(columns))), bool).reshape(-1, len(columns))
    zero = np.zeros((held.shape[0], K), bool)
    zero[:, list(columns)] = held  # per subset: the constrained columns held at zero
    keep = jnp.asarray(~zero)
    qs = jnp.where(keep[:, :, None] & keep[:, None, :], q[None], 0.0) + jax.vmap(jnp.diag)(jnp.asarray(zero, q.dtype))
    # every subset's system in one vmapped solve (one traced copy)
    coef = jax.vmap(lambda a, b: spd_solve(a, b, jitter=1e-6))(qs, jnp.where(keep, c[None], 0.0)) * d[None]
    coef = jnp.where(keep, coef, 0.0)
    rss = jnp.sum((y[None, :] - coef @ m.T) ** 2, axis=1)
    feasible = jnp.all(jnp.where(jnp.asarray(zero[:, list(columns)]), True, coef[:, list(columns)] >= 0), axis=1)
    best = jnp.argmin(jnp.where(feasible, rss, jnp.inf))
    return coef[best]


def truncated_normal_moments(mu, sd, lo, hi):
    """Mean and variance of a normal ``N(mu, sd^2)`` truncated to ``[lo, hi]`` (float32-safe:
    the closed form in the bulk, a truncated exponential where the interval lies far in a tail
    or is narrow against ``sd``, whose log-density is then close to linear over it)."""
    a = (lo - mu) / sd
    b = (hi - mu) / sd
    flip = a + b < 0  # reflect so that the interval lies on the upper side of the mean
    a, b = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    w = b - a
    lq_a, lq_b = log_ndtr(-a), log_ndtr(-b)
    rest = jnp.maximum(1.0 - jnp.exp(lq_b - lq_a), 1e-30)  # Z / Q(a)
    log_phi = lambda x: -0.5 * x**2 - 0.5 * np.log(2.0 * np.pi)  # noqa: E731
    la = jnp.exp(log_phi(a) - lq_a) / rest
    lb = jnp.exp(log_phi(b) - lq_a) / rest
    bulk_mean = la - lb
    bulk = 1.0 + a * la - b * lb - (la - lb) ** 2

    def exponential(rate):  # mean (from a) and variance of an exponential of ``rate`` truncated to a width w
        s = jnp.maximum(rate * w, 0.0)
        s_mid = jnp.clip(s, 0.1, 60.0)
        g = jnp.where(s < 0.1, 1.0 / 12.0 - s**2 / 240.0, 1.0 / s_mid**2 - 0.25 / jnp.sinh(0.5 * s_mid) ** 2)
        h = jnp.where(s < 0.1, 0.5 - s / 12.0, 1.0 / s_mid - 1.0 / jnp.expm1(s_mid))
        var = jnp.where(s > 60.0, 1.0 / jnp.maximum(rate, 1e-30) ** 2, w**2 * g)
        return jnp.where(s > 60.0, 1.0 / jnp.maximum(rate, 1e-30), w * h), var

    tail_mean, tail_var = exponential(a + 2.0 / jnp.maximum(a, 1.0))  # the tail's mean excess 1/a - 2/a^3: rate a + 2/a
    narrow_mean, narrow_var = exponential(0.5 * (a + b))
    mean = a + jnp.where(a > 6.0, tail_mean, jnp.where(w < 0.5, narrow_mean, bulk_mean - a))
    var = jnp.where(a > 6.0, tail_var, jnp.where(w < 0.5, narrow_var, bulk))
    mean = jnp.where(flip, -mean, mean)
    return mu + sd * mean, jnp.clip(var, 0.0, 1.0) * sd**2


def truncated_normal_variance(mu, sd, lo, hi):
    """Variance of a normal ``N(mu, sd^2)`` truncated to ``[lo, hi]`` (:func:`truncated_normal_moments`)."""
    return truncated_normal_moments(mu, sd, lo, hi)[1]


def ratio_truncated_covariance(model: LineModel, cov, delta, alpha, n_nonlinear: int):
    """The Laplace covariance ``cov`` (of ``[theta, alpha]``) of a fit with ratio ranges,
    truncated to them, and the mean of that truncated posterior less the fit's values,
    ``(cov, shift)``: per range, the cone fraction ``t = c_hi / (c_lo + c_hi)`` (the ratio
    ``lo + t (hi - lo)``) has the Gaussian ``N(mu_t, var_t)`` of the unbounded likelihood
    (``mu_t`` from the unbounded Gauss-Newton step ``delta`` from the fit, which an active
    bound holds back), truncated to ``[0, 1]``; every parameter is linear in ``t`` given the others, so
    the covariance loses ``w w^T (1 - var_trunc / var_t) / var_t`` (``w = cov grad t``) and
    the parameters move by ``w (mean_trunc - t) / var_t``.
    Inside its range, far from the bounds, a ratio changes nothing; at a bound, the errors
    approach those at the fixed ratio, and the estimate moves from the bound (the MAP) into
    the range by the truncated posterior's mean (the MAP at a bound is an end of the
    posterior, not its centre: velocity pulls of such fits had medians of -0.8 to +1.7);
    an unconstrained ratio leaves the spread of a uniform one."""
    D = cov.shape[0]
    shift = jnp.zeros(D, cov.dtype)
    for jp, jd, *_ in model.ratio_pairs:
        i, k = n_nonlinear + jp, n_nonlinear + jd
        c_lo, c_hi = alpha[jp], alpha[jd]
        total = c_lo + c_hi
        ok = total > 0
        total = jnp.where(ok, total, 1.0)
        t = c_hi / total
        grad = jnp.zeros(D, cov.dtype).at[i].set(-c_hi / total**2).at[k].set(c_lo / total**2)
        w = cov @ grad
        var_t = grad @ w
        ok = ok & (var_t > 0) & jnp.isfinite(var_t)
        var_t = jnp.where(ok, var_t, 1.0)
        mu_t = t + grad @ delta
        m_trunc, v_trunc = truncated_normal_moments(mu_t, jnp.sqrt(var_t), 0.0, 1.0)
        shrink = jnp.where(ok, 1.0 - jnp.minimum(v_trunc / var_t, 1.0), 0.0)
        shift = shift + w * jnp.where(ok, (m_trunc - t) / var_t, 0.0)
        cov = cov - jnp.outer(w, w) * (shrink / var_t)
    return cov, shift


#: Ratios (cone fractions t in [0, 1], evenly spaced) at which a fit with a ratio range
#: re-fits the kinematics to map the doublet's velocity-ratio valley.
RATIO_NODES = 7

#: Gauss-Newton steps of each node's re-fit from its Laplace prediction (4 changed nothing
#: on the broad SN1 cube of ``benchmarks/RESULTS.md``, issue 20).
RATIO_STEPS = 2


def ratio_profile_covariance(model: LineModel, columns, y, u_hat, lo_u, hi_u, to_internal, to_external, cov, cov_trunc,
                             shift_trunc, alpha, noise2, n_nonlinear: int):
    """Posterior mean shift and covariance of a fit with ratio ranges where the data leave a
    ratio loosely constrained (a blended doublet: broad lines), ``(cov, shift)``.

    Per range, the kinematics are re-fitted (:data:`RATIO_STEPS` Gauss-Newton steps from the
    Laplace prediction) at :data:`RATIO_NODES` ratios across the range; the posterior over
    the ratio (flat prior in the ratio), ``exp(-chi2(t) / 2)`` on the nodes, gives the mean
    of every parameter (``shift``: that mean less the fit's values) and its spread along the
    valley, whose chi2 is far from quadratic over the range, on top of the covariance at a
    fixed ratio. There the MAP sits at an end of the range on a nearly flat valley, tens of
    km/s from the truth; the posterior mean does not.

    The ratio's spread, the larger of its truncated Laplace error and its spread over the
    nodes, decides: below half a node spacing the truncated Laplace ``cov_trunc`` and its
    mean ``shift_trunc`` stand (the nodes cannot resolve the posterior); from one spacing on,
    the nodes' mean and covariance (the trapezoid rule over nodes one posterior std apart
    already gives the moments of a smooth posterior to a few per cent: a brute-force grid of
    the posterior, ``tests/test_ratio_ranges.py``); in between the two are blended. (Blending from one to two
    spacings on the Laplace error alone, as before, left velocities up to ~2 posterior std
    from the posterior mean, and the Laplace error misses a valley the nodes see.)"""
    P = n_nonlinear
    K = alpha.shape[0]
    D = cov.shape[0]
    theta_hat = to_external(u_hat)
    p_hat = jnp.concatenate([theta_hat, alpha])
    nodes = np.linspace(0.0, 1.0, RATIO_NODES)
    trap = np.full(RATIO_NODES, 1.0)
    trap[[0, -1]] = 0.5
    spacing = 1.0 / (RATIO_NODES - 1)
    cones = cone_columns(model)
    shift = shift_trunc
    for jp, jd, *_ in model.ratio_pairs:
        keep = [j for j in range(K) if j != jd]  # the doublet's one column at a fixed ratio sits at jp
        at = keep.index(jp)
        red_cones = tuple(keep.index(j) for j in cones if j != jd)
        c_lo, c_hi = alpha[jp], alpha[jd]
        total = c_lo + c_hi
        ok = total > 0
        total = jnp.where(ok, total, 1.0)
        t_hat = c_hi / total
        grad = jnp.zeros(D, cov.dtype).at[P + jp].set(-c_hi / total**2).at[P + jd].set(c_lo / total**2)
        w = cov @ grad
        var_t = grad @ w
        ok = ok & (var_t > 0) & jnp.isfinite(var_t)
        var_t = jnp.where(ok, var_t, 1.0)
        slope = w[:P] / var_t  # d theta / d t along the valley (Laplace)

        def residual(u, t):
            m = columns(u)
            mixed = (1.0 - t) * m[:, jp] + t * m[:, jd]
            m_red = m[:, np.asarray(keep)].at[:, at].set(mixed)
            coef = cone_solve(m_red, y, red_cones)
            return y - m_red @ coef, coef

        def refit(t):  # the kinematics at the fixed ratio t (one traced copy, vmapped over the nodes)
            def evaluate(u):
                jac, (r, coef) = jax.jacfwd(lambda v: (lambda rc: (rc[0], rc))(residual(v, t)), has_aux=True)(u)
                return r, jac, coef

            def step(_, state):  # a Gauss-Newton step (none from the zero start state); keeps the best point
                u, r, jac, best_u, best_c2, best_coef = state
                h = jac.T @ jac
                delta = -spd_solve(h + 1e-3 * jnp.diag(jnp.maximum(jnp.diagonal(h), 1e-12)), jac.T @ r, jitter=1e-7)
                u = jnp.clip(u + delta, lo_u, hi_u)
                r, jac, coef = evaluate(u)  # one traced copy of the model, inside the loop
                c2 = jnp.sum(r**2)
                better = c2 < best_c2
                return (u, r, jac, jnp.where(better, u, best_u), jnp.where(better, c2, best_c2),
                        jnp.where(better, coef, best_coef))

            u = jnp.clip(to_internal(theta_hat + slope * (t - t_hat)), lo_u, hi_u)  # the Laplace prediction
            n = y.shape[0]
            state = (u, jnp.zeros(n, y.dtype), jnp.zeros((n, P), y.dtype), u, jnp.asarray(jnp.inf, y.dtype),
                     jnp.zeros(K - 1, y.dtype))
            _, _, _, best_u, best_c2, best_coef = jax.lax.fori_loop(0, RATIO_STEPS + 1, step, state)
            amp = best_coef[at]
            full = jnp.zeros(K, alpha.dtype).at[np.asarray(keep)].set(best_coef)
            full = full.at[jp].set(amp * (1.0 - t)).at[jd].set(amp * t)
            return jnp.concatenate([to_external(best_u), full]), best_c2

        pk, chi2 = jax.vmap(refit)(jnp.asarray(nodes, cov.dtype))
        logw = jnp.log(jnp.asarray(trap, cov.dtype)) - 0.5 * (chi2 - jnp.min(chi2)) / noise2
        wk = jnp.exp(logw - jnp.max(logw))
        wk = wk / jnp.sum(wk)
        dev = pk - p_hat[None, :]
        mean = wk @ dev
        spread = (dev * wk[:, None]).T @ dev - jnp.outer(mean, mean)
        cov_nodes = cov - jnp.outer(w, w) / var_t + spread
        sd_trunc = jnp.sqrt(jnp.maximum(grad @ cov_trunc @ grad, 0.0))
        t_nodes = jnp.asarray(nodes, cov.dtype)
        sd_nodes = jnp.sqrt(jnp.maximum(wk @ t_nodes**2 - (wk @ t_nodes) ** 2, 0.0))
        sd_t = jnp.maximum(sd_trunc, sd_nodes)
        blend = jnp.where(ok & jnp.all(jnp.isfinite(spread)), jnp.clip(2.0 * sd_t / spacing - 1.0, 0.0, 1.0), 0.0)
        cov_trunc = (1.0 - blend) * cov_trunc + blend * cov_nodes
        # the nodes' mean replaces this range's share of the truncated mean (w: the covariance's column of t, as there)
        m_trunc_t = grad @ shift_trunc
        shift = shift + blend * (mean - w * jnp.where(ok, m_trunc_t / var_t, 0.0))
    return cov_trunc, shift


def chunked_under_vmap(fun, chunk: int):
    """``fun`` (written for one spectrum, its arguments arrays) unchanged, except under
    ``vmap``: there it runs on ``chunk`` spectra at a time, the chunks one after another
    (``jax.lax.map(..., batch_size=chunk)``), instead of the whole batch at once. For a loop
    whose trip count is the batch's slowest member (a ``while_loop`` under ``vmap``), that
    bounds the wasted trips by the chunk's slowest member. Every spectrum's result is the one
    it would have in a batch of ``chunk``. ``chunk`` <= 0: ``fun`` itself."""
    if chunk <= 0:
        return fun
    from jax import custom_batching

    wrapped = custom_batching.custom_vmap(fun)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *args):
        args = tuple(a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a)) for a, b in zip(args, in_batched))
        out = jax.lax.map(lambda xs: fun(*xs), args, batch_size=min(chunk, axis_size))
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped


def compacted_under_vmap(start, run, done, limit: int, first: int, group: int):
    """A loop written for one spectrum as three functions: ``start(*args)`` gives its state,
    ``run(state, limit, *args)`` iterates it until it stops by itself or its step counter
    passes ``limit``, and ``done(state, limit)`` says whether it has. Returns
    ``f(*args) = run(start(*args), limit, *args)``, the final state.

    Unbatched that is all. Under ``vmap`` a ``while_loop`` runs until the batch's slowest
    member stops, the others waiting: here the whole batch runs its first ``first`` steps
    together (most members stop there; ``limit`` is then ``first - 1``), then the members
    still running are gathered ``group`` at a time (in batch order) and only those iterate
    on, each group until its own slowest stops; their states are scattered back. Each
    member's steps are the ones it makes alone (a stopped member's state does not change
    when its group goes on), so only the floating-point rounding of the wider or narrower
    batch differs."""
    from jax import custom_batching

    def f(*args):
        return run(start(*args), limit, *args)

    wrapped = custom_batching.custom_vmap(f)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *args):
        args = tuple(a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a)) for a, b in zip(args, in_batched))
        state = jax.vmap(start)(*args)
        state = jax.vmap(lambda st, *a: run(st, min(first - 1, limit), *a))(state, *args)
        k = min(group, axis_size)
        running = ~jax.vmap(lambda st: done(st, limit))(state)
        order = jnp.argsort(~running, stable=True).astype(jnp.int32)  # the running members first
        n_running = jnp.sum(running).astype(jnp.int32)

        def step(carry):
            g, state = carry
            idx = jax.lax.dynamic_slice(order, (g * k,), (k,))  # clamped at the end: stopped members, unchanged
            sub = jax.tree_util.tree_map(lambda x: x[idx], state)
            sub = jax.vmap(lambda st, *a: run(st, limit, *a))(sub, *(a[idx] for a in args))
            return g + 1, jax.tree_util.tree_map(lambda x, y: x.at[idx].set(y), state, sub)

        _, state = jax.lax.while_loop(lambda carry: carry[0] * k < n_running, step, (jnp.zeros((), jnp.int32), state))
        return state, jax.tree_util.tree_map(lambda _: True, state)

    return wrapped


def _lm_parts(model: LineModel, ys, mask, fwhm, lo_u, hi_u):
    """One spectrum's pieces of the fit in the internal parameters ``u``: the masked design
    matrix, the projected residual with its Jacobian, and the chi2 decrease (in units of the
    residual variance) that a projected Gauss-Newton step from ``u`` predicts."""
    spec = model.spec
    G, has_b = spec.n_groups, spec.has_broadening

    def columns(u):
        return model.design_matrix(_to_external(u, has_b, G), fwhm) * mask[:, None]

    cones = cone_columns(model)

    def project(m, y):
        # with ratio ranges, their cones hold while the fit iterates (else the velocity
        # walks along the doublet's velocity-ratio valley to ratios outside the range)
        return cone_solve(m, y, cones) if cones else linear_solve(m, y)

    def residual(u):
        m = columns(u)
        r = ys * mask - m @ project(m, ys * mask)
        return (r, m), (r, m)

    def value_and_jac(u):
        """The projected residual and its Jacobian, with the design matrix and its own
        Jacobian (n_channels, n_linear, n_nonlinear) that they are made of (the fit's
        Laplace errors at the final point take them from the loop: no second evaluation)."""
        (jac, dm), (r, m) = jax.jacfwd(residual, has_aux=True)(u)
        return r, jac, m, dm

    def gauss_newton_decrease(u, r, jac):
        g = jac.T @ r
        h = jac.T @ jac
        step = -spd_solve(h + 1e-6 * jnp.diag(jnp.maximum(jnp.diagonal(h), 1e-12)), g, jitter=1e-7)
        step = jnp.clip(u + step, lo_u, hi_u) - u
        return -(g @ step) - 0.5 * step @ (h @ step)

    return columns, value_and_jac, gauss_newton_decrease


def fit_spectrum(model: LineModel, settings: FitSettings, y, fwhm_cm1, theta_start, theta_lo, theta_hi,
                 with_covariance: bool = False):
    """Fit one spectrum (window channels): a :class:`PixelFit`, and with
    ``with_covariance`` also the covariance (D, D) of all parameters ``[theta, alpha]``
    (velocities, broadenings, then the linear parameters in the spectrum's flux unit) as a
    :class:`ScaledCovariance`.

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
    if has_b:  # b = sqrt(u) has an infinite derivative at u = 0: no step could leave a start there
        u0 = jnp.concatenate([u0[:G], jnp.maximum(u0[G:], jnp.minimum(1e-6 * hi_u[G:], hi_u[G:]))])

    cones = cone_columns(model)
    dof = jnp.maximum(n_valid - P - K, 1.0)

    def lm_start(u0, ys, mask, fwhm, lo_u, hi_u, dof):
        """The Levenberg-Marquardt loop's state before the start is evaluated (every
        per-spectrum value an argument: :func:`chunked_under_vmap` and
        :func:`compacted_under_vmap` batch it)."""
        n = ys.shape[0]
        # no point accepted (the start not finite): NaN columns, a SINGULAR fit
        return (jnp.asarray(0), u0, jnp.full(n, jnp.inf, dtype), jnp.zeros((n, P), dtype),
                jnp.asarray(1e-3, dtype), jnp.asarray(False), u0, jnp.full((n, K), jnp.nan, dtype),
                jnp.full((n, K, P), jnp.nan, dtype))

    def lm_run(state, limit, u0, ys, mask, fwhm, lo_u, hi_u, dof):
        """The loop from ``state`` until the pixel settles or ``limit`` steps after the start."""
        _, value_and_jac, gauss_newton_decrease = _lm_parts(model, ys, mask, fwhm, lo_u, hi_u)

        def settled(u, r, jac):
            return gauss_newton_decrease(u, r, jac) < settings.stop_chi2 * jnp.sum(r**2) / dof

        def iterate(state):
            # evaluate the trial point, keep it if it lowers chi2, then propose the next one;
            # the first trial is the start (the residual is traced once, inside the loop)
            i, u, r, jac, lam, _, u_try, m, dm = state
            r_try, jac_try, m_try, dm_try = value_and_jac(u_try)
            better = (jnp.sum(r_try**2) < jnp.sum(r**2)) & jnp.all(jnp.isfinite(r_try)) & jnp.all(jnp.isfinite(jac_try))
            u = jnp.where(better, u_try, u)
            r = jnp.where(better, r_try, r)
            jac = jnp.where(better, jac_try, jac)
            m = jnp.where(better, m_try, m)
            dm = jnp.where(better, dm_try, dm)
            lam = jnp.where(i == 0, lam, jnp.where(better, jnp.maximum(lam * 0.3, 1e-7), lam * 10.0))
            g = jac.T @ r
            h = jac.T @ jac
            dh = jnp.maximum(jnp.diagonal(h), 1e-12)
            delta = -spd_solve(h + lam * jnp.diag(dh), g, jitter=1e-7)
            return i + 1, u, r, jac, lam, settled(u, r, jac), jnp.clip(u + delta, lo_u, hi_u), m, dm

        # at most n_iter steps after the start; a pixel stops once settled (under vmap, a batch
        # (or chunk) runs until its last pixel stops, and the settled ones keep their state)
        return jax.lax.while_loop(lambda st: (st[0] <= limit) & ~st[5], iterate, state)

    def lm(u0, ys, mask, fwhm, lo_u, hi_u, dof):
        """The whole loop from ``u0``: the best point, its residual and Jacobian, the design
        matrix there and its Jacobian."""
        args = (u0, ys, mask, fwhm, lo_u, hi_u, dof)
        _, u, r, jac, _, _, _, m, dm = lm_run(lm_start(*args), settings.n_iter, *args)
        return u, r, jac, m, dm

    lm_args = (u0, ys, mask, fwhm, lo_u, hi_u, dof)
    if settings.lm_chunk > 0 and settings.lm_first > 0:
        loop = compacted_under_vmap(lm_start, lm_run, lambda st, limit: st[5] | (st[0] > limit), settings.n_iter,
                                    settings.lm_first, settings.lm_chunk)
        _, u, r, jac, _, _, _, m, dm = loop(*lm_args)
    else:
        u, r, jac, m, dm = chunked_under_vmap(lm, settings.lm_chunk)(*lm_args)
    columns, _, gauss_newton_decrease = _lm_parts(model, ys, mask, fwhm, lo_u, hi_u)
    theta = _to_external(u, has_b, G)

    # -- convergence: remaining predicted chi2 decrease of a projected Gauss-Newton step
    predicted_decrease = gauss_newton_decrease(u, r, jac)

    # -- final amplitudes (>= 0 for lines) with jaxopt's box-constrained QP; m = columns(u)
    alpha_free = linear_solve(m, ys * mask)
    if settings.nonneg_amplitudes or cones:  # a ratio range's cone stays >= 0 without nonneg_amplitudes too
        bounded = np.arange(K) < (spec.n_amplitudes if settings.nonneg_amplitudes else 0)
        bounded[list(cones)] = True
        alpha = nonneg_amplitudes(m, ys * mask, alpha_free, spec.n_amplitudes, bounded)
    else:
        alpha = alpha_free
    resid = ys * mask - m @ alpha

    # -- Laplace approximation: Fisher matrix of all parameters (v, b, alpha), in units of
    #    the inverse noise variance (the noise is estimated below)
    p_hat = jnp.concatenate([theta, alpha])
    # d model / d alpha is the design matrix itself; d model / d theta = (dm / du alpha) du / dtheta
    # (u = (v, b^2)), from the loop's last accepted evaluation
    du_dtheta = jnp.concatenate([jnp.ones(G, dtype), 2.0 * theta[G:]]) if has_b else jnp.ones(P, dtype)
    jfull = jnp.concatenate([jnp.einsum("nkp,k->np", dm, alpha) * du_dtheta[None, :], m], axis=1)
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
    noise_s = jnp.maximum(noise_s, noise_floor(ys * mask))
    chi2_red = jnp.sum(resid**2) / noise_s**2 / dof
    cov = cov_unit * noise_s**2
    cov_laplace, alpha_map = cov, alpha  # the detection's: amplitudes against zero at the MAP, whatever the ratio's spread
    if cones:  # the posterior inside the ratio ranges, not the unbounded Laplace; a loose ratio: its mean
        cov_trunc, shift_trunc = ratio_truncated_covariance(model, cov, cov_unit @ (jfull.T @ resid), alpha, P)
        cov, shift = ratio_profile_covariance(model, columns, ys * mask, u, lo_u, hi_u, lambda th: _to_internal(th, has_b, G),
                                       lambda v: _to_external(v, has_b, G), cov, cov_trunc, shift_trunc, alpha, noise_s**2,
                                       P)
        theta, alpha = theta + shift[:P], alpha + shift[P:]
        p_hat = jnp.concatenate([theta, alpha])
    perr = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 0.0))
    perr = jnp.where(frozen, jnp.nan, perr)

    def derived(p):
        th, al = p[:P], p[P:]
        return jnp.concatenate([model.line_amplitudes(th, al, fwhm), model.line_fluxes_cm1(th, al, fwhm)])

    dq = derived(p_hat)
    jd = jax.jacfwd(derived)(p_hat)
    dq_err = jnp.sqrt(jnp.maximum(jnp.einsum("ip,pq,iq->i", jd, cov, jd), 0.0))
    L = spec.line_set.n_lines
    flux_corr = flux_correlations(jd[L:] @ cov @ jd[L:].T)
    # the linear parameters' covariance at the fitted kinematics (no kinematic uncertainty):
    # the Schur complement of the kinematic block of the covariance, a (P, P) solve
    c_tt = cov_unit[:P, :P] + jnp.diag(jnp.where(frozen[:P], 1.0, 0.0))
    c_at = cov_unit[P:, :P]
    cov_lin = cov_unit[P:, P:] - c_at @ jnp.linalg.solve(c_tt, c_at.T)
    null_err = null_flux_errors(jd[L:, P:], cov_lin * noise_s**2)  # flux is linear in alpha
    continuum_err = continuum_error(model, cov[P:, P:])

    # -- status
    converged = predicted_decrease / noise_s**2 < settings.convergence_chi2
    cov_ok = jnp.all(jnp.isfinite(cov)) & jnp.all(jnp.isfinite(perr) | frozen)
    na = spec.n_amplitudes
    # NaN (a singular covariance) is not "no line": it stays SINGULAR below
    no_line = detection_statistic(alpha_map[:na], cov_laplace[P : P + na, P : P + na]) < settings.detection_chi2
    status = jnp.where(~valid, Status.INVALID_INPUT,
             jnp.where(no_line, Status.NO_LINE,
             jnp.where(~cov_ok, Status.SINGULAR,
             jnp.where(jnp.any(vel_at_bound) | jnp.any(b_at_high), Status.AT_BOUND,
             jnp.where(~converged, Status.NOT_CONVERGED,
             jnp.where(jnp.any(b_at_low), Status.UNRESOLVED, Status.CONVERGED))))))
    status = status.astype(jnp.int32)

    nan = jnp.asarray(jnp.nan, dtype)

    def out(x, scale_by=1.0):
        return jnp.where(valid, x * scale_by, nan)

    noise = noise_s * scale
    amplitude = dq[:L] * scale
    broadening = theta[G:] if has_b else jnp.full(G, jnp.nan, dtype)
    broadening_err = perr[G:P] if has_b else jnp.full(G, jnp.nan, dtype)
    fit = PixelFit(
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
        flux_corr=out(flux_corr),
        flux_null_err_cm1=out(null_err, scale),
        continuum_err=out(continuum_err, scale),
    )
    if not with_covariance:
        return fit
    units = jnp.concatenate([jnp.ones(P, dtype), jnp.full(K, scale, dtype)])
    return fit, ScaledCovariance(out(cov), out(units))



__all__ = ["FitSettings", "PixelFit", "chunked_under_vmap", "compacted_under_vmap", "fit_spectrum", "linear_solve", "line_free_noise",
           "flux_correlations", "null_flux_errors", "continuum_error", "ScaledCovariance", "MAX_CORRELATED_LINES",
           "cone_solve", "truncated_normal_moments", "truncated_normal_variance", "ratio_truncated_covariance"]
