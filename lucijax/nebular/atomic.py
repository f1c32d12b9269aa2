"""Nebular physics from PyNeb: the [SII] density diagnostic, the Case B Balmer decrement and
attenuation curves. PyNeb supplies every atomic number (emissivities, recombination
coefficients) and every extinction law; this module only inverts and propagates.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import numpy as np

__all__ = ["oii_ratio_limits", "sii_ratio_curve", "density_from_sii", "case_b_balmer_decrement", "attenuation_k", "pyneb_version",
           "sii_atomic_data", "EXTINCTION_LAWS"]

#: PyNeb's extinction laws offered by name (``pyneb.RedCorr().getLaws()``).
EXTINCTION_LAWS = ("CCM89", "F99", "Cal00", "K76", "CCM89 oD94", "G03 LMC")


@contextlib.contextmanager
def _quiet():
    """PyNeb prints its warnings on stdout; silence them for one call."""
    import pyneb as pn

    old = pn.log_.level
    pn.log_.level = 0
    try:
        yield pn
    finally:
        pn.log_.level = old


def pyneb_version() -> str:
    with _quiet() as pn:
        return str(pn.__version__)


def sii_atomic_data() -> str:
    """PyNeb's atomic data files of S+ (transition probabilities, collision strengths)."""
    with _quiet() as pn:
        files = pn.atomicData.getDataFile("S2")
    return " ".join(str(f) for f in files if f)


@lru_cache(maxsize=8)
def sii_ratio_curve(temperature: float = 1e4, n_points: int = 601) -> tuple[np.ndarray, np.ndarray]:
    """``(log10 density / cm^-3, F(6716)/F(6731))`` on a grid of 10^0 .. 10^5.5 cm^-3 at
    ``temperature`` (K), from PyNeb's S+ emissivities (the ratio falls with density)."""
    with _quiet() as pn:
        s2 = pn.Atom("S", 2)
        log_n = np.linspace(0.0, 5.5, n_points)
        dens = 10.0**log_n
        e1 = np.asarray(s2.getEmissivity(temperature, dens, wave=6716), np.float64)
        e2 = np.asarray(s2.getEmissivity(temperature, dens, wave=6731), np.float64)
    return log_n, np.ravel(e1 / e2)


@lru_cache(maxsize=8)
def oii_ratio_limits(temperature: float = 1e4) -> tuple[float, float]:
    """``(high-density, low-density)`` limits of the [OII] F(3729)/F(3726) energy-flux ratio
    at ``temperature`` (K): its extremes over densities 10^0 .. 10^7 cm^-3 from PyNeb's O+
    emissivities (the ratio falls with density). The default ratio range of a fit of the
    doublet, :data:`lucijax.physics.lines.OII_RATIO_RANGE`, holds them at 10^4 K."""
    with _quiet() as pn:
        o2 = pn.Atom("O", 2)
        dens = 10.0 ** np.linspace(0.0, 7.0, 141)
        ratio = np.ravel(np.asarray(o2.getEmissivity(temperature, dens, wave=3729), np.float64)
                         / np.asarray(o2.getEmissivity(temperature, dens, wave=3726), np.float64))
    return float(np.min(ratio)), float(np.max(ratio))


def density_from_sii(ratio, ratio_err, temperature: float = 1e4):
    """Electron density (cm^-3) from the [SII] 6716/6731 flux ratio, by inversion of
    PyNeb's ratio-density curve.

    Returns
    -------
    density, density_err, density_lo, density_hi, limit
        ``density_err``: the delta-method error ``|dn/dR| sigma_R``; ``density_lo`` /
        ``density_hi``: the densities at ``R + sigma_R`` / ``R - sigma_R`` (a 68 % interval
        that follows the curve's non-linearity); ``limit``: -1 where R lies above the
        low-density limit of the curve (density below 1 cm^-3: an upper limit), +1 where it
        lies below the high-density limit, 0 inside. Outside the curve the density is NaN.
    """
    log_n, r = sii_ratio_curve(float(temperature))
    rr, ln = r[::-1], log_n[::-1]  # increasing ratio
    ratio = np.asarray(ratio, np.float64)
    ratio_err = np.asarray(ratio_err, np.float64)

    def invert(x):
        inside = (x >= rr[0]) & (x <= rr[-1])
        return np.where(inside, 10.0 ** np.interp(np.where(np.isfinite(x), x, rr[0]), rr, ln), np.nan)

    dens = invert(ratio)
    slope = np.gradient(10.0**ln, rr)  # dn/dR on the grid
    dndr = np.interp(np.where(np.isfinite(ratio), ratio, rr[0]), rr, slope)
    err = np.where(np.isfinite(dens), np.abs(dndr) * ratio_err, np.nan)
    lo = invert(np.minimum(ratio + ratio_err, rr[-1]))
    hi = invert(np.maximum(ratio - ratio_err, rr[0]))
    limit = np.where(ratio > rr[-1], -1, np.where(ratio < rr[0], 1, 0))
    limit = np.where(np.isfinite(ratio), limit, 0)
    return dens, err, lo, hi, limit.astype(np.int16)


@lru_cache(maxsize=8)
def case_b_balmer_decrement(temperature: float = 1e4, density: float = 100.0) -> float:
    """Intrinsic F(Halpha)/F(Hbeta) of Case B recombination (PyNeb's H I emissivities;
    2.86 at 10^4 K and 100 cm^-3)."""
    with _quiet() as pn:
        h1 = pn.RecAtom("H", 1)
        return float(h1.getEmissivity(temperature, density, label="3_2") / h1.getEmissivity(temperature, density, label="4_2"))


def attenuation_k(wavelength_angstrom, law: str = "CCM89", r_v: float = 3.1) -> np.ndarray:
    """``k(lambda) = A_lambda / E(B-V)`` of a PyNeb extinction law."""
    with _quiet() as pn:
        rc = pn.RedCorr(R_V=r_v, law=law)
        if law not in rc.getLaws():
            raise ValueError(f"unknown extinction law '{law}': PyNeb knows {', '.join(rc.getLaws())}")
        return np.ravel(np.asarray(rc.X(np.atleast_1d(np.asarray(wavelength_angstrom, np.float64))), np.float64))
