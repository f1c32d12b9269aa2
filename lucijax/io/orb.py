"""ORB HDF5 spectral cubes (reduction levels 1, 2 and 3): reader and writer.

File layouts (data indexed ``[x, y, channel]``)
-----------------------------------------------
Level 2 and 3 (ORB >= 3)
    One 3-D dataset ``data``; observation parameters as root attributes
    (lower-case ORB names plus FITS-style WCS keys with SIP). Level 2 data are
    real float32 in erg/cm^2/s/A; level 3 data are complex64 in counts (ORB
    marks the levels with root attributes ``level2`` / ``level3``). Optional
    datasets: ``calib_map`` (calibration-laser wavelength per pixel, nm,
    shape ``(nx, ny)``), ``deep_frame``, ``mask``.
Level 1 (older ORB, "quad" cubes)
    Root groups ``quad000``, ``quad001``, ... each holding a ``data`` dataset
    with one spatial tile of the cube; root attributes ``dimx``, ``dimy``,
    ``dimz``, ``quad_nb``; the FITS header is stored as a dataset ``header``
    (a table of ``(key, str(value), comment, type)`` string records written by
    ``orb.core.Tools._header_fits2hdf5``), possibly completed by root
    attributes. ORB level-1 data are real and flux calibrated.

Quadrant layout (checked against ORB's source, ``orb/utils/image.py``,
``get_quadrant_dims``, and ``orb/old.py``, ``HDFCube.__getitem__``): with
``div = sqrt(quad_nb)`` and quadrant number ``q``::

    ix, iy = q % div, q // div
    size_x, size_y = dimx // div, dimy // div
    x_min = ix * size_x ; x_max = (ix + 1) * size_x, or dimx for the last column
    y_min = iy * size_y ; y_max = (iy + 1) * size_y, or dimy for the last row
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Mapping

import h5py
import numpy as np

from lucijax.io.files import atomic_write
from lucijax.io.header import (
    _NAMES,
    COUNTS_UNIT,
    FLUX_UNIT,
    MissingHeaderError,
    SpectralCube,
    _lookup,
    _truthy,
    check_range,
    header_from_attrs,
    to_python,
)

__all__ = [
    "OrbHDF5Cube",
    "SpectralCube",
    "write_orb_cube",
    "get_quadrant_dims",
    "read_header_table",
    "make_header_table",
    "resample_spectra",
]

# ORB's translation of old FITS header keywords (orb.cube.HDFCube._read_old_header).
_OLD_HEADER_TRANSLATE = {
    "STEP": "step",
    "ORDER": "order",
    "AXISCORR": "axis_corr",
    "CALIBNM": "nm_laser",
    "OBJECT": "object_name",
    "FILTER": "filter_name",
    "APODIZ": "apodization",
    "EXPTIME": "exposure_time",
    "FLAMBDA": "flambda",
    "STEPNB": "step_nb",
    "ZPDINDEX": "zpd_index",
    "WAVTYPE": "wavetype",
    "WAVCALIB": "wavenumber_calibration",
    "INSTRUME": "instrument",
}
_OLD_HEADER_REVERSE = {v: k for k, v in _OLD_HEADER_TRANSLATE.items()}


def get_quadrant_dims(quad_number: int, dimx: int, dimy: int, div_nb: int) -> tuple[int, int, int, int]:
    """Pixel bounds of one quadrant of an ORB level-1 cube.

    Same rule as ORB's ``orb.utils.image.get_quadrant_dims``.

    Parameters
    ----------
    quad_number : int
        Quadrant index, ``0 <= quad_number < div_nb**2``.
    dimx, dimy : int
        Image size.
    div_nb : int
        Number of divisions along each axis (``quad_nb = div_nb**2``).

    Returns
    -------
    x_min, x_max, y_min, y_max : int
        Half-open bounds of the quadrant.
    """
    quad_nb = div_nb**2
    if quad_number < 0 or quad_number > quad_nb - 1:
        raise IndexError(f"quad_number {quad_number} out of bounds [0, {quad_nb - 1}]")
    index_x = quad_number % div_nb
    index_y = quad_number // div_nb
    size_x, size_y = dimx // div_nb, dimy // div_nb
    x_min = index_x * size_x
    x_max = (index_x + 1) * size_x if index_x != div_nb - 1 else dimx
    y_min = index_y * size_y
    y_max = (index_y + 1) * size_y if index_y != div_nb - 1 else dimy
    return int(x_min), int(x_max), int(y_min), int(y_max)


# ---------------------------------------------------------------------------
# Level-1 header table
# ---------------------------------------------------------------------------
def _cast_header_value(value: str, type_str: str | None) -> Any:
    """Cast a stringified header value back using ORB's type string."""
    value = value if isinstance(value, str) else str(value)
    t = (type_str or "").lower()
    if t == "comment":
        return value
    if "bool" in t:
        return value.strip() not in ("False", "0", "F", "")
    if "int" in t or "long" in t:
        try:
            return int(value)
        except ValueError:
            return int(float(value))
    if "float" in t:
        return float(value)
    if "str" in t or "unicode" in t:
        return value
    # no (usable) type string: infer
    s = value.strip()
    if s in ("True", "T"):
        return True
    if s in ("False", "F"):
        return False
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return value


