"""Sky-line velocity calibration (issue 6): a synthetic SN3 cube of OH sky lines shifted by a
known smooth velocity field (a calibration error), plus a bright emission-line target that
the sky mask must exclude; the recovered correction field must match the injected one, and
the correction subtracted from science velocity maps must remove it.
"""

from __future__ import annotations


import numpy as np
import pytest

from lucijax.physics import instrument
from lucijax.physics.lines import make_line_set, read_sky_lines, sky_line_set
from lucijax.simulate import AXIS_CORR, NM_LASER, SyntheticCube, filter_header, render_spectra
from lucijax.tools.skycal import (
    apply_velocity_correction,
    calibrate_sky,
    fit_velocity_correction,
    write_velocity_correction,
)

pytestmark = pytest.mark.timeout(300)

#: OH lines (air, Angstrom; Hanuschik 2003 wavelengths) inside SN3, relative intensities.
SKY_LINES_A = [(6502.7207, 1.0), (6553.6260, 2.7), (6577.3760, 1.5), (6627.6318, 0.8), (6661.6851, 0.6),
               (6699.0552, 0.7), (6720.8530, 0.9), (6739.6987, 1.1), (6818.7607, 0.7), (6831.9551, 0.9)]
NX = NY = 48


def injected_field(x, y):
    """Calibration error (km/s) at pixel (x, y): a degree-2 surface, ~15 km/s end to end."""
    u, v = 2 * x / (NX - 1) - 1, 2 * y / (NY - 1) - 1
    return 3.0 + 6.0 * u - 4.0 * v + 2.5 * u * v + 1.5 * u**2


@pytest.fixture(scope="module")
def sky_cube(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sky")
    sky_file = tmp / "sky.orb"
    sky_file.write_text("# index wavelength_A intensity\n" + "".join(
        f"{k} {wl:.4f} {inten:.3f}\n" for k, (wl, inten) in enumerate(SKY_LINES_A)))
    rng = np.random.default_rng(42)
    header = filter_header("SN3")
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]
    corr = np.full((NX, NY), AXIS_CORR)
    fwhm = instrument.sinc_fwhm_cm1(header["step"], header["step_nb"], header["zpd_index"], corr)
    ls = sky_line_set(sky_file, instrument.get_filter("SN3").band_cm1, float(fwhm.mean()))
    assert ls.n_lines == len(SKY_LINES_A) and not ls.ties
    wl_nm, intensity = read_sky_lines(sky_file)
    order = np.argsort(1e7 / wl_nm)  # sky_line_set sorts by wavenumber
    xs, ys = np.meshgrid(np.arange(NX), np.arange(NY), indexing="ij")
    v_field = injected_field(xs, ys).ravel()
    n = NX * NY
    noise = 1.0
    amp = np.tile(5.0 * intensity[order] / intensity.max(), (n, 1))  # brightest line SNR 5 per pixel
    clean = render_spectra(ls, "sinc", axis, fwhm.ravel(), v_field[:, None], np.zeros((n, 1)), amp, np.full(n, 2.0))
    # a target: a bright Halpha line at +640 km/s, 25 km/s from the OH line at 6577.376 A,
    # in a 10 x 10 box: the sky mask must keep it out of the sky bins
    target = (xs >= 30) & (xs < 40) & (ys >= 8) & (ys < 18)
    ha = make_line_set(["Halpha"])
    t_idx = np.nonzero(target.ravel())[0]
    clean[t_idx] += render_spectra(ha, "sinc", axis, fwhm.ravel()[t_idx], np.full((t_idx.size, 1), 640.0),
                                   np.zeros((t_idx.size, 1)), np.full((t_idx.size, 1), 40.0), np.zeros(t_idx.size))
    data = (clean + rng.normal(0, noise, clean.shape)).reshape(NX, NY, -1).astype(np.float32)
    cube = SyntheticCube(data=data, attrs=header, calib_map=corr * NM_LASER, axis_cm1=axis, fwhm_cm1=fwhm)
    path = tmp / "sky.hdf5"
    cube.write(path)
    return path, sky_file, target.T  # mask [y, x]


@pytest.fixture(scope="module")
def calibration(sky_cube):
    import lucijax

    path, sky_file, target = sky_cube
    with lucijax.open_cube(path) as cube:
        corr, sky = calibrate_sky(cube, sky_file, bin_size=8, order=2, sky_mask=~target, progress=False, min_fraction=0.4)
        corr_nomask, _ = calibrate_sky(cube, sky_file, bin_size=8, order=2, progress=False, clip_sigma=1e9)
    return corr, sky, corr_nomask


def test_recovers_injected_velocity_field(calibration):
    corr, sky, corr_nomask = calibration
    yy, xx = np.mgrid[0:NY, 0:NX]
    truth = injected_field(xx, yy)
    recovered = corr.map()
    assert recovered.shape == (NY, NX)
    diff = recovered - truth
    rms = float(np.sqrt(np.mean(diff**2)))
    # per-bin measurements: pulls against the field at the bin centres
    pull = (sky.velocity_kms - injected_field(sky.x, sky.y)) / sky.velocity_err_kms
    print(f"\nACCEPTANCE sky calibration: {sky.x.size} bins, median bin velocity error "
          f"{np.median(sky.velocity_err_kms):.2f} km/s, bin pulls std {np.std(pull):.2f}; "
          f"recovered field rms error {rms:.3f} km/s, max {np.abs(diff).max():.3f} km/s "
          f"(field spans {np.ptp(truth):.1f} km/s); without the sky mask rms "
          f"{np.sqrt(np.mean((corr_nomask.map() - truth) ** 2)):.3f} km/s")
    assert rms < 0.3
    assert np.abs(diff).max() < 1.5
    # unmasked and unclipped, the target's bins pull the surface away
    assert np.sqrt(np.mean((corr_nomask.map() - truth) ** 2)) > 2 * rms
    assert 0.7 < np.std(pull) < 1.4
    # the masked target's bins contribute no pixels: bins there have fewer pixels
    assert sky.n_pixels.min() < 64


