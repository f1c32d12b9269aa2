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
from lucijax.description import pixel_fwhm_cm1
from lucijax.io import open_cube
from lucijax.simulate import DEFAULT_LINES, make_cube
from lucijax.solvers.frozen import fit_frozen_spectrum
from lucijax.solvers.kinematics import kinematic_maps

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def frozen_cube(tmp_path_factory):
    cube = make_cube(14, 14, seed=314, snr_range=(8.0, 60.0), continuum_snr=(0.5, 2.0))
    path = tmp_path_factory.mktemp("freeze") / "c.hdf5"
    cube.write(path)
    return cube, path


def _model():
    return lucijax.Model(list(DEFAULT_LINES), profile="sincgauss")


@pytest.fixture(scope="module")
def truth_frozen(frozen_cube):
    """The whole cube fitted by ``lucijax.Frozen`` at the true kinematics ([y, x] maps)."""
    cube, path = frozen_cube
    kinematics = {"VELOCITY": cube.truth["VELOCITY"], "BROADENING": cube.truth["BROADENING"]}
    res = lucijax.fit(path, _model(), lucijax.Frozen(kinematics),
                      execution=lucijax.Execution(batch_size=64, progress=False))
    return res.bound, res.fields


def test_frozen_at_truth_reproduces_amplitudes(frozen_cube, truth_frozen):
    cube, _ = frozen_cube
    bound, raw = truth_frozen
    ls = bound.line_set
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
    import jax
    import jax.numpy as jnp

    cube, path = frozen_cube
    with open_cube(path) as c:
        bound = _model().bind(c.header)
        x, y = 3, 5
        spec = c.read_spectra(x, x + 1, y, y + 1)[0, 0, bound.window].astype(np.float64)
        fwhm = float(np.asarray(pixel_fwhm_cm1(c.header, c.read_calib_map(x, x + 1, y, y + 1))).ravel()[0])
    theta = np.array([cube.truth["VELOCITY"][y, x], cube.truth["BROADENING"][y, x]])
    settings = lucijax.MAP().settings(bound.model)
    fit = jax.jit(lambda yy, ff, th: fit_frozen_spectrum(bound.line_model, settings, yy, ff, th))(
        jnp.asarray(spec, jnp.float32), jnp.float32(fwhm), jnp.asarray(theta, jnp.float32))
    m = np.asarray(bound.line_model.design_matrix(jnp.asarray(theta, jnp.float32), jnp.float32(fwhm)), np.float64)
    alpha, *_ = np.linalg.lstsq(m, spec, rcond=None)
    assert np.all(alpha[: bound.spec.n_amplitudes] > 0)
    np.testing.assert_allclose(np.asarray(fit.linear), alpha, rtol=2e-3, atol=1e-3 * np.abs(alpha).max())
    noise = float(fit.noise)
    cov = np.linalg.inv(m.T @ m) * noise**2
    # Halpha (column 0, peak amplitude = alpha_0)
    np.testing.assert_allclose(float(fit.amplitude_err[0]), np.sqrt(cov[0, 0]), rtol=2e-3)
    np.testing.assert_allclose(float(fit.amplitude[0]), alpha[0], rtol=2e-3)


def test_frozen_at_free_fit_equals_free_fit(frozen_cube, tmp_path):
    """Kinematics read back from a free fit's maps.fits: the frozen amplitudes are the free
    fit's (same theta, same linear problem)."""
    _, path = frozen_cube
    free = lucijax.fit(path, _model(), region=(2, 12, 1, 13), execution=lucijax.Execution(progress=False))
    free.write(tmp_path)
    # maps of the region; the frozen fit is over the same region
    frozen = lucijax.fit(path, _model(), lucijax.Frozen(tmp_path / "maps.fits"), region=free.region,
                         execution=lucijax.Execution(batch_size=64, progress=False))
    assert frozen.region == free.region
    raw = frozen.fields
    ok = free.maps["STATUS"].T == 0
    assert ok.mean() > 0.8
    for i, name in enumerate(free.bound.line_set.names):
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


def test_fit_freeze_api(frozen_cube, tmp_path):
    """``lucijax.fit(..., lucijax.Frozen(maps.fits))``: a free fit of the whole cube, then a
    frozen fit of a sub-region with the cube-sized maps; same amplitudes, same velocities."""
    _, path = frozen_cube
    description = lucijax.Model(list(DEFAULT_LINES))
    free = lucijax.fit(path, description, execution=lucijax.Execution(progress=False))
    free.write(tmp_path)
    region = (3, 11, 2, 9)
    frozen = lucijax.fit(path, description, lucijax.Frozen(tmp_path / "maps.fits"), region=region,
                         execution=lucijax.Execution(progress=False))
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
        lucijax.fit(path, description, lucijax.Frozen({"VELOCITY": free.maps["HALPHA_VELOCITY"]}), region=region,
                    execution=lucijax.Execution(progress=False))


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
