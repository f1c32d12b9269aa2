"""ORB extracted spectra (1-D ``data`` + ``axis`` HDF5 files) as 1x1 cubes.

Layout written by ORB's ``Spectrum.writeto``: dataset ``axis`` (float64,
cm^-1), dataset ``data`` (complex128; the real part is the spectrum), dataset
``err`` (ignored: its scale is wrong in the public example files), and the
parent cube's header as root attributes.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import h5py
import numpy as np

from lucijax.io.header import SpectralCube, header_from_attrs, to_python

__all__ = ["OrbSpectrum"]

#: Largest tolerated difference (cm^-1) between the axis described by the
#: attributes and the stored ``axis`` dataset.
AXIS_TOLERANCE_CM1 = 1e-6


class OrbSpectrum(SpectralCube):
    """One ORB extracted spectrum exposed as a ``(1, 1, N)`` spectral cube.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.hdf5`` spectrum file.

    Notes
    -----
    * Data: the real part of ``data`` is returned as is. ORB writes these
      files already flux calibrated (``BUNIT = 'FLUX'`` and/or
      ``flux_calibration`` set): ``header.flux_unit`` is ``'erg/cm2/s/A'`` in
      that case, ``'counts'`` otherwise. No ``flambda`` scaling is applied,
      even when the ``level3`` attribute is set (those attributes are
      inherited from the parent cube).
    * Spectral axis: the ``axis_min``/``axis_step`` attributes (ORB's axis of the
      cube the spectrum was extracted from) are authoritative, as for cubes. When
      they are absent, the stored ``axis`` dataset is used. When both exist and
      differ, a warning is issued and the attributes win: in the public M31 sky
      spectra the stored ``axis`` is computed with the extraction region's own
      ``calib_coeff`` (up to 261 cm^-1 away), while the data lie on the cube's
      axis: fitted against the OH line list, the four spectra give velocities
      of 61-70 km/s on the attribute axis and of -1740..+950 km/s on their
      stored axes.
    * Instrumental line width: the spectrum's own ``calib_coeff_orig`` (the
      pixel's calibration) is returned by :meth:`read_calib_map` as an
      equivalent laser wavelength.
    """

    is_single_spectrum = True

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file (expected an ORB extracted spectrum)")
        self.level = None
        with h5py.File(self.path, "r") as f:
            if "data" not in f or not isinstance(f["data"], h5py.Dataset):
                raise ValueError(f"{self.path}: not an ORB spectrum: no 'data' dataset")
            data = np.asarray(f["data"][()])
            if data.ndim != 1:
                raise ValueError(f"{self.path}: an ORB spectrum has a 1-D 'data' dataset, got shape {data.shape}")
            axis = None
            if "axis" in f and isinstance(f["axis"], h5py.Dataset):
                axis = np.asarray(f["axis"][()], dtype=np.float64)
            attrs = {k: to_python(f.attrs[k]) for k in f.attrs.keys()}

        n = int(data.shape[0])
        if np.iscomplexobj(data):
            data = data.real
        self._data = np.ascontiguousarray(data, dtype=np.float32)
        self.shape = (1, 1, n)

        header = header_from_attrs(attrs, n, self.path)
        if axis is not None:
            header = self._reconcile_axis(header, axis, attrs)
        self.header = header

    def _reconcile_axis(self, header, axis: np.ndarray, attrs: dict):
        n = header.n_channels
        if axis.shape != (n,):
            raise ValueError(f"{self.path}: 'axis' has shape {axis.shape} but 'data' has {n} channels")
        if n < 2:
            return header
        s_min = float(axis[0])
        s_step = float((axis[-1] - axis[0]) / (n - 1))
        k = np.arange(n, dtype=np.float64)
        irregular = float(np.max(np.abs(axis - (s_min + k * s_step))))
        if irregular > AXIS_TOLERANCE_CM1 * 1e3:
            warnings.warn(
                f"{self.path}: the stored 'axis' is not regular (deviation {irregular:.3g} cm-1); "
                "a regular axis from its first and last values is used"
            )
        has_attr_axis = any(k_ in attrs for k_ in ("axis_min", "AXIS_MIN")) and any(
            k_ in attrs for k_ in ("axis_step", "AXIS_STEP")
        )
        diff = float(np.max(np.abs(header.axis_cm1 - axis)))
        if diff <= AXIS_TOLERANCE_CM1:
            return header
        if has_attr_axis:
            warnings.warn(
                f"{self.path}: the axis_min/axis_step attributes differ from the stored 'axis' dataset "
                f"by up to {diff:.6g} cm-1; the attribute axis is used (the data lie on the cube's axis)"
            )
            return header
        return dataclasses.replace(header, axis_min_cm1=s_min, axis_step_cm1=s_step)

    def read_spectra(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Return the spectrum as a float32 ``(1, 1, N)`` array (box must be ``0, 1, 0, 1``)."""
        self._check_box(x0, x1, y0, y1)
        return self._data.copy()[None, None, :]

    def read_calib_map(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray | None:
        """Equivalent calibration-laser wavelength of the spectrum's own calibration,
        ``calib_coeff_orig * nm_laser`` (``axis_corr`` when absent), shape ``(1, 1)``.

        ORB defines the calibration coefficient of a pixel as ``calib_map / nm_laser``;
        it sets the instrumental sinc width.
        """
        self._check_box(x0, x1, y0, y1)
        corr = self.header.calib_coeff_orig if self.header.calib_coeff_orig is not None else self.header.axis_corr
        return np.full((1, 1), corr * self.header.nm_laser, dtype=np.float64)

    def close(self) -> None:
        """Nothing to release: the file is read entirely at opening."""
