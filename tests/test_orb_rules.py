"""ORB's reading rules for real files (issue 20), each on a file written the way ORB writes it.

Checked against ORB's own source (``orb/cube.py``: ``SpectralCube.reset_params``,
``HDFCube.get_calibration_laser_map``; ``orb/utils/spectrum.py``: ``compute_line_fwhm``;
``orb/utils/io.py``: ``read_fits``):

- a level-3 cube is flux calibrated whenever it carries ``flambda``; its ``flux_calibration``
  attribute does not decide;
- a cube that carries ``flambda2`` is level 2.5 (CFHT's version; ORCS's documentation, "HDF5
  Cubes formatting (levels)": no ORB source read here has the rule): values already
  calibrated, in erg/cm^2/s/A;
- the calibration laser map may live in a FITS file named by ``calibration_laser_map_path``
  (relative paths from the cube's folder; FITS ``[y, x]`` transposed to ``[x, y]``; cut to
  ``cropped_bbox``; interpolated when its size differs from the image's);
- the instrumental line width is the sinc's times the ``apodization`` coefficient.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import lucijax
from lucijax import simulate
from lucijax.description import pixel_fwhm_cm1
from lucijax.io import COUNTS_UNIT, FLUX_UNIT, open_cube, write_orb_cube
from lucijax.io.spectrum import OrbSpectrum

pytestmark = pytest.mark.timeout(300)

M57 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orb-examples" / "m57_spectrum0.hdf5"
LINES = ["Halpha", "NII6583", "NII6548"]


def _counts(nx, ny, nz):
    x, y, k = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    return (100.0 + 1000.0 * x + 10.0 * y + k / 8.0).astype(np.float32)


def _attrs(nz):
    syn = simulate.filter_header("SN3")
    return dict(syn, step_nb=nz, zpd_index=nz // 5)


# -- flambda decides the flux calibration ----------------------------------------------------
@pytest.mark.parametrize("flag", [None, False, True])
def test_level3_with_flambda_is_calibrated_whatever_the_flag_says(tmp_path, flag):
    nz = 12
    counts = _counts(2, 3, nz)
    attrs = dict(_attrs(nz), flambda=2e-17, exposure_time=12.5)
    if flag is not None:
        attrs["flux_calibration"] = flag
    path = tmp_path / "l3.hdf5"
    write_orb_cube(path, counts, attrs, level=3, calib_map=np.full((2, 3), 563.9))
    with open_cube(path) as cube:
        assert cube.header.flux_unit == FLUX_UNIT
        np.testing.assert_allclose(cube.read_spectra(0, 2, 0, 3), counts.astype(np.float64) * 2e-17 / nz / 12.5,
                                   rtol=1e-6)


def test_level3_without_flambda_stays_in_counts_and_says_so(tmp_path):
    nz = 12
    counts = _counts(2, 3, nz)
    path = tmp_path / "l3.hdf5"
    write_orb_cube(path, counts, dict(_attrs(nz), exposure_time=12.5, flux_calibration=True), level=3,
                   calib_map=np.full((2, 3), 563.9))
    with pytest.warns(UserWarning, match="no 'flambda'"):
        cube = open_cube(path)
    with cube:
        assert cube.header.flux_unit == COUNTS_UNIT
        np.testing.assert_array_equal(cube.read_spectra(0, 2, 0, 3), counts)


# -- level 2.5: flambda2 means calibrated already ------------------------------------------------
def _flambda_vector(nz):
    """A per-channel calibration shaped like a filter's inverse transmission."""
    k = np.arange(nz)
    return 1e-17 * (1.0 + 0.5 * ((k - nz / 2) / (nz / 2)) ** 2)


