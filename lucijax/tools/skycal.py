"""Sky-line velocity calibration.

The OH sky lines are at rest: the velocity a fit measures on them is the error of the
cube's wavenumber calibration at that place of the field. Calibration errors vary smoothly
across the detector, so:

1. :func:`measure_sky_velocities` averages the spectra of sky pixels in ``bin_size`` x
   ``bin_size`` boxes (a boolean sky mask excludes the targets) and fits every OH line of an
   ORB line list in each binned spectrum with one shared velocity (a
   :class:`~lucijax.description.Model` with ``sky_lines=``, binned by
   :class:`~lucijax.io.views.BinnedCube`, fitted by the engine);
2. :func:`fit_velocity_correction` fits a low-order 2-D Legendre polynomial in the pixel
   coordinates to those velocities, weighted by their errors, rejecting outliers by
   iterative sigma clipping (a star, a target that leaked into a bin, a failed fit);
3. :meth:`VelocityCorrection.map` evaluates it on any pixel grid, and
   :func:`apply_velocity_correction` subtracts it from the ``*_VELOCITY`` maps of a science
   fit (to first order in v/c a calibration error shifts every line by the same velocity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre

from lucijax.description import Model
from lucijax.engine import Execution, map_pixels
from lucijax.io.maps import read_maps_fits, write_maps_fits
from lucijax.io.views import BinnedCube
from lucijax.solvers import MAP
from lucijax.status import Status


@dataclass
class SkyVelocities:
    """Velocities of the sky lines in spatial bins (pixel coordinates of the full cube)."""

    x: np.ndarray  # mean x of the bin's sky pixels
    y: np.ndarray
    velocity_kms: np.ndarray
    velocity_err_kms: np.ndarray
    status: np.ndarray
    n_pixels: np.ndarray
    bin_size: int


def measure_sky_velocities(cube, sky_lines, *, bin_size: int = 16, sky_mask=None, region=None, model: str = "sinc",
                           continuum_order: int = 1, velocity_range_kms=(-100.0, 100.0), solver: MAP | None = None,
                           min_fraction: float = 0.5, execution: Execution | None = None,
                           progress: bool = True) -> SkyVelocities:
    """Fit the sky lines of binned sky regions.

    The sky pixels of every ``bin_size`` x ``bin_size`` box are averaged
    (:class:`~lucijax.io.views.BinnedCube` with the sky mask, ``combine='mean'``) and every
    bin's spectrum is fitted with one shared velocity (:class:`~lucijax.solvers.MAP`,
    matched-filter start) by the engine.

    Parameters
    ----------
    cube : SpectralCube
        An open cube (:func:`lucijax.open_cube`).
    sky_lines : path
        ORB sky line list (``index wavelength_A [fwhm_A] intensity`` per line, see
        :func:`lucijax.physics.lines.read_sky_lines`).
    bin_size : int
        Side of the square bins, pixels.
    sky_mask : bool array [y, x] of the cube image, optional
        True for sky pixels (default: every pixel).
    region : (x0, x1, y0, y1), optional
        Part of the cube to use (default all; trimmed to whole bins).
    model : str
        Line shape of the sky lines (unresolved: 'sinc').
    min_fraction : float
        Bins with fewer sky pixels than this fraction of ``bin_size**2`` are skipped.

    Returns
    -------
    SkyVelocities
    """
    nx, ny, _ = cube.shape
    if sky_mask is not None:
        sky_mask = np.asarray(sky_mask, bool)
        if sky_mask.shape != (ny, nx):
            raise ValueError(f"sky_mask has shape {sky_mask.shape}, the cube image is {(ny, nx)} ([y, x])")
    view = BinnedCube(cube, bin_size, region=region, mask=sky_mask, combine="mean", min_fraction=min_fraction)
    if not view._valid_xy.any():
        raise ValueError("no bin holds enough sky pixels: lower min_fraction or bin_size, or check the sky mask")
    sky_model = Model(sky_lines=sky_lines, profile=model, continuum_order=continuum_order,
                      velocity_range=velocity_range_kms)
    bound = sky_model.bind(view.header)
    program = (solver or MAP(start="matched")).program(bound, view)
    fit = map_pixels(view, program, execution or Execution(progress=progress)).values.fit
    # each bin's position: the mean of its sky pixels, in pixels of the cube
    f = view.factor
    bx0, bx1, by0, by1 = view.box
    nbx, nby = view.shape[:2]
    used = np.ones((bx1 - bx0, by1 - by0), bool) if view._mask_xy is None else view._mask_xy
    gx, gy = np.meshgrid(np.arange(bx0, bx1, dtype=np.float64), np.arange(by0, by1, dtype=np.float64), indexing="ij")
    n = used.reshape(nbx, f, nby, f).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = (gx * used).reshape(nbx, f, nby, f).sum(axis=(1, 3)) / n
        ys = (gy * used).reshape(nbx, f, nby, f).sum(axis=(1, 3)) / n
    ok = view._valid_xy
    return SkyVelocities(xs[ok], ys[ok], np.asarray(fit.velocity_kms)[ok][:, 0], np.asarray(fit.velocity_err_kms)[ok][:, 0],
                         np.asarray(fit.status)[ok], n[ok].astype(np.int64), int(bin_size))


@dataclass
class VelocityCorrection:
    """A smooth velocity-correction field: a 2-D Legendre polynomial of total degree
    ``order`` in pixel coordinates scaled to [-1, 1] over ``(nx, ny)``."""

    coefficients: np.ndarray  # (order + 1, order + 1), zero above total degree `order`
    order: int
    shape_xy: tuple[int, int]  # (nx, ny) of the full cube
    rms_kms: float = float("nan")  # weighted rms of the kept points about the surface
    used: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # kept points (not clipped)

    def _scaled(self, x, y):
        nx, ny = self.shape_xy
        return 2.0 * np.asarray(x, float) / max(nx - 1, 1) - 1.0, 2.0 * np.asarray(y, float) / max(ny - 1, 1) - 1.0

    def evaluate(self, x, y) -> np.ndarray:
        """Correction (km/s) at full-cube pixel coordinates ``x``, ``y`` (broadcast)."""
        u, v = self._scaled(x, y)
        return legendre.legval2d(u, v, self.coefficients)

    def map(self, region=None) -> np.ndarray:
        """Correction on every pixel of ``region`` (x0, x1, y0, y1; default the whole
        cube), FITS-ordered ``[y, x]``."""
        nx, ny = self.shape_xy
        x0, x1, y0, y1 = region or (0, nx, 0, ny)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return self.evaluate(xx, yy)


def _design(u, v, order):
    cols, index = [], []
    for i in range(order + 1):
        for j in range(order + 1 - i):
            ci = np.zeros(i + 1)
            ci[i] = 1.0
            cj = np.zeros(j + 1)
            cj[j] = 1.0
            cols.append(legendre.legval(u, ci) * legendre.legval(v, cj))
            index.append((i, j))
    return np.stack(cols, axis=1), index


def fit_velocity_correction(x, y, velocity_kms, velocity_err_kms, shape_xy, *, order: int = 2, clip_sigma: float = 3.5,
                            max_iter: int = 10) -> VelocityCorrection:
    """Weighted least-squares 2-D Legendre surface with iterative sigma clipping.

    Each iteration fits the kept points with weights ``1/sqrt(err^2 + s^2)``, where ``s`` is
    the extra scatter that brings the reduced chi2 of the kept points to 1 (0 when the
    error bars explain the scatter), and rejects points whose residual exceeds
    ``clip_sigma`` x ``max(1, MAD scale of residual/err over the kept points)`` times their
    error. Stops when the kept set no longer changes.

    Parameters
    ----------
    x, y : arrays
        Full-cube pixel coordinates of the measurements.
    velocity_kms, velocity_err_kms : arrays
        Measured sky velocities and their errors (non-finite values are ignored).
    shape_xy : (nx, ny)
        Size of the cube image (sets the coordinate scaling).
    order : int
        Total degree of the polynomial (0 = a constant offset).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    vel, err = np.asarray(velocity_kms, float), np.asarray(velocity_err_kms, float)
    good = np.isfinite(vel) & np.isfinite(err) & (err > 0) & np.isfinite(x) & np.isfinite(y)
    n_terms = (order + 1) * (order + 2) // 2
    if good.sum() < n_terms + 1:
        raise ValueError(f"{int(good.sum())} valid sky measurements cannot constrain a degree-{order} surface "
                         f"({n_terms} terms): use smaller bins or a lower order")
    corr = VelocityCorrection(np.zeros((order + 1, order + 1)), int(order), tuple(int(s) for s in shape_xy))
    u, v = corr._scaled(x, y)
    a, index = _design(u, v, order)
    keep = good.copy()
    extra = 0.0
    for _ in range(max_iter):
        sig = np.sqrt(err**2 + extra**2)
        w = 1.0 / sig[keep]
        coef, *_ = np.linalg.lstsq(a[keep] * w[:, None], vel[keep] * w, rcond=None)
        resid = vel - a @ coef
        dof = max(keep.sum() - n_terms, 1)
        chi2 = np.sum((resid[keep] / err[keep]) ** 2) / dof
        # extra scatter s with sum(r^2 / (err^2 + s^2)) = dof (bisection), 0 if chi2 <= 1
        extra = 0.0
        if chi2 > 1:
            lo_s, hi_s = 0.0, float(np.max(np.abs(resid[keep]))) + 1e-9
            for _ in range(60):
                mid = 0.5 * (lo_s + hi_s)
                if np.sum(resid[keep] ** 2 / (err[keep] ** 2 + mid**2)) > dof:
                    lo_s = mid
                else:
                    hi_s = mid
            extra = 0.5 * (lo_s + hi_s)
        # outliers from residuals in units of their own errors, with a robust (MAD) scale:
        # an extra-scatter term fitted to all points would absorb the outliers it should flag
        z = resid / err
        mad = 1.4826 * np.median(np.abs(z[keep] - np.median(z[keep])))
        scale = max(mad, 1.0) if np.isfinite(mad) else 1.0
        new_keep = good & (np.abs(z) < clip_sigma * scale)
        if new_keep.sum() < n_terms + 1 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    for (i, j), c in zip(index, coef):
        corr.coefficients[i, j] = c
    w2 = 1.0 / (err[keep] ** 2 + extra**2)
    corr.rms_kms = float(np.sqrt(np.sum(w2 * resid[keep] ** 2) / np.sum(w2)))
    corr.used = keep
    return corr