def read_header_table(table: np.ndarray) -> dict[str, Any]:
    """Parse an ORB HDF5 ``header`` dataset into a ``{key: value}`` dict.

    Accepted layouts: a 2-D string array with columns
    ``(key, value, comment[, type])`` (ORB's ``_header_fits2hdf5``), a
    structured/compound array with such fields (matched by name when the
    field names say so, else by position), or a 1-D array of 80-character
    FITS card images.

    Parameters
    ----------
    table : numpy.ndarray
        The dataset content.

    Returns
    -------
    dict
        Header keys and typed values; ``COMMENT``/``HISTORY`` records are
        skipped. A later duplicate key overrides an earlier one.
    """

    def s(v):
        v = to_python(v)
        return v if isinstance(v, str) else str(v)

    out: dict[str, Any] = {}
    table = np.asarray(table)
    rows: list[tuple[str, str, str | None]] = []
    if table.dtype.names:
        names = [n.lower() for n in table.dtype.names]

        def col(cands, pos):
            for c in cands:
                if c in names:
                    return table.dtype.names[names.index(c)]
            return table.dtype.names[pos] if pos < len(names) else None

        kf = col(("key", "keyword", "name"), 0)
        vf = col(("value", "val"), 1)
        tf = col(("type", "dtype", "type_str"), 3)
        for rec in table.ravel():
            rows.append((s(rec[kf]), s(rec[vf]) if vf else "", s(rec[tf]) if tf else None))
    elif table.ndim == 2 and table.shape[1] >= 2:
        for rec in table:
            rows.append((s(rec[0]), s(rec[1]), s(rec[3]) if table.shape[1] >= 4 else None))
    elif table.ndim == 1:
        from astropy.io import fits

        for rec in table:
            card_str = s(rec)
            try:
                card = fits.Card.fromstring(card_str)
                key, value = card.keyword, card.value
            except Exception:
                continue
            if key and key not in ("COMMENT", "HISTORY", ""):
                out[key] = value
        return out
    else:
        raise ValueError(f"unrecognised ORB header table of shape {table.shape} and dtype {table.dtype}")

    for key, value, type_str in rows:
        key = key.strip()
        if not key or key.upper() in ("COMMENT", "HISTORY") or (type_str or "").lower() == "comment":
            continue
        try:
            out[key] = _cast_header_value(value, type_str)
        except (TypeError, ValueError):
            out[key] = value
    return out


def make_header_table(cards: Mapping[str, Any]) -> np.ndarray:
    """Build an ORB-style header table (``(N, 4)`` byte strings).

    Each row is ``(key, str(value), comment, type string)`` as written by
    ``orb.core.Tools._header_fits2hdf5`` under Python 3.
    """
    rows = []
    for key, value in cards.items():
        value = to_python(value)
        if isinstance(value, bool):
            t = "<class 'bool'>"
        elif isinstance(value, int):
            t = "<class 'int'>"
        elif isinstance(value, float):
            t = "<class 'float'>"
        else:
            t = "<class 'str'>"
            value = str(value)
        rows.append((str(key), repr(value) if isinstance(value, float) else str(value), "", t))
    if not rows:
        return np.zeros((0, 4), dtype="S1")
    return np.array([[c.encode("utf-8") for c in row] for row in rows])


