"""MCMC kernels of lucijax's own: independence Metropolis-Hastings (a numpyro
``MCMCKernel``) and the option-2 proposal that makes it efficient.

The proposal (:class:`VarProProposal`) is the network's posterior for (velocity,
broadening) -- a Student-t with the network's mean and an inflated sigma -- times, for the
amplitudes and continuum, the exact Gaussian conditional of the linear parameters given
(velocity, broadening) (variable projection), truncated to amplitudes >= 0 by the
sequential (GHK) construction whose density is exact. With that proposal the acceptance
ratio depends only on how well the network matches the *marginal* posterior of
(velocity, broadening): the linear parameters, which make up most of the dimensions, are
proposed from (almost exactly) their conditional posterior.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lucijax.bayes.problem import PixelData, PixelProblem
from lucijax.solvers.linalg import cholesky, solve_lower, spd_inverse


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


class _ThetaThenLinear:
    """A proposal that draws the non-linear parameters (``draw_theta``, density
    ``theta_logq``) and then the linear ones given them (``complete``)."""

    def sample_with_target(self, key):
        """``(x, log q(x), log posterior(x))`` of a draw (for :class:`VarProProposal` the
        same draw as its ``sample``)."""
        k1, k2 = jax.random.split(key)
        t = self.draw_theta(k1)
        x, logq_a, logp = self.complete(t, k2)
        return x, self.theta_logq(t) + logq_a, logp


class VarProProposal(_ThetaThenLinear):
    """Option-2 proposal for one pixel: Student-t on the non-linear parameters (mean and
    inflated sigma from the MDN; for an ordered two-component problem, the raw parameters
    with the offset of the second velocity), then the linear parameters from their Gaussian conditional
    given the non-linear ones, amplitudes truncated at their prior's lower edge by the
    sequential (Geweke-Hajivassiliou-Keane) construction along the Cholesky factor of the
    conditional covariance; its density is exact, so the MH step is exact.
    """

    #: Truncation points beyond this many sigma are clamped (float32 tail accuracy); the
    #: density accounts for the clamp, the target rejects what falls below the prior edge.
    MAX_TRUNCATION = 5.0

    def __init__(self, problem: PixelProblem, d: PixelData, df: float, inflate: float, mean=None, scale=None,
                 scale_tril=None):
        self.p = problem
        self.d = d if mean is None else d._replace(prop_mean=mean)
        self.df = df
        self.scale = d.prop_sigma * inflate if scale is None else scale
        #: (P, P) lower-triangular scale of the non-linear parameters (correlated proposal:
        #: t = mean + scale_tril @ u, u independent Student-t); None: diagonal ``scale``
        self.scale_tril = scale_tril

    def _conditional(self, theta):
        """Mean, Cholesky factor of the covariance of the linear parameters given theta, and
        the (channel-weighted) design matrix."""
        d = self.d
        m = self.p.line_model.design_matrix(self.p.physical_theta(theta), d.fwhm) * d.mask[:, None]
        w = 1.0 / d.noise**2
        gram = (m.T @ m) * w
        s = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
        cov = spd_inverse(gram * s[:, None] * s[None, :], jitter=1e-7) * s[:, None] * s[None, :]
        mean = cov @ (m.T @ (d.y * d.mask)) * w
        low = cholesky(cov, jitter=1e-9)
        return mean, low, m

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

    def theta_logq(self, t):
        """Log density of the non-linear parameters ``t`` under the proposal."""
        if self.scale_tril is None:
            u = (t - self.d.prop_mean) / self.scale
            log_det = jnp.sum(jnp.log(self.scale))
        else:
            u = solve_lower(self.scale_tril, t - self.d.prop_mean)
            log_det = jnp.sum(jnp.log(jnp.diagonal(self.scale_tril)))
        return jnp.sum(_std_t_logpdf(u, self.df)) - log_det

    _theta_logq = theta_logq

    def draw_theta(self, key):
        """A draw of the non-linear parameters."""
        u = jax.random.t(key, self.df, self.d.prop_mean.shape)
        step = self.scale * u if self.scale_tril is None else self.scale_tril @ u
        return self.d.prop_mean + step

    def complete(self, t, key):
        """The linear parameters drawn from their (truncated) conditional given ``t``:
        ``(x, log q(alpha | t), log posterior(x))``, the target's density from the same
        design matrix (one model evaluation for a proposal and its weight)."""
        mean, low, m = self._conditional(t)
        alpha, logq_a = self._linear_pass(mean, low, None, key)
        x = jnp.concatenate([t, alpha])
        return x, logq_a, self.p.log_posterior_given_columns(x, m, self.d)

    def sample(self, key):
        k1, k2 = jax.random.split(key)
        t = self.draw_theta(k1)
        mean, low, _ = self._conditional(t)
        alpha, logq_a = self._linear_pass(mean, low, None, k2)
        return jnp.concatenate([t, alpha]), self.theta_logq(t) + logq_a

    def log_prob(self, x):
        P = self.p.n_nonlinear
        t, alpha = x[:P], x[P:]
        mean, low, _ = self._conditional(t)
        _, logq_a = self._linear_pass(mean, low, alpha, None)
        return self.theta_logq(t) + logq_a


class SubmodelProposal:
    """The non-linear part of a proposal for an ordered two-component problem (raw
    parameters ``(v1, delta, b1, b2)``, ``v2 = v1 + delta``) around the one-component
    fit's line (``PixelData.anchor``: its velocity ``v``, broadening ``b`` and errors;
    Student-t around them, ``inflate`` x the errors):

    * ``which = 0``: the line is the first component, the second is anywhere in the box
      (uniform);
    * ``which = 1``: the line is the second (``delta = v - v1``), the first is anywhere;
    * ``which = 2``: the line split in two: ``delta`` uniform in ``(0, 2 b + 4 e_v)``,
      ``v1`` uniform in ``[v - delta - 3 e_v, v + 3 e_v]`` (the pair straddles ``v``), both
      broadenings uniform in ``[0, b + 4 e_b]``.

    Where a spectrum holds one component, these are where the two-component posterior lies
    (the free component's amplitude near zero, or two components sharing the line's flux):
    the part of the prior volume that the evidence of the larger model must integrate and
    that its own MAP fit does not describe. Only a mixture's part (its draws are completed
    by the mixture's first part)."""

    def __init__(self, d: PixelData, which: int, df: float, inflate: float):
        v, b, sv, sb = (d.anchor[i] for i in range(4))
        self.v, self.b, self.sv, self.sb = v, b, sv * inflate, sb * inflate
        self.lo, self.hi = d.lo[:4], d.hi[:4]
        self.which, self.df = int(which), df

    def _split_box(self, delta):
        """Bounds of the split part: delta's, then v1's given delta, then the broadenings'."""
        d_hi = jnp.minimum(self.hi[1], 2.0 * self.b + 4.0 * self.sv)
        b_hi = jnp.minimum(self.hi[2], self.b + 4.0 * self.sb)
        return (self.lo[1], d_hi), (self.v - delta - 3.0 * self.sv, self.v + 3.0 * self.sv), (self.lo[2], b_hi)

    def draw_theta(self, key):
        k = jax.random.split(key, 4)

        def unif(kk, lo, hi):
            return jax.random.uniform(kk, (), minval=lo, maxval=hi)

        if self.which == 2:
            (dl, dh), _, (bl, bh) = self._split_box(0.0)
            delta = unif(k[0], dl, dh)
            _, (vl, vh), _ = self._split_box(delta)
            return jnp.stack([unif(k[1], vl, vh), delta, unif(k[2], bl, bh), unif(k[3], bl, bh)])
        t1, t2 = jax.random.t(k[0], self.df), jax.random.t(k[1], self.df)
        if self.which == 0:
            return jnp.stack([self.v + self.sv * t1, unif(k[2], self.lo[1], self.hi[1]), self.b + self.sb * t2,
                              unif(k[3], self.lo[3], self.hi[3])])
        v1 = unif(k[2], self.lo[0], self.hi[0])
        return jnp.stack([v1, self.v - v1 + self.sv * t1, unif(k[3], self.lo[2], self.hi[2]), self.b + self.sb * t2])

    def theta_logq(self, t):
        def t_part(x, mean, s):
            return _std_t_logpdf((x - mean) / s, self.df) - jnp.log(s)

        def u_part(x, lo, hi):
            return jnp.where((x >= lo) & (x <= hi), -jnp.log(hi - lo), -jnp.inf)

        lo, hi = self.lo, self.hi
        if self.which == 2:
            (dl, dh), (vl, vh), (bl, bh) = self._split_box(t[1])
            return u_part(t[1], dl, dh) + u_part(t[0], vl, vh) + u_part(t[2], bl, bh) + u_part(t[3], bl, bh)
        if self.which == 0:
            return (t_part(t[0], self.v, self.sv) + t_part(t[2], self.b, self.sb) + u_part(t[1], lo[1], hi[1])
                    + u_part(t[3], lo[3], hi[3]))
        return (u_part(t[0], lo[0], hi[0]) + t_part(t[1], self.v - t[0], self.sv) + u_part(t[2], lo[2], hi[2])
                + t_part(t[3], self.b, self.sb))