def calibrate_sky(cube, sky_lines, *, bin_size: int = 16, order: int = 2, sky_mask=None, region=None,
                  clip_sigma: float = 3.5, progress: bool = True, **measure_kwargs) -> tuple[VelocityCorrection, SkyVelocities]:
    """:func:`measure_sky_velocities` then :func:`fit_velocity_correction` (converged,
    non-bound fits only)."""
    sky = measure_sky_velocities(cube, sky_lines, bin_size=bin_size, sky_mask=sky_mask, region=region,
                                 progress=progress, **measure_kwargs)
    ok = np.isin(sky.status, [Status.CONVERGED, Status.UNRESOLVED])
    vel = np.where(ok, sky.velocity_kms, np.nan)
    corr = fit_velocity_correction(sky.x, sky.y, vel, sky.velocity_err_kms, cube.shape[:2], order=order,
                                   clip_sigma=clip_sigma)
    return corr, sky


def apply_velocity_correction(maps: dict, correction_map: np.ndarray) -> dict:
    """A copy of ``maps`` with ``correction_map`` ([y, x], km/s, same shape as the maps)
    subtracted from every ``*_VELOCITY`` map (errors unchanged)."""
    out = dict(maps)
    corr = np.asarray(correction_map)
    for name, arr in maps.items():
        if name.endswith("_VELOCITY") or name == "VELOCITY":
            if np.shape(arr) != corr.shape:
                raise ValueError(f"correction map {corr.shape} and map {name} {np.shape(arr)} differ in shape")
            out[name] = np.asarray(arr) - corr.astype(np.asarray(arr).dtype)
    return out


