"""Bayesian posteriors of every pixel with numpyro (after the MAP fit).

One pixel's posterior is a numpyro model (:meth:`PixelProblem.model`) on the MAP fit's own
line model (:class:`lucijax.model.LineModel`): uniform priors on the non-linear parameters
(velocity, broadening of each kinematic group) and on the linear ones (line amplitudes,
continuum coefficients), and a Gaussian likelihood with the pixel's noise (the MAP fit's
robust noise estimate). Every sampler is written for ONE pixel and vectorised over pixels
once with ``jax.vmap`` (one compiled program per batch shape).

Priors
------
* ``prior='informed'`` (the seed paradigm's option 1): velocity and broadening uniform
  over ``mean +- k sigma`` (``k = prior_width_sigma``, default 3) where (mean, sigma) come
  from the MDN (``lucijax.mdn.load_predictor``) when it imports and has weights for the
  filter, else from the MAP fit: ``mean = MAP``, ``sigma = fallback_error_scale x MAP
  error`` (default 2, with floors ``min_velocity_sigma_kms``/``min_broadening_sigma_kms``),
  clipped to the physical/search limits (broadening >= 0).
* ``prior='broad'``: velocity uniform over the fit's velocity range, broadening over
  ``[0, broadening max]``.
* Amplitudes (peak, per primary line) uniform over ``[0, amplitude_scale x max(max MAP
  amplitude, 3 noise)]``; continuum coefficients uniform over ``MAP +- continuum_scale x
  noise`` -- both 10x wider than anything the data allow, so the posterior never feels them
  except through the amplitude >= 0 edge (the same constraint as the MAP fit).

Samplers (``BayesSettings.sampler``)
------------------------------------
* ``'nuts'``: numpyro's NUTS (``numpyro.infer.hmc.hmc``) per (pixel, chain), initialised
  at the MAP (tiny jitter), step size and diagonal mass matrix adapted in the warm-up.
* ``'ensemble'``: numpyro's affine-invariant ensemble sampler (``numpyro.infer.AIES``,
  emcee's stretch move), walkers initialised in a small ball around the MAP.
* ``'nested'``: nested sampling with jaxns 2.6 (the engine behind
  ``numpyro.contrib.nested_sampling``; called directly so that it can be ``jit``-ed and
  ``vmap``-ed over pixels), returning the log-evidence ``LOGZ``; posterior samples are an
  equal-weight resampling of the weighted dead points.
* ``'mh'`` (option 2): broad priors, and an independence Metropolis-Hastings kernel
  (:class:`IndependenceMH`) whose proposal is the MDN posterior for (velocity,
  broadening) -- a Student-t with the MDN mean and an inflated MDN sigma -- times, for the
  amplitudes and continuum, the exact Gaussian conditional of the linear parameters given
  (velocity, broadening) (variable projection), truncated to amplitudes >= 0 by the
  sequential (GHK) construction whose density is exact. With that proposal the acceptance
  ratio depends only on how well the MDN matches the *marginal* posterior of (velocity,
  broadening): the linear parameters, which make up most of the dimensions, are proposed
  from (almost exactly) their conditional posterior. After the warm-up the (velocity,
  broadening) part of the proposal is re-centred and re-scaled on the warm-up draws (fixed
  from then on, so the chain stays exact). The prior stays broad, so the MDN changes only
  the speed, not the answer.

Outputs per pixel: posterior medians, half the 16-84 % widths as errors, split R-hat (max
over parameters) and effective sample size (min) from :mod:`numpyro.diagnostics`, the
log-evidence (nested), and optionally the samples.

Component selection (:func:`select_components`): nested sampling of a one- and a
two-component model (every line twice; the second velocity is ``v1 + delta`` with
``delta > 0`` so the components cannot swap), broad priors on velocities and broadenings
for both, amplitudes bounded by what the spectrum allows (``evidence_amplitude_scale``),
``N = 2`` where ``log Z2 - log Z1 > evidence_threshold``.

Note: jaxns switches on ``jax_enable_x64`` when imported; this module imports it only for
nested sampling, restores the previous setting and runs jaxns inside ``jax.enable_x64``.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.fit.linalg import cholesky, spd_inverse
from lucijax.lines import LineSet
from lucijax.model import LineModel

log = logging.getLogger(__name__)

SAMPLERS = ("nuts", "ensemble", "nested", "mh")
PRIORS = ("informed", "broad")


@dataclass(frozen=True)
class BayesSettings:
    """Knobs of the Bayesian fit (static: one compilation per settings).

    Attributes
    ----------
    sampler : {'nuts', 'ensemble', 'nested', 'mh'}
    prior : {'informed', 'broad'}, optional
        Velocity/broadening prior: MDN (or MAP fallback) mean +- ``prior_width_sigma``
        sigma, or the whole search range. Default: 'broad' for ``'mh'`` (option 2: the MDN
        is its proposal), 'informed' for the other samplers (option 1).
    num_warmup, num_samples, num_chains : int
        Per chain (ensemble: per walker; ``num_chains`` is then the number of walkers).
    prior_width_sigma : float
        Half-width of the informed uniform prior in prior sigmas (option 1: 3).
    fallback_error_scale : float
        Without the MDN, prior sigma = this x the MAP error.
    min_velocity_sigma_kms, min_broadening_sigma_kms, unresolved_broadening_sigma_kms : float
        Floors of the fallback prior sigma (and its value when the MAP broadening error is
        undefined because the line was unresolved).
    amplitude_scale : float
        Amplitude prior upper bound = this x max(max MAP amplitude, 3 noise).
    evidence_amplitude_scale : float
        The same bound for the evidence of :func:`select_components` (default 2). A
        posterior never feels a bound far above the data, but the evidence pays for every
        unit of prior volume (the Occam factor), so there the bound must be what a line's
        amplitude can physically be: line profiles are non-negative except for the sinc's
        side lobes (deepest -0.217 of the peak), so no component's peak exceeds the
        spectrum's peak above its continuum by more than 1/(1 - 0.217) = 1.28x; the
        one-component MAP amplitude tracks that peak, and 2x leaves room for its noise.
    continuum_scale : float
        Continuum prior = MAP +- this x noise.
    max_tree_depth, target_accept_prob : NUTS.
    ensemble_walkers : int
        Walkers of the ensemble sampler (even, >= 2 x parameters).
    num_live_points : int or None
        Nested sampling live points (default 25 x parameters, numpyro's default).
    nested_max_samples : int
        Upper bound on the nested sampler's dead points.
    nested_slices_per_dim : float
        jaxns slice-sampling steps per new point, per dimension (jaxns' default 5 costs 5x
        more; 1 keeps log Z within its quoted error on the tests' analytic case).
    mh_proposal_df, mh_proposal_inflate : float
        Student-t degrees of freedom and sigma inflation of the option-2 proposal.
    mh_adapt_scale : float
        After the warm-up the option-2 proposal's scale is this x the warm-up draws'
        standard deviation (see ``_mh_pixel``).
    batch_size : int
        Pixels per compiled batch.
    seed : int
    """

    sampler: str = "nuts"
    prior: str | None = None
    num_warmup: int = 300
    num_samples: int = 500
    num_chains: int = 2
    prior_width_sigma: float = 3.0
    fallback_error_scale: float = 2.0
    min_velocity_sigma_kms: float = 2.0
    min_broadening_sigma_kms: float = 5.0
    unresolved_broadening_sigma_kms: float = 20.0
    amplitude_scale: float = 10.0
    evidence_amplitude_scale: float = 2.0
    continuum_scale: float = 10.0
    max_tree_depth: int = 6
    target_accept_prob: float = 0.8
    ensemble_walkers: int = 32
    num_live_points: int | None = None
    nested_max_samples: int = 20000
    nested_slices_per_dim: float = 1.0
    mh_proposal_df: float = 4.0
    mh_proposal_inflate: float = 1.5
    mh_adapt_scale: float = 1.2
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{self.sampler}': choose one of {', '.join(SAMPLERS)}")
        if self.prior is not None and self.prior not in PRIORS:
            raise ValueError(f"unknown prior '{self.prior}': choose one of {', '.join(PRIORS)}")
        if self.sampler in ("nuts", "mh") and self.num_chains < 1:
            raise ValueError("num_chains must be >= 1")
        if self.ensemble_walkers % 2:
            raise ValueError("ensemble_walkers must be even")

    @property
    def prior_kind(self) -> str:
        """The prior actually used ('broad' for 'mh' unless given)."""
        if self.prior is not None:
            return self.prior
        return "broad" if self.sampler == "mh" else "informed"


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
        self._compiled: dict = {}

    # -- parameters ------------------------------------------------------------------
    def theta_alpha(self, x):
        """(theta = [velocities, broadenings], alpha = [amplitudes, continuum]) of a raw
        vector."""
        P = self.n_nonlinear
        theta, alpha = x[:P], x[P:]
        if self.ordered:
            theta = theta.at[1].set(theta[0] + theta[1])
        return theta, alpha

    def log_likelihood(self, x, d: PixelData):
        theta, alpha = self.theta_alpha(x)
        mu = self.line_model.spectrum(theta, alpha, d.fwhm)
        r = d.mask * (d.y - mu) / d.noise  # channel noise: noise / weight
        used = d.mask > 0
        n = jnp.sum(used)
        log_weights = jnp.sum(jnp.log(jnp.where(used, d.mask, 1.0)))
        return -0.5 * jnp.sum(r * r) - n * (jnp.log(d.noise) + 0.5 * math.log(2 * math.pi)) + log_weights

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
        """Per sample: velocities (G), broadenings (G), line amplitudes (L), fluxes (L, cm-1),
        continuum at the window centre."""
        lm = self.line_model
        theta, alpha = self.theta_alpha(x)
        v, b = lm.split_theta(theta)
        amp = lm.line_amplitudes(theta, alpha, d.fwhm)
        flux = lm.line_fluxes_cm1(theta, alpha, d.fwhm)
        return v, b, amp, flux, lm.continuum_at_centre(alpha)


# ============================================================================ option 2
class IMHState(NamedTuple):
    z: jax.Array
    log_weight: jax.Array  # log target - log proposal at z
    accept_prob: jax.Array
    num_accepted: jax.Array
    rng_key: jax.Array


def _make_imh_kernel_base():
    from numpyro.infer.mcmc import MCMCKernel

    class IndependenceMH(MCMCKernel):
        """Independence Metropolis-Hastings: propose ``z' ~ q`` regardless of the current
        state and accept with ``min(1, [p(z') q(z)] / [p(z) q(z')])``.

        Parameters
        ----------
        log_density : callable ``z -> log p(z)`` (unnormalised target)
        proposal_sample : callable ``key -> (z, log q(z))``
        proposal_log_prob : callable ``z -> log q(z)`` (for the initial state)

        The kernel leaves ``p`` invariant for any proposal whose support covers it; it is
        efficient when ``q`` is close to ``p`` with heavier tails.
        """

        sample_field = "z"

        def __init__(self, log_density, proposal_sample, proposal_log_prob):
            self.log_density = log_density
            self.proposal_sample = proposal_sample
            self.proposal_log_prob = proposal_log_prob

        @property
        def model(self):
            return None

        def init(self, rng_key, num_warmup, init_params, model_args=(), model_kwargs={}):
            z = init_params
            lw = self.log_density(z) - self.proposal_log_prob(z)
            zero = jnp.zeros((), jnp.float32)
            return IMHState(z, lw, zero, jnp.zeros((), jnp.int32), rng_key)

        def sample(self, state, model_args=(), model_kwargs={}):
            key, k_prop, k_acc = jax.random.split(state.rng_key, 3)
            z_new, logq_new = self.proposal_sample(k_prop)
            lw_new = self.log_density(z_new) - logq_new
            lw_new = jnp.where(jnp.isnan(lw_new), -jnp.inf, lw_new)
            log_ratio = lw_new - state.log_weight
            accept_prob = jnp.where(jnp.isfinite(log_ratio), jnp.exp(jnp.minimum(log_ratio, 0.0)),
                                    jnp.where(log_ratio > 0, 1.0, 0.0))
            accept = jax.random.uniform(k_acc) < accept_prob
            z = jnp.where(accept, z_new, state.z)
            lw = jnp.where(accept, lw_new, state.log_weight)
            return IMHState(z, lw, accept_prob.astype(jnp.float32), state.num_accepted + accept.astype(jnp.int32), key)

        def get_diagnostics_str(self, state):
            return f"acc. prob={float(state.accept_prob):.2f}"

    return IndependenceMH


@functools.lru_cache(maxsize=1)
def _imh_class():
    return _make_imh_kernel_base()


def IndependenceMH(log_density, proposal_sample, proposal_log_prob):  # noqa: N802 (a class factory)
    """Build the independence Metropolis-Hastings numpyro kernel (see the class docstring:
    ``IndependenceMH(...).__class__.__doc__``)."""
    return _imh_class()(log_density, proposal_sample, proposal_log_prob)


def _std_t_logpdf(u, df):
    return (jax.scipy.special.gammaln((df + 1) / 2) - jax.scipy.special.gammaln(df / 2)
            - 0.5 * jnp.log(df * jnp.pi) - (df + 1) / 2 * jnp.log1p(u * u / df))


class VarProProposal:
    """Option-2 proposal for one pixel: Student-t on the non-linear parameters (mean and
    inflated sigma from the MDN), then the linear parameters from their Gaussian conditional
    given the non-linear ones, amplitudes truncated at their prior's lower edge by the
    sequential (Geweke-Hajivassiliou-Keane) construction along the Cholesky factor of the
    conditional covariance; its density is exact, so the MH step is exact.
    """

    #: Truncation points beyond this many sigma are clamped (float32 tail accuracy); the
    #: density accounts for the clamp, the target rejects what falls below the prior edge.
    MAX_TRUNCATION = 5.0

    def __init__(self, problem: PixelProblem, d: PixelData, df: float, inflate: float, mean=None, scale=None):
        if problem.ordered:
            raise NotImplementedError("the option-2 proposal is for one-component problems")
        self.p = problem
        self.d = d if mean is None else d._replace(prop_mean=mean)
        self.df = df
        self.scale = d.prop_sigma * inflate if scale is None else scale

    def _conditional(self, theta):
        """Mean, Cholesky factor of the covariance of the linear parameters given theta."""
        d = self.d
        m = self.p.line_model.design_matrix(theta, d.fwhm) * d.mask[:, None]
        w = 1.0 / d.noise**2
        gram = (m.T @ m) * w
        s = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
        cov = spd_inverse(gram * s[:, None] * s[None, :], jitter=1e-7) * s[:, None] * s[None, :]
        mean = cov @ (m.T @ (d.y * d.mask)) * w
        low = cholesky(cov, jitter=1e-9)
        return mean, low

    def _linear_pass(self, mean, low, alpha_or_None, key):
        """Walk the Cholesky factor: sample (key) or evaluate (alpha) the sequential
        truncated normal. Returns (alpha, log density)."""
        K = self.p.n_linear
        n_amp = self.p.n_amplitudes
        lo = self.d.lo[self.p.n_nonlinear:]
        keys = jax.random.split(key, K) if key is not None else None
        u = jnp.zeros(K, mean.dtype)
        logq = -jnp.sum(jnp.log(jnp.diagonal(low)))
        alpha = jnp.zeros(K, mean.dtype) if alpha_or_None is None else alpha_or_None
        for i in range(K):  # K is small and static
            partial_sum = mean[i] + jnp.dot(low[i, :i], u[:i])
            if i < n_amp:
                a = jnp.minimum((lo[i] - partial_sum) / low[i, i], self.MAX_TRUNCATION)
                log_tail = jax.scipy.special.log_ndtr(-a)  # log P(u >= a)
                if keys is not None:
                    uu = jax.random.uniform(keys[i], minval=1e-7, maxval=1.0)
                    ui = -jax.scipy.special.ndtri(jnp.exp(jnp.log(uu) + log_tail))
                    ui = jnp.maximum(ui, a)
                else:
                    ui = (alpha[i] - partial_sum) / low[i, i]
                logq = logq + jax.scipy.stats.norm.logpdf(ui) - log_tail
                logq = jnp.where(ui < a - 1e-6, -jnp.inf, logq)
            else:
                ui = jax.random.normal(keys[i]) if keys is not None else (alpha[i] - partial_sum) / low[i, i]
                logq = logq + jax.scipy.stats.norm.logpdf(ui)
            u = u.at[i].set(ui)
            if keys is not None:
                alpha = alpha.at[i].set(partial_sum + low[i, i] * ui)
        return alpha, logq

    def _theta_logq(self, t):
        u = (t - self.d.prop_mean) / self.scale
        return jnp.sum(_std_t_logpdf(u, self.df) - jnp.log(self.scale))

    def sample(self, key):
        k1, k2 = jax.random.split(key)
        t = self.d.prop_mean + self.scale * jax.random.t(k1, self.df, self.d.prop_mean.shape)
        mean, low = self._conditional(t)
        alpha, logq_a = self._linear_pass(mean, low, None, k2)
        return jnp.concatenate([t, alpha]), self._theta_logq(t) + logq_a

    def log_prob(self, x):
        P = self.p.n_nonlinear
        t, alpha = x[:P], x[P:]
        mean, low = self._conditional(t)
        _, logq_a = self._linear_pass(mean, low, alpha, None)
        return self._theta_logq(t) + logq_a


# ============================================================================ samplers
def _nuts_one_chain(problem: PixelProblem, s: BayesSettings, d: PixelData, key):
    from numpyro.infer.hmc import hmc

    k_init, k_run = jax.random.split(key)
    z0 = problem.to_unconstrained(d.x0, d) + 0.05 * jax.random.normal(k_init, d.x0.shape)
    init_kernel, sample_kernel = hmc(potential_fn=lambda z: problem.potential(z, d), algo="NUTS")
    state = init_kernel(z0, s.num_warmup, max_tree_depth=s.max_tree_depth, target_accept_prob=s.target_accept_prob,
                        rng_key=k_run)

    def body(st, _):
        st = sample_kernel(st)
        return st, (st.z, st.diverging, st.accept_prob, st.num_steps)

    _, (zs, div, acc, nsteps) = jax.lax.scan(body, state, None, length=s.num_warmup + s.num_samples)
    w = s.num_warmup
    x = problem.to_constrained(zs[w:], d)
    return dict(samples=x, n_divergent=jnp.sum(div[w:]), accept_rate=jnp.mean(acc[w:]),
                n_grad=jnp.sum(nsteps).astype(jnp.float32))


def _nuts_pixel(problem, s, d, key):
    out = jax.vmap(lambda k: _nuts_one_chain(problem, s, d, k))(jax.random.split(key, s.num_chains))
    return dict(samples=out["samples"], n_divergent=jnp.sum(out["n_divergent"]),
                accept_rate=jnp.mean(out["accept_rate"]), n_grad=jnp.sum(out["n_grad"]))


def _ensemble_pixel(problem, s, d, key):
    from numpyro.infer import AIES

    W = s.ensemble_walkers
    k_init, k_run = jax.random.split(key)
    z0 = problem.to_unconstrained(d.x0, d)[None, :] + 0.01 * jax.random.normal(k_init, (W, problem.dim))
    # AIES checks its move weights with a Python assert: build it on concrete values, not tracers
    with jax.ensure_compile_time_eval():
        kernel = AIES(potential_fn=lambda z: problem.potential(z, d), moves={AIES.StretchMove(): 1.0})
    state = kernel.init(jax.random.split(k_run, W), s.num_warmup, init_params=z0)

    def body(st, _):
        st = kernel.sample(st, (), {})
        return st, st.z

    state, zs = jax.lax.scan(body, state, None, length=s.num_warmup + s.num_samples)
    x = problem.to_constrained(zs[s.num_warmup:], d)  # (S, W, D)
    return dict(samples=jnp.swapaxes(x, 0, 1), n_divergent=jnp.zeros((), jnp.int32),
                accept_rate=state.inner_state.mean_accept_prob,
                n_grad=jnp.asarray(W * (s.num_warmup + s.num_samples), jnp.float32))


def _mh_chain(problem, s, d, key, x_start, n_steps, prop):
    kernel = IndependenceMH(lambda x: problem.log_posterior(x, d), prop.sample, prop.log_prob)
    state = kernel.init(key, 0, x_start)

    def body(st, _):
        st = kernel.sample(st)
        return st, (st.z, st.accept_prob)

    _, (xs, acc) = jax.lax.scan(body, state, None, length=n_steps)
    return xs, acc


def _mh_pixel(problem, s, d, key):
    """Option 2 for one pixel: ``num_chains`` independence-MH chains. Warm-up with the MDN
    proposal; then, if the warm-up moved (>= 20 accepted proposals over all chains), the
    proposal of (velocity, broadening) is re-centred and re-scaled on the pooled second half
    of the warm-up (``mh_adapt_scale`` x its standard deviation), else widened 2x. The
    kernel is fixed after the warm-up, so the draws target the posterior exactly."""
    C = s.num_chains
    P = problem.n_nonlinear
    k_init, k_warm, k_run = jax.random.split(key, 3)
    prop = VarProProposal(problem, d, s.mh_proposal_df, s.mh_proposal_inflate)
    x0, _ = jax.vmap(prop.sample)(jax.random.split(k_init, C))  # independent starts from the proposal
    x0 = jnp.where(jnp.isfinite(jax.vmap(lambda x: problem.log_posterior(x, d))(x0))[:, None], x0, d.x0[None, :])
    xw, accw = jax.vmap(lambda k, x: _mh_chain(problem, s, d, k, x, s.num_warmup, prop))(jax.random.split(k_warm, C), x0)
    half = xw[:, s.num_warmup // 2:, :P].reshape(-1, P)
    n_moves = jnp.sum(jnp.any(jnp.diff(xw, axis=1) != 0, axis=-1))
    adapt = (n_moves >= 20) & jnp.all(jnp.isfinite(half))
    mean = jnp.where(adapt, jnp.mean(half, axis=0), d.prop_mean)
    sd = jnp.maximum(jnp.std(half, axis=0), 1e-3)
    scale = jnp.where(adapt, s.mh_adapt_scale * sd, 2.0 * s.mh_proposal_inflate * d.prop_sigma)
    prop2 = VarProProposal(problem, d, s.mh_proposal_df, s.mh_proposal_inflate, mean=mean, scale=scale)
    xs, acc = jax.vmap(lambda k, x: _mh_chain(problem, s, d, k, x, s.num_samples, prop2))(
        jax.random.split(k_run, C), xw[:, -1])
    return dict(samples=xs, n_divergent=jnp.zeros((), jnp.int32), accept_rate=jnp.mean(acc),
                n_grad=jnp.asarray(C * (s.num_warmup + s.num_samples), jnp.float32),
                warmup_accept_rate=jnp.mean(accw), adapted=adapt)


def _import_jaxns():
    """Import jaxns without leaving ``jax_enable_x64`` switched on for the whole process
    (jaxns switches it on at import); its runs go through :func:`_x64`."""
    previous = bool(jax.config.jax_enable_x64)
    try:
        import jaxns  # noqa: F401
        import jaxns.public  # noqa: F401
    finally:
        jax.config.update("jax_enable_x64", previous)


def _x64():
    """Context in which jaxns runs (it accumulates log-evidences in float64)."""
    return jax.enable_x64(True)


def _nested_pixel(problem, s, d, key):
    import tensorflow_probability.substrates.jax as tfp
    from jaxns import Model, Prior, TerminationCondition
    from jaxns.public import DefaultNestedSampler

    D = problem.dim
    lo = d.lo.astype(jnp.float64)
    width = (d.hi - d.lo).astype(jnp.float64)

    def prior_model():
        u = yield Prior(tfp.distributions.Uniform(low=jnp.zeros(D), high=jnp.ones(D)), name="u")
        return u

    def loglik(u):
        x = (lo + width * u).astype(jnp.float32)
        return problem.log_likelihood(x, d).astype(jnp.float64)

    nlive = s.num_live_points or 25 * D
    ns = DefaultNestedSampler(model=Model(prior_model=prior_model, log_likelihood=loglik), num_live_points=nlive,
                              max_samples=s.nested_max_samples, devices=jax.local_devices()[:1],
                              s=s.nested_slices_per_dim)
    k_ns, k_res = jax.random.split(key)
    reason, state = ns(k_ns, term_cond=TerminationCondition(dlogZ=jnp.asarray(1e-2)))
    res = ns.to_results(termination_reason=reason, state=state, trim=False)
    n_valid = res.total_num_samples
    logw = jnp.where(jnp.arange(res.log_dp_mean.shape[0]) < n_valid, res.log_dp_mean, -jnp.inf)
    idx = jax.random.categorical(k_res, logw, shape=(s.num_samples,))
    u = res.samples["u"][idx]
    x = (lo + width * u).astype(jnp.float32)
    # log Z includes the prior normalisation: uniform priors on the box
    return dict(samples=x[None], n_divergent=jnp.zeros((), jnp.int32), accept_rate=jnp.asarray(jnp.nan, jnp.float32),
                n_grad=n_valid.astype(jnp.float32), logz=res.log_Z_mean.astype(jnp.float32),
                logz_err=res.log_Z_uncert.astype(jnp.float32), ess_nested=res.ESS.astype(jnp.float32))


_RUNNERS = {"nuts": _nuts_pixel, "ensemble": _ensemble_pixel, "mh": _mh_pixel, "nested": _nested_pixel}


def run_sampler(problem: PixelProblem, data: PixelData, settings: BayesSettings, key=None, *, keys=None) -> dict:
    """Run ``settings.sampler`` on a batch of pixels (``data`` fields with a leading pixel
    axis B), with ``key`` split over the pixels or one key per pixel (``keys``, shape
    (B, 2)): a pixel's result depends only on its data and its key. Returns numpy arrays: ``samples`` (B, chains, draws, D) of the raw parameters
    and per-pixel ``accept_rate``, ``n_divergent``, ``n_grad`` (gradient/likelihood
    evaluations), and for nested sampling ``logz``, ``logz_err``."""
    if settings.sampler == "mh" and problem.ordered:
        raise ValueError("the 'mh' sampler (MDN proposal) supports one-component models only")
    if settings.sampler == "ensemble" and settings.ensemble_walkers < 2 * problem.dim:
        log.warning("ensemble_walkers=%d < 2 x %d parameters", settings.ensemble_walkers, problem.dim)
    B = int(data.y.shape[0])
    ck = (settings, B, data.y.shape[1])
    fn = problem._compiled.get(ck)
    if fn is None:
        runner = _RUNNERS[settings.sampler]
        fn = jax.jit(jax.vmap(lambda d, k: runner(problem, settings, d, k)))
        problem._compiled[ck] = fn
    if keys is None:
        keys = jax.random.split(key, B)
    if settings.sampler == "nested":
        _import_jaxns()
        with _x64():
            out = fn(data, keys)
    else:
        out = fn(data, keys)
    return {k: np.asarray(v) for k, v in out.items()}


# ============================================================================ priors
def mdn_prior(plan, y, fwhm_cm1, filter_name):
    """(mean, sigma) arrays (B, 2) of (velocity, broadening) from the MDN, or None when
    ``lucijax.mdn`` is missing or has no weights for the filter."""
    if filter_name is None:
        return None
    try:
        from lucijax import mdn  # noqa: PLC0415

        axis_obs = (plan.grid.axis_rel_cm1 + plan.grid.ref_cm1) / (1.0 + plan.redshift)
        predict = mdn.load_predictor(filter_name, axis_obs, plan.redshift)
        # predict is for ONE spectrum and takes the de-redshifted FWHM (what the fit takes)
        mean, sigma = jax.jit(jax.vmap(predict))(jnp.asarray(y, jnp.float32), jnp.asarray(fwhm_cm1, jnp.float32))
        mean, sigma = np.asarray(mean, np.float64), np.asarray(sigma, np.float64)
        if mean.shape != (len(y), 2) or sigma.shape != (len(y), 2):
            raise ValueError(f"MDN returned shapes {mean.shape}, {sigma.shape}")
        if not np.all(np.isfinite(sigma)):
            raise ValueError("the network gives no sigma (point-estimate CNN)")
        return mean, sigma
    except Exception as err:  # noqa: BLE001 -- any failure means: fall back to the MAP
        log.info("MDN prior unavailable (%s: %s); using MAP +- k x MAP error", type(err).__name__, err)
        return None


def map_fallback_prior(map_fit: dict, settings: BayesSettings) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sigma) arrays (B, P) from the MAP fit: mean = MAP, sigma =
    ``fallback_error_scale`` x MAP error with floors."""
    v = np.asarray(map_fit["velocity_kms"], np.float64)
    ve = np.asarray(map_fit["velocity_err_kms"], np.float64)
    sv = np.where(np.isfinite(ve), settings.fallback_error_scale * ve, np.nan)
    sv = np.where(np.isfinite(sv), np.maximum(sv, settings.min_velocity_sigma_kms), 50.0)
    b = np.asarray(map_fit["broadening_kms"], np.float64)
    if np.all(np.isnan(b)):  # model without broadening (sinc)
        return v, sv
    be = np.asarray(map_fit["broadening_err_kms"], np.float64)
    sb = settings.fallback_error_scale * be
    sb = np.where(np.isfinite(sb), np.maximum(sb, settings.min_broadening_sigma_kms),
                  settings.unresolved_broadening_sigma_kms)
    return np.concatenate([v, b], axis=1), np.concatenate([sv, sb], axis=1)


def build_pixel_data(problem: PixelProblem, plan, y, fwhm_cm1, map_fit: dict, settings: BayesSettings,
                     prior_mean=None, prior_sigma=None, broad: bool | None = None, proposal_sigma=None) -> PixelData:
    """Boxes, starts and proposals of a batch of pixels.

    Parameters
    ----------
    problem : PixelProblem (one component, not ordered)
    plan : FitPlan (its settings give the search ranges)
    y : (B, n) window spectra; fwhm_cm1 : (B,) in the de-redshifted frame
    map_fit : dict of PixelFit fields (numpy, leading axis B) of the MAP fit
    prior_mean, prior_sigma : (B, P) arrays, optional
        Velocity/broadening prior (MDN); default :func:`map_fallback_prior`.
    broad : bool, optional
        Broad velocity/broadening box (default: ``settings.prior_kind == 'broad'``).
    proposal_sigma : (B, P) array, optional
        Sigma of the option-2 proposal before ``mh_proposal_inflate`` (default
        ``prior_sigma``: the MDN sigma).
    """
    y = np.asarray(y, np.float32)
    B = y.shape[0]
    finite, mask = (np.asarray(a) for a in problem.line_model.channel_mask(y))  # mask: the channel weights
    P, K = problem.n_nonlinear, problem.n_linear
    G = problem.spec.n_groups
    has_b = problem.spec.has_broadening
    fs = plan.settings
    if broad is None:
        broad = settings.prior_kind == "broad"
    if prior_mean is None:
        prior_mean, prior_sigma = map_fallback_prior(map_fit, settings)
    prior_mean = np.asarray(prior_mean, np.float64).reshape(B, P)
    prior_sigma = np.asarray(prior_sigma, np.float64).reshape(B, P)
    vlo, vhi = fs.velocity_range_kms
    blo, bhi = fs.broadening_range_kms
    phys_lo = np.array([vlo] * G + ([max(blo, 0.0)] * G if has_b else []))
    phys_hi = np.array([vhi] * G + ([bhi] * G if has_b else []))
    if broad:
        t_lo = np.broadcast_to(phys_lo, (B, P)).copy()
        t_hi = np.broadcast_to(phys_hi, (B, P)).copy()
    else:
        k = settings.prior_width_sigma
        t_lo = np.clip(prior_mean - k * prior_sigma, phys_lo, phys_hi)
        t_hi = np.clip(prior_mean + k * prior_sigma, phys_lo, phys_hi)
        too_narrow = t_hi - t_lo < 1e-3
        t_hi = np.where(too_narrow, np.minimum(t_lo + 1.0, phys_hi), t_hi)
        t_lo = np.where(too_narrow, t_hi - 1.0, t_lo)
    noise = np.asarray(map_fit["noise"], np.float64)
    lin = np.asarray(map_fit["linear"], np.float64)
    n_amp = problem.n_amplitudes
    amp_top = settings.amplitude_scale * np.maximum(np.nanmax(np.abs(lin[:, :n_amp]), axis=1), 3.0 * noise)
    a_lo = np.zeros((B, K))
    a_hi = np.zeros((B, K))
    a_hi[:, :n_amp] = amp_top[:, None]
    a_lo[:, n_amp:] = lin[:, n_amp:] - settings.continuum_scale * noise[:, None]
    a_hi[:, n_amp:] = lin[:, n_amp:] + settings.continuum_scale * noise[:, None]
    lo = np.concatenate([t_lo, a_lo], axis=1)
    hi = np.concatenate([t_hi, a_hi], axis=1)
    theta_map = np.concatenate([np.asarray(map_fit["velocity_kms"], np.float64)]
                               + ([np.asarray(map_fit["broadening_kms"], np.float64)] if has_b else []), axis=1)
    x0 = np.concatenate([theta_map, lin], axis=1)
    inner = 1e-4 * (hi - lo)
    x0 = np.clip(np.where(np.isfinite(x0), x0, 0.5 * (lo + hi)), lo + inner, hi - inner)
    prop_mean = np.clip(np.where(np.isfinite(prior_mean), prior_mean, theta_map), phys_lo, phys_hi)
    ps = prior_sigma if proposal_sigma is None else np.asarray(proposal_sigma, np.float64).reshape(B, P)
    prop_sigma = np.where(np.isfinite(ps) & (ps > 0), ps, 50.0)
    # work in units of the noise (float32 cannot square 1e-18 erg/cm2/s/A spectra)
    scale = np.where(np.isfinite(noise) & (noise > 0), noise, 1.0)
    lin_scale = np.concatenate([np.ones((B, P)), np.broadcast_to(scale[:, None], (B, K))], axis=1)
    lo, hi, x0 = lo / lin_scale, hi / lin_scale, x0 / lin_scale
    y_s = np.where(finite, y, 0.0) / scale[:, None]
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return PixelData(f32(y_s), f32(mask), f32(fwhm_cm1), f32(np.ones(B)), f32(lo), f32(hi), f32(x0),
                     f32(prop_mean), f32(prop_sigma), f32(scale))


# ============================================================================ summaries
def summarize(problem: PixelProblem, data: PixelData, run: dict) -> dict:
    """Per-pixel posterior medians and half 16-84 % widths of velocity, broadening, line
    amplitudes and fluxes; split R-hat (max) and ESS (min) over the raw parameters.

    Returns numpy arrays named like :class:`lucijax.fit.map.PixelFit` fields (so that
    :func:`lucijax.products.build_maps` turns them into maps) plus ``rhat_max``,
    ``ess_min``, ``accept_rate``, ``n_divergent`` and, for nested sampling, ``logz``.
    """
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    x = run["samples"]  # (B, C, S, D)
    B, C, S, D = x.shape
    derived = jax.jit(jax.vmap(jax.vmap(lambda xx, d: problem.derived(xx, d), in_axes=(0, None))))
    flat = jnp.asarray(x.reshape(B, C * S, D))
    v, b, amp, flux, cont = (np.asarray(a, np.float64) for a in derived(flat, data))
    sc = np.asarray(data.scale, np.float64)
    amp, flux, cont = amp * sc[:, None, None], flux * sc[:, None, None], cont * sc[:, None]

    def med_err(a):
        q = np.nanpercentile(a, [16, 50, 84], axis=1)
        return q[1], 0.5 * (q[2] - q[0])

    out = {}
    out["velocity_kms"], out["velocity_err_kms"] = med_err(v)
    out["broadening_kms"], out["broadening_err_kms"] = med_err(b) if problem.spec.has_broadening else (
        np.full_like(out["velocity_kms"], np.nan), np.full_like(out["velocity_kms"], np.nan))
    out["amplitude"], out["amplitude_err"] = med_err(amp)
    out["flux_cm1"], out["flux_err_cm1"] = med_err(flux)
    out["continuum"] = np.nanmedian(cont, axis=1)
    out["linear"] = np.nanmedian(x, axis=(1, 2))[:, problem.n_nonlinear:] * sc[:, None]
    rhat = np.full(B, np.nan)
    ess = np.full(B, np.nan)
    for i in range(B):
        xi = x[i].astype(np.float64)
        ok = np.all(np.isfinite(xi))
        if not ok:
            continue
        if C >= 2:
            with np.errstate(invalid="ignore", divide="ignore"):
                rhat[i] = np.nanmax(split_gelman_rubin(xi))
        if "ess_nested" in run:
            ess[i] = run["ess_nested"][i]
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                ess[i] = np.nanmin(effective_sample_size(xi))
    out["rhat_max"] = rhat
    out["ess_min"] = ess
    out["accept_rate"] = np.asarray(run["accept_rate"], np.float64)
    out["n_divergent"] = np.asarray(run["n_divergent"])
    out["n_grad"] = np.asarray(run["n_grad"], np.float64)
    if "logz" in run:
        # back to the spectrum's flux unit: the likelihood was evaluated on y / scale
        n_valid = np.asarray(jnp.sum(data.mask > 0, axis=1), np.float64)
        out["logz"] = np.asarray(run["logz"], np.float64) - n_valid * np.log(sc)
        out["logz_err"] = np.asarray(run["logz_err"], np.float64)
    return out


def ess_per_parameter(samples) -> np.ndarray:
    """(B, D) effective sample sizes of every raw parameter (numpyro.diagnostics)."""
    from numpyro.diagnostics import effective_sample_size

    x = np.asarray(samples, np.float64)
    return np.stack([effective_sample_size(x[i]) for i in range(x.shape[0])])


# ============================================================================ drivers
def bayes_fit_spectra(plan, y, fwhm_cm1, map_fit: dict, settings: BayesSettings | None = None, *, prior_mean=None,
                      prior_sigma=None, filter_name=None, keep_samples: bool = False, progress: bool = True) -> dict:
    """Posterior summaries of a set of spectra (the window channels of ``plan``).

    Parameters
    ----------
    plan : FitPlan
    y : (N, n) window spectra
    fwhm_cm1 : (N,) instrumental FWHM in the de-redshifted frame (as ``plan.fitter`` takes)
    map_fit : dict of numpy arrays (PixelFit fields, leading axis N) of the MAP fit
    settings : BayesSettings
    prior_mean, prior_sigma : (N, P) arrays, optional
        Velocity/broadening prior (e.g. from an MDN). Default: the MDN of ``filter_name``
        when available, else the MAP fallback.
    keep_samples : bool
        Also return ``samples`` (N, chains, draws, D) of the raw parameters.

    Returns
    -------
    dict of numpy arrays with a leading axis N (see :func:`summarize`), plus
    ``prior_source`` ('mdn' or 'map'), and the MAP's ``noise``, ``chi2_reduced`` (at the
    posterior median), ``snr``, ``status``.
    """
    from tqdm.auto import tqdm

    settings = settings or BayesSettings()
    problem = _problem_for(plan)
    y = np.asarray(y, np.float32)
    fwhm = np.asarray(fwhm_cm1, np.float32).reshape(-1)
    N = y.shape[0]
    source = "given" if prior_mean is not None else "map"
    if prior_mean is None and problem.spec.has_broadening and problem.spec.n_groups == 1:
        mdn = mdn_prior(plan, y, fwhm, filter_name)
        if mdn is not None:
            prior_mean, prior_sigma = mdn
            source = "mdn"
    proposal_sigma = None
    if prior_mean is None:  # MAP fallback: the proposal's width is the MAP error itself
        prior_mean, prior_sigma = map_fallback_prior(map_fit, settings)
        proposal_sigma = prior_sigma / settings.fallback_error_scale
    data = build_pixel_data(problem, plan, y, fwhm, map_fit, settings, prior_mean, prior_sigma,
                            proposal_sigma=proposal_sigma)
    bs = max(1, min(settings.batch_size, N))
    key = jax.random.PRNGKey(settings.seed)
    parts, samples = [], []
    bar = tqdm(total=N, unit="spectra", desc=f"bayes ({settings.sampler})", disable=not progress or N <= bs)
    for i in range(0, N, bs):
        sl = slice(i, min(i + bs, N))
        n = sl.stop - sl.start
        d = jax.tree.map(lambda a: a[sl], data)
        if n < bs:  # pad with copies of the first pixel: one compiled shape
            d = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], bs - n, axis=0)]), d)
        run = run_sampler(problem, d, settings, jax.random.fold_in(key, i))
        summ = summarize(problem, d, run)
        parts.append({k: v[:n] for k, v in summ.items()})
        if keep_samples:
            samples.append(run["samples"][:n])
        bar.update(n)
    bar.close()
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for k in ("noise", "snr", "status"):
        if k in map_fit:
            out[k] = np.asarray(map_fit[k])
    out["chi2_reduced"] = _chi2_at(problem, data, out)
    out["prior_lo"] = np.asarray(data.lo)
    out["prior_hi"] = np.asarray(data.hi)
    out["prior_source"] = source
    if keep_samples:
        out["samples"] = np.concatenate(samples)
    return out


