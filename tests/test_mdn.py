"""The network (lucijax.mdn): preprocessing against numpy, the shipped SN3 weights against
truth on spectra from the package's independent simulator (lucijax.simulate.render_spectra
on a real SN3 axis, not the training generator), vmap == per-spectrum, clear errors.

The acceptance numbers themselves (20,000 held-out spectra, per SNR bin, all filters) are
measured by benchmarks/bench_mdn.py; here a small batch checks them with margins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lucijax.mdn import MissingWeightsError, available_filters, load_predictor
from lucijax.mdn.config import RECIPES
from lucijax.mdn.preprocess import features, interp_weights, masked_median, uniform_interp_weights
from lucijax.physics import instrument
from lucijax.physics.lines import make_line_set
from lucijax.simulate import DEFAULT_LINES, SETUPS, filter_header, render_spectra

pytestmark = pytest.mark.timeout(240)

needs_sn3 = pytest.mark.skipif("SN3" not in available_filters(), reason="no shipped SN3 MDN weights")


def sn3_window_axis(header=None):
    """Observed axis of the SN3 filter band channels of the synthetic SN3 set-up."""
    header = header or filter_header("SN3")
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]
    lo, hi = instrument.get_filter("SN3").band_cm1
    return axis[(axis >= lo) & (axis <= hi)]


def simulate_sn3(n, seed, snr_range=(10.0, 100.0), redshift=0.0):
    """Spectra of the 5 SN3 lines on the SN3 band axis (R ~ 4700, per-pixel FWHM spread of
    1 %), by lucijax.simulate.render_spectra, with white noise of sigma 1."""
    rng = np.random.default_rng(seed)
    header = filter_header("SN3")
    axis = sn3_window_axis(header)
    ls = make_line_set(DEFAULT_LINES)
    s = SETUPS["SN3"]
    corr = header["axis_corr"] * (1 + rng.uniform(-0.01, 0.01, n))
    fwhm = instrument.sinc_fwhm_cm1(s["step_nm"], s["step_nb"], s["zpd_index"], corr)
    v = rng.uniform(-400, 400, (n, 1))
    b = rng.uniform(0, 150, (n, 1))
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n))
    # primary lines: Halpha, NII6583, SII6716, SII6731 (NII6548 tied); Halpha brightest
    amp = np.stack([snr, snr * rng.uniform(0.1, 0.6, n), snr * rng.uniform(0.05, 0.3, n),
                    snr * rng.uniform(0.05, 0.3, n)], axis=1)
    cont = rng.uniform(0, 5, n)
    y = render_spectra(ls, "sincgauss", axis, fwhm, v, b, amp, cont, redshift=redshift)
    y = y + rng.normal(0, 1, y.shape)
    return axis, y.astype(np.float32), fwhm, np.concatenate([v, b], axis=1), snr


# ----------------------------------------------------------------------------- preprocessing
def test_interp_weights_equal_numpy_interp():
    rng = np.random.default_rng(1)
    axis = np.sort(rng.uniform(100.0, 200.0, 57))
    grid = np.linspace(90.0, 210.0, 301)
    y = rng.normal(size=axis.size)
    lo, w, inside = interp_weights(axis, grid)
    got = np.where(inside, (1 - w) * y[lo] + w * y[lo + 1], 0.0)
    np.testing.assert_allclose(got, np.interp(grid, axis, y, left=0.0, right=0.0), atol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        interp_weights(axis[::-1], grid)


def test_uniform_interp_weights_equal_numpy_interp():
    first, step, n_valid = 3.7, 0.83, 40
    axis = first + step * np.arange(n_valid)
    grid = np.linspace(0.0, 40.0, 97)
    y = np.random.default_rng(2).normal(size=n_valid + 5)  # longer array, padded
    lo, w, inside = uniform_interp_weights(jnp.asarray(grid, jnp.float32), first, step, n_valid)
    lo, w, inside = (np.asarray(a) for a in (lo, w, inside))
    got = np.where(inside, (1 - w) * y[lo] + w * y[lo + 1], 0.0)
    np.testing.assert_allclose(got, np.interp(grid, axis, y[:n_valid], left=0.0, right=0.0), atol=1e-5)


def test_masked_median_brackets_numpy_median():
    """The bisection median lies between the two central order statistics (odd n: equals
    the median) to the bracket's width."""
    rng = np.random.default_rng(4)
    for n in (7, 8, 400, 401):
        v = rng.standard_cauchy(n).astype(np.float32)
        valid = rng.uniform(size=n) > 0.1
        got = float(masked_median(jnp.asarray(v), jnp.asarray(valid)))
        vs = np.sort(v[valid])
        k = (vs.size + 1) // 2
        tol = (vs[-1] - vs[0]) * 2.0**-20 + 1e-6 * np.abs(vs).max()
        assert vs[k - 1] - tol <= got <= vs[min(k, vs.size - 1)] + tol
    assert np.isnan(float(masked_median(jnp.ones(5), jnp.zeros(5, bool))))


