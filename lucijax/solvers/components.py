"""Several kinematic components per line set, ordered in velocity so that they never swap
or collapse onto one another.

Each line of the user's line set is fitted once per component: component ``c`` (1-based)
of line ``Halpha`` is the line ``Halpha_C{c}``, with its own velocity and broadening. The
ordering is a parametrisation, not a penalty: the velocity parameter of component ``c > 1``
is its offset ``delta_c = v_c - v_{c-1}`` from the previous component, bounded by a box
``[min_separation, max_separation]``. The bounded MAP fit (:mod:`lucijax.solvers.fitting`) then
guarantees ``v_1 < v_2 < ...`` with at least ``min_separation`` between neighbours, and a
label switch is impossible.

Fitting one spectrum:

1. a one-component fit (the base MAP solver, matched-filter start) gives the mean
   velocity ``v`` and broadening ``b`` of the blend;
2. the components start equally spaced around ``v`` with separation ``s`` from a few
   candidates (multiples of ``b``, which measures the spread of the blend), each fitted with
   the ordered model; the start with the smallest residual sum of squares wins per pixel;
3. the result is re-expressed in the components' own velocities: a zero-iteration pass of
   the unordered model at the optimum gives amplitudes, noise, chi2 and Laplace
   uncertainties of every component's velocity and broadening (the Laplace approximation of
   a linear reparametrisation is the same Gaussian).

The output :class:`~lucijax.solvers.fitting.PixelFit` is that of the unordered model with
``n_components x n_groups`` kinematic groups, so maps, model spectra and products work
unchanged.

One or two components per pixel, fast (``Components(select=True)``): both fits above are
made anyway (the one-component fit is step 1), so their chi2 decide. With ``n`` valid
channels, ``D1`` and ``D2`` free parameters and the two-component fit's noise ``sigma``
(line-free channels), ``delta_chi2 = (RSS1 - RSS2) / sigma^2`` and the Bayesian information
criterion's difference ``delta_bic = delta_chi2 - (D2 - D1) ln n``; two components where
``delta_bic > bic_threshold``. ``delta_chi2 / 2`` is the best fit's log-likelihood gain; the
evidence's log Z2 - log Z1 is that gain less the Occam factor of the second component's
parameters, which ``(D2 - D1) ln(n) / 2`` approximates (the BIC is the Laplace approximation
of the evidence for a prior as wide as the data's information of one channel). Pixels where
one component is chosen keep the one-component fit in the ``_C1`` maps and NaN in the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.model import LineModel
from lucijax.physics.lines import LineSet
from lucijax.program import Program
from lucijax.solvers.fitting import MAX_CORRELATED_LINES, FitSettings, PixelFit, fit_spectrum
from lucijax.solvers.map import MAP, MapFit, finish_map, matched_one, templates_for
from lucijax.solvers.start import start_inputs, start_velocity
from lucijax.status import Status


def component_name(line: str, component: int) -> str:
    """Name of ``line`` in component ``component`` (1-based): 'Halpha' -> 'Halpha_C2'."""
    return f"{line}_C{component}"


def component_line_set(base: LineSet, n_components: int, *, ordered: bool = True) -> LineSet:
    """Every line of ``base`` once per component.

    Line ``i`` of component ``c`` (0-based) is line ``c * L + i``, in group
    ``c * G + group_i``; flux ties are repeated inside each component. With ``ordered``,
    the velocity parameter of group ``c * G + g`` (c >= 1) is its offset from group
    ``(c - 1) * G + g`` (:attr:`LineSet.velocity_chain`).
    """
    n = int(n_components)
    if n < 1:
        raise ValueError("n_components must be >= 1")
    if base.velocity_chain:
        raise ValueError("the base line set already has components")
    if base.broadening_groups is not None:
        raise ValueError("kinematic components are not supported with broadening_groups yet")
    L, G = base.n_lines, base.n_groups
    names = tuple(component_name(name, c + 1) for c in range(n) for name in base.names)
    rest = tuple(base.rest_nm) * n
    groups = tuple(c * G + g for c in range(n) for g in base.groups)
    ties = tuple((c * L + d, c * L + p, r) for c in range(n) for d, p, r in base.ties)
    chain = tuple((c * G + g, (c - 1) * G + g) for c in range(1, n) for g in range(G)) if ordered else ()
    return LineSet(names, rest, groups, ties, chain)


def ordered_bounds(n_components: int, n_groups: int, has_broadening: bool, settings: FitSettings,
                   csettings) -> tuple[np.ndarray, np.ndarray]:
    """Box bounds of the ordered parameters (velocity of component 1, offsets of the
    others, then broadenings), float32."""
    vlo, vhi = settings.velocity_range_kms
    blo, bhi = settings.broadening_range_kms
    smin = float(csettings.min_separation_kms)
    smax = float(csettings.max_separation_kms or (vhi - vlo))
    if not smax > smin:
        raise ValueError(f"max_separation_kms ({smax}) must exceed min_separation_kms ({smin})")
    n, G = int(n_components), int(n_groups)
    lo = [vlo] * G + [smin] * (G * (n - 1))
    hi = [vhi] * G + [smax] * (G * (n - 1))
    if has_broadening:
        lo += [blo] * (G * n)
        hi += [bhi] * (G * n)
    return np.asarray(lo, np.float32), np.asarray(hi, np.float32)


def ordered_start(velocity_kms, broadening_kms, separation_kms, n_components: int, broadening_range_kms,
                  has_broadening: bool):
    """Start of the ordered parameters for ONE spectrum from a one-component fit.

    Components sit equally spaced by ``separation_kms`` around the one-component velocity
    (G,); each gets the broadening that, with that spread, reproduces the one-component
    broadening: ``b_c^2 = b^2 - s^2 (n^2 - 1) / 12`` (floored at 10 km/s).
    """
    n = int(n_components)
    half_span = 0.5 * (n - 1) * separation_kms
    v1 = velocity_kms - half_span
    offsets = [jnp.broadcast_to(separation_kms, velocity_kms.shape)] * (n - 1)
    theta = [v1, *offsets]
    if has_broadening:
        b2 = broadening_kms**2 - separation_kms**2 * (n * n - 1) / 12.0
        b = jnp.clip(jnp.sqrt(jnp.maximum(b2, 100.0)), *broadening_range_kms)
        theta += [b] * n
    return jnp.concatenate(theta)


def physical_theta(model: LineModel, theta):
    """Ordered parameters -> the unordered model's (velocities, broadenings) of ONE spectrum."""
    velocity, broadening = model.split_theta(theta)
    return jnp.concatenate([velocity, broadening]) if model.spec.has_broadening else velocity




