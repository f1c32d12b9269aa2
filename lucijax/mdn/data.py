"""Training and test spectra for the network, drawn from the fit's own line shapes.

Each spectrum is a sincgauss line set of a filter (:data:`lucijax.mdn.config.RECIPES`) on
its own evenly sampled rest-frame axis covering the filter band: the resolution R at the
reference line is log-uniform, the zero-path-difference fraction f of the interferogram
sets the channel width ``d = fwhm (1 - f) / 1.20671`` (ORB: ``fwhm/d = 1.20671 N/(N -
zpd)``), the axis phase is random, and each pixel's FWHM differs from the cube's by up to
``fwhm_spread`` (calibration map). White Gaussian noise of sigma 1; SNR = brightest line
peak / noise. Spectra are simulated in the rest frame: de-redshifting an observed
spectrum (axis and FWHM times 1 + z) gives exactly such a spectrum.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.constants import C_KMS, SINC_FWHM
from lucijax.physics.lines import LINE_CATALOGUE_NM
from lucijax.physics.lineshapes import sincgauss
from lucijax.mdn.config import FilterRecipe
from lucijax.mdn.preprocess import features, uniform_interp_weights


def rest_cm1(recipe: FilterRecipe) -> np.ndarray:
    return np.array([1e7 / LINE_CATALOGUE_NM[name] for name in recipe.lines])


def max_channels(recipe: FilterRecipe) -> int:
    """Length of the (NaN-padded) arrays holding the simulated spectra."""
    sigma_ref = rest_cm1(recipe)[0]
    d_min = sigma_ref / recipe.resolution_range[1] * (1 - recipe.zpd_fraction_range[1]) / SINC_FWHM * (1 - recipe.fwhm_spread)
    return int(math.ceil((recipe.band_max_cm1 - recipe.band_min_cm1) / d_min)) + 2


def sample_parameters(recipe: FilterRecipe, n: int, rng: np.random.Generator) -> dict:
    """Random truth and instrument parameters of ``n`` spectra (numpy, float64)."""
    sigma_ref = rest_cm1(recipe)[0]
    log_u = lambda lo, hi, size=n: np.exp(rng.uniform(np.log(lo), np.log(hi), size))  # noqa: E731
    resolution = log_u(*recipe.resolution_range)
    zpd = rng.uniform(*recipe.zpd_fraction_range, n)
    fwhm_cube = sigma_ref / resolution
    channel = fwhm_cube * (1.0 - zpd) / SINC_FWHM
    fwhm = fwhm_cube * (1.0 + rng.uniform(-recipe.fwhm_spread, recipe.fwhm_spread, n))
    first = recipe.band_min_cm1 + rng.uniform(0.0, 1.0, n) * channel
    n_valid = np.floor((recipe.band_max_cm1 - first) / channel).astype(np.int64) + 1

    amp = np.ones((n, len(recipe.lines)))
    for i, name in enumerate(recipe.lines[1:], start=1):
        prim, lo, hi, log = recipe.ratios[name]
        r = log_u(lo, hi) if log and lo != hi else rng.uniform(lo, hi, n)
        base = amp[:, 0] if prim is None else amp[:, recipe.lines.index(prim)]
        amp[:, i] = r * base
    snr = log_u(*recipe.snr_range)
    amp *= (snr / amp.max(axis=1))[:, None]
    return {
        "velocity_kms": rng.uniform(*recipe.velocity_range_kms, n),
        "broadening_kms": rng.uniform(*recipe.broadening_range_kms, n),
        "snr": snr,
        "resolution": resolution,
        "fwhm_cm1": fwhm,
        "channel_cm1": channel,
        "first_cm1": first,
        "n_valid": n_valid,
        "amplitudes": amp,
        "continuum": rng.uniform(*recipe.continuum_range, n),
        "slope": rng.uniform(-recipe.continuum_slope, recipe.continuum_slope, n),
    }


def make_renderer(recipe: FilterRecipe):
    """A jitted ``(params dict of arrays, key) -> (spectra (B, K) NaN-padded, x, scalars)``."""
    k_max = max_channels(recipe)
    rest = jnp.asarray(rest_cm1(recipe), jnp.float32)
    ref = float(recipe.band_min_cm1)  # float32 positions relative to the band start
    grid_rel = jnp.asarray(np.linspace(recipe.grid_min_cm1, recipe.grid_max_cm1, recipe.n_grid) - ref, jnp.float32)
    k = jnp.arange(k_max, dtype=jnp.float32)
    width = recipe.band_max_cm1 - recipe.band_min_cm1
    step = recipe.grid_step_cm1

    def one(p, key):
        axis_rel = (p["first_cm1"] - ref) + k * p["channel_cm1"]
        beta = p["velocity_kms"] / C_KMS
        x0 = rest * jnp.sqrt((1.0 - beta) / (1.0 + beta))
        sg = x0 * p["broadening_kms"] / C_KMS
        prof = sincgauss(axis_rel[:, None] - (x0 - ref)[None, :], p["fwhm_cm1"], sg[None, :])
        t = 2.0 * axis_rel / width - 1.0
        y = prof @ p["amplitudes"] + p["continuum"] + p["slope"] * t
        y = y + jax.random.normal(key, y.shape)
        y = jnp.where(k < p["n_valid"], y, jnp.nan)
        lo, w, inside = uniform_interp_weights(grid_rel, p["first_cm1"] - ref, p["channel_cm1"], p["n_valid"])
        x, s = features(y, lo, w, inside, p["fwhm_cm1"], p["channel_cm1"], step)
        return y, x, s

    batch = jax.jit(jax.vmap(one))

    def render(params: dict, key):
        keys = jax.random.split(key, len(params["snr"]))
        p = {name: jnp.asarray(params[name], jnp.int32 if name == "n_valid" else jnp.float32) for name in
             ("velocity_kms", "broadening_kms", "fwhm_cm1", "channel_cm1", "first_cm1", "n_valid", "amplitudes",
              "continuum", "slope", "snr")}
        return batch(p, keys)

    return render


def make_dataset(recipe: FilterRecipe, n: int, seed: int, chunk: int = 4096, progress: bool = True, keep_spectra: bool = False):
    """``n`` spectra of ``recipe``: dict with network inputs ``x`` (n, n_grid), ``scalars``
    (n, 3), truth ``theta`` (n, 2) = [velocity, broadening] km/s and the parameters."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    params = sample_parameters(recipe, n, rng)
    render = make_renderer(recipe)
    key = jax.random.PRNGKey(seed)
    xs, ss, ys = [], [], []
    for i in tqdm(range(0, n, chunk), desc=f"simulating {recipe.filter_name}", disable=not progress, unit="chunk"):
        sl = {k: v[i : i + chunk] for k, v in params.items()}
        m = len(sl["snr"])
        if m < chunk:  # one compiled shape: pad the last chunk
            sl = {k: np.concatenate([v, np.repeat(v[-1:], chunk - m, axis=0)]) for k, v in sl.items()}
        y, x, s = render(sl, jax.random.fold_in(key, i))
        xs.append(np.asarray(x)[:m])
        ss.append(np.asarray(s)[:m])
        if keep_spectra:
            ys.append(np.asarray(y)[:m])
    out = dict(params)
    out["x"] = np.concatenate(xs)
    out["scalars"] = np.concatenate(ss)
    out["theta"] = np.stack([params["velocity_kms"], params["broadening_kms"]], axis=1)
    if keep_spectra:
        out["spectra"] = np.concatenate(ys)
    return out
