"""Model and residual cubes of a fit, written as FITS.

The model of every pixel is rebuilt from the fitted parameters (``Result.fields``:
velocities, broadenings, linear amplitudes and continuum, instrumental FWHM) by the fit's
own line model, as a per-spectrum program the engine maps over the fitted view; every block
goes into a memory-mapped FITS file, so regions larger than memory work.

FITS layout: one primary image, numpy ``[channel, y, x]`` (``NAXIS1`` = x, ``NAXIS2`` = y,
``NAXIS3`` = channel) over the channels of the fit window, with the 2-D celestial WCS of
the fitted region and a linear spectral axis ``CTYPE3 = 'WAVN'``, ``CUNIT3 = 'cm-1'``
(observed frame), and ``BUNIT`` the cube's flux unit. Pixels without a valid fit
(masked, invalid input) are NaN.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lucijax.engine import Execution, map_pixels
from lucijax.io.views import _Delegating
from lucijax.program import Program

__all__ = ["model_program", "write_model_cube"]

_BUNIT = {"erg/cm2/s/A": "erg/(cm2 s Angstrom)"}


class _AllPixels(_Delegating):
    """The fitted view with every pixel computed (masked ones get NaN parameters)."""

    def __init__(self, cube):
        super().__init__(cube)
        self.pixel_mask = None

    def fingerprint(self) -> str:
        return cube_fingerprint(self.base)


def cube_fingerprint(cube) -> str:
    return cube.fingerprint() if hasattr(cube, "fingerprint") else str(getattr(cube, "path", ""))


def model_program(result, residual: bool) -> Program:
    """The per-spectrum program of a result's model spectra (and residuals ``y - model``)."""
    bound = result.bound
    model = bound.line_model
    has_b = bound.spec.has_broadening
    f = result.fields
    given = {"velocity": np.asarray(f["velocity_kms"], np.float32), "linear": np.asarray(f["linear"], np.float32),
             "fwhm_m": np.asarray(result.fwhm_cm1, np.float32)}
    if has_b:
        given["broadening"] = np.asarray(f["broadening_kms"], np.float32)

    def one(inp):
        theta = jnp.concatenate([inp["velocity"], inp["broadening"]]) if has_b else inp["velocity"]
        ok = jnp.all(jnp.isfinite(theta)) & jnp.all(jnp.isfinite(inp["linear"])) & jnp.isfinite(inp["fwhm_m"]) & (inp["fwhm_m"] > 0)
        safe = jnp.where(ok, inp["fwhm_m"], 1.0)
        m = model.spectrum(jnp.where(ok, theta, 0.0), jnp.where(ok, inp["linear"], 0.0), safe)
        return {"model": jnp.where(ok, m, jnp.nan)}

    def prepare(block):
        out = dict(block.given)
        if residual:
            out["_y"] = np.ascontiguousarray(block.spectra[:, bound.window], np.float32)
        return out

    def finish(out, inputs):
        if residual:
            out = dict(out, residual=(inputs["_y"] - out["model"]).astype(np.float32))
        return out

    return Program(name="model cube", key="\n".join([bound.key, "model cube", str(residual)]), prepare=prepare,
                   one=one, finish=finish, given=given, bulk=("model", "residual") if residual else ("model",),
                   reads_spectra=residual, stored=False)


class _FitsSink:
    """Writes the bulk outputs of each block into memory-mapped FITS cubes."""

    def __init__(self, outs: dict):
        self.outs = outs

    def write(self, box, index, bulk):
        bx0, bx1, by0, by1 = box
        nb = (bx1 - bx0) * (by1 - by0)
        for name, hdul in self.outs.items():
            v = np.asarray(bulk[name])
            full = np.full((nb, v.shape[-1]), np.nan, np.float32)
            full[index] = v
            hdul[0].data[:, by0:by1, bx0:bx1] = full.reshape(bx1 - bx0, by1 - by0, -1).transpose(2, 1, 0)


def _header(result, n_channels, axis):
    from astropy.io import fits

    bound = result.bound
    ny, nx = result.shape
    hdr = fits.Header()
    hdr["SIMPLE"] = True
    hdr["BITPIX"] = -32
    hdr["NAXIS"] = 3
    hdr["NAXIS1"] = nx
    hdr["NAXIS2"] = ny
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
    hdr["BUNIT"] = _BUNIT.get(bound.flux_unit, bound.flux_unit)
    hdr["ORIGIN"] = "lucijax"
    hdr["MODEL"] = bound.spec.shape
    hdr["LINES"] = " ".join(bound.line_set.names)[:68]
    hdr["REDSHIFT"] = bound.redshift
    if result.region is not None:
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


def write_model_cube(result, path, *, cube=None, residual_path=None, execution: Execution | None = None):
    """Write the model cube of a fit (and the residual cube, data - model).

    Parameters
    ----------
    result : Result
        A fit (or posterior) of a view of a cube; for a Voronoi result mapped back to pixels
        (:func:`lucijax.views.unbin`) each pixel gets its bin's model.
    path : str or Path
        Output FITS file of the model.
    cube : view
        The view that was fitted (the same object for binned views), or, for a result
        mapped back from bins, the cube it came from; needed for the residuals.
    residual_path : str or Path, optional
        Output FITS file of ``data - model`` on the fit window (requires ``cube``).
    execution : Execution, optional

    Returns
    -------
    list of Path
        The files written.
    """
    if residual_path is not None and cube is None:
        raise ValueError("residual cube: give the fitted cube (cube=...)")
    view = cube
    if view is None or view.shape[:2] != result.fields["linear"].shape[:2]:
        view = _ResultGrid(result, cube)
    axis = result.bound.axis_obs_cm1
    nch = axis.size
    hdr = _header(result, nch, axis)
    ny, nx = result.shape
    paths = [Path(path)]
    outs = {"model": _allocate(path, hdr, (nch, ny, nx))}
    if residual_path is not None:
        rh = hdr.copy()
        rh["COMMENT"] = "residuals: data - model"
        paths.append(Path(residual_path))
        outs["residual"] = _allocate(residual_path, rh, (nch, ny, nx))
    try:
        map_pixels(_AllPixels(view), model_program(result, residual_path is not None), execution or Execution(progress=False),
                   sink=_FitsSink(outs))
    finally:
        for o in outs.values():
            o.close()
    return paths


class _ResultGrid:
    """A stand-in view of a result's own pixel grid when the fitted view is not given (or
    the result was mapped back from bins): its header, no spectra."""

    def __init__(self, result, cube=None):
        ny, nx = result.shape
        self.shape = (nx, ny, int(result.bound.window.size))
        self.header = cube.header if cube is not None else None
        self.path = result.source
        self.pixel_mask = None
        self.origin = None

    def fingerprint(self) -> str:
        return str(self.path)

    def read_spectra(self, x0, x1, y0, y1):
        raise ValueError("a model cube of a binned result has no residuals")

    def read_calib_map(self, x0, x1, y0, y1):
        return None

    def read_deep_frame(self, x0, x1, y0, y1):
        return None
