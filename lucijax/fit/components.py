"""Several kinematic components per line set, ordered in velocity so that they never swap
or collapse onto one another.

Each line of the user's line set is fitted once per component: component ``c`` (1-based)
of line ``Halpha`` is the line ``Halpha_C{c}``, with its own velocity and broadening. The
ordering is a parametrisation, not a penalty: the velocity parameter of component ``c > 1``
is its offset ``delta_c = v_c - v_{c-1}`` from the previous component, bounded by a box
``[min_separation, max_separation]``. The bounded MAP fit (:mod:`lucijax.fit.map`) then
guarantees ``v_1 < v_2 < ...`` with at least ``min_separation`` between neighbours, and a
label switch is impossible.

Fitting one spectrum:

1. a one-component fit (the plan's own fitter, matched-filter start) gives the mean
   velocity ``v`` and broadening ``b`` of the blend;
2. the components start equally spaced around ``v`` with separation ``s`` from a few
   candidates (multiples of ``b``, which measures the spread of the blend), each fitted with
   the ordered model; the start with the smallest residual sum of squares wins per pixel;
3. the result is re-expressed in the components' own velocities: a zero-iteration pass of
   the unordered model at the optimum gives amplitudes, noise, chi2 and Laplace
   uncertainties of every component's velocity and broadening (the Laplace approximation of
   a linear reparametrisation is the same Gaussian).

The output :class:`~lucijax.fit.map.PixelFit` is that of the unordered model with
``n_components x n_groups`` kinematic groups, so maps, model spectra and products work
unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.fit.map import FitSettings, PixelFit, Status, make_batch_fitter, start_templates, start_velocity
from lucijax.lines import LineSet
from lucijax.model import LineModel, ModelSpec


@dataclass(frozen=True)
class ComponentSettings:
    """Knobs of a multi-component fit.

    Attributes
    ----------
    n_components : int
        Kinematic components per kinematic group (>= 1).
    min_separation_kms : float
        Smallest velocity difference between neighbouring components (km/s): the lower
        bound of the offsets, which keeps components from collapsing onto each other.
    max_separation_kms : float or None
        Largest difference (default: the width of the settings' velocity range).
    n_iter : int
        Levenberg-Marquardt iterations of the ordered fit (more parameters than one
        component: a slightly larger budget than the default 8).
    separation_factors : tuple of float
        Starting separations as multiples of the one-component broadening (models with a
        broadening).
    separations_kms : tuple of float
        Starting separations (km/s) for models without a broadening (sinc).
    """

    n_components: int = 2
    min_separation_kms: float = 40.0
    max_separation_kms: float | None = None
    n_iter: int = 12
    separation_factors: tuple[float, ...] = (1.75,)
    separations_kms: tuple[float, ...] = (60.0, 150.0, 300.0)

    def __post_init__(self):
        if int(self.n_components) < 1:
            raise ValueError("n_components must be >= 1")
        if not self.min_separation_kms > 0:
            raise ValueError("min_separation_kms must be > 0 (it is what keeps components apart)")


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
    L, G = base.n_lines, base.n_groups
    names = tuple(component_name(name, c + 1) for c in range(n) for name in base.names)
    rest = tuple(base.rest_nm) * n
    groups = tuple(c * G + g for c in range(n) for g in base.groups)
    ties = tuple((c * L + d, c * L + p, r) for c in range(n) for d, p, r in base.ties)
    chain = tuple((c * G + g, (c - 1) * G + g) for c in range(1, n) for g in range(G)) if ordered else ()
    return LineSet(names, rest, groups, ties, chain)


def ordered_bounds(n_components: int, n_groups: int, has_broadening: bool, settings: FitSettings,
                   csettings: ComponentSettings) -> tuple[np.ndarray, np.ndarray]:
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


def _select(better, a: PixelFit, b: PixelFit) -> PixelFit:
    """Per pixel: ``b`` where ``better`` else ``a``."""
    def pick(x, y):
        m = better.reshape(better.shape + (1,) * (x.ndim - 1))
        return jnp.where(m, y, x)

    return PixelFit(*(pick(x, y) for x, y in zip(a, b)))


def _rss(fit: PixelFit):
    """Residual sum of squares up to a constant factor (same channels and dof)."""
    r = fit.chi2_reduced * fit.noise**2
    return jnp.where(jnp.isfinite(r), r, jnp.inf)


def make_component_fitter(base_fitter, base_spec: ModelSpec, grid, settings: FitSettings, csettings: ComponentSettings):
    """Batch fitter ``fit(y (B, n), fwhm (B,)) -> PixelFit`` of the multi-component model.

    ``base_fitter`` is the one-component batch fitter of ``base_spec`` (the plan's fitter);
    the result is that of the unordered component model (see the module docstring).
    """
    n = int(csettings.n_components)
    G0, has_b = base_spec.n_groups, base_spec.has_broadening
    ordered_ls = component_line_set(base_spec.line_set, n, ordered=True)
    ordered_model = LineModel(dataclasses.replace(base_spec, line_set=ordered_ls), grid)
    out_ls = dataclasses.replace(ordered_ls, velocity_chain=())
    out_model = LineModel(dataclasses.replace(base_spec, line_set=out_ls), grid)
    # starts are always given: the matched-filter templates are never used
    n_amp = ordered_model.spec.n_amplitudes
    dummy_t = np.zeros((3, n_amp, grid.n_channels), np.float32)
    dummy_v = np.linspace(-1.0, 1.0, 3).astype(np.float32)
    fit_ordered = make_batch_fitter(ordered_model, dataclasses.replace(settings, n_iter=int(csettings.n_iter)), dummy_t, dummy_v)
    fit_out = make_batch_fitter(out_model, dataclasses.replace(settings, n_iter=0), np.zeros((3, out_model.spec.n_amplitudes, grid.n_channels), np.float32), dummy_v)
    lo, hi = ordered_bounds(n, G0, has_b, settings, csettings)
    vlo, vhi = settings.velocity_range_kms
    smax = float(csettings.max_separation_kms or (vhi - vlo))
    # the unordered pass must not clip the optimum: velocities up to vhi + (n-1) smax
    out_lo = np.asarray([vlo] * (G0 * n) + ([settings.broadening_range_kms[0]] * (G0 * n) if has_b else []), np.float32)
    out_hi = np.asarray([vhi + (n - 1) * smax + 1.0] * (G0 * n) + ([settings.broadening_range_kms[1]] * (G0 * n) if has_b else []), np.float32)
    factors = csettings.separation_factors if has_b else csettings.separations_kms
    base_model = LineModel(base_spec, grid)
    group_of_column = jnp.asarray(np.asarray(base_spec.line_set.groups)[list(base_spec.line_set.primary_lines)], jnp.int32)
    templates: dict = {}

    def residual_templates(fwhm):
        if "t" not in templates:  # once, at the first batch's typical instrumental FWHM
            f = float(np.nanmedian(np.asarray(fwhm)))
            t, v = start_templates(base_model, f if np.isfinite(f) and f > 0 else 1.0, settings)
            templates["t"] = (jnp.asarray(t), jnp.asarray(v))
        return templates["t"]

    def _finite(x, fallback):
        return jnp.where(jnp.isfinite(x), x, fallback)

    @jax.jit
    def symmetric_starts(velocity, broadening):
        v = jnp.clip(_finite(velocity, 0.5 * (vlo + vhi)), vlo, vhi)
        bb = _finite(broadening, settings.broadening_start_kms) if has_b else v
        out = []
        for f in factors:
            if has_b:
                s = jnp.clip(f * bb, lo[G0], hi[G0])
            else:
                s = jnp.full_like(v, float(np.clip(f, lo[G0], hi[G0])))
            out.append(jax.vmap(lambda a, b, c: ordered_start(a, b, c, n, settings.broadening_range_kms, has_b))(v, bb, s))
        return out

    @jax.jit
    def residual_start(y, fwhm, one, tmpl, tv):
        """The one-component fit sits on the brightest component of a resolved pair: the
        matched filter of its residual finds the next one. Components then start at the two
        velocities (sorted), further ones spaced by 1.5 x the minimum separation."""
        def per_pixel(yy, ff, v, b, lin):
            ok = jnp.isfinite(yy)
            theta1 = jnp.concatenate([v, b]) if has_b else v
            theta1 = _finite(theta1, 0.0)
            model1 = base_model.spectrum(theta1, _finite(lin, 0.0), ff)
            r = jnp.where(ok, yy - model1, 0.0)
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

        b = one.broadening_kms if has_b else one.velocity_kms
        return jax.vmap(per_pixel)(y, fwhm, one.velocity_kms, b, one.linear)

    to_physical = jax.jit(jax.vmap(lambda th: physical_theta(ordered_model, th)))

    def fit(y, fwhm):
        y = jnp.asarray(y, jnp.float32)
        fwhm = jnp.asarray(fwhm, jnp.float32)
        one = base_fitter(y, fwhm)
        tmpl, tv = residual_templates(fwhm)
        b1 = one.broadening_kms if has_b else one.velocity_kms
        candidates = [residual_start(y, fwhm, one, tmpl, tv)] + list(symmetric_starts(one.velocity_kms, b1))
        best = None
        for theta0 in candidates:
            res = fit_ordered(y, fwhm, theta0, lo, hi)
            best = res if best is None else _select(_rss(res) < _rss(best), best, res)
        raw_theta = jnp.concatenate([best.velocity_kms, best.broadening_kms], axis=1) if has_b else best.velocity_kms
        raw_theta = jnp.where(jnp.isfinite(raw_theta), raw_theta, jnp.asarray(lo))
        theta = to_physical(raw_theta)
        final = fit_out(y, fwhm, theta, out_lo, out_hi)
        keep_final = (final.status == Status.INVALID_INPUT) | (final.status == Status.SINGULAR)
        status = jnp.where(keep_final, final.status, best.status).astype(jnp.int32)
        start_v = jnp.tile(one.start_velocity_kms, (1, n))
        return final._replace(status=status, start_velocity_kms=start_v)

    fit.out_spec = out_model.spec
    fit.out_model = out_model
    fit.ordered_model = ordered_model
    return fit


def plan_components(plan, csettings: ComponentSettings):
    """A :class:`~lucijax.fit.cube.FitPlan` fitting ``csettings.n_components`` ordered
    components of ``plan``'s line set; its spec, model and maps are those of the unordered
    component model (lines named ``{LINE}_C{k}``). Reused across calls with the same plan."""
    if int(csettings.n_components) == 1:
        return plan
    key = (id(plan), csettings)
    cached = _PLANS.get(key)
    if cached is not None and cached[0] is plan:
        return cached[1]
    fitter = make_component_fitter(plan.fitter, plan.spec, plan.grid, plan.settings, csettings)
    cplan = dataclasses.replace(plan, spec=fitter.out_spec, model=fitter.out_model, fitter=fitter,
                                network_fitter=None, network=None)
    if len(_PLANS) >= 4:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = (plan, cplan)
    return cplan


_PLANS: dict = {}


__all__ = [
    "ComponentSettings",
    "component_name",
    "component_line_set",
    "ordered_bounds",
    "ordered_start",
    "physical_theta",
    "make_component_fitter",
    "plan_components",
]


def simulate_components(n_pixels: int, *, lines=("Halpha", "NII6583", "NII6548"), model: str = "sincgauss",
                        n_components: int = 2, separation_kms: float = 150.0, snr_range=(20.0, 60.0),
                        broadening_range_kms=(10.0, 50.0), velocity_range_kms=(-200.0, 200.0), noise: float = 1.0,
                        filter_name: str = "SN3", seed: int = 0) -> dict:
    """Synthetic spectra of ``n_components`` components ``separation_kms`` apart (tests,
    benchmarks): returns a dict with ``spectra`` (B, n_channels of the filter band),
    ``fwhm_cm1`` (B,), ``axis_cm1``, ``line_set`` (the base set), ``window`` (channel
    indices of the band) and the truth ``velocity_kms``/``broadening_kms`` (B, C) and
    ``amplitude`` (B, C) of the first line of each component. The SNR of every component
    (first line peak / noise) is log-uniform in ``snr_range``; the other lines get ratios
    0.2-0.5 to the first (tied lines follow their tie).
    """
    from lucijax import instrument
    from lucijax.lines import make_line_set
    from lucijax.simulate import AXIS_CORR, filter_header, render_spectra

    rng = np.random.default_rng(seed)
    base = make_line_set(lines)
    ls = component_line_set(base, n_components, ordered=False)
    header = filter_header(filter_name)
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]
    band = instrument.get_filter(filter_name).band_cm1
    window = np.nonzero((axis >= band[0]) & (axis <= band[1]))[0]
    corr = AXIS_CORR * (1.0 + 0.01 * rng.uniform(-0.5, 0.5, n_pixels))
    fwhm = instrument.sinc_fwhm_cm1(header["step"], header["step_nb"], header["zpd_index"], corr)
    C = int(n_components)
    v1 = rng.uniform(*velocity_range_kms, n_pixels)
    velocity = v1[:, None] + separation_kms * np.arange(C)[None, :]
    broadening = rng.uniform(*broadening_range_kms, (n_pixels, C))
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), (n_pixels, C)))
    n_prim = len(base.primary_lines)
    ratio = np.ones((n_pixels, C, n_prim))
    ratio[:, :, 1:] = rng.uniform(0.2, 0.5, (n_pixels, C, n_prim - 1))
    amplitudes = (snr[:, :, None] * noise * ratio).reshape(n_pixels, C * n_prim)
    clean = render_spectra(ls, model, axis[window], fwhm, velocity, broadening, amplitudes, np.zeros(n_pixels))
    spectra = clean + rng.normal(0.0, noise, clean.shape)
    return {
        "spectra": spectra.astype(np.float32),
        "fwhm_cm1": np.asarray(fwhm, np.float64),
        "axis_cm1": axis,
        "window": window,
        "line_set": base,
        "velocity_kms": velocity,
        "broadening_kms": broadening,
        "amplitude": snr * noise,
        "noise": noise,
        "header": header,
    }
