"""What to fit, said once: :class:`Model` (lines, profile, ties, kinematic groups,
continuum, window, redshift, noise weighting, parameter ranges) and its binding to a cube's
spectral axis, :class:`BoundModel` (the channels of the fit window, the line model on them,
each pixel's inputs).

A :class:`Model` is a plain description, independent of any cube: the same object fits a
region, a binned view or another cube of the same filter. ``model.bind(header)`` checks it
against a cube (every line observable in the window, the window inside the axis) and
builds the static line model; solvers and samplers take the bound model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from lucijax.model import LineModel, ModelSpec, SpectralGrid, channel_weights
from lucijax.physics import instrument
from lucijax.physics.lineshapes import MODELS
from lucijax.physics.lines import (DEFAULT_RATIO_RANGES, LineSet, UnknownLineError, absorption_line_set, canonical_line_name,
                                   join_line_sets, make_line_set, sky_line_set)

log = logging.getLogger(__name__)


class LineOutsideWindowError(ValueError):
    """A requested line cannot be observed inside the fit window."""


def parse_range(text, what: str, unit: str = "cm-1", example: str = "14700:15400") -> tuple[float, float]:
    """'MIN:MAX' (or a pair) -> (min, max) with min < max; ``what`` names it in errors."""
    if isinstance(text, str):
        try:
            lo, hi = (float(v) for v in text.split(":"))
        except ValueError as err:
            raise ValueError(f"cannot read {what} '{text}': expected MIN:MAX in {unit}, e.g. {example}") from err
    else:
        try:
            lo, hi = (float(v) for v in text)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what} must be a pair (min, max) in {unit}, got {text!r}") from err
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{what} {lo:g}:{hi:g}: the first value must be smaller than the second")
    return lo, hi


def _line_name(name: str) -> str:
    try:
        return canonical_line_name(name)
    except UnknownLineError:  # a user line 'NAME=nm' is named NAME
        return name


def parse_ratio_ranges(ranges) -> tuple[tuple[str, str, tuple[float, float]], ...]:
    """``Model.ratio_ranges`` -> ``((dependent, primary, (lo, hi)), ...)`` with catalogue
    names: None gives :data:`~lucijax.physics.lines.DEFAULT_RATIO_RANGES`; a dict maps
    ``"DEP/PRIM"`` (or a pair of names) to ``(lo, hi)`` or ``"lo:hi"``."""
    if ranges is None:
        return DEFAULT_RATIO_RANGES
    if isinstance(ranges, dict):
        items = list(ranges.items())
    else:  # already parsed (a Model rebuilt by dataclasses.replace)
        items = [((dep, prim), rng) for dep, prim, rng in ranges]
    out = []
    for key, rng in items:
        if isinstance(key, str):
            if key.count("/") != 1:
                raise ValueError(f"ratio range key '{key}': expected 'DEPENDENT/PRIMARY', e.g. 'OII3729/OII3726'")
            key = key.split("/")
        dep, prim = (_line_name(str(n).strip()) for n in key)
        lo, hi = parse_range(rng, f"ratio range of {dep}/{prim}", "", "0.35:1.5")
        if lo < 0:
            raise ValueError(f"ratio range of {dep}/{prim} {lo:g}:{hi:g}: a flux ratio is >= 0")
        out.append((dep, prim, (lo, hi)))
    return tuple(out)


class Background:
    """Background spectra fitted in every pixel with free coefficients: extra linear
    columns of the model beside the continuum, e.g. the mean and principal components of a
    sky region's spectra (:func:`lucijax.views.background_pca`), for a sky that varies across
    the field where one subtracted spectrum leaves residuals.

    Parameters
    ----------
    spectra : (K, n_channels) array
        The background spectra on the cube's whole spectral axis (NaN channels count as 0).
    source : str
        What they were made from (for the records).

    Equal (and hashed) by content: two models with the same spectra bind to one line model.
    """

    def __init__(self, spectra, source: str = ""):
        arr = np.atleast_2d(np.asarray(spectra, np.float64))
        if arr.ndim != 2 or arr.shape[1] < 10:
            raise ValueError(f"background spectra must be an array (K, n_channels), got shape {np.shape(spectra)}")
        arr = np.where(np.isfinite(arr), arr, 0.0)
        if not np.all(np.any(arr != 0.0, axis=1)):
            raise ValueError("a background spectrum is zero (or not finite) in every channel")
        arr.setflags(write=False)
        self.spectra = arr
        self.source = str(source)
        self.digest = hashlib.sha256(arr.tobytes()).hexdigest()[:16]

    @property
    def n_components(self) -> int:
        return int(self.spectra.shape[0])

    def __eq__(self, other):
        return isinstance(other, Background) and other.digest == self.digest

    def __hash__(self):
        return hash(self.digest)

    def __repr__(self):
        return (f"Background({self.n_components} spectra x {self.spectra.shape[1]} channels, "
                f"sha256 {self.digest}" + (f", from {self.source}" if self.source else "") + ")")


@dataclass(frozen=True)
class Model:
    """The line model to fit (see the module docstring).

    Attributes
    ----------
    lines : tuple of str
        Catalogue names ('Halpha', 'NII6583', 'NII6548', 'SII6716', 'SII6731', ...; aliases
        such as 'Ha', '[NII]6584' work) or user lines 'NAME=air_wavelength_nm'.
    profile : {'sincgauss', 'sinc', 'gaussian'}
        Line shape: the instrumental sinc, a Gaussian, or their convolution.
    groups : tuple of int, optional
        Kinematic group of each line (default: one velocity and broadening for all).
    broadening_groups : tuple of int, optional
        Broadening group of each line, independent of ``groups`` (LUCI's ``sigma_rel``,
        ORCS's ``sigma_def``): e.g. ``groups=(0, 0, 0), broadening_groups=(0, 1, 1)`` for
        Halpha and the [NII] doublet with one velocity and two broadenings. Default (None):
        one broadening per kinematic group. The sinc has no broadening and ignores them.
    tie_nii, tie_oiii : bool
        3:1 flux ratio of [NII]6583/6548 (default on) and of [OIII]5007/4959 (default off).
    sky_lines : path, optional
        ORB sky line list: every line of it inside the band, with one shared velocity (the
        first kinematic group); ``lines`` then adds emission lines in groups of their own.
    continuum_order : int
        Degree of the continuum polynomial.
    continuum_spline : int
        N > 0: a cubic B-spline of N equal intervals over the window instead (for continua
        with structure; keep an interval much wider than a line).
    window : (smin, smax), optional
        Fit window in observed cm^-1 (default: the filter band).
    redshift : float
        The axis is de-redshifted by (1 + z); velocities are residuals.
    flambda_weights : bool
        Weight the channels of flux-calibrated data with a per-channel ``flambda`` by 1 /
        its relative value (the noise of calibrated FTS spectra follows ``flambda``).
    noise_window : (smin, smax), optional
        Observed cm^-1 of a line-free window where each pixel's noise is measured (e.g.
        below the filter band, where an FTS spectrum holds noise only); default: the fit's
        own line-free residuals.
    velocity_range : (vmin, vmax)
        Velocities (km/s, after de-redshifting) the fit searches and is bounded to, and the
        broad prior of the samplers.
    broadening_range : (bmin, bmax)
        Bounds of the Gaussian broadening (km/s).
    absorption : tuple of str
        Catalogue lines to fit also in absorption (e.g. ``('Halpha',)``: the Balmer
        absorption of the stars under the Halpha emission): a copy of each, named
        ``{LINE}_ABS`` (maps ``HALPHA_ABS_FLUX``, ...), with a negative amplitude and flux,
        all in one extra kinematic group (the stars' velocity and broadening). The
        emission lines keep their own maps: the two components are separate.
    absorption_broadening_range : (bmin, bmax)
        Bounds of the absorption group's broadening (km/s; a stellar Balmer line is a few
        hundred km/s wide); the fit starts at their geometric mean.
    background : Background, optional
        Background spectra fitted in every pixel with free coefficients
        (:func:`lucijax.views.background_pca`: a sky region's mean and principal components).
    ratio_ranges : dict, optional
        Physical ranges of flux ratios of two free lines of one group, ``{"DEP/PRIM": (lo,
        hi)}`` (energy fluxes): the fit keeps ``lo <= F(DEP)/F(PRIM) <= hi`` and its errors
        are those of the posterior inside the range. Default (None): the density-sensitive
        [OII]3729/3726 between its high- and low-density limits at 10^4 K, 0.347-1.499
        (PyNeb; :data:`lucijax.physics.lines.DEFAULT_RATIO_RANGES`), when both lines are
        fitted; ``{}``: every ratio free.
    """

    lines: tuple[str, ...] = ()
    profile: str = "sincgauss"
    groups: tuple[int, ...] | None = None
    broadening_groups: tuple[int, ...] | None = None
    tie_nii: bool = True
    tie_oiii: bool = False
    sky_lines: str | None = None
    continuum_order: int = 0
    continuum_spline: int = 0
    window: tuple[float, float] | None = None
    redshift: float = 0.0
    flambda_weights: bool = True
    noise_window: tuple[float, float] | None = None
    velocity_range: tuple[float, float] = (-600.0, 600.0)
    broadening_range: tuple[float, float] = (0.0, 300.0)
    absorption: tuple[str, ...] = ()
    absorption_broadening_range: tuple[float, float] = (50.0, 1000.0)
    background: Background | None = None
    ratio_ranges: object = None

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        lines = (self.lines,) if isinstance(self.lines, str) else tuple(self.lines or ())
        put("lines", tuple(str(v) for v in lines))
        if self.groups is not None:
            put("groups", tuple(int(g) for g in self.groups))
        if self.broadening_groups is not None:
            put("broadening_groups", tuple(int(g) for g in self.broadening_groups))
        if self.sky_lines is not None:
            put("sky_lines", str(self.sky_lines))
        if not self.lines and self.sky_lines is None:
            raise ValueError("no lines to fit: give lines (e.g. Halpha NII6583 NII6548) or sky_lines (an ORB line list)")
        if self.profile not in MODELS:
            raise ValueError(f"unknown profile '{self.profile}': choose one of {', '.join(MODELS)}")
        for name, unit, example in (("window", "cm-1", "14700:15400"), ("noise_window", "cm-1", "14250:14510")):
            if getattr(self, name) is not None:
                put(name, parse_range(getattr(self, name), name.replace("_", " "), unit, example))
        put("velocity_range", parse_range(self.velocity_range, "velocity range", "km/s", "-600:600"))
        put("broadening_range", parse_range(self.broadening_range, "broadening range", "km/s", "0:300"))
        if self.broadening_range[0] < 0:
            raise ValueError(f"broadening range {self.broadening_range[0]:g}:{self.broadening_range[1]:g}: a broadening "
                             "is a Gaussian standard deviation, >= 0")
        put("redshift", float(self.redshift))
        if not (np.isfinite(self.redshift) and self.redshift > -1.0):
            raise ValueError(f"redshift must be > -1, got {self.redshift}")
        absorption = (self.absorption,) if isinstance(self.absorption, str) else tuple(self.absorption or ())
        put("absorption", tuple(str(v) for v in absorption))
        put("absorption_broadening_range", parse_range(self.absorption_broadening_range, "absorption broadening range",
                                                       "km/s", "50:1000"))
        if self.absorption:
            absorption_line_set(self.absorption)  # validates the names
            if self.profile == "sinc":
                raise ValueError("absorption lines need a profile with a broadening (sincgauss or gaussian), not sinc")
            if self.absorption_broadening_range[0] < 0:
                raise ValueError("absorption broadening range: a broadening is a Gaussian standard deviation, >= 0")
        if self.background is not None and not isinstance(self.background, Background):
            put("background", Background(self.background))
        put("ratio_ranges", parse_ratio_ranges(self.ratio_ranges))
        put("continuum_order", int(self.continuum_order))
        put("continuum_spline", int(self.continuum_spline))
        ModelSpec(make_line_set(["Halpha"]), self.profile, self.continuum_order, self.continuum_spline)  # validates

    def line_set(self, band_cm1=None, fwhm_cm1: float | None = None) -> LineSet:
        """The :class:`LineSet` of the model (the sky lines need the observed band and the
        instrument's FWHM, in the de-redshifted frame)."""
        if self.sky_lines is not None:
            if band_cm1 is None or fwhm_cm1 is None:
                raise ValueError("a sky-line model needs the band and the instrumental FWHM: bind it to a cube")
            ls = sky_line_set(self.sky_lines, band_cm1, fwhm_cm1)
            if self.lines:  # emission lines in front of the sky: their own groups after the sky's
                ls = join_line_sets(ls, self._emission_lines())
        else:
            ls = self._emission_lines()
        if self.absorption:  # absorption copies in one group of their own, after the emission lines
            ls = join_line_sets(ls, absorption_line_set(self.absorption))
        return ls

    def _emission_lines(self) -> LineSet:
        return make_line_set(self.lines, self.groups, tie_nii=self.tie_nii, tie_oiii=self.tie_oiii,
                             broadening_groups=self.broadening_groups, ratio_ranges=self.ratio_ranges)

    def bind(self, header) -> BoundModel:
        """The model on a cube's spectral axis (``header``: a
        :class:`~lucijax.io.header.CubeHeader`); cached per model and axis."""
        return bind(self, header)


#: Fewest usable channels a pixel needs in the noise window; with fewer, the pixel keeps
#: the fit's own noise estimate.
MIN_NOISE_CHANNELS = 10


def window_noise(spectra, weight=None) -> np.ndarray:
    """Robust std (1.4826 x median absolute deviation from the median) of each spectrum over
    the noise window's channels.

    Parameters
    ----------
    spectra : (..., n) array
        The spectra on the noise window's channels.
    weight : (n,) array, optional
        1 / relative noise of each channel (0: unusable); None for equal noise.

    Returns
    -------
    (...,) float64 array; NaN where fewer than :data:`MIN_NOISE_CHANNELS` channels are
    finite and non-zero (ORB cubes hold exact zeros outside their interpolated axis).
    """
    y = np.asarray(spectra, np.float64)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
        y = np.where(np.asarray(weight) > 0, y, np.nan)
    y = np.where(np.isfinite(y) & (y != 0.0), y, np.nan)
    usable = np.sum(np.isfinite(y), axis=-1)
    out = np.full(y.shape[:-1], np.nan)
    ok = usable >= MIN_NOISE_CHANNELS
    if np.any(ok):
        z = y[ok]
        med = np.nanmedian(z, axis=-1, keepdims=True)
        out[ok] = 1.4826 * np.nanmedian(np.abs(z - med), axis=-1)
    out[out <= 0] = np.nan
    return out


def pixel_fwhm_cm1(header, calib_map=None) -> np.ndarray | float:
    """Instrumental line FWHM of pixels (observed frame): the sinc's, from the calibration
    laser map when there is one, else from the spectrum's own ``calib_coeff_orig``, else from
    ``axis_corr``; times the cube's ``apodization`` coefficient (1 for none), as ORB's
    ``compute_line_fwhm`` gives the line width of an apodized cube."""
    if calib_map is not None:
        corr = instrument.corr_from_calib(calib_map, header.nm_laser)
    elif header.calib_coeff_orig is not None:
        corr = header.calib_coeff_orig
    else:
        corr = header.axis_corr
    fwhm = instrument.sinc_fwhm_cm1(header.step_nm, header.step_nb, header.zpd_index, corr)
    return fwhm * float(header.apodization)


def window_channels(header, window_cm1=None, what: str = "fit window") -> np.ndarray:
    """Channel indices inside a window (default: the filter band); ``what`` names the window
    in the error message."""
    axis = header.axis_cm1
    if window_cm1 is None:
        if header.filter_name is None:
            raw = header.filter_label
            said = f"names no SITELLE filter (filter_name = {raw!r})" if raw is not None else "names no filter"
            log.warning("the header %s: fitting the whole spectral axis (give the window to fit less)", said)
            lo, hi = axis[0], axis[-1]
        else:
            lo, hi = instrument.get_filter(header.filter_name).band_cm1
    else:
        lo, hi = window_cm1
    idx = np.nonzero((axis >= lo) & (axis <= hi))[0]
    if idx.size < 10 and window_cm1 is None and header.filter_name is not None:
        raise ValueError(f"the band of filter {header.filter_name} ({lo:.1f}-{hi:.1f} cm-1), named in the header, "
                         f"misses the cube's axis ({min(axis[0], axis[-1]):.1f}-{max(axis[0], axis[-1]):.1f} cm-1): "
                         "the header's filter_name is wrong; give the fit window")
    if idx.size < 10:
        raise ValueError(f"the {what} {lo:.1f}-{hi:.1f} cm-1 holds {idx.size} channels of the cube's axis "
                         f"({axis[0]:.1f}-{axis[-1]:.1f} cm-1): widen it")
    return idx


@dataclass(frozen=True, eq=False)
class BoundModel:
    """A :class:`Model` on a cube's spectral axis: what every solver and sampler uses.

    Attributes
    ----------
    model : Model
    spec : ModelSpec
        Line set, profile and continuum (static).
    grid : SpectralGrid
        The window's channels, de-redshifted, relative to a reference wavenumber.
    line_model : LineModel
        Evaluates one pixel's spectrum.
    window : int array
        Channel indices of the fit window.
    typical_fwhm : float
        Median instrumental FWHM of the cube (cm^-1, observed frame).
    flux_unit : str
    filter_name : str or None
    noise_channels, noise_weight : arrays or None
        Channels of the noise window and 1 / their relative noise.
    key : str
        Digest of everything the line model depends on.
    """

    model: Model
    spec: ModelSpec
    grid: SpectralGrid
    line_model: LineModel
    window: np.ndarray
    typical_fwhm: float
    flux_unit: str
    filter_name: str | None
    noise_channels: np.ndarray | None
    noise_weight: np.ndarray | None
    key: str

    @property
    def line_set(self) -> LineSet:
        return self.spec.line_set

    @property
    def redshift(self) -> float:
        return self.model.redshift

    @property
    def noise_window(self):
        return self.model.noise_window

    @property
    def axis_obs_cm1(self) -> np.ndarray:
        """Observed wavenumbers (cm^-1) of the window's channels."""
        return (np.asarray(self.grid.axis_rel_cm1, np.float64) + self.grid.ref_cm1) / (1.0 + self.redshift)

    def inputs(self, block) -> dict:
        """Per-pixel inputs of a :class:`~lucijax.program.Block`: ``y`` (n, n_window)
        float32 spectra on the window, ``fwhm`` (n,) float32 instrumental FWHM in the
        de-redshifted frame and, with a noise window, ``_window_noise`` (n,) float64 (host
        side only: the engine keeps inputs named ``_...`` off the devices)."""
        out = {}
        if block.spectra is not None:
            out["y"] = np.ascontiguousarray(block.spectra[:, self.window], np.float32)
        fwhm = np.broadcast_to(pixel_fwhm_cm1(block.header, block.calib), (block.n,))
        out["fwhm"] = (np.asarray(fwhm, np.float64) * (1.0 + self.redshift)).astype(np.float32)
        if self.noise_channels is not None and block.spectra is not None:
            out["_window_noise"] = window_noise(block.spectra[:, self.noise_channels], self.noise_weight)
        return out

    def with_line_set(self, line_set: LineSet) -> BoundModel:
        """The same axis and window with another line set (kinematic components)."""
        spec = dataclasses.replace(self.spec, line_set=line_set)
        return dataclasses.replace(self, spec=spec, line_model=LineModel(spec, self.grid),
                                   key=_digest(self.key, repr(line_set)))


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


_BOUND: dict = {}
_MAX_BOUND = 16


def bind(model: Model, header) -> BoundModel:
    """See :meth:`Model.bind`."""
    window = window_channels(header, model.window)
    axis_obs = header.axis_cm1[window]
    full_shape = header.noise_shape() if model.flambda_weights else None
    noise_shape = None
    median_shape = 1.0
    if full_shape is not None and np.any(np.isfinite(full_shape[window])):
        median_shape = np.nanmedian(full_shape[window])  # relative to the window's median channel
        noise_shape = full_shape[window] / median_shape
    noise_channels = noise_weight = None
    if model.noise_window is not None:
        noise_channels = window_channels(header, model.noise_window, "noise window")
        if np.intersect1d(noise_channels, window).size:
            log.warning("the noise window %.1f-%.1f cm-1 overlaps the fit window %.1f-%.1f cm-1: make sure it "
                        "holds no line and no continuum slope", *model.noise_window, axis_obs[0], axis_obs[-1])
        if noise_shape is not None:  # the same weights as the fit's channels
            noise_weight = channel_weights(full_shape[noise_channels] / median_shape)
    typical_fwhm = float(np.median(np.atleast_1d(pixel_fwhm_cm1(header))))
    z = model.redshift
    key = _digest(repr(model), axis_obs.tobytes(), b"" if noise_shape is None else noise_shape.tobytes(),
                  repr(typical_fwhm), header.flux_unit, header.filter_name,
                  b"" if noise_channels is None else noise_channels.tobytes(),
                  b"" if noise_weight is None else noise_weight.tobytes())
    cached = _BOUND.get(key)
    if cached is not None:
        return cached
    line_set = model.line_set((axis_obs[0] * (1 + z), axis_obs[-1] * (1 + z)), typical_fwhm * (1 + z))
    lo_obs, hi_obs = axis_obs[0], axis_obs[-1]
    for name, rest_nm in zip(line_set.names, line_set.rest_nm):
        pos = 1e7 / rest_nm / (1 + z)
        if not lo_obs < pos < hi_obs:
            raise LineOutsideWindowError(
                f"line {name} ({rest_nm} nm, expected at {pos:.1f} cm-1 for redshift {z}) falls outside "
                f"the fit window {lo_obs:.1f}-{hi_obs:.1f} cm-1"
                + (f" of filter {header.filter_name}" if header.filter_name and model.window is None else ""))
    background = None
    if model.background is not None:
        n_axis = len(header.axis_cm1)
        if model.background.spectra.shape[1] != n_axis:
            raise ValueError(f"the background spectra have {model.background.spectra.shape[1]} channels, the cube's "
                             f"axis {n_axis}: make them from this cube (lucijax.views.background_pca)")
        background = np.ascontiguousarray(model.background.spectra[:, window].T)
    spec = ModelSpec(line_set, model.profile, model.continuum_order, model.continuum_spline,
                     0 if background is None else background.shape[1])
    axis_rest = axis_obs * (1.0 + z)
    ref = float(np.mean(axis_rest))
    grid = SpectralGrid(axis_rest - ref, ref, z, noise_shape, background)
    bound = BoundModel(model, spec, grid, LineModel(spec, grid), window, typical_fwhm, header.flux_unit,
                       header.filter_name, noise_channels, noise_weight, key)
    if len(_BOUND) >= _MAX_BOUND:
        _BOUND.pop(next(iter(_BOUND)))
    _BOUND[key] = bound
    return bound


__all__ = ["Model", "Background", "BoundModel", "bind", "pixel_fwhm_cm1", "window_noise", "MIN_NOISE_CHANNELS", "window_channels", "parse_range", "LineOutsideWindowError"]