def test_level25_with_flambda2_is_read_as_calibrated_values_not_calibrated_again(tmp_path):
    """ORCS's documentation ("HDF5 Cubes formatting (levels)"): level 2.5 is laid out like
    level 3, but its values were calibrated with ``flambda2`` and written in erg/cm^2/s/A.
    The same spectra written as level 3 in counts read back the same, with the same noise
    weights; applying ``flambda`` to the level-2.5 values again would scale them by ~1e-20."""
    nz, t_exp = 12, 12.5
    fl = _flambda_vector(nz)
    counts = _counts(2, 3, nz)
    calibrated = counts.astype(np.float64) * fl / nz / t_exp
    l3, l25 = tmp_path / "l3.hdf5", tmp_path / "l25.hdf5"
    write_orb_cube(l3, counts, dict(_attrs(nz), flambda=fl, exposure_time=t_exp), level=3,
                   calib_map=np.full((2, 3), 563.9))
    write_orb_cube(l25, calibrated.astype(np.float32), dict(_attrs(nz), flambda=fl, flambda2=fl, exposure_time=t_exp),
                   level=3, calib_map=np.full((2, 3), 563.9))
    with open_cube(l3) as a, open_cube(l25) as b:
        assert b.level == 2.5 and a.level == 3
        assert b.header.flux_unit == FLUX_UNIT
        np.testing.assert_allclose(b.read_spectra(0, 2, 0, 3), calibrated, rtol=1e-6)
        np.testing.assert_allclose(b.read_spectra(0, 2, 0, 3), a.read_spectra(0, 2, 0, 3), rtol=1e-6)
        np.testing.assert_allclose(b.header.noise_shape(), fl / np.median(fl), rtol=1e-12)
        np.testing.assert_allclose(b.header.noise_shape(), a.header.noise_shape(), rtol=1e-12)


def test_level25_noise_weights_follow_flambda2_not_flambda(tmp_path):
    """The values of a level-2.5 cube carry the noise of the vector they were calibrated
    with (``flambda2``), whatever ``flambda`` holds."""
    nz = 12
    fl2 = _flambda_vector(nz)
    path = tmp_path / "l25.hdf5"
    write_orb_cube(path, _counts(2, 3, nz) * 1e-18, dict(_attrs(nz), flambda=2e-17, flambda2=fl2, exposure_time=10.0),
                   level=3, calib_map=np.full((2, 3), 563.9))
    with open_cube(path) as cube:
        np.testing.assert_allclose(cube.header.noise_shape(), fl2 / np.median(fl2), rtol=1e-12)
        np.testing.assert_allclose(cube.read_spectra(0, 2, 0, 3), _counts(2, 3, nz) * np.float32(1e-18), rtol=1e-6)


# -- the calibration laser map in a second file ------------------------------------------------
def _write_map_fits(path, cmap_xy):
    """As ORB writes an image: FITS data [y, x] (``write_fits`` transposes [x, y])."""
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ascontiguousarray(cmap_xy.T))]).writeto(path)


def test_calibration_laser_map_path_is_followed(tmp_path):
    syn = simulate.make_cube(5, 4, seed=3, calib_spread=0.02)
    sub = tmp_path / "cal"
    sub.mkdir()
    _write_map_fits(sub / "laser.fits", syn.calib_map)
    path = tmp_path / "ext.hdf5"
    # relative to the cube's folder, as ORB resolves it
    write_orb_cube(path, syn.data, dict(syn.attrs, calibration_laser_map_path="cal/laser.fits"))
    with open_cube(path) as cube:
        np.testing.assert_array_equal(cube.read_calib_map(0, 5, 0, 4), syn.calib_map)
        np.testing.assert_array_equal(cube.read_calib_map(1, 3, 2, 4), syn.calib_map[1:3, 2:4])


def test_cropped_cube_takes_its_box_of_the_laser_map(tmp_path):
    big = np.add.outer(np.arange(9.0), 0.1 * np.arange(7.0)) + 540.0  # [x, y]
    _write_map_fits(tmp_path / "laser.fits", big)
    syn = simulate.make_cube(4, 3, seed=1)
    path = tmp_path / "crop.hdf5"
    write_orb_cube(path, syn.data, dict(syn.attrs, calibration_laser_map_path=str(tmp_path / "laser.fits"),
                                        cropped_bbox=np.array([2, 6, 3, 6])))
    with open_cube(path) as cube:
        np.testing.assert_array_equal(cube.read_calib_map(0, 4, 0, 3), big[2:6, 3:6])


