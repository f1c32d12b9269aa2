"""Line shapes and fluxes against independent references (design notes, sections 1 and 5):
a brute-force numerical convolution of the sinc with a Gaussian, ``scipy.special.wofz``,
numerical integrals of the profiles and their analytic limits.

The line shapes are evaluated the way the fit evaluates them: float32, x64 disabled.
References are float64 numpy/scipy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import wofz

from lucijax.constants import GAUSS_FWHM_OVER_SIGMA, SINC_FWHM
from lucijax.physics.lineshapes import (
    SERIES_A_MAX,
    faddeeva_upper,
    gaussian,
    gaussian_flux,
    get_model,
    sinc,
    sinc_flux,
    sinc_width,
    sincgauss,
    sincgauss_flux,
)

pytestmark = pytest.mark.timeout(180)

F32 = np.float32
EPS32 = float(np.finfo(np.float32).eps)
SQRT2 = math.sqrt(2.0)
#: A typical SN3 instrumental FWHM (cm^-1); any value works, the shapes scale with it.
FWHM = 5.0
W = FWHM / (SINC_FWHM * math.pi)

#: The acceptance values of a (design notes: every a in [0, 50], |b| up to 100), with both
#: sides of the series / Faddeeva switch.
A_VALUES = (0.0, 1e-4, 1e-3, 0.01, 0.1, 0.15, 0.299, SERIES_A_MAX, 0.301, 0.5, 1.0, 3.0, 10.0, 27.0, 50.0)
#: The acceptance number: max |sincgauss - brute-force convolution| in float32, peak = 1.
SINCGAUSS_ATOL = 1e-5

#: Jitted once (eager evaluation recompiles every op for every new shape).
_SG = jax.jit(sincgauss)
_D_SG = jax.jit(jax.jacfwd(sincgauss, argnums=2))  # d profile / d sg (a scalar sg)
_D_DX = jax.jit(jax.vmap(jax.grad(sincgauss, argnums=0), in_axes=(0, None, None)))


# --------------------------------------------------------------------- references
def brute_force_sincgauss(u: np.ndarray, a: float) -> np.ndarray:
    """``sinc(u) (*) N(0, (sqrt(2) a)^2)``, normalised by its value at ``u = 0``.

    Direct numerical convolution in float64: with ``t = u - s z`` (``s = sqrt(2) a``),
    ``int sinc(t) N(u - t) dt = E_z[sinc(u - s z)]``, evaluated by the trapezoid rule on
    ``z`` in [-8.5, 8.5] with >= 25 points per period of the sinc and per unit of ``z``
    (the weights are renormalised, so the truncated Gaussian integrates to one).
    """
    s = SQRT2 * a
    dz = min(0.04, 2.0 * math.pi / (25.0 * s))
    z = np.arange(-8.5, 8.5 + dz / 2, dz)
    weight = np.exp(-0.5 * z * z)
    weight[[0, -1]] *= 0.5
    weight /= weight.sum()

    def conv(points):
        out = np.empty(points.shape)
        step = max(1, int(4e6 // z.size))  # keep the (points x z) block small
        for i in range(0, points.size, step):
            t = points[i : i + step, None] - s * z[None, :]
            out[i : i + step] = np.sinc(t / math.pi) @ weight
        return out

    return conv(u) / conv(np.zeros(1))[0]


def reduced_grid(a: float) -> np.ndarray:
    """u = 2ab for b in [-100, 100], plus u in [-200, 200] (so small a sees the sinc wings)."""
    b = np.linspace(-100.0, 100.0, 2001)
    return np.unique(np.concatenate([2.0 * a * b, np.linspace(-200.0, 200.0, 2001)]))


def to_cm1(u: np.ndarray, a: float):
    """float32 (dx, sg) for reduced (u, a), and the float64 (u, a) they represent exactly."""
    dx = (u * W).astype(F32)
    sg = F32(SQRT2 * a * W)
    return dx, sg, dx.astype(np.float64) / W, float(sg) / (SQRT2 * W)


# --------------------------------------------------------------------- sincgauss shape
def test_brute_force_reference_has_the_right_limits():
    """The reference itself: a tiny Gaussian leaves the sinc; a wide one leaves a Gaussian
    exp(-b^2) (the sinc's spectrum is flat at low frequency)."""
    u = np.linspace(-60.0, 60.0, 1201)
    np.testing.assert_allclose(brute_force_sincgauss(u, 1e-3), np.sinc(u / math.pi), atol=2e-6)
    a = 20.0
    u = np.linspace(-10 * a, 10 * a, 1201)
    np.testing.assert_allclose(brute_force_sincgauss(u, a), np.exp(-((u / (2 * a)) ** 2)), atol=1e-9)


def test_sincgauss_matches_brute_force_convolution():
    """max |error| <= 1e-5 of the peak for every a in [0, 50] and |b| <= 100, in float32."""
    grids = [reduced_grid(a) for a in A_VALUES]
    n = max(g.size for g in grids)
    dx = np.zeros((len(A_VALUES), n), F32)
    sg = np.zeros((len(A_VALUES), 1), F32)
    u64, a64 = [], []
    for k, (a, u) in enumerate(zip(A_VALUES, grids)):
        d, s, uu, aa = to_cm1(u, a)
        dx[k, : u.size], dx[k, u.size :] = d, d[-1]  # pad with a repeated point
        sg[k] = s
        u64.append(uu)
        a64.append(aa)
    got = np.asarray(_SG(dx, F32(FWHM), sg), np.float64)
    report = {}
    for k, a in enumerate(A_VALUES):
        u = u64[k]
        ref = np.sinc(u / math.pi) if a == 0 else brute_force_sincgauss(u, a64[k])
        err = np.abs(got[k, : u.size] - ref)
        report[a] = (float(err.max()), float(u[err.argmax()]))
    print("\nsincgauss max |error| vs brute force (a: error, at u):", {a: f"{e:.2e} @ {u:.3g}" for a, (e, u) in report.items()})
    worst = max(report.items(), key=lambda kv: kv[1][0])
    assert worst[1][0] <= SINCGAUSS_ATOL, f"a = {worst[0]}: error {worst[1][0]:.3g} at u = {worst[1][1]:.4g}"


def test_sincgauss_limits():
    dx = np.linspace(-40.0, 40.0, 4001).astype(F32)
    fwhm = F32(FWHM)
    # a -> 0: the sinc (sg = 0 exactly, and a broadening far below anything measurable)
    np.testing.assert_allclose(sincgauss(dx, fwhm, F32(0.0)), sinc(dx, fwhm), atol=4 * EPS32)
    np.testing.assert_allclose(sincgauss(dx, fwhm, F32(1e-6 * W)), sinc(dx, fwhm), atol=4 * EPS32)
    # a >> 1: the Gaussian of the broadening, exp(-dx^2 / (2 sg^2))
    for a in (8.0, 30.0):
        sg = F32(SQRT2 * a * W)
        x = np.linspace(-8 * float(sg), 8 * float(sg), 4001).astype(F32)
        ref = np.exp(-(x.astype(np.float64) ** 2) / (2 * float(sg) ** 2))
        np.testing.assert_allclose(sincgauss(x, fwhm, sg), ref, atol=4e-6)


@pytest.mark.parametrize("a", [0.0, 0.05, 0.15, 0.299, SERIES_A_MAX, 0.301, 0.5, 2.0, 20.0])
def test_profiles_peak_at_one_at_the_line_centre(a):
    sg = F32(SQRT2 * a * W)
    dx = np.linspace(-30.0 * max(1.0, a), 30.0 * max(1.0, a), 6001).astype(F32)
    prof = np.asarray(_SG(dx, F32(FWHM), sg))
    # the Faddeeva branch is good to ~1e-6 of the peak in float32 (a few ulp of 1)
    assert abs(float(sincgauss(F32(0.0), F32(FWHM), sg)) - 1.0) <= 2e-6
    assert prof.max() <= 1.0 + 2e-6
    assert abs(dx[prof.argmax()]) <= 1e-3 * max(1.0, a)
    for profile in (sinc(F32(0.0), F32(FWHM)), gaussian(F32(0.0), F32(FWHM), sg)):
        assert abs(float(profile) - 1.0) <= 2 * EPS32


def test_sinc_and_gaussian_widths():
    """FWHM of the sinc is ``fwhm`` (numpy.sinc's FWHM is 1.20671) and the 'gaussian' has
    sigma fwhm/2.3548, broadening added in quadrature."""
    half = F32(FWHM / 2)
    assert abs(float(sinc(half, F32(FWHM))) - 0.5) < 2e-5
    assert abs(float(gaussian(half, F32(FWHM))) - 0.5) < 2e-6
    s = math.hypot(FWHM / GAUSS_FWHM_OVER_SIGMA, 2.0)
    assert abs(float(gaussian(F32(s), F32(FWHM), F32(2.0))) - math.exp(-0.5)) < 2e-6
    assert math.isclose(float(sinc_width(F32(FWHM))), W, rel_tol=4 * EPS32)


def test_sincgauss_derivatives_finite_and_correct():
    dx = jnp.asarray(np.linspace(-25.0, 25.0, 501), jnp.float32)
    fwhm = jnp.float32(FWHM)
    # at sg = 0 (the sinc limit): finite, and zero (the profile depends on sg^2)
    d_sg = _D_SG(dx, fwhm, jnp.float32(0.0))
    assert np.all(np.isfinite(d_sg))
    assert np.max(np.abs(d_sg)) <= 1e-6
    d_flux = jax.grad(sincgauss_flux, argnums=1)(fwhm, jnp.float32(0.0))
    assert np.isfinite(d_flux) and abs(float(d_flux)) < 1e-6
    assert np.all(np.isfinite(_D_DX(dx, fwhm, jnp.float32(0.0))))
    # elsewhere, the JVP matches a Richardson-extrapolated central difference (float32)
    for a in (0.05, 0.15, 0.299, 0.301, 0.6, 3.0):
        sg = float(F32(SQRT2 * a * W))
        h = 0.02 * sg

        def prof(s):
            return np.asarray(_SG(dx, fwhm, jnp.float32(s)), np.float64)

        jac = np.asarray(_D_SG(dx, fwhm, jnp.float32(sg)), np.float64)
        d1 = (prof(sg + h) - prof(sg - h)) / (2 * h)
        d2 = (prof(sg + h / 2) - prof(sg - h / 2)) / h
        fd = (4 * d2 - d1) / 3
        np.testing.assert_allclose(jac, fd, atol=2e-3 * np.max(np.abs(fd)) + 50 * EPS32 / h, err_msg=f"d/dsg, a = {a}")
        # and w.r.t. dx
        jdx = np.asarray(_D_DX(dx, fwhm, jnp.float32(sg)), np.float64)
        hx = 0.01
        fdx = (np.asarray(_SG(dx + hx, fwhm, jnp.float32(sg)), np.float64) - np.asarray(_SG(dx - hx, fwhm, jnp.float32(sg)), np.float64)) / (2 * hx)
        np.testing.assert_allclose(jdx, fdx, atol=2e-4, err_msg=f"d/ddx, a = {a}")


# --------------------------------------------------------------------- Faddeeva
def _faddeeva_grid():
    x = np.concatenate([np.linspace(-100.0, 100.0, 1001), np.linspace(-6.0, 6.0, 601)])
    y = np.geomspace(SERIES_A_MAX, 60.0, 120)  # the domain where the sincgauss uses it
    xx, yy = np.meshgrid(x, y)
    return xx.astype(F32), yy.astype(F32)


def test_faddeeva_matches_scipy_wofz():
    x, y = _faddeeva_grid()
    wr, wi = faddeeva_upper(jnp.asarray(x), jnp.asarray(y))
    ref = wofz(x.astype(np.float64) + 1j * y.astype(np.float64))
    err = np.abs(np.asarray(wr, np.float64) + 1j * np.asarray(wi, np.float64) - ref)
    print(f"\nfaddeeva_upper max |error| {err.max():.2e}, max relative {np.max(err / np.abs(ref)):.2e}")
    assert err.max() <= 2e-6
    assert np.max(err / np.abs(ref)) <= 1e-5


def test_faddeeva_jvp_matches_analytic_derivative():
    """d w / d x = w'(z), d w / d y = i w'(z), with w'(z) = -2 z w(z) + 2i/sqrt(pi) from
    scipy's float64 w."""
    x, y = _faddeeva_grid()
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    one, zero = jnp.ones_like(xj), jnp.zeros_like(xj)
    _, (dxr, dxi) = jax.jvp(faddeeva_upper, (xj, yj), (one, zero))
    _, (dyr, dyi) = jax.jvp(faddeeva_upper, (xj, yj), (zero, one))
    z = x.astype(np.float64) + 1j * y.astype(np.float64)
    dw = -2.0 * z * wofz(z) + 2j / math.sqrt(math.pi)
    tol = 4e-6 + 1e-4 * np.abs(dw)
    assert np.all(np.abs(np.asarray(dxr) + 1j * np.asarray(dxi) - dw) <= tol)
    assert np.all(np.abs(np.asarray(dyr) + 1j * np.asarray(dyi) - 1j * dw) <= tol)


def test_faddeeva_jvp_matches_finite_differences():
    """The custom JVP against the function itself (Richardson central differences)."""
    x = jnp.asarray(np.linspace(-8.0, 8.0, 161), jnp.float32)
    for y0 in (SERIES_A_MAX, 0.7, 3.0):
        y = jnp.full_like(x, y0)
        for direction in ((1.0, 0.0), (0.0, 1.0)):
            tx, ty = (jnp.full_like(x, d) for d in direction)
            _, (jr, ji) = jax.jvp(faddeeva_upper, (x, y), (tx, ty))
            h = 0.02

            def fd(step):
                pr, pi = faddeeva_upper(x + step * tx, y + step * ty)
                mr, mi = faddeeva_upper(x - step * tx, y - step * ty)
                return (np.asarray(pr, np.float64) - np.asarray(mr, np.float64)) / (2 * step), (
                    np.asarray(pi, np.float64) - np.asarray(mi, np.float64)
                ) / (2 * step)

            (r1, i1), (r2, i2) = fd(h), fd(h / 2)
            np.testing.assert_allclose(jr, (4 * r2 - r1) / 3, atol=5e-5)
            np.testing.assert_allclose(ji, (4 * i2 - i1) / 3, atol=5e-5)


# --------------------------------------------------------------------- fluxes
FLUX_A = (0.0, 1e-3, 0.01, 0.1, 0.15, 0.299, SERIES_A_MAX, 0.301, 1.0, 3.0, 10.0, 30.0)
N_FLUX = 2**17


@jax.jit
def _tapered_sincgauss(u, sg):
    return sincgauss(u * W, jnp.float32(FWHM), sg)


def test_sincgauss_flux_is_the_integral_of_the_profile():
    """sqrt(2 pi) sg / erf(a) within 1e-4 of the integral of the float32 profile.

    The profile's wings fall as sin(u)/u, so the integral is taken with a wide Gaussian
    taper ``exp(-(u/L)^2)``: in Fourier space the taper only smooths the (Gaussian, flat
    at zero frequency) spectrum of the profile, a relative bias of ~2 a^2/L^2 < 1e-5 for
    L = 500 (1 + a).
    """
    rows, sgs, dus, tapers = [], [], [], []
    for a in FLUX_A:
        big_l = 500.0 * (1.0 + a)
        u = np.linspace(-6 * big_l, 6 * big_l, N_FLUX)
        rows.append(u.astype(F32))
        sgs.append(F32(SQRT2 * a * W))
        dus.append(u[1] - u[0])
        tapers.append(np.exp(-((u / big_l) ** 2)))
    prof = np.asarray(jax.vmap(_tapered_sincgauss)(jnp.asarray(np.stack(rows)), jnp.asarray(np.array(sgs))), np.float64)
    report = {}
    for k, a in enumerate(FLUX_A):
        u = rows[k].astype(np.float64)
        numeric = np.trapezoid(prof[k] * tapers[k], u) * W
        flux = float(sincgauss_flux(F32(FWHM), sgs[k]))
        report[a] = flux / numeric - 1.0
        assert abs(report[a]) <= 1e-4, f"a = {a}: flux {flux} vs integral {numeric}"
    print("\nsincgauss_flux / integral - 1:", {a: f"{r:.1e}" for a, r in report.items()})
    # the analytic value sqrt(2 pi) sg / erf(a)
    from scipy.special import erf

    for k, a in enumerate(FLUX_A):
        if a > 0:
            exact = math.sqrt(2 * math.pi) * float(sgs[k]) / erf(float(sgs[k]) / (SQRT2 * W))
            assert math.isclose(float(sincgauss_flux(F32(FWHM), sgs[k])), exact, rel_tol=1e-6)


def test_sinc_flux_is_the_integral_of_the_profile():
    """pi w = fwhm / 1.20671, against a trapezoid integral of the float32 sinc over
    |u| < 2000 pi plus its analytic tail 2 int_L^inf sin(u)/u du = 2 (cos L / L - 2/L^3 ...)."""
    big_l = 2000 * math.pi
    u = np.linspace(-big_l, big_l, 2_000_001)
    prof = np.asarray(jax.jit(sinc)(jnp.asarray((u * W).astype(F32)), jnp.float32(FWHM)), np.float64)
    tail = 2 * (math.cos(big_l) / big_l + math.sin(big_l) / big_l**2 - 2 * math.cos(big_l) / big_l**3)
    numeric = (np.trapezoid(prof, u) + tail) * W
    assert math.isclose(float(sinc_flux(F32(FWHM))), numeric, rel_tol=1e-4)
    assert math.isclose(float(sinc_flux(F32(FWHM))), FWHM / SINC_FWHM, rel_tol=4 * EPS32)


@pytest.mark.parametrize("sg", [0.0, 0.5, 3.0])
def test_gaussian_flux_is_the_integral_of_the_profile(sg):
    s = math.hypot(FWHM / GAUSS_FWHM_OVER_SIGMA, sg)
    x = np.linspace(-12 * s, 12 * s, 20001)
    prof = np.asarray(gaussian(jnp.asarray(x.astype(F32)), F32(FWHM), F32(sg)), np.float64)
    assert math.isclose(float(gaussian_flux(F32(FWHM), F32(sg))), np.trapezoid(prof, x), rel_tol=1e-4)


def test_flux_limits():
    fwhm = F32(FWHM)
    sinc_f = float(sinc_flux(fwhm))
    # sg -> 0: the sinc flux, continuously
    assert math.isclose(float(sincgauss_flux(fwhm, F32(0.0))), sinc_f, rel_tol=4 * EPS32)
    for a in (1e-4, 1e-3):
        assert math.isclose(float(sincgauss_flux(fwhm, F32(SQRT2 * a * W))), sinc_f, rel_tol=max(a * a, 4 * EPS32))
    # large sg: the Gaussian flux sqrt(2 pi) sg
    for a in (5.0, 10.0, 40.0):
        sg = F32(SQRT2 * a * W)
        assert math.isclose(float(sincgauss_flux(fwhm, sg)), math.sqrt(2 * math.pi) * float(sg), rel_tol=1e-6)
    # monotonic in sg between the two
    sgs = np.geomspace(1e-3, 50.0, 200).astype(F32)
    fl = np.asarray(sincgauss_flux(fwhm, jnp.asarray(sgs)))
    assert np.all(np.diff(fl) >= 0)  # float32: flat where sg << w
    assert np.all(np.diff(fl[sgs > 0.1]) > 0)


def test_model_table_pairs_profiles_with_their_fluxes():
    for name in ("sinc", "gaussian", "sincgauss"):
        profile, flux, has_b = get_model(name)
        assert has_b == (name != "sinc")
        sg = F32(0.4)
        assert abs(float(profile(F32(0.0), F32(FWHM), sg)) - 1.0) < 4 * EPS32
        assert np.isfinite(float(flux(F32(FWHM), sg)))
    with pytest.raises(ValueError, match="voigt"):
        get_model("voigt")


# ------------------------------------------------------------ the uniform-grid path
def _grid_case(seed=1, n_lines=400):
    from lucijax.physics.lineshapes import UniformGrid

    grid = UniformGrid(-418.6157867683705, 2.0983247457061225, 400)  # an SN3 fit window, relative
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-300.0, 300.0, n_lines).astype(F32)
    sg = (rng.uniform(0.0, 1.0, n_lines) ** 2 * 5.0).astype(F32)  # a from 0 to ~6, both branches
    x64 = grid.x_first + grid.step * np.arange(grid.n)
    return grid, x0, sg, x64