def _chi2_at(problem, data, out):
    P = problem.n_nonlinear
    theta = np.concatenate([out["velocity_kms"]] + ([out["broadening_kms"]] if problem.spec.has_broadening else []), axis=1)

    def one(t, a, d):
        mu = problem.line_model.spectrum(t, a / d.scale, d.fwhm)
        r = d.mask * (d.y - mu) / d.noise
        return jnp.sum(r * r) / jnp.maximum(jnp.sum(d.mask > 0) - problem.dim, 1.0)

    del P
    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(theta, jnp.float32), jnp.asarray(out["linear"], jnp.float32), data))


def _problem_for(plan) -> PixelProblem:
    prob = getattr(plan, "_bayes_problem", None)
    if prob is None:
        prob = PixelProblem(plan.model)
        try:
            plan._bayes_problem = prob
        except AttributeError:
            pass
    return prob


# ============================================================================ components
def two_component_line_set(line_set: LineSet, suffix: str = "_2") -> LineSet:
    """The lines of a one-group line set twice: group 0 (component 1, original names) and
    group 1 (component 2, names + ``suffix``), with the flux ties repeated per component."""
    if line_set.n_groups != 1:
        raise ValueError("two_component_line_set needs a line set with one kinematic group")
    n = line_set.n_lines
    names = tuple(line_set.names) + tuple(f"{nm}{suffix}" for nm in line_set.names)
    rest = tuple(line_set.rest_nm) * 2
    groups = (0,) * n + (1,) * n
    ties = tuple(line_set.ties) + tuple((d + n, p + n, r) for d, p, r in line_set.ties)
    return LineSet(names, rest, groups, ties)


