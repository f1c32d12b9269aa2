"""Cubes: SITELLE spectral cubes (ORB HDF5 levels 1-3, FITS), extracted spectra, in-memory
cubes, cube views (:mod:`.views`), masks (:mod:`.masks`), blocks (:mod:`.blocks`), and the
FITS maps writer. Knows physics, never a solver.

The entry point is :func:`open_cube`, which recognises the file by content and
returns a :class:`SpectralCube`::

    from lucijax.io import open_cube
    with open_cube("M31_SN3.merged.cm1.1.0.hdf5") as cube:
        spectra = cube.read_spectra(100, 164, 200, 264)   # [x, y, channel], float32
        axis = cube.header.axis_cm1                       # cm^-1

All readers index data ORB-style ``[x, y, channel]``; output maps are FITS-
ordered ``[y, x]`` (see :mod:`lucijax.io.maps`).
"""

from __future__ import annotations

import os

from lucijax.io.fits_cube import FITS_SUFFIXES, FitsCube
from lucijax.io.header import (
    COUNTS_UNIT,
    FLUX_UNIT,
    CubeHeader,
    MissingHeaderError,
    SpectralCube,
    celestial_wcs_from_mapping,
    header_from_attrs,
    normalise_filter_name,
)
from lucijax.io.maps import read_map_units, read_map_wcs, read_maps_fits, read_maps_header, write_maps_fits
from lucijax.io.memory import MemoryCube
from lucijax.io.orb import OrbHDF5Cube, get_quadrant_dims, write_orb_cube
from lucijax.io.spectrum import OrbSpectrum
from lucijax.io.wcs import region_wcs

__all__ = [
    "open_cube",
    "SpectralCube",
    "CubeHeader",
    "MissingHeaderError",
    "header_from_attrs",
    "celestial_wcs_from_mapping",
    "normalise_filter_name",
    "OrbHDF5Cube",
    "OrbSpectrum",
    "FitsCube",
    "MemoryCube",
    "write_orb_cube",
    "get_quadrant_dims",
    "write_maps_fits",
    "read_maps_fits",
    "read_map_wcs",
    "read_map_units",
    "read_maps_header",
    "region_wcs",
    "FLUX_UNIT",
    "COUNTS_UNIT",
]

_EXPECTED = (
    "expected an ORB HDF5 cube (level 1 'quadNNN' groups, or a 3-D 'data' dataset for levels 2/3), "
    "an ORB extracted spectrum (1-D 'data' and 'axis' datasets) or a FITS cube (.fits/.fit/.fits.gz)"
)


def _is_fits_content(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(30)
    except OSError:
        return False
    return head.startswith(b"SIMPLE  =") or head[:2] == b"\x1f\x8b" and path.lower().endswith(".gz")


def open_cube(path: str | os.PathLike) -> SpectralCube:
    """Open a spectral cube or an extracted spectrum, whatever its format.

    Parameters
    ----------
    path : str or os.PathLike
        An ORB HDF5 cube (level 1, 2 or 3), an ORB extracted spectrum, or a
        FITS cube.

    Returns
    -------
    SpectralCube
        :class:`OrbHDF5Cube`, :class:`OrbSpectrum` (``is_single_spectrum``,
        shape ``(1, 1, N)``) or :class:`FitsCube`. Use it as a context manager
        or call ``close()``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not one of the supported layouts.
    """
    import h5py

    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such file ({_EXPECTED})")
    if os.path.isdir(p):
        raise ValueError(f"{p}: is a directory ({_EXPECTED})")
    if p.lower().endswith(FITS_SUFFIXES):
        return FitsCube(p)
    if h5py.is_hdf5(p):
        try:
            f = h5py.File(p, "r")
        except OSError as err:  # e.g. a truncated copy
            raise ValueError(f"{p}: not a readable HDF5 file (truncated or damaged? {err})") from None
        with f:
            data = f.get("data", getlink=False) if "data" in f else None
            is_ds = isinstance(data, h5py.Dataset)
            ndim = data.ndim if is_ds else None
            has_quads = any(k.startswith("quad") and isinstance(f[k], h5py.Group) for k in f.keys())
            has_frames = any(k.startswith("frame") for k in f.keys())
            keys = sorted(f.keys())
        if ndim == 3 or (data is None and has_quads):
            return OrbHDF5Cube(p)
        if ndim == 1:
            return OrbSpectrum(p)
        if has_frames:
            raise ValueError(
                f"{p}: ORB frame-divided HDF5 cube ('frameNNNNN' groups, usually an interferogram "
                f"cube) is not supported; {_EXPECTED}"
            )
        what = f"a 'data' dataset of {ndim} dimensions" if is_ds else f"datasets/groups {keys[:10]}"
        raise ValueError(f"{p}: HDF5 file with {what}; {_EXPECTED}")
    if _is_fits_content(p):
        return FitsCube(p)
    raise ValueError(f"{p}: neither an HDF5 nor a FITS file; {_EXPECTED}")
