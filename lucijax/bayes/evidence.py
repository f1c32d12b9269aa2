"""How many kinematic components: one or two, chosen per pixel by Bayesian evidence.

For each pixel, nested sampling (:class:`~lucijax.bayes.samplers.Nested`) of a one- and a
two-component model (every line twice; the second velocity is ``v1 + delta`` with
``delta > 0`` so the components cannot swap), broad priors on velocities and broadenings
for both, amplitudes bounded by what the spectrum allows (``amplitude_scale`` x the
largest one-component MAP amplitude), and ``N = 2`` where ``log Z2 - log Z1`` exceeds the
threshold.

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
from lucijax.bayes.samplers import Nested
from lucijax.model import LineModel
from lucijax.physics.lines import LineSet
from lucijax.program import Program


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


class Selection(NamedTuple):
    """One pixel's evidence selection."""

    one: Posterior  # the one-component model's posterior
    two: Posterior  # the two-component model's (line names of two_component_line_set)
    n_components: jax.Array  # 1 or 2
    delta_logz: jax.Array  # log Z2 - log Z1


@dataclass(frozen=True)
class EvidenceSelection:
    """One or two kinematic components per pixel, by nested-sampling evidence.

    Attributes
    ----------
    nested : Nested
        The nested sampler (its prior's kind is ignored: both models get broad velocity and
        broadening priors).
    amplitude_scale : float
        Amplitude prior upper bound = this x the largest one-component MAP amplitude (see
        the module docstring).
    threshold : float
        N = 2 where log Z2 - log Z1 > threshold.
    max_separation_kms : float, optional
        Largest velocity difference of the two components (default: the velocity range).
    """

    nested: Nested = field(default_factory=Nested)
    amplitude_scale: float = 2.0
    threshold: float = 0.0
    max_separation_kms: float | None = None

    name = "evidence"

    def program(self, bound, map_values: dict, *, keep_samples: bool = False) -> Program:
        """The per-spectrum program (the samples are never streamed: two models per pixel)."""
        if keep_samples:
            raise ValueError("evidence selection keeps no samples: sample the chosen model afterwards")
        p1, p2 = component_problems(bound)
        prior = dataclasses.replace(self.nested.prior, kind="broad", amplitude_scale=self.amplitude_scale)
        ranges = (tuple(bound.model.velocity_range), tuple(bound.model.broadening_range))
        nested, threshold, max_sep = self.nested, float(self.threshold), self.max_separation_kms
        given = {f"map_{k}": np.asarray(map_values[k]) for k in MAP_FIELDS}

        def one(inp):
            fit = fit_inputs(inp)
            d1 = pixel_data(p1, prior, ranges, inp["y"], inp["fwhm"], fit, broad=True)
            d2 = component_pixel_data(p2, d1, ranges, max_sep)
            key = pixel_key(nested.seed, inp["xy"])
            k1, k2 = jax.random.split(key)
            s1 = summarize(p1, d1, nested.run(p1, d1, k1), inp["map_status"])._replace(samples=None)
            s2 = summarize(p2, d2, nested.run(p2, d2, k2), inp["map_status"])._replace(samples=None)
            nan = jnp.asarray(jnp.nan, jnp.float32)
            return Selection(s1, s2, jnp.asarray(1, jnp.int16), nan)

        def finish(out, inputs):
            s1 = diagnose(out.one, np.inf, False, True)
            s2 = diagnose(out.two, np.inf, False, True)
            dlogz = np.asarray(s2.logz, np.float64) - np.asarray(s1.logz, np.float64)
            n = np.where(dlogz > threshold, 2, 1).astype(np.int16)
            return Selection(s1, s2, n, dlogz.astype(np.float32))

        key = "\n".join([bound.key, repr(self)])
        out_bound = bound.with_line_set(two_component_line_set(bound.line_set))
        return Program(name="evidence (1 vs 2 components)", key=key, prepare=sampler_inputs(bound), one=one, finish=finish,
                       given=given, stored=False, context=nested.context, namedtuples=(Selection, Posterior),
                       meta={"bound": bound, "bound_two": out_bound, "sampler": self})


__all__ = ["EvidenceSelection", "Selection", "two_component_line_set", "component_problems", "component_pixel_data"]
