"""Importance sampling (:class:`~lucijax.bayes.Importance`): its log-evidence against brute
force, for the one-component model and for the ordered two-component model of
:mod:`lucijax.bayes.evidence` (the proposal built from the two-component MAP fit, with the
one-component submodel's parts).

The reference integrates the same posterior on a grid of the non-linear parameters
(velocities, broadenings), with the linear ones (amplitudes, continuum) integrated
analytically at every grid point: ``int L da = exp(-chi2_min / 2) (2 pi)^(K/2) |G|^(-1/2)
(2 pi)^(-n/2)``, exact where the amplitude box holds the whole Gaussian (bright lines far
from zero, so the ``amplitude >= 0`` edge costs nothing) -- a computation that shares
nothing with the sampler but the line model's design matrix. The grid spans +- 7 Laplace
sigmas of the MAP fit along each axis, where the posterior lies.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lucijax.bayes import Importance
from lucijax.bayes import evidence as ev
from lucijax.bayes.problem import PixelProblem

from test_bayes import LINES, build_pixel_data, map_fit, simulate  # noqa: F401 (the bound fixture's helpers)
from test_bayes import bound  # noqa: F401 (module fixture)

pytestmark = pytest.mark.timeout(400)


def pick(data, i):
    return jax.tree.map(lambda a: a[i], data)


def marginal_loglik(problem: PixelProblem, d, thetas: np.ndarray) -> np.ndarray:
    """log of the likelihood integrated over the linear parameters (Gaussian integral, no
    box) at each row of ``thetas`` (raw non-linear parameters), float64."""
    y = np.asarray(d.y, np.float64)
    used = np.asarray(d.mask) > 0
    y = y[used]
    n = y.size

    def design(t):
        return problem.line_model.design_matrix(problem.physical_theta(t), d.fwhm)

    out = []
    for chunk in np.array_split(thetas, max(1, len(thetas) // 4096)):
        m = np.asarray(jax.jit(jax.vmap(design))(jnp.asarray(chunk, jnp.float32)), np.float64)[:, used, :]
        gram = np.einsum("bnk,bnl->bkl", m, m)
        rhs = np.einsum("bnk,n->bk", m, y)
        a_hat = np.linalg.solve(gram, rhs[..., None])[..., 0]
        chi2 = np.sum((y[None, :] - np.einsum("bnk,bk->bn", m, a_hat)) ** 2, axis=1)
        K = m.shape[2]
        out.append(-0.5 * chi2 - 0.5 * n * math.log(2 * math.pi) + 0.5 * K * math.log(2 * math.pi)
                   - 0.5 * np.linalg.slogdet(gram)[1])
    return np.concatenate(out)


def brute_force_logz(problem: PixelProblem, d, centre, sigma, points: int) -> float:
    """log Z on a grid of ``points`` per non-linear axis over ``centre +- 7 sigma`` (within
    the box), uniform priors of the box."""
    lo, hi = np.asarray(d.lo, np.float64), np.asarray(d.hi, np.float64)
    P = problem.n_nonlinear
    axes = [np.linspace(max(c - 7 * s, lo[i]), min(c + 7 * s, hi[i]), points) for i, (c, s) in enumerate(zip(centre, sigma))]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, P)
    cell = np.prod([a[1] - a[0] for a in axes])
    ll = marginal_loglik(problem, d, grid)
    top = ll.max()
    log_int = top + math.log(np.sum(np.exp(ll - top)) * cell)
    return float(log_int - np.sum(np.log(hi - lo)))


def test_importance_logz_matches_brute_force_one_component(bound):  # noqa: F811
    """Two bright one-component spectra: log Z of importance sampling (2000 draws) within
    4 of its own quoted errors (at least 0.05) of the 81 x 81 grid's."""
    p1, _ = ev.component_problems(bound)
    y, fwhm = simulate(bound, [20.0, -50.0], [30.0, 20.0], [[50.0, 20.0], [30.0, 10.0]], [0.5, 0.2], [1.0, 1.0], seed=2)
    mf = map_fit(bound, y, fwhm)
    est = Importance()
    data = build_pixel_data(p1, bound, est.prior, y, fwhm, mf, broad=True)
    run = jax.jit(jax.vmap(lambda d, k: est.run(p1, d, k)))(data, jax.random.split(jax.random.PRNGKey(4), 2))
    for i in range(2):
        d = pick(data, i)
        centre = [mf["velocity_kms"][i, 0], mf["broadening_kms"][i, 0]]
        sigma = [mf["velocity_err_kms"][i, 0], mf["broadening_err_kms"][i, 0]]
        ref = brute_force_logz(p1, d, centre, sigma, 81)
        got, err = float(run["logz"][i]), float(run["logz_err"][i])
        assert float(run["ess"][i]) > 500, run["ess"][i]
        assert abs(got - ref) < max(4 * err, 0.05), (got, ref, err)