def test_missing_laser_map_file_is_named_at_open(tmp_path):
    syn = simulate.make_cube(3, 3, seed=1)
    path = tmp_path / "nomap.hdf5"
    write_orb_cube(path, syn.data, dict(syn.attrs, calibration_laser_map_path="gone/laser.fits"))
    with pytest.raises(ValueError, match="gone/laser.fits.*does not exist"):
        open_cube(path)
    from lucijax.cli import main

    assert main(["fit", str(path), "--lines", "Halpha", "--out", str(tmp_path / "o"), "-q"]) == 2


@pytest.mark.timeout(400)
def test_fit_with_the_external_map_equals_the_fit_with_the_dataset(tmp_path):
    syn = simulate.make_cube(6, 6, seed=4, calib_spread=0.03, snr_range=(15, 40), lines=LINES)
    inside = syn.write(tmp_path / "inside.hdf5")
    _write_map_fits(tmp_path / "laser.fits", syn.calib_map)
    outside = tmp_path / "outside.hdf5"
    write_orb_cube(outside, syn.data, dict(syn.attrs, calibration_laser_map_path="laser.fits"))
    ex = lucijax.Execution(progress=False)
    a = lucijax.fit(inside, lucijax.Model(LINES), execution=ex)
    b = lucijax.fit(outside, lucijax.Model(LINES), execution=ex)
    for name in ("HALPHA_VELOCITY", "HALPHA_FLUX", "HALPHA_BROADENING", "CHI2"):
        np.testing.assert_array_equal(a.maps[name], b.maps[name], err_msg=name)


# -- apodization widens the instrumental line ---------------------------------------------------
@pytest.mark.skipif(not M57.exists(), reason="needs ../shared/data (real SITELLE spectra)")
def test_line_width_equals_orbs_own_line_fwhm_on_real_data():
    with OrbSpectrum(M57) as spec:
        header = spec.header
    # ORB stored its own compute_line_fwhm result in the file
    assert float(pixel_fwhm_cm1(header)) == pytest.approx(float(header.attrs["line_fwhm"]), rel=1e-9)
    apodized = header.__class__(**{**header.__dict__, "apodization": 1.7})
    assert float(pixel_fwhm_cm1(apodized)) == pytest.approx(1.7 * float(header.attrs["line_fwhm"]), rel=1e-9)