def _check_on_cube_grid(result) -> None:
    if result.region is None:
        raise ValueError("a velocity correction applies to fits on the cube's own pixel grid, not to binned ones")


def correct_result(result, correction: VelocityCorrection):
    """Subtract ``correction`` from the velocity maps of a :class:`lucijax.results.Result`
    (in place, on its region) and return it. ``fields`` keep the uncorrected fit."""
    _check_on_cube_grid(result)
    result.maps = apply_velocity_correction(result.maps, correction.map(result.region))
    return result


def correct_result_from_file(result, path):
    """Subtract the VELOCITY_CORRECTION map of ``path`` (written by
    :func:`write_velocity_correction`, full cube) from ``result``'s velocity maps, on its
    region; the result must be on the cube's pixel grid (not binned)."""
    maps = read_maps_fits(path)
    if "VELOCITY_CORRECTION" not in maps:
        raise ValueError(f"{path} has no VELOCITY_CORRECTION map (write it with 'lucijax skycal')")
    full = maps["VELOCITY_CORRECTION"]
    _check_on_cube_grid(result)
    x0, x1, y0, y1 = result.region
    if y1 > full.shape[0] or x1 > full.shape[1]:
        raise ValueError(f"the fit's region {result.region} is outside the correction map {full.shape} ([y, x]); "
                         "a velocity correction applies to fits on the cube's own pixel grid")
    result.maps = apply_velocity_correction(result.maps, full[y0:y1, x0:x1])
    return result


