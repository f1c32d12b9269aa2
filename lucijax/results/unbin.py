"""Results of Voronoi bins mapped back to the pixels of the region they cover."""

from __future__ import annotations

import dataclasses

import numpy as np

from lucijax.io.wcs import region_wcs
from lucijax.status import Status

__all__ = ["unbin"]


def _pixels(per_bin: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """``per_bin[bins]`` with NaN (floats) or MASKED (integers) where ``bins < 0``."""
    out = per_bin[np.maximum(bins, 0)]
    if out.dtype.kind == "f":
        out[bins < 0] = np.nan
    elif out.dtype.kind == "i":
        out[bins < 0] = int(Status.MASKED)
    else:
        out[bins < 0] = 0
    return out


def unbin(result, binning):
    """A result of Voronoi bins (a fit of :func:`lucijax.io.views.voronoi_cube`) mapped back
    to the pixels of the region (``binning.region``).

    Every pixel of a bin gets the bin's values; pixels outside every bin are NaN with STATUS
    -1. Two maps are added: ``BIN`` (bin index, -1 outside) and ``NPIX`` (pixels in the
    pixel's bin). Fluxes stay those of the whole bin (for a summed bin, divide by ``NPIX``
    for a per-pixel mean). The per-pixel fields are mapped too, so ``model_spectrum(x, y)``
    gives the model of the pixel's bin.
    """
    bins_yx = binning.bin_number
    bins_xy = bins_yx.T
    maps = {k: _pixels(np.asarray(v)[0], bins_yx) for k, v in result.maps.items()}  # bins lie along x of (1, n_bins)
    maps["BIN"] = bins_yx.astype(np.int32)
    maps["NPIX"] = binning.to_pixels(binning.n_pixels, fill=0).astype(np.int32)
    units = dict(result.units, BIN="", NPIX="")
    fields = {k: _pixels(np.asarray(v)[:, 0], bins_xy) for k, v in result.fields.items()}
    changes = dict(maps=maps, units=units, fields=fields, region=tuple(binning.region),
                   wcs=region_wcs(binning.wcs, binning.region) if binning.wcs is not None else None,
                   fwhm_cm1=_pixels(np.asarray(result.fwhm_cm1)[:, 0], bins_xy),
                   computed=bins_xy >= 0, is_single_spectrum=False)
    for name in ("covariance", "noise_from_window"):
        value = getattr(result, name, None)
        if value is not None:
            changes[name] = _pixels(np.asarray(value)[:, 0], bins_xy)
    if getattr(result, "network", None) is not None:
        mean, sigma, kind = result.network
        changes["network"] = (_pixels(np.asarray(mean)[:, 0], bins_xy), _pixels(np.asarray(sigma)[:, 0], bins_xy), kind)
    return dataclasses.replace(result, **changes)
