"""Outputs users ask for (issue 21, item 8), on synthetic cubes with known truth: the
parameter covariance written and read back, CONTINUUM_ERR, per-line and per-component model
spectra, detection maps, narrow-band line images (API and command line)."""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import lucijax
from lucijax import simulate
from lucijax.cli import main
from lucijax.physics.conversions import observed_position_cm1
from lucijax.solvers import Components

LINES = list(simulate.DEFAULT_LINES)  # Halpha NII6583 NII6548 SII6716 SII6731
N = 20  # 400 noise realisations of one spectrum
NOISE = 1e-18


def _repeated_cube(seed=5):
    """N x N noise realisations of ONE spectrum: Halpha at peak S/N 30, [NII]6583 at half its
    flux, no [SII] (absent lines), a flat continuum of 2 sigma, one instrumental FWHM."""
    common = {"lines": LINES, "snr_range": (30.0, 30.0), "continuum_snr": (2.0, 2.0), "calib_spread": 0.0, "noise": NOISE}
    one = simulate.make_cube(1, 1, velocity_kms=np.full((1, 1), 30.0), broadening_kms=np.full((1, 1), 25.0),
                             seed=seed, **common)
    f_ha = float(one.truth["HALPHA_FLUX_CM1"][0, 0])
    full = np.full((N, N), 1.0)
    return simulate.make_cube(N, N, velocity_kms=30.0 * full, broadening_kms=25.0 * full, seed=seed,
                              line_fluxes_cm1={"Halpha": f_ha * full, "NII6583": 0.5 * f_ha * full,
                                               "SII6716": 0 * full, "SII6731": 0 * full}, **common)


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """(SyntheticCube, path, FitResult with covariance) of :func:`_repeated_cube`."""
    cube = _repeated_cube()
    path = cube.write(tmp_path_factory.mktemp("outputs") / "rep.hdf5")
    res = lucijax.fit(path, lucijax.Model(LINES), lucijax.MAP(covariance=True),
                      execution=lucijax.Execution(progress=False))
    return cube, path, res


# ------------------------------------------------------------------------ 1. covariance
@pytest.mark.timeout(400)
def test_covariance_written_read_back_and_matches_the_error_maps(repeated, tmp_path):
    _, _, res = repeated
    res.write(tmp_path)
    names, units, cov = lucijax.read_covariance(tmp_path / "covariance.fits", with_units=True)
    assert names == res.parameter_names()
    assert names[:2] == ["velocity_0", "broadening_0"] and names[-1] == "continuum_0"
    assert units[:2] == ["km/s", "km/s"] and set(units[2:]) == {res.bound.flux_unit}
    ny, nx = res.shape
    D = len(names)
    assert cov.shape == (ny, nx, D, D)
    mem = np.asarray(res.covariance).transpose(1, 0, 2, 3)
    assert mem.dtype == np.float64
    assert np.all(mem[..., -1, -1] > 0)  # (5e-20 erg/cm2/s/A)^2: below float32's normal range
    np.testing.assert_array_equal(cov, cov.transpose(0, 1, 3, 2))
    sd = np.sqrt(np.einsum("...ii->...i", mem))
    i, j = np.triu_indices(D)  # the upper triangle is written (float32 sigmas and correlations)
    np.testing.assert_allclose((cov[..., i, j] - mem[..., i, j]) / (sd[..., i] * sd[..., j]), 0.0, atol=1e-6)
    # the diagonal's square roots are the error maps (same units)
    np.testing.assert_allclose(np.sqrt(cov[..., 0, 0]), res.maps["HALPHA_VELOCITY_ERR"], rtol=1e-5)
    b_err = res.maps["HALPHA_BROADENING_ERR"]
    ok = np.isfinite(b_err)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(np.sqrt(cov[..., 1, 1])[ok], b_err[ok], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(cov[..., -1, -1]), res.maps["CONTINUUM_ERR"], rtol=1e-5)  # order 0: w = 1
    # the maps' WCS
    with fits.open(tmp_path / "covariance.fits") as hdul, fits.open(tmp_path / "maps.fits") as maps:
        w_cov = WCS(hdul[0].header).celestial
        w_map = WCS(maps["HALPHA_FLUX"].header)
        assert w_cov.pixel_to_world(3, 4).separation(w_map.pixel_to_world(3, 4)).arcsec < 1e-6
        assert hdul[0].header["PNAME1"] == "velocity_0"
    # no covariance requested: no file
    plain = dataclasses.replace(res, covariance=None)
    plain.write(tmp_path / "plain")
    assert not (tmp_path / "plain" / "covariance.fits").exists()


