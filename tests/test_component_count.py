"""One or two components per pixel from the MAP fits' BIC (issue 21 item 6).

``Components(select=True)`` fits one and two ordered components and keeps two where
``delta_bic = delta_chi2 - (D2 - D1) ln n > bic_threshold``. Checked here: the statistic
against a brute-force recomputation from the two fits made on their own (the plain
matched-filter MAP fit and the plain two-component fit) and their model spectra; each pixel's
maps equal the chosen fit's; the right N on synthetic spectra with known truth; the command
line. Its agreement with the nested-sampling evidence and its speed are measured by
``benchmarks/bench_component_count.py`` (too slow for a test: ~10 s of nested sampling per
spectrum on this machine).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import lucijax
from lucijax.engine import map_rows
from lucijax.io.header import header_from_attrs
from lucijax.simulate import make_cube, simulate_components
from lucijax.status import Status

pytestmark = pytest.mark.timeout(600)

LINES = ["Halpha", "NII6583", "NII6548"]


@pytest.fixture(scope="module")
def mixed():
    """16 two-component spectra (220 km/s apart, each SNR 12-40) then 16 one-component ones
    (SNR 10-40), the engine's outputs of the selection and of both fits on their own."""
    two = simulate_components(16, n_components=2, separation_kms=220.0, snr_range=(12.0, 40.0), seed=5)
    one = simulate_components(16, n_components=1, snr_range=(10.0, 40.0), seed=6)
    y = np.concatenate([two["spectra"], one["spectra"]])
    fwhm = np.concatenate([two["fwhm_cm1"], one["fwhm_cm1"]]).astype(np.float32)
    hdr = header_from_attrs(two["header"], two["header"]["step_nb"], "sim", flux_unit="erg/cm2/s/A")
    bound = lucijax.Model(LINES, profile="sincgauss").bind(hdr)
    np.testing.assert_array_equal(bound.window, two["window"])
    ex = lucijax.Execution(batch_size=32, progress=False)
    rows = {"y": y, "fwhm": fwhm}
    selected = map_rows(lucijax.Components(select=True).program(bound), rows, ex)
    alone1 = map_rows(lucijax.MAP(start="matched").program(bound), rows, ex)
    alone2 = map_rows(lucijax.Components(n_components=2).program(bound), rows, ex)
    truth = np.array([2] * 16 + [1] * 16)
    return bound, y, fwhm, truth, selected, alone1.fit, alone2.fit


def _rss(model, theta, linear, y, fwhm):
    import jax.numpy as jnp

    spectrum = np.asarray(model.spectrum(jnp.asarray(theta, jnp.float32), jnp.asarray(linear, jnp.float32),
                                         jnp.float32(fwhm)), np.float64)
    return float(np.sum((y.astype(np.float64) - spectrum) ** 2))


def test_statistic_equals_brute_force_from_the_two_fits(mixed):
    bound, y, fwhm, _, selected, fit1, fit2 = mixed
    two_model = lucijax.Components(n_components=2).result_model(bound).line_model
    n = y.shape[1]
    extra = 2 + 2  # a second velocity and broadening, a second Halpha and [NII] amplitude
    for i in range(y.shape[0]):
        th1 = np.concatenate([fit1.velocity_kms[i], fit1.broadening_kms[i]])
        th2 = np.concatenate([fit2.velocity_kms[i], fit2.broadening_kms[i]])
        rss1 = _rss(bound.line_model, th1, fit1.linear[i], y[i], fwhm[i])
        rss2 = _rss(two_model, th2, fit2.linear[i], y[i], fwhm[i])
        want = (rss1 - rss2) / float(fit2.noise[i]) ** 2
        got = float(selected.count.delta_chi2[i])
        # float32 sums of ~300 squared residuals; the difference of two such sums
        assert got == pytest.approx(want, rel=2e-3, abs=0.05 + 1e-5 * rss1 / float(fit2.noise[i]) ** 2), i
        assert float(selected.count.delta_bic[i]) == pytest.approx(got - extra * np.log(n), rel=1e-5, abs=1e-3)


