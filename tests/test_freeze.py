"""Freeze mode (issue 6): velocities and broadenings from given maps, only the amplitudes
and the continuum fitted.

Frozen at the TRUE kinematics of a synthetic cube, the amplitudes must be unbiased with
calibrated errors (pulls std ~1); the linear solve must equal an independent float64
least-squares solution; frozen at the kinematics of a free fit (read back from its
maps.fits), the amplitudes must equal the free fit's.
"""

from __future__ import annotations

import numpy as np
import pytest

import lucijax
from lucijax.fit.cube import plan_fit, pixel_fwhm_cm1
from lucijax.fit.freeze import fit_region_frozen, kinematic_maps, make_frozen_fitter
from lucijax.io import open_cube
from lucijax.simulate import DEFAULT_LINES, make_cube

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def frozen_cube(tmp_path_factory):
    cube = make_cube(14, 14, seed=314, snr_range=(8.0, 60.0), continuum_snr=(0.5, 2.0))
    path = tmp_path_factory.mktemp("freeze") / "c.hdf5"
    cube.write(path)
    return cube, path


@pytest.fixture(scope="module")
def truth_frozen(frozen_cube):
    cube, path = frozen_cube
    with open_cube(path) as c:
        plan = plan_fit(c.header, list(DEFAULT_LINES), model="sincgauss")
        nx, ny, _ = c.shape
        region = (0, nx, 0, ny)
        theta, err = kinematic_maps({"VELOCITY": cube.truth["VELOCITY"], "BROADENING": cube.truth["BROADENING"]},
                                    plan.line_set, region, (nx, ny))
        raw = fit_region_frozen(c, plan, theta, err, region, batch_size=64, progress=False)
    return plan, raw


def test_frozen_at_truth_reproduces_amplitudes(frozen_cube, truth_frozen):
    cube, _ = frozen_cube
    plan, raw = truth_frozen
    ls = plan.line_set
    assert np.all(raw["status"] == 0)
    # the given kinematics come back unchanged, with no uncertainty of their own
    np.testing.assert_allclose(raw["velocity_kms"][..., 0], cube.truth["VELOCITY"].T, atol=1e-3)
    np.testing.assert_allclose(raw["broadening_kms"][..., 0], cube.truth["BROADENING"].T, atol=1e-3)
    assert np.all(np.isnan(raw["velocity_err_kms"]))
    pulls = []
    for i in ls.primary_lines:
        name = ls.names[i].upper()
        true_amp = cube.truth[f"{name}_AMPLITUDE"].T
        pulls.append(((raw["amplitude"][..., i] - true_amp) / raw["amplitude_err"][..., i]).ravel())
    pulls = np.concatenate(pulls)
    noise_ratio = raw["noise"] / cube.truth["NOISE"].T
    print(f"\nACCEPTANCE freeze at truth: amplitude pulls mean {pulls.mean():.3f} std {pulls.std():.3f} "
          f"({pulls.size} amplitudes); median noise/true {np.median(noise_ratio):.3f}")
    assert abs(pulls.mean()) < 0.15
    assert 0.85 < pulls.std() < 1.15
    assert abs(np.median(noise_ratio) - 1) < 0.05
    # the tied [NII]6548 follows its primary with the atomic ratio in energy flux
    i548, i583 = ls.names.index("NII6548"), ls.names.index("NII6583")
    x0 = ls.rest_cm1  # at v ~ 0 the ratio of cm^-1 fluxes differs from the energy ratio by (x0 ratio)^2
    ratio = raw["flux_cm1"][..., i548] / raw["flux_cm1"][..., i583]
    np.testing.assert_allclose(ratio, (1 / 3) * (x0[i548] / x0[i583]) ** 2, rtol=1e-4)


def test_linear_solve_matches_float64_lstsq(frozen_cube):
    """One pixel: amplitudes and their errors against numpy's float64 least squares on the
    same design matrix (all amplitudes positive, so the A >= 0 bound is inactive)."""
    import jax.numpy as jnp

    cube, path = frozen_cube
    with open_cube(path) as c:
        plan = plan_fit(c.header, list(DEFAULT_LINES), model="sincgauss")
        x, y = 3, 5
        spec = c.read_spectra(x, x + 1, y, y + 1)[0, 0, plan.window].astype(np.float64)
        fwhm = float(np.asarray(pixel_fwhm_cm1(c.header, c.read_calib_map(x, x + 1, y, y + 1))).ravel()[0])
    theta = np.array([cube.truth["VELOCITY"][y, x], cube.truth["BROADENING"][y, x]])
    fit = make_frozen_fitter(plan.model, plan.settings)(spec[None], np.array([fwhm]), theta[None])
    m = np.asarray(plan.model.design_matrix(jnp.asarray(theta, jnp.float32), jnp.float32(fwhm)), np.float64)
    alpha, *_ = np.linalg.lstsq(m, spec, rcond=None)
    assert np.all(alpha[: plan.spec.n_amplitudes] > 0)
    np.testing.assert_allclose(np.asarray(fit.linear[0]), alpha, rtol=2e-3, atol=1e-3 * np.abs(alpha).max())
    noise = float(fit.noise[0])
    cov = np.linalg.inv(m.T @ m) * noise**2
    # Halpha (column 0, peak amplitude = alpha_0)
    np.testing.assert_allclose(float(fit.amplitude_err[0, 0]), np.sqrt(cov[0, 0]), rtol=2e-3)
    np.testing.assert_allclose(float(fit.amplitude[0, 0]), alpha[0], rtol=2e-3)