@dataclass(frozen=True)
class Components:
    """A fit of ``n_components`` ordered kinematic components of every line (maps
    ``{LINE}_C1_...``, ``{LINE}_C2_...``; see the module docstring).

    Attributes
    ----------
    n_components : int
        Kinematic components per kinematic group (>= 2).
    min_separation_kms : float
        Smallest velocity difference between neighbouring components (km/s): the lower
        bound of the offsets, which keeps components from collapsing onto each other.
    max_separation_kms : float, optional
        Largest difference (default: the width of the model's velocity range).
    max_iter : int
        Levenberg-Marquardt iterations of the ordered fit (more parameters than one
        component: a slightly larger budget than the default 8).
    separation_factors : tuple of float
        Starting separations as multiples of the one-component broadening (models with a
        broadening).
    separations_kms : tuple of float
        Starting separations (km/s) for models without a broadening (sinc).
    base : MAP
        The one-component fit that finds the blend (matched-filter start) and whose
        options (tolerances, noise) the ordered fits share.
    select : bool
        Choose one or two components per pixel (``n_components`` must be 2) by the
        difference of the Bayesian information criterion of the two fits (module
        docstring): maps ``N_COMPONENTS``, ``DELTA_CHI2``, ``DELTA_BIC``.
    bic_threshold : float
        Two components where ``delta_bic`` exceeds this.
    """

    n_components: int = 2
    min_separation_kms: float = 40.0
    max_separation_kms: float | None = None
    max_iter: int = 12
    separation_factors: tuple[float, ...] = (1.75,)
    separations_kms: tuple[float, ...] = (60.0, 150.0, 300.0)
    base: MAP = field(default_factory=lambda: MAP(start="matched"))
    select: bool = False
    bic_threshold: float = 0.0

    def __post_init__(self):
        if int(self.n_components) < 2:
            raise ValueError(f"n_components must be >= 2 (one component is the plain MAP fit), got {self.n_components}")
        if self.select and int(self.n_components) != 2:
            raise ValueError(f"select chooses between one and two components: n_components must be 2, got {self.n_components}")
        if not np.isfinite(self.bic_threshold):
            raise ValueError(f"bic_threshold must be finite, got {self.bic_threshold}")
        if not self.min_separation_kms > 0:
            raise ValueError("min_separation_kms must be > 0 (it is what keeps components apart)")
        object.__setattr__(self, "separation_factors", tuple(float(f) for f in self.separation_factors))
        object.__setattr__(self, "separations_kms", tuple(float(f) for f in self.separations_kms))

    def result_model(self, bound):
        """The bound model of the results: every line once per component (unordered)."""
        ls = component_line_set(bound.line_set, self.n_components, ordered=False)
        return bound.with_line_set(ls)

    def program(self, bound, cube=None) -> Program:
        """The per-spectrum program of the component fit on ``bound``."""
        if bound.line_set.absorption:
            raise ValueError("kinematic components of absorption lines are not supported: fit Model(absorption=...) "
                             "with MAP")
        one_pixel = component_fit(bound, self, with_one=self.select)
        out_bound = self.result_model(bound)
        nan2 = jnp.full(2, jnp.nan, jnp.float32)
        choose = count_selection(bound, out_bound, self.bic_threshold) if self.select else None

        def one(inp):
            fit, count = one_pixel(inp["y"], inp["fwhm"]), None
            if choose is not None:
                fit, count = choose(inp["y"], *fit)
            return MapFit(fit, nan2, nan2, jnp.asarray(False), inp["fwhm"], None, count)

        key = "\n".join([bound.key, repr(self), repr(self.base.settings(bound.model))])
        name = "1- or 2-component fit (BIC)" if self.select else f"{self.n_components}-component fit"
        return Program(name=name, key=key, prepare=bound.inputs, one=one,
                       finish=finish_map, pad={"y": np.nan}, namedtuples=(MapFit, PixelFit, ComponentCount),
                       meta={"bound": out_bound, "start": "matched", "solver": self})


