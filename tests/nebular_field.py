"""Synthetic SN3 + SN2 cubes of one field with known nebular physics (tests of
lucijax.nebular): line ratios, BPT position, [SII] density, Balmer-decrement E(B-V).

Truth is given in energy flux (erg/cm^2/s per pixel) and converted to the simulator's
observed cm^-1 fluxes at each line's observed position.
"""

from __future__ import annotations

import numpy as np

from lucijax.nebular.atomic import attenuation_k, case_b_balmer_decrement, sii_ratio_curve
from lucijax.physics.conversions import flux_cm1_to_erg, observed_position_cm1
from lucijax.physics.lines import make_line_set
from lucijax.simulate import make_cube

SN3_LINES = ("Halpha", "NII6583", "NII6548", "SII6716", "SII6731")
SN2_LINES = ("Hbeta", "OIII5007", "OIII4959")
SN1_LINES = ("OII3726", "OII3729")
NOISE = 1e-18


def erg_to_cm1(line_set, name, flux_erg, velocity):
    i = line_set.names.index(name)
    x0 = observed_position_cm1(line_set.rest_cm1[i], velocity, 0.0)
    return flux_erg / flux_cm1_to_erg(1.0, x0)


def sii_ratio_of_density(density, temperature=1e4):
    log_n, r = sii_ratio_curve(temperature)
    return np.interp(np.log10(density), log_n, r)


def nebular_truth(shape, seed=0, halpha_flux=(3e-16, 3e-15)):
    """Per-pixel truth ``[y, x]``: kinematics, BPT point, density, E(B-V) and the energy flux
    of every line."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    u = lambda lo, hi: rng.uniform(lo, hi, (ny, nx))  # noqa: E731
    t = {"velocity": u(-150, 150), "broadening": u(15, 50), "n2": u(-1.4, 0.3), "o3": u(-1.0, 1.0),
         "density": 10 ** u(np.log10(50), np.log10(5000)), "ebv": u(0.0, 0.8),
         "sii_ha": 10 ** u(-1.0, -0.4)}
    ha = 10 ** u(*np.log10(halpha_flux))
    r0 = case_b_balmer_decrement()
    k_ha, k_hb = attenuation_k([6562.819, 4861.333])
    hb = ha / (r0 * 10 ** (0.4 * t["ebv"] * (k_hb - k_ha)))
    rs = sii_ratio_of_density(t["density"])
    sii = ha * t["sii_ha"]
    t["flux"] = {"Halpha": ha, "NII6583": ha * 10 ** t["n2"], "SII6716": sii * rs / (1 + rs), "SII6731": sii / (1 + rs),
                 "Hbeta": hb, "OIII5007": hb * 10 ** t["o3"]}
    t["sii_ratio"] = rs
    t["ha_hb"] = ha / hb
    return t


def cube_of(truth_xy, lines, filter_name, path, seed, header_overrides=None, field=None):
    """Write a cube of ``lines`` whose per-pixel truth is given ``[y, x]``."""
    ls = make_line_set(lines)
    v = truth_xy["velocity"]
    fluxes = {n: erg_to_cm1(ls, n, truth_xy["flux"][n], v).T for n in lines if n in truth_xy["flux"]}
    ny, nx = v.shape
    cube = make_cube(nx, ny, lines=lines, filter_name=filter_name, noise=NOISE, seed=seed, velocity_kms=v.T,
                     broadening_kms=truth_xy["broadening"].T, line_fluxes_cm1=fluxes, calib_spread=0.0,
                     header_overrides=header_overrides)
    cube.write(path)
    return cube
