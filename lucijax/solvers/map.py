"""The MAP solver: a bounded least-squares fit of every pixel, started by a network or by
the matched filter, with Laplace uncertainties.

``MAP(...)`` holds only its own options; :meth:`MAP.program` binds it to a
:class:`~lucijax.description.BoundModel` and returns the per-spectrum program the engine
maps over a cube. The fit of one spectrum is :func:`lucijax.solvers.fitting.fit_spectrum`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.constants import C_KMS
from lucijax.diskcache import stored_arrays_many
from lucijax.model import placed
from lucijax.program import Program
from lucijax.solvers.fitting import FitSettings, PixelFit, ScaledCovariance, fit_spectrum
from lucijax.solvers.kinematics import given_kinematics, with_given
from lucijax.solvers.noise import adopt_noise
from lucijax.solvers.start import (absorption_start, diff_noise2, grid_score, maps_start, network_start, projected_rss,
                                   running_median, second_solution, start_inputs, start_templates_many, start_velocity)
from lucijax.status import GOOD, Status

log = logging.getLogger(__name__)

#: How a fit starts: the filter's mixture density network (start at its mean, bounds
#: mean +- k sigma), the point-estimate network (start only), the matched filter, or given
#: kinematic maps (an earlier run's, another filter's: start at their values, bounds around).
STARTS = ("mdn", "cnn", "matched", "maps")

#: Spectra per batch of a MAP fit on a CPU (an accelerator keeps the engine's default), and
#: per chunk of its LM loop (``FitSettings.lm_chunk``). Under ``vmap`` a batch runs its LM
#: loop until its slowest pixel settles: a pixel needs 3 fit evaluations on average, a batch
#: of 64 made 8.8 of at most 9, so narrow loops waste less; the rest of the fit (start,
#: network, final amplitudes, errors) runs faster on wide batches. ``benchmarks/RESULTS.md``.
CPU_BATCH_SIZE = 64
CPU_LM_CHUNK = 8
#: Fit evaluations (start + steps) a CPU batch's LM loop makes over the whole batch before the
#: spectra still iterating go on in groups of ``CPU_LM_CHUNK`` (``FitSettings.lm_first``; the
#: median pixel needs 3). In-process engine, 64x64 cube: 2097 -> 2342 spectra/s against chunks
#: of 8 from the start; 2 or 4 first evaluations, or groups of 4 or 16, were no faster.
CPU_LM_FIRST = 3

#: Spectra of a run that make one more device worth its compiled copy (~0.5 s to load from
#: the compilation cache against ~1 ms of CPU per spectrum).
SPECTRA_PER_DEVICE = 512

#: Fewest Levenberg-Marquardt iterations of a fit with absorption lines (``Model(absorption=...)``):
#: with 8, most pixels of a 300-500 km/s trough had not converged (``benchmarks/RESULTS.md``).
ABSORPTION_MIN_ITER = 30


class MapFit(NamedTuple):
    """Output of the MAP program for one pixel."""

    fit: PixelFit
    #: The network's posterior [velocity, broadening] (mean, sigma); NaN without a network
    #: (sigma NaN for the point-estimate CNN).
    network_mean: jax.Array
    network_sigma: jax.Array
    #: The noise (and so errors, chi2, S/N) comes from the model's noise window.
    noise_from_window: jax.Array
    #: Instrumental FWHM of the pixel (cm^-1, de-redshifted frame), as fitted.
    fwhm_cm1: jax.Array
    #: Covariance (D, D) of all parameters [theta, alpha] (``MAP(covariance=True)``), else None:
    #: a :class:`~lucijax.solvers.fitting.ScaledCovariance` out of the device, the float64
    #: matrix after :func:`finish_map`.
    covariance: jax.Array | None = None
    #: The choice between one and two components (``Components(select=True)``), else None.
    count: Any = None
    #: The best other velocity on the matched filter's grid (``MAP(ambiguity_chi2=...)``), else None.
    second: Any = None


class SecondSolution(NamedTuple):
    """The best other velocity of each kinematic group (:func:`lucijax.solvers.start.second_solution`)."""

    velocity_kms: jax.Array  # (G,), NaN where the grid has no other peak
    delta_chi2: jax.Array  # (G,): how much worse it fits than the fitted one (negative: better)


@dataclass(frozen=True)
class MAP:
    """Maximum-a-posteriori fit with Laplace uncertainties (bounded Levenberg-Marquardt on
    the non-linear parameters, the linear ones in closed form).

    Attributes
    ----------
    start : {'mdn', 'cnn', 'matched', 'maps'}
        'mdn': the filter's mixture density network starts every fit at its posterior mean
        and bounds it to mean +- ``network_sigmas`` sigma (SN1, SN2, SN3, C1-C4 ship one;
        other filters, sky-line fits, line sets without the network's reference line and
        redshifts that put the network's grid outside the axis fall back to the matched
        filter); 'cnn': the point-estimate network starts it; 'matched': a
        matched filter over the whole velocity range; 'maps': the kinematic maps
        ``start_maps`` start every fit at their values and bound it to value +-
        max(``network_sigmas`` x their error, ``maps_halfwidth_kms``).
    max_iter : int
        Most Levenberg-Marquardt iterations after the start (at least
        :data:`ABSORPTION_MIN_ITER` with absorption lines).
    stop_chi2 : float
        A pixel stops iterating once a further Gauss-Newton step would lower chi2 by less
        than this, in units of its residual variance.
    convergence_chi2 : float
        STATUS is CONVERGED when a further step would lower chi2 by less than this.
    broadening_start_kms : float
        Broadening the matched-filter start assumes.
    grid_step_kms : float
        Spacing of the matched filter's velocity grid.
    nonneg_amplitudes : bool
        Line amplitudes >= 0.
    line_free_fwhm : float
        Channels closer than this many FWHM (+ 3 broadening sigma) to a line are left out
        of the noise estimate.
    covariance : bool
        Also return each pixel's covariance matrix of all parameters (velocities,
        broadenings, amplitudes and continuum coefficients; ``FitResult.covariance``).
    detection_chi2 : float
        STATUS is 7 (NO_LINE) where the line amplitudes' joint significance ``a^T C^-1 a``
        (their chi2 against zero) is below this (9: 3 sigma for one line).
    network_sigmas : float
        Bounds of a network (or maps) start: mean +- this many sigma.
    guard_chi2 : float
        The matched filter replaces a network (or maps) start that fits the spectrum worse
        than it by more than this (chi2); so it does where the network's velocity sigma
        exceeds ``max_network_sigma_kms``.
    max_network_sigma_kms : float
    ambiguity_chi2 : float or None
        Global-optimum check (None: off; default 9): after the fit, the matched filter's summed power
        over the whole velocity grid is searched for peaks farther than one instrumental
        FWHM (in km/s; at least 2 grid steps) from the fitted velocity; where the best of
        them fits worse than the fit's own peak by less than this in chi2 (or better), a
        pixel with a good STATUS gets STATUS 8 (AMBIGUOUS), and the maps
        ``{LINE}_ALT_VELOCITY``, ``{LINE}_ALT_DCHI2`` (first line of each kinematic group)
        give that velocity and its chi2 difference everywhere.
    start_maps : path to a maps.fits, or dict of ``[y, x]`` maps
        With ``start='maps'``: an earlier run's or another filter's velocity and broadening
        maps, read as :class:`~lucijax.solvers.Frozen` reads its ``kinematics`` (per
        kinematic group, a maps file of another pointing resampled onto the cube's pixels).
        Pixels where they are not finite start from the matched filter over the full ranges.
    maps_halfwidth_kms : float
        Smallest half-width of the bounds of a maps start (km/s), so a value known to
        +-1 km/s in one filter still leaves room for the other filter's calibration.
    """

    start: str = "mdn"
    max_iter: int = 8
    stop_chi2: float = 1e-3
    convergence_chi2: float = 1e-2
    broadening_start_kms: float = 30.0
    grid_step_kms: float = 12.0
    nonneg_amplitudes: bool = True
    line_free_fwhm: float = 3.0
    covariance: bool = False
    detection_chi2: float = 9.0
    network_sigmas: float = 3.0
    guard_chi2: float = 9.0
    max_network_sigma_kms: float = 20.0
    ambiguity_chi2: float | None = 9.0
    start_maps: object = None
    maps_halfwidth_kms: float = 10.0

    def __post_init__(self):
        if self.start not in STARTS:
            raise ValueError(f"unknown start '{self.start}': choose one of {', '.join(STARTS)}")
        if (self.start == "maps") != (self.start_maps is not None):
            raise ValueError("start='maps' takes the kinematic maps start_maps (and start_maps needs start='maps')")
        if not self.maps_halfwidth_kms > 0:
            raise ValueError(f"maps_halfwidth_kms must be > 0, got {self.maps_halfwidth_kms}")
        if int(self.max_iter) < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
        if not self.grid_step_kms > 0:
            raise ValueError(f"grid_step_kms must be > 0, got {self.grid_step_kms}")
        if self.ambiguity_chi2 is not None and not np.isfinite(self.ambiguity_chi2):
            raise ValueError(f"ambiguity_chi2 must be a finite number or None, got {self.ambiguity_chi2}")

    def settings(self, model) -> FitSettings:
        """The static settings of :func:`fit_spectrum` for a :class:`~lucijax.description.Model`."""
        n_iter = int(self.max_iter)
        if getattr(model, "absorption", ()):  # a broad trough walks far from its start
            n_iter = max(n_iter, ABSORPTION_MIN_ITER)
        return FitSettings(n_iter=n_iter, velocity_range_kms=tuple(model.velocity_range),
                           broadening_range_kms=tuple(model.broadening_range),
                           broadening_start_kms=float(self.broadening_start_kms), grid_step_kms=float(self.grid_step_kms),
                           nonneg_amplitudes=bool(self.nonneg_amplitudes), line_free_fwhm=float(self.line_free_fwhm),
                           convergence_chi2=float(self.convergence_chi2), stop_chi2=float(self.stop_chi2),
                           detection_chi2=float(self.detection_chi2),
                           absorption_broadening_range_kms=tuple(getattr(model, "absorption_broadening_range",
                                                                         (50.0, 1000.0))))

    def resolve_start(self, bound):
        """(start actually used, network predictor or None): the network when one ships
        for the filter and the line set holds its reference line, else the matched filter."""
        if bound.line_set.absorption:  # the networks know emission lines only
            if self.start == "maps":
                raise ValueError("a maps start cannot start absorption lines: use start='matched'")
            return "matched", None
        if self.start in ("matched", "maps"):
            return self.start, None
        if bound.model.sky_lines is not None:
            return "matched", None  # the networks know emission lines, not the OH sky spectrum
        from lucijax.mdn import available_filters, load_network, load_predictor

        filt = (bound.filter_name or "").upper()
        if filt not in available_filters(mdn=self.start == "mdn"):
            log.warning("no shipped %s network for filter %s: the fit starts from the matched filter",
                        self.start.upper(), bound.filter_name)
            return "matched", None
        cfg, _ = load_network(filt, mdn=self.start == "mdn")
        reference = cfg["recipe"].lines[0]
        if reference not in bound.line_set.names:
            log.warning("the %s network of %s was trained on spectra led by %s, which is not fitted: "
                        "the fit starts from the matched filter", self.start.upper(), bound.filter_name, reference)
            return "matched", None
        try:
            predict = load_predictor(filt, bound.axis_obs_cm1, bound.redshift, mdn=self.start == "mdn")
        except ValueError as err:  # e.g. a C3/C4 cube at a redshift the network's grid misses
            log.warning("%s: the fit starts from the matched filter", err)
            return "matched", None
        return self.start, predict

    def program(self, bound, cube=None) -> Program:
        """The per-spectrum program of this solver on ``bound`` (``cube``, the fitted view, only for
        a maps start)."""
        settings = self.settings(bound.model)
        on_cpu = jax.default_backend() == "cpu"
        if on_cpu:
            settings = dataclasses.replace(settings, lm_chunk=CPU_LM_CHUNK, lm_first=CPU_LM_FIRST)
        start, predict = self.resolve_start(bound)
        one = map_one(bound, settings, start, predict, self)
        # the maps' values are per-pixel inputs (in the engine's fingerprint), not the program's key
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "start_maps"}
        key = "\n".join([bound.key, repr(options), repr(settings), start,
                         getattr(predict, "weights_digest", "") if predict is not None else ""])
        batch_size = CPU_BATCH_SIZE if on_cpu else None
        prepare, given = bound.inputs, {}
        if start == "maps":
            theta, err = given_kinematics(self.start_maps, bound, cube)
            prepare, given = with_given(bound, ("theta", "theta_err")), {"theta": theta, "theta_err": err}
        return Program(name="MAP fit", key=key, prepare=prepare, one=one, finish=finish_map, given=given,
                       pad={"y": np.nan}, batch_size=batch_size, spectra_per_device=SPECTRA_PER_DEVICE,
                       namedtuples=(MapFit, PixelFit, SecondSolution, ScaledCovariance),
                       meta={"bound": bound, "start": start, "solver": self})


_TEMPLATES: dict = {}
#: Template sets kept in memory (the oldest go first).
_MAX_TEMPLATES = 16


def templates_for(bound, settings: FitSettings):
    """The matched filter's templates of a bound model (at its typical FWHM), cached."""
    return templates_for_all(bound, [settings])[0]


def templates_for_all(bound, settings_list) -> list:
    """:func:`templates_for` of several settings; those neither in memory nor on disk are
    computed by one compiled program (:func:`~lucijax.solvers.start.start_templates_many`)."""
    fwhm = bound.typical_fwhm * (1 + bound.redshift)
    keys = [(bound.key, settings) for settings in settings_list]
    found = {k: _TEMPLATES[k] for k in keys if k in _TEMPLATES}  # what this call returns, whatever is evicted
    todo = list(dict.fromkeys(k for k in keys if k not in found))
    if todo:
        # kept on disk too: computing them traces the line model (~0.5 s per set, each process)
        disk = ["\n".join(["start_templates", bound.key, repr(st), repr(float(fwhm))]) for _, st in todo]
        got = stored_arrays_many(disk, lambda idx: start_templates_many(bound.line_model, fwhm,
                                                                        [todo[i][1] for i in idx]))
        for k, arrays in zip(todo, got):
            found[k] = arrays
            while len(_TEMPLATES) >= _MAX_TEMPLATES:
                _TEMPLATES.pop(next(iter(_TEMPLATES)))
            _TEMPLATES[k] = arrays
    return [found[k] for k in keys]


def matched_one(bound, settings: FitSettings, with_covariance: bool = False):
    """``one(y, fwhm) -> PixelFit`` (or ``(PixelFit, covariance)``): the fit of one spectrum
    from the matched-filter start over the settings' whole ranges."""
    model = bound.line_model
    spec = model.spec
    G, B, has_b = spec.n_groups, spec.n_broadening, spec.has_broadening
    templates, velocities = templates_for(bound, settings)
    templates, velocities, group_of_column, lo, hi = start_inputs(model, settings, templates, velocities)
    b0 = float(np.clip(settings.broadening_start_kms, *settings.broadening_range_kms))
    baseline = None
    if spec.line_set.absorption:  # the emission's start on the spectrum less its broad troughs
        step = float(np.median(np.abs(np.diff(model.grid.axis_rel_cm1))))
        half = int(np.ceil(2.0 * bound.typical_fwhm * (1 + bound.redshift) / max(step, 1e-9)))
        baseline = max(2 * half + 1, 5)

    def one(y, fwhm):
        mask = jnp.isfinite(y)
        yz = jnp.where(mask, y, 0.0)
        y_start = model.without_background(yz)
        y_start = y_start if baseline is None else y_start - running_median(y_start, baseline)
        v0 = start_velocity(y_start, mask, templates, velocities, group_of_column, G)
        b_start = jnp.full(B, b0, jnp.float32)
        if spec.line_set.absorption:
            v0, b_start = absorption_start(spec.line_set, settings, v0, b_start)
        theta0 = jnp.concatenate([v0, b_start]) if has_b else v0
        return fit_spectrum(model, settings, y, fwhm, theta0, jnp.asarray(lo), jnp.asarray(hi), with_covariance)

    return one


def guarded_one(bound, settings: FitSettings, solver: MAP, propose):
    """``one(inputs) -> (PixelFit, mean, sigma)``: the fit of one spectrum from a proposed
    start and bounds, ``propose(inputs) -> (theta, lo, hi, unsure, mean, sigma)`` (a
    network's posterior, given maps).

    The proposed start is checked against the matched-filter start: when the latter fits
    the spectrum better by more than ``guard_chi2`` (in chi2, noise from the channel-to-
    channel scatter), the proposal missed the line (an alias or a faint-line lock) and the
    fit starts from the matched filter over the settings' full ranges instead. So it does
    where the proposal is ``unsure`` (a network's velocity sigma above
    ``max_network_sigma_kms``: faint spectra, whose posterior mean can fall between two
    aliases; maps without a finite value at the pixel).
    """
    model = bound.line_model
    spec = model.spec
    G, has_b = spec.n_groups, spec.has_broadening
    templates, velocities = templates_for(bound, settings)
    templates, velocities, group_of_column, full_lo, full_hi = start_inputs(model, settings, templates, velocities)
    guard_chi2 = solver.guard_chi2

    def one(inp):
        y, fwhm = inp["y"], inp["fwhm"]
        mask = jnp.isfinite(y)
        yz = jnp.where(mask, y, 0.0)
        if spec.n_background:  # the proposal sees the spectrum without its background
            y_clean = model.without_background(yz)
            theta_p, lo, hi, unsure, mean, sigma = propose(dict(inp, y=jnp.where(mask, y_clean, jnp.nan)))
            yz = y_clean
        else:
            theta_p, lo, hi, unsure, mean, sigma = propose(inp)
        v_mf = start_velocity(yz, mask, templates, velocities, group_of_column, G)
        theta_mf = jnp.concatenate([v_mf, theta_p[G:]]) if has_b else v_mf
        scale = jnp.maximum(jnp.max(jnp.abs(yz)), 1e-30)
        ys, fm = yz / scale, mask.astype(jnp.float32)
        noise2 = jnp.maximum(diff_noise2(ys, jnp.ones(ys.shape, bool)), 1e-12)  # every pair: ys is 0 where masked
        # both starts' residuals in one vmapped evaluation (one traced copy of the model)
        rss_mf, rss_p = jax.vmap(lambda th: projected_rss(model, ys, fm, fwhm, th))(jnp.stack([theta_mf, theta_p]))
        worse = (rss_mf < rss_p - guard_chi2 * noise2) | unsure
        theta0 = jnp.where(worse, theta_mf, theta_p)
        lo = jnp.where(worse, full_lo, lo)
        hi = jnp.where(worse, full_hi, hi)
        return fit_spectrum(model, settings, y, fwhm, theta0, lo, hi, solver.covariance), mean, sigma

    return one


def network_one(bound, settings: FitSettings, predict, solver: MAP):
    """``one(inputs) -> (PixelFit, mean, sigma)``: the fit of one spectrum started and
    bounded by a network (``predict(y, fwhm) -> (mean, sigma)`` runs in the same program),
    guarded by the matched filter (:func:`guarded_one`)."""
    G, has_b, B = bound.spec.n_groups, bound.spec.has_broadening, bound.spec.n_broadening
    recipe = (getattr(predict, "config", None) or {}).get("recipe")
    trained = None if recipe is None else (tuple(recipe.velocity_range_kms), tuple(recipe.broadening_range_kms))
    # separate broadening groups: the network's one broadening (the brightest line's) starts
    # every group, and the groups are bounded by the settings' range only
    separate = has_b and bound.line_set.broadening_groups is not None
    blo, bhi = settings.broadening_range_kms

    def propose(inp):
        mean, sigma = predict(inp["y"], inp["fwhm"])
        theta, lo, hi = network_start(mean, sigma, settings, G, has_b, solver.network_sigmas, trained, n_broadening=B)
        if separate:
            lo, hi = lo.at[G:].set(blo), hi.at[G:].set(bhi)
        return theta, lo, hi, sigma[0] > solver.max_network_sigma_kms, mean, sigma  # False for the CNN's NaN

    return guarded_one(bound, settings, solver, propose)


def maps_one(bound, settings: FitSettings, solver: MAP):
    """``one(inputs) -> (PixelFit, mean, sigma)``: the fit of one spectrum started and
    bounded by its given kinematics ``inputs['theta']`` (+- ``inputs['theta_err']``),
    guarded by the matched filter (:func:`guarded_one`); mean and sigma are NaN."""
    G, has_b, B = bound.spec.n_groups, bound.spec.has_broadening, bound.spec.n_broadening
    nan2 = placed(np.full(2, np.nan, np.float32))

    def propose(inp):
        theta, lo, hi, ok = maps_start(inp["theta"], inp["theta_err"], settings, G, has_b, solver.network_sigmas,
                                       solver.maps_halfwidth_kms, n_broadening=B)
        return theta, lo, hi, ~ok, nan2, nan2

    return guarded_one(bound, settings, solver, propose)


#: Broadenings of the global-optimum check's matched filters, x the start broadening.
CHECK_BROADENINGS = (0.5, 1.0, 2.0, 4.0)


def ambiguity_check(bound, settings: FitSettings, threshold: float):
    """``check(y, fwhm, fit) -> (fit, SecondSolution)`` of ONE spectrum: the best other
    velocity on the matched filter's grid (:func:`~lucijax.solvers.start.second_solution`),
    farther than one instrumental FWHM from the fit, and STATUS AMBIGUOUS where it fits
    worse than the fit's own peak by less than ``threshold`` in chi2 (pixels whose STATUS
    was good)."""
    model = bound.line_model
    G = model.spec.n_groups
    # the matched filter at a few broadenings (the best of them at each velocity): one
    # template broadening favours lines of that width, and the other solution may differ
    widths = [settings.broadening_start_kms]
    if model.spec.has_broadening:
        blo, bhi = settings.broadening_range_kms
        widths = sorted({float(np.clip(f * settings.broadening_start_kms, blo, bhi)) for f in CHECK_BROADENINGS})
    # the fit's own start templates in the same compiled program (one compilation for all)
    stacks = templates_for_all(bound, [dataclasses.replace(settings, broadening_start_kms=w) for w in widths]
                               + [settings])[:-1]
    velocities = stacks[0][1]
    _, velocities, group_of_column, _, _ = start_inputs(model, settings, stacks[0][0], velocities)
    templates = [placed(t) for t, _ in stacks]
    min_sep = 2.0 * float(settings.grid_step_kms)
    ref = float(model.grid.ref_cm1)
    good = placed([int(s) for s in GOOD], np.int32)
    absorbing = None
    if model.spec.line_set.absorption:
        absorbing = np.isin(np.arange(G), model.spec.line_set.absorption_groups)

    def check(y, fwhm, fit: PixelFit):
        mask = jnp.isfinite(y)
        yz = model.without_background(jnp.where(mask, y, 0.0))
        ys = yz / jnp.maximum(jnp.max(jnp.abs(yz)), 1e-30)  # of order 1: float32 squares of 1e-17 underflow
        score = jnp.max(jnp.stack([grid_score(ys, mask, t, group_of_column, G) for t in templates]), axis=0)
        sep = jnp.maximum(C_KMS * fwhm / ref, min_sep)
        v_fit = jnp.where(jnp.isfinite(fit.velocity_kms), fit.velocity_kms, jnp.inf)
        velocity, delta = second_solution(score, velocities, v_fit, diff_noise2(ys, mask), sep)
        fitted = jnp.all(jnp.isfinite(fit.velocity_kms))  # invalid input: NaN like every other map
        velocity, delta = jnp.where(fitted, velocity, jnp.nan), jnp.where(fitted, delta, jnp.nan)
        if absorbing is not None:  # a broad trough has no matched-filter peak: no check
            velocity, delta = jnp.where(absorbing, jnp.nan, velocity), jnp.where(absorbing, jnp.inf, delta)
        ambiguous = jnp.any(delta < threshold) & jnp.any(fit.status == good)
        status = jnp.where(ambiguous, jnp.int32(Status.AMBIGUOUS), fit.status).astype(fit.status.dtype)
        return fit._replace(status=status), SecondSolution(velocity, delta)

    return check


def map_one(bound, settings: FitSettings, start: str, predict, solver: MAP):
    """The MAP program's function of one pixel's inputs ``{'y', 'fwhm'}`` (and
    ``'theta'``, ``'theta_err'`` for a maps start) -> :class:`MapFit`."""
    nan2 = placed(np.full(2, np.nan, np.float32))
    check = None if solver.ambiguity_chi2 is None else ambiguity_check(bound, settings, float(solver.ambiguity_chi2))

    def typed(res, mean, sigma, fwhm, y):
        fit, cov = res if solver.covariance else (res, None)
        second = None
        if check is not None:
            fit, second = check(y, fwhm, fit)
        return MapFit(fit, mean, sigma, jnp.asarray(False), fwhm, cov, second=second)

    if start == "maps":
        fit = maps_one(bound, settings, solver)
    elif predict is not None:
        fit = network_one(bound, settings, predict, solver)
    else:
        matched = matched_one(bound, settings, solver.covariance)

        def one(inp):
            return typed(matched(inp["y"], inp["fwhm"]), nan2, nan2, inp["fwhm"], inp["y"])

        return one

    def one(inp):
        res, mean, sigma = fit(inp)
        return typed(res, mean, sigma, inp["fwhm"], inp["y"])

    return one


def finish_map(out: MapFit, inputs: dict) -> MapFit:
    """Host side of a batch: the covariance multiplied out in float64 (see
    :class:`~lucijax.solvers.fitting.ScaledCovariance`), and everything rescaled to the noise
    measured in the noise window (if any)."""
    if isinstance(out.covariance, ScaledCovariance):
        units = np.asarray(out.covariance.units, np.float64)
        out = out._replace(covariance=np.asarray(out.covariance.matrix, np.float64) * units[:, :, None]
                           * units[:, None, :])
    if "_window_noise" not in inputs:
        return out
    fields = out.fit._asdict()
    own = np.asarray(fields["noise"], np.float64)
    used = adopt_noise(fields, inputs["_window_noise"])
    cov = out.covariance
    if cov is not None:  # variances scale with the noise squared
        ratio = np.where(used, np.asarray(fields["noise"], np.float64) / np.where(used, own, 1.0), 1.0)
        cov = (cov * (ratio**2)[:, None, None]).astype(cov.dtype)
    return out._replace(fit=PixelFit(**fields), noise_from_window=used, covariance=cov)


__all__ = ["MAP", "MapFit", "SecondSolution", "ambiguity_check", "STARTS", "map_one", "matched_one", "network_one",
           "maps_one", "guarded_one", "finish_map", "templates_for", "templates_for_all"]
