"""The global-optimum check (issue 20): a fit is not trusted as converged when another
velocity fits about as well.

``MAP(ambiguity_chi2=9)`` searches the matched filter's power over the whole velocity grid
for peaks farther than one FWHM from the fit; where the best of them fits within 9 in chi2
of the fit's own peak (or better), STATUS becomes 8 (AMBIGUOUS) and the maps give that
velocity. Checked here:

* the peak search on hand-made score curves (one peak, two peaks, a side lobe closer than
  the separation, no other peak);
* an alias suite: OH-like forests of regularly spaced lines, whose shift by one spacing
  (560 km/s, inside the velocity range) lines up all but one line; at low S/N the fit
  lands on the alias in a few % of the spectra with STATUS 0. With the check no pixel
  with STATUS 0 is off by more than 5 sigma (the same spectra without it have many);
* the flag against a brute-force profile chi2 (the line model itself on a 2 km/s grid, the
  linear parameters solved at each velocity) on spectra with a second line 350 km/s away;
* line-pattern aliases of SN3 over a wide velocity range ([NII]-Halpha-[NII] at the wrong
  shift, the [SII] pair taken for Halpha-[NII]), against the same brute force;
* a clean cube (SNR 3-60, one component): no pixel above S/N 5 flagged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lucijax
from lucijax.engine import map_rows
from lucijax.io.header import header_from_attrs
from lucijax.io.memory import MemoryCube
from lucijax.simulate import make_cube, render_spectra, simulate_components
from lucijax.solvers.start import projected_rss, second_solution
from lucijax.status import Status

pytestmark = pytest.mark.timeout(600)


def test_second_solution_on_hand_made_scores():
    v = jnp.arange(-300.0, 301.0, 10.0)

    def bump(c, h, w=20.0):
        return h * jnp.exp(-0.5 * ((v - c) / w) ** 2)

    score = (bump(-100.0, 50.0) + bump(150.0, 45.0) + bump(-60.0, 3.0, 5.0))[:, None]
    velocity, delta = second_solution(score, v, jnp.asarray([-100.0]), jnp.asarray(0.5), jnp.asarray(60.0))
    # the side bump at -60 (within 60 km/s of the fit) is not another solution; +150 is
    assert float(velocity[0]) == pytest.approx(150.0)
    assert float(delta[0]) == pytest.approx((50.0 - 45.0) / 0.5, rel=1e-4)
    # seen from the lower peak, the higher one fits better: a negative difference
    velocity, delta = second_solution(score, v, jnp.asarray([150.0]), jnp.asarray(0.5), jnp.asarray(60.0))
    assert float(velocity[0]) == pytest.approx(-100.0) and float(delta[0]) == pytest.approx(-10.0, rel=1e-4)
    # one peak only: no other solution
    velocity, delta = second_solution(bump(0.0, 10.0)[:, None], v, jnp.asarray([0.0]), jnp.asarray(1.0),
                                      jnp.asarray(60.0))
    assert np.isnan(float(velocity[0])) and np.isinf(float(delta[0]))


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    """512 spectra of 30 evenly spaced sky-like lines (one velocity, sinc), amplitudes 0.3-7.5
    noise, fitted with and without the check (matched-filter start)."""
    from test_sky_fit import _observe, _setup

    hdr, sky_file, axis, fwhm = _setup(tmp_path_factory.mktemp("forest"), 30)
    bound = lucijax.Model(sky_lines=sky_file, profile="sinc").bind(hdr)
    ls = bound.line_set
    n = 512
    rng = np.random.default_rng(11)
    amp = rng.uniform(1.0, 5.0, (n, len(ls.primary_lines))) * rng.uniform(0.3, 1.5, (n, 1))
    v_true = rng.uniform(-300, 300, n)
    clean = render_spectra(ls, "sinc", axis, np.full(n, fwhm), v_true[:, None], np.zeros((n, 1)), amp, np.full(n, 3.0))
    rows = {"y": _observe(bound, clean, 8), "fwhm": np.full(n, fwhm, np.float32)}
    ex = lucijax.Execution(batch_size=256, progress=False)
    checked = map_rows(lucijax.MAP(start="matched").program(bound), rows, ex)
    unchecked = map_rows(lucijax.MAP(start="matched", ambiguity_chi2=None).program(bound), rows, ex)
    return ls, v_true, checked, unchecked


def test_no_converged_pixel_on_an_alias(forest):
    ls, v_true, checked, unchecked = forest
    spacing = np.median(np.diff(np.sort(ls.rest_cm1))) / np.median(ls.rest_cm1) * 299792.458
    assert 400 < spacing < 600  # the alias lies inside the velocity range
    assert unchecked.second is None
    v, ve = np.asarray(checked.fit.velocity_kms)[:, 0], np.asarray(checked.fit.velocity_err_kms)[:, 0]
    off = np.abs(v - v_true) / ve > 5
    before = np.asarray(unchecked.fit.status)
    after = np.asarray(checked.fit.status)
    # the check changes STATUS only: the fits are the same
    np.testing.assert_array_equal(np.asarray(unchecked.fit.velocity_kms)[:, 0], v)
    print(f"\nACCEPTANCE alias suite ({v.size} spectra, 30 lines {spacing:.0f} km/s apart): STATUS 0 and off by "
          f"> 5 sigma: {int(np.sum(off & (before == 0)))} without the check, {int(np.sum(off & (after == 0)))} with "
          f"it; flagged {np.mean(after == Status.AMBIGUOUS):.1%}")
    assert np.sum(off & (before == Status.CONVERGED)) >= 5  # the suite does produce aliases
    assert np.sum(off & (after == Status.CONVERGED)) == 0
    # a flagged pixel points at the other solution: the alias's or the truth's velocity
    alt = np.asarray(checked.second.velocity_kms)[:, 0]
    flagged_off = off & (after == Status.AMBIGUOUS)
    assert np.all(np.abs(alt[flagged_off] - v_true[flagged_off]) < 0.5 * spacing)


@pytest.fixture(scope="module")
def doubles():
    """256 spectra of Halpha twice (350 km/s apart, each S/N 8-30), fitted with one Halpha."""
    sim = simulate_components(256, lines=("Halpha",), n_components=2, separation_kms=350.0, snr_range=(8.0, 30.0),
                              velocity_range_kms=(-450.0, 50.0), seed=3)
    hdr = header_from_attrs(sim["header"], sim["header"]["step_nb"], "sim", flux_unit="erg/cm2/s/A")
    bound = lucijax.Model(["Halpha"], profile="sincgauss").bind(hdr)
    rows = {"y": sim["spectra"], "fwhm": sim["fwhm_cm1"].astype(np.float32)}
    out = map_rows(lucijax.MAP(start="matched").program(bound), rows, lucijax.Execution(batch_size=128, progress=False))
    return bound, rows, out


def nonneg_rss(model, y, mask, fwhm, theta):
    """Residual sum of squares at ``theta`` with the line amplitudes solved >= 0 (the fit's
    constraint; scipy-checked QP of ``lucijax.solvers.fitting``), the continuum free."""
    from lucijax.solvers.fitting import linear_solve, nonneg_amplitudes

    m = model.design_matrix(theta, fwhm) * mask[:, None]
    alpha = nonneg_amplitudes(m, y * mask, linear_solve(m, y * mask), model.spec.n_amplitudes)
    return jnp.sum((y * mask - m @ alpha) ** 2)


def brute_force_other_minimum(model, rows, fit, grid, broadenings, rss_at=projected_rss):
    """Reference: the profile chi2 of the line model itself at each velocity of ``grid``, min
    over ``broadenings`` and the linear parameters (``rss_at``: free, or :func:`nonneg_rss`;
    noise 1: chi2 = RSS). Returns, per spectrum, the best local minimum farther than one FWHM
    from the fitted velocity minus the profile's minimum within that FWHM (+inf without
    another minimum)."""
    grid = np.asarray(grid, np.float32)

    def profile(y, fwhm):
        mask = jnp.isfinite(y).astype(jnp.float32)
        ys = jnp.where(mask > 0, y, 0.0)

        def at(v):
            return jnp.min(jax.vmap(lambda b: rss_at(model, ys, mask, fwhm, jnp.stack([v, b])))(broadenings))

        return jax.lax.map(at, jnp.asarray(grid))

    rss = np.asarray(jax.jit(jax.vmap(profile))(jnp.asarray(rows["y"]), jnp.asarray(rows["fwhm"])))
    v = np.asarray(fit.velocity_kms)[:, 0]
    sep = 299792.458 * rows["fwhm"] / model.grid.ref_cm1
    brute = np.full(v.size, np.inf)
    for i in range(v.size):
        far = np.abs(grid - v[i]) > sep[i]
        local = np.r_[False, (rss[i, 1:-1] <= rss[i, :-2]) & (rss[i, 1:-1] <= rss[i, 2:]), False]
        if np.any(far & local):
            brute[i] = rss[i][far & local].min() - rss[i][~far].min()
    return brute


def test_flag_agrees_with_a_brute_force_profile(doubles):
    """Reference: the profile chi2 of the line model itself, min over the broadening (0-80
    km/s) and the linear parameters at each velocity of a 4 km/s grid (noise 1: chi2 = RSS)."""
    bound, rows, out = doubles
    fit = out.fit
    brute = brute_force_other_minimum(bound.line_model, rows, fit, np.arange(-600.0, 600.1, 4.0),
                                      jnp.arange(0.0, 80.1, 8.0))
    v = np.asarray(fit.velocity_kms)[:, 0]
    flagged = np.asarray(fit.status) == Status.AMBIGUOUS
    agree = np.mean(flagged == (brute < 9.0))
    worse = brute < -9.0
    print(f"\nACCEPTANCE flag vs brute-force profile chi2: same verdict for {agree:.1%} of {v.size}; brute < 9: "
          f"{int(np.sum(brute < 9))}, flagged: {int(flagged.sum())}; fits in a minimum worse by > 9: "
          f"{int(worse.sum())}, flagged {int(np.sum(flagged & worse))}")
    assert agree >= 0.95
    # a fit in a minimum that the brute force finds clearly worse than another is always flagged
    assert np.all(flagged[worse])
    d = np.asarray(out.second.delta_chi2)[:, 0]
    finite = np.isfinite(d) & np.isfinite(brute)
    assert np.corrcoef(d[finite], brute[finite])[0, 1] > 0.9


#: Line-pattern aliases of SN3 (issue 20), each: the fitted lines, the true peak amplitudes of
#: the primary lines (in units of the noise, per spectrum a common factor drawn 0.6-1.6), and
#: the velocity range (wide enough that the pattern shifted onto itself lies inside it).
PATTERN_ALIASES = {
    # [NII]6583 stronger than Halpha (a LINER/AGN-like ratio): the model's Halpha on the true
    # [NII]6583 (+941 km/s) or the model's [NII]6548 on the true Halpha (-676 km/s)
    "nii-halpha-nii at the wrong shift": (("Halpha", "NII6583", "NII6548"), (2.0, 5.0), (-1300.0, 1300.0)),
    # bright [SII], faint Halpha and [NII]: the 5-line pattern can lock one of its pairs on the
    # wrong one (the [SII] pair read as Halpha-[NII]6583, 14 and 21 A apart)
    "sii pair taken for nii": (("Halpha", "NII6583", "NII6548", "SII6716", "SII6731"), (1.0, 1.0, 5.0, 4.0),
                               (-1300.0, 1300.0)),
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", sorted(PATTERN_ALIASES))
def test_line_pattern_aliases(case):
    """Spectra whose line pattern, shifted, partly lines up with itself, fitted from the
    matched filter (the most alias-prone start) over a wide velocity range: no STATUS 0
    fit more than 5 sigma from the truth, and the flag agrees with a brute-force profile
    chi2 over the whole range (every fit in a minimum worse than another by > 9 flagged)."""
    lines, amp_noise, vrange = PATTERN_ALIASES[case]
    sim = simulate_components(1, lines=lines, n_components=1, seed=0)  # the header and the filter band
    hdr = header_from_attrs(sim["header"], sim["header"]["step_nb"], "sim", flux_unit="erg/cm2/s/A")
    bound = lucijax.Model(list(lines), profile="sincgauss", velocity_range=vrange).bind(hdr)
    n = 128
    rng = np.random.default_rng(7)
    axis = sim["axis_cm1"][sim["window"]]
    fwhm = np.full(n, float(sim["fwhm_cm1"][0]))
    v_true = rng.uniform(-300.0, 300.0, n)
    b_true = rng.uniform(10.0, 50.0, n)
    amp = np.asarray(amp_noise)[None, :] * rng.uniform(0.6, 1.6, (n, 1))
    clean = render_spectra(bound.line_set, "sincgauss", axis, fwhm, v_true[:, None], b_true[:, None], amp, np.zeros(n))
    rows = {"y": (clean + rng.normal(0.0, 1.0, clean.shape)).astype(np.float32), "fwhm": fwhm.astype(np.float32)}
    ex = lucijax.Execution(batch_size=64, progress=False)
    fit = map_rows(lucijax.MAP(start="matched").program(bound), rows, ex).fit
    v, ve = np.asarray(fit.velocity_kms)[:, 0], np.asarray(fit.velocity_err_kms)[:, 0]
    status = np.asarray(fit.status)
    off = np.abs(v - v_true) / ve > 5
    # the amplitudes >= 0 as in the fit: with free signs, other patterns fit with negative lines
    brute = brute_force_other_minimum(bound.line_model, rows, fit, np.arange(vrange[0], vrange[1] + 0.1, 6.0),
                                      jnp.arange(0.0, 80.1, 16.0), rss_at=nonneg_rss)
    flagged = status == Status.AMBIGUOUS
    agree = np.mean(flagged == (brute < 9.0))
    worse = brute < -9.0
    good = status == Status.CONVERGED
    print(f"\nACCEPTANCE alias suite, {case} ({n} spectra): off by > 5 sigma {int(off.sum())}, of them STATUS 0 "
          f"{int(np.sum(off & good))}; another minimum within 9 (brute force) {int(np.sum(brute < 9))}, flagged "
          f"{int(flagged.sum())}, same verdict {agree:.1%}; within 9 and left STATUS 0: {int(np.sum(good & (brute < 9)))} "
          f"(brute-force delta chi2 {np.round(brute[good & (brute < 9)], 2).tolist()}); in a minimum worse by > 9: "
          f"{int(worse.sum())}, flagged {int(np.sum(flagged & worse))}")
    assert np.sum(brute < 9.0) >= 5  # the suite does make second minima
    assert np.sum(off & good) == 0
    assert np.all(flagged[worse])
    # a second minimum within the threshold leaves no fit STATUS 0, up to the error of the
    # check's delta chi2 against this true-noise reference (measured on the [SII] case: rms 3.7,
    # most of it the noise the check must estimate; benchmarks/RESULTS.md, issue 20)
    assert not np.any(good & (brute < 7.0))
    assert np.sum(good & (brute < 9.0)) <= 0.02 * n
    assert agree >= 0.9


def test_clean_cube_is_not_flagged():
    c = make_cube(16, 16, seed=5)
    r = lucijax.fit(MemoryCube.from_synthetic(c), lucijax.Model(["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]),
                    lucijax.MAP(start="matched"), execution=lucijax.Execution(progress=False))
    st, snr = r.maps["STATUS"], c.truth["SNR"]
    assert {"HALPHA_ALT_VELOCITY", "HALPHA_ALT_DCHI2"} <= set(r.maps)
    print(f"\nflagged: {np.mean(st == Status.AMBIGUOUS):.1%} of all, {np.mean(st[snr >= 5] == Status.AMBIGUOUS):.1%} "
          f"at S/N >= 5")
    assert np.all(st[snr >= 5] != Status.AMBIGUOUS)
    assert np.median(r.maps["HALPHA_ALT_DCHI2"][snr >= 5]) > 50


def test_other_solution_maps_are_not_taken_as_kinematics():
    """Freeze mode and maps starts read another filter's ``{LINE}_VELOCITY`` maps when they
    share one kinematics; the check's ``{LINE}_ALT_VELOCITY`` is not one of them."""
    from lucijax.physics.lines import make_line_set
    from lucijax.solvers.kinematics import kinematic_maps

    v = np.full((3, 4), 12.0)
    maps = {"HALPHA_VELOCITY": v, "NII6583_VELOCITY": v, "HALPHA_ALT_VELOCITY": v + 500.0,
            "HALPHA_BROADENING": v + 8.0, "NII6583_BROADENING": v + 8.0}
    theta, _ = kinematic_maps(maps, make_line_set(["Hbeta", "OIII5007"]), (0, 4, 0, 3), (4, 3))
    np.testing.assert_array_equal(theta[..., 0], 12.0)
    np.testing.assert_array_equal(theta[..., 1], 20.0)