class MixtureProposal(_ThetaThenLinear):
    """A proposal whose non-linear parameters come from a mixture of the (velocity,
    broadening) parts of :class:`VarProProposal` s (and :class:`SubmodelProposal` s;
    ``weights``, summing to 1) and whose linear parameters come from the first part's
    conditional: a defensive mixture bounds the
    importance weight p / q wherever one part covers the posterior, so an independence
    chain cannot stick where the main part is too narrow."""

    def __init__(self, parts, weights):
        self.parts = list(parts)
        self.log_w = jnp.log(jnp.asarray(weights, jnp.float32))
        self.p = self.parts[0].p

    def theta_logq(self, t):
        return jax.scipy.special.logsumexp(self.log_w + jnp.stack([q.theta_logq(t) for q in self.parts]))

    def draw_theta(self, key):
        k_c, k_t = jax.random.split(key)
        c = jax.random.categorical(k_c, self.log_w)
        return jnp.stack([q.draw_theta(k_t) for q in self.parts])[c]

    def complete(self, t, key):
        return self.parts[0].complete(t, key)

    def log_prob(self, x):
        t = x[:self.p.n_nonlinear]
        first = self.parts[0]
        return first.log_prob(x) - first.theta_logq(t) + self.theta_logq(t)


__all__ = ["IndependenceMH", "IMHState", "VarProProposal", "SubmodelProposal", "MixtureProposal"]
