"""Channel weights of flux-calibrated data: an FTS spreads the noise evenly over the
channels in counts, and flux calibration multiplies channel k by ``flambda[k]``, so the
noise of calibrated spectra follows ``flambda``.

* ``CubeHeader.noise_shape`` is ``flambda`` / its median for calibrated data with a
  per-channel ``flambda``, None otherwise.
* Synthetic spectra whose noise follows a steep ``flambda`` (x8 over the band): the
  weighted fit gives the noise of a median channel, a reduced chi2 of ~1 and amplitude
  pulls of unit width; weighting every channel alike gives pulls ~1.35x too wide for a
  line where the noise is high (Halpha, near the blue edge).
* Bayesian posteriors (the :class:`~lucijax.bayes.MH` posterior program of
  :mod:`lucijax.bayes.posterior`) use the same weights: their amplitude agrees with the
  weighted MAP fit.

The fits run on spectra in memory through :func:`lucijax.engine.map_rows` (a bound
:class:`~lucijax.description.Model` and the per-spectrum program of
``MAP(start='matched')``).
"""

from __future__ import annotations

import numpy as np
import pytest

import lucijax
from lucijax.bayes.posterior import MAP_FIELDS, posterior_program
from lucijax.engine import Execution, map_rows
from lucijax.io.header import header_from_attrs
from lucijax.simulate import filter_header, render_spectra
from lucijax.status import Status

pytestmark = pytest.mark.timeout(300)

LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def _header(flambda, flux_unit="erg/cm2/s/A"):
    attrs = dict(filter_header("SN3"))
    attrs["flambda"] = flambda
    return header_from_attrs(attrs, attrs["step_nb"], "synthetic", flux_unit=flux_unit)


def _steep_flambda(n):
    """flambda rising x8 from the red to the blue end of the axis (channel order)."""
    return 1e-17 * np.exp(np.linspace(np.log(0.35), np.log(2.8), n))


def test_noise_shape_follows_a_per_channel_flambda_only():
    n = filter_header("SN3")["step_nb"]
    flambda = _steep_flambda(n)
    flambda[-3:] = np.nan
    shape = _header(flambda).noise_shape()
    good = np.isfinite(flambda)
    np.testing.assert_allclose(shape[good], flambda[good] / np.median(flambda[good]), rtol=1e-12)
    assert np.all(np.isnan(shape[~good]))
    assert _header(1e-17).noise_shape() is None  # scalar flambda: flat noise
    assert _header(np.full(n, 1e-17)).noise_shape() is None
    assert _header(flambda, flux_unit="counts").noise_shape() is None  # counts: flat noise


def _spectra(bound, n, seed):
    """Noise-free spectra of the bound model's lines on its window (Halpha amplitude 20,
    broadening 25 km/s, continuum 5), their FWHM, the true amplitudes and the random
    generator."""
    rng = np.random.default_rng(seed)
    axis = bound.grid.axis_rel_cm1 + bound.grid.ref_cm1
    fwhm = np.full(n, 3.165)
    amp = np.tile([20.0, 8.0, 5.0, 3.5], (n, 1))
    vel = rng.uniform(-100, 100, (n, 1))
    clean = render_spectra(bound.line_set, "sincgauss", axis, fwhm, vel, np.full((n, 1), 25.0), amp, np.full(n, 5.0))
    return clean, fwhm.astype(np.float32), amp, rng


@pytest.fixture(scope="module")
def steep_fits():
    """192 spectra whose noise follows a steep flambda, fitted with and without weights."""
    n_ch = filter_header("SN3")["step_nb"]
    weighted = lucijax.Model(LINES, profile="sincgauss").bind(_header(_steep_flambda(n_ch)))
    uniform = lucijax.Model(LINES, profile="sincgauss", flambda_weights=False).bind(_header(_steep_flambda(n_ch)))
    assert weighted.grid.noise_shape is not None and uniform.grid.noise_shape is None
    clean, fwhm, amp, rng = _spectra(weighted, 192, seed=11)
    y = (clean + rng.normal(0.0, 1.0, clean.shape) * weighted.grid.noise_shape).astype(np.float32)
    out = {}
    for name, bound in (("weighted", weighted), ("uniform", uniform)):
        fit = map_rows(lucijax.MAP(start="matched").program(bound), {"y": y, "fwhm": fwhm}).fit
        out[name] = {k: np.asarray(v) for k, v in fit._asdict().items()}
    return weighted, y, fwhm, amp, out


def test_weighted_fit_has_unit_pulls_where_the_noise_is_high(steep_fits):
    _, _, _, amp, out = steep_fits
    w, u = out["weighted"], out["uniform"]
    assert np.mean(w["status"] == Status.CONVERGED) > 0.95
    assert abs(np.median(w["noise"]) - 1.0) < 0.06  # the noise of a median channel
    assert abs(np.median(w["chi2_reduced"]) - 1.0) < 0.06
    pull_w = (w["amplitude"][:, 0] - amp[:, 0]) / w["amplitude_err"][:, 0]
    pull_u = (u["amplitude"][:, 0] - amp[:, 0]) / u["amplitude_err"][:, 0]
    assert 0.85 < np.std(pull_w) < 1.15
    assert np.std(pull_u) > 1.2  # measured 1.37: errors from the median channel's noise
    assert abs(np.median(w["amplitude"][:, 0] / amp[:, 0] - 1)) < 0.02


def test_posteriors_use_the_channel_weights(steep_fits):
    weighted, y, fwhm, _, out = steep_fits
    w = out["weighted"]
    k = slice(0, 4)
    sampler = lucijax.MH(num_warmup=200, num_samples=400, num_chains=2)
    mf = {f: v[k] for f, v in w.items()}
    # no network: the prior and proposal come from the MAP fit and its errors
    program = posterior_program(sampler, weighted, mf, network=None)
    n = len(y[k])
    inputs = {"y": y[k], "fwhm": fwhm[k], "xy": np.stack([np.arange(n), np.zeros(n, int)], 1).astype(np.int32)}
    inputs.update({f"map_{f}": np.asarray(mf[f]) for f in MAP_FIELDS})
    post = map_rows(program, inputs, Execution(progress=False))
    post = {f: np.asarray(v) for f, v in post._asdict().items() if v is not None}
    # posterior median and width of Halpha agree with the weighted MAP fit and its errors
    d = (post["amplitude"][:, 0] - w["amplitude"][k, 0]) / w["amplitude_err"][k, 0]
    assert np.all(np.abs(d) < 0.5)
    np.testing.assert_allclose(post["amplitude_err"][:, 0], w["amplitude_err"][k, 0], rtol=0.3)
