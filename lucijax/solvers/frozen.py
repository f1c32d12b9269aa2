"""Freeze mode: velocities and broadenings taken from given maps, only the amplitudes and the
continuum fitted.

With the kinematics fixed the model is linear, so the fit of one spectrum is the bounded
linear least-squares problem of :mod:`lucijax.solvers.fitting` at a given ``theta``: amplitudes >= 0
by ``jaxopt.BoxCDQP``, the noise from line-free channels, and uncertainties from the inverse
Fisher matrix of the linear parameters alone (the kinematics carry no uncertainty here). The
result is a :class:`~lucijax.solvers.fitting.PixelFit`, so maps and products work unchanged; its
velocity/broadening fields are the given values, their errors those given with them (NaN
when none).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.model import LineModel
from lucijax.program import Program
from lucijax.solvers.fitting import (FitSettings, PixelFit, cone_columns, nonneg_amplitudes, continuum_error, detection_statistic, flux_correlations,
                                     line_free_noise, linear_solve, noise_floor, null_flux_errors)
from lucijax.solvers.kinematics import given_kinematics, with_given
from lucijax.solvers.linalg import spd_inverse
from lucijax.solvers.map import MapFit, finish_map
from lucijax.status import Status


def fit_frozen_spectrum(model: LineModel, settings: FitSettings, y, fwhm_cm1, theta, theta_err=None) -> PixelFit:
    """Amplitudes and continuum of ONE spectrum at fixed kinematics ``theta``.

    Parameters
    ----------
    model : LineModel
    settings : FitSettings
        ``nonneg_amplitudes`` and ``line_free_fwhm`` are used.
    y : (n_channels,) array
        Spectrum on the model's grid; NaN/inf channels are ignored.
    fwhm_cm1 : scalar
        Instrumental sinc FWHM in the de-redshifted frame.
    theta : (n_nonlinear,) array
        Velocities then broadenings (km/s) of the kinematic groups.
    theta_err : (n_nonlinear,) array, optional
        Their uncertainties, copied to the result.
    """
    spec = model.spec
    G, has_b = spec.n_groups, spec.has_broadening
    K, L = spec.n_linear, spec.line_set.n_lines
    dtype = jnp.float32
    theta = jnp.asarray(theta, dtype)
    theta_err = jnp.full_like(theta, jnp.nan) if theta_err is None else jnp.asarray(theta_err, dtype)

    finite, mask = model.channel_mask(y)  # mask: the channel weights (0 = not used)
    y0 = jnp.where(finite, y, 0.0).astype(dtype)
    scale = jnp.max(jnp.abs(y0))
    n_valid = jnp.sum(finite)
    valid = (scale > 0) & jnp.isfinite(scale) & (n_valid >= K + 5) & jnp.isfinite(fwhm_cm1) & (fwhm_cm1 > 0)
    valid = valid & jnp.all(jnp.isfinite(theta))
    scale = jnp.where(valid, scale, 1.0)
    fwhm = jnp.where(valid, fwhm_cm1, 1.0).astype(dtype)
    theta = jnp.where(jnp.isfinite(theta), theta, 0.0)
    ys = y0 / scale * mask

    m = model.design_matrix(theta, fwhm) * mask[:, None]
    gram = m.T @ m
    d = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
    alpha_free = linear_solve(m, ys)
    cones = cone_columns(model)
    if settings.nonneg_amplitudes or cones:  # a ratio range's cone stays >= 0 without nonneg_amplitudes too
        bounded = np.arange(K) < (spec.n_amplitudes if settings.nonneg_amplitudes else 0)
        bounded[list(cones)] = True
        alpha = nonneg_amplitudes(m, ys, alpha_free, spec.n_amplitudes, bounded)
    else:
        alpha = alpha_free
    resid = ys - m @ alpha

    # covariance of the linear parameters: (M^T M)^-1 noise^2, unit-diagonal scaled
    cov_unit = spd_inverse(gram * d[:, None] * d[None, :], jitter=1e-7) * d[:, None] * d[None, :]
    leverage = jnp.sum((m @ cov_unit) * m, axis=1)  # diagonal of the hat matrix

    # noise from the channels away from every line
    noise_s = line_free_noise(model, settings, theta, fwhm, resid, finite, leverage)
    dof = jnp.maximum(n_valid - K, 1.0)
    noise_s = jnp.where(noise_s > 0, noise_s, jnp.sqrt(jnp.sum(resid**2) / dof))
    noise_s = jnp.maximum(noise_s, noise_floor(ys))
    chi2_red = jnp.sum(resid**2) / noise_s**2 / dof
    cov = cov_unit * noise_s**2
    cov_ok = jnp.all(jnp.isfinite(cov))
    # amplitudes and fluxes are linear in alpha at fixed theta: q = C alpha
    if model.ratio_pairs:  # a ratio range's cone coefficients feed both of its lines
        c_amp = jax.jacfwd(lambda a: model.line_amplitudes(theta, a, fwhm))(alpha)
    else:
        coef = model.line_coefficients(theta, fwhm)
        c_amp = jnp.zeros((L, K), dtype).at[jnp.arange(L), model.column].set(coef)
    c_flux = c_amp * model.unit_fluxes(theta, fwhm)[:, None]
    amp = c_amp @ alpha
    flux = c_flux @ alpha
    amp_err = jnp.sqrt(jnp.maximum(jnp.einsum("ik,kl,il->i", c_amp, cov, c_amp), 0.0))
    flux_err = jnp.sqrt(jnp.maximum(jnp.einsum("ik,kl,il->i", c_flux, cov, c_flux), 0.0))
    flux_corr = flux_correlations(c_flux @ cov @ c_flux.T)
    null_err = null_flux_errors(c_flux, cov)

    na = model.spec.n_amplitudes
    # NaN (a singular covariance) is not "no line": it stays SINGULAR below
    no_line = detection_statistic(alpha[:na], cov[:na, :na]) < settings.detection_chi2
    status = jnp.where(~valid, Status.INVALID_INPUT,
             jnp.where(no_line, Status.NO_LINE,
             jnp.where(~cov_ok, Status.SINGULAR, Status.CONVERGED))).astype(jnp.int32)
    nan = jnp.asarray(jnp.nan, dtype)

    def out(x, scale_by=1.0):
        return jnp.where(valid, x * scale_by, nan)

    noise = noise_s * scale
    amplitude = amp * scale
    return PixelFit(
        velocity_kms=out(theta[:G]),
        velocity_err_kms=out(theta_err[:G]),
        broadening_kms=out(theta[G:]) if has_b else jnp.full(G, nan),
        broadening_err_kms=out(theta_err[G:]) if has_b else jnp.full(G, nan),
        amplitude=out(amplitude),
        amplitude_err=out(amp_err, scale),
        flux_cm1=out(flux, scale),
        flux_err_cm1=out(flux_err, scale),
        continuum=out(model.continuum_at_centre(alpha), scale),
        noise=out(noise),
        chi2_reduced=out(chi2_red),
        snr=out(jnp.max(amplitude) / noise),
        status=status,
        start_velocity_kms=out(theta[:G]),
        linear=out(alpha, scale),
        flux_corr=out(flux_corr),
        flux_null_err_cm1=out(null_err, scale),
        continuum_err=out(continuum_error(model, cov), scale),
    )


@dataclass(frozen=True)
class Frozen:
    """Freeze mode: velocities and broadenings taken from maps, only the amplitudes and the
    continuum fitted (the model is then linear: one bounded least-squares solve per pixel).

    Attributes
    ----------
    kinematics : path to a maps.fits, or dict of ``[y, x]`` maps
        ``{LINE}_VELOCITY`` / ``{LINE}_BROADENING`` (and their ``_ERR``) of each kinematic
        group's first line, or plain ``VELOCITY`` / ``BROADENING`` maps (shared by all
        groups), of the fitted view or of the whole cube. A maps file of another pointing
        (its WCS not the cube's, e.g. SN3's maps for the SN2 cube of the same field) is
        resampled onto the cube's pixels first (``reproject``, bilinear).
    nonneg_amplitudes : bool
        Line amplitudes >= 0.
    line_free_fwhm : float
        As for :class:`~lucijax.solvers.map.MAP`: the noise comes from channels this many
        FWHM away from every line.
    """

    kinematics: object
    nonneg_amplitudes: bool = True
    line_free_fwhm: float = 3.0

    def program(self, bound, cube) -> Program:
        """The per-spectrum program: amplitudes at the given kinematics of each pixel of
        ``cube`` (a view whose ``origin`` places it in the cube the maps may cover)."""
        theta, err = given_kinematics(self.kinematics, bound, cube)
        settings = FitSettings(nonneg_amplitudes=bool(self.nonneg_amplitudes), line_free_fwhm=float(self.line_free_fwhm))
        model = bound.line_model
        nan2 = jnp.full(2, jnp.nan, jnp.float32)

        def one(inp):
            fit = fit_frozen_spectrum(model, settings, inp["y"], inp["fwhm"], inp["theta"], inp["theta_err"])
            return MapFit(fit, nan2, nan2, jnp.asarray(False), inp["fwhm"])

        key = "\n".join([bound.key, "frozen", repr(settings)])
        return Program(name="frozen fit", key=key, prepare=with_given(bound, ("theta", "theta_err")), one=one,
                       finish=finish_map, given={"theta": theta, "theta_err": err}, pad={"y": np.nan},
                       namedtuples=(MapFit, PixelFit),
                       meta={"bound": bound, "start": "frozen", "solver": self})


__all__ = ["Frozen", "fit_frozen_spectrum"]
