"""How many kinematic components: one or two, chosen per pixel by Bayesian evidence.

For each pixel, the evidence of a one- and a two-component model (every line twice; the
second velocity is ``v1 + delta`` with ``delta > 0`` so the components cannot swap), broad
priors on velocities and broadenings for both, amplitudes bounded by what the spectrum
allows (``amplitude_scale`` x the largest one-component MAP amplitude), and ``N = 2`` where
``log Z2 - log Z1`` exceeds the threshold.

Two estimators of the evidence, the same priors and likelihood:

* :class:`~lucijax.bayes.samplers.Importance` (the default): importance sampling from the
  option-2 proposal around each model's MAP fit (the one-component fit the selection is
  given, and an ordered two-component fit, :func:`~lucijax.solvers.components.component_fit`,
  made here per pixel): a few thousand likelihood evaluations per model;
* :class:`~lucijax.bayes.samplers.Nested`: nested sampling over the whole box, which needs
  no starting point and finds modes far from the MAP, at 100-1000x the cost.

Why the amplitude bound matters: a posterior never feels a bound far above the data, but
the evidence pays for every unit of prior volume (the Occam factor), so the bound must be
what a line's amplitude can physically be. Line profiles are non-negative except for the
sinc's side lobes (deepest -0.217 of the peak), so no component's peak exceeds the
spectrum's peak above its continuum by more than 1/(1 - 0.217) = 1.28x; the one-component
MAP amplitude tracks that peak, and 2x leaves room for its noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.bayes.posterior import MAP_FIELDS, Posterior, diagnose, fit_inputs, pixel_key, sampler_inputs, summarize
from lucijax.bayes.problem import PixelData, PixelProblem, pixel_data
from lucijax.bayes.samplers import Importance, Nested, Sampler
from lucijax.model import LineModel
from lucijax.physics.lines import LineSet
from lucijax.program import Program
from lucijax.solvers.components import Components, component_fit
from lucijax.status import Status


def two_component_line_set(line_set: LineSet, suffix: str = "_2") -> LineSet:
    """The lines of a one-group line set twice: group 0 (component 1, original names) and
    group 1 (component 2, names + ``suffix``), with the flux ties repeated per component."""
    if line_set.n_groups != 1:
        raise ValueError("evidence selection needs a line set with one kinematic group")
    if line_set.broadening_groups is not None:
        raise ValueError("evidence selection is not supported with broadening_groups yet")
    n = line_set.n_lines
    names = tuple(line_set.names) + tuple(f"{nm}{suffix}" for nm in line_set.names)
    rest = tuple(line_set.rest_nm) * 2
    groups = (0,) * n + (1,) * n
    ties = tuple(line_set.ties) + tuple((d + n, p + n, r) for d, p, r in line_set.ties)
    return LineSet(names, rest, groups, ties)


def component_problems(bound) -> tuple[PixelProblem, PixelProblem]:
    """(one-component problem, ordered two-component problem) on the bound model's grid."""
    spec = bound.spec
    if not spec.has_broadening:
        raise ValueError("component selection needs a model with a broadening (sincgauss or gaussian)")
    lm2 = LineModel(dataclasses.replace(spec, line_set=two_component_line_set(spec.line_set)), bound.grid)
    return PixelProblem(bound.line_model), PixelProblem(lm2, ordered=True)


