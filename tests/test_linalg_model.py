"""The hot path's own small linear algebra against numpy, and the line model (design
matrix, tied fluxes, relativistic line positions) against direct float64 evaluation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lucijax.physics import instrument
from lucijax.constants import C_KMS
from lucijax.solvers.linalg import cho_solve, cholesky, solve_lower, spd_inverse, spd_solve
from lucijax.physics.lines import make_line_set
from lucijax.physics.lineshapes import get_model
from lucijax.model import LineModel, ModelSpec, SpectralGrid
from lucijax.physics.conversions import line_position_cm1, velocity_factor_minus_one, velocity_from_position

pytestmark = pytest.mark.timeout(120)

EPS32 = float(np.finfo(np.float32).eps)
SIZES = (2, 5, 16, 17, 40)  # both sides of the unrolling threshold (16)
COND = 100.0


# jitted once per shape (eager dispatch of the unrolled loops is slow)
_CHOL = jax.jit(cholesky)
_SOLVE = jax.jit(spd_solve)
_CHO_SOLVE = jax.jit(cho_solve)
_INV = jax.jit(spd_inverse)
_LOWER = jax.jit(solve_lower)


def random_spd(rng, n, cond=COND):
    """A float32 SPD matrix with eigenvalues log-spaced in [1, cond]."""
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.geomspace(1.0, cond, n)) @ q.T
    return ((a + a.T) / 2).astype(np.float32)


def _rel(x, ref):
    return np.max(np.abs(np.asarray(x, np.float64) - ref)) / np.max(np.abs(ref))


# ------------------------------------------------------------------ linalg
@pytest.mark.parametrize("n", SIZES)
def test_cholesky_solve_inverse_match_numpy(n):
    rng = np.random.default_rng(100 + n)
    a = random_spd(rng, n)
    a64 = a.astype(np.float64)
    b = rng.normal(size=n).astype(np.float32)
    tol = n * EPS32 * COND  # normwise forward error of a backward-stable solve
    low = np.asarray(_CHOL(jnp.asarray(a)))
    assert np.all(np.triu(low, 1) == 0)
    assert _rel(low, np.linalg.cholesky(a64)) <= tol
    x_ref = np.linalg.solve(a64, b.astype(np.float64))
    assert _rel(_SOLVE(jnp.asarray(a), jnp.asarray(b)), x_ref) <= tol
    assert _rel(_CHO_SOLVE(jnp.asarray(low), jnp.asarray(b)), x_ref) <= tol
    assert _rel(_INV(jnp.asarray(a)), np.linalg.inv(a64)) <= tol
    # several right-hand sides at once, and the triangular solve on its own
    bm = rng.normal(size=(n, 3)).astype(np.float32)
    assert _rel(_SOLVE(jnp.asarray(a), jnp.asarray(bm)), np.linalg.solve(a64, bm.astype(np.float64))) <= tol
    y = np.asarray(_LOWER(jnp.asarray(low), jnp.asarray(b)), np.float64)
    np.testing.assert_allclose(low.astype(np.float64) @ y, b, atol=tol * np.max(np.abs(b)))


@pytest.mark.parametrize("n", [3, 17, 40])
def test_linalg_under_vmap(n):
    rng = np.random.default_rng(7 * n)
    batch = np.stack([random_spd(rng, n) for _ in range(32)])
    rhs = rng.normal(size=(32, n)).astype(np.float32)
    x = np.asarray(jax.jit(jax.vmap(spd_solve))(jnp.asarray(batch), jnp.asarray(rhs)))
    inv = np.asarray(jax.jit(jax.vmap(spd_inverse))(jnp.asarray(batch)))
    tol = n * EPS32 * COND
    for k in range(32):
        a64 = batch[k].astype(np.float64)
        assert _rel(x[k], np.linalg.solve(a64, rhs[k].astype(np.float64))) <= tol
        assert _rel(inv[k], np.linalg.inv(a64)) <= tol
    # and each batch member equals its own unbatched solve (float32 rounding aside)
    one = np.asarray(_SOLVE(jnp.asarray(batch[5]), jnp.asarray(rhs[5])))
    np.testing.assert_allclose(x[5], one, rtol=0, atol=tol * np.max(np.abs(one)))


def test_cholesky_of_singular_matrix_is_finite_and_jitter_regularises():
    v = np.array([[1.0, 2.0, 3.0]], np.float32)
    singular = v.T @ v  # rank 1
    low = np.asarray(cholesky(jnp.asarray(singular)))
    assert np.all(np.isfinite(low))
    a = random_spd(np.random.default_rng(3), 6)
    b = np.ones(6, np.float32)
    jit = 1e-2
    scale = np.max(np.abs(np.diag(a)))
    ref = np.linalg.solve(a.astype(np.float64) + jit * scale * np.eye(6), b)
    assert _rel(spd_solve(jnp.asarray(a), jnp.asarray(b), jitter=jit), ref) <= 6 * EPS32 * COND


# ------------------------------------------------------------------ line model
LINES = ("Halpha", "NII6583", "NII6548", "SII6716", "SII6731")


def sn3_model(shape="sincgauss", continuum_order=1):
    header = dict(step=2943.025792, order=8, step_nb=840, corr=1.0374712062298759)
    axis = instrument.spectral_axis_cm1(header["step"], header["order"], header["step_nb"], header["corr"])
    lo, hi = instrument.get_filter("SN3").band_cm1
    axis = axis[(axis >= lo) & (axis <= hi)]
    ref = float(np.mean(axis))
    grid = SpectralGrid(axis - ref, ref)
    spec = ModelSpec(make_line_set(LINES), shape, continuum_order)
    return LineModel(spec, grid), axis


def doppler(rest_cm1, v):
    beta = v / C_KMS
    return rest_cm1 * math.sqrt((1 - beta) / (1 + beta))


@pytest.mark.parametrize("shape", ["sincgauss", "sinc", "gaussian"])
def test_design_matrix_columns_are_the_line_shapes(shape):
    lm, axis = sn3_model(shape, continuum_order=1)
    v, b, fwhm = 123.4, 37.0, 3.17
    theta = jnp.asarray([v, b] if lm.spec.has_broadening else [v], jnp.float32)
    m = np.asarray(jax.jit(lm.design_matrix)(theta, jnp.float32(fwhm)), np.float64)
    assert m.shape == (axis.size, 4 + 2)  # 4 amplitudes (NII6548 tied) + constant + slope
    profile, flux, has_b = get_model(shape)
    ls = lm.spec.line_set
    x0 = np.array([doppler(r, v) for r in ls.rest_cm1])
    sg = x0 * (b if has_b else 0.0) / C_KMS

    jprofile = jax.jit(profile)

    def prof(i):  # direct evaluation, positions from float64 maths
        dx = (axis - x0[i]).astype(np.float32)
        return np.asarray(jprofile(jnp.asarray(dx), jnp.float32(fwhm), jnp.float32(sg[i])), np.float64)

    fl = [float(flux(jnp.float32(fwhm), jnp.float32(s))) for s in sg]
    # float32 positions relative to the band centre: ~1e-3 cm-1 -> ~1e-4 of the peak
    atol = 2e-4
    np.testing.assert_allclose(m[:, 0], prof(0), atol=atol)  # Halpha
    # NII6583 column: the line plus [NII]6548 with 1/3 of its energy flux
    # (cm-1 flux ratio 1/3 (x6548/x6583)^2, since F_erg = F_cm1 1e8 / x0^2)
    r_cm1 = (658.345 / 654.805) ** 2 / 3.0
    np.testing.assert_allclose(m[:, 1], prof(1) + (fl[1] * r_cm1) / fl[2] * prof(2), atol=atol)
    np.testing.assert_allclose(m[:, 2], prof(3), atol=atol)
    np.testing.assert_allclose(m[:, 3], prof(4), atol=atol)
    t = 2 * (axis - axis.min()) / (axis.max() - axis.min()) - 1
    np.testing.assert_allclose(m[:, 4], 1.0, rtol=0, atol=0)
    np.testing.assert_allclose(m[:, 5], t, atol=4 * EPS32)
    # each line column peaks at its line position
    for col, line in ((0, 0), (2, 3), (3, 4)):
        assert abs(axis[np.argmax(m[:, col])] - x0[line]) <= 0.5 * (axis[1] - axis[0]) + 1e-9


def test_tied_nii_flux_is_a_third_exactly():
    lm, _ = sn3_model("sincgauss", continuum_order=0)
    for v, b in ((-250.0, 0.0), (0.0, 20.0), (300.0, 120.0)):
        theta = jnp.asarray([v, b], jnp.float32)
        alpha = jnp.asarray([2.0, 1.5, 0.3, 0.2, 0.05], jnp.float32)
        fwhm = jnp.float32(3.1)
        fluxes = np.asarray(lm.line_fluxes_cm1(theta, alpha, fwhm), np.float64)
        names = lm.spec.line_set.names
        f6583, f6548 = fluxes[names.index("NII6583")], fluxes[names.index("NII6548")]
        # the tie holds for energy fluxes: F_erg = F_cm1 1e8 / x0^2, x0 shifted alike
        assert f6548 == pytest.approx(f6583 * (658.345 / 654.805) ** 2 / 3.0, rel=4 * EPS32)
        # and the fluxes are amplitude x unit flux of each line's own profile
        amps = np.asarray(lm.line_amplitudes(theta, alpha, fwhm), np.float64)
        assert amps[0] == pytest.approx(2.0, rel=EPS32)
        assert amps[names.index("NII6583")] == pytest.approx(1.5, rel=EPS32)
        # the spectrum is the design matrix times alpha
        spec = np.asarray(lm.spectrum(theta, alpha, fwhm))
        np.testing.assert_allclose(spec, np.asarray(lm.design_matrix(theta, fwhm)) @ np.asarray(alpha), rtol=1e-5, atol=1e-6)


def test_velocity_factor_minus_one_is_relativistic():
    v = np.concatenate([np.linspace(-3000.0, 3000.0, 601), [-1e-3, 1e-3, 0.1, 1.0]]).astype(np.float32)
    got = np.asarray(velocity_factor_minus_one(jnp.asarray(v)), np.float64)
    beta = v.astype(np.float64) / C_KMS
    ref = np.sqrt((1 - beta) / (1 + beta)) - 1
    # relative accuracy of the small quantity itself (not of 1 + it): float32 expm1/log1p
    np.testing.assert_allclose(got, ref, rtol=8 * EPS32, atol=0)
    assert float(velocity_factor_minus_one(jnp.float32(0.0))) == 0.0
    # the non-relativistic -v/c differs by ~v^2/(2c^2): far above the error at 3000 km/s
    i = np.argmin(np.abs(v - 3000.0))
    assert abs(got[i] - (-beta[i])) > 1e3 * abs(got[i] - ref[i])


def test_line_position_and_velocity_round_trip():
    rest = 1e7 / 656.2819
    v = np.linspace(-3000.0, 3000.0, 121)
    x0 = np.asarray(line_position_cm1(jnp.float32(rest), jnp.asarray(v, jnp.float32)), np.float64)
    back = velocity_from_position(x0, rest)
    # float32 positions near 15000 cm-1 resolve ~1e-3 cm-1, i.e. ~2 eps32 * c in velocity
    np.testing.assert_allclose(back, v, atol=4 * EPS32 * C_KMS)
    # float64 inverse of the exact float64 position: exact to round-off
    x64 = np.array([doppler(rest, vv) for vv in v])
    np.testing.assert_allclose(velocity_from_position(x64, rest), v, atol=1e-8)


def _newton_sqrt(a, x0, tol):
    """sqrt(a) by Newton's method from x0: a loop whose trip count depends on the element."""
    def body(st):
        i, x = st
        return i + 1, 0.5 * (x + a / x)

    return jax.lax.while_loop(lambda st: (st[0] < 50) & (jnp.abs(st[1] * st[1] - a) > tol * a), body, (0, x0))


