"""Noise from a window of each spectrum that the user names (``noise_window``).

By default the MAP fit estimates each pixel's noise from its own line-free residuals
inside the fit window (:func:`lucijax.fit.map.line_free_noise`). That estimate takes in
whatever the model leaves: a continuum with structure, lines that are not in the model,
and, for a sky spectrum, which has lines in every part of the band, the residuals of all
channels. An imaging FTS spreads the photon noise of the whole band evenly over all
channels of the spectrum (in counts), so channels outside the filter band, where no light
arrives, hold the noise alone: LUCI measures its noise there (SN3: 15600-15800 cm-1 of its
axis). With a noise window, a pixel's noise is the robust std of its spectrum over that
window, independent of the model, and the fit's errors, reduced chi2 and S/N are rescaled to
it (the best-fit parameters do not depend on the noise level).

Flux-calibrated spectra with a per-channel ``flambda`` carry the noise of channel k in
proportion to ``flambda[k]``: the window's channels are divided by their relative noise
(the fit's channel weights, relative to the fit window's median channel) before the
std is taken, so the noise refers to the same channel as the fit's NOISE map.
"""

from __future__ import annotations

import numpy as np

#: Fewest usable channels a pixel needs in the noise window; with fewer, the pixel keeps
#: the fit's own noise estimate.
MIN_NOISE_CHANNELS = 10

#: PixelFit fields proportional to the noise (rescaled with it).
ERROR_FIELDS = ("velocity_err_kms", "broadening_err_kms", "amplitude_err", "flux_err_cm1")


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


def adopt_noise(fields: dict, noise) -> int:
    """Rescale a fit's results (PixelFit fields over a batch of pixels, in place) to the
    noise ``noise`` (one value per pixel): the errors scale by ``noise / fit noise``, the
    reduced chi2 by its inverse squared, the S/N by its inverse.

    Pixels whose ``noise`` is NaN (too few usable channels in the window) or whose fit has
    no noise (invalid input) are left as they are. Returns how many fitted pixels kept the
    fit's own noise for want of a window noise.
    """
    noise = np.asarray(noise, np.float64)
    own = np.asarray(fields["noise"], np.float64)
    use = np.isfinite(noise) & np.isfinite(own) & (own > 0)
    ratio = np.where(use, noise / np.where(use, own, 1.0), 1.0)

    def scale(key, factor):
        v = fields[key]
        f = factor.reshape(factor.shape + (1,) * (v.ndim - factor.ndim))
        fields[key] = (v * f).astype(v.dtype)

    for key in ERROR_FIELDS:
        if key in fields:
            scale(key, ratio)
    scale("chi2_reduced", 1.0 / ratio**2)
    scale("snr", 1.0 / ratio)
    fields["noise"] = np.where(use, noise, own).astype(fields["noise"].dtype)
    return int(np.sum(np.isfinite(own) & ~use))


__all__ = ["window_noise", "adopt_noise", "MIN_NOISE_CHANNELS", "ERROR_FIELDS"]
