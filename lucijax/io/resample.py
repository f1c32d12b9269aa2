"""Maps of one pointing onto another's pixel grid, with the ``reproject`` package.

SITELLE's SN1, SN2 and SN3 cubes of a field are taken at different times: their pointings
(and so their WCS) differ by a few pixels or more, even when the detector shape is the same.
Two resamplings are needed:

- **values** (velocities, broadenings, ratios): interpolated at the target pixel centres
  (:func:`reproject.reproject_interp`, bilinear);
- **fluxes per pixel** (erg/cm^2/s in each pixel): flux-conserving
  (:func:`reproject.reproject_exact` of the surface brightness, flux / pixel area, times the
  target pixel area). Their errors go through the same resampling by Monte-Carlo draws of
  the flux vector of every pixel (with its correlations), so a target pixel that takes flux
  from several source pixels gets the right variance.
"""

from __future__ import annotations

import numpy as np

__all__ = ["grid_offset", "resample_values", "resample_fluxes", "pixel_area"]


def grid_offset(wcs_a, wcs_b, shape, tolerance_pixels: float = 0.01) -> tuple[int, int] | None:
    """``(dx, dy)`` when pixel ``(x, y)`` of an image of ``shape`` ``(ny, nx)`` on grid ``a``
    is pixel ``(x + dx, y + dy)`` of grid ``b`` (to ``tolerance_pixels`` at the corners and
    the centre), else None: the grids differ by more than a whole-pixel shift."""
    ny, nx = shape
    xs = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
    ys = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    xb, yb = wcs_b.celestial.world_to_pixel(wcs_a.celestial.pixel_to_world(xs, ys))
    dx, dy = np.asarray(xb) - xs, np.asarray(yb) - ys
    sx, sy = np.round(dx[0]), np.round(dy[0])
    if np.all(np.abs(dx - sx) < tolerance_pixels) and np.all(np.abs(dy - sy) < tolerance_pixels):
        return int(sx), int(sy)
    return None


def pixel_area(wcs) -> float:
    """Area of one pixel at the reference point (in the WCS's units squared)."""
    from astropy.wcs.utils import proj_plane_pixel_area

    return float(proj_plane_pixel_area(wcs.celestial))


def resample_values(maps: dict, wcs_in, wcs_out, shape_out) -> dict:
    """Interpolate ``[y, x]`` value maps (velocities, broadenings, ...) onto another grid;
    target pixels outside the source image are NaN."""
    from reproject import reproject_interp

    out = {}
    for name, arr in maps.items():
        res, foot = reproject_interp((np.asarray(arr, np.float64), wcs_in.celestial), wcs_out.celestial,
                                     shape_out=tuple(shape_out), order="bilinear")
        out[name] = np.where(foot > 0, res, np.nan)
    return out


def resample_fluxes(flux, cov, wcs_in, wcs_out, shape_out, draws: int = 128, seed: int = 0):
    """Flux-conserving resampling of per-pixel line fluxes and of their covariance.

    Parameters
    ----------
    flux : [L, ny, nx] array
        Fluxes per pixel of L lines.
    cov : [L, L, ny, nx] array
        Their covariance in every pixel.
    wcs_in, wcs_out : astropy.wcs.WCS
    shape_out : (ny', nx')
    draws : int
        Monte-Carlo draws of the fluxes that carry the covariance through the resampling.

    Returns
    -------
    flux_out : [L, ny', nx'], cov_out : [L, L, ny', nx'] (NaN outside the source image or
    where a source pixel that contributes is NaN).
    """
    from reproject import reproject_exact

    flux = np.asarray(flux, np.float64)
    cov = np.asarray(cov, np.float64)
    L, ny, nx = flux.shape
    ratio = pixel_area(wcs_out) / pixel_area(wcs_in)

    def exact(stack):  # [..., ny, nx] fluxes -> [..., ny', nx'] fluxes on the new grid
        res, foot = reproject_exact((stack, wcs_in.celestial), wcs_out.celestial, shape_out=tuple(shape_out))
        return np.where(foot > 0.999, res * ratio, np.nan)

    flux_out = exact(flux)
    # draws of the deviations: z ~ N(0, C) in each pixel, through the same linear map
    rng = np.random.default_rng(seed)
    c = np.moveaxis(np.nan_to_num(cov), (0, 1), (-2, -1))  # [ny, nx, L, L]
    c = c + np.eye(L) * 1e-12 * np.maximum(np.max(np.abs(c), axis=(-2, -1), keepdims=True), 1e-300)
    try:
        chol = np.linalg.cholesky(c)
    except np.linalg.LinAlgError:  # a perfectly tied pair: eigen-decomposition instead
        w, v = np.linalg.eigh(c)
        chol = v * np.sqrt(np.maximum(w, 0.0))[..., None, :]
    z = rng.standard_normal((draws, ny, nx, L))
    dev = np.einsum("yxij,dyxj->dyxi", chol, z)  # [draws, ny, nx, L]
    dev = np.where(np.isfinite(flux).transpose(1, 2, 0)[None], dev, np.nan)
    dev_out = exact(np.moveaxis(dev, -1, 1))  # [draws, L, ny', nx']
    dev_out -= np.mean(dev_out, axis=0, keepdims=True)
    cov_out = np.einsum("diyx,djyx->ijyx", dev_out, dev_out) / (draws - 1)
    return flux_out, cov_out