def test_maps_are_the_chosen_fits(mixed):
    _, _, _, _, selected, fit1, fit2 = mixed
    n = np.asarray(selected.count.n_components)
    assert set(np.unique(n)) <= {1, 2}
    got = selected.fit
    for i in range(n.size):
        if n[i] == 2:
            for k in ("velocity_kms", "broadening_kms", "flux_cm1", "flux_err_cm1", "linear", "chi2_reduced"):
                np.testing.assert_allclose(getattr(got, k)[i], getattr(fit2, k)[i], rtol=1e-4, atol=1e-6, err_msg=k)
        else:
            for k, L in (("velocity_kms", 1), ("broadening_kms", 1), ("flux_cm1", 3), ("amplitude_err", 3)):
                np.testing.assert_allclose(getattr(got, k)[i][:L], getattr(fit1, k)[i], rtol=1e-4, err_msg=k)
                assert np.all(np.isnan(getattr(got, k)[i][L:])), k
            lin = got.linear[i]
            np.testing.assert_allclose(lin[[0, 1, 4]], fit1.linear[i], rtol=1e-4, atol=1e-6)
            assert np.all(np.isnan(lin[2:4]))
            assert got.status[i] == fit1.status[i]
            assert got.chi2_reduced[i] == pytest.approx(float(fit1.chi2_reduced[i]), rel=1e-4)


def test_right_number_of_components_on_known_truth(mixed):
    _, _, _, truth, selected, _, _ = mixed
    n = np.asarray(selected.count.n_components)
    right_two, right_one = np.mean(n[truth == 2] == 2), np.mean(n[truth == 1] == 1)
    print(f"\nACCEPTANCE BIC selection: two when two {right_two:.1%}, one when one {right_one:.1%}")
    assert right_two >= 0.9 and right_one >= 0.9


def test_select_needs_two_components():
    with pytest.raises(ValueError, match="n_components must be 2"):
        lucijax.Components(n_components=3, select=True)


@pytest.mark.timeout(900)
def test_cli_components_auto(tmp_path):
    cube = make_cube(6, 6, seed=3).write(tmp_path / "c.hdf5")
    base = [sys.executable, "-m", "lucijax.cli", "fit", str(cube), "--lines", *LINES, "-q", "--no-checkpoint"]
    run = subprocess.run(base + ["--components", "auto", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "components (BIC): two in" in run.stdout
    from astropy.io import fits

    with fits.open(tmp_path / "o" / "maps.fits") as hdul:
        names = {h.name for h in hdul}
        n = hdul["N_COMPONENTS"].data
        c2 = hdul["HALPHA_C2_VELOCITY"].data
        assert hdul[0].header["SELECT"] == "BIC"
    assert {"N_COMPONENTS", "DELTA_CHI2", "DELTA_BIC", "HALPHA_C1_FLUX", "HALPHA_C2_FLUX"} <= names
    assert set(np.unique(n)) <= {1, 2}
    assert np.all(np.isnan(c2[n == 1])) and np.all(np.isfinite(c2[n == 2]))
    for bad, message in ((["--components", "many"], "invalid int_or_auto value"),
                         (["--bic-threshold", "3"], "use it with --components auto")):
        run = subprocess.run(base + bad + ["--out", str(tmp_path / "bad")], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_status_of_an_unusable_spectrum_is_kept(mixed):
    bound = mixed[0]
    program = lucijax.Components(select=True).program(bound)
    y = np.full((2, mixed[1].shape[1]), np.nan, np.float32)
    # the fixture's batch size: the rows are padded to it, and the compiled program is reused
    out = map_rows(program, {"y": y, "fwhm": mixed[2][:2]}, lucijax.Execution(batch_size=32, progress=False))
    assert np.all(np.asarray(out.count.n_components) == 0)
    assert np.all(np.asarray(out.fit.status) == int(Status.INVALID_INPUT))