@pytest.mark.timeout(400)
def test_covariance_follows_a_noise_window(repeated):
    """With a noise window the errors are rescaled to its noise on the host: so are the
    covariance (after its float64 product) and CONTINUUM_ERR."""
    _, path, _ = repeated
    model = lucijax.Model(LINES, noise_window="14150:14550")  # below the SN3 band: noise only
    res = lucijax.fit(path, model, lucijax.MAP(covariance=True, start="matched"), region=(0, 6, 0, 4),
                      execution=lucijax.Execution(progress=False))
    assert res.noise_from_window.all()
    cov = np.asarray(res.covariance).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(np.sqrt(cov[..., 0, 0]), res.maps["HALPHA_VELOCITY_ERR"], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(cov[..., -1, -1]), res.maps["CONTINUUM_ERR"], rtol=1e-5)


# ------------------------------------------------------------------------ 2. CONTINUUM_ERR
@pytest.mark.timeout(400)
def test_continuum_error_matches_the_scatter_of_noise_realisations(repeated):
    cube, _, res = repeated
    cont, err = res.maps["CONTINUUM"], res.maps["CONTINUUM_ERR"]
    assert res.units["CONTINUUM_ERR"] == res.units["CONTINUUM"]
    good = np.isin(res.status, (0, 4))
    assert good.mean() > 0.9
    scatter, median_err = np.std(cont[good], ddof=1), np.median(err[good])
    ratio = scatter / median_err
    print(f"\nCONTINUUM scatter / median CONTINUUM_ERR = {ratio:.3f} over {good.sum()} realisations")
    assert ratio == pytest.approx(1.0, abs=0.1)
    truth = cube.truth["CONTINUUM"][0, 0]
    assert abs(np.mean(cont[good]) - truth) < 4 * scatter / np.sqrt(good.sum())


# ------------------------------------------------------------------------ 3. model parts
@pytest.mark.timeout(300)
def test_line_spectra_sum_to_the_model_and_integrate_to_the_fluxes(repeated):
    _, _, res = repeated
    for x, y in ((0, 0), (7, 3), (N - 1, N - 2)):
        axis, model = res.model_spectrum(x, y)
        axis2, parts = res.line_spectra(x, y)
        np.testing.assert_array_equal(axis, axis2)
        assert list(parts) == LINES + ["continuum"]
        total = sum(parts.values())
        np.testing.assert_allclose(total, model, rtol=1e-5, atol=1e-6 * np.max(np.abs(model)))
        step = abs(axis[1] - axis[0])
        for i, line in enumerate(LINES):
            flux = res.fields["flux_cm1"][x, y, i] / (1 + res.bound.redshift)
            assert np.sum(parts[line]) * step == pytest.approx(flux, rel=2e-3, abs=1e-4 * float(res.fields["flux_cm1"][x, y, 0]))
        np.testing.assert_allclose(parts["continuum"], res.fields["continuum"][x, y], rtol=1e-5)
    with pytest.raises(ValueError, match="Components"):
        res.line_spectra(0, 0, by="component")


