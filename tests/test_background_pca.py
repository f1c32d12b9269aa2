"""A background fitted in every pixel (issue 21, item 5): ``Model(background=
views.background_pca(cube, sky, K))``, the mean and principal components of a sky region's
spectra as K extra linear columns with free coefficients per pixel.

Checked here on :func:`lucijax.simulate.make_sky_cube` (16 x 16 pixels): six OH-like sky
lines (30 x noise at peak, two of them 1-2 nm from Halpha and [NII]6583) brighten by 60 %
from x = 0 to x = 15 and shift by +-12 km/s along y; the object (Halpha + [NII], S/N 8-30)
fills x = 8..15, y = 4..11; the sky region is x < 5 (all y), away from the object, so the
object's sky is brighter than the region's mean:

* :func:`background_pca` against numpy: its first spectrum is the region's mean, and the
  sky region's spectra minus their fit on the components leave only the noise;
* with the background fitted, the object's line fluxes agree with the truth within their
  errors (pulls ~ N(0, 1));
* with today's single mean sky spectrum subtracted instead, they are biased (Halpha: -12 %, mean pull -6)
  (so the check above can fail);
* the fitted background is a separate part of the model spectrum; option checks.
"""

from __future__ import annotations

import numpy as np
import pytest

import lucijax
from lucijax import views
from lucijax.io.memory import MemoryCube
from lucijax.simulate import make_sky_cube
from lucijax.status import Status

pytestmark = pytest.mark.timeout(600)

LINES = ("Halpha", "NII6583", "NII6548")
K = 4


@pytest.fixture(scope="module")
def sky_cube():
    c = make_sky_cube(16, 16, seed=2)
    sky = np.zeros((16, 16), bool)  # [y, x]
    sky[:, :5] = True
    cube = MemoryCube.from_synthetic(c)
    return c, cube, sky, views.background_pca(cube, sky, K)


@pytest.fixture(scope="module")
def fits(sky_cube):
    c, cube, sky, bkg = sky_cube
    obj = c.truth["OBJECT"]
    ex = lucijax.Execution(progress=False)
    solver = lucijax.MAP(start="matched", ambiguity_chi2=None)
    pca = lucijax.fit(cube, lucijax.Model(LINES, background=bkg), solver, mask=obj, execution=ex)
    mean = views.background_spectrum(cube, sky, "mean")
    single = lucijax.fit(views.subtract_background(cube, mean), lucijax.Model(LINES), solver, mask=obj, execution=ex)
    return pca, single


def _pulls(result, c, name):
    x0, x1, y0, y1 = result.region
    i = result.bound.line_set.names.index(name)
    flux = np.asarray(result.fields["flux_cm1"], np.float64)[..., i]
    err = np.asarray(result.fields["flux_err_cm1"], np.float64)[..., i]
    truth = c.truth[f"{name.upper()}_FLUX_CM1"].T[x0:x1, y0:y1]
    return (flux - truth) / err, flux, truth


def test_background_pca_against_numpy(sky_cube):
    c, _, sky, bkg = sky_cube
    assert bkg.spectra.shape == (K, c.data.shape[2])
    spectra = c.data.transpose(1, 0, 2)[sky].astype(np.float64)  # [y, x] mask on [x, y] data
    np.testing.assert_allclose(bkg.spectra[0], spectra.mean(axis=0), rtol=1e-9, atol=1e-9)
    # every sky spectrum is its fit on the components plus the noise (sigma 1) alone
    basis = bkg.spectra.T
    coef, *_ = np.linalg.lstsq(basis, spectra.T, rcond=None)
    resid = spectra.T - basis @ coef
    assert 0.9 < resid.std() < 1.05
    # the mean alone leaves the sky's variation
    one = bkg.spectra[:1].T
    c1, *_ = np.linalg.lstsq(one, spectra.T, rcond=None)
    assert (spectra.T - one @ c1).std() > 1.15
    # equal by content; a model with it binds once per content
    same = lucijax.Background(bkg.spectra.copy())
    assert same == bkg and hash(same) == hash(bkg) and lucijax.Background(bkg.spectra[:2]) != bkg
    assert "sha256" in repr(lucijax.Model(LINES, background=bkg))


def test_object_fluxes_unbiased_with_the_fitted_background(fits, sky_cube):
    c = sky_cube[0]
    pca, _ = fits
    status = np.asarray(pca.fields["status"])
    print(f"STATUS 0 (converged): {np.mean(status == Status.CONVERGED):.3f}; fit {pca.seconds:.1f} s")
    stats = {}
    for name in ("Halpha", "NII6583"):
        pull, flux, truth = _pulls(pca, c, name)
        robust_sd = 1.4826 * np.median(np.abs(pull - np.median(pull)))
        stats[name] = pull, robust_sd
        print(f"PCA background, {name}: pull mean {pull.mean():+.3f} median {np.median(pull):+.3f} sd {pull.std():.3f} "
              f"robust sd {robust_sd:.3f}, median rel. error {np.median((flux - truth) / truth):+.4f}")
    assert np.mean(status == Status.CONVERGED) >= 0.8
    for name, (pull, robust_sd) in stats.items():
        assert np.all(np.isfinite(pull)), name
        assert abs(np.mean(pull)) < 0.35, name
        assert 0.7 < robust_sd < 1.35, name
        assert np.max(np.abs(pull)) < 4.5, name


def test_single_mean_sky_biases_the_object(fits, sky_cube):
    c = sky_cube[0]
    _, single = fits
    pull, flux, truth = _pulls(single, c, "Halpha")
    print(f"mean sky subtracted ({single.seconds:.1f} s), Halpha: pull mean {np.nanmean(pull):+.2f}, median rel. error "
          f"{np.nanmedian((flux - truth) / truth):+.4f}")
    assert np.nanmean(pull) < -3.0
    assert np.nanmedian((flux - truth) / truth) < -0.05


def test_background_is_a_part_of_the_model(fits, sky_cube):
    pca, _ = fits
    assert pca.bound.spec.n_background == K
    assert pca.parameter_names()[-K:] == [f"background_{k}" for k in range(K)]
    _, parts = pca.line_spectra(2, 3)
    _, model = pca.model_spectrum(2, 3)
    assert "background" in parts
    np.testing.assert_allclose(sum(parts.values()), model, rtol=1e-4, atol=1e-3 * np.abs(model).max())
    # the fitted background holds the sky lines: it peaks far above the noise
    assert parts["background"].max() > 20.0


def test_background_options_are_checked(sky_cube):
    _, cube, sky, _ = sky_cube
    with pytest.raises(ValueError, match="between 1 and 20"):
        views.background_pca(cube, sky, 0)
    with pytest.raises(ValueError, match="channels"):
        lucijax.Model(LINES, background=np.ones((2, 50))).bind(cube.header)
    with pytest.raises(ValueError, match="zero"):
        lucijax.Model(LINES, background=np.zeros((1, 50)))

    from lucijax.cli import build_parser, check_view_options

    args = build_parser().parse_args(["fit", "c.hdf5", "--lines", *LINES, "--background-pca", "0:5,0:16",
                                      "--background-components", "3"])
    assert args.background_pca == "0:5,0:16" and args.background_components == 3
    check_view_options(args)
    args.background_region = "0:5,0:16"
    with pytest.raises(ValueError, match="not both"):
        check_view_options(args)