def component_problems(plan) -> tuple[PixelProblem, PixelProblem]:
    """(one-component problem, ordered two-component problem) on the plan's grid."""
    cached = getattr(plan, "_bayes_components", None)
    if cached is not None:
        return cached
    spec = plan.spec
    if not spec.has_broadening:
        raise ValueError("component selection needs a model with a broadening (sincgauss or gaussian)")
    ls2 = two_component_line_set(spec.line_set)
    lm2 = LineModel(replace(spec, line_set=ls2), plan.grid)
    probs = (PixelProblem(plan.model), PixelProblem(lm2, ordered=True))
    try:
        plan._bayes_components = probs
    except AttributeError:
        pass
    return probs


def component_pixel_data(problem2: PixelProblem, data1: PixelData, plan, settings: BayesSettings,
                         max_separation_kms: float | None = None) -> PixelData:
    """Boxes of the ordered two-component model from the one-component (broad) boxes:
    v1 over the velocity range, delta in (0, max_separation], both broadenings over the
    broadening range, 2 x the amplitudes with the same bounds, the same continuum box."""
    fs = plan.settings
    vlo, vhi = fs.velocity_range_kms
    blo, bhi = fs.broadening_range_kms
    dmax = max_separation_kms or (vhi - vlo)
    B = data1.y.shape[0]
    n_amp = problem2.n_amplitudes // 2
    a1_lo, a1_hi = data1.lo[:, 2:2 + n_amp], data1.hi[:, 2:2 + n_amp]
    c_lo, c_hi = data1.lo[:, 2 + n_amp:], data1.hi[:, 2 + n_amp:]
    ones = jnp.ones((B, 1), jnp.float32)
    lo = jnp.concatenate([vlo * ones, 0.0 * ones, max(blo, 0.0) * ones, max(blo, 0.0) * ones, a1_lo, a1_lo, c_lo], axis=1)
    hi = jnp.concatenate([vhi * ones, dmax * ones, bhi * ones, bhi * ones, a1_hi, a1_hi, c_hi], axis=1)
    x0 = 0.5 * (lo + hi)
    P = problem2.n_nonlinear
    return data1._replace(lo=lo, hi=hi, x0=x0, prop_mean=jnp.zeros((B, P), jnp.float32),
                          prop_sigma=jnp.ones((B, P), jnp.float32))


