"""Pixels whose chains did not mix are sampled again with longer chains (``Sampler.retry``):
thinning keeps exactly the draws of the unthinned run that it should; the second run
replaces the results and stored draws of those pixels only; its maps are numpyro's
diagnostics of the draws it stored; the longer chains mix better; ``NRETRY`` counts them.

A 3 x 2 cube, three lines on a narrow window and short chains (so that some pixels fail
a strict R-hat threshold and some pass): every compiled program is small."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(600)

LINES = ["Halpha", "NII6583", "NII6548"]
WINDOW = (15000.0, 15400.0)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import lucijax
    from lucijax.simulate import make_cube

    path = tmp_path_factory.mktemp("retry") / "c.hdf5"
    make_cube(3, 2, lines=LINES, seed=4, snr_range=(5, 30)).write(path)
    ex = lucijax.Execution(progress=False, batch_size=8)
    fit = lucijax.fit(path, lucijax.Model(LINES, window=WINDOW), lucijax.MAP(), execution=ex)
    return path, fit, ex


def test_longer_sampler():
    import lucijax

    mh = lucijax.MH(num_samples=50, num_warmup=30, seed=3)
    lo = mh.longer(4)
    assert (lo.num_samples, lo.num_warmup, lo.thin, lo.seed, lo.retry) == (200, 120, 4, 4, 0)
    assert lo.num_chains == mh.num_chains and lo.proposal_df == mh.proposal_df
    with pytest.raises(ValueError, match="thin"):
        lucijax.MH(num_samples=3, thin=4)


def test_thinning_keeps_every_kth_draw(fitted, tmp_path):
    import lucijax
    from lucijax.results import read_samples

    path, fit, ex = fitted
    mh = lucijax.MH(num_samples=40, num_warmup=20, num_chains=2, retry=0)
    lucijax.sample(path, fit, mh, execution=ex, samples=tmp_path / "all.h5")
    lucijax.sample(path, fit, lucijax.MH(num_samples=40, num_warmup=20, num_chains=2, retry=0, thin=4), execution=ex,
                   samples=tmp_path / "thin.h5")
    every, _ = read_samples(tmp_path / "all.h5")
    thin, _ = read_samples(tmp_path / "thin.h5")
    assert thin.shape[3] == 10 and every.shape[3] == 40
    np.testing.assert_allclose(thin, every[:, :, :, 3::4], rtol=1e-5, atol=1e-6)


def test_unmixed_pixels_are_sampled_again(fitted, tmp_path):
    import lucijax
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    from lucijax.results import read_samples

    path, fit, ex = fitted
    base = dict(num_samples=24, num_warmup=16, num_chains=4)
    first = lucijax.sample(path, fit, lucijax.MH(**base, retry=0), execution=ex, samples=tmp_path / "first.h5")
    r1 = first.maps["RHAT_MAX"]
    # a threshold that some pixels pass and some fail (R-hat does not depend on it)
    threshold = float(np.sort(r1.ravel())[2])
    strict = dict(base, rhat_threshold=threshold)
    once = lucijax.sample(path, fit, lucijax.MH(**strict, retry=0), execution=ex, samples=tmp_path / "once.h5")
    redo = once.maps["RHAT_MAX"] > threshold  # every such pixel, whatever its MAP status
    assert 3 <= redo.sum() < redo.size
    assert np.all(once.maps["STATUS"][redo & np.isin(once.fit.maps["STATUS"], [0, 4])] == 6)
    again = lucijax.sample(path, fit, lucijax.MH(**strict, retry=4, retry_max_share=1.0), execution=ex,
                           samples=tmp_path / "again.h5")
    assert again.cards["NRETRY"] == redo.sum() and "NRETRY" not in once.cards

    d_once, _ = read_samples(tmp_path / "once.h5")
    d_again, _ = read_samples(tmp_path / "again.h5")
    assert d_again.shape == d_once.shape
    keep = ~redo.T  # [x, y]
    np.testing.assert_array_equal(d_again[keep], d_once[keep])  # the others keep their draws...
    for name in ("HALPHA_VELOCITY", "HALPHA_FLUX", "RHAT_MAX", "ESS_MIN", "STATUS"):  # ...and their maps
        np.testing.assert_array_equal(again.maps[name][~redo], once.maps[name][~redo], err_msg=name)
    assert not np.any(np.all(d_again[~keep] == d_once[~keep], axis=(1, 2, 3)))
    # the maps of the retried pixels describe the draws stored for them
    for x, y in zip(*np.nonzero(~keep)):
        draws = d_again[x, y].astype(np.float64)
        assert float(np.max(split_gelman_rubin(draws))) == pytest.approx(float(again.maps["RHAT_MAX"][y, x]), abs=1e-5)
        assert float(np.min(effective_sample_size(draws))) == pytest.approx(float(again.maps["ESS_MIN"][y, x]), rel=1e-4)
        map_status = once.fit.maps["STATUS"][y, x]
        unmixed = again.maps["RHAT_MAX"][y, x] > threshold and map_status in (0, 4)
        assert again.maps["STATUS"][y, x] == (6 if unmixed else map_status)
    # 4 x longer chains mix better
    assert np.median(again.maps["RHAT_MAX"][redo]) < np.median(once.maps["RHAT_MAX"][redo])


def test_no_second_run_when_most_pixels_did_not_mix(fitted, caplog):
    """Chains too short for most pixels: a warning to sample more, not a second run of most."""
    import logging

    import lucijax

    path, fit, ex = fitted
    with caplog.at_level(logging.WARNING, logger="lucijax.api"):
        res = lucijax.sample(path, fit, lucijax.MH(num_samples=24, num_warmup=16, num_chains=4, rhat_threshold=1.0),
                             execution=ex)
    assert np.all(res.maps["RHAT_MAX"] > 1.0) and res.cards["NRETRY"] == 0
    assert "too short" in caplog.text and "100% of the pixels" in caplog.text
