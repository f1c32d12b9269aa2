"""A sampler as a per-spectrum program: posterior summaries of every pixel after its MAP fit.

:func:`posterior_program` binds a sampler (:mod:`lucijax.bayes.samplers`) to a bound model
and to the MAP fit of every pixel (its per-pixel inputs); for each pixel the program builds
the boxes of its parameters (:func:`~lucijax.bayes.problem.pixel_data`), samples with a key
derived from the sampler's seed and the pixel's coordinates, and summarises the draws:
posterior medians, half the 16-84 % widths as errors, split R-hat (max over parameters) and
effective sample size (min) as :mod:`numpyro.diagnostics` defines them, computed on the device
(:mod:`lucijax.bayes.diagnostics`), the log-evidence
(nested or importance sampling), and, on request, the draws themselves.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.bayes.diagnostics import rhat_and_ess
from lucijax.bayes.problem import MapValues, PixelData, PixelProblem, Prior, map_fallback_prior, pixel_data
from lucijax.constants import QUANTILES
from lucijax.physics.lines import ratios_in
from lucijax.program import Program, ProgressNote
from lucijax.solvers.fitting import flux_correlations
from lucijax.status import GOOD, Status

#: Fields of the MAP fit a posterior takes as per-pixel inputs.
MAP_FIELDS = ("velocity_kms", "velocity_err_kms", "broadening_kms", "broadening_err_kms", "linear", "noise", "status")


class Posterior(NamedTuple):
    """Posterior summary of one pixel (field names as :class:`~lucijax.solvers.PixelFit`'s
    where they mean the same: medians for values, half 16-84 % widths for errors)."""

    velocity_kms: jax.Array  # (G,)
    velocity_err_kms: jax.Array
    broadening_kms: jax.Array  # (G,)
    broadening_err_kms: jax.Array
    amplitude: jax.Array  # (L,)
    amplitude_err: jax.Array
    flux_cm1: jax.Array  # (L,)
    flux_err_cm1: jax.Array
    flux_corr: jax.Array  # correlations of the flux draws, pairs as PixelFit.flux_corr
    ratio_quantiles: jax.Array  # (R, 3) 16/50/84 % quantiles of the draws of each ratio in ratios_in(lines)
    continuum: jax.Array  # ()
    continuum_err: jax.Array  # () half the 16-84 % width of the continuum draws
    linear: jax.Array  # (K,) medians of the linear parameters, flux unit
    chi2_reduced: jax.Array  # at the posterior medians
    rhat_max: jax.Array  # split R-hat, max over the parameters (NaN with one chain)
    ess_min: jax.Array  # bulk effective sample size, min over the parameters
    accept_rate: jax.Array
    n_divergent: jax.Array
    n_grad: jax.Array  # gradient or likelihood evaluations
    logz: jax.Array  # log-evidence (nested or importance sampling; NaN otherwise), flux unit of the spectrum
    logz_err: jax.Array
    status: jax.Array  # the MAP fit's, or NOT_MIXED
    samples: jax.Array | None  # (chains, draws, parameters) raw parameters, flux unit (bulk)
    scale: jax.Array  # the unit the sampler worked in (the MAP noise)
    n_channels: jax.Array  # channels in the likelihood


def ratio_quantiles(flux, names):
    """The :data:`~lucijax.constants.QUANTILES` (R, 3) of each diagnostic ratio of
    :func:`~lucijax.physics.lines.ratios_in` ``names`` over flux draws ``(N, L)``: straight
    from the draws (no delta method: right where a term is faint)."""
    ratios = [jnp.sum(flux[:, list(num)], axis=1) / jnp.sum(flux[:, list(den)], axis=1)
              for _, num, den in ratios_in(names)]
    if not ratios:
        return jnp.zeros((0, len(QUANTILES)), flux.dtype)
    return jnp.nanpercentile(jnp.stack(ratios, axis=1), jnp.asarray(QUANTILES, flux.dtype), axis=0).T


def summarize(problem: PixelProblem, d: PixelData, run: dict, status) -> Posterior:
    """Medians and half 16-84 % widths of one pixel's draws ``run['samples']`` (C, S, D)."""
    x = run["samples"]
    C, S, D = x.shape
    flat = x.reshape(C * S, D)
    v, b, amp, flux, cont = jax.vmap(lambda xx: problem.derived(xx, d))(flat)
    sc = d.scale
    amp, flux, cont = amp * sc, flux * sc, cont * sc
    q = jnp.asarray(QUANTILES, jnp.float32)

    def med_err(a):
        p = jnp.nanpercentile(a, q, axis=0)
        return p[1], 0.5 * (p[2] - p[0])

    vel, vel_err = med_err(v)
    if problem.spec.has_broadening:
        br, br_err = med_err(b)
    else:
        br = br_err = jnp.full_like(vel, jnp.nan)
    a_med, a_err = med_err(amp)
    f_med, f_err = med_err(flux)
    _, c_err = med_err(cont)
    f_corr = flux_correlations(jnp.cov(flux, rowvar=False).reshape(flux.shape[1], flux.shape[1]))
    r_q = ratio_quantiles(flux, problem.spec.line_set.names)
    x_med = jnp.nanmedian(flat, axis=0)
    theta, alpha = problem.theta_alpha(x_med)
    del theta
    theta_med = jnp.concatenate([vel, br]) if problem.spec.has_broadening else vel
    mu = problem.line_model.spectrum(theta_med, alpha, d.fwhm)
    r = d.mask * (d.y - mu) / d.noise
    n_used = jnp.sum(d.mask > 0)
    chi2 = jnp.sum(r * r) / jnp.maximum(n_used - problem.dim, 1.0)
    nan = jnp.asarray(jnp.nan, jnp.float32)
    if "ess" in run:  # nested or importance sampling: one resampled set of draws, its own ESS
        rhat, ess = nan, run["ess"] * jnp.ones((), jnp.float32)
    else:
        rhat, ess = rhat_and_ess(x.astype(jnp.float32))
    return Posterior(
        velocity_kms=vel, velocity_err_kms=vel_err, broadening_kms=br, broadening_err_kms=br_err,
        amplitude=a_med, amplitude_err=a_err, flux_cm1=f_med, flux_err_cm1=f_err, flux_corr=f_corr,
        ratio_quantiles=r_q,
        continuum=jnp.nanmedian(cont), continuum_err=c_err, linear=alpha * sc, chi2_reduced=chi2,
        rhat_max=rhat, ess_min=ess,
        accept_rate=jnp.asarray(run["accept_rate"], jnp.float32), n_divergent=jnp.asarray(run["n_divergent"], jnp.int32),
        n_grad=jnp.asarray(run["n_grad"], jnp.float32), logz=run.get("logz", nan) * jnp.ones((), jnp.float32),
        logz_err=run.get("logz_err", nan) * jnp.ones((), jnp.float32), status=jnp.asarray(status, jnp.int32),
        samples=x, scale=jnp.asarray(sc, jnp.float32), n_channels=n_used.astype(jnp.int32),
    )


