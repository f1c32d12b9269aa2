"""Command line and output products: maps.fits layout, WCS, units, fit.json, redshift."""

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import lucijax
from lucijax import simulate
from lucijax.cli import main

LINES = list(simulate.DEFAULT_LINES)
QUANTITIES = ("AMPLITUDE", "FLUX", "FLUX_ERR", "VELOCITY", "VELOCITY_ERR", "BROADENING", "BROADENING_ERR")


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory):
    cube = simulate.make_cube(10, 8, seed=11, snr_range=(15, 60))
    path = tmp_path_factory.mktemp("cli") / "cube.hdf5"
    cube.write(path)
    return cube, path


@pytest.mark.timeout(300)
def test_cli_fit_writes_maps_with_wcs_and_units(small_cube, tmp_path, capsys):
    cube, path = small_cube
    out = tmp_path / "out"
    rc = main(["fit", str(path), "--lines", *LINES, "--region", "2:9,1:7", "--out", str(out), "--quiet"])
    assert rc == 0
    assert not (out / "checkpoint").exists()  # removed after success
    with fits.open(out / "maps.fits") as hdul:
        names = {h.name for h in hdul[1:]}
        for line in ("HALPHA", "NII6583", "NII6548", "SII6716", "SII6731"):
            for q in QUANTITIES:
                assert f"{line}_{q}" in names
        for extra in ("CONTINUUM", "CHI2", "SNR", "STATUS"):
            assert extra in names
        vel = hdul["HALPHA_VELOCITY"]
        assert vel.data.shape == (6, 7)  # [y, x] of the region
        assert vel.header["BUNIT"] == "km/s"
        assert hdul["HALPHA_FLUX"].header["BUNIT"] == "erg/cm2/s"
        # map[y, x] belongs to cube pixel (2 + x, 1 + y): compare with the truth there
        truth = cube.truth["VELOCITY"][1:7, 2:9]
        assert np.nanmedian(np.abs(vel.data - truth)) < 5.0
        # the region's WCS is the cube's shifted by the region origin
        w_map = WCS(vel.header)
        with lucijax.open_cube(path) as c:
            w_cube = c.header.wcs
        a = w_map.pixel_to_world(3, 4)
        b = w_cube.pixel_to_world(2 + 3, 1 + 4)
        assert a.separation(b).arcsec < 1e-6
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_name_the_problem(small_cube, tmp_path, capsys):
    _, path = small_cube
    assert main(["fit", str(path), "--lines", "Halpha", "Foo", "--out", str(tmp_path)]) == 2
    assert "Foo" in capsys.readouterr().err
    assert main(["fit", str(path), "--lines", "Halpha", "Hbeta", "--out", str(tmp_path)]) == 2
    assert "Hbeta" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.hdf5"), "--lines", "Halpha"]) == 2
    assert "missing.hdf5" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_redshifted_cube_velocity_and_observed_flux(tmp_path):
    z = 0.01
    cube = simulate.make_cube(8, 8, seed=7, redshift=z, snr_range=(20, 60))
    path = cube.write(tmp_path / "z.hdf5")
    res = lucijax.fit(path, lucijax.Model(LINES, redshift=z), execution=lucijax.Execution(progress=False))
    dv = res.maps["HALPHA_VELOCITY"] - cube.truth["VELOCITY"]
    assert abs(np.median(dv)) < 1.0
    # fluxes are reported in the observed frame
    flux_cm1_obs = res.fields["flux_cm1"][..., 0].T / (1 + z)
    assert np.median(flux_cm1_obs / cube.truth["HALPHA_FLUX_CM1"]) == pytest.approx(1.0, abs=0.01)


@pytest.mark.timeout(300)
def test_single_spectrum_json(tmp_path):
    cube = simulate.make_cube(1, 1, seed=3, snr_range=(40, 41))
    path = cube.write(tmp_path / "one.hdf5")
    out = tmp_path / "one"
    res = lucijax.fit(path, lucijax.Model(LINES), execution=lucijax.Execution(progress=False))
    res.is_single_spectrum = True  # a 1x1 cube behaves as an extracted spectrum
    res.write(out)
    summary = json.loads((out / "fit.json").read_text())
    assert set(summary) >= {"velocity", "velocity_err", "broadening", "broadening_err", "chi2", "status", "lines"}
    assert set(summary["lines"]) == set(LINES)
    assert summary["status"] in (0, 4)
    assert abs(summary["velocity"] - cube.truth["VELOCITY"][0, 0]) < 5 * summary["velocity_err"]
    assert summary["lines"]["NII6548"]["flux"] == pytest.approx(summary["lines"]["NII6583"]["flux"] / 3, rel=1e-5)