def _finite(x, fallback):
    return jnp.where(jnp.isfinite(x), x, fallback)


def component_fit(bound, csettings: Components, with_one: bool = False):
    """``fit(y, fwhm) -> PixelFit`` of ONE spectrum with the component model of ``bound``
    (the result is that of the unordered component model; see the module docstring); with
    ``with_one``, ``(that fit, the one-component fit it started from)``."""
    n = int(csettings.n_components)
    base_spec = bound.spec
    G0, has_b = base_spec.n_groups, base_spec.has_broadening
    settings = csettings.base.settings(bound.model)
    grid = bound.grid
    ordered_ls = component_line_set(base_spec.line_set, n, ordered=True)
    ordered_model = LineModel(dataclasses.replace(base_spec, line_set=ordered_ls), grid)
    out_model = csettings.result_model(bound).line_model
    ordered_settings = dataclasses.replace(settings, n_iter=int(csettings.max_iter))
    out_settings = dataclasses.replace(settings, n_iter=0)
    lo, hi = ordered_bounds(n, G0, has_b, settings, csettings)
    vlo, vhi = settings.velocity_range_kms
    smax = float(csettings.max_separation_kms or (vhi - vlo))
    # the unordered pass must not clip the optimum: velocities up to vhi + (n-1) smax
    blo, bhi = settings.broadening_range_kms
    out_lo = np.asarray([vlo] * (G0 * n) + ([blo] * (G0 * n) if has_b else []), np.float32)
    out_hi = np.asarray([vhi + (n - 1) * smax + 1.0] * (G0 * n) + ([bhi] * (G0 * n) if has_b else []), np.float32)
    factors = csettings.separation_factors if has_b else csettings.separations_kms
    base_model = bound.line_model
    base_fit = matched_one(bound, settings)
    templates, velocities = templates_for(bound, settings)
    tmpl, tv, group_of_column, _, _ = start_inputs(base_model, settings, templates, velocities)

    def symmetric_starts(velocity, broadening):
        v = jnp.clip(_finite(velocity, 0.5 * (vlo + vhi)), vlo, vhi)
        bb = _finite(broadening, settings.broadening_start_kms) if has_b else v
        out = []
        for f in factors:
            if has_b:
                s = jnp.clip(f * bb, lo[G0], hi[G0])
            else:
                s = jnp.full_like(v, float(np.clip(f, lo[G0], hi[G0])))
            out.append(ordered_start(v, bb, s, n, settings.broadening_range_kms, has_b))
        return out

    def residual_start(y, fwhm, one):
        """The one-component fit sits on the brightest component of a resolved pair: the
        matched filter of its residual finds the next one. Components then start at the two
        velocities (sorted), further ones spaced by 1.5 x the minimum separation."""
        v = one.velocity_kms
        b = one.broadening_kms if has_b else one.velocity_kms
        ok = jnp.isfinite(y)
        theta1 = _finite(jnp.concatenate([v, b]) if has_b else v, 0.0)
        model1 = base_model.spectrum(theta1, _finite(one.linear, 0.0), fwhm)
        r = jnp.where(ok, y - model1, 0.0)
        v2 = start_velocity(r, ok, tmpl, tv, group_of_column, G0)
        vv = jnp.clip(_finite(v, 0.5 * (vlo + vhi)), vlo, vhi)
        low, high = jnp.minimum(vv, v2), jnp.maximum(vv, v2)
        sep = jnp.clip(high - low, lo[G0], hi[G0])
        theta = [low, sep] + [jnp.full_like(low, 1.5 * lo[G0])] * (n - 2)
        if has_b:
            bb = jnp.clip(_finite(b, settings.broadening_start_kms), *settings.broadening_range_kms)
            b0 = jnp.full_like(bb, jnp.clip(settings.broadening_start_kms, *settings.broadening_range_kms))
            theta += [jnp.minimum(bb, b0)] * n
        return jnp.concatenate(theta)

    def fit(y, fwhm):
        one = base_fit(y, fwhm)
        b1 = one.broadening_kms if has_b else one.velocity_kms
        starts = jnp.stack([residual_start(y, fwhm, one)] + symmetric_starts(one.velocity_kms, b1))
        # every start fitted with the ordered model (one traced copy); the smallest residual wins
        fits = jax.vmap(lambda th: fit_spectrum(ordered_model, ordered_settings, y, fwhm, th, jnp.asarray(lo),
                                                jnp.asarray(hi)))(starts)
        rss = fits.chi2_reduced * fits.noise**2
        rss = jnp.where(jnp.isfinite(rss), rss, jnp.inf)
        best = jax.tree.map(lambda a: a[jnp.argmin(rss)], fits)
        raw = jnp.concatenate([best.velocity_kms, best.broadening_kms]) if has_b else best.velocity_kms
        raw = jnp.where(jnp.isfinite(raw), raw, jnp.asarray(lo))
        theta = physical_theta(ordered_model, raw)
        final = fit_spectrum(out_model, out_settings, y, fwhm, theta, jnp.asarray(out_lo), jnp.asarray(out_hi))
        keep_final = (final.status == Status.INVALID_INPUT) | (final.status == Status.SINGULAR)
        status = jnp.where(keep_final, final.status, best.status).astype(jnp.int32)
        final = final._replace(status=status, start_velocity_kms=jnp.tile(one.start_velocity_kms, n))
        return (final, one) if with_one else final

    return fit