@pytest.mark.timeout(300)
def test_component_spectra_of_a_two_component_model(repeated):
    """Known parameters in a two-component result (no fit needed): the components' parts
    sum to the model, each line integrates to the model's flux of it."""
    _, _, res = repeated
    bound2 = Components(n_components=2).result_model(res.bound)
    spec = bound2.spec
    nx, ny = res.fields["linear"].shape[:2]
    amps = np.array([3.0, 1.0, 0.4, 0.3, 2.0, 0.5, 0.2, 0.1]) * 1e-17  # primaries of C1, then C2
    fields = dict(res.fields)
    fields["velocity_kms"] = np.broadcast_to(np.float32([-60.0, 120.0]), (nx, ny, 2))
    fields["broadening_kms"] = np.broadcast_to(np.float32([20.0, 35.0]), (nx, ny, 2))
    assert spec.n_linear == amps.size + 1
    fields["linear"] = np.broadcast_to(np.float32(np.append(amps, 2e-18)), (nx, ny, spec.n_linear))
    two = dataclasses.replace(res, bound=bound2, fields=fields, covariance=None)
    axis, model = two.model_spectrum(2, 3)
    _, comps = two.line_spectra(2, 3, by="component")
    assert list(comps) == ["C1", "C2", "continuum"]
    np.testing.assert_allclose(comps["C1"] + comps["C2"] + comps["continuum"], model, rtol=1e-5, atol=1e-24)
    _, lines = two.line_spectra(2, 3)
    np.testing.assert_allclose(sum(v for k, v in lines.items() if k.endswith("_C2")), comps["C2"], rtol=1e-5, atol=1e-24)
    import jax.numpy as jnp

    theta = jnp.asarray([-60.0, 120.0, 20.0, 35.0], jnp.float32)
    fluxes = np.asarray(bound2.line_model.line_fluxes_cm1(theta, jnp.asarray(fields["linear"][2, 3]),
                                                         jnp.float32(two.fwhm_cm1[2, 3])))
    step = abs(axis[1] - axis[0])
    for i, name in enumerate(bound2.line_set.names):
        assert np.sum(lines[name]) * step == pytest.approx(fluxes[i], rel=2e-3), name


# ------------------------------------------------------------------------ 4. detections
@pytest.mark.timeout(300)
def test_detection_maps_find_injected_lines_and_few_false_positives(repeated):
    _, _, res = repeated
    m = res.maps
    computed = m["STATUS"] != -1
    for line in ("HALPHA", "NII6583", "NII6548"):  # 30, 15 and 5 sigma peaks
        assert (m[f"{line}_DETECTED"][computed] == 1).all(), line
    for line in LINES:
        key = line.upper()
        np.testing.assert_array_equal(m[f"{key}_DETECTED"] == 1, (m[f"{key}_FLUX"] >= m[f"{key}_FLUX_LIMIT"])
                                      & (m[f"{key}_FLUX"] > 0))
    np.testing.assert_array_equal(m["N_DETECTED"], sum((m[f"{n.upper()}_DETECTED"] == 1) for n in LINES))
    false = np.concatenate([m["SII6716_DETECTED"][computed], m["SII6731_DETECTED"][computed]])
    rate = float(np.mean(false == 1))
    print(f"\nfalse detections of absent lines: {int(np.sum(false == 1))} of {false.size} ({rate:.2%}; "
          f"expected 0.13 % for 3 sigma)")
    assert rate < 0.01


def test_detections_of_missing_fits_are_minus_one():
    from lucijax.results.maps import detections

    d = detections(np.array([5.0, 1.0, np.nan, 0.0, 2.0]), np.array([3.0, 3.0, 3.0, 0.0, np.nan]))
    np.testing.assert_array_equal(d, [1, 0, -1, 0, -1])


