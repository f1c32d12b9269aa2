"""Narrow-band line images: the cube summed over a window around each line, continuum
subtracted, as a narrow-band filter would see it, streamed block by block.

For each line and pixel the window is ``+- width_kms`` around the line's observed position
at the pixel's velocity (``rest * doppler(v) / (1 + z)``; for the components of a
:class:`~lucijax.solvers.Components` fit, from the lowest component velocity minus the width
to the highest plus the width). The image is

``sum over the window's channels of (spectrum - continuum) x channel width`` (cm^-1),

in the unit of the fit's flux maps: erg/cm^2/s for cubes in erg/cm^2/s/A (each channel
converted with ``1e8 / sigma^2``, an exact integral over wavelength), else the cube's unit x
cm^-1. The continuum is

* ``'sidebands'``: the median of the channels between ``sidebands_kms[0]`` and
  ``sidebands_kms[1]`` beyond each edge of the window (both sides), whose robust standard
  deviation is the noise of the image's error;
* ``'fit'``: a fit's own continuum model, evaluated at every channel (fit mode only: clean
  under blended lines, where side bands hold the neighbours' light);
* a number or a ``[y, x]`` map, in the cube's flux unit (per channel).

The window holds the whole flux of a resolved line; an unresolved sinc line keeps part of
its flux in its wings: at SITELLE's SN3 resolution a +-300 km/s window holds 95.5-99 % of
a sinc's flux (depending on where the line falls between channels), 99.2-100 % once the
broadening exceeds 30 km/s. A window also holds whatever other line falls in it (in SN3,
[NII]6548 lies 570 km/s from Halpha).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from lucijax.constants import C_KMS
from lucijax.engine import Execution, map_pixels
from lucijax.io.maps import write_maps_fits
from lucijax.io.masks import parse_box
from lucijax.io.views import Cutout
from lucijax.model import continuum_basis
from lucijax.physics.conversions import observed_position_cm1
from lucijax.physics.lines import make_line_set
from lucijax.program import Program
from lucijax.results.maps import FLUX_UNIT_ERG, flux_unit_of, line_map_name

__all__ = ["DEFAULT_SIDEBANDS_KMS", "DEFAULT_WIDTH_KMS", "NarrowbandImages", "narrowband", "narrowband_program"]

#: Half-width of the window (km/s).
DEFAULT_WIDTH_KMS = 300.0
#: Side bands: from this far to this far beyond each edge of the window (km/s).
DEFAULT_SIDEBANDS_KMS = (100.0, 400.0)


@dataclass
class NarrowbandImages:
    """Narrow-band images ``[y, x]`` (see the module docstring).

    Attributes
    ----------
    maps : dict
        ``{LINE}``: continuum-subtracted line flux; ``{LINE}_ERR``: its 1-sigma error from
        the noise (NaN where no noise is known); ``{LINE}_CONTINUUM``: the continuum
        subtracted (mean over the window, cube unit per channel); ``{LINE}_NCHAN``:
        channels summed.
    units : dict
    wcs : astropy.wcs.WCS or None
    lines : list of str
    cards : dict
        Header cards (width, continuum, redshift).
    """

    maps: dict
    units: dict
    wcs: object = field(default=None, repr=False)
    lines: list = field(default_factory=list)
    cards: dict = field(default_factory=dict)

    def image(self, line: str) -> np.ndarray:
        """The image of ``line`` (a name as given, any case)."""
        return self.maps[line_map_name(line)]

    def write(self, path) -> str:
        """Write every image to one FITS file (one HDU each, with the WCS)."""
        write_maps_fits(path, self.maps, self.units, wcs2d=self.wcs, header_extra=self.cards)
        return os.fspath(path)


def _component_groups(names) -> dict[str, list[int]]:
    """Image name -> indices of the lines it sums (the components of a Components fit)."""
    if names and all(re.search(r"_C\d+$", n) for n in names):
        out: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            out.setdefault(re.sub(r"_C\d+$", "", n), []).append(i)
        return out
    return {n: [i] for i, n in enumerate(names)}


def _windows(rest_cm1, v_low, v_high, width_kms: float, redshift: float):
    """(lo, hi) observed cm^-1 of windows from velocity ``v_low - width`` to ``v_high + width``."""
    lo = observed_position_cm1(rest_cm1, v_high + width_kms, redshift)
    hi = observed_position_cm1(rest_cm1, v_low - width_kms, redshift)
    return lo, hi


def _as_xy(value, shape_xy, what: str) -> np.ndarray:
    """A scalar or a FITS-ordered ``[y, x]`` map -> an ``[x, y]`` float64 array."""
    a = np.asarray(value, np.float64)
    if a.ndim == 0:
        return np.full(shape_xy, float(a))
    if a.shape != (shape_xy[1], shape_xy[0]):
        raise ValueError(f"{what}: a [y, x] map of shape {(shape_xy[1], shape_xy[0])} is needed, got {a.shape}")
    return a.T.copy()


def narrowband_program(axis, channel_flux, mode: str, given: dict, basis=None, channels=None) -> Program:
    """The images of every pixel as a host (numpy) program.

    ``given``: per-pixel ``[x, y, ...]`` inputs: ``lo``, ``hi`` (``[x, y, L]`` window edges,
    observed cm^-1) and, by ``mode``, 'sidebands': ``side`` (``[x, y, L, 2]``: inner and
    outer distances beyond the edges, cm^-1); 'fit': ``coef`` (``[x, y, K]`` continuum
    coefficients on ``basis`` (C, K)) and ``noise``; 'given': ``continuum``.
    ``channel_flux`` (C,): the flux of one unit of the spectrum in each channel of ``axis``
    (channel width x unit conversion); ``channels``: the channels of the cube's axis that
    ``axis`` covers (default all).
    """
    def host(inp):
        y = np.asarray(inp["spectra"], np.float64)
        if channels is not None:
            y = y[:, channels]
        finite = np.isfinite(y)
        n_lines = inp["lo"].shape[1]
        out = {k: np.full((y.shape[0], n_lines), np.nan) for k in ("image", "error", "continuum", "nchan")}
        if mode == "fit":
            cont_all = np.asarray(inp["coef"], np.float64) @ basis.T
            noise_all = np.asarray(inp["noise"], np.float64)
        for k in range(n_lines):
            lo_k, hi_k = inp["lo"][:, k, None], inp["hi"][:, k, None]
            win = (axis >= lo_k) & (axis <= hi_k) & finite
            n_in = np.sum(win, axis=1)
            with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN side bands give NaN
                if mode == "sidebands":
                    s_in, s_out = inp["side"][:, k, 0, None], inp["side"][:, k, 1, None]
                    side = (((axis < lo_k - s_in) & (axis >= lo_k - s_out)) | ((axis > hi_k + s_in) & (axis <= hi_k + s_out)))
                    side &= finite
                    ys = np.where(side, y, np.nan)
                    c = np.nanmedian(ys, axis=1)
                    noise = 1.4826 * np.nanmedian(np.abs(ys - c[:, None]), axis=1)
                    n_side = np.sum(side, axis=1)
                    cont = np.broadcast_to(c[:, None], y.shape)
                elif mode == "fit":
                    cont, noise, n_side = cont_all, noise_all, None
                else:
                    c = np.asarray(inp["continuum"], np.float64)
                    cont, noise, n_side = np.broadcast_to(c[:, None], y.shape), np.full(y.shape[0], np.nan), None
                w = np.where(win, channel_flux[None, :], 0.0)
                image = np.sum(np.where(win, (y - cont) * w, 0.0), axis=1)
                var = np.sum(w**2, axis=1)
                if n_side is not None:  # the variance of a median: (pi / 2) sigma^2 / n
                    var = var + np.sum(w, axis=1) ** 2 * (np.pi / 2) / np.maximum(n_side, 1)
                ok = (n_in > 0) & np.isfinite(image)
                out["image"][:, k] = np.where(ok, image, np.nan)
                out["error"][:, k] = np.where(ok, noise * np.sqrt(var), np.nan)
                out["continuum"][:, k] = np.where(ok, np.sum(np.where(win, cont, 0.0), axis=1) / np.maximum(n_in, 1), np.nan)
                out["nchan"][:, k] = n_in
        return {k: v.astype(np.float32) for k, v in out.items()}

    def prepare(block):
        return {"spectra": block.spectra, **block.given}

    return Program(name="narrow-band images", key=f"narrow-band images {mode}", prepare=prepare, host=host,
                   given=given, batch_size=4096, stored=False)


def narrowband(cube, lines, *, width_kms: float = DEFAULT_WIDTH_KMS, velocity=0.0, redshift: float = 0.0,
               continuum=None, sidebands_kms=DEFAULT_SIDEBANDS_KMS, region=None,
               execution: Execution | None = None) -> NarrowbandImages:
    """Narrow-band images of lines in a cube (see the module docstring).

    Parameters
    ----------
    cube : path, open cube or view
        With a fit as ``lines``: the view that was fitted.
    lines : sequence of str, or a result of :func:`lucijax.fit` / :func:`lucijax.sample`
        Line names (catalogue names, aliases, ``NAME=air_nm``); or a fit, whose lines,
        redshift and per-pixel velocities place the windows (each component's velocity for
        a Components fit; ``velocity`` where a pixel has no fitted velocity) and whose
        continuum model and noise are used with ``continuum='fit'`` (the default then).
    width_kms : float
        Half-width of the window (km/s).
    velocity : float or [y, x] map
        Velocity (km/s, after the redshift) the windows are centred on, with line names.
    redshift : float
        Of the source, with line names.
    continuum : 'sidebands', 'fit', float or [y, x] map, optional
        What is subtracted (see the module docstring); default 'fit' with a fit, else
        'sidebands'.
    sidebands_kms : (inner, outer)
        The side bands, km/s beyond each edge of the window.
    region : (x0, x1, y0, y1) or 'x0:x1,y0:y1', optional
        Pixel box of the cube (with line names; default the whole cube).
    execution : Execution, optional

    Returns
    -------
    NarrowbandImages
    """
    from lucijax.io import open_cube

    if not width_kms > 0:
        raise ValueError(f"width_kms must be > 0, got {width_kms}")
    inner, outer = (float(v) for v in sidebands_kms)
    if not 0 <= inner < outer:
        raise ValueError(f"sidebands_kms must be (inner, outer) with 0 <= inner < outer, got {sidebands_kms}")
    result = lines if hasattr(lines, "bound") else None
    if continuum is None:
        continuum = "fit" if result is not None else "sidebands"
    if isinstance(continuum, str) and continuum not in ("sidebands", "fit"):
        raise ValueError(f"continuum must be 'sidebands', 'fit', a number or a [y, x] map, got {continuum!r}")
    if isinstance(continuum, str) and continuum == "fit" and result is None:
        raise ValueError("continuum='fit' needs a fit as lines (its continuum model)")
    opened = None
    if not hasattr(cube, "read_spectra"):
        cube = opened = open_cube(cube)
    try:
        if result is None:
            view = cube if region is None else Cutout(cube, parse_box(region, cube.shape[:2]))
        else:
            view = cube
            if tuple(view.shape[:2]) != tuple(result.fields["linear"].shape[:2]):
                raise ValueError(f"the fit covers {result.fields['linear'].shape[:2]} pixels; give the view it was "
                                 f"fitted on (this one has {tuple(view.shape[:2])})")
        return _narrowband(view, result, lines, float(width_kms), velocity, float(redshift), continuum, (inner, outer),
                           execution)
    finally:
        if opened is not None:
            opened.close()


def _narrowband(view, result, lines, width_kms, velocity, redshift, continuum, sidebands, execution):
    nx, ny = int(view.shape[0]), int(view.shape[1])
    header = view.header
    channels = None
    axis = np.asarray(header.axis_cm1, np.float64)
    if result is not None:
        bound = result.bound
        ls, redshift = bound.line_set, float(bound.redshift)
        groups = _component_groups(ls.names)
        v_lines = np.asarray(result.fields["velocity_kms"], np.float64)[..., np.asarray(ls.groups)]  # [x, y, L]
        fallback = _as_xy(velocity, (nx, ny), "velocity")
        v_lines = np.where(np.isfinite(v_lines), v_lines, fallback[..., None])
        rest = np.asarray(ls.rest_cm1, np.float64)
        names = list(groups)
        lo = np.empty((nx, ny, len(names)))
        hi = np.empty_like(lo)
        for k, idx in enumerate(groups.values()):
            lo[..., k], hi[..., k] = _windows(rest[idx[0]], v_lines[..., idx].min(-1), v_lines[..., idx].max(-1),
                                              width_kms, redshift)
        if isinstance(continuum, str) and continuum == "fit":  # on the fit window's channels
            channels = np.asarray(bound.window)
            axis = np.asarray(bound.axis_obs_cm1, np.float64)
    else:
        ls = make_line_set(list(lines))
        names = list(ls.names)
        v = _as_xy(velocity, (nx, ny), "velocity")
        rest = np.asarray(ls.rest_cm1, np.float64)
        lo, hi = _windows(rest[None, None, :], v[..., None], v[..., None], width_kms, redshift)
    step = np.abs(np.gradient(axis))
    calibrated = header.flux_unit == FLUX_UNIT_ERG
    channel_flux = step * (1e8 / axis**2 if calibrated else 1.0)
    centre = 0.5 * (lo + hi)
    given = {"lo": np.asarray(lo, np.float64), "hi": np.asarray(hi, np.float64)}
    basis = None
    if isinstance(continuum, str) and continuum == "sidebands":
        mode = "sidebands"
        given["side"] = np.stack([centre * sidebands[0] / C_KMS, centre * sidebands[1] / C_KMS], axis=-1)
    elif isinstance(continuum, str):  # 'fit'
        mode = "fit"
        spec = bound.spec
        basis = continuum_basis(bound.grid.continuum_coordinate, spec.continuum_order, spec.continuum_spline)
        given["coef"] = np.asarray(result.fields["linear"], np.float64)[..., spec.n_amplitudes:spec.n_amplitudes
                                                                           + spec.n_continuum]
        given["noise"] = np.asarray(result.fields["noise"], np.float64)
    else:
        mode = "given"
        given["continuum"] = _as_xy(continuum, (nx, ny), "continuum")
    program = narrowband_program(axis, channel_flux, mode, given, basis=basis, channels=channels)
    out = map_pixels(view, program, execution or Execution(progress=False)).values
    flux_unit = flux_unit_of(header.flux_unit)
    maps, units = {}, {}
    for k, name in enumerate(names):
        key = line_map_name(name)
        for suffix, field_, unit in (("", "image", flux_unit), ("_ERR", "error", flux_unit),
                                     ("_CONTINUUM", "continuum", header.flux_unit), ("_NCHAN", "nchan", "")):
            maps[key + suffix] = np.ascontiguousarray(np.asarray(out[field_], np.float32)[..., k].T)
            units[key + suffix] = unit
    cards = {"ORIGIN": "lucijax", "PRODUCT": "narrow-band images", "LINES": " ".join(names)[:68],
             "NBWIDTH": width_kms, "NBCONT": mode, "REDSHIFT": redshift,
             "NBVELOC": "fit" if result is not None else ("map" if np.ndim(velocity) else float(velocity))}
    if mode == "sidebands":
        cards["NBSIDE"] = "{:g}:{:g}".format(*sidebands)
    return NarrowbandImages(maps, units, header.wcs, names, cards)
