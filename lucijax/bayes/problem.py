"""One pixel's posterior: the parameters, the priors and the log density.

:class:`PixelProblem` is the posterior of one pixel for a :class:`~lucijax.model.LineModel`
(uniform priors on the non-linear parameters, velocity and broadening of each kinematic
group, and on the linear ones, line amplitudes and continuum coefficients; a Gaussian
likelihood with the pixel's noise, the MAP fit's robust noise estimate, and the channel
weights of the fit). :func:`pixel_data` builds the boxes of one pixel from its MAP fit and
:class:`Prior`. Everything is for ONE pixel; the engine vectorises it.

Priors (:class:`Prior`)
-----------------------
* ``kind='informed'`` (the seed paradigm's option 1): velocity and broadening uniform over
  ``mean +- k sigma`` (``k = width_sigma``, default 3) where (mean, sigma) come from the
  network that started the MAP fit (the MDN's posterior) when there is one, else from the
  MAP fit: ``mean = MAP``, ``sigma = fallback_error_scale x MAP error`` (default 2, with
  floors), clipped to the model's ranges (broadening >= 0).
* ``kind='broad'``: velocity uniform over the model's velocity range, broadening over its
  broadening range.
* Amplitudes (peak, per primary line) uniform over ``[0, amplitude_scale x max(max MAP
  amplitude, 3 noise)]``; continuum coefficients uniform over ``MAP +- continuum_scale x
  noise``: 10x wider than anything the data allow, so the posterior never feels them except
  through the amplitude >= 0 edge (the MAP fit's constraint too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lucijax.model import LineModel

PRIORS = ("informed", "broad")


@dataclass(frozen=True)
class Prior:
    """Priors of a pixel's posterior (see the module docstring).

    Attributes
    ----------
    kind : {'informed', 'broad'}
    width_sigma : float
        Half-width of the informed uniform prior, in prior sigmas.
    fallback_error_scale : float
        Without a network, prior sigma = this x the MAP error.
    min_velocity_sigma_kms, min_broadening_sigma_kms, unresolved_broadening_sigma_kms : float
        Floors of the fallback prior sigma (and its value when the MAP broadening error is
        undefined because the line was unresolved).
    amplitude_scale : float
        Amplitude prior upper bound = this x max(max MAP amplitude, 3 noise).
    continuum_scale : float
        Continuum prior = MAP +- this x noise.
    """

    kind: str = "informed"
    width_sigma: float = 3.0
    fallback_error_scale: float = 2.0
    min_velocity_sigma_kms: float = 2.0
    min_broadening_sigma_kms: float = 5.0
    unresolved_broadening_sigma_kms: float = 20.0
    amplitude_scale: float = 10.0
    continuum_scale: float = 10.0

    def __post_init__(self):
        if self.kind not in PRIORS:
            raise ValueError(f"unknown prior '{self.kind}': choose one of {', '.join(PRIORS)}")
        if not self.amplitude_scale > 0 or not self.continuum_scale > 0 or not self.width_sigma > 0:
            raise ValueError("prior widths (width_sigma, amplitude_scale, continuum_scale) must be > 0")


class PixelData(NamedTuple):
    """Everything a sampler needs about one pixel (fields gain a leading pixel axis in
    batches). ``lo``/``hi`` bound the raw parameter vector ``x = [non-linear, linear]``
    (for an ordered two-component model the second velocity is stored as its offset)."""

    y: jax.Array  # (n,) spectrum on the fit window, NaN replaced by 0
    mask: jax.Array  # (n,) channel weight: 1 / relative noise for valid channels (1 for flat noise), 0 otherwise
    fwhm: jax.Array  # () instrumental FWHM (cm-1, de-redshifted frame)
    noise: jax.Array  # ()
    lo: jax.Array  # (D,)
    hi: jax.Array  # (D,)
    x0: jax.Array  # (D,) start (inside the box)
    prop_mean: jax.Array  # (P,) proposal mean of the non-linear parameters (option 2)
    prop_sigma: jax.Array  # (P,)
    scale: jax.Array  # () flux unit of y, noise and the linear parameters (= the MAP noise)
    map_sigma: jax.Array  # (P,) the MAP fit's (Laplace) errors of the non-linear parameters, NaN if unknown
    #: (4,) an ordered two-component problem's one-component MAP (velocity, broadening) and
    #: their errors, where its proposal covers the one-component submodel (None otherwise)
    anchor: jax.Array | None = None


class PixelProblem:
    """The posterior of one pixel for a :class:`LineModel` (static, reused for every pixel).

    Parameters
    ----------
    line_model : LineModel
    ordered : bool
        Two kinematic groups whose raw parameters are ``(v1, delta, b1, b2)`` with
        ``v2 = v1 + delta``, ``delta > 0`` (no label switching).
    """

    def __init__(self, line_model: LineModel, ordered: bool = False):
        self.line_model = line_model
        spec = line_model.spec
        self.spec = spec
        self.n_nonlinear = spec.n_nonlinear
        self.n_linear = spec.n_linear
        self.n_amplitudes = spec.n_amplitudes
        self.dim = self.n_nonlinear + self.n_linear
        self.ordered = bool(ordered)
        if self.ordered and spec.n_groups != 2:
            raise ValueError("an ordered problem needs exactly two kinematic groups")

    # -- parameters ------------------------------------------------------------------
    def physical_theta(self, t):
        """The line model's (velocities, broadenings) of the raw non-linear parameters ``t``
        (an ordered problem's second velocity is stored as its offset)."""
        return t.at[1].set(t[0] + t[1]) if self.ordered else t

    def theta_alpha(self, x):
        """(theta = [velocities, broadenings], alpha = [amplitudes, continuum]) of a raw
        vector."""
        P = self.n_nonlinear
        return self.physical_theta(x[:P]), x[P:]

    def log_likelihood(self, x, d: PixelData):
        theta, alpha = self.theta_alpha(x)
        mu = self.line_model.spectrum(theta, alpha, d.fwhm)
        r = d.mask * (d.y - mu) / d.noise  # channel noise: noise / weight
        used = d.mask > 0
        n = jnp.sum(used)
        log_weights = jnp.sum(jnp.log(jnp.where(used, d.mask, 1.0)))
        return -0.5 * jnp.sum(r * r) - n * (jnp.log(d.noise) + 0.5 * math.log(2 * math.pi)) + log_weights

    def log_posterior_given_columns(self, x, columns, d: PixelData):
        """:meth:`log_posterior` of ``x`` whose design matrix at its (physical) non-linear
        parameters, times the channel weights (``design_matrix * d.mask[:, None]``), the
        caller has already computed (the option-2 proposal's conditional)."""
        P = self.n_nonlinear
        r = (d.mask * d.y - columns @ x[P:]) / d.noise
        used = d.mask > 0
        n = jnp.sum(used)
        log_weights = jnp.sum(jnp.log(jnp.where(used, d.mask, 1.0)))
        loglik = -0.5 * jnp.sum(r * r) - n * (jnp.log(d.noise) + 0.5 * math.log(2 * math.pi)) + log_weights
        lp = self.log_prior(x, d)
        return jnp.where(jnp.isfinite(lp) & jnp.isfinite(loglik), lp + loglik, -jnp.inf)

    def log_prior(self, x, d: PixelData):
        inside = jnp.all((x >= d.lo) & (x <= d.hi))
        return jnp.where(inside, -jnp.sum(jnp.log(d.hi - d.lo)), -jnp.inf)

    def log_posterior(self, x, d: PixelData):
        """Unnormalised log posterior in the raw (constrained) parameters."""
        lp = self.log_prior(x, d)
        return jnp.where(jnp.isfinite(lp), lp + self.log_likelihood(jnp.clip(x, d.lo, d.hi), d), -jnp.inf)

    def model(self, d: PixelData):
        """The numpyro model of one pixel."""
        import numpyro
        import numpyro.distributions as dist

        P = self.n_nonlinear
        nonlinear = numpyro.sample("nonlinear", dist.Uniform(d.lo[:P], d.hi[:P]).to_event(1))
        linear = numpyro.sample("linear", dist.Uniform(d.lo[P:], d.hi[P:]).to_event(1))
        theta, alpha = self.theta_alpha(jnp.concatenate([nonlinear, linear]))
        mu = self.line_model.spectrum(theta, alpha, d.fwhm)
        used = d.mask > 0
        channel_noise = d.noise / jnp.where(used, d.mask, 1.0)
        numpyro.sample("y", dist.Normal(mu, channel_noise).mask(used).to_event(1), obs=d.y)

    def _params(self, z):
        P = self.n_nonlinear
        return {"nonlinear": z[..., :P], "linear": z[..., P:]}

    def potential(self, z, d: PixelData):
        """numpyro's potential energy (-log density incl. Jacobian) of the model at the
        unconstrained vector ``z``."""
        from numpyro.infer.util import potential_energy

        return potential_energy(self.model, (d,), {}, self._params(z))

    @staticmethod
    def to_unconstrained(x, d: PixelData):
        p = jnp.clip((x - d.lo) / (d.hi - d.lo), 1e-6, 1 - 1e-6)
        return jnp.log(p) - jnp.log1p(-p)

    @staticmethod
    def to_constrained(z, d: PixelData):
        return d.lo + (d.hi - d.lo) * jax.nn.sigmoid(z)

    # -- derived quantities -------------------------------------------------------------
    def derived(self, x, d: PixelData):
        """Per sample: velocities (G), broadenings (B), line amplitudes (L), fluxes (L, cm-1),
        continuum at the window centre."""
        lm = self.line_model
        theta, alpha = self.theta_alpha(x)
        v, b = lm.split_theta(theta)
        amp = lm.line_amplitudes(theta, alpha, d.fwhm)
        flux = lm.line_fluxes_cm1(theta, alpha, d.fwhm)
        return v, b, amp, flux, lm.continuum_at_centre(alpha)


class MapValues(NamedTuple):
    """What a posterior takes from one pixel's MAP fit (the engine's per-pixel inputs)."""

    velocity_kms: jax.Array  # (G,)
    velocity_err_kms: jax.Array
    broadening_kms: jax.Array  # (B,): per broadening group
    broadening_err_kms: jax.Array
    linear: jax.Array  # (K,)
    noise: jax.Array  # ()


def map_fallback_prior(fit: MapValues, prior: Prior, has_broadening: bool):
    """(mean, sigma) of (velocity, broadening) from the MAP fit: mean = MAP, sigma =
    ``fallback_error_scale`` x MAP error with floors."""
    v, ve = fit.velocity_kms, fit.velocity_err_kms
    sv = jnp.where(jnp.isfinite(ve), prior.fallback_error_scale * ve, jnp.nan)
    sv = jnp.where(jnp.isfinite(sv), jnp.maximum(sv, prior.min_velocity_sigma_kms), 50.0)
    if not has_broadening:
        return v, sv
    b, be = fit.broadening_kms, fit.broadening_err_kms
    sb = prior.fallback_error_scale * be
    sb = jnp.where(jnp.isfinite(sb), jnp.maximum(sb, prior.min_broadening_sigma_kms), prior.unresolved_broadening_sigma_kms)
    return jnp.concatenate([v, b]), jnp.concatenate([sv, sb])


def pixel_data(problem: PixelProblem, prior: Prior, ranges, y, fwhm, fit: MapValues, prior_mean=None, prior_sigma=None,
               broad: bool | None = None, proposal_sigma=None) -> PixelData:
    """Boxes, start and proposal of ONE pixel.

    Parameters
    ----------
    problem : PixelProblem (one component, not ordered)
    prior : Prior
    ranges : ((vmin, vmax), (bmin, bmax))
        The model's velocity and broadening ranges.
    y : (n,) window spectrum; fwhm : () instrumental FWHM (de-redshifted frame)
    fit : MapValues of the pixel's MAP fit
    prior_mean, prior_sigma : (P,) arrays, optional
        Velocity/broadening prior (a network's posterior); default :func:`map_fallback_prior`.
    broad : bool, optional
        Broad velocity/broadening box (default: ``prior.kind == 'broad'``).
    proposal_sigma : (P,) array, optional
        Sigma of the option-2 proposal before its inflation (default ``prior_sigma``).
    """
    f32 = jnp.float32
    y = jnp.asarray(y, f32)
    finite, mask = problem.line_model.channel_mask(y)  # mask: the channel weights
    P, K = problem.n_nonlinear, problem.n_linear
    G, B = problem.spec.n_groups, problem.spec.n_broadening
    has_b = problem.spec.has_broadening
    if broad is None:
        broad = prior.kind == "broad"
    if prior_mean is None:
        prior_mean, prior_sigma = map_fallback_prior(fit, prior, has_b)
    (vlo, vhi), (blo, bhi) = ranges
    phys_lo = jnp.asarray([vlo] * G + [max(blo, 0.0)] * B, f32)
    phys_hi = jnp.asarray([vhi] * G + [bhi] * B, f32)
    if broad:
        t_lo, t_hi = phys_lo, phys_hi
    else:
        k = prior.width_sigma
        t_lo = jnp.clip(prior_mean - k * prior_sigma, phys_lo, phys_hi)
        t_hi = jnp.clip(prior_mean + k * prior_sigma, phys_lo, phys_hi)
        too_narrow = t_hi - t_lo < 1e-3
        t_hi = jnp.where(too_narrow, jnp.minimum(t_lo + 1.0, phys_hi), t_hi)
        t_lo = jnp.where(too_narrow, t_hi - 1.0, t_lo)
    noise = jnp.asarray(fit.noise, f32)
    lin = jnp.asarray(fit.linear, f32)
    n_amp = problem.n_amplitudes
    amp_top = prior.amplitude_scale * jnp.maximum(jnp.nanmax(jnp.abs(lin[:n_amp])), 3.0 * noise)
    a_lo = jnp.concatenate([jnp.zeros(n_amp, f32), lin[n_amp:] - prior.continuum_scale * noise])
    a_hi = jnp.concatenate([jnp.full(n_amp, amp_top, f32), lin[n_amp:] + prior.continuum_scale * noise])
    lo = jnp.concatenate([t_lo, a_lo])
    hi = jnp.concatenate([t_hi, a_hi])
    theta_map = jnp.concatenate([fit.velocity_kms] + ([fit.broadening_kms] if has_b else [])).astype(f32)
    x0 = jnp.concatenate([theta_map, lin])
    inner = 1e-4 * (hi - lo)
    x0 = jnp.clip(jnp.where(jnp.isfinite(x0), x0, 0.5 * (lo + hi)), lo + inner, hi - inner)
    prop_mean = jnp.clip(jnp.where(jnp.isfinite(prior_mean), prior_mean, theta_map), phys_lo, phys_hi)
    ps = prior_sigma if proposal_sigma is None else proposal_sigma
    prop_sigma = jnp.where(jnp.isfinite(ps) & (ps > 0), ps, 50.0)
    # work in units of the noise (float32 cannot square 1e-18 erg/cm2/s/A spectra)
    scale = jnp.where(jnp.isfinite(noise) & (noise > 0), noise, 1.0)
    lin_scale = jnp.concatenate([jnp.ones(P, f32), jnp.full(K, scale, f32)])
    y_s = jnp.where(finite, y, 0.0) / scale
    map_sigma = jnp.concatenate([fit.velocity_err_kms] + ([fit.broadening_err_kms] if has_b else []))
    return PixelData(*(jnp.asarray(a, f32) for a in (y_s, mask, fwhm, 1.0, lo / lin_scale, hi / lin_scale,
                                                    x0 / lin_scale, prop_mean, prop_sigma, scale, map_sigma)))


__all__ = ["Prior", "PRIORS", "PixelData", "PixelProblem", "MapValues", "map_fallback_prior", "pixel_data"]