@pytest.mark.parametrize("n", [1, 8, 13, 64])
def test_chunked_under_vmap_equals_vmap(n):
    """The LM loop's chunking (lucijax.solvers.fitting.chunked_under_vmap): the same values as
    plain vmap, bit for bit, for batches smaller than, equal to, not a multiple of and a
    multiple of the chunk, with an argument that is not batched; and under vmap the loop
    really runs over chunks (a scan over them in the program)."""
    from lucijax.solvers.fitting import chunked_under_vmap

    a = jnp.asarray(np.random.default_rng(n).uniform(0.5, 1e4, n), jnp.float32)
    tol = jnp.float32(1e-6)
    want = jax.jit(jax.vmap(_newton_sqrt, in_axes=(0, 0, None)))(a, a, tol)
    chunked = jax.vmap(chunked_under_vmap(_newton_sqrt, 8), in_axes=(0, 0, None))
    got = jax.jit(chunked)(a, a, tol)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(g))
    np.testing.assert_allclose(np.asarray(got[1]), np.sqrt(np.asarray(a, np.float64)), rtol=1e-5)
    text = str(jax.make_jaxpr(chunked)(a, a, tol))
    assert "scan" in text and "while" in text
    assert "scan" not in str(jax.make_jaxpr(jax.vmap(_newton_sqrt, in_axes=(0, 0, None)))(a, a, tol))
    assert chunked_under_vmap(_newton_sqrt, 0) is _newton_sqrt
    one = chunked_under_vmap(_newton_sqrt, 8)(a[0], a[0], tol)  # unbatched: the function itself
    np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(_newton_sqrt(a[0], a[0], tol)[1]))


