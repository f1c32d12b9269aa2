"""Samplers of one pixel's posterior, each an object that owns only its own options.

* :class:`NUTS`: numpyro's NUTS (``numpyro.infer.hmc.hmc``) per (pixel, chain), started at
  the MAP with the Laplace covariance there as its dense metric (:func:`laplace_start`),
  the step size adapted per pixel in the warm-up.
* :class:`Ensemble`: numpyro's affine-invariant ensemble sampler (``numpyro.infer.AIES``,
  emcee's stretch move), walkers started in a small ball around the MAP.
* :class:`MH` (option 2): broad priors, and the independence Metropolis-Hastings kernel of
  :mod:`lucijax.bayes.kernels` with the network's posterior as proposal. An importance-
  weighted batch of draws from the network's proposal and the MAP's Laplace approximation
  adapts the (velocity, broadening) part of the proposal (weighted mean, full covariance),
  fixed from then on, so the chain stays exact; all proposals of a chain are evaluated in
  one vectorised pass (they do not depend on the chain's state). The prior stays broad, so
  the network changes only the speed, not the answer.
* :class:`Nested`: nested sampling with jaxns 2.6 (the engine behind
  ``numpyro.contrib.nested_sampling``; called directly so that it can be ``jit``-ed and
  ``vmap``-ed over pixels), returning the log-evidence; posterior samples are an
  equal-weight resampling of the weighted dead points. jaxns runs in float64: its runs are
  scoped in ``jax.enable_x64`` (:func:`float64`), and its import, which switches float64 on
  for the whole process, is undone (:func:`import_jaxns`).

Every sampler's :meth:`run` samples ONE pixel (:class:`~lucijax.bayes.problem.PixelData`)
with one random key; :mod:`lucijax.bayes.posterior` turns a sampler into the program the
engine maps over a cube.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp

from lucijax.bayes.kernels import MixtureProposal, SubmodelProposal, VarProProposal
from lucijax.bayes.problem import PixelData, PixelProblem, Prior
from lucijax.solvers.linalg import cholesky


@dataclass(frozen=True, kw_only=True)
class Sampler:
    """Options every sampler has.

    Attributes
    ----------
    num_samples : int
        Draws per chain (ensemble: per walker; nested: equal-weight draws).
    prior : Prior
    seed : int
        Each pixel's key is derived from it and the pixel's coordinates, so a pixel's
        draws never depend on the batch, the device or a resumed run.
    rhat_threshold : float
        Pixels whose split R-hat (max over parameters) exceeds it get STATUS 6 (NOT_MIXED).
    retry : int
        Pixels whose split R-hat exceeds ``rhat_threshold`` after the run are sampled once
        more, with ``retry`` x the draws and warm-up of every chain and the next seed
        (:meth:`longer`), and keep that run's results (STATUS 6 if it did not mix either);
        0 or 1: no second run. Samplers with one chain (nested sampling) have no R-hat and
        never retry.
    retry_max_share : float
        ... unless more than this share of the pixels did not mix: then the chains are too
        short for the posteriors of this cube (more draws for all, not a second run of most,
        is the remedy), and a warning says so.
    thin : int
        Keep every ``thin``-th draw of each chain (summaries, diagnostics and stored draws);
        ``num_samples`` counts the draws before thinning.
    """

    num_samples: int = 500
    prior: Prior = field(default_factory=Prior)
    seed: int = 0
    rhat_threshold: float = 1.05
    retry: int = 4
    retry_max_share: float = 0.1
    thin: int = 1

    #: name in messages and progress bars
    name = "sampler"
    #: whether the sampler's proposal is built from the pixel's MAP fit
    uses_proposal = False
    #: spectra per compiled batch on CPU (None: the engine's default); not a field: how a
    #: run is cut into batches is no part of what it computes
    cpu_batch_size = None

    def __post_init__(self):
        if int(self.num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if int(self.retry) < 0 or int(self.thin) < 1 or int(self.num_samples) < int(self.thin):
            raise ValueError(f"need retry >= 0 and 1 <= thin <= num_samples, got retry={self.retry}, thin={self.thin}")
        if not 0.0 <= float(self.retry_max_share) <= 1.0:
            raise ValueError(f"retry_max_share must be in [0, 1], got {self.retry_max_share}")

    def longer(self, factor: int) -> Sampler:
        """This sampler with ``factor`` x the draws (and warm-up) of every chain, thinned by
        ``factor`` (so as many draws are kept), the next seed and no retry of its own: the
        second run of the pixels that did not mix."""
        changes = {"num_samples": int(self.num_samples) * factor, "thin": int(self.thin) * factor,
                   "seed": int(self.seed) + 1, "retry": 0}
        if hasattr(self, "num_warmup"):
            changes["num_warmup"] = int(self.num_warmup) * factor
        return replace(self, **changes)

    def context(self):
        """The context its compiled runs need (none)."""
        return contextlib.nullcontext()

    def check(self, problem: PixelProblem) -> None:
        """Raise if this sampler cannot sample ``problem``."""

    def run(self, problem: PixelProblem, d: PixelData, key) -> dict:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class NUTS(Sampler):
    """numpyro's No-U-Turn sampler, ``num_chains`` chains per pixel.

    Attributes
    ----------
    num_warmup : int
        Warm-up iterations of each chain (discarded).
    num_chains : int
    max_tree_depth : int
        At most ``2**max_tree_depth`` leapfrog steps per draw. Under ``vmap`` every pixel of
        a batch waits for the deepest tree, so the cap sets the cost of every draw; with
        the Laplace metric 8 steps (depth 3) reach a nearly independent draw on most
        pixels (pixels that still mix slowly are sampled again, ``retry``). With
        ``mass='adapt'`` raise it (6 was the default before the Laplace metric).
    target_accept_prob : float
        Of the step size's dual-averaging adaptation.
    mass : {'laplace', 'adapt'}
        ``'laplace'`` (default): the chains start at the MAP and the dense inverse mass
        matrix is the Laplace covariance there (Gauss-Newton, in the sampler's
        unconstrained coordinates), fixed; the warm-up adapts the step size alone, per
        pixel and chain. A near-Gaussian posterior is then close to isotropic, so a few
        leapfrog steps give a nearly independent draw and a short warm-up suffices.
        ``'adapt'``: numpyro's windowed adaptation of a diagonal mass matrix from the
        identity (no MAP information beyond the start).
    """

    num_warmup: int = 100
    num_chains: int = 2
    max_tree_depth: int = 3
    target_accept_prob: float = 0.8
    mass: str = "laplace"
    name = "NUTS"

    MASSES = ("laplace", "adapt")

    def __post_init__(self):
        super().__post_init__()
        if int(self.num_chains) < 1 or int(self.num_warmup) < 0:
            raise ValueError("num_chains must be >= 1 and num_warmup >= 0")
        if self.mass not in self.MASSES:
            raise ValueError(f"unknown mass '{self.mass}': choose one of {', '.join(self.MASSES)}")

    def run(self, problem, d, key):
        start = laplace_start(problem, d) if self.mass == "laplace" else None
        out = jax.vmap(lambda k: self._chain(problem, d, k, start))(jax.random.split(key, self.num_chains))
        return dict(samples=out["samples"], n_divergent=jnp.sum(out["n_divergent"]),
                    accept_rate=jnp.mean(out["accept_rate"]), n_grad=jnp.sum(out["n_grad"]))

    def _chain(self, problem, d, key, start):
        from numpyro.infer.hmc import hmc

        k_init, k_run = jax.random.split(key)
        init_kernel, sample_kernel = hmc(potential_fn=lambda z: problem.potential(z, d), algo="NUTS")
        if start is None:
            z0 = problem.to_unconstrained(d.x0, d) + 0.05 * jax.random.normal(k_init, d.x0.shape)
            metric = {}
        else:
            z_map, cov_z, low_z = start
            # chains start apart by a tenth of the posterior's width (R-hat sees them meet)
            z0 = z_map + 0.1 * low_z @ jax.random.normal(k_init, z_map.shape)
            metric = dict(inverse_mass_matrix=cov_z, dense_mass=True, adapt_mass_matrix=False)
        state = init_kernel(z0, self.num_warmup, max_tree_depth=self.max_tree_depth,
                            target_accept_prob=self.target_accept_prob, rng_key=k_run, **metric)

        def body(st, _):
            st = sample_kernel(st)
            return st, (st.z, st.diverging, st.accept_prob, st.num_steps)

        _, (zs, div, acc, nsteps) = jax.lax.scan(body, state, None, length=self.num_warmup + self.num_samples)
        w = self.num_warmup
        x = problem.to_constrained(zs[w:], d)
        return dict(samples=x, n_divergent=jnp.sum(div[w:]), accept_rate=jnp.mean(acc[w:]),
                    n_grad=jnp.sum(nsteps).astype(jnp.float32))


def laplace_covariance(problem: PixelProblem, d: PixelData):
    """The Laplace (Gauss-Newton) covariance of the raw parameters at the pixel's MAP
    ``d.x0``, with the curvature of each uniform box of width ``w`` taken as ``4 / w**2`` (as
    if a Gaussian of sigma ``w / 2``): that bounds every variance by its box where the data
    do not (an unresolved broadening, a line at zero)."""
    from lucijax.solvers.linalg import spd_inverse

    def scaled_model(x):
        theta, alpha = problem.theta_alpha(x)
        return d.mask * problem.line_model.spectrum(theta, alpha, d.fwhm) / d.noise

    jac = jax.jacfwd(scaled_model)(d.x0)  # (n, D)
    curv = jac.T @ jac + jnp.diag(4.0 / (d.hi - d.lo) ** 2)
    s = 1.0 / jnp.sqrt(jnp.diagonal(curv))
    return spd_inverse(curv * s[:, None] * s[None, :], jitter=1e-7) * s[:, None] * s[None, :]


def laplace_start(problem: PixelProblem, d: PixelData):
    """A start and a metric for gradient samplers: :func:`laplace_covariance` moved to the
    unconstrained coordinates ``z = logit((x - lo) / (hi - lo))`` of
    :meth:`PixelProblem.potential`. A parameter at its bound has no finite unconstrained
    value; the start moves it half a Laplace sigma inside, where the logit's Jacobian gives
    it a variance of order one. Returns ``(z_start, cov_z, cholesky(cov_z))``."""
    w = d.hi - d.lo
    cov_x = laplace_covariance(problem, d)
    margin = jnp.minimum(0.5 * jnp.sqrt(jnp.diagonal(cov_x)), 0.25 * w)
    x_start = jnp.clip(d.x0, d.lo + margin, d.hi - margin)
    p = (x_start - d.lo) / w
    g = 1.0 / (w * p * (1.0 - p))  # dz/dx
    cov_z = cov_x * g[:, None] * g[None, :]
    return problem.to_unconstrained(x_start, d), cov_z, cholesky(cov_z, jitter=1e-9)


@dataclass(frozen=True, kw_only=True)
class Ensemble(Sampler):
    """numpyro's affine-invariant ensemble sampler (emcee's stretch move), ``walkers``
    walkers per pixel (an even number, at least twice the parameters)."""

    num_warmup: int = 300
    walkers: int = 32
    name = "ensemble"

    def __post_init__(self):
        super().__post_init__()
        if int(self.walkers) < 2 or int(self.walkers) % 2:
            raise ValueError(f"walkers must be an even number >= 2, got {self.walkers}")

    def check(self, problem):
        if self.walkers < 2 * problem.dim:
            raise ValueError(f"the ensemble sampler needs at least 2 x {problem.dim} walkers for this model, "
                             f"got {self.walkers}")

    def run(self, problem, d, key):
        from numpyro.infer import AIES

        W = self.walkers
        k_init, k_run = jax.random.split(key)
        z0 = problem.to_unconstrained(d.x0, d)[None, :] + 0.01 * jax.random.normal(k_init, (W, problem.dim))
        # AIES checks its move weights with a Python assert: build it on concrete values, not tracers
        with jax.ensure_compile_time_eval():
            kernel = AIES(potential_fn=lambda z: problem.potential(z, d), moves={AIES.StretchMove(): 1.0})
        state = kernel.init(jax.random.split(k_run, W), self.num_warmup, init_params=z0)

        def body(st, _):
            st = kernel.sample(st, (), {})
            return st, st.z

        state, zs = jax.lax.scan(body, state, None, length=self.num_warmup + self.num_samples)
        x = problem.to_constrained(zs[self.num_warmup:], d)  # (S, W, D)
        return dict(samples=jnp.swapaxes(x, 0, 1), n_divergent=jnp.zeros((), jnp.int32),
                    accept_rate=state.inner_state.mean_accept_prob,
                    n_grad=jnp.asarray(W * (self.num_warmup + self.num_samples), jnp.float32))


@dataclass(frozen=True, kw_only=True)
class AdaptedProposal(Sampler):
    """The option-2 proposal, adapted per pixel: what :class:`MH` (a Markov chain) and
    :class:`Importance` (importance sampling, the log-evidence) share.

    The proposal of the non-linear parameters (velocities, broadenings) is a Student-t; the
    linear ones (amplitudes, continuum) come from their exact Gaussian conditional given
    them (:class:`~lucijax.bayes.kernels.VarProProposal`). A batch of ``num_warmup``
    importance draws from an even mixture of the pixel's proposal (the network's posterior,
    ``PixelData.prop_mean`` / ``prop_sigma``) and the MAP fit's Laplace approximation
    re-centres it on their importance-weighted mean, with their weighted covariance.

    Attributes
    ----------
    num_warmup : int
        Adaptation draws per pixel (none of them is kept). 0: the pixel's proposal
        throughout.
    proposal_df : float
        Student-t degrees of freedom of the (velocity, broadening) proposal.
    proposal_inflate : float
        Its sigma = this x the network's sigma (and x the MAP's errors for the Laplace part
        of the adaptation batch).
    adapt_scale : float
        After the adaptation the proposal's scale matrix is this x the Cholesky factor of
        the importance-weighted covariance of (velocity, broadening).
    min_adapt_ess : float
        Adapt only if the adaptation batch's importance weights have at least this Kish
        effective sample size; otherwise the MAP's Laplace approximation (or, without
        finite MAP errors, the network's proposal widened 2x).
    defensive : float
        The final proposal of (velocity, broadening) is a mixture: the adapted part with
        weight 1 - 2 x this, the network's and the Laplace part with this each (bounds the
        importance weights where the adapted part misses a mode or a tail). For an ordered
        two-component problem with ``PixelData.anchor``, that mixture gets 1 - 3 x this and
        the three ways two components can hold one line (:class:`~lucijax.bayes.kernels.SubmodelProposal`)
        this each.
    eval_batch : int
        Proposals of one pixel evaluated together (memory of one vectorised step).
    """

    num_warmup: int = 300
    proposal_df: float = 8.0
    proposal_inflate: float = 1.5
    adapt_scale: float = 1.2
    min_adapt_ess: float = 10.0
    defensive: float = 0.05
    eval_batch: int = 64
    prior: Prior = field(default_factory=lambda: Prior(kind="broad"))
    #: the sampler builds its proposal from the pixel's MAP fit (an evidence selection fits
    #: the two-component model first for it)
    uses_proposal = True
    #: 16, not the engine's 64 on CPU: a batch's working memory is ~2.1 MB per spectrum
    #: (``eval_batch`` proposals of every spectrum evaluated at once; 536 MB for 64 spectra
    #: with the default MH sampler, 5 lines, 840 channels), and each device runs one batch at
    #: a time: 2 x 134 MB on two cores instead of 2 x 536 MB, at the same speed (10.3 pixels
    #: per CPU-second either way). Draws differ from 64-spectrum batches in the last bits.
    cpu_batch_size = 16

    def __post_init__(self):
        super().__post_init__()
        if int(self.num_warmup) < 0 or int(self.eval_batch) < 1:
            raise ValueError("eval_batch must be >= 1 and num_warmup >= 0")

    def _map(self, f, xs):
        """``f`` over the leading axis of ``xs``, ``eval_batch`` at a time (vectorised)."""
        n = jax.tree.leaves(xs)[0].shape[0]
        b = min(int(self.eval_batch), n)
        # a divisor of n close to eval_batch: no remainder, so the body compiles once
        divisor = max(k for k in range(1, b + 1) if n % k == 0)
        return jax.lax.map(f, xs, batch_size=divisor if 2 * divisor >= b else b)

    def _draws(self, prop, keys):
        """One independent draw of ``prop`` per key: (x, log p(x) - log q(x), a uniform
        number) each, ``eval_batch`` at a time."""
        def one(k):
            k_prop, k_acc = jax.random.split(k)
            x, logq, logp = prop.sample_with_target(k_prop)
            return x, logp - logq, jax.random.uniform(k_acc)

        x, lw, u = self._map(one, keys)
        return x, jnp.where(jnp.isnan(lw), -jnp.inf, lw), u

    def _adapt(self, problem, d, key):
        """The proposal after the adaptation batch, and the batch (draws, log q(alpha | t),
        log posterior, log importance weight) the chains start from."""
        W, P = int(self.num_warmup), problem.n_nonlinear
        net = VarProProposal(problem, d, self.proposal_df, self.proposal_inflate)
        laplace = jnp.all(jnp.isfinite(d.map_sigma) & (d.map_sigma > 0))
        lap = VarProProposal(problem, d, self.proposal_df, self.proposal_inflate,
                             mean=jnp.where(laplace, d.x0[:P], d.prop_mean),
                             scale=jnp.where(laplace, d.map_sigma, 2.0 * d.prop_sigma) * self.proposal_inflate)
        if W == 0:
            return net, None
        eps = float(self.defensive)
        # a deterministic (stratified) defensive mixture: even draws from the network's
        # proposal, odd ones from the MAP's Laplace approximation; weights under the mixture
        n_net = (W + 1) // 2
        log_f = (math.log(n_net / W), math.log(max(W - n_net, 1) / W) if W > n_net else -math.inf)

        def one(args):
            i, k = args
            kt, ka = jax.random.split(k)
            t = jnp.where(i % 2 == 0, net.draw_theta(kt), lap.draw_theta(kt))
            x, logq_a, logp = net.complete(t, ka)
            logq_t = jnp.logaddexp(log_f[0] + net.theta_logq(t), log_f[1] + lap.theta_logq(t))
            return x, logq_a, logp, logp - logq_a - logq_t

        xa, lqa, lpa, lwa = self._map(one, (jnp.arange(W), jax.random.split(key, W)))
        lwa = jnp.where(jnp.isfinite(lwa), lwa, -jnp.inf)
        w = jax.nn.softmax(lwa)
        ok = jnp.isfinite(jnp.max(lwa))
        w = jnp.where(ok, w, 0.0)
        ess = jnp.where(ok, 1.0 / jnp.maximum(jnp.sum(w * w), 1e-30), 0.0)
        t = xa[:, :P]
        mean = jnp.sum(w[:, None] * t, axis=0)
        dt = t - mean
        cov = (w[:, None] * dt).T @ dt
        tril = cholesky(cov, jitter=1e-6) * self.adapt_scale
        adapt = ok & (ess >= self.min_adapt_ess) & jnp.all(jnp.isfinite(tril)) & jnp.all(jnp.diagonal(tril) > 0)
        fb_mean, fb_scale = lap.d.prop_mean, lap.scale
        prop = VarProProposal(problem, d, self.proposal_df, self.proposal_inflate,
                              mean=jnp.where(adapt, mean, fb_mean),
                              scale_tril=jnp.where(adapt, tril, jnp.diag(fb_scale)))
        parts, weights = [prop], [1.0]
        if eps > 0:
            parts += [net, lap]
            weights = [f * (1.0 - 2.0 * eps) for f in weights] + [eps, eps]
            if d.anchor is not None:  # an ordered two-component problem: the one-component submodel too
                parts += [SubmodelProposal(d, which, self.proposal_df, self.proposal_inflate) for which in range(3)]
                weights = [f * (1.0 - 3.0 * eps) for f in weights] + [eps] * 3
        if len(parts) > 1:
            prop = MixtureProposal(parts, weights)
        return prop, (xa, lqa, lpa, lwa)


@dataclass(frozen=True, kw_only=True)
class MH(AdaptedProposal):
    """Independence Metropolis-Hastings with the network's posterior as proposal (option 2;
    broad priors by default), adapted per pixel (:class:`AdaptedProposal`, whose options it
    has).

    Attributes
    ----------
    num_chains : int
    """

    num_chains: int = 2
    name = "MH"

    def __post_init__(self):
        super().__post_init__()
        if int(self.num_chains) < 1:
            raise ValueError("num_chains must be >= 1")

    def check(self, problem):
        if problem.ordered:
            raise ValueError("the MH sampler (network proposal) samples one-component models only")

    def run(self, problem, d, key):
        """``num_chains`` independence-MH chains with a fixed proposal (so the draws target
        the posterior exactly), adapted first on a batch of ``num_warmup`` importance draws
        from an even mixture of the network's proposal and the MAP fit's Laplace
        approximation (centred on the MAP, ``proposal_inflate`` x its errors; without finite
        MAP errors, the network's widened 2x): the (velocity, broadening) proposal is
        re-centred on the batch's importance-weighted mean, with ``adapt_scale`` x the
        Cholesky factor of its weighted covariance as scale matrix. If the batch's weights
        have an effective size below ``min_adapt_ess`` (neither part of the mixture is close
        to the posterior), the proposal is the Laplace part alone. Each chain starts at a
        draw of the batch resampled by weight (close to the posterior already, so no
        burn-in), else at the MAP.

        Proposals do not depend on the chain's state: all of a chain's proposals and their
        weights are computed together (vectorised, ``eval_batch`` at a time) and only the
        accept/reject decisions run in sequence. Every random number comes from ``key``."""
        C, S, P = int(self.num_chains), int(self.num_samples), problem.n_nonlinear
        k_adapt, k_start, k_run = jax.random.split(key, 3)
        prop, batch = self._adapt(problem, d, k_adapt)
        # chain starts: the MAP, or draws of the adaptation batch resampled by weight
        lw_map = problem.log_posterior(d.x0, d) - prop.log_prob(d.x0)
        x_start = jnp.broadcast_to(d.x0, (C, d.x0.shape[0]))
        lw_start = jnp.full((C,), lw_map)
        if batch is not None:
            xa, lqa, lpa, lwa = batch
            idx = jax.vmap(lambda k: jax.random.categorical(k, lwa))(jax.random.split(k_start, C))
            lw_res = lpa[idx] - lqa[idx] - jax.vmap(prop.theta_logq)(xa[idx, :P])
            use = jnp.isfinite(jnp.max(lwa)) & jnp.isfinite(lw_res)
            x_start = jnp.where(use[:, None], xa[idx], x_start)
            lw_start = jnp.where(use, lw_res, lw_start)
        lw_start = jnp.where(jnp.isnan(lw_start), -jnp.inf, lw_start)
        keys = jax.vmap(lambda k: jax.random.split(k, S))(jax.random.split(k_run, C)).reshape((C * S,) + k_run.shape)
        xp, lw, u = self._draws(prop, keys)
        lw = lw.reshape(C, S)
        u = u.reshape(C, S)

        def chain(lw_c, u_c, lw0):
            def body(carry, inp):
                cur, i_cur = carry
                lw_new, uu, i = inp
                log_ratio = lw_new - cur
                p_acc = jnp.where(jnp.isfinite(log_ratio), jnp.exp(jnp.minimum(log_ratio, 0.0)),
                                  jnp.where(log_ratio > 0, 1.0, 0.0))
                acc = uu < p_acc
                carry = (jnp.where(acc, lw_new, cur), jnp.where(acc, i, i_cur))
                return carry, (carry[1], p_acc)

            _, (i_kept, p_acc) = jax.lax.scan(body, (lw0, jnp.asarray(-1, jnp.int32)),
                                              (lw_c, u_c, jnp.arange(S, dtype=jnp.int32)))
            return i_kept, p_acc

        i_kept, p_acc = jax.vmap(chain)(lw, u, lw_start)
        xp = xp.reshape(C, S, -1)
        xs = jnp.where((i_kept >= 0)[..., None], jnp.take_along_axis(xp, jnp.maximum(i_kept, 0)[..., None], axis=1),
                       x_start[:, None, :])
        return dict(samples=xs, n_divergent=jnp.zeros((), jnp.int32), accept_rate=jnp.mean(p_acc),
                    n_grad=jnp.asarray(int(self.num_warmup) + C * S + 1, jnp.float32))


@dataclass(frozen=True, kw_only=True)
class Importance(AdaptedProposal):
    """Importance sampling with the adapted option-2 proposal (:class:`AdaptedProposal`,
    whose options it has): the log-evidence ``LOGZ`` in a few thousand likelihood
    evaluations, and posterior draws (an equal-weight resampling of the weighted draws).

    With the proposal ``q`` (its density exact: Student-t of the non-linear parameters
    times the truncated Gaussian conditional of the linear ones) and the normalised prior,
    ``Z = E_q[p(x) L(x) / q(x)]``: the mean of the ``num_samples`` importance weights is an
    unbiased estimate of the evidence and ``log Z`` its logarithm. Its standard error (the
    ``LOGZ_ERR`` map, delta method) is ``sqrt((S / ESS - 1) / S)`` with ``ESS`` the Kish
    effective sample size of the weights (``ESS_MIN``). The defensive mixture keeps the
    weights bounded where the posterior is close to the Laplace approximation of the MAP
    fit or to the network's posterior; a posterior with a mode that none of them covers is
    under-weighted (log Z too small), which a low ``ESS_MIN`` or a large ``LOGZ_ERR`` does
    not always reveal: :class:`Nested` explores the whole box, at 100-1000x the cost.

    Attributes
    ----------
    num_samples : int
        Importance draws per pixel (after the ``num_warmup`` adaptation draws); as many
        equal-weight draws are resampled for the posterior summaries.
    """

    num_samples: int = 2000
    name = "importance"

    def run(self, problem, d, key):
        S = int(self.num_samples)
        k_adapt, k_run, k_res = jax.random.split(key, 3)
        prop, _ = self._adapt(problem, d, k_adapt)
        x, lw, _ = self._draws(prop, jax.random.split(k_run, S))
        lw = lw.astype(jnp.float32)
        top = jnp.max(lw)
        ok = jnp.isfinite(top)
        w = jnp.where(ok, jnp.exp(lw - jnp.where(ok, top, 0.0)), 0.0)
        total = jnp.sum(w)
        logz = jnp.where(ok, top + jnp.log(total) - math.log(S), -jnp.inf)
        ess = jnp.where(ok, total * total / jnp.maximum(jnp.sum(w * w), 1e-30), 0.0)
        logz_err = jnp.where(ok, jnp.sqrt(jnp.maximum(S / jnp.maximum(ess, 1e-30) - 1.0, 0.0) / S), jnp.inf)
        idx = jax.random.categorical(k_res, jnp.where(ok, lw, 0.0), shape=(S,))
        return dict(samples=x[idx][None], n_divergent=jnp.zeros((), jnp.int32),
                    accept_rate=jnp.asarray(jnp.nan, jnp.float32),
                    n_grad=jnp.asarray(int(self.num_warmup) + S, jnp.float32), logz=logz, logz_err=logz_err, ess=ess)


def import_jaxns():
    """Import jaxns without leaving ``jax_enable_x64`` switched on for the whole process
    (jaxns switches it on at import); its runs go through :func:`float64`."""
    previous = bool(jax.config.jax_enable_x64)
    try:
        import jaxns  # noqa: F401
        import jaxns.public  # noqa: F401
    finally:
        jax.config.update("jax_enable_x64", previous)


def float64():
    """Context in which jaxns runs (it accumulates log-evidences in float64)."""
    return jax.enable_x64(True)


def _default_device():
    """The device programs are placed on now: the engine traces each device's copy of a
    program with that device as the default (jaxns places its live points itself)."""
    dev = jax.config.jax_default_device
    if dev is None or isinstance(dev, str):
        return jax.local_devices()[0]
    return dev


@dataclass(frozen=True, kw_only=True)
class Nested(Sampler):
    """Nested sampling (jaxns 2.6): posterior draws and the log-evidence ``LOGZ``.

    Attributes
    ----------
    num_live_points : int, optional
        Live points (default 25 x parameters, numpyro's default).
    max_samples : int
        Upper bound on the dead points.
    slices_per_dim : float
        jaxns slice-sampling steps per new point, per dimension (jaxns' default 5 costs 5x
        more; 1 keeps log Z within its quoted error on the tests' analytic case).
    """

    num_live_points: int | None = None
    max_samples: int = 20000
    slices_per_dim: float = 1.0
    name = "nested"

    def context(self):
        import_jaxns()
        return float64()

    def run(self, problem, d, key):
        import tensorflow_probability.substrates.jax as tfp
        from jaxns import Model, Prior as NSPrior, TerminationCondition
        from jaxns.public import DefaultNestedSampler

        D = problem.dim
        lo = d.lo.astype(jnp.float64)
        width = (d.hi - d.lo).astype(jnp.float64)

        def prior_model():
            u = yield NSPrior(tfp.distributions.Uniform(low=jnp.zeros(D), high=jnp.ones(D)), name="u")
            return u

        def loglik(u):
            x = (lo + width * u).astype(jnp.float32)
            return problem.log_likelihood(x, d).astype(jnp.float64)

        nlive = self.num_live_points or 25 * D
        ns = DefaultNestedSampler(model=Model(prior_model=prior_model, log_likelihood=loglik), num_live_points=nlive,
                                  max_samples=self.max_samples, devices=[_default_device()], s=self.slices_per_dim)
        k_ns, k_res = jax.random.split(key)
        reason, state = ns(k_ns, term_cond=TerminationCondition(dlogZ=jnp.asarray(1e-2)))
        res = ns.to_results(termination_reason=reason, state=state, trim=False)
        n_valid = res.total_num_samples
        logw = jnp.where(jnp.arange(res.log_dp_mean.shape[0]) < n_valid, res.log_dp_mean, -jnp.inf)
        idx = jax.random.categorical(k_res, logw, shape=(self.num_samples,))
        u = res.samples["u"][idx]
        x = (lo + width * u).astype(jnp.float32)
        # log Z includes the prior normalisation: uniform priors on the box
        return dict(samples=x[None], n_divergent=jnp.zeros((), jnp.int32), accept_rate=jnp.asarray(jnp.nan, jnp.float32),
                    n_grad=n_valid.astype(jnp.float32), logz=res.log_Z_mean.astype(jnp.float32),
                    logz_err=res.log_Z_uncert.astype(jnp.float32), ess=res.ESS.astype(jnp.float32))


#: The samplers by name (the CLI's ``--bayes``).
SAMPLERS = {"nuts": NUTS, "ensemble": Ensemble, "mh": MH, "importance": Importance, "nested": Nested}

__all__ = ["Sampler", "AdaptedProposal", "NUTS", "Ensemble", "MH", "Importance", "Nested", "SAMPLERS", "import_jaxns", "float64"]
