"""Output maps: one multi-extension FITS file, one image HDU per map.

Maps follow the FITS convention: numpy ``[y, x]``, so ``map[y, x]`` belongs to
cube pixel ``data[x, y, :]``. Every extension carries the 2-D celestial WCS of
the cube (SIP distortion included), shifted to the fitted region.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import numpy as np

from lucijax.io.files import atomic_write
from lucijax.io.wcs import region_wcs

__all__ = [
    "write_maps_fits",
    "read_maps_fits",
    "read_map_wcs",
    "read_map_units",
    "read_maps_header",
    "region_wcs",
]

#: Maps always stored as 16-bit integers.
INTEGER_MAPS = frozenset({"STATUS"})


def _card_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else str(v)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        value = ",".join(str(v) for v in np.ravel(np.asarray(value, dtype=object)))
    return fits_text(str(value))


def fits_text(text: str) -> str:
    """``text`` as a FITS card may hold it (printable ASCII): other characters (a file
    name such as 'ñgc.hdf5') written as Python escapes ('\\xf1gc.hdf5')."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else repr(c)[1:-1] for c in out)


def write_maps_fits(
    path: str | os.PathLike,
    maps: Mapping[str, np.ndarray],
    units: Mapping[str, str],
    wcs2d=None,
    region: tuple[int, int, int, int] | None = None,
    header_extra: Mapping[str, Any] | None = None,
) -> None:
    """Write fitted maps to one multi-extension FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        Output file. An existing file is replaced atomically (the file is
        written to a temporary name in the same directory, then renamed).
    maps : Mapping[str, numpy.ndarray]
        Map name (used as ``EXTNAME``, e.g. ``'HALPHA_FLUX'``, ``'CHI2'``,
        ``'STATUS'``) -> 2-D array in FITS order ``[y, x]``. All maps must have
        the same shape. ``STATUS`` and boolean maps are written as int16,
        other integer maps as int32, all others as float32.
    units : Mapping[str, str]
        Map name -> ``BUNIT`` (``'km/s'``, ``'erg/cm2/s'``, ``''`` for
        dimensionless). Missing names get ``''``.
    wcs2d : astropy.wcs.WCS, optional
        Celestial WCS of the full cube image plane.
    region : tuple of int, optional
        ``(x0, x1, y0, y1)`` pixel box of the full cube (0-based, half-open)
        that the maps cover; the WCS is shifted so that map pixel ``(0, 0)``
        is cube pixel ``(x0, y0)``. The map shape must be
        ``(y1 - y0, x1 - x0)``.
    header_extra : Mapping, optional
        Cards for the (data-less) primary HDU, e.g. lucijax version, input
        file, model, lines. Long keywords become HIERARCH cards; lists are
        written comma-separated.

    Raises
    ------
    ValueError
        On empty/inconsistent maps, a region that does not match the map
        shape, or names that collide once upper-cased.
    """
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    path = os.fspath(path)
    if not maps:
        raise ValueError("write_maps_fits: no maps to write")
    shape = None
    seen: dict[str, str] = {}
    for name, arr in maps.items():
        a = np.asarray(arr)
        if a.ndim != 2:
            raise ValueError(f"map '{name}' must be 2-D [y, x], got shape {a.shape}")
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise ValueError(f"map '{name}' has shape {a.shape}, other maps have {shape}")
        up = str(name).upper()
        if up in seen:
            raise ValueError(f"map names '{seen[up]}' and '{name}' collide as FITS EXTNAME")
        seen[up] = str(name)
    if region is not None:
        x0, x1, y0, y1 = (int(v) for v in region)
        if (y1 - y0, x1 - x0) != shape:
            raise ValueError(
                f"region x[{x0}:{x1}], y[{y0}:{y1}] implies maps of shape {(y1 - y0, x1 - x0)} [y, x], "
                f"got {shape}"
            )

    wcs_header = None
    if wcs2d is not None:
        w = region_wcs(wcs2d, region)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs_header = w.to_header(relax=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # HIERARCH notices
        primary = fits.PrimaryHDU()
        for key, value in (header_extra or {}).items():
            primary.header[str(key)] = _card_value(value)
        hdus = [primary]
        for name, arr in maps.items():
            a = np.asarray(arr)
            if str(name).upper() in INTEGER_MAPS or a.dtype.kind == "b":
                data = a.astype(np.int16)
            elif a.dtype.kind in "iu":
                data = a.astype(np.int32)
            else:
                data = a.astype(np.float32)
            hdu = fits.ImageHDU(data=data, name=str(name))
            hdu.header["EXTNAME"] = str(name)
            hdu.header["BUNIT"] = str(units.get(name, "") or "")
            if wcs_header is not None:
                hdu.header.extend(wcs_header, update=True)
            hdus.append(hdu)
        hdul = fits.HDUList(hdus)

        with atomic_write(path, ".fits") as tmp:
            hdul.writeto(tmp, overwrite=True)


def read_maps_fits(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every named image extension of a maps file.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``EXTNAME`` -> map (``[y, x]``, native byte order), in file order.
    """
    from astropy.io import fits

    out: dict[str, np.ndarray] = {}
    try:
        hdul = fits.open(os.fspath(path), memmap=False)
    except OSError as err:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist") from err
        raise ValueError(f"{path} is not a FITS file (a maps.fits written by lucijax fit): {err}") from err
    with hdul:
        for hdu in hdul[1:]:
            if not hdu.is_image or hdu.data is None:
                continue
            name = str(hdu.header.get("EXTNAME", hdu.name))
            data = np.asarray(hdu.data)
            out[name] = data.astype(data.dtype.newbyteorder("="), copy=True)
    return out


def read_map_units(path: str | os.PathLike) -> dict[str, str]:
    """``EXTNAME`` -> ``BUNIT`` of every map of a maps file."""
    from astropy.io import fits

    with fits.open(os.fspath(path)) as hdul:
        return {str(h.header.get("EXTNAME", h.name)): str(h.header.get("BUNIT", "")) for h in hdul[1:] if h.is_image}


def read_maps_header(path: str | os.PathLike) -> dict[str, Any]:
    """Cards of the primary HDU (``header_extra`` of :func:`write_maps_fits`)."""
    from astropy.io import fits

    with fits.open(os.fspath(path)) as hdul:
        return {k: v for k, v in hdul[0].header.items() if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "")}


def read_map_wcs(path: str | os.PathLike, name: str | None = None):
    """Celestial WCS of one map extension (SIP kept), or ``None`` if it has none.

    Parameters
    ----------
    path : str or os.PathLike
        Maps file.
    name : str, optional
        ``EXTNAME``; default: the first map.
    """
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    with fits.open(os.fspath(path)) as hdul:
        if name is None:
            if len(hdul) < 2:
                raise ValueError(f"{path}: no map extension")
            hdr = hdul[1].header
        else:
            if name not in hdul:
                raise KeyError(f"{path}: no map named '{name}' (maps: {[h.name for h in hdul[1:]]})")
            hdr = hdul[name].header
        if "CTYPE1" not in hdr:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(hdr)
    return w if w.has_celestial else None
