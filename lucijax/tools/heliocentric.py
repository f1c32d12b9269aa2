"""Heliocentric (or barycentric) velocity correction of SITELLE observations (astropy).

The correction comes from ``astropy.coordinates.SkyCoord.radial_velocity_correction`` for
the target, the observation time from the header and the location of SITELLE (CFHT,
Maunakea). A measured velocity ``v`` becomes ``v + vcorr + v * vcorr / c`` (astropy's
recommended combination, exact to first order in ``vcorr / c``).

Header keys looked up (first found wins):

* time: ``DATE-OBS`` (+ ``TIME-OBS``/``UTC-OBS`` when the date has no time), ``MJD-OBS``,
  ORB's ``obs_date`` (``'YYYY-MM-DD'`` or ``[Y, M, D]``) + ``obs_time``, ``OBS_DATE`` +
  ``OBS_TIME``;
* target: ORB's ``target_ra``/``target_dec`` (deg), else the celestial WCS at the image
  centre, else ``CRVAL1``/``CRVAL2``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from lucijax.constants import C_KMS

__all__ = ["CFHT_LOCATION", "cfht_location", "observation_time", "target_coordinate",
           "heliocentric_correction_kms", "correct_velocity", "apply_velocity_correction"]

#: Geodetic position of the Canada-France-Hawaii Telescope (longitude deg E, latitude deg N,
#: height m), as in astropy's site registry (``EarthLocation.of_site('cfht')``, which needs
#: a download).
CFHT_LOCATION = (-155.468876, 19.825252, 4204.0)


def cfht_location():
    """``astropy.coordinates.EarthLocation`` of CFHT (no network needed)."""
    import astropy.units as u
    from astropy.coordinates import EarthLocation

    lon, lat, h = CFHT_LOCATION
    return EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, h * u.m)


def _attrs(header):
    return header.attrs if hasattr(header, "attrs") else dict(header)


def _str(v):
    if isinstance(v, bytes):
        v = v.decode()
    return str(v).strip()


def observation_time(header):
    """``astropy.time.Time`` of the observation from a :class:`CubeHeader` or attribute dict.

    Raises
    ------
    ValueError
        When no date is found (give ``obstime=`` to :func:`heliocentric_correction_kms`).
    """
    from astropy.time import Time

    a = _attrs(header)
    if a.get("DATE-OBS") not in (None, ""):
        d = _str(a["DATE-OBS"])
        t = a.get("TIME-OBS", a.get("UTC-OBS"))
        if "T" not in d and t not in (None, ""):
            d = f"{d}T{_str(t)}"
        return Time(d.replace(" ", "T"), scale="utc")
    if a.get("MJD-OBS") not in (None, ""):
        return Time(float(a["MJD-OBS"]), format="mjd", scale="utc")
    for dk, tk in (("obs_date", "obs_time"), ("OBS_DATE", "OBS_TIME")):
        if a.get(dk) is None:
            continue
        d = a[dk]
        if isinstance(d, (list, tuple, np.ndarray)) and np.size(d) == 3:
            y, m, dd = (int(v) for v in np.ravel(d))
            d = f"{y:04d}-{m:02d}-{dd:02d}"
        d = _str(d)
        t = a.get(tk)
        if t not in (None, "") and "T" not in d:
            d = f"{d}T{_str(t)}"
        return Time(d, scale="utc")
    raise ValueError("no observation date in the header (DATE-OBS, MJD-OBS or obs_date): give obstime")


def target_coordinate(header):
    """``SkyCoord`` of the target (ICRS/FK5 as in the header)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    a = _attrs(header)
    frame = _str(a.get("RADESYS", "icrs")).lower() or "icrs"
    frame = frame if frame in ("icrs", "fk5", "fk4") else "icrs"
    if a.get("target_ra") is not None and a.get("target_dec") is not None:
        return SkyCoord(float(a["target_ra"]) * u.deg, float(a["target_dec"]) * u.deg, frame=frame)
    wcs = getattr(header, "wcs", None)
    if wcs is not None:
        if wcs.pixel_shape is not None:
            cx, cy = (np.asarray(wcs.pixel_shape) - 1) / 2.0
        else:
            cx, cy = np.asarray(wcs.wcs.crpix) - 1
        ra, dec = wcs.all_pix2world(cx, cy, 0)
        return SkyCoord(float(ra) * u.deg, float(dec) * u.deg, frame=frame)
    if a.get("CRVAL1") is not None and a.get("CRVAL2") is not None:
        return SkyCoord(float(a["CRVAL1"]) * u.deg, float(a["CRVAL2"]) * u.deg, frame=frame)
    raise ValueError("no target position in the header (target_ra/target_dec or a celestial WCS): give coord")


def heliocentric_correction_kms(header=None, *, coord=None, obstime=None, location=None,
                                kind: str = "heliocentric") -> float:
    """Velocity correction (km/s) to add to measured velocities.

    Parameters
    ----------
    header : CubeHeader or dict, optional
        Source of the time and target when ``obstime``/``coord`` are not given.
    coord : astropy.coordinates.SkyCoord, optional
    obstime : astropy.time.Time or str, optional
    location : astropy.coordinates.EarthLocation, optional
        Default: CFHT (:data:`CFHT_LOCATION`).
    kind : {'heliocentric', 'barycentric'}

    Notes
    -----
    Runs offline: the Earth-orientation table is not downloaded (UT1-UTC errors change
    the correction by far less than 1 m/s).
    """
    import astropy.units as u
    from astropy.time import Time
    from astropy.utils import iers

    if kind not in ("heliocentric", "barycentric"):
        raise ValueError(f"kind must be 'heliocentric' or 'barycentric', got '{kind}'")
    coord = coord if coord is not None else target_coordinate(header)
    obstime = observation_time(header) if obstime is None else (obstime if isinstance(obstime, Time) else Time(obstime))
    location = location if location is not None else cfht_location()
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IERS extrapolation notices
        corr = coord.radial_velocity_correction(kind, obstime=obstime, location=location)
    return float(corr.to_value(u.km / u.s))


def correct_velocity(velocity_kms, correction_kms):
    """``v + vcorr + v * vcorr / c`` (km/s), elementwise."""
    v = np.asarray(velocity_kms, np.float64)
    return v + correction_kms + v * correction_kms / C_KMS


def apply_velocity_correction(result, correction_kms: float):
    """A copy of a :class:`lucijax.results.Result` with every ``*_VELOCITY`` map corrected
    (and ``*_VELOCITY_ERR`` scaled by ``1 + vcorr/c``); the correction is kept as
    ``velocity_correction_kms`` on the copy and as the ``HELIOCOR`` card of its header."""
    maps = dict(result.maps)
    for k, v in result.maps.items():
        if k.endswith("_VELOCITY"):
            maps[k] = correct_velocity(v, correction_kms).astype(np.asarray(v).dtype)
        elif k.endswith("_VELOCITY_ERR"):
            maps[k] = (np.asarray(v) * (1.0 + correction_kms / C_KMS)).astype(np.asarray(v).dtype)
    out = dataclasses.replace(result, maps=maps, cards=dict(result.cards, HELIOCOR=float(correction_kms)))
    out.velocity_correction_kms = float(correction_kms)
    return out