def _newton_start(a, x0, tol):
    return jnp.asarray(0), x0, jnp.asarray(False)


def _newton_run(state, limit, a, x0, tol):
    """Newton's sqrt from ``state`` until converged or ``limit`` steps (the LM loop's form)."""
    def body(st):
        i, x, _ = st
        x = 0.5 * (x + a / x)
        return i + 1, x, jnp.abs(x * x - a) <= tol * a

    return jax.lax.while_loop(lambda st: (st[0] <= limit) & ~st[2], body, state)


def _newton_done(state, limit):
    return state[2] | (state[0] > limit)


@pytest.mark.parametrize("n", [1, 8, 13, 64])
@pytest.mark.parametrize("first,group", [(1, 4), (3, 4), (3, 16), (60, 8)])
def test_compacted_under_vmap_equals_vmap(n, first, group):
    """The LM loop's compaction (lucijax.solvers.fitting.compacted_under_vmap): every
    element's final state (steps made, value, stop flag) equals the plain vmap's, bit for
    bit, with the running elements regathered after ``first`` steps in groups smaller than,
    equal to and larger than the batch, some elements stopping at the step limit (40)."""
    from lucijax.solvers.fitting import compacted_under_vmap

    rng = np.random.default_rng(n)
    a = jnp.asarray(rng.uniform(0.5, 1e4, n), jnp.float32)
    x0 = jnp.asarray(np.where(rng.uniform(size=n) < 0.2, 1e-30, 1.0), jnp.float32)  # some start far off
    tol = jnp.float32(1e-6)

    def plain(a, x0, tol):
        return _newton_run(_newton_start(a, x0, tol), 40, a, x0, tol)

    want = jax.jit(jax.vmap(plain, in_axes=(0, 0, None)))(a, x0, tol)
    loop = compacted_under_vmap(_newton_start, _newton_run, _newton_done, 40, first, group)
    got = jax.jit(jax.vmap(loop, in_axes=(0, 0, None)))(a, x0, tol)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(g))
    steps = np.asarray(got[0])
    if n >= 8:  # members of different lengths, some beyond ``first``, some stopped at the limit
        assert steps.min() < steps.max() and (steps == 41).any()
        assert first > 40 or (steps > first).any()
    ok = np.asarray(got[2])
    np.testing.assert_allclose(np.asarray(got[1])[ok], np.sqrt(np.asarray(a, np.float64))[ok], rtol=1e-5)
    one = loop(a[0], x0[0], tol)  # unbatched: the loop itself
    for w, g in zip(plain(a[0], x0[0], tol), one):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(g))