def test_sincgauss_on_grid_matches_float64_evaluation():
    """The fit's fast path (angle-addition sin/cos, offsets exact near each line) against
    the profile of the exact float64 offsets, evaluated with float64 numpy/scipy: within
    3e-6 of the peak (the 12-term Faddeeva approximation's own error is ~2e-6), closer than
    the direct float32 evaluation on a float32 axis (offsets rounded to 3e-5 cm^-1)."""
    from lucijax.physics.lineshapes import sincgauss_on_grid

    grid, x0, sg, x64 = _grid_case()
    fwhm = F32(2.3)
    w = float(fwhm) / (SINC_FWHM * math.pi)
    u = (x64[:, None] - x0.astype(np.float64)[None, :]) / w
    a = sg.astype(np.float64) / (SQRT2 * w)
    # float64 reference: the Faddeeva form with scipy's wofz (a >= 0.3 only: cancellation-free)
    big = a >= 0.3
    z = u[:, big] / (2 * a[big]) + 1j * a[big]
    from scipy.special import erf as erf64

    ref = (np.exp(-(u[:, big] / (2 * a[big])) ** 2) - np.exp(-a[big] ** 2) * np.real(np.exp(1j * u[:, big]) * wofz(z))) / erf64(a[big])
    got = np.asarray(jax.jit(sincgauss_on_grid, static_argnums=0)(grid, jnp.asarray(x0), fwhm, jnp.asarray(sg)))
    direct = np.asarray(_SG(jnp.asarray(x64, jnp.float32)[:, None] - jnp.asarray(x0)[None, :], fwhm, jnp.asarray(sg)[None, :]))
    err_grid = np.abs(got[:, big] - ref).max()
    err_direct = np.abs(direct[:, big] - ref).max()
    print(f"\nsincgauss_on_grid max |error| {err_grid:.2e} (direct float32 axis: {err_direct:.2e})")
    assert err_grid <= 3e-6
    assert err_grid <= err_direct
    # small a (series branch): against the direct evaluation of the same offsets
    np.testing.assert_allclose(got[:, ~big], direct[:, ~big], atol=3e-5)


