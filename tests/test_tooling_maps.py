"""S/N map, deep image, heliocentric correction and model/residual cubes, against
synthetic truth and astropy."""

from __future__ import annotations

import numpy as np
import pytest

import lucijax
from lucijax import simulate, views
from lucijax.tools import snr
from lucijax.io.memory import MemoryCube

LINES = list(simulate.DEFAULT_LINES)
NOISE = 1e-18


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 16 x 16 cube (SNR 3-60) written as ORB level 2, and its fit (batches of 64)."""
    syn = simulate.make_cube(16, 16, seed=17)
    path = tmp_path_factory.mktemp("tooling") / "c.hdf5"
    syn.write(path)
    res = lucijax.fit(path, lucijax.Model(LINES), execution=lucijax.Execution(batch_size=64, progress=False))
    return syn, path, res


# ----------------------------------------------------------------------------- S/N and deep image
def test_snr_map_follows_injected_snr():
    syn = simulate.make_cube(16, 16, seed=23, snr_range=(3.0, 60.0))
    cube = MemoryCube.from_synthetic(syn)
    maps = snr.signal_noise_maps(cube, block=5)  # several blocks
    truth = syn.truth["SNR"]
    s = maps.snr
    r = np.corrcoef(np.log(s.ravel()), np.log(truth.ravel()))[0, 1]
    ratio = np.median(s / truth)
    noise_ratio = np.median(maps.maps["NOISE"]) / NOISE
    print(f"S/N map: log-correlation {r:.3f}, median S/N ratio {ratio:.3f}, noise ratio {noise_ratio:.3f}")
    assert r > 0.95
    assert 0.9 < ratio < 1.2  # peak of line + noise: slightly above the injected peak at low S/N
    assert abs(noise_ratio - 1) < 0.1
    bright = truth > 20
    assert np.median(np.abs(s[bright] / truth[bright] - 1)) < 0.1
    # window defaults follow the redshift
    lw0, _ = snr.snr_windows_cm1("SN3")
    lwz, _ = snr.snr_windows_cm1("SN3", redshift=0.01)
    assert lwz[0] == pytest.approx(lw0[0] / 1.01)
    with pytest.raises(ValueError, match="no default S/N windows"):
        snr.snr_windows_cm1("C4")


def test_snr_map_region_and_write(tmp_path):
    syn = simulate.make_cube(12, 10, seed=2)
    cube = MemoryCube.from_synthetic(syn)
    whole = snr.signal_noise_maps(cube)
    part = snr.signal_noise_maps(cube, region=(3, 9, 2, 7))
    np.testing.assert_array_equal(part.snr, whole.snr[2:7, 3:9])
    part.write(tmp_path / "snr.fits")
    from lucijax.io import read_map_wcs, read_maps_fits

    back = read_maps_fits(tmp_path / "snr.fits")
    np.testing.assert_allclose(back["SNR"], part.snr)
    w = read_map_wcs(tmp_path / "snr.fits", "SNR")
    np.testing.assert_allclose(w.all_pix2world(0, 0, 0), cube.header.wcs.all_pix2world(3, 2, 0))


def test_deep_image_sum_and_stored_frame(tmp_path):
    from lucijax.io.orb import write_orb_cube

    syn = simulate.make_cube(10, 8, seed=4)
    cube = MemoryCube.from_synthetic(syn)
    deep = snr.deep_image(cube, block=3)
    np.testing.assert_allclose(deep, syn.data.astype(np.float64).sum(-1).T, rtol=1e-5)
    stored = np.arange(80.0).reshape(10, 8)  # [x, y]
    path = tmp_path / "deep.hdf5"
    write_orb_cube(path, syn.data, syn.attrs, level=2, calib_map=syn.calib_map, deep_frame=stored)
    with lucijax.open_cube(path) as c:
        np.testing.assert_array_equal(snr.deep_image(c, region=(2, 7, 1, 5)), stored[2:7, 1:5].T)
        np.testing.assert_allclose(snr.deep_image(c, use_stored=False), deep, rtol=1e-5)
        # binned deep frame = sum of the stored frame over the bins
        b = views.bin(c, 2)
        np.testing.assert_allclose(snr.deep_image(b), stored.reshape(5, 2, 4, 2).sum(axis=(1, 3)).T)


# ----------------------------------------------------------------------------- heliocentric
def test_heliocentric_correction_matches_astropy_and_earth_motion():
    import astropy.units as u
    from astropy.coordinates import EarthLocation, SkyCoord, get_body_barycentric_posvel
    from astropy.time import Time

    from lucijax.tools import heliocentric

    attrs = {"obs_date": "2016-08-25", "obs_time": "10:32:12.298", "target_ra": 10.684821844386436,
             "target_dec": 41.26885314241632, "RADESYS": "FK5"}
    corr = heliocentric.heliocentric_correction_kms(attrs)
    t = Time("2016-08-25T10:32:12.298", scale="utc")
    c = SkyCoord(10.684821844386436 * u.deg, 41.26885314241632 * u.deg, frame="fk5")
    cfht = EarthLocation.from_geodetic(-155.468876 * u.deg, 19.825252 * u.deg, 4204 * u.m)
    ref = c.radial_velocity_correction("heliocentric", obstime=t, location=cfht).to_value(u.km / u.s)
    assert corr == pytest.approx(ref, abs=1e-6)
    # independent check: the Earth's heliocentric velocity projected on the direction of the
    # target (an observer moving towards it measures blueshifts; the Earth's rotation adds
    # at most 0.47 km/s at CFHT)
    _, ve = get_body_barycentric_posvel("earth", t)
    _, vs = get_body_barycentric_posvel("sun", t)
    n = c.icrs.cartesian.xyz.value
    v_orbit = float(np.dot((ve - vs).xyz.to_value(u.km / u.s), n))
    print(f"heliocentric correction {corr:.4f} km/s (astropy {ref:.4f}; orbital motion only {v_orbit:.4f})")
    assert abs(corr - v_orbit) < 0.5
    # the same from an array date and FITS DATE-OBS spellings
    assert heliocentric.heliocentric_correction_kms(dict(attrs, obs_date=np.array([2016, 8, 25]))) == pytest.approx(corr)
    fits_attrs = {"DATE-OBS": "2016-08-25T10:32:12.298", "CRVAL1": 10.684821844386436, "CRVAL2": 41.26885314241632,
                  "RADESYS": "FK5"}
    assert heliocentric.heliocentric_correction_kms(fits_attrs) == pytest.approx(corr, abs=1e-6)
    with pytest.raises(ValueError, match="no observation date"):
        heliocentric.heliocentric_correction_kms({"CRVAL1": 1.0, "CRVAL2": 2.0})
    # relativistic addition: v + vc + v vc / c
    assert heliocentric.correct_velocity(100.0, corr) == pytest.approx(100 + corr + 100 * corr / 299792.458)


def test_heliocentric_from_real_header(shared_data):
    from lucijax.tools import heliocentric

    with lucijax.open_cube(shared_data / "orcs-m31-sky" / "sky_spectrum_0.hdf5") as c:
        corr = heliocentric.heliocentric_correction_kms(c.header)
    assert -31 < corr < 31 and corr != 0.0


def test_heliocentric_applied_to_velocity_maps(fitted):
    from lucijax.tools import heliocentric

    _, _, res = fitted
    out = heliocentric.apply_velocity_correction(res, -12.5)
    v = res.maps["HALPHA_VELOCITY"]
    np.testing.assert_allclose(out.maps["HALPHA_VELOCITY"], v - 12.5 - 12.5 * v / 299792.458, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(out.maps["HALPHA_FLUX"], res.maps["HALPHA_FLUX"])
    assert out.velocity_correction_kms == -12.5


# ----------------------------------------------------------------------------- model cube
@pytest.mark.timeout(300)
def test_model_and_residual_cubes(fitted, tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    from lucijax.results.model_cube import write_model_cube

    syn, path, res = fitted
    mpath, rpath = tmp_path / "model.fits", tmp_path / "resid.fits"
    with lucijax.open_cube(path) as c:
        write_model_cube(res, mpath, cube=c, residual_path=rpath,
                         execution=lucijax.Execution(block_size=5, progress=False))
    with fits.open(mpath) as hm, fits.open(rpath) as hr:
        model, resid, hdr = hm[0].data.astype(np.float64), hr[0].data.astype(np.float64), hm[0].header
    window = res.bound.window
    assert model.shape == (window.size, 16, 16)
    assert hdr["BUNIT"] == "erg/(cm2 s Angstrom)" and hdr["CUNIT3"] == "cm-1"
    w = WCS(hdr)
    np.testing.assert_allclose(w.spectral.pixel_to_world_values(np.arange(window.size)), syn.axis_cm1[window] * 100,
                               rtol=1e-9)  # WCS gives m^-1
    np.testing.assert_allclose(w.celestial.all_pix2world(3, 4, 0), res.wcs.all_pix2world(3, 4, 0))
    # the model of a pixel is FitResult.model_spectrum; residual = data - model
    for x, y in [(0, 0), (7, 3), (15, 15)]:
        axis, m = res.model_spectrum(x, y)
        np.testing.assert_allclose(axis, syn.axis_cm1[window], rtol=1e-12)
        np.testing.assert_allclose(model[:, y, x], m, rtol=1e-5, atol=1e-6 * np.abs(m).max())
        np.testing.assert_allclose(resid[:, y, x], syn.data[x, y, window] - model[:, y, x], rtol=1e-5, atol=1e-23)
    ok = res.maps["STATUS"] == 0
    std = resid[:, ok].std(axis=0)
    ratio = np.median(std) / NOISE
    print(f"model cube: residual std / noise = {ratio:.4f} (median over {ok.sum()} pixels), "
          f"overall {resid[:, ok].std() / NOISE:.4f}")
    assert abs(ratio - 1) < 0.05
    assert abs(np.mean(resid[:, ok])) < 0.02 * NOISE


# ----------------------------------------------------------------------------- command line
@pytest.mark.timeout(400)
def test_cli_tools(tmp_path, capsys):
    from astropy.io import fits

    from lucijax.cli import main
    from lucijax.io import read_maps_fits

    syn = simulate.make_cube(16, 16, seed=29, velocity_range_kms=(30.0, 30.0))
    syn.attrs.update({"DATE-OBS": "2019-06-01T10:00:00"})
    path = tmp_path / "cube.hdf5"
    syn.write(path)
    out = tmp_path / "binned"
    rc = main(["fit", str(path), "--lines", *LINES, "--out", str(out), "--bin", "2", "--background-region",
               "0:16,0:2", "--background-statistic", "mean", "--heliocentric", "--model-cube", "--snr-map",
               "--batch-size", "64", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "binned 2x2" in text and "heliocentric correction" in text
    maps = read_maps_fits(out / "maps.fits")
    assert maps["HALPHA_FLUX"].shape == (8, 8)
    with fits.open(out / "model.fits") as h:
        assert h[0].data.shape[1:] == (8, 8)
    with fits.open(out / "snr.fits") as h:
        assert h["SNR"].data.shape == (16, 16)
    assert (out / "residual.fits").exists() and (out / "deep.fits").exists()
    from lucijax.tools.heliocentric import heliocentric_correction_kms

    corr = heliocentric_correction_kms({"DATE-OBS": "2019-06-01T10:00:00", **syn.attrs})
    assert np.nanmedian(maps["HALPHA_VELOCITY"]) == pytest.approx(30.0 + corr, abs=2.0)

    reg = tmp_path / "r.reg"
    reg.write_text("image\ncircle(8.5,8.5,4)\n")
    rc = main(["fit", str(path), "--lines", *LINES, "--out", str(tmp_path / "integ"), "--mask", str(reg),
               "--integrated", "--quiet"])
    assert rc == 0
    import json

    summary = json.loads((tmp_path / "integ" / "fit.json").read_text())
    assert summary["velocity"] == pytest.approx(30.0, abs=2.0)