def component_pixel_data(problem2: PixelProblem, data1: PixelData, ranges, max_separation_kms=None) -> PixelData:
    """Boxes of the ordered two-component model from one pixel's one-component (broad)
    boxes: v1 over the velocity range, delta in (0, max_separation], both broadenings over
    the broadening range, 2 x the amplitudes with the same bounds, the same continuum box."""
    (vlo, vhi), (blo, bhi) = ranges
    dmax = max_separation_kms or (vhi - vlo)
    n_amp = problem2.n_amplitudes // 2
    a1_lo, a1_hi = data1.lo[2:2 + n_amp], data1.hi[2:2 + n_amp]
    c_lo, c_hi = data1.lo[2 + n_amp:], data1.hi[2 + n_amp:]
    f32 = jnp.float32
    b0 = max(blo, 0.0)
    lo = jnp.concatenate([jnp.asarray([vlo, 0.0, b0, b0], f32), a1_lo, a1_lo, c_lo])
    hi = jnp.concatenate([jnp.asarray([vhi, dmax, bhi, bhi], f32), a1_hi, a1_hi, c_hi])
    P = problem2.n_nonlinear
    return data1._replace(lo=lo, hi=hi, x0=0.5 * (lo + hi), prop_mean=jnp.zeros(P, f32), prop_sigma=jnp.ones(P, f32),
                          map_sigma=jnp.full(P, jnp.nan, f32))


def two_component_proposal(d2: PixelData, two, prior, d1: PixelData) -> PixelData:
    """``d2`` (:func:`component_pixel_data`) with the proposal of ONE pixel's ordered
    two-component posterior taken from its two-component MAP fit ``two`` (a
    :class:`~lucijax.solvers.fitting.PixelFit` of the unordered component model, velocities
    sorted): mean ``(v1, v2 - v1, b1, b2)``, Laplace errors ``(e_v1, hypot(e_v1, e_v2), e_b1,
    e_b2)`` (an unresolved line's broadening error: the prior's), and the network's role (the
    wide part of the defensive mixture) given to the same mean with 3x those errors, floored
    as the prior's fallback sigmas are. A failed
    fit leaves the box's centre with a quarter of the box's widths. The one-component
    fit's Laplace approximation (``d1``'s) becomes the ``anchor`` of the proposal's
    one-component submodel parts (:class:`~lucijax.bayes.kernels.SubmodelProposal`)."""
    f32 = jnp.float32
    v, ve = two.velocity_kms.astype(f32), two.velocity_err_kms.astype(f32)
    b, be = two.broadening_kms.astype(f32), two.broadening_err_kms.astype(f32)
    t = jnp.stack([v[0], v[1] - v[0], b[0], b[1]])
    err = jnp.stack([ve[0], jnp.hypot(ve[0], ve[1]), be[0], be[1]])
    floor = jnp.asarray([prior.min_velocity_sigma_kms] * 2 + [prior.min_broadening_sigma_kms] * 2, f32)
    unresolved = jnp.asarray([jnp.nan] * 2 + [prior.unresolved_broadening_sigma_kms] * 2, f32)
    err = jnp.where(jnp.isfinite(err), jnp.maximum(err, 0.05), unresolved)  # an unresolved line: no broadening error
    lo, hi = d2.lo[:4], d2.hi[:4]
    ok = ((two.status != Status.INVALID_INPUT) & (two.status != Status.SINGULAR) & jnp.all(jnp.isfinite(t))
          & jnp.all(jnp.isfinite(err)) & (t[1] > 0))
    inner = 1e-4 * (hi - lo)
    mean = jnp.clip(jnp.where(ok, t, 0.5 * (lo + hi)), lo + inner, hi - inner)
    sigma = jnp.where(ok, err, 0.25 * (hi - lo))
    one_ok = jnp.all(jnp.isfinite(d1.map_sigma) & (d1.map_sigma > 0))
    one_sigma = jnp.where(one_ok, jnp.maximum(d1.map_sigma, 0.05), d1.prop_sigma)
    anchor = jnp.concatenate([d1.x0[:2], one_sigma]).astype(f32)
    return d2._replace(x0=d2.x0.at[:4].set(mean), prop_mean=mean, prop_sigma=3.0 * jnp.maximum(sigma, floor),
                       map_sigma=jnp.where(ok, sigma, jnp.nan), anchor=anchor)