# ---------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------
class OrbHDF5Cube(SpectralCube):
    """Reader for ORB HDF5 spectral cubes (levels 1, 2 and 3).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.hdf5`` file.

    Notes
    -----
    Flux calibration rule applied by :meth:`read_spectra`:

    * real-valued data (level 2, and ORB level 1) are already in
      erg/cm^2/s/A and are returned unchanged (``flux_unit = 'erg/cm2/s/A'``);
    * complex data (level 3) are in counts. ORB's rule (``orb/cube.py``,
      ``SpectralCube.reset_params``) decides: a cube that carries ``flambda`` is
      calibrated, whatever its ``flux_calibration`` attribute says; one without
      ``flambda`` is returned in counts (``flux_unit = 'counts'``; with a warning
      when ``flux_calibration`` claims otherwise). Calibrated,
      ``real(data) * flambda / n_channels / exposure_time`` is returned in
      erg/cm^2/s/A. ``flambda`` is a scalar or a per-channel vector; NaN
      entries give NaN channels. ``n_channels`` is ``dimz``, the length of the
      stored spectral axis, exactly as in ORB/ORCS
      (``spectrum *= flambda / cube.dimz / exposure_time``); for ORB cubes it
      equals ``step_nb``.
    * level 2.5, CFHT's version of level 3 (the ORCS documentation, "HDF5 Cubes
      formatting (levels)"): a cube that carries ``flambda2``, the calibration
      vector its values were multiplied by, holds spectra already in
      erg/cm^2/s/A. They are returned unchanged (the real part): ``flambda`` is
      not applied a second time, which older ORCS did ("subject to
      incoherencies"). The noise weights follow ``flambda2``
      (:meth:`~lucijax.io.header.CubeHeader.noise_shape`).

    If a ``mask`` dataset of shape ``(nx, ny)`` is present, spectra are
    multiplied by it, as ORB does.

    The extracted spectra in ``shared/data`` (1-D ``data`` + ``axis``) are
    read by :class:`lucijax.io.spectrum.OrbSpectrum`, not by this class.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file (expected an ORB HDF5 cube)")
        try:
            # Default chunk cache on purpose: (64, 64, N) chunks are larger than
            # it, so HDF5 reads them straight into the output buffer, which was
            # measured 3-10x faster for slab reads than a cache holding chunks.
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self._calib_map_full: np.ndarray | None = None
        try:
            self._open()
        except Exception:
            self.close()
            raise

    def __reduce__(self):
        """Pickled as its path: unpickling opens the file again (a cluster's workers
        rebuild a cube view this way, :mod:`lucijax.engine.cluster`)."""
        return (type(self), (self.path,))

    # -- opening -------------------------------------------------------------
    def _open(self) -> None:
        f = self._f
        attrs = {k: to_python(f.attrs[k]) for k in f.attrs.keys()}
        quads = sorted(k for k in f.keys() if re.fullmatch(r"quad\d+", k) and isinstance(f[k], h5py.Group))
        if "data" in f and isinstance(f["data"], h5py.Dataset) and f["data"].ndim == 3:
            self._ds = f["data"]
            self._quads = None
            nx, ny, nz = (int(v) for v in self._ds.shape)
            self._complex = np.issubdtype(self._ds.dtype, np.complexfloating)
            self.level = 3 if self._complex else 2
        elif quads:
            self.level = 1
            nx, ny, nz = self._open_level1(f, attrs, quads)
            if "header" in f and isinstance(f["header"], h5py.Dataset):
                try:
                    table = read_header_table(f["header"][()])
                except ValueError as exc:
                    warnings.warn(f"{self.path}: could not parse the 'header' dataset ({exc})")
                    table = {}
                merged = dict(table)
                for k, v in table.items():
                    if k in _OLD_HEADER_TRANSLATE:
                        merged.setdefault(_OLD_HEADER_TRANSLATE[k], v)
                merged.update(attrs)  # root attributes take precedence
                attrs = merged
        elif "data" in f and isinstance(f["data"], h5py.Dataset):
            raise ValueError(
                f"{self.path}: dataset 'data' has shape {f['data'].shape}; an ORB cube needs a 3-D "
                "[x, y, channel] dataset (1-D spectra are opened with lucijax.io.open_cube)"
            )
        else:
            raise ValueError(
                f"{self.path}: not an ORB spectral cube: expected a 3-D 'data' dataset (levels 2/3) "
                f"or 'quadNNN' groups (level 1); found {sorted(f.keys())}"
            )
        self.shape = (nx, ny, nz)
        self._attrs = attrs
        self._axis_scale_ref: float | None = None
        attrs = self._wavenumber_calibration(attrs, nx, ny)

        # flux calibration: ORB's rule (orb/cube.py, SpectralCube.reset_params) is that a
        # level-3 cube is calibrated whenever it carries 'flambda', whatever its
        # 'flux_calibration' attribute says; without 'flambda' it is in counts. A cube that
        # carries 'flambda2' is level 2.5 (CFHT's version; ORCS's documentation, "HDF5 Cubes
        # formatting (levels)"): laid out like level 3, its values already calibrated with
        # 'flambda2' and written in erg/cm^2/s/A, so no calibration is applied again.
        self._factor: np.ndarray | float | None = None
        if attrs.get("flambda2") is not None:
            if self._complex:
                self.level = 2.5
            flux_unit = FLUX_UNIT
        elif self._complex:
            if attrs.get("flambda") is not None:
                self._factor = self._calibration_factor(attrs, nz)
                self._factor32 = np.asarray(self._factor, dtype=np.float32)
                flux_unit = FLUX_UNIT
            else:
                if _truthy(attrs.get("flux_calibration")):
                    warnings.warn(f"{self.path}: 'flux_calibration' is set but there is no 'flambda': the spectra "
                                  "stay in counts (ORB's rule: a cube is calibrated when it carries 'flambda')")
                flux_unit = COUNTS_UNIT
        else:
            flux_unit = FLUX_UNIT
        self.header = header_from_attrs(attrs, nz, self.path, flux_unit=flux_unit)
        if (nx, ny) != (1, 1) and "calib_map" not in f and self.header.calib_coeff_orig is None \
                and self._external_calib_path() is None:
            warnings.warn(f"{self.path}: no 'calib_map' dataset: every pixel gets the instrumental line width "
                          f"of axis_corr = {self.header.axis_corr:.6f} (the line width varies by a few per cent over "
                          "SITELLE's field)")

        if "calib_map" not in f and self._external_calib_path() is not None:
            self._full_calib_map()  # a missing or unreadable map stops here, not mid-run

        self._mask = None
        if "mask" in f and isinstance(f["mask"], h5py.Dataset) and f["mask"].shape == (nx, ny):
            self._mask = f["mask"]

    def _open_level1(self, f: h5py.File, attrs: dict, quads: list[str]) -> tuple[int, int, int]:
        quad_nb = attrs.get("quad_nb")
        quad_nb = int(quad_nb) if quad_nb is not None else len(quads)
        if len(quads) != quad_nb:
            raise ValueError(
                f"{self.path}: corrupted level-1 cube: 'quad_nb' = {quad_nb} but {len(quads)} quad groups found"
            )
        div_nb = int(round(np.sqrt(quad_nb)))
        if div_nb * div_nb != quad_nb:
            raise ValueError(f"{self.path}: level-1 'quad_nb' = {quad_nb} is not a perfect square")
        dsets = []
        for q in range(quad_nb):
            name = f"quad{q:03d}"
            if name not in f or "data" not in f[name]:
                raise ValueError(f"{self.path}: level-1 cube lacks dataset '{name}/data'")
            dsets.append(f[name]["data"])
        shapes = [d.shape for d in dsets]
        if any(len(s) != 3 for s in shapes):
            raise ValueError(f"{self.path}: level-1 quadrant datasets must be 3-D, got shapes {shapes}")
        # image size: attributes, else the sum of the quadrant sizes
        dimx = attrs.get("dimx")
        dimy = attrs.get("dimy")
        dimz = attrs.get("dimz")
        dimx = int(dimx) if dimx is not None else sum(shapes[ix][0] for ix in range(div_nb))
        dimy = int(dimy) if dimy is not None else sum(shapes[iy * div_nb][1] for iy in range(div_nb))
        dimz = int(dimz) if dimz is not None else int(shapes[0][2])
        bounds = []
        for q in range(quad_nb):
            x0, x1, y0, y1 = get_quadrant_dims(q, dimx, dimy, div_nb)
            if shapes[q][:2] != (x1 - x0, y1 - y0) or shapes[q][2] != dimz:
                raise ValueError(
                    f"{self.path}: quadrant {q} has shape {shapes[q]}, expected "
                    f"({x1 - x0}, {y1 - y0}, {dimz}) for a {dimx}x{dimy} image in {quad_nb} quadrants"
                )
            bounds.append((x0, x1, y0, y1))
        self._quads = list(zip(bounds, dsets))
        self._ds = None
        self._complex = np.issubdtype(dsets[0].dtype, np.complexfloating)
        return dimx, dimy, dimz

    def _wavenumber_calibration(self, attrs: dict, nx: int, ny: int) -> dict:
        """ORB's rule for a cube without wavenumber calibration (``SpectralCube.reset_params``
        and ``get_axis``): a cube is calibrated when it carries ``axis_corr``; without it
        each pixel has its own axis, ``create_cm1_axis(step, order, corr = calib_map /
        nm_laser)``, and the cube's reference axis is the one of the image centre's ``corr``.
        Here each pixel's spectrum is resampled from its own axis onto the reference axis
        as it is read (band-limited interpolation: a Lanczos kernel of
        :data:`RESAMPLE_LOBES` lobes), so every fit sees one axis; the line width stays the
        pixel's own (from its ``corr``)."""
        key, _ = _lookup(attrs, _NAMES["axis_corr"])
        if key is not None:
            return attrs
        cmap = self._full_calib_map(force=True)
        if cmap is None:
            return attrs  # header_from_attrs names the missing 'axis_corr'
        knm, nm_laser = _lookup(attrs, _NAMES["nm_laser"])
        if knm is None:
            raise MissingHeaderError("nm_laser", self.path)
        centre = float(cmap[nx // 2, ny // 2]) / float(nm_laser)
        if _truthy(attrs.get("wavenumber_calibration")):
            raise ValueError(f"{self.path}: 'wavenumber_calibration' is set but 'axis_corr' is missing "
                             "(ORB refuses such a cube too)")
        warnings.warn(f"{self.path}: no 'axis_corr': the cube has no wavenumber calibration; each pixel's "
                      f"spectrum is resampled from its own axis (calib_map / nm_laser) onto the axis of the "
                      f"image centre (axis_corr = {centre:.6f}), as ORB reads such cubes")
        drop = {"axis_min", "AXIS_MIN", "axis_step", "AXIS_STEP", "CRVAL3", "CDELT3", "CRPIX3", "CD3_3"}
        attrs = {k: v for k, v in attrs.items() if k not in drop}
        attrs["axis_corr"] = centre
        self._axis_scale_ref = centre
        return attrs

    def _calibration_factor(self, attrs: Mapping[str, Any], nz: int):
        if "flambda" not in attrs or attrs["flambda"] is None:
            raise MissingHeaderError("flambda", self.path)
        if "exposure_time" not in attrs or attrs["exposure_time"] is None:
            raise MissingHeaderError("exposure_time", self.path)
        flambda = np.asarray(attrs["flambda"], dtype=np.float64)
        exposure_time = float(np.asarray(attrs["exposure_time"], dtype=np.float64))
        if flambda.ndim == 0 or flambda.size == 1:
            flambda = float(flambda.ravel()[0])
        elif flambda.ndim != 1 or flambda.size != nz:
            raise ValueError(
                f"{self.path}: 'flambda' has shape {flambda.shape}; expected a scalar or a vector of "
                f"{nz} values (one per channel)"
            )
        check_range(self.path, "exposure_time", exposure_time, exposure_time > 0, "> 0 (seconds per frame)")
        fl = np.atleast_1d(np.asarray(flambda, dtype=np.float64))
        good = np.isfinite(fl) & (fl > 0)
        if np.any(np.isfinite(fl) & (fl < 0)) or not good.any():
            bad = "negative" if np.any(fl < 0) else ("NaN or infinite" if not np.isfinite(fl).any() else "zero")
            raise ValueError(f"{self.path}: header attribute 'flambda' is out of range ({bad} values): expected "
                             "the flux calibration, > 0 in every channel")
        if not good.all():  # channels without a calibration: no data there (masked in every fit)
            flambda = np.where(good, fl, np.nan) if fl.size > 1 else np.nan
        return flambda / nz / exposure_time

    # -- reading ---------------------------------------------------------------
    def _read_raw(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        if self._ds is not None:
            return self._ds[x0:x1, y0:y1, :]
        out = np.full((x1 - x0, y1 - y0, self.n_channels), np.nan, dtype=self._quads[0][1].dtype)
        for (qx0, qx1, qy0, qy1), ds in self._quads:
            ix0, ix1 = max(x0, qx0), min(x1, qx1)
            iy0, iy1 = max(y0, qy0), min(y1, qy1)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            out[ix0 - x0 : ix1 - x0, iy0 - y0 : iy1 - y0, :] = ds[ix0 - qx0 : ix1 - qx0, iy0 - qy0 : iy1 - qy0, :]
        return out

    def read_spectra(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Read the spectra of ``[x0:x1, y0:y1]`` (see the class notes for units).

        Returns
        -------
        numpy.ndarray
            float32, shape ``(x1 - x0, y1 - y0, n_channels)``.
        """
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        raw = self._read_raw(x0, x1, y0, y1)
        if np.iscomplexobj(raw):
            raw = raw.real
        if self._factor is not None:
            out = np.multiply(raw, self._factor32, dtype=np.float32)
        else:
            out = np.asarray(raw, dtype=np.float32)
        if self._mask is not None:
            out *= np.asarray(self._mask[x0:x1, y0:y1], dtype=np.float32)[:, :, None]
        if self._axis_scale_ref is not None:  # no wavenumber calibration: onto the reference axis
            corr = self.read_calib_map(x0, x1, y0, y1) / float(self.header.nm_laser)
            out = resample_spectra(out, corr / self._axis_scale_ref, self.header.axis_min_cm1,
                                   self.header.axis_step_cm1)
        return np.ascontiguousarray(out)

    def _external_calib_path(self) -> str | None:
        """The FITS file of ``calibration_laser_map_path`` (ORB's rule, ``HDFCube.
        get_calibration_laser_map``: used when the cube has no ``calib_map`` dataset; a
        relative path that does not exist as given is taken from the cube's folder)."""
        path = self._attrs.get("calibration_laser_map_path")
        if path is None or (isinstance(path, str) and not path.strip()):
            return None
        path = os.fspath(str(path).strip())
        if not os.path.exists(path) and not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(self.path)), path)
        return path

    def _read_external_calib_map(self, path: str) -> np.ndarray:
        """The laser map of a FITS file, indexed ``[x, y]`` (FITS stores ``[y, x]``; ORB's
        ``read_fits`` transposes), from the first HDU holding data, cut to the cube's
        ``cropped_bbox`` when the cube was cropped from a larger one."""
        from astropy.io import fits

        if not os.path.exists(path):
            raise ValueError(f"{self.path}: 'calibration_laser_map_path' names {path}, which does not exist "
                             "(give the calibration laser map, or put it next to the cube)")
        try:
            with fits.open(path) as hdul:
                data = next((h.data for h in hdul if h.data is not None), None)
                if data is None:
                    raise ValueError("no HDU holds data")
                cmap = np.asarray(data, dtype=np.float64).T
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: cannot read the calibration laser map {path} ({exc})") from exc
        if cmap.ndim != 2:
            raise ValueError(f"{self.path}: the calibration laser map {path} has shape {cmap.T.shape}; "
                             "expected an image")
        bbox = self._attrs.get("cropped_bbox")
        if bbox is not None:
            xmin, xmax, ymin, ymax = (int(v) for v in np.asarray(bbox).ravel()[:4])
            cmap = cmap[xmin:xmax, ymin:ymax]
        return cmap

    def _full_calib_map(self, force: bool = False) -> np.ndarray | None:
        """The whole laser map when it must be prepared before slabs are cut from it (it
        lives in another file, or its shape differs from the image: interpolated; or
        ``force``); None when slabs are read straight from the ``calib_map`` dataset (or
        there is no map)."""
        if self._calib_map_full is not None:
            return self._calib_map_full
        f = self._f
        if "calib_map" in f and isinstance(f["calib_map"], h5py.Dataset):
            ds = f["calib_map"]
            if ds.shape == (self.nx, self.ny) and not force:
                return None  # read slabs directly
            cmap, what = np.asarray(ds[()], dtype=np.float64), "'calib_map'"
        else:
            path = self._external_calib_path()
            if path is None:
                return None
            cmap, what = self._read_external_calib_map(path), f"the calibration laser map {path}"
        if cmap.ndim != 2:
            raise ValueError(f"{self.path}: {what} has shape {cmap.shape}, expected ({self.nx}, {self.ny})")
        if cmap.shape != (self.nx, self.ny):
            warnings.warn(
                f"{self.path}: {what} has shape {cmap.shape}, not the image's ({self.nx}, {self.ny}); "
                "it is interpolated (bicubic spline, as ORB does)"
            )
            from scipy.interpolate import RectBivariateSpline

            xi = np.linspace(0, cmap.shape[0], self.nx, endpoint=False)
            yi = np.linspace(0, cmap.shape[1], self.ny, endpoint=False)
            spl = RectBivariateSpline(np.arange(cmap.shape[0]), np.arange(cmap.shape[1]), cmap, kx=3, ky=3)
            cmap = spl(xi, yi)
        self._calib_map_full = cmap
        return cmap

    def read_calib_map(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray | None:
        """Calibration-laser wavelength (nm) of ``[x0:x1, y0:y1]``: from the ``calib_map``
        dataset, else from the FITS file ``calibration_laser_map_path`` names (ORB's rule);
        ``None`` when the cube has neither."""
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        full = self._full_calib_map()
        if full is not None:
            return np.array(full[x0:x1, y0:y1], dtype=np.float64)
        if "calib_map" not in self._f:
            return None
        return np.asarray(self._f["calib_map"][x0:x1, y0:y1], dtype=np.float64)

    def read_deep_frame(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray | None:
        """Deep frame of ``[x0:x1, y0:y1]`` (float64) or ``None`` when absent."""
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        f = self._f
        if "deep_frame" not in f or f["deep_frame"].shape != (self.nx, self.ny):
            return None
        return np.asarray(f["deep_frame"][x0:x1, y0:y1], dtype=np.float64)

    def close(self) -> None:
        """Close the HDF5 file (idempotent)."""
        f = getattr(self, "_f", None)
        if f is not None:
            try:
                f.close()
            finally:
                self._f = None


#: Lobes of the Lanczos kernel that resamples the spectra of a cube without wavenumber
#: calibration (2 x lobes channels per output channel).
RESAMPLE_LOBES = 16


def resample_spectra(spectra: np.ndarray, scale, axis_min_cm1: float, axis_step_cm1: float,
                     lobes: int = RESAMPLE_LOBES) -> np.ndarray:
    """Spectra sampled on axes ``scale`` times the reference axis, resampled onto it.

    ORB's axis of a pixel is linear in its calibration coefficient ``corr``
    (:func:`lucijax.physics.instrument.spectral_axis_cm1`), so the axis of a pixel with
    ``scale = corr / corr_ref`` is ``scale * axis_ref``: output channel ``k`` (wavenumber
    ``axis_ref[k]``) lies at input channel ``(axis_ref[k] / scale - axis_ref[0]) / step``.
    An FTS spectrum is band limited in channel space (its interferogram ends at the longest
    path difference), so it is interpolated with a normalised Lanczos kernel. Output
    channels that fall outside the input axis, or whose kernel touches a NaN, are NaN.

    Parameters
    ----------
    spectra : ndarray, (..., n_channels)
    scale : array_like, broadcastable to ``spectra.shape[:-1]``
    axis_min_cm1, axis_step_cm1 : float
        The reference axis.
    """
    y = np.asarray(spectra)
    shape = y.shape
    n = shape[-1]
    y2 = y.reshape(-1, n).astype(np.float64)
    f = np.broadcast_to(np.asarray(scale, np.float64), shape[:-1]).reshape(-1)
    axis = axis_min_cm1 + axis_step_cm1 * np.arange(n)
    taps = np.arange(-lobes + 1, lobes + 1)  # 2 * lobes taps around floor(position)
    out = np.empty_like(y2)
    chunk = max(1, 2_000_000 // (n * taps.size))
    for i in range(0, y2.shape[0], chunk):
        pos = (axis[None, :] / f[i:i + chunk, None] - axis_min_cm1) / axis_step_cm1  # (b, n)
        base = np.floor(pos)
        j = base[..., None] + taps  # (b, n, taps)
        x = pos[..., None] - j
        w = np.sinc(x) * np.sinc(x / lobes)
        w /= w.sum(axis=-1, keepdims=True)
        inside = (j >= 0) & (j <= n - 1)
        jj = np.clip(j, 0, n - 1).astype(np.intp)
        rows = np.arange(pos.shape[0])[:, None, None]
        vals = np.where(inside, y2[i:i + chunk][rows, jj], 0.0)
        res = np.sum(w * vals, axis=-1)
        res[(pos < 0) | (pos > n - 1)] = np.nan
        out[i:i + chunk] = res
    return out.reshape(shape).astype(y.dtype if np.issubdtype(y.dtype, np.floating) else np.float64)


# ---------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------
def _attr_value(value: Any) -> Any:
    """Convert a Python value to something h5py stores as an attribute."""
    if isinstance(value, (str, bytes, bool, int, float, np.generic)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return arr.astype("S")
    return arr


def _wcs_cards(wcs) -> dict[str, Any]:
    if wcs is None:
        return {}
    if wcs.naxis > 2:
        wcs = wcs.celestial
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdr = wcs.to_header(relax=True)
    cards = {}
    for card in hdr.cards:
        if card.keyword in ("", "COMMENT", "HISTORY"):
            continue
        cards[card.keyword] = card.value
    if wcs.pixel_shape is not None:
        cards.setdefault("NAXIS1", int(wcs.pixel_shape[0]))
        cards.setdefault("NAXIS2", int(wcs.pixel_shape[1]))
    return cards


def write_orb_cube(
    path: str | os.PathLike,
    data_xyz: np.ndarray,
    attrs: Mapping[str, Any],
    *,
    level: int = 2,
    calib_map: np.ndarray | None = None,
    deep_frame: np.ndarray | None = None,
    wcs=None,
    chunk_xy: tuple[int, int] = (64, 64),
    quad_nb: int = 9,
) -> None:
    """Write an ORB-format HDF5 spectral cube (levels 1, 2 or 3).

    Parameters
    ----------
    path : str or os.PathLike
        Output file; replaced atomically if it exists.
    data_xyz : numpy.ndarray
        Cube indexed ``[x, y, channel]``. Level 1 and 2: flux density in
        erg/cm^2/s/A (stored float32). Level 3: counts (stored complex64, real
        part = counts, imaginary part 0 unless complex input is given).
    attrs : Mapping
        Lower-case ORB parameters (``step``, ``order``, ``step_nb``,
        ``zpd_index``, ``nm_laser``, ``axis_corr``, ``axis_min``,
        ``axis_step``, ``filter_name``, ``apodization``, ``flambda``,
        ``exposure_time``, ``flux_calibration``, ...). ``None`` values are
        skipped. Level 2/3: written as root attributes. Level 1: scalar values
        go to the ORB ``header`` table under ORB's old FITS names
        (``STEP``, ``STEPNB``, ``ZPDINDEX``, ``CALIBNM``, ``AXISCORR``, ...;
        ``axis_min``/``axis_step`` as ``CRVAL3``/``CDELT3`` with
        ``CRPIX3 = 1``), arrays (e.g. a per-channel ``flambda``) go to root
        attributes.
    level : {1, 2, 3}
        ORB reduction level.
    calib_map : numpy.ndarray, optional
        Calibration-laser wavelength per pixel (nm), shape ``(nx, ny)``.
    deep_frame : numpy.ndarray, optional
        Deep frame, shape ``(nx, ny)``.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS; its ``to_header(relax=True)`` cards (SIP included) are
        written with the other attributes.
    chunk_xy : tuple of int
        HDF5 chunk size along x and y (the chunk spans all channels) so that
        pixel-slab reads touch few chunks. Levels 2 and 3.
    quad_nb : int
        Number of quadrants of a level-1 cube (a perfect square).
    """
    path = os.fspath(path)
    data = np.asarray(data_xyz)
    if data.ndim != 3:
        raise ValueError(f"data_xyz must be 3-D [x, y, channel], got shape {data.shape}")
    nx, ny, nz = data.shape
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
    if level in (1, 2):
        if np.iscomplexobj(data):
            raise ValueError(f"level {level} cubes are real; got complex data (use level=3 for counts)")
        data = data.astype(np.float32, copy=False)
    else:
        data = data.astype(np.complex64, copy=False)
    for name, arr in (("calib_map", calib_map), ("deep_frame", deep_frame)):
        if arr is not None and np.shape(arr) != (nx, ny):
            raise ValueError(f"{name} must have shape ({nx}, {ny}), got {np.shape(arr)}")

    all_attrs: dict[str, Any] = {k: v for k, v in attrs.items() if v is not None}
    all_attrs.update({k: v for k, v in _wcs_cards(wcs).items() if k not in all_attrs})

    with atomic_write(path, ".hdf5") as tmp:
        with h5py.File(tmp, "w") as f:
            if level in (2, 3):
                cx = max(1, min(int(chunk_xy[0]), nx))
                cy = max(1, min(int(chunk_xy[1]), ny))
                f.create_dataset("data", data=data, chunks=(cx, cy, nz))
                for k, v in all_attrs.items():
                    f.attrs[k] = _attr_value(v)
                f.attrs["level2" if level == 2 else "level3"] = True
            else:
                _write_level1(f, data, all_attrs, quad_nb)
            if calib_map is not None:
                f.create_dataset("calib_map", data=np.asarray(calib_map, dtype=np.float64))
            if deep_frame is not None:
                f.create_dataset("deep_frame", data=np.asarray(deep_frame, dtype=np.float64))


def _write_level1(f: h5py.File, data: np.ndarray, attrs: Mapping[str, Any], quad_nb: int) -> None:
    nx, ny, nz = data.shape
    div_nb = int(round(np.sqrt(quad_nb)))
    if div_nb < 1 or div_nb * div_nb != quad_nb:
        raise ValueError(f"quad_nb must be a perfect square, got {quad_nb}")
    if nx < div_nb or ny < div_nb:
        raise ValueError(f"image {nx}x{ny} too small for {quad_nb} quadrants")
    for q in range(quad_nb):
        x0, x1, y0, y1 = get_quadrant_dims(q, nx, ny, div_nb)
        f.create_dataset(f"quad{q:03d}/data", data=data[x0:x1, y0:y1, :])
    cards: dict[str, Any] = {}
    root: dict[str, Any] = {}
    for k, v in attrs.items():
        v = to_python(v)
        if isinstance(v, np.ndarray) or isinstance(v, (list, tuple)):
            root[k] = v
            continue
        if k == "axis_min":
            cards["CRVAL3"] = float(v)
            cards.setdefault("CRPIX3", 1.0)
            cards.setdefault("CUNIT3", "cm-1")
            continue
        if k == "axis_step":
            cards["CDELT3"] = float(v)
            continue
        cards[_OLD_HEADER_REVERSE.get(k, k)] = v
    f.create_dataset("header", data=make_header_table(cards))
    for k, v in root.items():
        f.attrs[k] = _attr_value(v)
    f.attrs["dimx"] = nx
    f.attrs["dimy"] = ny
    f.attrs["dimz"] = nz
    f.attrs["quad_nb"] = quad_nb
