"""Noise from a window that the user names (``Model(noise_window=...)``, ``--noise-window``).

* ``window_noise`` (:mod:`lucijax.description`) equals scipy's normal-scaled median
  absolute deviation, skips NaN and exact-zero channels (ORB's fill outside a spectrum's
  axis), gives NaN with too few channels, and divides each channel by its relative noise
  first.
* ``adopt_noise`` (:mod:`lucijax.solvers.noise`) rescales errors, reduced chi2 and S/N,
  and leaves pixels without a window noise as they were.
* A synthetic cube whose noise covers the whole axis (as an FTS spreads it), fitted with
  a window outside the SN3 band: the same best fit as without it, NOISE near the true
  sigma, errors x (window noise / fit noise) exactly, NOISEWIN in the FITS header, the
  same maps in any batch size, and the frozen fit uses the window too.
* Posteriors (``lucijax.sample(..., MH())``) of a cube whose out-of-band noise is 2x:
  their widths follow the window.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy import stats

import lucijax
from lucijax.description import MIN_NOISE_CHANNELS, parse_range, window_noise
from lucijax.solvers.noise import adopt_noise

pytestmark = pytest.mark.timeout(300)

LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
#: below the SN3 band (14599-15439 cm-1) on the synthetic axis (14101-15861 cm-1)
OUT_OF_BAND = "14150:14550"


def test_window_noise_is_the_normal_scaled_mad():
    rng = np.random.default_rng(3)
    y = rng.normal(5.0, 2.0, (400, 90))
    got = window_noise(y)
    ref = stats.median_abs_deviation(y, axis=1, scale="normal")
    np.testing.assert_allclose(got, ref, rtol=1e-5)  # 1.4826 vs 1 / Phi^-1(3/4)
    assert abs(np.median(got) / 2.0 - 1.0) < 0.03
    # NaN and exact zeros are not channels of the window
    z = y.copy()
    z[:, :30] = 0.0
    z[:, 30:35] = np.nan
    np.testing.assert_allclose(window_noise(z), stats.median_abs_deviation(y[:, 35:], axis=1, scale="normal"), rtol=1e-4)
    few = y[:, : MIN_NOISE_CHANNELS - 1]
    assert np.all(np.isnan(window_noise(few)))
    assert np.all(np.isfinite(window_noise(y[:, :MIN_NOISE_CHANNELS])))


def test_window_noise_divides_by_the_relative_noise():
    rng = np.random.default_rng(4)
    shape = np.linspace(0.5, 3.0, 120)  # relative noise of each channel
    y = rng.normal(0.0, 1.5, (300, 120)) * shape
    weight = 1.0 / shape
    weight[:10] = 0.0  # unusable channels
    got = window_noise(y, weight)
    np.testing.assert_allclose(got, stats.median_abs_deviation(y[:, 10:] / shape[10:], axis=1, scale="normal"), rtol=1e-4)
    assert abs(np.median(got) / 1.5 - 1.0) < 0.03


def test_adopt_noise_rescales_errors_chi2_and_snr():
    fields = {
        "velocity_err_kms": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32),
        "broadening_err_kms": np.array([[1.0], [1.0], [1.0]], np.float32),
        "amplitude_err": np.array([[2.0, 4.0], [1.0, 1.0], [1.0, 1.0]], np.float32),
        "flux_err_cm1": np.array([[3.0, 6.0], [1.0, 1.0], [1.0, 1.0]], np.float32),
        "velocity_kms": np.array([[10.0, 20.0], [0.0, 0.0], [0.0, 0.0]], np.float32),
        "noise": np.array([2.0, 1.0, np.nan], np.float32),
        "chi2_reduced": np.array([1.0, 3.0, np.nan], np.float32),
        "snr": np.array([10.0, 5.0, np.nan], np.float32),
    }
    own_noise = fields["noise"].copy()
    used = adopt_noise(fields, np.array([4.0, np.nan, 1.0]))
    # pixel 0 rescaled; pixel 1: fitted, no window noise (keeps its own); pixel 2: not fitted
    np.testing.assert_array_equal(used, [True, False, False])
    assert np.sum(~used & np.isfinite(own_noise)) == 1  # the pixels that kept the fit's own noise
    np.testing.assert_allclose(fields["velocity_err_kms"], [[2.0, 4.0], [3.0, 4.0], [5.0, 6.0]])
    np.testing.assert_allclose(fields["amplitude_err"][0], [4.0, 8.0])
    np.testing.assert_allclose(fields["flux_err_cm1"][0], [6.0, 12.0])
    np.testing.assert_allclose(fields["broadening_err_kms"][:, 0], [2.0, 1.0, 1.0])
    np.testing.assert_allclose(fields["noise"], [4.0, 1.0, np.nan])
    np.testing.assert_allclose(fields["chi2_reduced"], [0.25, 3.0, np.nan])
    np.testing.assert_allclose(fields["snr"], [5.0, 5.0, np.nan])
    np.testing.assert_array_equal(fields["velocity_kms"][0], [10.0, 20.0])  # best fit untouched
    assert fields["noise"].dtype == np.float32


def test_bad_noise_windows_name_themselves():
    with pytest.raises(ValueError, match="cannot read noise window"):
        parse_range("14100-14500", "noise window")
    with pytest.raises(ValueError, match="cannot read noise window"):
        lucijax.Model(LINES, noise_window="14100-14500")
    from lucijax.io.header import header_from_attrs
    from lucijax.simulate import filter_header

    attrs = filter_header("SN3")
    header = header_from_attrs(attrs, attrs["step_nb"], "synthetic")
    with pytest.raises(ValueError, match="noise window 16500.0-16600.0 cm-1 holds 0 channels"):
        lucijax.Model(LINES, profile="sinc", noise_window=(16500.0, 16600.0)).bind(header)


def test_a_noise_window_inside_the_fit_window_is_flagged(caplog):
    from lucijax.io.header import header_from_attrs
    from lucijax.simulate import filter_header

    attrs = filter_header("SN3")
    header = header_from_attrs(attrs, attrs["step_nb"], "synthetic")
    with caplog.at_level("WARNING", logger="lucijax.description"):
        lucijax.Model(LINES, profile="sinc", noise_window=(14150.0, 14550.0)).bind(header)
    assert "overlaps" not in caplog.text
    with caplog.at_level("WARNING", logger="lucijax.description"):
        bound = lucijax.Model(LINES, profile="sinc", noise_window=(14700.0, 14900.0)).bind(header)
    assert "noise window 14700.0-14900.0 cm-1 overlaps the fit window" in caplog.text
    assert bound.noise_channels.size > 10


@pytest.fixture(scope="module")
def window_fits(tmp_path_factory):
    """A 10x10 synthetic cube fitted without and with an out-of-band noise window."""
    from lucijax.simulate import make_cube

    cube = make_cube(10, 10, seed=21, snr_range=(5.0, 40.0))
    path = tmp_path_factory.mktemp("noise_window") / "c.hdf5"
    cube.write(path)
    start = lucijax.MAP(start="matched")
    ex64, ex7 = lucijax.Execution(batch_size=64, progress=False), lucijax.Execution(batch_size=7, progress=False)
    own = lucijax.fit(path, lucijax.Model(LINES, profile="sincgauss"), start, execution=ex64)
    model = lucijax.Model(LINES, profile="sincgauss", noise_window=OUT_OF_BAND)
    win = lucijax.fit(path, model, start, execution=ex64)
    win7 = lucijax.fit(path, model, start, execution=ex7)
    return cube, path, own, win, win7


def test_noise_window_rescales_the_errors_of_the_same_fit(window_fits):
    cube, _, own, win, _ = window_fits
    m0, m1 = own.maps, win.maps
    np.testing.assert_array_equal(m0["STATUS"], m1["STATUS"])
    np.testing.assert_array_equal(m0["HALPHA_VELOCITY"], m1["HALPHA_VELOCITY"])
    np.testing.assert_array_equal(m0["HALPHA_FLUX"], m1["HALPHA_FLUX"])
    # NOISE: the robust std of ~215 pure-noise channels (~7 % scatter per pixel)
    true = cube.truth["NOISE"]
    ratio = m1["NOISE"] / true
    assert abs(np.median(ratio) - 1.0) < 0.03
    assert 0.03 < np.std(ratio) < 0.12
    scale = m1["NOISE"] / m0["NOISE"]
    for name in ("HALPHA_VELOCITY_ERR", "HALPHA_FLUX_ERR", "HALPHA_BROADENING_ERR", "SII6731_AMPLITUDE_ERR"):
        np.testing.assert_allclose(m1[name], m0[name] * scale, rtol=2e-6, err_msg=name)
    np.testing.assert_allclose(m1["CHI2"] * m1["NOISE"] ** 2, m0["CHI2"] * m0["NOISE"] ** 2, rtol=1e-5)
    np.testing.assert_allclose(m1["SNR"] * m1["NOISE"], m0["SNR"] * m0["NOISE"], rtol=1e-5)
    # the window's noise is the model-free truth: chi2 ~1 against it
    assert abs(np.median(m1["CHI2"]) - 1.0) < 0.08


def test_noise_window_maps_do_not_depend_on_the_batch_size(window_fits):
    _, _, _, win, win7 = window_fits
    # the window noise comes from the data alone; the fit itself changes with the batch
    # layout at rounding level only (tests/test_driver.py)
    np.testing.assert_array_equal(win7.maps["NOISE"], win.maps["NOISE"])
    for name in ("HALPHA_VELOCITY_ERR", "CHI2", "SNR"):
        np.testing.assert_allclose(win7.maps[name], win.maps[name], rtol=1e-2, err_msg=name)


def test_noise_window_is_recorded_in_the_fits_header(window_fits, tmp_path):
    _, _, own, win, _ = window_fits
    with fits.open(win.write(tmp_path / "win") / "maps.fits") as hdul:
        assert hdul[0].header["NOISEWIN"] == "14150.0:14550.0"
    with fits.open(own.write(tmp_path / "own") / "maps.fits") as hdul:
        assert "NOISEWIN" not in hdul[0].header


def test_frozen_fit_uses_the_noise_window(window_fits):
    _, path, _, win, _ = window_fits
    frozen = lucijax.fit(path, lucijax.Model(LINES, profile="sincgauss", noise_window=OUT_OF_BAND),
                         lucijax.Frozen(win.maps), execution=lucijax.Execution(batch_size=64, progress=False))
    np.testing.assert_allclose(frozen.maps["NOISE"], win.maps["NOISE"], rtol=1e-6)


def test_posteriors_use_the_window_noise(tmp_path):
    """Out-of-band noise made 2x the in-band noise: the MAP errors and the posterior widths
    (``lucijax.sample(..., MH())`` after a matched-filter MAP fit) both follow the window's
    noise."""
    import dataclasses

    from lucijax.simulate import make_cube

    cube = make_cube(3, 3, seed=5, snr_range=(15.0, 30.0))
    rng = np.random.default_rng(6)
    oob = cube.axis_cm1 < 14550.0
    data = cube.data.copy()
    data[..., oob] += rng.normal(0.0, np.sqrt(3.0) * cube.truth["NOISE"][0, 0], data[..., oob].shape)  # sigma x 2
    path = tmp_path / "c.hdf5"
    dataclasses.replace(cube, data=data).write(path)
    ex = lucijax.Execution(progress=False)

    def posterior(model):
        fit = lucijax.fit(path, model, lucijax.MAP(start="matched"), execution=ex)
        return lucijax.sample(path, fit, lucijax.MH(), execution=ex)

    own = posterior(lucijax.Model(LINES, profile="sincgauss"))
    win = posterior(lucijax.Model(LINES, profile="sincgauss", noise_window=OUT_OF_BAND))
    noise_ratio = win.maps["NOISE"] / own.maps["NOISE"]
    assert 1.6 < np.median(noise_ratio) < 2.4
    err_ratio = win.maps["HALPHA_VELOCITY_ERR"] / own.maps["HALPHA_VELOCITY_ERR"]  # posterior half widths
    print(f"\nnoise x {np.median(noise_ratio):.3f}, posterior velocity width x {np.median(err_ratio):.3f}")
    np.testing.assert_allclose(np.median(err_ratio), np.median(noise_ratio), rtol=0.15)
