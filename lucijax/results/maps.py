"""Per-pixel results -> maps (FITS-ordered ``[y, x]``) with units, and the single-spectrum
JSON. Fluxes leave the fit in the de-redshifted frame, in the cube's unit x cm^-1; here
they become observed energy fluxes (:mod:`lucijax.physics.conversions`)."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from lucijax.physics.conversions import flux_cm1_to_erg, observed_position_cm1

FLUX_UNIT_ERG = "erg/cm2/s/A"
#: ``{LINE}_FLUX_LIMIT`` maps are this many times the flux error of an absent line.
DETECTION_SIGMAS = 3.0


def line_map_name(line: str) -> str:
    """EXTNAME prefix of a line: 'Halpha' -> 'HALPHA', 'SKY6498.73' -> 'SKY6498.73'."""
    return line.upper()


def correlation_map_name(line_a: str, line_b: str) -> str:
    """EXTNAME of the correlation of two lines' fluxes: 'CORR_HALPHA_NII6583'."""
    return f"CORR_{line_map_name(line_a)}_{line_map_name(line_b)}"


def flux_unit_of(cube_unit: str) -> str:
    """Unit of the flux maps of a cube in ``cube_unit``."""
    return "erg/cm2/s" if cube_unit == FLUX_UNIT_ERG else f"{cube_unit} cm-1"


