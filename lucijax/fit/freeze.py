"""Freeze mode: velocities and broadenings taken from given maps, only the amplitudes and the
continuum fitted.

With the kinematics fixed the model is linear, so the fit of one spectrum is the bounded
linear least-squares problem of :mod:`lucijax.fit.map` at a given ``theta``: amplitudes >= 0
by ``jaxopt.BoxCDQP``, the noise from line-free channels, and uncertainties from the inverse
Fisher matrix of the linear parameters alone (the kinematics carry no uncertainty here). The
result is a :class:`~lucijax.fit.map.PixelFit`, so maps and products work unchanged; its
velocity/broadening fields are the given values, their errors those given with them (NaN
when none).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
from tqdm.auto import tqdm

from lucijax.fit.linalg import spd_inverse
from lucijax.fit.map import FitSettings, PixelFit, Status, _linear_solve, line_free_noise
from lucijax.fit.noise import adopt_noise
from lucijax.model import LineModel


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
    alpha_free = _linear_solve(m, ys)
    if settings.nonneg_amplitudes:
        q = gram * d[:, None] * d[None, :]
        c = -(m.T @ ys) * d
        lower = jnp.concatenate([jnp.zeros(spec.n_amplitudes, dtype), jnp.full(K - spec.n_amplitudes, -jnp.inf, dtype)])
        upper = jnp.full(K, jnp.inf, dtype)
        z0 = jnp.clip(alpha_free / d, lower, upper)
        alpha = jaxopt.BoxCDQP(maxiter=100, tol=1e-6, implicit_diff=False).run(
            z0, params_obj=(q, c), params_ineq=(lower, upper)).params * d
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
    chi2_red = jnp.sum(resid**2) / noise_s**2 / dof
    cov = cov_unit * noise_s**2
    cov_ok = jnp.all(jnp.isfinite(cov))
    # amplitudes and fluxes are linear in alpha at fixed theta: q = C alpha
    coef = model.line_coefficients(theta, fwhm)
    c_amp = jnp.zeros((L, K), dtype).at[jnp.arange(L), model.column].set(coef)
    c_flux = c_amp * model.unit_fluxes(theta, fwhm)[:, None]
    amp = c_amp @ alpha
    flux = c_flux @ alpha
    amp_err = jnp.sqrt(jnp.maximum(jnp.einsum("ik,kl,il->i", c_amp, cov, c_amp), 0.0))
    flux_err = jnp.sqrt(jnp.maximum(jnp.einsum("ik,kl,il->i", c_flux, cov, c_flux), 0.0))

    status = jnp.where(~valid, Status.INVALID_INPUT, jnp.where(~cov_ok, Status.SINGULAR, Status.CONVERGED)).astype(jnp.int32)
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
    )


def make_frozen_fitter(model: LineModel, settings: FitSettings):
    """Jitted batch version: ``fit(y (B, n), fwhm (B,), theta (B, P), theta_err=None)``."""
    batch = jax.jit(jax.vmap(lambda y, f, t, e: fit_frozen_spectrum(model, settings, y, f, t, e)))

    def fit(y, fwhm, theta, theta_err=None):
        theta = jnp.asarray(theta, jnp.float32)
        err = jnp.full_like(theta, jnp.nan) if theta_err is None else jnp.asarray(theta_err, jnp.float32)
        return batch(jnp.asarray(y, jnp.float32), jnp.asarray(fwhm, jnp.float32), theta, err)

    return fit


# ------------------------------------------------------------------ maps -> kinematics
def kinematic_maps(freeze, line_set, region, cube_shape_xy) -> tuple[np.ndarray, np.ndarray]:
    """Velocity and broadening maps of each kinematic group over ``region``.

    Parameters
    ----------
    freeze : path or dict
        ``maps.fits`` of a previous fit, or a dict of FITS-ordered ``[y, x]`` arrays. Group
        ``g`` takes ``{LINE}_VELOCITY`` / ``{LINE}_BROADENING`` (and their ``_ERR``) of its
        first line, else plain ``VELOCITY`` / ``BROADENING`` maps (then all groups share
        them). Maps cover either the region or the whole cube.
    line_set : LineSet
    region : (x0, x1, y0, y1)
    cube_shape_xy : (nx, ny)

    Returns
    -------
    theta, theta_err : arrays of shape (x1 - x0, y1 - y0, 2 G) indexed [x, y]: velocities
    then broadenings (km/s).
    """
    if isinstance(freeze, (str, Path)):
        from lucijax.io import read_maps_fits

        maps = read_maps_fits(freeze)
    else:
        maps = dict(freeze)
    x0, x1, y0, y1 = region
    nx, ny = cube_shape_xy

    def cut(name):
        arr = np.asarray(maps[name], np.float64)
        if arr.shape == (y1 - y0, x1 - x0):
            return arr.T
        if arr.shape == (ny, nx):
            return arr[y0:y1, x0:x1].T
        raise ValueError(f"freeze map {name} has shape {arr.shape}: expected the region's {(y1 - y0, x1 - x0)} "
                         f"or the cube's {(ny, nx)} ([y, x])")

    def find(line, quantity, required=True):
        for name in (f"{line.upper()}_{quantity}", quantity):
            if name in maps:
                return cut(name)
        if required:
            raise ValueError(f"freeze maps have no {line.upper()}_{quantity} (nor {quantity}) map; "
                             f"maps given: {', '.join(sorted(maps))}")
        return np.full((x1 - x0, y1 - y0), np.nan)

    groups = np.asarray(line_set.groups)
    first = [line_set.names[int(np.nonzero(groups == g)[0][0])] for g in range(line_set.n_groups)]
    vel = [find(n, "VELOCITY") for n in first]
    vel_err = [find(n, "VELOCITY_ERR", False) for n in first]
    b = [find(n, "BROADENING", False) for n in first]
    b_err = [find(n, "BROADENING_ERR", False) for n in first]
    theta = np.stack(vel + b, axis=-1)
    err = np.stack(vel_err + b_err, axis=-1)
    return theta, err


def fit_region_frozen(cube, plan, theta_xy, theta_err_xy=None, region=None, *, batch_size: int | None = None, block: int = 64,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """Fit the amplitudes of every pixel of ``region`` at the kinematics ``theta_xy``
    ((x1 - x0, y1 - y0, P), see :func:`kinematic_maps`). Returns the same arrays as
    :func:`lucijax.fit.cube.fit_region` (PixelFit fields indexed [x - x0, y - y0], plus
    ``fwhm_cm1``). For the sinc (no broadening) only the velocities of ``theta_xy`` are used.
    """
    from lucijax.fit.cube import read_block, warn_own_noise

    nx, ny, _ = cube.shape
    x0, x1, y0, y1 = region or (0, nx, 0, ny)
    P = plan.spec.n_nonlinear
    theta_xy = np.asarray(theta_xy, np.float32)[..., :P]
    err_xy = np.full_like(theta_xy, np.nan) if theta_err_xy is None else np.asarray(theta_err_xy, np.float32)[..., :P]
    if theta_xy.shape[:2] != (x1 - x0, y1 - y0):
        raise ValueError(f"kinematics of shape {theta_xy.shape[:2]} do not match the region {(x1 - x0, y1 - y0)}")
    key = (id(plan.model), plan.settings)
    fitter = _FITTERS.get(key)
    if fitter is None or fitter[0] is not plan.model:
        _FITTERS[key] = fitter = (plan.model, make_frozen_fitter(plan.model, plan.settings))
    fitter = fitter[1]
    n_pix = (x1 - x0) * (y1 - y0)
    from lucijax.fit.cube import default_batch_size

    batch_size = max(1, min(int(batch_size or default_batch_size()), n_pix))
    out: dict[str, np.ndarray] = {}
    kept = 0  # fitted pixels without a noise-window noise
    bar = tqdm(total=n_pix, unit="spectra", desc="fitting (frozen)", disable=not progress or n_pix < 2 * batch_size)
    for bx0 in range(x0, x1, block):
        for by0 in range(y0, y1, block):
            bx1, by1 = min(bx0 + block, x1), min(by0 + block, y1)
            flat, fwhm_flat, noise_flat = read_block(cube, plan, (bx0, bx1, by0, by1))
            th = theta_xy[bx0 - x0 : bx1 - x0, by0 - y0 : by1 - y0].reshape(-1, P)
            er = err_xy[bx0 - x0 : bx1 - x0, by0 - y0 : by1 - y0].reshape(-1, P)
            parts = []
            for i in range(0, flat.shape[0], batch_size):
                sl = slice(i, i + batch_size)
                y, f, t, e = flat[sl], fwhm_flat[sl], th[sl], er[sl]
                n = y.shape[0]
                if n < batch_size:  # pad: one compiled shape
                    pad = batch_size - n
                    y = np.concatenate([y, np.full((pad, y.shape[1]), np.nan, y.dtype)])
                    f = np.concatenate([f, np.full(pad, f[0])])
                    t = np.concatenate([t, np.zeros((pad, P), t.dtype)])
                    e = np.concatenate([e, np.zeros((pad, P), e.dtype)])
                res = fitter(y, f, t, e)
                parts.append({k: np.asarray(v)[:n] for k, v in zip(PixelFit._fields, res)})
                bar.update(n)
            merged = {k: np.concatenate([p[k] for p in parts]) for k in PixelFit._fields}
            merged["fwhm_cm1"] = fwhm_flat.astype(np.float32)
            if noise_flat is not None:
                kept += adopt_noise(merged, noise_flat)
            for k, v in merged.items():
                v = v.reshape((bx1 - bx0, by1 - by0) + v.shape[1:])
                if k not in out:
                    out[k] = np.full((x1 - x0, y1 - y0) + v.shape[2:], np.nan if v.dtype.kind == "f" else 0, v.dtype)
                out[k][bx0 - x0 : bx1 - x0, by0 - y0 : by1 - y0] = v
    bar.close()
    warn_own_noise(kept, plan)
    return out


_FITTERS: dict = {}


__all__ = ["fit_frozen_spectrum", "make_frozen_fitter", "kinematic_maps", "fit_region_frozen"]
