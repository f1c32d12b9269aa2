"""SITELLE instrument conventions: filters, spectral axis, instrumental line width.

All formulas follow ORB (Martin et al. 2015, 2016) as summarised in the project's design
notes. Wavenumbers are in cm^-1, step sizes and wavelengths in nm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lucijax.constants import SINC_FWHM


@dataclass(frozen=True)
class Filter:
    """A SITELLE filter: its bandpass and the interferometer set-up used with it."""

    name: str
    band_min_nm: float
    band_max_nm: float
    step_nm: float
    order: int

    @property
    def band_cm1(self) -> tuple[float, float]:
        """Bandpass as (min, max) wavenumbers in cm^-1."""
        return 1e7 / self.band_max_nm, 1e7 / self.band_min_nm


#: Bandpasses (nm), step (nm) and folding order of SITELLE's filters, from the ORB filter
#: files (``filter_*.hdf5``: attributes ``bandpass_min_nm``, ``bandpass_max_nm``, ``step``,
#: ``order``).
FILTERS: dict[str, Filter] = {
    f.name: f
    for f in (
        Filter("SN1", 362.6, 385.6, 1647.0, 8),
        Filter("SN2", 479.8, 513.2, 1680.0, 6),
        Filter("SN3", 647.7, 685.0, 2943.0, 8),
        Filter("C1", 385.4, 485.2, 570.0, 2),
        Filter("C2", 559.3, 625.5, 1680.0, 5),
        Filter("C3", 511.0, 555.4, 1785.0, 6),
        Filter("C4", 798.5, 823.4, 5271.5, 12),
    )
}


def get_filter(name: str) -> Filter:
    """Return the :class:`Filter` called ``name`` (case-insensitive: 'SN3', 'sn3')."""
    key = str(name).strip().upper()
    if key not in FILTERS:
        raise ValueError(f"unknown filter '{name}'; known filters: {', '.join(FILTERS)}")
    return FILTERS[key]


def channel_width_cm1(step_nm: float, step_nb: int, corr: float) -> float:
    """Channel width ``d = corr * 1e7 / (2 N step)`` in cm^-1."""
    return corr * 1e7 / (2.0 * step_nb * step_nm)


def spectral_axis_cm1(step_nm: float, order: int, step_nb: int, corr: float) -> np.ndarray:
    """The ORB wavenumber axis of a cube (cm^-1), float64, ``step_nb`` channels.

    ``s_min = order/(2 step) * corr * 1e7`` (+ d if the order is odd), ``s_max =
    (order+1)/(2 step) * corr * 1e7`` (- d if the order is even), evenly sampled with
    ``step_nb`` points. The spacing equals :func:`channel_width_cm1`.
    """
    d = channel_width_cm1(step_nm, step_nb, corr)
    s_min = order / (2.0 * step_nm) * corr * 1e7
    s_max = (order + 1) / (2.0 * step_nm) * corr * 1e7
    if order % 2:
        s_min += d
    else:
        s_max -= d
    return np.linspace(s_min, s_max, int(step_nb))


def sinc_fwhm_cm1(step_nm: float, step_nb: int, zpd_index: int, corr_orig) -> np.ndarray:
    """FWHM (cm^-1) of the instrumental sinc of a pixel.

    ``fwhm = 1.20671 * 1e7 * corr_orig / (2 (N - zpd_index) step)``: only the steps on the
    long side of zero path difference set the resolution. ``corr_orig`` is the pixel's own
    calibration coefficient (``calib_map / nm_laser``); arrays broadcast.
    """
    n_long = int(step_nb) - int(zpd_index)
    if n_long <= 0:
        raise ValueError(f"zpd_index ({zpd_index}) must be smaller than step_nb ({step_nb})")
    return SINC_FWHM * 1e7 * np.asarray(corr_orig, dtype=np.float64) / (2.0 * n_long * step_nm)


def resolution(sigma_cm1, fwhm_cm1) -> np.ndarray:
    """Spectral resolution ``R = sigma / fwhm``."""
    return np.asarray(sigma_cm1, dtype=np.float64) / np.asarray(fwhm_cm1, dtype=np.float64)


def corr_from_calib(calib_laser_nm, nm_laser: float) -> np.ndarray:
    """Calibration coefficient ``1/cos(theta)`` of each pixel from the calibration laser map."""
    return np.asarray(calib_laser_nm, dtype=np.float64) / float(nm_laser)