def evidence_settings(settings: BayesSettings) -> BayesSettings:
    """The settings :func:`select_components` samples with: nested sampling, and the
    amplitude prior bounded at ``evidence_amplitude_scale`` (the evidence pays for prior
    volume, see :class:`BayesSettings`)."""
    return replace(settings, sampler="nested", amplitude_scale=settings.evidence_amplitude_scale)


def select_components(plan, y, fwhm_cm1, map_fit: dict, settings: BayesSettings | None = None, *,
                      evidence_threshold: float = 0.0, progress: bool = True) -> dict:
    """Fit one and two kinematic components to every spectrum by nested sampling (broad
    priors for both; amplitudes up to ``settings.evidence_amplitude_scale`` x the largest
    one-component MAP amplitude) and choose by evidence.

    Returns a dict with ``logz1``, ``logz1_err``, ``logz2``, ``logz2_err``,
    ``n_components`` (2 where ``logz2 - logz1 > evidence_threshold``), the summaries of
    both models (``one``: :func:`summarize` of the one-component model, ``two``: of the
    two-component model; their line names are ``plan.line_set.names`` and
    ``two_component_line_set(...).names``).
    """
    from tqdm.auto import tqdm

    settings = evidence_settings(settings or BayesSettings())
    p1, p2 = component_problems(plan)
    y = np.asarray(y, np.float32)
    fwhm = np.asarray(fwhm_cm1, np.float32).reshape(-1)
    N = y.shape[0]
    data1 = build_pixel_data(p1, plan, y, fwhm, map_fit, settings, broad=True)
    data2 = component_pixel_data(p2, data1, plan, settings)
    bs = max(1, min(settings.batch_size, N))
    key = jax.random.PRNGKey(settings.seed)
    res1, res2 = [], []
    bar = tqdm(total=N, unit="spectra", desc="components (nested)", disable=not progress or N <= bs)
    for i in range(0, N, bs):
        sl = slice(i, min(i + bs, N))
        n = sl.stop - sl.start
        pad = (lambda a: jnp.concatenate([a, jnp.repeat(a[:1], bs - n, axis=0)])) if n < bs else (lambda a: a)
        d1 = jax.tree.map(lambda a: pad(a[sl]), data1)
        d2 = jax.tree.map(lambda a: pad(a[sl]), data2)
        r1 = summarize(p1, d1, run_sampler(p1, d1, settings, jax.random.fold_in(key, 2 * i)))
        r2 = summarize(p2, d2, run_sampler(p2, d2, settings, jax.random.fold_in(key, 2 * i + 1)))
        res1.append({k: v[:n] for k, v in r1.items()})
        res2.append({k: v[:n] for k, v in r2.items()})
        bar.update(n)
    bar.close()
    one = {k: np.concatenate([r[k] for r in res1]) for k in res1[0]}
    two = {k: np.concatenate([r[k] for r in res2]) for k in res2[0]}
    dlogz = two["logz"] - one["logz"]
    return dict(logz1=one["logz"], logz1_err=one["logz_err"], logz2=two["logz"], logz2_err=two["logz_err"],
                n_components=np.where(dlogz > evidence_threshold, 2, 1).astype(np.int16), one=one, two=two)