def diagnose(post: Posterior, rhat_threshold: float, keep_samples: bool) -> Posterior:
    """Host side of a batch (numpy, vectorised): STATUS 6 where the split R-hat (computed on
    the device by :func:`summarize`) exceeds the threshold, the log-evidence in the
    spectrum's flux unit, and the draws in the flux unit (or dropped)."""
    rhat = np.asarray(post.rhat_max, np.float32)
    status = np.asarray(post.status).copy()
    good = np.isin(status, [int(s) for s in GOOD])
    with np.errstate(invalid="ignore"):
        status[good & (rhat > rhat_threshold)] = int(Status.NOT_MIXED)
    scale = np.asarray(post.scale, np.float64)
    # back to the spectrum's flux unit: the likelihood was evaluated on y / scale
    logz = np.asarray(post.logz, np.float64) - np.asarray(post.n_channels, np.float64) * np.log(scale)
    samples = None
    if keep_samples:
        x = np.asarray(post.samples)
        P = x.shape[-1] - np.asarray(post.linear).shape[-1]
        samples = x.copy()
        samples[..., P:] *= scale.reshape(-1, 1, 1, 1).astype(np.float32)
    return post._replace(rhat_max=rhat, ess_min=np.asarray(post.ess_min, np.float32), status=status,
                         logz=logz, samples=samples)