def test_frozen_at_free_fit_equals_free_fit(frozen_cube, tmp_path):
    """Kinematics read back from a free fit's maps.fits: the frozen amplitudes are the free
    fit's (same theta, same linear problem)."""
    _, path = frozen_cube
    free = lucijax.fit_cube(path, list(DEFAULT_LINES), model="sincgauss", region=(2, 12, 1, 13), progress=False)
    free.write(tmp_path)
    with open_cube(path) as c:
        plan = free.plan
        # maps of the region; the fit below is over the same region
        theta, err = kinematic_maps(tmp_path / "maps.fits", plan.line_set, free.region, c.shape[:2])
        raw = fit_region_frozen(c, plan, theta, err, free.region, batch_size=64, progress=False)
    ok = free.maps["STATUS"].T == 0
    assert ok.mean() > 0.8
    for i, name in enumerate(plan.line_set.names):
        a_free = free.maps[f"{name.upper()}_AMPLITUDE"].T
        np.testing.assert_allclose(raw["amplitude"][..., i][ok], a_free[ok], rtol=2e-3, atol=1e-3 * np.nanmax(a_free))
    np.testing.assert_array_equal(raw["velocity_err_kms"][..., 0], free.maps["HALPHA_VELOCITY_ERR"].T.astype(np.float32))


def test_missing_or_misshaped_maps_are_reported(frozen_cube):
    cube, _ = frozen_cube
    from lucijax.physics.lines import make_line_set

    ls = make_line_set(["Halpha"])
    with pytest.raises(ValueError, match="HALPHA_VELOCITY"):
        kinematic_maps({"BROADENING": np.zeros((14, 14))}, ls, (0, 14, 0, 14), (14, 14))
    with pytest.raises(ValueError, match="shape"):
        kinematic_maps({"VELOCITY": np.zeros((5, 5))}, ls, (0, 14, 0, 14), (14, 14))
    # a full-cube map is cut to the region ([y, x] -> [x, y])
    v = np.arange(14 * 14, dtype=float).reshape(14, 14)
    theta, _ = kinematic_maps({"VELOCITY": v, "BROADENING": v}, ls, (2, 5, 3, 9), (14, 14))
    np.testing.assert_array_equal(theta[..., 0], v[3:9, 2:5].T)


def test_fit_cube_freeze_api(frozen_cube, tmp_path):
    """``lucijax.fit_cube(..., freeze=maps.fits)``: a free fit of the whole cube, then a
    frozen fit of a sub-region with the cube-sized maps; same amplitudes, same velocities."""
    _, path = frozen_cube
    free = lucijax.fit_cube(path, list(DEFAULT_LINES), progress=False)
    free.write(tmp_path)
    region = (3, 11, 2, 9)
    frozen = lucijax.fit_cube(path, list(DEFAULT_LINES), region=region, freeze=tmp_path / "maps.fits", progress=False)
    x0, x1, y0, y1 = region
    sub = {k: v[y0:y1, x0:x1] for k, v in free.maps.items()}
    ok = sub["STATUS"] == 0
    np.testing.assert_allclose(frozen.maps["HALPHA_VELOCITY"], sub["HALPHA_VELOCITY"], atol=1e-3)
    np.testing.assert_allclose(frozen.maps["HALPHA_AMPLITUDE"][ok], sub["HALPHA_AMPLITUDE"][ok], rtol=2e-3)
    np.testing.assert_allclose(frozen.maps["HALPHA_FLUX"][ok], sub["HALPHA_FLUX"][ok], rtol=2e-3)
    assert np.all(frozen.maps["STATUS"] == 0)
    # the model spectrum of the frozen fit is available like any fit's
    axis, model = frozen.model_spectrum(2, 3)
    assert axis.shape == model.shape and np.nanmax(model) > 0
    with pytest.raises(ValueError, match="broadening"):
        lucijax.fit_cube(path, list(DEFAULT_LINES), region=region, freeze={"VELOCITY": free.maps["HALPHA_VELOCITY"]},
                         progress=False)


def test_cli_freeze(frozen_cube, tmp_path):
    """``lucijax fit --freeze maps.fits``: the frozen fit's velocities are the given ones."""
    from lucijax.cli import main
    from lucijax.io import read_maps_fits

    _, path = frozen_cube
    lines = list(DEFAULT_LINES)
    assert main(["fit", str(path), "--lines", *lines, "--region", "3:11,2:9", "--out", str(tmp_path / "free"),
                 "--no-checkpoint", "-q"]) == 0
    assert main(["fit", str(path), "--lines", *lines, "--region", "3:11,2:9", "--freeze", str(tmp_path / "free" / "maps.fits"),
                 "--out", str(tmp_path / "frozen"), "--no-checkpoint", "-q"]) == 0
    free = read_maps_fits(tmp_path / "free" / "maps.fits")
    frozen = read_maps_fits(tmp_path / "frozen" / "maps.fits")
    np.testing.assert_allclose(frozen["HALPHA_VELOCITY"], free["HALPHA_VELOCITY"], atol=1e-3)
    ok = free["STATUS"] == 0
    np.testing.assert_allclose(frozen["HALPHA_FLUX"][ok], free["HALPHA_FLUX"][ok], rtol=2e-3)
