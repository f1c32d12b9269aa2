"""Cube header model shared by every reader, and the reader base class.

Every reader in :mod:`lucijax.io` (ORB HDF5 cubes of levels 1, 2 and 3, ORB
extracted spectra, FITS cubes) turns the metadata of its file into one
:class:`CubeHeader` and exposes its data through the :class:`SpectralCube`
interface, so that the fitting code never needs to know where the data came
from.

Metadata conventions
--------------------
ORB writes its observation parameters as lower-case HDF5 attributes (``step``,
``order``, ``step_nb``, ...) next to FITS-style upper-case keys (``CRVAL3``,
``CTYPE1``, the SIP coefficients, ...). Older ORB files and FITS cubes carry
upper-case FITS keywords only (``STEP``, ``STEPNB``, ``ZPDINDEX``, ``AXISCORR``,
``CALIBNM``, ...). :func:`header_from_attrs` always looks the lower-case ORB
name up first and falls back to the upper-case FITS spellings.

The spectral axis is regular in wavenumber (cm^-1)::

    axis_cm1[k] = axis_min_cm1 + k * axis_step_cm1,   k = 0 .. n_channels - 1

ORB computes it (``orb.utils.spectrum.create_cm1_axis``) as::

    axis_min_cm1  = 1e7 * order / (2 * step_nm) * corr
    axis_step_cm1 = 1e7 / (2 * step_nm * n_channels) * corr

with ``corr`` the calibration coefficient (``axis_corr``). That formula is the
last-resort fallback used when neither ``axis_min``/``axis_step`` nor
``CRVAL3``/``CDELT3`` are present.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from astropy.wcs import WCS

__all__ = [
    "MissingHeaderError",
    "CubeHeader",
    "SpectralCube",
    "header_from_attrs",
    "celestial_wcs_from_mapping",
    "prefetch_wcs",
    "check_spectral_unit",
    "normalise_filter_name",
    "to_python",
    "FLUX_UNIT",
    "COUNTS_UNIT",
]

#: Unit string of flux-calibrated spectra (flux density per Angstrom).
FLUX_UNIT = "erg/cm2/s/A"
#: Unit string of uncalibrated spectra.
COUNTS_UNIT = "counts"

_KNOWN_FILTERS = ("SN1", "SN2", "SN3", "C1", "C2", "C3", "C4")
_FILTER_RE = re.compile(r"(?:^|[^A-Za-z0-9])(SN[1-3]|C[1-4])(?:$|[^A-Za-z0-9])", re.IGNORECASE)

# Look-up names, ORB lower-case first then FITS spellings.
_NAMES: dict[str, tuple[str, ...]] = {
    "step": ("step", "STEP"),
    "order": ("order", "ORDER"),
    "step_nb": ("step_nb", "STEP_NB", "STEPNB"),
    "zpd_index": ("zpd_index", "ZPD_INDEX", "ZPDINDEX"),
    "nm_laser": ("nm_laser", "NM_LASER", "CALIBNM", "LASER"),
    "axis_corr": ("axis_corr", "AXIS_CORR", "AXISCORR", "calib_coeff", "CALIB_COEFF", "CALIBCOE"),
    "axis_min": ("axis_min", "AXIS_MIN"),
    "axis_step": ("axis_step", "AXIS_STEP"),
    "filter_name": ("filter_name", "FILTER", "FILTER_NAME", "FILTERNAME"),
    "apodization": ("apodization", "APODIZ", "APODIZATION"),
    "calib_coeff_orig": ("calib_coeff_orig", "CALIB_COEFF_ORIG"),
}

_WCS_KEY_RE = re.compile(
    r"^(?:"
    r"(?:CTYPE|CRVAL|CRPIX|CDELT|CUNIT|CROTA|CNAME|CRDER|CSYER)[12]"
    r"|(?:PC|CD)[12]_[12]"
    r"|PV[12]_\d+"
    r"|(?:A|B|AP|BP)_(?:ORDER|\d+_\d+)"
    r"|A_DMAX|B_DMAX"
    r"|RADESYS|RADECSYS|EQUINOX|EPOCH|LONPOLE|LATPOLE"
    r"|MJD-OBS|DATE-OBS|MJDREF|WCSNAME"
    r"|NAXIS[12]"
    r")$"
)

_WAVENUMBER_UNITS = {"cm-1", "cm^-1", "cm**-1", "1/cm", "cm(-1)", "kayser", "/cm"}


class MissingHeaderError(KeyError):
    """A required header attribute is absent from a cube or spectrum file.

    Parameters
    ----------
    name : str
        Name of the missing attribute (the ORB lower-case name).
    source : str
        The file (or other description of the header origin).

    Notes
    -----
    ``str(err)`` shows the message plainly
    (``"<source>: required header attribute '<name>' is missing"``) instead of
    the quoted ``repr`` that :class:`KeyError` uses by default.
    """

    def __init__(self, name: str, source: str):
        self.name = str(name)
        self.source = str(source)
        self.message = f"{self.source}: required header attribute '{self.name}' is missing"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep pickling (multiprocessing) working
        return (type(self), (self.name, self.source))


def to_python(value: Any) -> Any:
    """Convert an HDF5/FITS attribute value to a plain Python or numpy value.

    Parameters
    ----------
    value : object
        Raw value as returned by ``h5py`` (numpy scalars, ``bytes``,
        ``np.longdouble``, arrays, ...) or by ``astropy.io.fits``.

    Returns
    -------
    object
        ``bytes`` -> ``str``; numpy scalars -> ``bool``/``int``/``float``/
        ``complex``/``str``; ``np.longdouble`` -> ``float``; 0-d arrays -> the
        converted scalar; string arrays -> arrays of ``str``; long-double arrays
        -> float64 arrays; other arrays are returned unchanged.
    """
    if value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (bool, int, float, complex, str)) and not isinstance(value, np.generic):
        return value
    if isinstance(value, np.generic):
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            return float(value)
        if isinstance(value, np.complexfloating):
            return complex(value)
        if isinstance(value, np.str_):
            return str(value)
        return value.item()
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return to_python(value[()])
        if value.dtype.kind == "S":
            return np.char.decode(value, "utf-8", errors="replace")
        if value.dtype.kind == "O":
            return np.array([to_python(v) for v in value.ravel()], dtype=object).reshape(value.shape)
        if value.dtype.kind == "f" and value.dtype.itemsize > 8:
            return value.astype(np.float64)
        if value.dtype.kind == "c" and value.dtype.itemsize > 16:
            return value.astype(np.complex128)
        return value
    try:  # h5py.Empty and other exotic objects
        import h5py

        if isinstance(value, h5py.Empty):
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


def normalise_filter_name(value: Any) -> str | None:
    """Return the short SITELLE filter name (``'SN1'``..``'C4'``) or ``None``.

    Parameters
    ----------
    value : object
        Raw ``filter_name`` attribute: a short name (``'SN3'``), a file name or a
        full path such as ``'/home/x/orb/data/filter_SN3.hdf5'``.

    Returns
    -------
    str or None
        The upper-case short name, or ``None`` when the value is absent or not
        recognised.
    """
    value = to_python(value)
    if value is None or not isinstance(value, str):
        return None
    s = value.strip()
    if not s:
        return None
    base = os.path.basename(s.replace("\\", "/"))
    for candidate in (base, s):
        m = _FILTER_RE.search(candidate)
        if m:
            name = m.group(1).upper()
            if name in _KNOWN_FILTERS:
                return name
    return None


def _truthy(value: Any) -> bool:
    """Interpret an ORB boolean-ish attribute (bool, 0/1, 'True'/'False')."""
    value = to_python(value)
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "t", "1", "yes", "y")
    if isinstance(value, np.ndarray):
        return bool(value.size == 1 and value.ravel()[0])
    try:
        return bool(value)
    except Exception:  # pragma: no cover
        return False


def _lookup(attrs: Mapping[str, Any], names: Iterable[str]) -> tuple[str | None, Any]:
    for n in names:
        if n in attrs:
            v = to_python(attrs[n])
            if v is None:
                continue
            if isinstance(v, str) and v.strip() == "":
                continue
            return n, v
    return None, None


def _as_float(value: Any, key: str, source: str) -> float:
    try:
        if isinstance(value, np.ndarray):
            if value.size != 1:
                raise ValueError("not a scalar")
            value = value.ravel()[0]
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: header attribute '{key}' = {value!r} is not a number") from exc
    return out


def _as_int(value: Any, key: str, source: str) -> int:
    f = _as_float(value, key, source)
    if not np.isfinite(f) or abs(f) > 2**31 or abs(f - round(f)) > 1e-6:
        raise ValueError(f"{source}: header attribute '{key}' = {value!r} is not an integer")
    return int(round(f))


def check_range(source: str, key: str, value, ok, what: str) -> None:
    """A header value that gives wrong results silently (a NaN step, a negative
    zpd_index) stops the run with one line that names it."""
    if not (np.isfinite(float(value)) and ok):
        raise ValueError(f"{source}: header attribute '{key}' = {value!r} is out of range: expected {what}")


def _required(attrs, field_name, source, conv):
    key, value = _lookup(attrs, _NAMES[field_name])
    if key is None:
        raise MissingHeaderError(field_name, source)
    return conv(value, key, source)


def _spectral_axis_from_fits_keys(attrs: Mapping[str, Any], n_channels: int, source: str):
    """``(axis_min, axis_step)`` from CRVAL3/CDELT3/CRPIX3, or ``None``.

    Raises
    ------
    ValueError
        When the third axis is declared in wavelength units.
    """
    if "CRVAL3" not in attrs:
        return None
    cunit = to_python(attrs.get("CUNIT3"))
    ctype = to_python(attrs.get("CTYPE3"))
    check_spectral_unit(cunit, ctype, source, wavetype=to_python(attrs.get("wavetype", attrs.get("WAVTYPE"))))
    crval = _as_float(to_python(attrs["CRVAL3"]), "CRVAL3", source)
    crpix = _as_float(to_python(attrs.get("CRPIX3", 1.0)), "CRPIX3", source)
    if "CDELT3" in attrs:
        cdelt = _as_float(to_python(attrs["CDELT3"]), "CDELT3", source)
        if "PC3_3" in attrs:
            cdelt *= _as_float(to_python(attrs["PC3_3"]), "PC3_3", source)
    elif "CD3_3" in attrs:
        cdelt = _as_float(to_python(attrs["CD3_3"]), "CD3_3", source)
    else:
        return None
    # FITS pixel 1 (CRPIX3 = 1 convention) is channel 0.
    return crval + (1.0 - crpix) * cdelt, cdelt


def check_spectral_unit(cunit: Any, ctype: Any, source: str, wavetype: Any = None) -> None:
    """Raise a clear error unless the spectral axis is in wavenumber (cm^-1).

    Parameters
    ----------
    cunit : str or None
        ``CUNIT3`` value.
    ctype : str or None
        ``CTYPE3`` value. ORB writes ``'WAVE-SIP'`` with ``CUNIT3 = 'cm-1'``,
        so ``CUNIT3`` decides when present.
    source : str
        File name for the error message.
    wavetype : str or None
        ORB ``wavetype``/``WAVTYPE`` value (``'WAVENUMBER'`` or ``'WAVELENGTH'``).

    Raises
    ------
    ValueError
        When the axis is in wavelength (or any non-wavenumber) units.
    """
    msg = (
        f"{source}: the spectral axis is in {{}}; lucijax requires wavenumber cubes "
        "(spectral axis in cm-1, as produced by ORB with wavenumber=True)"
    )
    if isinstance(cunit, str) and cunit.strip():
        u = cunit.strip()
        if u.lower().replace(" ", "") in _WAVENUMBER_UNITS:
            return
        raise ValueError(msg.format(f"unit CUNIT3 = '{u}'"))
    if isinstance(wavetype, str) and wavetype.strip().upper().startswith("WAVENUMBER"):
        return
    if isinstance(wavetype, str) and wavetype.strip().upper().startswith("WAVELENGTH"):
        raise ValueError(msg.format("wavelength (wavetype = 'WAVELENGTH')"))
    if isinstance(ctype, str) and ctype.strip():
        t = ctype.strip().upper()
        if t.startswith("WAVN") or t.startswith("WAVENUM"):
            return
        if t.startswith(("WAVE", "AWAV", "FREQ", "VELO", "VRAD", "VOPT", "ZOPT", "ENER")):
            raise ValueError(msg.format(f"CTYPE3 = '{ctype.strip()}' without CUNIT3 (FITS default: metres)"))


def celestial_wcs_from_mapping(mapping: Mapping[str, Any], source: str = "<header>") -> "WCS | None":
    """Build the 2-D celestial WCS (with SIP distortion) from FITS-style keys.

    Only keys describing image axes 1 and 2 are used (``CTYPE1/2``,
    ``CRVAL1/2``, ``CRPIX1/2``, ``CDELT1/2``, ``CUNITn``, ``PCi_j``/``CDi_j``,
    SIP ``A_/B_/AP_/BP_`` coefficients and orders, ``RADESYS``, ``EQUINOX``,
    ``LONPOLE``/``LATPOLE``, ``NAXIS1/2``, ...), so the spectral third axis of a
    cube header is ignored.

    Parameters
    ----------
    mapping : Mapping
        HDF5 attributes or FITS header cards (key -> value).
    source : str
        Description used in warnings.

    Returns
    -------
    astropy.wcs.WCS or None
        ``None`` when there is no celestial WCS (no ``CTYPE1``/``CTYPE2`` or
        non-celestial axis types).
    """
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    if "CTYPE1" not in mapping or "CTYPE2" not in mapping:
        return None
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    items: dict[str, Any] = {}
    for key in mapping:
        k = str(key)
        if not _WCS_KEY_RE.match(k):
            continue
        v = to_python(mapping[key])
        if isinstance(v, np.ndarray):
            continue
        if isinstance(v, (bool, int, float, str)):
            items[k] = v
    has_matrix = any(re.match(r"^(?:PC|CD)[12]_[12]$", k) for k in items)
    for k, v in items.items():
        if has_matrix and k.startswith("CROTA"):
            continue  # CROTA is redundant with (and conflicts with) PC/CD
        if k in ("NAXIS1", "NAXIS2"):
            continue
        hdr[k] = v
    hdr["WCSAXES"] = 2
    for k in ("NAXIS1", "NAXIS2"):
        if k in items:
            try:
                hdr[k] = int(items[k])
            except (TypeError, ValueError):
                pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(hdr, naxis=2)
    except Exception as exc:  # malformed WCS: don't make the data unreadable
        warnings.warn(f"{source}: could not build the celestial WCS ({exc}); maps will have no WCS")
        return None
    if not wcs.has_celestial:
        return None
    return wcs


class Later:
    """A value computed on first use, once: ``Later(fn, *args)`` calls ``fn(*args)`` the first
    time :meth:`value` is asked for (under a lock: a second thread asking meanwhile waits
    for the same result)."""

    def __init__(self, fn, *args):
        self._call = (fn, args)
        self._lock = threading.Lock()
        self._value = None

    def value(self):
        with self._lock:
            if self._call is not None:
                fn, args = self._call
                self._value = fn(*args)  # raised: the next caller tries again
                self._call = None
            return self._value

    def __reduce__(self):  # pickled (a cluster's task) as the value itself
        return _same, (self.value(),)

    def start(self) -> None:
        """Compute the value now on a background thread (a daemon: it holds no resource);
        a failure is left for the first use to raise."""

        def run():
            try:
                self.value()
            except Exception:
                pass

        threading.Thread(target=run, name="lucijax-later", daemon=True).start()


def _same(value):
    return value


def prefetch_wcs(header: "CubeHeader") -> None:
    """Build ``header.wcs`` on a background thread when it is not built yet: its imports
    (``astropy.wcs``, ``astropy.io.fits``: 0.26 s measured) then run while the fit loads its
    executable, which releases the GIL (``lucijax fit``'s start-up)."""
    pending = header.__dict__.get("wcs")
    if isinstance(pending, Later):
        pending.start()


class _Deferred:
    """Descriptor of a dataclass field whose value may be given as a :class:`Later`: reading
    the field computes it (the celestial WCS: importing ``astropy.wcs`` and building it
    takes ~0.26 s that a fit can spend on something else first; see :func:`prefetch_wcs`)."""

    def __set_name__(self, owner, name):
        self._slot = name  # the instance's __dict__ under the field's own name (copies by vars() keep it)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        v = obj.__dict__.get(self._slot)
        if isinstance(v, Later):
            v = v.value()
            obj.__dict__[self._slot] = v
        return v

    def __set__(self, obj, value):
        obj.__dict__[self._slot] = None if value is self else value


@dataclass(frozen=True)
class CubeHeader:
    """Observation parameters of a spectral cube (or extracted spectrum).

    Attributes
    ----------
    step_nm : float
        Interferometer step (optical path difference step) in nm.
    order : int
        Folding order.
    step_nb : int
        Number of interferogram steps N used by the instrument-line-shape
        formulas.
    zpd_index : int
        Index of the zero path difference frame in the interferogram.
    nm_laser : float
        Calibration laser wavelength (nm) of the reference configuration.
    axis_corr : float
        Wavenumber calibration coefficient of the stored spectral axis.
    axis_min_cm1 : float
        Wavenumber (cm^-1) of channel 0.
    axis_step_cm1 : float
        Channel width (cm^-1).
    n_channels : int
        Number of channels actually stored.
    filter_name : str or None
        Short filter name (``'SN1'``, ``'SN2'``, ``'SN3'``, ``'C1'``..``'C4'``).
    apodization : float
        Apodization coefficient (1.0 = none).
    flux_unit : str
        ``'erg/cm2/s/A'`` for flux-calibrated data, ``'counts'`` otherwise.
        This is the unit of what :meth:`SpectralCube.read_spectra` returns.
    calib_coeff_orig : float or None
        ORB ``calib_coeff_orig`` (extracted spectra), else ``None``.
    wcs : astropy.wcs.WCS or None
        2-D celestial WCS of the image plane (SIP distortion kept), pixel
        ``(x, y)`` in the ORB ``[x, y, channel]`` indexing convention. Given as a
        :class:`Later`, it is built on first use.
    attrs : dict
        All raw attributes, converted to plain Python / numpy types.
    """

    step_nm: float
    order: int
    step_nb: int
    zpd_index: int
    nm_laser: float
    axis_corr: float
    axis_min_cm1: float
    axis_step_cm1: float
    n_channels: int
    filter_name: str | None
    apodization: float
    flux_unit: str
    calib_coeff_orig: float | None
    wcs: Any = field(default=_Deferred(), compare=False, repr=False)
    attrs: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def filter_label(self) -> Any:
        """The filter attribute as the file writes it (``filter_name``, ``FILTER``, ...; None
        when absent), recognised as a SITELLE filter or not."""
        return _lookup(self.attrs or {}, _NAMES["filter_name"])[1]

    @property
    def axis_cm1(self) -> np.ndarray:
        """Spectral axis in cm^-1 (float64), ``axis_min + k * axis_step``."""
        return self.axis_min_cm1 + np.arange(self.n_channels, dtype=np.float64) * self.axis_step_cm1

    @property
    def is_flux_calibrated(self) -> bool:
        """True when the spectra are in erg/cm^2/s/A."""
        return self.flux_unit == FLUX_UNIT

    def noise_shape(self) -> np.ndarray | None:
        """Relative noise std of each channel (median 1), or None where it is flat.

        An FTS spreads the photon noise of the interferogram evenly over the channels, so
        the noise of spectra in counts is flat. Flux calibration multiplies channel k by
        ``flambda[k]``, which follows the inverse of the filter transmission: the noise of
        flux-calibrated spectra follows ``flambda``. Returns ``flambda / median(flambda)``
        (NaN where ``flambda`` is not finite or positive) for flux-calibrated data with a
        per-channel ``flambda``; None for counts, or a scalar or absent ``flambda``.
        """
        if not self.is_flux_calibrated:
            return None
        # level 2.5: the values were calibrated with 'flambda2' (ORCS's documentation)
        vector = self.attrs.get("flambda2")
        if vector is None:
            vector = self.attrs.get("flambda", np.nan)
        flambda = np.asarray(vector, np.float64).ravel()
        if flambda.size != self.n_channels:
            return None
        good = np.isfinite(flambda) & (flambda > 0)
        if good.sum() < 2 or np.ptp(flambda[good]) <= 1e-6 * np.max(flambda[good]):
            return None
        return np.where(good, flambda / np.median(flambda[good]), np.nan)

    def get(self, key: str, default: Any = None) -> Any:
        """Return a raw attribute (``attrs[key]``) or ``default``."""
        return self.attrs.get(key, default)


def header_from_attrs(
    attrs: Mapping[str, Any],
    n_channels: int,
    source: str,
    *,
    flux_unit: str | None = None,
) -> CubeHeader:
    """Build a :class:`CubeHeader` from HDF5 attributes or FITS header cards.

    Parameters
    ----------
    attrs : Mapping
        Raw attributes (``h5py`` ``AttributeManager``, ``dict`` or
        ``astropy.io.fits.Header``).
    n_channels : int
        Length of the spectral axis actually stored in the file.
    source : str
        File name (used in error messages).
    flux_unit : str, optional
        Unit of the spectra as returned by the reader. When omitted it is
        ``'erg/cm2/s/A'`` if ``BUNIT == 'FLUX'`` (or an ``erg`` unit) or
        ``flux_calibration`` is set, ``'counts'`` otherwise.

    Returns
    -------
    CubeHeader

    Raises
    ------
    MissingHeaderError
        When ``step``, ``order``, ``step_nb``, ``zpd_index``, ``nm_laser`` or
        ``axis_corr`` (fallback ``calib_coeff``) is absent.
    ValueError
        When a value has the wrong type or the spectral axis is not in cm^-1.

    Notes
    -----
    The spectral axis comes from ``axis_min``/``axis_step`` when present,
    else from ``CRVAL3``/``CDELT3``/``CRPIX3`` (FITS convention, pixel 1 =
    channel 0), else from ORB's formula
    ``axis_min = 1e7 * order / (2 step) * axis_corr``,
    ``axis_step = 1e7 / (2 step n_channels) * axis_corr``.
    """
    raw = {str(k): to_python(attrs[k]) for k in attrs.keys()}
    n_channels = int(n_channels)
    if n_channels <= 0:
        raise ValueError(f"{source}: the spectral axis is empty (n_channels = {n_channels})")

    step_nm = _required(raw, "step", source, _as_float)
    order = _required(raw, "order", source, _as_int)
    step_nb = _required(raw, "step_nb", source, _as_int)
    zpd_index = _required(raw, "zpd_index", source, _as_int)
    nm_laser = _required(raw, "nm_laser", source, _as_float)
    axis_corr = _required(raw, "axis_corr", source, _as_float)
    check_range(source, "step", step_nm, step_nm > 0, "> 0 (the OPD step in nm)")
    check_range(source, "step_nb", step_nb, step_nb > 0, "> 0")
    check_range(source, "order", order, order >= 0, ">= 0")
    check_range(source, "zpd_index", zpd_index, 0 <= zpd_index < step_nb,
                 f"between 0 and step_nb - 1 = {step_nb - 1} (the frame of zero path difference)")
    check_range(source, "nm_laser", nm_laser, 100.0 < nm_laser < 2000.0,
                 "the calibration laser wavelength in nm (SITELLE: 543.5)")
    check_range(source, "axis_corr", axis_corr, 0.5 < axis_corr < 2.0, "near 1 (the wavenumber correction)")

    kmin, vmin = _lookup(raw, _NAMES["axis_min"])
    kstep, vstep = _lookup(raw, _NAMES["axis_step"])
    if kmin is not None and kstep is not None:
        axis_min = _as_float(vmin, kmin, source)
        axis_step = _as_float(vstep, kstep, source)
    else:
        from_fits = _spectral_axis_from_fits_keys(raw, n_channels, source)
        if from_fits is not None:
            axis_min, axis_step = from_fits
        else:
            axis_min = 1e7 * order / (2.0 * step_nm) * axis_corr
            axis_step = 1e7 / (2.0 * step_nm * n_channels) * axis_corr
    if not (np.isfinite(axis_min) and np.isfinite(axis_step)) or axis_step == 0:
        raise ValueError(f"{source}: invalid spectral axis (axis_min={axis_min}, axis_step={axis_step})")

    _, fname = _lookup(raw, _NAMES["filter_name"])
    filter_name = normalise_filter_name(fname)

    kapo, vapo = _lookup(raw, _NAMES["apodization"])
    apodization = 1.0
    if kapo is not None and not (isinstance(vapo, str) and vapo.strip().lower() == "none"):
        apodization = _as_float(vapo, kapo, source)
        check_range(source, kapo, apodization, 1.0 <= apodization < 10.0,
                     ">= 1 (ORB's apodization coefficient: 1 for none)")

    kcc, vcc = _lookup(raw, _NAMES["calib_coeff_orig"])
    calib_coeff_orig = _as_float(vcc, kcc, source) if kcc is not None else None

    if flux_unit is None:
        bunit = raw.get("BUNIT")
        calibrated = _truthy(raw.get("flux_calibration"))
        if isinstance(bunit, str) and (bunit.strip().upper() == "FLUX" or "erg" in bunit.lower()):
            calibrated = True
        flux_unit = FLUX_UNIT if calibrated else COUNTS_UNIT

    # built on first use (CubeHeader.wcs); none without the celestial axis types
    wcs = Later(celestial_wcs_from_mapping, raw, source) if "CTYPE1" in raw and "CTYPE2" in raw else None

    return CubeHeader(
        step_nm=step_nm,
        order=order,
        step_nb=step_nb,
        zpd_index=zpd_index,
        nm_laser=nm_laser,
        axis_corr=axis_corr,
        axis_min_cm1=float(axis_min),
        axis_step_cm1=float(axis_step),
        n_channels=n_channels,
        filter_name=filter_name,
        apodization=apodization,
        flux_unit=flux_unit,
        calib_coeff_orig=calib_coeff_orig,
        wcs=wcs,
        attrs=raw,
    )


class SpectralCube(abc.ABC):
    """Common read interface of every spectral-cube reader.

    Data are indexed ORB-style ``[x, y, channel]``. Subclasses keep the file
    open until :meth:`close` (or the end of a ``with`` block) and read only the
    requested pixel slab from disk.

    Attributes
    ----------
    header : CubeHeader
        Observation parameters and WCS.
    shape : tuple of int
        ``(nx, ny, n_channels)``.
    is_single_spectrum : bool
        True for extracted 1-D spectra (shape ``(1, 1, N)``).
    path : str
        Path of the file.
    level : int or None
        ORB reduction level (1, 2, 3) for ORB cubes, else ``None``.
    """

    header: CubeHeader
    shape: tuple[int, int, int]
    is_single_spectrum: bool = False
    path: str
    level: int | None = None
    #: Pixels to compute, ``[x, y]`` bool (None: all); views set it, readers never do.
    pixel_mask: np.ndarray | None = None
    #: Pixel (0, 0) of this cube in the file it reads (views: where the cut-out starts);
    #: None when its pixels are not pixels of one file (binned, Voronoi bins).
    origin: tuple[int, int] | None = (0, 0)

    @property
    def root_shape(self) -> tuple[int, int] | None:
        """``(nx, ny)`` of the file whose pixels this cube's pixels are (None: not one)."""
        return (int(self.shape[0]), int(self.shape[1])) if self.origin is not None else None

    def fingerprint(self) -> str:
        """Identity of the data this cube returns: the file (absolute path, size,
        modification time) and its header. A view adds what it does to them."""
        h = hashlib.sha256()
        p = os.path.abspath(str(self.path))
        h.update(p.encode())
        try:
            st = os.stat(p)
            h.update(f"{st.st_size} {st.st_mtime_ns}".encode())
        except OSError:
            pass
        h.update(repr(sorted((k, repr(v)) for k, v in self.header.attrs.items())).encode())
        h.update(repr(tuple(self.shape)).encode())
        return h.hexdigest()[:24]

    # -- geometry -----------------------------------------------------------
    @property
    def nx(self) -> int:
        """Number of pixels along x."""
        return int(self.shape[0])

    @property
    def ny(self) -> int:
        """Number of pixels along y."""
        return int(self.shape[1])

    @property
    def n_channels(self) -> int:
        """Number of spectral channels."""
        return int(self.shape[2])

    @property
    def axis_cm1(self) -> np.ndarray:
        """Spectral axis (cm^-1) of the stored channels."""
        return self.header.axis_cm1

    def _check_box(self, x0, x1, y0, y1) -> tuple[int, int, int, int]:
        """Validate a half-open pixel box and return it as Python ints."""
        try:
            box = tuple(int(operator_index(v)) for v in (x0, x1, y0, y1))
        except TypeError as exc:
            raise TypeError(f"{self.path}: pixel box bounds must be integers, got {(x0, x1, y0, y1)!r}") from exc
        x0, x1, y0, y1 = box
        if not (0 <= x0 < x1 <= self.nx and 0 <= y0 < y1 <= self.ny):
            raise IndexError(
                f"{self.path}: pixel box x[{x0}:{x1}], y[{y0}:{y1}] is empty or outside the "
                f"image (nx={self.nx}, ny={self.ny}); bounds are 0-based, half-open"
            )
        return box

    # -- reading ------------------------------------------------------------
    @abc.abstractmethod
    def read_spectra(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Read the spectra of the pixel box ``[x0:x1, y0:y1]``.

        Parameters
        ----------
        x0, x1, y0, y1 : int
            Half-open, 0-based pixel box.

        Returns
        -------
        numpy.ndarray
            float32 array of shape ``(x1 - x0, y1 - y0, n_channels)`` in
            ``header.flux_unit`` (calibrated flux density when available).
        """

    def read_calib_map(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray | None:
        """Calibration-laser wavelength (nm) per pixel of the box, or ``None``.

        Returns
        -------
        numpy.ndarray or None
            float64 array of shape ``(x1 - x0, y1 - y0)``.
        """
        self._check_box(x0, x1, y0, y1)
        return None

    def read_deep_frame(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray | None:
        """Deep frame of the box (float64, ``(x1 - x0, y1 - y0)``) or ``None``."""
        self._check_box(x0, x1, y0, y1)
        return None

    def read_spectrum(self, x: int, y: int) -> np.ndarray:
        """Spectrum of one pixel, float32, shape ``(n_channels,)``."""
        return self.read_spectra(x, x + 1, y, y + 1)[0, 0]

    # -- lifetime -----------------------------------------------------------
    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        lvl = f", level={self.level}" if self.level is not None else ""
        return (
            f"{type(self).__name__}({self.path!r}, shape={tuple(self.shape)}{lvl}, "
            f"filter={self.header.filter_name}, unit={self.header.flux_unit!r})"
        )


def operator_index(v: Any) -> int:
    """``operator.index`` that also accepts integral floats such as ``3.0``."""
    import operator

    try:
        return operator.index(v)
    except TypeError:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return int(v)
        raise