def test_features_resample_the_continuum_subtracted_spectrum():
    """x = (y - median) resampled by np.interp, divided by max(peak, noise); the scalars are
    the logs of fwhm/step, channel/step and scale/noise; NaN channels are ignored."""
    rng = np.random.default_rng(3)
    axis = np.linspace(14600.0, 15440.0, 400)
    y = 3.0 + rng.normal(0, 0.5, axis.size) + 20 * np.exp(-0.5 * ((axis - 15237) / 2.0) ** 2)
    y[17] = np.nan
    recipe = RECIPES["SN3"]
    grid = np.linspace(recipe.grid_min_cm1, recipe.grid_max_cm1, recipe.n_grid)
    lo, w, inside = interp_weights(axis, grid)
    x, s = features(jnp.asarray(y, jnp.float32), lo, w, inside, 2.5, axis[1] - axis[0], recipe.grid_step_cm1)
    x, s = np.asarray(x), np.asarray(s)
    # lower medians (what the bisection returns; the spectrum has 399 valid channels)
    level = np.sort(y[np.isfinite(y)])[199]
    d = np.abs(np.diff(y))
    noise = 1.4826 * np.sort(d[np.isfinite(d)])[(np.isfinite(d).sum() + 1) // 2 - 1] / np.sqrt(2)
    ref = np.interp(grid, axis, np.where(np.isfinite(y), y - level, 0.0))
    scale = max(ref.max(), noise)
    np.testing.assert_allclose(x, ref / scale, atol=1e-4)
    np.testing.assert_allclose(s, [np.log(2.5 / recipe.grid_step_cm1), np.log((axis[1] - axis[0]) / recipe.grid_step_cm1),
                                   np.log(scale / noise)], rtol=1e-4)
    assert abs(noise - 0.5) < 0.06


# ------------------------------------------------------------------------------ predictor
def test_unknown_filter_is_a_clear_error():
    with pytest.raises(MissingWeightsError, match="no trained CNN for filter 'C4'.*--no-mdn"):
        load_predictor("C4", np.linspace(12000, 12600, 100), mdn=False)


@needs_sn3
def test_axis_outside_the_network_range_is_an_error():
    with pytest.raises(ValueError, match="does not overlap"):
        load_predictor("SN3", np.linspace(20000, 21000, 300))


@pytest.fixture(scope="module")
def sn3_batch():
    return simulate_sn3(1500, seed=11)


@pytest.fixture(scope="module")
def sn3_predictions(sn3_batch):
    axis, y, fwhm, theta, snr = sn3_batch
    predict = load_predictor("SN3", axis)
    mean, sigma = jax.jit(jax.vmap(predict))(jnp.asarray(y), jnp.asarray(fwhm, jnp.float32))
    return predict, np.asarray(mean), np.asarray(sigma)


@needs_sn3
def test_shipped_sn3_accuracy_and_calibration(sn3_batch, sn3_predictions):
    """Held-out spectra (another simulator, SNR 10-100): acceptance 1 with margins
    (RMSE <= 8 km/s -> 12; coverage >= 99 % -> 97 %; z robust std 0.8-1.25 -> 0.65-1.4)."""
    _, _, _, theta, _ = sn3_batch
    _, mean, sigma = sn3_predictions
    assert mean.shape == (len(theta), 2) and sigma.shape == (len(theta), 2)
    assert np.all(np.isfinite(mean)) and np.all(sigma > 0)
    for j, name in enumerate(("velocity", "broadening")):
        err = mean[:, j] - theta[:, j]
        rmse = float(np.sqrt(np.mean(err**2)))
        z = err / sigma[:, j]
        cover = float(np.mean(np.abs(z) <= 3))
        zstd = float(1.4826 * np.median(np.abs(z - np.median(z))))
        print(f"\nMDN SN3 {name}: RMSE {rmse:.2f} km/s, coverage {cover:.4f}, z robust std {zstd:.3f}")
        assert rmse <= 12.0
        assert cover >= 0.97
        assert 0.65 <= zstd <= 1.4


@needs_sn3
def test_vmap_equals_per_spectrum_and_is_deterministic(sn3_batch, sn3_predictions):
    """One spectrum alone gives what it gives in a batch; the same batch twice gives
    bit-identical outputs; batches of different sizes agree to float32 rounding (XLA's CPU
    code may differ between batch shapes, so they need not be bit-identical)."""
    axis, y, fwhm, _, _ = sn3_batch
    predict, mean, sigma = sn3_predictions
    one = jax.jit(predict)
    for i in range(4):
        m, s = one(jnp.asarray(y[i]), jnp.float32(fwhm[i]))
        np.testing.assert_allclose(np.asarray(m), mean[i], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(np.asarray(s), sigma[i], rtol=1e-4, atol=1e-3)
    batch = jax.jit(jax.vmap(predict))
    m2, s2 = batch(jnp.asarray(y[:64]), jnp.asarray(fwhm[:64], jnp.float32))
    m3, s3 = batch(jnp.asarray(y[:64]), jnp.asarray(fwhm[:64], jnp.float32))
    np.testing.assert_array_equal(np.asarray(m3), np.asarray(m2))
    np.testing.assert_array_equal(np.asarray(s3), np.asarray(s2))
    # 64 spectra vs the fixture's 1500 (km/s)
    np.testing.assert_allclose(np.asarray(m2), mean[:64], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(s2), sigma[:64], rtol=1e-5, atol=1e-4)


@needs_sn3
def test_redshift_and_bad_channels():
    """A redshifted cube is de-redshifted by the predictor (residual velocity); NaN
    channels are ignored."""
    z = 0.002
    axis, y, fwhm, theta, _ = simulate_sn3(300, seed=12, snr_range=(20.0, 100.0), redshift=z)
    y[:, 100:103] = np.nan
    predict = load_predictor("SN3", axis, redshift=z)
    mean, sigma = jax.jit(jax.vmap(predict))(jnp.asarray(y), jnp.asarray(fwhm * (1 + z), jnp.float32))
    mean = np.asarray(mean)
    assert np.all(np.isfinite(mean))
    rmse_v = float(np.sqrt(np.mean((mean[:, 0] - theta[:, 0]) ** 2)))
    print(f"\nMDN SN3 z={z}: velocity RMSE {rmse_v:.2f} km/s")
    assert rmse_v <= 12.0
    # the same spectra read without the redshift are off by ~ c z = 600 km/s
    wrong = load_predictor("SN3", axis, redshift=0.0)
    mean0, _ = jax.jit(jax.vmap(wrong))(jnp.asarray(y), jnp.asarray(fwhm, jnp.float32))
    rmse_wrong = float(np.sqrt(np.mean((np.asarray(mean0)[:, 0] - theta[:, 0]) ** 2)))
    assert rmse_wrong > 10 * rmse_v


@pytest.mark.skipif("SN3" not in available_filters(mdn=False), reason="no shipped SN3 CNN weights")
def test_cnn_variant_gives_point_estimates(sn3_batch):
    """mdn=False: the MSE-trained CNN; sigma is NaN by construction, means close to truth."""
    axis, y, fwhm, theta, _ = sn3_batch
    predict = load_predictor("SN3", axis, mdn=False)
    mean, sigma = jax.jit(jax.vmap(predict))(jnp.asarray(y[:500]), jnp.asarray(fwhm[:500], jnp.float32))
    mean, sigma = np.asarray(mean), np.asarray(sigma)
    assert np.all(np.isnan(sigma)) and np.all(np.isfinite(mean))
    rmse = np.sqrt(np.mean((mean - theta[:500]) ** 2, axis=0))
    print(f"\nCNN SN3: RMSE velocity {rmse[0]:.2f}, broadening {rmse[1]:.2f} km/s")
    assert np.all(rmse <= 12.0)
