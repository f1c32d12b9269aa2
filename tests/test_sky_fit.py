"""Fits of sky spectra (synthetic, known truth): OH lines everywhere in the band, with and
without emission lines of the gas in front of the sky.

* With lines all over the band no channel is line-free: the noise then comes from the
  residuals of every channel, which the fit's free parameters have shrunk; the estimate
  must still be unbiased, so that the reduced chi2 of a correct model is ~1.
* ``--lines`` with ``--sky-lines``: the emission lines get their own kinematic group after
  the sky's; both velocities are recovered.
"""

from __future__ import annotations

import numpy as np
import pytest

import lucijax
from lucijax.engine import map_rows
from lucijax.io.header import header_from_attrs
from lucijax.physics import instrument
from lucijax.physics.lines import join_line_sets, make_line_set, sky_line_set
from lucijax.simulate import AXIS_CORR, filter_header, render_spectra
from lucijax.status import Status

pytestmark = pytest.mark.timeout(300)

N_SPECTRA = 96
NOISE = 1.0


def _setup(tmp_path, n_lines: int):
    """Header, a sky line list of ``n_lines`` lines spread evenly over the SN3 band, the
    observed axis and each spectrum's sinc FWHM."""
    attrs = filter_header("SN3")
    axis = attrs["axis_min"] + np.arange(attrs["step_nb"]) * attrs["axis_step"]
    lo, hi = instrument.get_filter("SN3").band_cm1
    sigma = np.linspace(lo + 12.0, hi - 12.0, n_lines)
    path = tmp_path / "sky.orb"
    rng = np.random.default_rng(1)
    path.write_text("# index wavelength_A intensity\n" + "".join(
        f"{k} {1e8 / s:.4f} {rng.uniform(0.3, 1.0):.3f}\n" for k, s in enumerate(sigma)))
    hdr = header_from_attrs(attrs, attrs["step_nb"], "synthetic sky", flux_unit="erg/cm2/s/A")
    fwhm = float(instrument.sinc_fwhm_cm1(attrs["step"], attrs["step_nb"], attrs["zpd_index"], AXIS_CORR))
    return hdr, path, axis, fwhm


def _observe(bound, clean, seed):
    rng = np.random.default_rng(seed)
    y = clean + rng.normal(0.0, NOISE, clean.shape)
    return y[:, bound.window].astype(np.float32)


def _fit(bound, y, fwhm):
    """The MAP fit (matched-filter start) of spectra on the window: a PixelFit of rows."""
    program = lucijax.MAP(start="matched").program(bound)
    return map_rows(program, {"y": y, "fwhm": fwhm}).fit


def test_noise_without_line_free_channels_is_unbiased(tmp_path):
    """60 lines, one every ~14 cm-1 (~3 FWHM): fewer than 20 channels are line-free, so the
    noise is the robust std of the residuals of all channels, studentized by their leverage
    (~60 fitted parameters); its mean over the spectra is the true noise within 3 %, and
    the median reduced chi2 is ~1 (the raw residuals' robust std is ~12 % low, and ~4 % low
    scaled by sqrt(n / (n - p)))."""
    hdr, sky_file, axis, fwhm = _setup(tmp_path, 60)
    bound = lucijax.Model(sky_lines=sky_file, profile="sinc").bind(hdr)
    ls = bound.line_set
    n_free = len(ls.primary_lines) + 1 + 1  # amplitudes, continuum, velocity
    n_chan = int(np.asarray(bound.grid.axis_rel_cm1).size)
    assert n_free > 50 and n_chan < 8 * n_free  # the shrinkage is ~12 %: the test can fail
    # every channel lies within line_free_fwhm FWHM of a line: no line-free window at all
    spacing = np.diff(np.sort(1e7 / np.asarray(ls.rest_nm)))
    assert spacing.max() < 2 * lucijax.MAP(start="matched").settings(bound.model).line_free_fwhm * fwhm
    rng = np.random.default_rng(7)
    n = N_SPECTRA
    amp = rng.uniform(5.0, 40.0, (n, len(ls.primary_lines)))
    clean = render_spectra(ls, "sinc", axis, np.full(n, fwhm), np.full((n, 1), 12.0), np.zeros((n, 1)), amp,
                           np.full(n, 3.0))
    fit = _fit(bound, _observe(bound, clean, 8), np.full(n, fwhm, np.float32))
    noise = np.asarray(fit.noise)
    chi2 = np.asarray(fit.chi2_reduced)
    status = np.asarray(fit.status)
    print(f"\nsky noise: mean estimate / truth {noise.mean() / NOISE:.4f}, median chi2 {np.median(chi2):.3f}, "
          f"{n_chan} channels, {n_free} parameters")
    assert np.mean(status == Status.CONVERGED) > 0.9
    assert abs(noise.mean() / NOISE - 1.0) < 0.03
    assert abs(np.median(chi2) - 1.0) < 0.06


def test_emission_lines_in_front_of_the_sky(tmp_path):
    """12 OH lines at +8 km/s and Halpha + [NII] at -310 km/s (a galaxy's gas in the sky
    region): one fit gives both velocities within 4 sigma, the sky first."""
    hdr, sky_file, axis, fwhm = _setup(tmp_path, 12)
    bound = lucijax.Model(["Halpha", "NII6583", "NII6548"], sky_lines=sky_file, profile="sinc").bind(hdr)
    ls = bound.line_set
    sky = sky_line_set(sky_file, (axis[0], axis[-1]), fwhm)
    gas = make_line_set(["Halpha", "NII6583", "NII6548"])
    assert ls == join_line_sets(sky, gas)
    assert ls.n_groups == 2 and ls.names[: sky.n_lines] == sky.names
    n = 32
    rng = np.random.default_rng(3)
    amp = np.concatenate([rng.uniform(10.0, 30.0, (n, len(sky.primary_lines))),
                          np.tile([12.0, 8.0], (n, 1))], axis=1)  # Halpha, [NII]6583 (6548 tied)
    v_true = np.array([8.0, -310.0])
    clean = render_spectra(ls, "sinc", axis, np.full(n, fwhm), np.tile(v_true, (n, 1)), np.zeros((n, 2)), amp,
                           np.full(n, 2.0))
    fit = _fit(bound, _observe(bound, clean, 4), np.full(n, fwhm, np.float32))
    v = np.asarray(fit.velocity_kms)
    ve = np.asarray(fit.velocity_err_kms)
    pulls = (v - v_true) / ve
    print(f"\nsky + gas: median v {np.median(v, axis=0)}, median err {np.median(ve, axis=0)}, "
          f"max |pull| {np.abs(pulls).max(axis=0)}")
    assert np.mean(np.asarray(fit.status) == Status.CONVERGED) > 0.9
    assert np.all(np.abs(pulls) < 4.5)
    assert np.all(np.median(ve, axis=0) < [3.0, 6.0])


def test_join_line_sets_renumbers_groups_and_ties():
    a = make_line_set(["Halpha", "NII6583", "NII6548"])  # [NII] tie: (2, 1, 1/3)
    b = make_line_set(["OIII5007", "OIII4959", "Hbeta"], groups=[0, 0, 1], tie_oiii=True)
    j = join_line_sets(a, b)
    assert j.names == a.names + b.names
    assert j.groups == (0, 0, 0) + tuple(g + 1 for g in b.groups)
    assert j.n_groups == a.n_groups + b.n_groups
    assert set(j.ties) == set(a.ties) | {(d + 3, p + 3, r) for d, p, r in b.ties}
