"""Model and residual cubes of a fit, written as FITS.

The model of every pixel is rebuilt from the fitted parameters kept in
``FitResult.raw`` (velocities, broadenings, linear amplitudes and continuum, instrumental
FWHM) by the fit's own line model, vectorised over blocks of pixels; the cube is written
block by block into a memory-mapped FITS file, so regions larger than memory work.

FITS layout: one primary image, numpy ``[channel, y, x]`` (``NAXIS1`` = x, ``NAXIS2`` = y,
``NAXIS3`` = channel) over the channels of the fit window, with the 2-D celestial WCS of
the fitted region and a linear spectral axis ``CTYPE3 = 'WAVN'``, ``CUNIT3 = 'cm-1'``
(observed frame), and ``BUNIT`` the cube's flux unit. Pixels without a valid fit
(masked, invalid input) are NaN.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from tqdm.auto import tqdm

__all__ = ["model_spectra", "observed_axis_cm1", "write_model_cube"]

_BUNIT = {"erg/cm2/s/A": "erg/(cm2 s Angstrom)"}
_FNS: dict = {}


def observed_axis_cm1(plan) -> np.ndarray:
    """Observed wavenumbers (cm^-1) of the fit window's channels."""
    return (np.asarray(plan.grid.axis_rel_cm1, np.float64) + plan.grid.ref_cm1) / (1.0 + plan.redshift)


def _batched_model(plan):
    """jit(vmap(one pixel's model spectrum)) of a plan, built once per plan."""
    key = id(plan.model)
    fn = _FNS.get(key)
    if fn is None or fn[0] is not plan.model:
        import jax
        import jax.numpy as jnp

        model = plan.model
        has_b = plan.spec.has_broadening

        def one(v, b, alpha, fwhm):
            theta = jnp.concatenate([v, b]) if has_b else v
            return model.spectrum(theta, alpha, fwhm)

        fn = (model, jax.jit(jax.vmap(one)))
        _FNS[key] = fn
    return fn[1]


def model_spectra(plan, velocity_kms, broadening_kms, linear, fwhm_cm1, batch: int = 1024) -> np.ndarray:
    """Model spectra on the fit window for a batch of pixels.

    Parameters
    ----------
    plan : FitPlan
    velocity_kms, broadening_kms : (B, G)
    linear : (B, K)
        Linear parameters (column amplitudes then continuum coefficients).
    fwhm_cm1 : (B,)
        Instrumental FWHM in the de-redshifted frame (as in ``FitResult.raw``).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, n_window_channels)``; rows with a non-finite parameter are NaN.
    """
    fn = _batched_model(plan)
    v = np.asarray(velocity_kms, np.float32)
    b = np.asarray(broadening_kms, np.float32)
    a = np.asarray(linear, np.float32)
    f = np.asarray(fwhm_cm1, np.float32)
    n = v.shape[0]
    ok = np.isfinite(v).all(1) & np.isfinite(b).all(1) & np.isfinite(a).all(1) & np.isfinite(f) & (f > 0)
    out = np.full((n, plan.grid.n_channels), np.nan, np.float32)
    idx = np.flatnonzero(ok)
    for i in range(0, idx.size, batch):  # fixed batch shape: one compilation
        sel = idx[i:i + batch]
        pad = batch - sel.size
        take = np.concatenate([sel, np.full(pad, sel[0])]) if pad else sel
        res = np.asarray(fn(v[take], b[take], a[take], f[take]))
        out[sel] = res[:sel.size]
    return out


def _header(result, n_channels, axis):
    from astropy.io import fits

    plan = result.plan
    x0, x1, y0, y1 = result.region
    hdr = fits.Header()
    hdr["SIMPLE"] = True
    hdr["BITPIX"] = -32
    hdr["NAXIS"] = 3
    hdr["NAXIS1"] = x1 - x0
    hdr["NAXIS2"] = y1 - y0
    hdr["NAXIS3"] = n_channels
    hdr["EXTEND"] = True
    if result.wcs is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wh = result.wcs.to_header(relax=True)
        for card in wh.cards:
            if card.keyword not in ("WCSAXES",):
                hdr[card.keyword] = (card.value, card.comment)
    hdr["WCSAXES"] = 3
    hdr["CTYPE3"] = "WAVN"
    hdr["CUNIT3"] = "cm-1"
    hdr["CRPIX3"] = 1.0
    hdr["CRVAL3"] = float(axis[0])
    hdr["CDELT3"] = float((axis[-1] - axis[0]) / max(axis.size - 1, 1))
    hdr["BUNIT"] = _BUNIT.get(plan.flux_unit, plan.flux_unit)
    hdr["ORIGIN"] = "lucijax"
    hdr["MODEL"] = plan.spec.shape
    hdr["LINES"] = " ".join(plan.line_set.names)[:68]
    hdr["REDSHIFT"] = plan.redshift
    hdr["REGION"] = "{}:{},{}:{}".format(*result.region)
    return hdr


