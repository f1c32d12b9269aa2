"""Per-pixel parameter covariances as one FITS image, and their reader.

Layout of ``covariance.fits`` (written by :meth:`lucijax.FitResult.write` for fits with
``MAP(covariance=True)``): one primary image of ``D (D + 1) / 2`` planes, numpy ``[k, y, x]``
(``NAXIS1`` = x, ``NAXIS2`` = y, ``NAXIS3`` = k), float32. Plane ``k`` belongs to the
``k``-th pair ``(i, j)`` of ``numpy.triu_indices(D)`` (the upper triangle, row by row:
``(0, 0), (0, 1), ..., (0, D-1), (1, 1), ...``): for ``i = j`` it holds the standard deviation
``sigma_i = sqrt(cov[i, i])`` (unit ``PUNIT{i+1}``), for ``i < j`` the correlation
``cov[i, j] / (sigma_i sigma_j)`` (0 where a sigma is 0), so that float32 keeps every
element: a covariance of fluxes in erg/cm^2/s/A (1e-40) is below float32's normal range.
``cov[i, j] = corr[i, j] sigma_i sigma_j``. The header names the parameters (``NPARAM`` =
D; ``PNAME{i}``, ``PUNIT{i}`` for i = 1..D), says ``COVPACK = 'SIGMA_CORR_TRIU'`` and
carries the 2-D celestial WCS of the maps (the third axis is the linear
``CTYPE3 = 'COVPAIR'``, the plane index ``k``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lucijax.io.files import atomic_write
from lucijax.io.maps import _card_value
from lucijax.io.wcs import region_wcs

__all__ = ["COVPACK", "read_covariance", "sigma_correlation", "write_covariance_fits"]

#: The ``COVPACK`` card of the layout.
COVPACK = "SIGMA_CORR_TRIU"


def sigma_correlation(cov: np.ndarray) -> np.ndarray:
    """``(..., D, D)`` covariances -> ``(..., D (D + 1) / 2)``: sigmas on the diagonal pairs,
    correlations elsewhere, pairs in ``numpy.triu_indices(D)`` order (float64)."""
    cov = np.asarray(cov, np.float64)
    D = cov.shape[-1]
    i, j = np.triu_indices(D)
    sigma = np.sqrt(np.maximum(np.einsum("...ii->...i", cov), 0.0))
    denom = sigma[..., i] * sigma[..., j]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(denom > 0, cov[..., i, j] / np.where(denom > 0, denom, 1.0), 0.0)
    corr = np.where(np.isnan(cov[..., i, j]), np.nan, corr)
    return np.where(i == j, sigma[..., i], corr)


def _covariance(packed: np.ndarray, D: int) -> np.ndarray:
    """Inverse of :func:`sigma_correlation`: symmetric ``(..., D, D)`` float64 covariances."""
    packed = np.asarray(packed, np.float64)
    i, j = np.triu_indices(D)
    diag = i == j
    sigma = packed[..., diag]  # the diagonal pairs, in order 0..D-1
    values = np.where(diag, 1.0, packed) * sigma[..., i] * sigma[..., j]
    out = np.empty(packed.shape[:-1] + (D, D))
    out[..., i, j] = values
    out[..., j, i] = values
    return out


def write_covariance_fits(path, cov_xy: np.ndarray, names: Sequence[str], units: Sequence[str], wcs2d=None,
                          header_extra: Mapping[str, Any] | None = None) -> None:
    """Write per-pixel covariances ``cov_xy`` ``[x, y, D, D]`` (the layout of the module
    docstring).

    Parameters
    ----------
    path : str or os.PathLike
        Output file, replaced atomically.
    cov_xy : [x, y, D, D] array
        Covariance of every pixel (NaN where none); its upper triangle is written.
    names, units : sequences of D str
        Parameter names and units, in the order of the covariance's axes.
    wcs2d : astropy.wcs.WCS, optional
        Celestial WCS of the maps.
    header_extra : Mapping, optional
        More cards of the header (origin, input, lines...).
    """
    from astropy.io import fits

    cov_xy = np.asarray(cov_xy)
    if cov_xy.ndim != 4 or cov_xy.shape[2] != cov_xy.shape[3]:
        raise ValueError(f"covariances must be [x, y, D, D], got shape {cov_xy.shape}")
    D = cov_xy.shape[2]
    if len(names) != D or len(units) != D:
        raise ValueError(f"{D} parameters, but {len(names)} names and {len(units)} units")
    data = np.ascontiguousarray(np.moveaxis(sigma_correlation(cov_xy), -1, 0).transpose(0, 2, 1).astype(np.float32))
    hdr = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HIERARCH notices, WCS 'relax' notices
        if wcs2d is not None:
            for card in region_wcs(wcs2d, None).to_header(relax=True).cards:
                if card.keyword != "WCSAXES":
                    hdr[card.keyword] = (card.value, card.comment)
            hdr["WCSAXES"] = 3
            hdr["CTYPE3"] = ("COVPAIR", "plane k: pair k of numpy.triu_indices(NPARAM)")
            hdr["CRPIX3"], hdr["CRVAL3"], hdr["CDELT3"] = 1.0, 0.0, 1.0
        for key, value in (header_extra or {}).items():
            hdr[str(key)] = _card_value(value)
        hdr["COVPACK"] = (COVPACK, "pairs (i,j) of triu_indices: i=j sigma, i<j corr")
        hdr["NPARAM"] = (D, "parameters along each covariance axis")
        for n, (name, unit) in enumerate(zip(names, units), start=1):
            hdr[f"PNAME{n}"] = str(name)
            hdr[f"PUNIT{n}"] = str(unit)
        hdu = fits.PrimaryHDU(data=data, header=hdr)
        hdu.header["EXTNAME"] = "COVARIANCE"
        with atomic_write(os.fspath(path), ".fits") as tmp:
            hdu.writeto(tmp, overwrite=True)


def read_covariance(path, *, with_units: bool = False):
    """Read a ``covariance.fits`` (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
    with_units : bool
        Also return the parameters' units.

    Returns
    -------
    names : list of str
        The parameters along each covariance axis.
    units : list of str
        Only with ``with_units``.
    cov : [y, x, D, D] float64 array
        FITS-ordered like the maps: ``cov[y, x]`` belongs to map pixel ``(x, y)``.
    """
    from astropy.io import fits

    with fits.open(os.fspath(path), memmap=False) as hdul:
        hdr = hdul[0].header
        if hdr.get("COVPACK") != COVPACK or "NPARAM" not in hdr:
            raise ValueError(f"{path} is not a covariance file written by lucijax (no COVPACK/NPARAM cards)")
        D = int(hdr["NPARAM"])
        names = [str(hdr[f"PNAME{n}"]) for n in range(1, D + 1)]
        units = [str(hdr.get(f"PUNIT{n}", "")) for n in range(1, D + 1)]
        data = np.asarray(hdul[0].data)
    if data.shape[0] != D * (D + 1) // 2:
        raise ValueError(f"{path}: {data.shape[0]} planes for {D} parameters (expected {D * (D + 1) // 2})")
    cov = _covariance(np.moveaxis(data, 0, -1), D)  # [y, x, D, D]
    return (names, units, cov) if with_units else (names, cov)
