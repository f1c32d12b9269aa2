"""Continuum bases: the polynomial and the cubic B-spline (``continuum_spline``).

* The B-spline columns equal scipy's B-spline basis on the same knots, are non-negative
  and sum to 1 (a constant continuum is exact).
* A continuum with structure (a 250 cm-1 ripple, as starlight or a filter-edge flux
  calibration leave) under the lines: a constant continuum leaves it in the residuals, so
  the line-free noise estimate is inflated; the spline takes it, and the noise estimate,
  reduced chi2, amplitudes and the continuum at the window centre come back to the truth.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import BSpline

import lucijax
from lucijax.engine import map_rows
from lucijax.io.header import header_from_attrs
from lucijax.model import MAX_SPLINE_INTERVALS, ModelSpec, continuum_basis
from lucijax.physics.lines import make_line_set
from lucijax.simulate import filter_header, render_spectra
from lucijax.status import Status

pytestmark = pytest.mark.timeout(300)

LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


@pytest.mark.parametrize("intervals", [1, 4, 16])
def test_spline_basis_matches_scipy_and_is_a_partition_of_unity(intervals):
    t = np.concatenate([np.linspace(-1.0, 1.0, 401), np.random.default_rng(0).uniform(-1, 1, 200)])
    basis = continuum_basis(t, spline_intervals=intervals)
    knots = np.concatenate([[-1.0] * 3, np.linspace(-1.0, 1.0, intervals + 1), [1.0] * 3])
    n = intervals + 3
    ref = np.stack([BSpline(knots, np.eye(n)[j], 3)(t) for j in range(n)], axis=1)
    assert basis.shape == (t.size, n)
    np.testing.assert_allclose(basis, ref, atol=1e-12)
    assert basis.min() >= -1e-15
    np.testing.assert_allclose(basis.sum(axis=1), 1.0, atol=1e-12)


def test_polynomial_basis_and_spec_validation():
    t = np.linspace(-1, 1, 7)
    np.testing.assert_array_equal(continuum_basis(t, order=2), np.stack([t**0, t, t**2], 1))
    ls = make_line_set(["Halpha"])
    assert ModelSpec(ls, "sinc", 2).n_continuum == 3
    assert ModelSpec(ls, "sinc", continuum_spline=16).n_continuum == 19
    assert ModelSpec(ls, "sinc", continuum_spline=16).n_linear == 1 + 19
    with pytest.raises(ValueError, match="not both"):
        ModelSpec(ls, "sinc", 1, 16)
    with pytest.raises(ValueError, match="between 0 and"):
        ModelSpec(ls, "sinc", continuum_spline=MAX_SPLINE_INTERVALS + 1)


def _structured_spectra(bound, n, seed):
    """Spectra of the bound model's lines (SNR ~ 30 in Halpha) on a continuum of 10 (noise units)
    with a 250 cm-1 ripple of +-4, noise 1. Returns (y, fwhm, amplitudes, continuum)."""
    rng = np.random.default_rng(seed)
    axis = bound.grid.axis_rel_cm1 + bound.grid.ref_cm1
    fwhm = np.full(n, 3.165)
    vel = rng.uniform(-100, 100, (n, 1))
    amp = np.tile([30.0, 12.0, 8.0], (n, 1))  # Halpha, [NII]6583 (6548 tied), [SII] 6716, 6731
    amp = np.concatenate([amp, amp[:, 2:3] * 0.7], 1)
    continuum = 10.0 + 4.0 * np.sin(2 * np.pi * (axis - axis[0]) / 250.0 + rng.uniform(0, 2 * np.pi, (n, 1)))
    clean = render_spectra(bound.line_set, "sinc", axis, fwhm, vel, np.zeros((n, 1)), amp, np.zeros(n))
    y = clean + continuum + rng.normal(0.0, 1.0, clean.shape)
    return y.astype(np.float32), fwhm.astype(np.float32), amp, continuum


def test_spline_continuum_takes_structure_that_a_constant_leaves_in_the_noise():
    attrs = filter_header("SN3")
    hdr = header_from_attrs(attrs, attrs["step_nb"], "synthetic", flux_unit="erg/cm2/s/A")
    constant = lucijax.Model(LINES, profile="sinc").bind(hdr)
    spline = lucijax.Model(LINES, profile="sinc", continuum_spline=16).bind(hdr)
    y, fwhm, amp, continuum = _structured_spectra(spline, 32, seed=5)
    fits = {}
    for name, bound in (("constant", constant), ("spline", spline)):
        program = lucijax.MAP(start="matched").program(bound)
        out = map_rows(program, {"y": y, "fwhm": fwhm})
        fits[name] = {k: np.asarray(v) for k, v in out.fit._asdict().items()}
    c, s = fits["constant"], fits["spline"]
    # the constant continuum leaves the ripple (rms 2.8 noise) in the line-free residuals
    assert np.median(c["noise"]) > 1.5
    # the spline: noise and reduced chi2 at the truth, amplitudes unbiased
    assert np.all(s["status"] == Status.CONVERGED)
    assert abs(np.median(s["noise"]) - 1.0) < 0.06
    assert abs(np.median(s["chi2_reduced"]) - 1.0) < 0.08
    rel = s["amplitude"][:, 0] / amp[:, 0] - 1.0
    assert abs(np.median(rel)) < 0.02
    # errors from the Laplace approximation match the scatter of the amplitudes
    pull = (s["amplitude"][:, 0] - amp[:, 0]) / s["amplitude_err"][:, 0]
    assert 0.7 < np.std(pull) < 1.4
    # the CONTINUUM map: the continuum at the window centre (not a spline coefficient)
    centre = continuum[:, continuum.shape[1] // 2 - 1: continuum.shape[1] // 2 + 1].mean(axis=1)
    # (statistical error ~0.3: a B-spline interval holds ~25 channels of noise 1; the ripple is +-4)
    dev = np.abs(s["continuum"] - centre)
    assert np.median(dev) < 0.4 and dev.max() < 1.2