def pixel_key(seed: int, xy):
    """The random key of the pixel at view coordinates ``xy`` (independent of batches)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), xy[0]), xy[1])


def sampler_inputs(bound):
    """``prepare`` of a sampler's program: a pixel's window spectrum and FWHM, its MAP
    values (the program's per-pixel inputs) and its coordinates (its random key)."""
    def prepare(block):
        out = {k: v for k, v in bound.inputs(block).items() if not k.startswith("_")}
        out.update(block.given)
        out["xy"] = block.xy
        return out

    return prepare


def fit_inputs(inp: dict) -> MapValues:
    return MapValues(*(inp[f"map_{k}"] for k in MapValues._fields))


def rhat_note(sampler) -> ProgressNote | None:
    """The progress bar's running share of pixels whose split R-hat (max over the
    parameters) is at most ``sampler.rhat_threshold`` (``R-hat<=1.05: 98.7%``), the share
    :meth:`~lucijax.results.PosteriorResult.converged_fraction` gives at the end; None for
    samplers without an R-hat (nested sampling, a single chain)."""
    chains = getattr(sampler, "num_chains", getattr(sampler, "walkers", 1))
    if getattr(sampler, "name", "") == "nested" or int(chains) < 2:
        return None
    threshold = float(sampler.rhat_threshold)

    def count(out):
        r = np.asarray(out.rhat_max)
        return int(np.sum(r <= threshold)), int(r.size)

    return ProgressNote(label=f"R-hat<={threshold:g}", count=count)


def posterior_program(sampler, bound, map_values: dict, network=None, *, keep_samples: bool = False) -> Program:
    """The per-spectrum program of ``sampler`` on ``bound``.

    Parameters
    ----------
    sampler : Sampler
    bound : BoundModel
    map_values : dict of ``[x, y, ...]`` arrays
        The MAP fit of every pixel (:data:`MAP_FIELDS`).
    network : (mean, sigma) ``[x, y, 2]`` arrays, optional
        The posterior of the network that started the MAP fit: the informed prior and the
        MH proposal (one-component models with a broadening); without it, the MAP fit and
        its errors (:func:`~lucijax.bayes.problem.map_fallback_prior`).
    keep_samples : bool
        Stream every pixel's draws to the caller's sink (bulk field ``samples``).
    """
    problem = PixelProblem(bound.line_model)
    sampler.check(problem)
    spec = bound.spec
    has_b = spec.has_broadening
    use_network = network is not None and has_b and spec.n_nonlinear == 2  # one velocity, one broadening
    prior: Prior = sampler.prior
    ranges = (tuple(bound.model.velocity_range), tuple(bound.model.broadening_range))
    thin = int(getattr(sampler, "thin", 1))
    given = {f"map_{k}": np.asarray(map_values[k]) for k in MAP_FIELDS}
    if use_network:
        given["prior_mean"] = np.asarray(network[0], np.float32)
        given["prior_sigma"] = np.asarray(network[1], np.float32)

    def one(inp):
        fit = fit_inputs(inp)
        if use_network:
            pm, ps = inp["prior_mean"], inp["prior_sigma"]
            proposal = ps
        else:
            pm, ps = map_fallback_prior(fit, prior, has_b)
            proposal = ps / prior.fallback_error_scale
        d = pixel_data(problem, prior, ranges, inp["y"], inp["fwhm"], fit, pm, ps, proposal_sigma=proposal)
        run = sampler.run(problem, d, pixel_key(sampler.seed, inp["xy"]))
        if thin > 1:
            run = {**run, "samples": run["samples"][:, thin - 1::thin]}
        post = summarize(problem, d, run, inp["map_status"])
        return post if keep_samples else post._replace(samples=None)  # diagnosed here: the draws stay on the device

    def finish(out, inputs):
        return diagnose(out, sampler.rhat_threshold, keep_samples)

    key = "\n".join([bound.key, repr(sampler), "network" if use_network else "map"])
    name = sampler.name if thin == 1 else f"{sampler.name} (x{thin} draws, thinned)"
    batch_size = getattr(sampler, "cpu_batch_size", None) if jax.default_backend() == "cpu" else None
    return Program(name=name, key=key, prepare=sampler_inputs(bound), one=one, finish=finish, given=given,
                   bulk=("samples",) if keep_samples else (), stored=False, context=sampler.context,
                   batch_size=batch_size,
                   namedtuples=(Posterior,), meta={"bound": bound, "sampler": sampler, "problem": problem,
                                                   "prior_source": "network" if use_network else "map"},
                   progress_note=rhat_note(sampler))


__all__ = ["Posterior", "posterior_program", "summarize", "ratio_quantiles", "diagnose", "pixel_key", "MAP_FIELDS",
           "rhat_note"]
