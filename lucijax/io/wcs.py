"""Celestial WCS of cut-outs and binned images (SIP distortion kept, CD matrices scaled)."""

from __future__ import annotations

import numpy as np


def region_wcs(wcs2d, region: tuple[int, int, int, int] | None):
    """Celestial WCS of a cut-out of the cube's image plane.

    Parameters
    ----------
    wcs2d : astropy.wcs.WCS
        Full-cube celestial WCS (``wcs.celestial`` is taken if it has more
        axes).
    region : tuple of int or None
        ``(x0, x1, y0, y1)``: 0-based, half-open pixel box in the full cube.

    Returns
    -------
    astropy.wcs.WCS
        A copy whose pixel ``(0, 0)`` has the sky coordinate of cube pixel
        ``(x0, y0)``: ``CRPIX`` (and the SIP reference pixel) are shifted by
        ``(x0, y0)``; the SIP polynomials are kept; ``pixel_shape`` is the
        region size.
    """
    from astropy.wcs import Sip

    w = wcs2d.celestial if wcs2d.naxis > 2 else wcs2d
    w = w.deepcopy()
    if region is None:
        return w
    x0, x1, y0, y1 = (int(v) for v in region)
    shift = np.array([x0, y0], dtype=np.float64)
    w.wcs.crpix = np.asarray(w.wcs.crpix, dtype=np.float64) - shift
    if w.sip is not None:
        s = w.sip
        w.sip = Sip(s.a, s.b, s.ap, s.bp, np.asarray(s.crpix, dtype=np.float64) - shift)
    w.pixel_shape = (x1 - x0, y1 - y0)
    w.wcs.set()
    return w


def cutout_wcs(wcs, region):
    """Celestial WCS of the pixel box ``region`` (``(x0, x1, y0, y1)``) of a cube: pixel
    ``(0, 0)`` of the cut-out is cube pixel ``(x0, y0)`` (SIP kept). Same as
    ``astropy.nddata.Cutout2D(...).wcs`` for that box."""
    return region_wcs(wcs, region)


def bin_wcs(wcs, factor: int):
    """Celestial WCS of an image binned ``factor`` x ``factor`` from pixel ``(0, 0)``.

    Binned pixel ``(i, j)`` covers pixels ``factor*i .. factor*i + factor - 1``; its centre
    is at unbinned pixel ``factor*i + (factor - 1)/2``. The reference pixel is mapped as by
    astropy's ``wcs[::factor, ::factor]``; unlike that slicing (astropy 8), a ``CD`` matrix
    is scaled too, and so are the SIP polynomials (``A_p_q -> A_p_q * factor**(p+q-1)``,
    same for ``B``, ``AP``, ``BP``), so distorted WCSs stay exact.
    """
    from astropy.wcs import Sip

    f = int(factor)
    if f < 1:
        raise ValueError(f"binning factor must be >= 1, got {factor}")
    w = (wcs.celestial if wcs.naxis > 2 else wcs).deepcopy()
    if f == 1:
        return w
    shape = w.pixel_shape
    crpix = (np.asarray(w.wcs.crpix, np.float64) - 0.5) / f + 0.5  # 1-based FITS pixels
    w.wcs.crpix = crpix
    if w.wcs.has_cd():
        w.wcs.cd = np.asarray(w.wcs.cd) * f
    else:
        w.wcs.cdelt = np.asarray(w.wcs.cdelt) * f

    def scale(c):
        if c is None:
            return None
        c = np.array(c, np.float64)
        p, q = np.indices(c.shape)
        return c * float(f) ** (p + q - 1)

    if w.sip is not None:
        s = w.sip
        w.sip = Sip(scale(s.a), scale(s.b), scale(s.ap), scale(s.bp), crpix)
    if shape is not None:
        w.pixel_shape = (shape[0] // f, shape[1] // f)
    w.wcs.set()
    return w


__all__ = ["region_wcs", "cutout_wcs", "bin_wcs"]
