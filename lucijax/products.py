"""Fit results -> maps (FITS-ordered ``[y, x]``) with units, and the single-spectrum JSON."""

from __future__ import annotations

import math

import numpy as np

from lucijax.constants import C_KMS

FLUX_UNIT_ERG = "erg/cm2/s/A"


def line_map_name(line: str) -> str:
    """EXTNAME prefix of a line: 'Halpha' -> 'HALPHA', 'SKY6498.73' -> 'SKY6498.73'."""
    return line.upper()


def build_maps(fit: dict, plan) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Maps ``{LINE}_{QUANTITY}`` and CONTINUUM, CHI2, SNR, NOISE, STATUS from the arrays
    returned by :func:`lucijax.fit.cube.fit_region` (indexed [x, y]).

    Fluxes are converted from the de-redshifted frame to the observed one and, for cubes in
    erg/cm^2/s/A, to erg/cm^2/s with ``flux_A = flux_cm1 * 1e8 / x0^2`` (x0 observed).
    """
    ls = plan.line_set
    z = plan.redshift
    calibrated = plan.flux_unit == FLUX_UNIT_ERG
    flux_unit = "erg/cm2/s" if calibrated else f"{plan.flux_unit} cm-1"
    maps: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}

    def put(name, arr_xy, unit):
        maps[name] = np.ascontiguousarray(np.asarray(arr_xy).T)
        units[name] = unit

    groups = np.asarray(ls.groups)
    rest_cm1 = ls.rest_cm1
    for i, line in enumerate(ls.names):
        g = groups[i]
        v = fit["velocity_kms"][..., g]
        beta = v / C_KMS
        x0_obs = rest_cm1[i] * np.sqrt((1 - beta) / (1 + beta)) / (1 + z)
        conv = 1.0 / (1 + z)
        if calibrated:
            conv = conv * 1e8 / x0_obs**2
        key = line_map_name(line)
        put(f"{key}_AMPLITUDE", fit["amplitude"][..., i], plan.flux_unit)
        put(f"{key}_AMPLITUDE_ERR", fit["amplitude_err"][..., i], plan.flux_unit)
        put(f"{key}_FLUX", fit["flux_cm1"][..., i] * conv, flux_unit)
        put(f"{key}_FLUX_ERR", fit["flux_err_cm1"][..., i] * conv, flux_unit)
        put(f"{key}_VELOCITY", v, "km/s")
        put(f"{key}_VELOCITY_ERR", fit["velocity_err_kms"][..., g], "km/s")
        put(f"{key}_BROADENING", fit["broadening_kms"][..., g], "km/s")
        put(f"{key}_BROADENING_ERR", fit["broadening_err_kms"][..., g], "km/s")
    put("CONTINUUM", fit["continuum"], plan.flux_unit)
    put("CHI2", fit["chi2_reduced"], "")
    put("SNR", fit["snr"], "")
    put("NOISE", fit["noise"], plan.flux_unit)
    put("FWHM", fit["fwhm_cm1"] / (1 + z), "cm-1")
    put("STATUS", fit["status"].astype(np.int16), "")
    if "mdn_mean" in fit:  # the network that started (and bounded) the fit
        put("MDN_VELOCITY", fit["mdn_mean"][..., 0], "km/s")
        put("MDN_BROADENING", fit["mdn_mean"][..., 1], "km/s")
        if getattr(plan, "network", "mdn") == "mdn":
            put("MDN_VELOCITY_SIGMA", fit["mdn_sigma"][..., 0], "km/s")
            put("MDN_BROADENING_SIGMA", fit["mdn_sigma"][..., 1], "km/s")
    return maps, units


def _clean(x):
    x = float(x)
    return None if not math.isfinite(x) else x


def spectrum_summary(maps: dict[str, np.ndarray], plan, y: int = 0, x: int = 0) -> dict:
    """The single-spectrum result as a JSON-ready dict (NaN -> null)."""
    ls = plan.line_set
    first = line_map_name(ls.names[0])
    lines = {}
    for line in ls.names:
        key = line_map_name(line)
        lines[line] = {
            q.lower(): _clean(maps[f"{key}_{q}"][y, x])
            for q in ("AMPLITUDE", "FLUX", "FLUX_ERR", "VELOCITY", "VELOCITY_ERR", "BROADENING", "BROADENING_ERR")
        }
    return {
        "velocity": _clean(maps[f"{first}_VELOCITY"][y, x]),
        "velocity_err": _clean(maps[f"{first}_VELOCITY_ERR"][y, x]),
        "broadening": _clean(maps[f"{first}_BROADENING"][y, x]),
        "broadening_err": _clean(maps[f"{first}_BROADENING_ERR"][y, x]),
        "chi2": _clean(maps["CHI2"][y, x]),
        "snr": _clean(maps["SNR"][y, x]),
        "noise": _clean(maps["NOISE"][y, x]),
        "noise_window": None if plan.noise_window_cm1 is None else list(plan.noise_window_cm1),
        "continuum": _clean(maps["CONTINUUM"][y, x]),
        "status": int(maps["STATUS"][y, x]),
        "model": plan.spec.shape,
        "flux_unit": "erg/cm2/s" if plan.flux_unit == FLUX_UNIT_ERG else f"{plan.flux_unit} cm-1",
        "lines": lines,
    }