class ComponentCount(NamedTuple):
    """One pixel's choice between one and two components (``Components(select=True)``)."""

    n_components: jax.Array  # int16: 1 or 2 (0: no valid fit)
    delta_chi2: jax.Array  # (RSS1 - RSS2) / sigma^2
    delta_bic: jax.Array  # delta_chi2 - (D2 - D1) ln(n channels)


def _embedded_correlations(n_lines: int, n_pairs_two: int) -> np.ndarray:
    """For each flux-correlation pair of the two-component fit (``triu_indices(2 L, 1)``
    order), the index of the same pair in the one-component fit's, or -1 (a pair with a
    second-component line)."""
    if n_pairs_two == 0:
        return np.zeros(0, np.int32)
    one = {pair: k for k, pair in enumerate(zip(*np.triu_indices(n_lines, 1)))}
    return np.asarray([one.get(pair, -1) for pair in zip(*np.triu_indices(2 * n_lines, 1))], np.int32)


def count_selection(bound, two_bound, threshold: float):
    """``choose(y, two, one) -> (PixelFit, ComponentCount)`` of ONE spectrum: the fit of the
    chosen number of components in the two-component layout (see the module docstring)."""
    spec1, spec2 = bound.spec, two_bound.spec
    d1, d2 = spec1.n_nonlinear + spec1.n_linear, spec2.n_nonlinear + spec2.n_linear
    G, L, A = spec1.n_groups, spec1.line_set.n_lines, spec1.n_amplitudes
    two_pairs = 0 if 2 * L > MAX_CORRELATED_LINES else L * (2 * L - 1)
    corr_index = _embedded_correlations(L, two_pairs)
    threshold = float(threshold)
    model = bound.line_model

    def embed(one: PixelFit) -> PixelFit:
        """The one-component fit in the two-component layout (second component NaN)."""
        def nan(k):
            return jnp.full(k, jnp.nan, jnp.float32)

        per_group = {"velocity_kms", "velocity_err_kms", "broadening_kms", "broadening_err_kms", "start_velocity_kms"}
        per_line = {"amplitude", "amplitude_err", "flux_cm1", "flux_err_cm1", "flux_null_err_cm1"}
        out = {}
        for k, v in one._asdict().items():
            if k in per_group:
                out[k] = jnp.concatenate([v, nan(G)])
            elif k in per_line:
                out[k] = jnp.concatenate([v, nan(L)])
            elif k == "linear":
                out[k] = jnp.concatenate([v[:A], nan(A), v[A:]])
            elif k == "flux_corr":
                out[k] = jnp.where(corr_index >= 0, v[jnp.maximum(corr_index, 0)], jnp.nan) if corr_index.size else v[:0]
            else:
                out[k] = v
        return PixelFit(**out)

    def choose(y, two: PixelFit, one: PixelFit):
        n = jnp.sum(model.channel_mask(y)[0]).astype(jnp.float32)
        rss1 = one.chi2_reduced * jnp.maximum(n - d1, 1.0) * one.noise**2
        rss2 = two.chi2_reduced * jnp.maximum(n - d2, 1.0) * two.noise**2
        sigma2 = jnp.where(jnp.isfinite(two.noise) & (two.noise > 0), two.noise**2, one.noise**2)
        delta_chi2 = (rss1 - rss2) / sigma2
        delta_bic = delta_chi2 - (d2 - d1) * jnp.log(jnp.maximum(n, 1.0))
        two_ok = (two.status != Status.INVALID_INPUT) & (two.status != Status.SINGULAR) & jnp.isfinite(delta_bic)
        use_two = two_ok & (delta_bic > threshold)
        fit = jax.tree.map(lambda a, b: jnp.where(use_two, a, b), two, embed(one))
        count = jnp.where(one.status == Status.INVALID_INPUT, 0, jnp.where(use_two, 2, 1)).astype(jnp.int16)
        return fit, ComponentCount(count, delta_chi2.astype(jnp.float32), delta_bic.astype(jnp.float32))

    return choose


__all__ = ["Components", "ComponentCount", "count_selection", "component_name", "component_line_set", "ordered_bounds", "ordered_start", "physical_theta",
           "component_fit"]