def detections(flux: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """1 where a line is detected (``flux >= limit``, its 3-sigma flux limit, and > 0), 0 where
    not, -1 where either is not finite (no fit), int16."""
    flux, limit = np.asarray(flux), np.asarray(limit)
    known = np.isfinite(flux) & np.isfinite(limit)
    with np.errstate(invalid="ignore"):
        hit = (flux > 0) & (flux >= limit)
    return np.where(known, hit, -1).astype(np.int16)


def put_detections(maps: dict, units: dict, lines) -> None:
    """Add ``{LINE}_DETECTED`` (:func:`detections` of its ``FLUX`` and ``FLUX_LIMIT`` maps;
    without a limit map, ``DETECTION_SIGMAS`` x ``FLUX_ERR``) and ``N_DETECTED`` (lines
    detected, -1 where no line has a fit) to ``maps`` in place."""
    dets = []
    for line in lines:
        key = line_map_name(line)
        limit = maps.get(f"{key}_FLUX_LIMIT")
        if limit is None:
            limit = DETECTION_SIGMAS * maps[f"{key}_FLUX_ERR"]
        dets.append(detections(maps[f"{key}_FLUX"], limit))
        maps[f"{key}_DETECTED"] = dets[-1]
        units[f"{key}_DETECTED"] = ""
    if dets:
        d = np.stack(dets)
        maps["N_DETECTED"] = np.where(np.any(d >= 0, axis=0), np.sum(d == 1, axis=0), -1).astype(np.int16)
        units["N_DETECTED"] = ""


def build_maps(fit: Mapping, bound, fwhm_cm1, network=None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Maps ``{LINE}_{QUANTITY}`` (``{LINE}_DETECTED`` and ``N_DETECTED``: :func:`put_detections`)
    and CONTINUUM, CONTINUUM_ERR, CHI2, SNR, NOISE, FWHM, STATUS from per-pixel fields named as
    :class:`~lucijax.solvers.PixelFit`'s (arrays indexed ``[x, y, ...]``).

    Fluxes are converted from the de-redshifted frame to the observed one and, for cubes in
    erg/cm^2/s/A, to erg/cm^2/s with ``flux_A = flux_cm1 * 1e8 / x0^2`` (x0 observed).
    ``network``: ``(mean, sigma, kind)`` of the network that started the fit ([x, y, 2]
    arrays; kind 'mdn' or 'cnn'), written as ``MDN_*`` maps.
    """
    ls = bound.line_set
    z = bound.redshift
    calibrated = bound.flux_unit == FLUX_UNIT_ERG
    flux_unit = flux_unit_of(bound.flux_unit)
    maps: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}

    def put(name, arr_xy, unit):
        maps[name] = np.ascontiguousarray(np.asarray(arr_xy).T)
        units[name] = unit

    groups = np.asarray(ls.groups)
    # each line's broadening: its broadening group's (the sinc's NaN: its kinematic group's)
    bgroups = np.asarray(ls.broadening_of if bound.spec.has_broadening else ls.groups)
    rest_cm1 = ls.rest_cm1
    for i, line in enumerate(ls.names):
        g, gb = groups[i], bgroups[i]
        v = fit["velocity_kms"][..., g]
        x0_obs = observed_position_cm1(rest_cm1[i], v, z)
        conv = 1.0 / (1 + z)
        if calibrated:
            conv = flux_cm1_to_erg(conv, x0_obs)
        key = line_map_name(line)
        put(f"{key}_AMPLITUDE", fit["amplitude"][..., i], bound.flux_unit)
        put(f"{key}_AMPLITUDE_ERR", fit["amplitude_err"][..., i], bound.flux_unit)
        put(f"{key}_FLUX", fit["flux_cm1"][..., i] * conv, flux_unit)
        put(f"{key}_FLUX_ERR", fit["flux_err_cm1"][..., i] * conv, flux_unit)
        if "flux_null_err_cm1" in fit:  # the 3-sigma limit of a line at the fitted kinematics
            put(f"{key}_FLUX_LIMIT", DETECTION_SIGMAS * fit["flux_null_err_cm1"][..., i] * conv, flux_unit)
        put(f"{key}_VELOCITY", v, "km/s")
        put(f"{key}_VELOCITY_ERR", fit["velocity_err_kms"][..., g], "km/s")
        put(f"{key}_BROADENING", fit["broadening_kms"][..., gb], "km/s")
        put(f"{key}_BROADENING_ERR", fit["broadening_err_kms"][..., gb], "km/s")
    put_detections(maps, units, ls.names)
    corr = fit.get("flux_corr")
    if corr is not None and np.shape(corr)[-1]:
        for k, (i, j) in enumerate(zip(*np.triu_indices(ls.n_lines, 1))):
            put(correlation_map_name(ls.names[i], ls.names[j]), corr[..., k], "")
    put("CONTINUUM", fit["continuum"], bound.flux_unit)
    if "continuum_err" in fit:
        put("CONTINUUM_ERR", fit["continuum_err"], bound.flux_unit)
    put("CHI2", fit["chi2_reduced"], "")
    put("SNR", fit["snr"], "")
    put("NOISE", fit["noise"], bound.flux_unit)
    put("FWHM", np.asarray(fwhm_cm1) / (1 + z), "cm-1")
    put("STATUS", np.asarray(fit["status"]).astype(np.int16), "")
    if network is not None:  # the network that started (and bounded) the fit
        mean, sigma, kind = network
        put("MDN_VELOCITY", mean[..., 0], "km/s")
        put("MDN_BROADENING", mean[..., 1], "km/s")
        if kind == "mdn":
            put("MDN_VELOCITY_SIGMA", sigma[..., 0], "km/s")
            put("MDN_BROADENING_SIGMA", sigma[..., 1], "km/s")
    return maps, units


def _clean(x):
    x = float(x)
    return None if not math.isfinite(x) else x


def spectrum_summary(maps: dict[str, np.ndarray], bound, y: int = 0, x: int = 0) -> dict:
    """The single-spectrum result as a JSON-ready dict (NaN -> null)."""
    ls = bound.line_set
    first = line_map_name(ls.names[0])
    lines = {}
    for line in ls.names:
        key = line_map_name(line)
        lines[line] = {
            q.lower(): _clean(maps[f"{key}_{q}"][y, x])
            for q in ("AMPLITUDE", "FLUX", "FLUX_ERR", "VELOCITY", "VELOCITY_ERR", "BROADENING", "BROADENING_ERR")
        }
        if f"{key}_FLUX_LIMIT" in maps:
            lines[line]["flux_limit"] = _clean(maps[f"{key}_FLUX_LIMIT"][y, x])
        if f"{key}_DETECTED" in maps:
            lines[line]["detected"] = int(maps[f"{key}_DETECTED"][y, x])
    return {
        "velocity": _clean(maps[f"{first}_VELOCITY"][y, x]),
        "velocity_err": _clean(maps[f"{first}_VELOCITY_ERR"][y, x]),
        "broadening": _clean(maps[f"{first}_BROADENING"][y, x]),
        "broadening_err": _clean(maps[f"{first}_BROADENING_ERR"][y, x]),
        "chi2": _clean(maps["CHI2"][y, x]),
        "snr": _clean(maps["SNR"][y, x]),
        "noise": _clean(maps["NOISE"][y, x]),
        "noise_window": None if bound.noise_window is None else list(bound.noise_window),
        "continuum": _clean(maps["CONTINUUM"][y, x]),
        "continuum_err": _clean(maps["CONTINUUM_ERR"][y, x]) if "CONTINUUM_ERR" in maps else None,
        "status": int(maps["STATUS"][y, x]),
        "model": bound.spec.shape,
        "flux_unit": flux_unit_of(bound.flux_unit),
        "lines": lines,
    }