class Selection(NamedTuple):
    """One pixel's evidence selection."""

    one: Posterior  # the one-component model's posterior
    two: Posterior  # the two-component model's (line names of two_component_line_set)
    n_components: jax.Array  # 1 or 2
    delta_logz: jax.Array  # log Z2 - log Z1


@dataclass(frozen=True)
class EvidenceSelection:
    """One or two kinematic components per pixel, by evidence (see the module docstring).

    Attributes
    ----------
    estimator : Importance or Nested
        The sampler that estimates each model's evidence (its prior's kind is ignored: both
        models get broad velocity and broadening priors).
    amplitude_scale : float
        Amplitude prior upper bound = this x the largest one-component MAP amplitude (see
        the module docstring).
    threshold : float
        N = 2 where log Z2 - log Z1 > threshold.
    max_separation_kms : float, optional
        Largest velocity difference of the two components (default: the velocity range).
    """

    estimator: Sampler = field(default_factory=Importance)
    amplitude_scale: float = 2.0
    threshold: float = 0.0
    max_separation_kms: float | None = None

    name = "evidence"

    def __post_init__(self):
        if not isinstance(self.estimator, (Importance, Nested)):
            raise TypeError(f"the evidence needs Importance() or Nested(), got {type(self.estimator).__name__}")

    def program(self, bound, map_values: dict, *, keep_samples: bool = False) -> Program:
        """The per-spectrum program (the samples are never streamed: two models per pixel)."""
        if keep_samples:
            raise ValueError("evidence selection keeps no samples: sample the chosen model afterwards")
        p1, p2 = component_problems(bound)
        est = self.estimator
        prior = dataclasses.replace(est.prior, kind="broad", amplitude_scale=self.amplitude_scale)
        ranges = (tuple(bound.model.velocity_range), tuple(bound.model.broadening_range))
        threshold, max_sep = float(self.threshold), self.max_separation_kms
        given = {f"map_{k}": np.asarray(map_values[k]) for k in MAP_FIELDS}
        two_fit = component_fit(bound, Components(max_separation_kms=max_sep)) if est.uses_proposal else None

        def one(inp):
            fit = fit_inputs(inp)
            d1 = pixel_data(p1, prior, ranges, inp["y"], inp["fwhm"], fit, broad=True)
            d2 = component_pixel_data(p2, d1, ranges, max_sep)
            if two_fit is not None:
                d2 = two_component_proposal(d2, two_fit(inp["y"], inp["fwhm"]), prior, d1)
            key = pixel_key(est.seed, inp["xy"])
            k1, k2 = jax.random.split(key)
            s1 = summarize(p1, d1, est.run(p1, d1, k1), inp["map_status"])._replace(samples=None)
            s2 = summarize(p2, d2, est.run(p2, d2, k2), inp["map_status"])._replace(samples=None)
            nan = jnp.asarray(jnp.nan, jnp.float32)
            return Selection(s1, s2, jnp.asarray(1, jnp.int16), nan)

        def finish(out, inputs):
            s1 = diagnose(out.one, np.inf, False)
            s2 = diagnose(out.two, np.inf, False)
            dlogz = np.asarray(s2.logz, np.float64) - np.asarray(s1.logz, np.float64)
            n = np.where(dlogz > threshold, 2, 1).astype(np.int16)
            return Selection(s1, s2, n, dlogz.astype(np.float32))

        key = "\n".join([bound.key, repr(self)])
        out_bound = bound.with_line_set(two_component_line_set(bound.line_set))
        return Program(name=f"evidence (1 vs 2 components, {est.name})", key=key, prepare=sampler_inputs(bound),
                       one=one, finish=finish, given=given, stored=False, context=est.context,
                       namedtuples=(Selection, Posterior), meta={"bound": bound, "bound_two": out_bound, "sampler": self})


__all__ = ["EvidenceSelection", "Selection", "two_component_line_set", "component_problems", "component_pixel_data",
           "two_component_proposal"]