def test_map_program_on_cpu_chunks_its_lm_loop():
    """On a CPU the MAP program runs wide batches with the LM loop in chunks."""
    import lucijax
    from lucijax.io.memory import MemoryCube
    from lucijax.simulate import make_cube
    from lucijax.solvers import map as map_solver

    cube = MemoryCube.from_synthetic(make_cube(2, 2, seed=1))
    bound = lucijax.Model(["Halpha", "NII6583"]).bind(cube.header)
    program = lucijax.MAP().program(bound, cube)
    assert jax.default_backend() == "cpu"
    assert program.batch_size == map_solver.CPU_BATCH_SIZE > map_solver.CPU_LM_CHUNK > 1
    assert f"lm_chunk={map_solver.CPU_LM_CHUNK}" in program.key
    assert f"lm_first={map_solver.CPU_LM_FIRST}" in program.key


@pytest.mark.timeout(600)
def test_laplace_errors_equal_the_fisher_matrix_at_the_fit():
    """The fit's Laplace errors (its Jacobian taken from the LM loop's last accepted
    evaluation, in the internal parameters u = (v, b^2)) against an independent Fisher
    matrix: J = d spectrum / d (v, b, alpha) by forward mode at the fitted values, inverted
    in float64, times the fit's noise. A start at broadening 0 (where d b / d u is infinite)
    is fitted too, not left where it started."""
    import lucijax
    from lucijax.io.memory import MemoryCube
    from lucijax.simulate import make_cube
    from lucijax.solvers.fitting import fit_spectrum

    lines = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
    syn = make_cube(4, 4, lines=lines, seed=2, snr_range=(15.0, 60.0))
    model = lucijax.Model(lines)
    bound = model.bind(MemoryCube.from_synthetic(syn).header)
    lm = bound.line_model
    settings = lucijax.MAP().settings(model)
    n = 16
    y = jnp.asarray(syn.data.reshape(n, -1)[:, bound.window], jnp.float32)
    fwhm = jnp.asarray(syn.fwhm_cm1.reshape(n), jnp.float32)
    v_true = syn.truth["VELOCITY"].T.reshape(n)
    b_start = np.where(np.arange(n) % 2 == 0, 0.0, 40.0)  # half of them from broadening 0
    start = jnp.asarray(np.stack([v_true + 15.0, b_start], axis=1), jnp.float32)
    lo, hi = jnp.asarray([-600.0, 0.0]), jnp.asarray([600.0, 300.0])
    fit = jax.jit(jax.vmap(lambda s, f, t: fit_spectrum(lm, settings, s, f, t, lo, hi)))(y, fwhm, start)
    status = np.asarray(fit.status)
    v = np.asarray(fit.velocity_kms[:, 0])
    assert np.all(status == 0), status
    assert np.all(np.abs(v - v_true) < 5 * np.asarray(fit.velocity_err_kms[:, 0]))
    P = lm.spec.n_nonlinear
    for i in range(n):
        theta = jnp.asarray([fit.velocity_kms[i, 0], fit.broadening_kms[i, 0]])
        alpha = jnp.asarray(fit.linear[i])
        jac = jax.jacfwd(lambda q: lm.spectrum(q[:P], q[P:], fwhm[i]))(jnp.concatenate([theta, alpha]))
        jac = np.asarray(jac, np.float64)
        cov = np.linalg.inv(jac.T @ jac) * float(fit.noise[i]) ** 2
        np.testing.assert_allclose([fit.velocity_err_kms[i, 0], fit.broadening_err_kms[i, 0]],
                                   np.sqrt(np.diagonal(cov)[:P]), rtol=2e-3)