@pytest.mark.timeout(400)
def test_apodized_cube_fluxes_are_right_only_with_the_apodization(tmp_path):
    apod = 1.6
    syn = simulate.make_cube(8, 8, seed=11, model="sinc", lines=LINES, snr_range=(20, 60),
                             header_overrides={"apodization": apod})
    right = syn.write(tmp_path / "apod.hdf5")
    wrong = tmp_path / "noapod.hdf5"
    write_orb_cube(wrong, syn.data, dict(syn.attrs, apodization=1.0), calib_map=syn.calib_map)
    ex = lucijax.Execution(progress=False)
    model = lucijax.Model(LINES, profile="sinc")
    truth = syn.truth["HALPHA_FLUX_CM1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lucijax.fit(right, model, execution=ex)
        bad = lucijax.fit(wrong, model, execution=ex)
    flux = res.fields["flux_cm1"][..., 0].T
    err = res.fields["flux_err_cm1"][..., 0].T
    pull = (flux - truth) / err
    assert abs(np.median(flux / truth) - 1.0) < 0.01
    assert 0.6 < np.std(pull) < 1.5 and abs(np.mean(pull)) < 0.5
    assert np.median(np.abs(res.maps["HALPHA_VELOCITY"] - syn.truth["VELOCITY"])) < 3.0
    # without the apodization the sinc is too narrow: fluxes biased by about 1/apod
    assert np.median(bad.fields["flux_cm1"][..., 0].T / truth) < 0.8


# -- a cube without wavenumber calibration: each pixel on its own axis -----------------------------
def _uncalibrated_cube(nx=7, ny=7, spread=0.008, seed=21):
    """Spectra of lines at velocity v on each pixel's own axis ``f * axis_ref`` (``f =
    corr_pix / corr_ref``, ``f = 1`` at the image centre) and the truth. On the pixel's own
    channels, a line at ``sigma`` with FWHM ``w`` reads like a line at ``sigma / f`` with FWHM
    ``w / f`` on the reference axis: rendered so by the simulator with ``corr = corr_ref``
    everywhere (its sinc FWHM is then the reference one, ``w_pix / f``) and the velocity whose
    Doppler factor is ``D(v) / f``."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(nx) - nx // 2, np.arange(ny) - ny // 2, indexing="ij")
    f = 1.0 + spread * (xs**2 + ys**2) / float((nx // 2) ** 2 + (ny // 2) ** 2)  # [x, y]
    v = rng.uniform(-150.0, 150.0, (nx, ny))
    beta = v / 299792.458
    d_apparent = np.sqrt((1 - beta) / (1 + beta)) / f
    v_apparent = 299792.458 * (1 - d_apparent**2) / (1 + d_apparent**2)
    syn = simulate.make_cube(nx, ny, seed=seed, lines=LINES, calib_spread=0.0, snr_range=(25, 60),
                             velocity_kms=v_apparent[..., None])
    attrs = {k: val for k, val in syn.attrs.items() if k not in ("axis_corr", "axis_min", "axis_step")}
    calib = simulate.AXIS_CORR * f * simulate.NM_LASER
    truth_flux = syn.truth["HALPHA_FLUX_CM1"] * f.T  # the pixel's own channels are f times wider
    return syn, attrs, calib, v.T, truth_flux


def test_resampling_recovers_a_line_on_the_reference_axis():
    syn = simulate.make_cube(1, 1, seed=2, lines=["Halpha"], calib_spread=0.0, snr_range=(1e6, 1e6 + 1),
                             noise=1e-30)
    n = syn.data.shape[-1]
    axis = syn.attrs["axis_min"] + syn.attrs["axis_step"] * np.arange(n)
    from lucijax.io.orb import resample_spectra

    k = np.arange(n)
    scale = 1.003
    # one physical spectrum sampled on a pixel's axis (0.3 % wider than the reference one; its
    # sinc is as many channels wide as the reference's: FWHM w * scale) and brought back onto the
    # reference axis equals the same spectrum evaluated there
    spec = simulate.render_spectra(syn.line_set, "sincgauss", axis * scale, syn.fwhm_cm1.ravel() * scale,
                                   np.array([[100.0]]), np.array([[30.0]]), np.array([[1.0]]), np.array([0.0]))
    back = resample_spectra(spec, np.array([scale]), axis[0], axis[1] - axis[0])[0]
    want = simulate.render_spectra(syn.line_set, "sincgauss", axis, syn.fwhm_cm1.ravel() * scale,
                                   np.array([[100.0]]), np.array([[30.0]]), np.array([[1.0]]), np.array([0.0]))[0]
    inside = (k > 40) & (k < n - 40)
    assert np.max(np.abs(back[inside] - want[inside])) < 2e-3 * np.max(want)


@pytest.mark.timeout(400)
def test_uncalibrated_cube_is_fitted_on_each_pixels_own_axis(tmp_path):
    syn, attrs, calib, v_true, flux_true = _uncalibrated_cube()
    path = tmp_path / "uncal.hdf5"
    write_orb_cube(path, syn.data, attrs, calib_map=calib)
    ex = lucijax.Execution(progress=False)
    with pytest.warns(UserWarning, match="no wavenumber calibration"):
        res = lucijax.fit(path, lucijax.Model(LINES), execution=ex)
    dv = res.maps["HALPHA_VELOCITY"] - v_true
    pull = dv / res.maps["HALPHA_VELOCITY_ERR"]
    assert np.mean(res.maps["STATUS"] == 0) >= 0.9
    assert abs(np.median(dv)) < 1.0 and 0.7 < np.std(pull) < 1.4, (np.median(dv), np.std(pull))
    flux = res.fields["flux_cm1"][..., 0].T
    assert abs(np.median(flux / flux_true) - 1.0) < 0.02
    # read as if calibrated on the centre's axis, the off-centre pixels are off by c (f - 1)
    wrong = tmp_path / "as_calibrated.hdf5"
    write_orb_cube(wrong, syn.data, dict(attrs, axis_corr=simulate.AXIS_CORR), calib_map=calib)
    bad = lucijax.fit(wrong, lucijax.Model(LINES), execution=ex)
    off = np.abs(bad.maps["HALPHA_VELOCITY"] - v_true)
    assert np.nanmax(off) > 1000.0 or np.any(bad.maps["STATUS"] != 0)
