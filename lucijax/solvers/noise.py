"""Errors rescaled to the noise of a window of each spectrum that the user names
(``Model(noise_window=...)``; the noise itself is measured by
:func:`lucijax.description.window_noise`).

By default the MAP fit estimates each pixel's noise from its own line-free residuals
inside the fit window (:func:`lucijax.solvers.fitting.line_free_noise`). That estimate takes in
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

#: PixelFit fields proportional to the noise (rescaled with it).
ERROR_FIELDS = ("velocity_err_kms", "broadening_err_kms", "amplitude_err", "flux_err_cm1", "flux_null_err_cm1",
                "continuum_err")


def adopt_noise(fields: dict, noise) -> np.ndarray:
    """Rescale a fit's results (PixelFit fields over a batch of pixels, in place) to the
    noise ``noise`` (one value per pixel): the errors scale by ``noise / fit noise``, the
    reduced chi2 by its inverse squared, the S/N by its inverse.

    Pixels whose ``noise`` is NaN (too few usable channels in the window) or whose fit has
    no noise (invalid input) are left as they are. Returns the bool mask of the pixels
    rescaled (the others that have a finite noise kept the fit's own).
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
    return use


__all__ = ["adopt_noise", "ERROR_FIELDS"]