__all__ = [
    "BayesSettings", "PixelData", "PixelProblem", "IndependenceMH", "VarProProposal", "run_sampler",
    "build_pixel_data", "summarize", "bayes_fit_spectra", "select_components", "two_component_line_set",
    "map_fallback_prior", "mdn_prior", "SAMPLERS",
]


# ============================================================================ cube level
def parameter_names(problem: PixelProblem) -> list[str]:
    """Names of the raw parameters (the last axis of ``samples``)."""
    ls = problem.spec.line_set
    G = problem.spec.n_groups
    names = [f"velocity_{g}" for g in range(G)]
    if problem.ordered:
        names[1] = "delta_velocity_1"
    if problem.spec.has_broadening:
        names += [f"broadening_{g}" for g in range(G)]
    names += [f"amplitude_{ls.names[i]}" for i in ls.primary_lines]
    names += [f"continuum_{k}" for k in range(problem.spec.n_continuum)]
    return names


def write_samples_hdf5(path, samples, problem: PixelProblem, region, scale) -> None:
    """Per-pixel samples ``[x, y, chain, draw, parameter]`` (float32) with the parameter
    names; linear parameters in the spectrum's flux unit."""
    import h5py

    x0, x1, y0, y1 = region
    s = np.array(samples, np.float32, copy=True)
    s[..., problem.n_nonlinear:] *= np.asarray(scale, np.float32).reshape(-1, 1, 1, 1)
    s = s.reshape((x1 - x0, y1 - y0) + s.shape[1:])
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("samples", data=s, compression="gzip", compression_opts=4)
        ds.attrs["parameters"] = np.array(parameter_names(problem), dtype="S")
        ds.attrs["axes"] = "x, y, chain, draw, parameter"
        f.attrs["region"] = np.asarray(region)