def test_sincgauss_on_grid_derivatives_match_the_direct_path():
    from lucijax.physics.lineshapes import sincgauss_on_grid

    grid, x0, sg, x64 = _grid_case(seed=2, n_lines=6)
    ax = jnp.asarray(x64, jnp.float32)
    fwhm = F32(2.3)

    def on_grid(p):
        return sincgauss_on_grid(grid, p[0], fwhm, p[1])

    def direct(p):
        return sincgauss(ax[:, None] - p[0][None, :], fwhm, p[1][None, :])

    p = (jnp.asarray(x0), jnp.asarray(sg))
    # d/d sg far from a line (|b| ~ 1000) is a difference of O(1) terms times b/a in both
    # paths: there the two agree to ~1e-2 of the derivative's peak, near the line to 1e-4
    for t, rtol_far in (((jnp.ones(6), jnp.zeros(6)), 1e-4), ((jnp.zeros(6), jnp.ones(6)), 1e-2)):
        _, t_grid = jax.jvp(on_grid, (p,), (t,))
        _, t_direct = jax.jvp(direct, (p,), (t,))
        scale = np.max(np.abs(np.asarray(t_direct)), axis=0)
        near = np.abs(x64[:, None] - x0[None, :]) < 5 * 2.3 + 5 * sg[None, :]
        err = np.abs(np.asarray(t_grid) - np.asarray(t_direct)) / scale
        assert err[near].max() <= 1e-4, err[near].max()
        assert err.max() <= rtol_far, err.max()
