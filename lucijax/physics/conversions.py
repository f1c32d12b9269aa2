"""Doppler shifts and flux units, written once.

Velocities are relativistic (``x0 = sigma_rest sqrt((1 - v/c) / (1 + v/c))``); a user
redshift z de-redshifts the axis (``x_rest = x_obs (1 + z)``) and velocities are residuals.
Fluxes integrated over wavenumber of a spectrum per unit wavelength convert to energy
fluxes with ``F_erg = F_cm1 * 1e8 / x0^2`` (x0 in cm^-1, observed).
"""

from __future__ import annotations

import numpy as np

from lucijax.constants import C_KMS


def velocity_factor_minus_one(velocity_kms):
    """``sqrt((1 - v/c)/(1 + v/c)) - 1``, accurate for small v (numpy or jax arrays; jax in
    jax, numpy in numpy)."""
    xp = _xp(velocity_kms)
    beta = velocity_kms / C_KMS
    return xp.expm1(0.5 * (xp.log1p(-beta) - xp.log1p(beta)))


def line_position_cm1(rest_cm1, velocity_kms):
    """Observed (de-redshifted) position ``x0 = sigma_rest sqrt((1-v/c)/(1+v/c))``."""
    return rest_cm1 * (1.0 + velocity_factor_minus_one(velocity_kms))


def velocity_from_position(x0_cm1, rest_cm1):
    """Inverse of :func:`line_position_cm1` (numpy or jax arrays)."""
    r2 = (np.asarray(x0_cm1) / np.asarray(rest_cm1)) ** 2
    return C_KMS * (1.0 - r2) / (1.0 + r2)


def observed_position_cm1(rest_cm1, velocity_kms, redshift: float = 0.0):
    """Position on the observed axis of a line at residual velocity ``velocity_kms`` in a
    source at ``redshift`` (numpy, float64)."""
    beta = np.asarray(velocity_kms, np.float64) / C_KMS
    return np.asarray(rest_cm1, np.float64) * np.sqrt((1 - beta) / (1 + beta)) / (1.0 + redshift)


def flux_cm1_to_erg(flux_cm1, x0_obs_cm1):
    """Energy flux (erg/cm^2/s) of a line whose flux integrated over wavenumber of a
    spectrum in erg/cm^2/s/A is ``flux_cm1``, centred at ``x0_obs_cm1``."""
    return flux_cm1 * 1e8 / np.asarray(x0_obs_cm1) ** 2


def _xp(x):
    mod = type(x).__module__
    if mod.startswith("jax") or "Tracer" in type(x).__name__:
        import jax.numpy as jnp

        return jnp
    return np


__all__ = ["velocity_factor_minus_one", "line_position_cm1", "velocity_from_position", "observed_position_cm1",
           "flux_cm1_to_erg"]
