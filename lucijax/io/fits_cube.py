"""FITS spectral cubes (wavenumber axis) behind the :class:`SpectralCube` interface.

Conventions
-----------
* The cube is the primary HDU, or the first image HDU with ``NAXIS = 3``;
  numpy order ``[channel, y, x]`` (FITS ``NAXIS1 = x``, ``NAXIS2 = y``,
  ``NAXIS3`` = spectral axis). :meth:`FitsCube.read_spectra` returns
  ``[x, y, channel]`` like the HDF5 readers.
* Spectral axis from ``CRVAL3``/``CDELT3``/``CRPIX3`` in cm^-1
  (``CUNIT3 = 'cm-1'``); wavelength axes are rejected with a clear error.
* ORB parameters from header keywords: ``STEP``, ``ORDER``, ``STEP_NB`` or
  ``STEPNB``, ``ZPDINDEX`` or ``ZPD_INDEX``, ``NM_LASER``, ``CALIBNM`` or
  ``LASER``, ``AXISCORR`` or ``AXIS_CORR``, ``FILTER``, ``APODIZ``.
* Units: ``BUNIT`` naming counts (``counts``, ``ADU``, ``e-``) gives
  ``flux_unit = 'counts'``; anything else is taken as flux calibrated
  erg/cm^2/s/A (ORB's FITS exports are calibrated). No scaling is applied.
* An optional 2-D image extension ``CALIB_MAP`` (numpy ``[y, x]``, nm) is
  returned by :meth:`FitsCube.read_calib_map`.
* The file is opened with ``memmap=True`` and read through ``hdu.section``,
  so only the requested slab is read (gzip-compressed files are decompressed
  on the fly by astropy, which is slower but never loads the whole cube).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from lucijax.io.header import (
    COUNTS_UNIT,
    FLUX_UNIT,
    SpectralCube,
    check_spectral_unit,
    header_from_attrs,
    to_python,
)

__all__ = ["FitsCube", "FITS_SUFFIXES"]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_COUNT_UNITS = {"counts", "count", "ct", "adu", "e-", "electrons", "dn"}


class FitsCube(SpectralCube):
    """Reader for 3-D FITS spectral cubes with a wavenumber axis.

    Parameters
    ----------
    path : str or os.PathLike
        ``.fits``, ``.fit`` or ``.fits.gz`` file.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file has no 3-D image HDU or its spectral axis is not in
        cm^-1.
    """

    def __init__(self, path: str | os.PathLike):
        from astropy.io import fits

        self.path = os.fspath(path)
        self.level = None
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file (expected a FITS spectral cube)")
        try:
            self._hdul = fits.open(self.path, memmap=True, lazy_load_hdus=True)
        except OSError as exc:
            raise ValueError(f"{self.path}: not a readable FITS file ({exc})") from exc
        try:
            self._open()
        except Exception:
            self.close()
            raise

    def __reduce__(self):
        """Pickled as its path: unpickling opens the file again (a cluster's workers
        rebuild a cube view this way, :mod:`lucijax.engine.cluster`)."""
        return (type(self), (self.path,))

    def _open(self) -> None:
        hdul = self._hdul
        self._hdu = None
        for hdu in hdul:
            if hdu.is_image and int(hdu.header.get("NAXIS", 0)) == 3:
                self._hdu = hdu
                break
        if self._hdu is None:
            raise ValueError(
                f"{self.path}: no 3-D image HDU found; expected a spectral cube with NAXIS = 3 "
                "(x, y, wavenumber)"
            )
        h = self._hdu.header
        nx, ny, nz = int(h["NAXIS1"]), int(h["NAXIS2"]), int(h["NAXIS3"])
        self.shape = (nx, ny, nz)

        cards: dict = {}
        if self._hdu is not hdul[0]:  # inherit primary keywords not overridden
            for k, v in hdul[0].header.items():
                if k and k not in ("COMMENT", "HISTORY") and not k.startswith("NAXIS"):
                    cards[k] = to_python(v)
        for k, v in h.items():
            if k and k not in ("COMMENT", "HISTORY"):
                cards[k] = to_python(v)

        check_spectral_unit(cards.get("CUNIT3"), cards.get("CTYPE3"), self.path, wavetype=cards.get("WAVTYPE"))
        if "CRVAL3" not in cards and not ("axis_min" in cards or "AXIS_MIN" in cards):
            warnings.warn(f"{self.path}: no CRVAL3 keyword; the spectral axis is computed from STEP/ORDER")

        bunit = str(cards.get("BUNIT", "")).strip()
        flux_unit = COUNTS_UNIT if bunit.lower() in _COUNT_UNITS else FLUX_UNIT
        self.header = header_from_attrs(cards, nz, self.path, flux_unit=flux_unit)

        self._calib_hdu = None
        for hdu in hdul:
            if (
                hdu.is_image
                and str(hdu.header.get("EXTNAME", "")).upper() == "CALIB_MAP"
                and int(hdu.header.get("NAXIS", 0)) == 2
            ):
                if (int(hdu.header["NAXIS1"]), int(hdu.header["NAXIS2"])) == (nx, ny):
                    self._calib_hdu = hdu
                else:
                    warnings.warn(f"{self.path}: CALIB_MAP extension does not match the image size; ignored")
                break

    def read_spectra(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Spectra of ``[x0:x1, y0:y1]`` as float32 ``(x1 - x0, y1 - y0, n_channels)``."""
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        block = self._hdu.section[:, y0:y1, x0:x1]  # [channel, y, x]
        out = np.asarray(block, dtype=np.float32).transpose(2, 1, 0)
        return np.ascontiguousarray(out)

    def read_calib_map(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray | None:
        """Calibration-laser wavelength (nm) from a ``CALIB_MAP`` extension, else ``None``."""
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        if self._calib_hdu is None:
            return None
        block = self._calib_hdu.section[y0:y1, x0:x1]
        return np.ascontiguousarray(np.asarray(block, dtype=np.float64).T)

    def close(self) -> None:
        """Close the FITS file (idempotent)."""
        hdul = getattr(self, "_hdul", None)
        if hdul is not None:
            try:
                hdul.close()
            finally:
                self._hdul = None