def write_sky_bins(path, sky: SkyVelocities, correction: VelocityCorrection | None = None):
    """Text table of the sky bins: x, y, velocity, error, status, pixels, kept, surface."""
    used = correction.used if correction is not None else np.ones(sky.x.size, bool)
    surf = correction.evaluate(sky.x, sky.y) if correction is not None else np.full(sky.x.size, np.nan)
    table = np.column_stack([sky.x, sky.y, sky.velocity_kms, sky.velocity_err_kms, sky.status, sky.n_pixels, used, surf])
    np.savetxt(path, table, fmt=["%.2f", "%.2f", "%.4f", "%.4f", "%d", "%d", "%d", "%.4f"],
               header="x_pix y_pix velocity_kms velocity_err_kms status n_pixels kept surface_kms")
    return path


def write_velocity_correction(path, correction: VelocityCorrection, wcs=None, sky: SkyVelocities | None = None):
    """Write the correction map of the whole cube (EXTNAME VELOCITY_CORRECTION, km/s,
    [y, x]) with its polynomial in the header."""
    extra = {"ORIGIN": "lucijax skycal", "SKYORDER": correction.order, "SKYRMS": correction.rms_kms}
    for (i, j), c in np.ndenumerate(correction.coefficients):
        if i + j <= correction.order:
            extra[f"SKYC{i}_{j}"] = float(c)
    if sky is not None:
        extra["SKYBIN"] = sky.bin_size
        extra["SKYNBIN"] = int(np.size(sky.x))
        extra["SKYNUSED"] = int(correction.used.sum())
    write_maps_fits(path, {"VELOCITY_CORRECTION": correction.map().astype(np.float32)},
                    {"VELOCITY_CORRECTION": "km/s"}, wcs2d=wcs, header_extra=extra)
    return path


__all__ = [
    "SkyVelocities",
    "VelocityCorrection",
    "measure_sky_velocities",
    "fit_velocity_correction",
    "calibrate_sky",
    "apply_velocity_correction",
    "correct_result",
    "correct_result_from_file",
    "write_sky_bins",
    "write_velocity_correction",
]