def bayes_region(cube, plan, region, map_raw: dict, sampler: str = "nuts", settings: BayesSettings | None = None, *,
                 components: bool = False, samples_path=None, progress: bool = True) -> dict:
    """Posteriors of every pixel of ``region`` after the MAP fit ``map_raw`` (the dict of
    :func:`lucijax.fit.cube.fit_region`, indexed [x, y, ...]). Returns a dict in the same
    layout with the posterior summaries in place of the MAP values, plus ``rhat_max``,
    ``ess_min``, ``logz`` (nested), and with ``components``: ``n_components``, ``logz1``,
    ``logz2`` and ``two`` (the two-component summaries, same layout)."""
    from lucijax.fit.cube import pixel_fwhm_cm1

    settings = replace(settings or BayesSettings(), sampler=sampler)
    x0, x1, y0, y1 = region
    nxr, nyr = x1 - x0, y1 - y0
    spectra = cube.read_spectra(x0, x1, y0, y1)[..., plan.window]
    calib = cube.read_calib_map(x0, x1, y0, y1)
    y = spectra.reshape(nxr * nyr, -1)
    fwhm = np.broadcast_to(pixel_fwhm_cm1(cube.header, calib), (nxr, nyr)).reshape(-1) * (1.0 + plan.redshift)
    flat_map = {k: np.asarray(v).reshape((nxr * nyr,) + np.asarray(v).shape[2:]) for k, v in map_raw.items()}
    filter_name = getattr(cube.header, "filter_name", None)

    def unflat(d):
        return {k: (v.reshape((nxr, nyr) + v.shape[1:]) if isinstance(v, np.ndarray) and v.ndim >= 1
                    and v.shape[0] == nxr * nyr else v) for k, v in d.items()}

    out = dict(map_raw)
    if components:
        sel = select_components(plan, y, fwhm, flat_map, settings, progress=progress)
        one = sel["one"]
        for k in ("n_components", "logz1", "logz1_err", "logz2", "logz2_err"):
            out[k] = sel[k].reshape(nxr, nyr)
        out["two"] = unflat(sel["two"])
        out["two"]["fwhm_cm1"] = map_raw["fwhm_cm1"]
    else:
        one = bayes_fit_spectra(plan, y, fwhm, flat_map, settings, filter_name=filter_name,
                                keep_samples=samples_path is not None, progress=progress)
        if samples_path is not None:
            write_samples_hdf5(samples_path, one["samples"], _problem_for(plan), region,
                               np.asarray(flat_map["noise"]))
    for k, v in unflat(one).items():
        if k in ("samples",):
            continue
        out[k] = v
    out["bayes_sampler"] = sampler
    return out