# ------------------------------------------------------------------------ 5. narrow band
@pytest.mark.timeout(300)
def test_narrowband_image_of_an_isolated_line_equals_the_truth_flux(tmp_path):
    cube = simulate.make_cube(8, 8, lines=("Halpha",), snr_range=(150.0, 300.0), broadening_range_kms=(20.0, 60.0),
                              seed=3)
    path = cube.write(tmp_path / "ha.hdf5")
    nb = lucijax.narrowband(path, ["Halpha"], width_kms=400.0, velocity=cube.truth["VELOCITY"])
    # truth: observed flux (cm-1 units) to erg/cm2/s at the observed position
    x0 = observed_position_cm1(cube.line_set.rest_cm1[0], cube.truth["VELOCITY"])
    truth = cube.truth["HALPHA_FLUX_CM1"] * 1e8 / x0**2
    image, err = nb.image("Halpha"), nb.maps["HALPHA_ERR"]
    ratio = image / truth
    pull = (image - truth) / err
    print(f"\nnarrow-band / truth flux: median {np.median(ratio):.4f}, range {ratio.min():.3f}-{ratio.max():.3f}, "
          f"median error {np.median(err / truth):.2%}, pull std {np.std(pull):.2f}")
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)
    assert np.all(np.abs(image - truth) < 4 * err + 0.03 * truth)
    assert 0.5 < np.std(pull) < 2.0
    assert nb.units["HALPHA"] == "erg/cm2/s"
    dc = nb.maps["HALPHA_CONTINUUM"] - cube.truth["CONTINUUM"]  # a median of ~28 side-band channels
    assert abs(np.mean(dc)) < 0.15 * NOISE and np.all(np.abs(dc) < 1.5 * NOISE)
    # a region, a velocity off the line by far more than the window: no line flux
    off = lucijax.narrowband(path, ["Halpha"], width_kms=100.0, velocity=2000.0, region=(0, 4, 0, 8))
    assert off.image("Halpha").shape == (8, 4)
    assert np.all(np.abs(off.image("Halpha")) < 5 * off.maps["HALPHA_ERR"])


@pytest.mark.timeout(400)
def test_narrowband_of_a_fit_matches_its_fluxes(repeated):
    _, path, res = repeated
    with lucijax.open_cube(path) as cube:
        nb = lucijax.narrowband(cube, res)
    assert nb.cards["NBCONT"] == "fit" and nb.lines == LINES
    ratio = nb.image("Halpha") / res.maps["HALPHA_FLUX"]
    print(f"\nnarrow-band (+-300 km/s, fitted continuum) / fitted Halpha flux: median {np.median(ratio):.4f}")
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    sii = nb.image("SII6716") / nb.maps["SII6716_ERR"]  # an absent line: noise
    assert abs(np.median(sii)) < 0.5 and 0.6 < np.std(sii) < 1.6


# ------------------------------------------------------------------------ command line
@pytest.mark.timeout(400)
def test_cli_writes_covariance_narrowband_and_the_new_maps(repeated, tmp_path, capsys):
    _, path, res = repeated
    out = tmp_path / "cli"
    rc = main(["fit", str(path), "--lines", *LINES, "--region", "0:6,0:5", "--covariance", "--narrowband", "250",
               "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "covariance.fits" in text and "narrowband.fits" in text
    names, cov = lucijax.read_covariance(out / "covariance.fits")
    assert names == res.parameter_names() and cov.shape[:2] == (5, 6)
    with fits.open(out / "maps.fits") as hdul:
        for name in ("CONTINUUM_ERR", "HALPHA_DETECTED", "SII6731_DETECTED", "N_DETECTED"):
            assert name in hdul
        np.testing.assert_allclose(np.sqrt(cov[..., 0, 0]), hdul["HALPHA_VELOCITY_ERR"].data, rtol=1e-5)
        w_map = WCS(hdul["HALPHA_FLUX"].header)
        flux = hdul["HALPHA_FLUX"].data
    with fits.open(out / "narrowband.fits") as hdul:
        assert {"HALPHA", "HALPHA_ERR", "NII6583", "SII6731"} <= {h.name for h in hdul}
        assert hdul[0].header["NBWIDTH"] == 250.0 and hdul["HALPHA"].header["BUNIT"] == "erg/cm2/s"
        assert WCS(hdul["HALPHA"].header).pixel_to_world(1, 2).separation(w_map.pixel_to_world(1, 2)).arcsec < 1e-6
        assert np.median(hdul["HALPHA"].data / flux) == pytest.approx(1.0, abs=0.04)
    # options that cannot go together name themselves
    assert main(["fit", str(path), "--lines", *LINES, "--covariance", "--components", "2", "--out", str(out)]) == 2
    assert "--covariance" in capsys.readouterr().err
    assert main(["fit", str(path), "--lines", *LINES, "--narrowband", "0", "--out", str(out)]) == 2
    assert "--narrowband" in capsys.readouterr().err