def _allocate(path, hdr, shape):
    """Write ``hdr`` and a zero data block of ``shape`` (float32) without building it in memory."""
    from astropy.io import fits

    nbytes = int(np.prod(shape)) * 4
    with open(path, "wb") as fh:
        fh.write(hdr.tostring().encode("ascii"))
        data_len = ((nbytes + 2879) // 2880) * 2880
        fh.seek(data_len - 1, os.SEEK_CUR)
        fh.write(b"\0")
    return fits.open(path, mode="update", memmap=True)


def write_model_cube(result, path, *, cube=None, residual_path=None, block: int = 64, progress: bool = True):
    """Write the model cube of a fit (and the residual cube data - model).

    Parameters
    ----------
    result : FitResult
        A fit of a cube (``lucijax.fit_cube``); for a Voronoi result mapped back to pixels,
        each pixel gets its bin's model.
    path : str or Path
        Output FITS file of the model.
    cube : SpectralCube or path, optional
        The cube that was fitted (the same object for binned cubes), needed for the
        residuals; its pixel box ``result.region`` is read block by block.
    residual_path : str or Path, optional
        Output FITS file of ``data - model`` on the fit window (requires ``cube``).
    block : int
        Pixels per side of the blocks computed and written at once.

    Returns
    -------
    list of Path
        The files written.
    """
    from pathlib import Path

    from lucijax.io import open_cube

    plan = result.plan
    raw = result.raw
    x0, x1, y0, y1 = result.region
    nxr, nyr = x1 - x0, y1 - y0
    axis = observed_axis_cm1(plan)
    nch = axis.size
    hdr = _header(result, nch, axis)
    if residual_path is not None and cube is None:
        raise ValueError("residual cube: give the fitted cube (cube=...)")
    own = cube is not None and not hasattr(cube, "read_spectra")
    cube_obj = open_cube(cube) if own else cube
    paths = [Path(path)]
    outs = [_allocate(path, hdr, (nch, nyr, nxr))]
    if residual_path is not None:
        rh = hdr.copy()
        rh["COMMENT"] = "residuals: data - model"
        paths.append(Path(residual_path))
        outs.append(_allocate(residual_path, rh, (nch, nyr, nxr)))
    G = raw["velocity_kms"].shape[-1]
    broad = raw.get("broadening_kms")
    try:
        blocks = [(bx, min(bx + block, nxr), by, min(by + block, nyr)) for bx in range(0, nxr, block)
                  for by in range(0, nyr, block)]
        for bx0, bx1, by0, by1 in tqdm(blocks, desc="model cube", unit="block", disable=not progress):
            sl = (slice(bx0, bx1), slice(by0, by1))
            v = raw["velocity_kms"][sl].reshape(-1, G)
            b = broad[sl].reshape(-1, G) if broad is not None else np.zeros_like(v)
            a = raw["linear"][sl].reshape(v.shape[0], -1)
            f = raw["fwhm_cm1"][sl].reshape(-1)
            m = model_spectra(plan, v, b, a, f, batch=min(1024, max(64, v.shape[0])))
            m = m.reshape(bx1 - bx0, by1 - by0, nch)
            outs[0][0].data[:, by0:by1, bx0:bx1] = m.transpose(2, 1, 0)
            if residual_path is not None:
                data = cube_obj.read_spectra(x0 + bx0, x0 + bx1, y0 + by0, y0 + by1)[..., plan.window]
                outs[1][0].data[:, by0:by1, bx0:bx1] = (data - m).transpose(2, 1, 0)
    finally:
        for o in outs:
            o.close()
        if own:
            cube_obj.close()
    return paths