#: Extra maps of a Bayesian fit: raw key -> (map name, unit).
BAYES_MAPS = {
    "rhat_max": ("RHAT_MAX", ""),
    "ess_min": ("ESS_MIN", ""),
    "logz": ("LOGZ", ""),
    "logz_err": ("LOGZ_ERR", ""),
    "accept_rate": ("ACCEPT_RATE", ""),
    "n_components": ("N_COMPONENTS", ""),
    "logz1": ("LOGZ_1COMP", ""),
    "logz2": ("LOGZ_2COMP", ""),
}


def add_bayes_maps(maps: dict, units: dict, raw: dict, plan) -> None:
    """Add RHAT_MAX, ESS_MIN, LOGZ, N_COMPONENTS, ... maps ([y, x]) to ``maps`` in place;
    with component selection, also the two-component line maps (``{LINE}_2_...`` for the
    second component), used where N_COMPONENTS = 2 (NaN elsewhere), and the first
    component's maps replaced by the two-component values there."""
    from types import SimpleNamespace

    from lucijax.products import build_maps

    for key, (name, unit) in BAYES_MAPS.items():
        if key in raw and isinstance(raw[key], np.ndarray):
            maps[name] = np.ascontiguousarray(np.asarray(raw[key]).T.astype(np.float32 if key != "n_components" else np.int16))
            units[name] = unit
    if "two" in raw and "n_components" in raw:
        ls2 = two_component_line_set(plan.line_set)
        two = dict(raw["two"])
        for k in ("noise", "snr", "status", "chi2_reduced"):
            two.setdefault(k, raw[k])
        fake = SimpleNamespace(line_set=ls2, redshift=plan.redshift, flux_unit=plan.flux_unit)
        maps2, units2 = build_maps(two, fake)
        use2 = np.asarray(raw["n_components"]).T == 2
        for name, m in maps2.items():
            if name in ("CONTINUUM", "CHI2", "SNR", "NOISE", "FWHM", "STATUS"):
                continue
            if name in maps:
                maps[name] = np.where(use2, m, maps[name])
            else:
                maps[name] = np.where(use2, m, np.nan).astype(m.dtype)
                units[name] = units2[name]


__all__ += ["bayes_region", "add_bayes_maps", "write_samples_hdf5", "parameter_names", "select_components",
            "component_problems", "BAYES_MAPS"]