def test_importance_logz_matches_brute_force_two_components(bound):  # noqa: F811
    """A bright spectrum with a second component 250 km/s away at half the amplitude: the
    ordered two-component model's log Z from the proposal of its MAP fit (as
    ``EvidenceSelection`` builds it) against a 4-D grid (15 points per axis)."""
    from lucijax.solvers.components import Components, component_fit

    p1, p2 = ev.component_problems(bound)
    y, fwhm = simulate(bound, [-80.0], [35.0], [[40.0, 16.0]], [0.3], [1.0], seed=11, second=(250.0, 0.5))
    mf = map_fit(bound, y, fwhm)
    est = Importance()
    prior = est.prior
    d1 = pick(build_pixel_data(p1, bound, prior, y, fwhm, mf, broad=True), 0)
    ranges = (tuple(bound.model.velocity_range), tuple(bound.model.broadening_range))
    two = jax.jit(component_fit(bound, Components()))(jnp.asarray(y[0]), jnp.asarray(fwhm[0], jnp.float32))
    d2 = ev.two_component_proposal(ev.component_pixel_data(p2, d1, ranges), two, prior, d1)
    run = jax.jit(lambda d, k: est.run(p2, d, k))(d2, jax.random.PRNGKey(5))
    v, ve = np.asarray(two.velocity_kms), np.asarray(two.velocity_err_kms)
    assert abs(v[0] + 80) < 10 and abs(v[1] - 170) < 10, v
    centre = np.asarray(d2.prop_mean, np.float64)
    sigma = np.asarray(d2.map_sigma, np.float64)
    # the offset's error is hypot(e_v1, e_v2) (v1 and v2 nearly independent here): the grid
    # spans +- 7 of it, one point per sigma (a Riemann sum of a Gaussian at that spacing is
    # exact to ~1e-8)
    ref = brute_force_logz(p2, d2, centre, sigma, 15)
    got, err = float(run["logz"]), float(run["logz_err"])
    assert float(run["ess"]) > 300, run["ess"]
    assert abs(got - ref) < max(4 * err, 0.1), (got, ref, err, ve)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_submodel_part_density_matches_its_draws(which):
    """Each part of the one-component submodel (:class:`~lucijax.bayes.kernels.SubmodelProposal`)
    draws what its density says (the importance weights are only unbiased if it does):
    ``E_q[1_B / q]`` over 100000 of its draws is the volume of a box ``B`` inside its support,
    to 3 %."""
    from lucijax.bayes.kernels import SubmodelProposal
    from lucijax.bayes.problem import PixelData

    f32 = jnp.float32
    lo = jnp.asarray([-600.0, 0.0, 0.0, 0.0, 0.0], f32)
    hi = jnp.asarray([600.0, 1200.0, 300.0, 300.0, 10.0], f32)
    v, b = -30.0, 40.0
    z = jnp.zeros(3, f32)
    d = PixelData(z, z, jnp.asarray(3.0, f32), jnp.asarray(1.0, f32), lo, hi, lo, z[:2], z[:2], jnp.asarray(1.0, f32),
                  z[:2], anchor=jnp.asarray([v, b, 2.0, 3.0], f32))
    part = SubmodelProposal(d, which, 8.0, 1.5)
    box = {0: [(v - 4, v + 4), (100, 900), (b - 6, b + 6), (20, 250)],
           1: [(-500, -100), (v + 100 - 4, v + 500 + 4), (20, 250), (b - 6, b + 6)],
           2: [(v - 19, v + 9), (10, 80), (1, 55), (1, 55)]}[which]
    # which = 1: delta = v - v1 + noise, so the box in delta depends on v1: B is the set
    # {v1 in [-500, -100], delta - (v - v1) in [-4, 4]} (volume 400 x 8), tested through t
    theta = jax.vmap(part.draw_theta)(jax.random.split(jax.random.PRNGKey(which), 100000))
    logq = jax.vmap(part.theta_logq)(theta)
    t = np.asarray(theta, np.float64)
    if which == 1:
        inside = (t[:, 0] >= -500) & (t[:, 0] <= -100) & (np.abs(t[:, 1] - (v - t[:, 0])) <= 4)
        inside &= (t[:, 2] >= 20) & (t[:, 2] <= 250) & (np.abs(t[:, 3] - b) <= 6)
        volume = 400.0 * 8.0 * 230.0 * 12.0
    else:
        inside = np.all([(t[:, k] >= lo_k) & (t[:, k] <= hi_k) for k, (lo_k, hi_k) in enumerate(box)], axis=0)
        volume = float(np.prod([h - l for l, h in box]))
    estimate = np.mean(np.where(inside, np.exp(-np.asarray(logq, np.float64)), 0.0))
    assert inside.mean() > 0.12, inside.mean()  # binomial error of the estimate < 1 %
    assert abs(estimate / volume - 1.0) < 0.03, (estimate, volume)


@pytest.mark.parametrize("argv,expect", [
    (["--bayes", "importance", "--bayes-components"], ("evidence", "importance")),
    (["--bayes", "nested", "--bayes-components"], ("evidence", "nested")),
    (["--bayes", "importance", "--bayes-num-samples", "3000"], ("importance", 3000)),
    (["--bayes", "mh", "--bayes-components"], "use it with --bayes importance (or nested)"),
    (["--bayes", "importance", "--bayes-chains", "4"], "importance sampling runs no chains"),
    (["--bayes-components"], "needs --bayes importance (or nested)"),
])
def test_cli_builds_the_evidence_estimator(argv, expect):
    """``--bayes importance`` is a sampler of its own (``LOGZ``), and with
    ``--bayes-components`` the evidence selection's estimator; wrong combinations are
    one-line errors."""
    from lucijax.cli import build_parser, build_sampler

    args = build_parser().parse_args(["fit", "cube.hdf5", "--lines", *LINES, *argv])
    if isinstance(expect, str):
        with pytest.raises(ValueError, match=expect.replace("(", r"\(").replace(")", r"\)")):
            build_sampler(args)
        return
    sampler = build_sampler(args)
    if expect[0] == "evidence":
        assert sampler.name == "evidence" and sampler.estimator.name == expect[1]
    else:
        assert sampler.name == expect[0] and sampler.num_samples == expect[1]
