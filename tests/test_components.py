"""Multiple kinematic components with an ordering constraint (issue 6, acceptance 2).

The ordered parametrisation (velocity of component k = velocity of component k-1 + an
offset bounded below by the minimum separation) is checked against the unordered model it
reparametrises; the fit is checked on synthetic two-component spectra with known truth:
components 150 km/s apart, each at SNR >= 20, both velocities within 3 sigma of the truth in
>= 90 % of the pixels, never collapsed onto one another (the larger benchmark is
benchmarks/bench_components.py). Measured numbers are printed with the prefix ACCEPTANCE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lucijax
from lucijax.engine import map_rows
from lucijax.io.header import header_from_attrs
from lucijax.model import LineModel, ModelSpec, SpectralGrid
from lucijax.physics.lines import LineSet, make_line_set
from lucijax.simulate import simulate_components
from lucijax.solvers.components import component_line_set, ordered_bounds
from lucijax.solvers.fitting import FitSettings
from lucijax.status import Status

pytestmark = pytest.mark.timeout(300)

N_PIXELS = 160
SEPARATION_KMS = 150.0


def test_component_line_set_layout():
    base = make_line_set(["Halpha", "NII6583", "NII6548", "SII6716"], groups=[0, 0, 0, 1])
    ls = component_line_set(base, 3)
    assert ls.names[:4] == ("Halpha_C1", "NII6583_C1", "NII6548_C1", "SII6716_C1")
    assert ls.names[8:] == ("Halpha_C3", "NII6583_C3", "NII6548_C3", "SII6716_C3")
    assert ls.groups == (0, 0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5)
    assert ls.rest_nm == base.rest_nm * 3
    # the NII tie is repeated inside each component, never across components
    assert sorted(ls.ties) == sorted([(2, 1, 1 / 3), (6, 5, 1 / 3), (10, 9, 1 / 3)])
    assert set(ls.velocity_chain) == {(2, 0), (3, 1), (4, 2), (5, 3)}
    # component 3's velocity = p0 + p2 + p4 for group 0
    t = ls.velocity_matrix()
    np.testing.assert_array_equal(t[4], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(t[1], [0, 1, 0, 0, 0, 0])


def test_velocity_chain_is_validated():
    with pytest.raises(ValueError, match="cycle"):
        LineSet(("a", "b"), (656.0, 658.0), (0, 1), (), ((0, 1), (1, 0)))
    with pytest.raises(ValueError, match="two different groups"):
        LineSet(("a", "b"), (656.0, 658.0), (0, 1), (), ((1, 1),))
    with pytest.raises(ValueError, match="two base groups"):
        LineSet(("a", "b", "c"), (656.0, 658.0, 660.0), (0, 1, 2), (), ((2, 0), (2, 1)))
    assert LineSet(("a",), (656.0,), (0,)).velocity_matrix().tolist() == [[1.0]]


def test_ordered_model_equals_unordered_at_physical_velocities():
    """The ordered model at (v1, v2 - v1) is the unordered model at (v1, v2)."""
    base = make_line_set(["Halpha", "NII6583", "NII6548"])
    ordered = component_line_set(base, 2)
    plain = dataclasses.replace(ordered, velocity_chain=())
    axis = np.linspace(14900.0, 15400.0, 300)
    grid = SpectralGrid(axis - axis.mean(), float(axis.mean()))
    m_ord = LineModel(ModelSpec(ordered, "sincgauss", 1), grid)
    m_plain = LineModel(ModelSpec(plain, "sincgauss", 1), grid)
    alpha = jnp.asarray([3.0, 1.0, 2.0, 0.5, 0.1, 0.02])
    v1, v2, b1, b2 = -123.0, 61.0, 25.0, 40.0
    s_ord = m_ord.spectrum(jnp.asarray([v1, v2 - v1, b1, b2]), alpha, 2.5)
    s_plain = m_plain.spectrum(jnp.asarray([v1, v2, b1, b2]), alpha, 2.5)
    np.testing.assert_allclose(np.asarray(s_ord), np.asarray(s_plain), atol=2e-5)
    # and the two components really sit at v1 and v2: the plain model with swapped
    # velocities differs from it
    s_swap = m_plain.spectrum(jnp.asarray([v2, v1, b1, b2]), alpha, 2.5)
    assert np.max(np.abs(np.asarray(s_swap) - np.asarray(s_plain))) > 0.1


def test_ordered_bounds_are_boxes():
    lo, hi = ordered_bounds(3, 1, True, FitSettings(velocity_range_kms=(-500.0, 400.0)), lucijax.Components(3, 35.0))
    np.testing.assert_allclose(lo, [-500, 35, 35, 0, 0, 0])
    np.testing.assert_allclose(hi, [400, 900, 900, 300, 300, 300])
    with pytest.raises(ValueError, match="min_separation"):
        lucijax.Components(2, 0.0)


BATCH = 64


def _fit_rows(program, sim):
    """The component fit of the simulated spectra (arrays in memory) through the engine, in
    batches of ``BATCH``: fewer spectra are padded with NaN spectra (invalid input, which
    stop at once) so that every call runs the one compiled batch program."""
    y = np.asarray(sim["spectra"], np.float32)
    fwhm = np.asarray(sim["fwhm_cm1"], np.float32)
    n = len(y)
    if n < BATCH:
        y = np.concatenate([y, np.full((BATCH - n,) + y.shape[1:], np.nan, np.float32)])
        fwhm = np.concatenate([fwhm, np.full(BATCH - n, fwhm[0], np.float32)])
    out = map_rows(program, {"y": y, "fwhm": fwhm}, lucijax.Execution(batch_size=BATCH, progress=False))
    return jax.tree.map(lambda a: np.asarray(a)[:n], out.fit)


@pytest.fixture(scope="module")
def two_component_fit():
    sim = simulate_components(N_PIXELS, separation_kms=SEPARATION_KMS, snr_range=(20.0, 60.0), seed=11)
    hdr = header_from_attrs(sim["header"], sim["header"]["step_nb"], "sim", flux_unit="erg/cm2/s/A")
    bound = lucijax.Model(["Halpha", "NII6583", "NII6548"], profile="sincgauss").bind(hdr)
    np.testing.assert_array_equal(bound.window, sim["window"])
    solver = lucijax.Components(n_components=2, min_separation_kms=40.0)
    program = solver.program(bound)
    fit = _fit_rows(program, sim)
    return sim, (solver, bound, program), fit


def test_two_components_recovered(two_component_fit):
    sim, (solver, bound, _), fit = two_component_fit
    names = solver.result_model(bound).line_set.names
    assert names == ("Halpha_C1", "NII6583_C1", "NII6548_C1", "Halpha_C2", "NII6583_C2", "NII6548_C2")
    v, ve = fit.velocity_kms, fit.velocity_err_kms
    truth = sim["velocity_kms"]
    pull = (v - truth) / ve
    within = np.all(np.abs(pull) < 3.0, axis=1)
    sep = v[:, 1] - v[:, 0]
    # amplitude of each component's Halpha (line 0 and line 3) in units of its error
    amp_snr = fit.amplitude[:, [0, 3]] / fit.amplitude_err[:, [0, 3]]
    amp_pull = (fit.amplitude[:, [0, 3]] - sim["amplitude"]) / fit.amplitude_err[:, [0, 3]]
    print(f"\nACCEPTANCE two components {SEPARATION_KMS:.0f} km/s apart, SNR 20-60, {N_PIXELS} pixels: "
          f"both velocities within 3 sigma in {within.mean():.1%}; velocity pull std {np.std(pull, axis=0)}; "
          f"separation min {sep.min():.1f} median {np.median(sep):.1f} km/s; Halpha amplitude pull std "
          f"{np.std(amp_pull, axis=0)}; status counts {dict(zip(*np.unique(fit.status, return_counts=True)))}")
    assert within.mean() >= 0.90
    # never collapsed: separations far from the 40 km/s lower bound, both components bright
    assert np.all(sep > 100.0)
    assert np.all(amp_snr > 5.0)
    assert not np.any(fit.status == Status.AT_BOUND)
    # error bars are calibrated (not just large)
    assert np.all((np.std(pull, axis=0) > 0.75) & (np.std(pull, axis=0) < 1.3))
    assert np.all(np.median(ve, axis=0) < 3.0)


def test_single_component_pixel_does_not_swap_or_overlap(two_component_fit):
    """A pixel with ONE component: the second one stays at least min_separation away
    (ordering holds by construction) and carries (almost) no flux."""
    _, (_, _, program), _ = two_component_fit
    one = simulate_components(8, n_components=1, snr_range=(40.0, 60.0), seed=5)
    fit = _fit_rows(program, one)
    sep = fit.velocity_kms[:, 1] - fit.velocity_kms[:, 0]
    assert np.all(sep >= 40.0 - 1e-3)
    weak = np.min(fit.amplitude[:, [0, 3]], axis=1)
    strong = np.max(fit.amplitude[:, [0, 3]], axis=1)
    assert np.all(weak < 0.2 * strong)
    # the bright component is where the truth is
    bright_v = np.where(fit.amplitude[:, 0] > fit.amplitude[:, 3], fit.velocity_kms[:, 0], fit.velocity_kms[:, 1])
    assert np.all(np.abs(bright_v - one["velocity_kms"][:, 0]) < 10.0)


def test_fit_components_api(tmp_path):
    """``lucijax.fit(..., lucijax.Components(2))`` on a cube file: maps per component, ordered,
    written to FITS, and the model spectrum of a pixel is the sum of both components."""
    from lucijax.simulate import make_cube

    cube = make_cube(3, 3, lines=["Halpha", "NII6583", "NII6548"], snr_range=(30.0, 40.0), seed=2)
    path = cube.write(tmp_path / "c.hdf5")
    res = lucijax.fit(path, lucijax.Model(["Halpha", "NII6583", "NII6548"]),
                      lucijax.Components(n_components=2, min_separation_kms=50.0),
                      execution=lucijax.Execution(progress=False))
    for k in (1, 2):
        for q in ("VELOCITY", "VELOCITY_ERR", "BROADENING", "FLUX", "FLUX_ERR"):
            assert f"HALPHA_C{k}_{q}" in res.maps
    assert np.all(res.maps["HALPHA_C2_VELOCITY"] - res.maps["HALPHA_C1_VELOCITY"] >= 50.0 - 1e-3)
    # single-component truth: the brighter component sits on it
    bright = np.where(res.maps["HALPHA_C1_AMPLITUDE"] >= res.maps["HALPHA_C2_AMPLITUDE"],
                      res.maps["HALPHA_C1_VELOCITY"], res.maps["HALPHA_C2_VELOCITY"])
    assert np.all(np.abs(bright - cube.truth["VELOCITY"]) < 15.0)
    axis, model = res.model_spectrum(1, 1)
    with lucijax.open_cube(path) as c:
        spec = c.read_spectra(1, 2, 1, 2)[0, 0, res.bound.window]
    assert np.std(spec - model) < 1.3 * float(res.maps["NOISE"][1, 1])
    res.write(tmp_path / "out")
    assert (tmp_path / "out" / "maps.fits").exists()