def test_correction_removes_field_from_science_maps(calibration):
    corr, _, _ = calibration
    yy, xx = np.mgrid[0:NY, 0:NX]
    science = 120.0 + 0.5 * xx  # true science velocities
    region = (10, 40, 5, 25)
    x0, x1, y0, y1 = region
    maps = {"HALPHA_VELOCITY": (science + injected_field(xx, yy))[y0:y1, x0:x1], "HALPHA_FLUX": np.ones((y1 - y0, x1 - x0))}
    fixed = apply_velocity_correction(maps, corr.map(region))
    assert fixed["HALPHA_FLUX"] is maps["HALPHA_FLUX"]
    np.testing.assert_allclose(fixed["HALPHA_VELOCITY"], science[y0:y1, x0:x1], atol=1.0)
    with pytest.raises(ValueError, match="shape"):
        apply_velocity_correction(maps, corr.map())


def test_surface_fit_rejects_outliers():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 99, 200), rng.uniform(0, 99, 200)
    u, v = 2 * x / 99 - 1, 2 * y / 99 - 1
    truth = 1.0 - 2.0 * u + 3.0 * v + 0.5 * u * v
    err = rng.uniform(0.3, 1.0, 200)
    vel = truth + rng.normal(0, err)
    bad = rng.choice(200, 12, replace=False)
    vel[bad] += rng.choice([-1, 1], 12) * rng.uniform(15, 40, 12)
    corr = fit_velocity_correction(x, y, vel, err, (100, 100), order=2)
    assert not corr.used[bad].any()
    assert corr.used.sum() >= 180
    np.testing.assert_allclose(corr.evaluate(x, y), truth, atol=0.5)
    # without clipping the outliers pull the surface away
    loose = fit_velocity_correction(x, y, vel, err, (100, 100), order=2, clip_sigma=1e9)
    assert np.abs(loose.evaluate(x, y) - truth).max() > 2 * np.abs(corr.evaluate(x, y) - truth).max()
    with pytest.raises(ValueError, match="cannot constrain"):
        fit_velocity_correction(x[:4], y[:4], vel[:4], err[:4], (100, 100), order=2)


def test_write_correction(calibration, tmp_path):
    from astropy.io import fits

    corr, sky, _ = calibration
    path = write_velocity_correction(tmp_path / "corr.fits", corr, sky=sky)
    with fits.open(path) as hdul:
        hdu = hdul["VELOCITY_CORRECTION"]
        np.testing.assert_allclose(hdu.data, corr.map(), atol=1e-4)
        assert hdu.header["BUNIT"] == "km/s"
        assert hdul[0].header.get("SKYORDER", hdu.header.get("SKYORDER")) == 2


def test_cli_skycal_then_corrected_sky_fit(sky_cube, tmp_path):
    """``lucijax skycal`` (no sky mask: outlier clipping has to reject the target's bins),
    then ``lucijax fit --sky-lines ... --velocity-correction``: the corrected sky velocities
    of a box of pixels are ~0 (the sky is at rest)."""
    from astropy.io import fits

    from lucijax.cli import main

    path, sky_file, _ = sky_cube
    out = tmp_path / "cal"
    assert main(["skycal", str(path), "--sky-lines", str(sky_file), "--bin", "8", "--order", "2", "--out", str(out), "-q"]) == 0
    with fits.open(out / "velocity_correction.fits") as hdul:
        cmap = np.asarray(hdul["VELOCITY_CORRECTION"].data, float)
    yy, xx = np.mgrid[0:NY, 0:NX]
    assert np.sqrt(np.mean((cmap - injected_field(xx, yy)) ** 2)) < 0.5
    table = np.loadtxt(out / "sky_bins.txt")
    assert table.shape == (36, 8) and table[:, 6].sum() < 36  # some bins rejected (the target)
    fit_out = tmp_path / "fit"
    assert main(["fit", str(path), "--sky-lines", str(sky_file), "--model", "sinc", "--region", "2:10,36:44",
                 "--velocity-correction", str(out / "velocity_correction.fits"), "--out", str(fit_out),
                 "--no-checkpoint", "-q"]) == 0
    from lucijax.io import read_maps_fits

    maps = read_maps_fits(fit_out / "maps.fits")
    vname = [n for n in maps if n.endswith("_VELOCITY")][0]
    v, ve = maps[vname], maps[vname + "_ERR"]
    assert v.shape == (8, 8)
    # raw sky velocities there are ~ injected_field (-2..-8 km/s); corrected they scatter about 0
    assert abs(np.mean(v)) < 3 * np.median(ve) / 8 + 0.3
    assert np.mean(injected_field(xx[36:44, 2:10], yy[36:44, 2:10])) < -1.0
