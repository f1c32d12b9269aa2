"""Posterior draws to arviz (``lucijax.to_arviz``, ``PosteriorResult.to_arviz``) and the
posterior progress bar's running R-hat share (:class:`~lucijax.program.ProgressNote`).

One small cube (3 x 2 pixels) is fitted and sampled once with the cheapest sampler (MH,
2 chains), its draws kept on disk, in batches of 2 pixels and blocks of 2 x 2 (3 batches):

* the export holds exactly the draws :func:`~lucijax.read_samples` returns;
* arviz's own diagnostics on the export agree with the RHAT_MAX / ESS_MIN maps: arviz's
  split R-hat (``method='split'``) is the same estimator as numpyro's split Gelman-Rubin
  that lucijax uses, so it agrees to float32 rounding; numpyro's ESS (no chain split, no
  rank normalisation) is closest to arviz's ``method='identity'``, which differs only in
  how Geyer's initial sequence is truncated (see the test); numpyro.diagnostics on the
  exported draws reproduces the maps (the same draws were diagnosed);
* ``az.summary`` and ``az.plot_trace`` run on it;
* the engine calls the sampler's progress note once per batch and its final share is the
  result's ``converged_fraction()``; the bar's note says so; MAP programs have none.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.2x announces its 1.0 refactor at import
    pytest.importorskip("arviz")

LINES = ["Halpha", "NII6583", "NII6548"]
WINDOW = (15000.0, 15400.0)
NX, NY = 3, 2
BATCH, BLOCK = 2, 2
N_BATCHES = 3  # blocks (0:2, 0:2) = 4 pixels = 2 batches, (2:3, 0:2) = 2 pixels = 1 batch


def _arviz():
    from lucijax.results.inference_data import import_arviz

    return import_arviz()


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A 3 x 2 cube fitted (MAP) and sampled (MH) with its draws on disk, the progress
    note's per-batch counts and the bar's notes recorded."""
    import lucijax
    import lucijax.api
    from lucijax.engine import core
    from lucijax.simulate import make_cube

    tmp = tmp_path_factory.mktemp("arviz")
    path = tmp / "c.hdf5"
    make_cube(NX, NY, lines=LINES, seed=4, snr_range=(10, 40)).write(path)
    ex = lucijax.Execution(batch_size=BATCH, block_size=BLOCK, progress=False)
    fit = lucijax.fit(path, lucijax.Model(LINES, window=WINDOW), lucijax.MAP(), execution=ex)

    counts, notes = [], []
    real_program = lucijax.api.posterior_program

    def recording_program(*args, **kwargs):
        program = real_program(*args, **kwargs)
        note = program.progress_note

        def count(out):
            counts.append(note.count(out))
            return counts[-1]

        return dataclasses.replace(program, progress_note=dataclasses.replace(note, count=count))

    class Bar(core.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": io.StringIO()})

        def set_postfix_str(self, s="", refresh=True):
            notes.append(s)
            super().set_postfix_str(s, refresh)

    sampler = lucijax.MH(num_warmup=200, num_samples=300, num_chains=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lucijax.api, "posterior_program", recording_program)
        mp.setattr(core, "tqdm", Bar)
        res = lucijax.sample(path, fit, sampler, execution=dataclasses.replace(ex, progress=True),
                             samples=tmp / "draws.h5")
    return {"path": path, "fit": fit, "res": res, "samples": tmp / "draws.h5", "counts": counts, "notes": notes,
            "tmp": tmp}


@pytest.mark.timeout(600)
def test_progress_note_counts_every_batch_and_ends_at_converged_fraction(sampled):
    res, counts, notes = sampled["res"], sampled["counts"], sampled["notes"]
    assert len(counts) == N_BATCHES
    assert [t for _, t in counts] == [BATCH, BATCH, NX * NY - 2 * BATCH]
    ok = sum(o for o, _ in counts)
    total = sum(t for _, t in counts)
    assert total == NX * NY
    assert ok / total == res.converged_fraction(res.sampler.rhat_threshold)
    assert ok == int(np.sum(res.maps["RHAT_MAX"] <= 1.05))
    # the bar showed the running share after every batch, ending at the result's
    assert len(notes) == N_BATCHES
    assert notes[-1] == f"R-hat<=1.05: {100 * res.converged_fraction():.1f}%"


@pytest.mark.timeout(120)
def test_map_programs_and_samplers_without_rhat_have_no_note(sampled):
    import lucijax
    from lucijax.bayes.posterior import rhat_note

    assert sampled["fit"].solver.program(sampled["fit"].bound).progress_note is None
    assert rhat_note(lucijax.Nested()) is None
    assert rhat_note(lucijax.MH(num_chains=1)) is None
    assert rhat_note(lucijax.NUTS(rhat_threshold=1.01)).label == "R-hat<=1.01"
    assert rhat_note(lucijax.Ensemble()).count(SimpleNamespace(rhat_max=np.array([1.0, 1.2, np.nan]))) == (1, 3)


@pytest.mark.timeout(120)
def test_export_holds_exactly_the_draws_on_disk(sampled):
    import lucijax
    from lucijax.results.samples import sample_parameter_names

    res = sampled["res"]
    names = sample_parameter_names(res.bound)
    linear = [k for k, n in enumerate(names) if n.startswith(("amplitude_", "continuum_"))]
    for x in range(NX):
        for y in range(NY):
            draws, stored = lucijax.read_samples(sampled["samples"], x, y)
            assert stored == names
            raw = lucijax.to_arviz(sampled["samples"], x, y, flux_scale=1).posterior
            auto = lucijax.to_arviz(sampled["samples"], x, y).posterior
            assert list(raw.data_vars) == list(auto.data_vars) == names
            scale = auto.attrs["flux_scale"]
            assert raw.attrs["flux_scale"] == 1.0 and scale == 10.0 ** round(np.log10(scale))
            for k, name in enumerate(names):
                assert raw[name].dims == auto[name].dims == ("chain", "draw")
                np.testing.assert_array_equal(raw[name].values, draws[..., k])
                expected = draws[..., k] / np.float32(scale) if k in linear else draws[..., k]
                np.testing.assert_array_equal(auto[name].values, expected)
            # amplitudes of order 1 (arviz treats draws spanning < 1e-15 as constant)
            assert 1.0 <= np.max(np.abs(draws[..., linear])) / scale < 10.0
            assert (auto.attrs["x"], auto.attrs["y"]) == (x, y)
    assert auto["velocity_0"].attrs["units"] == "km s-1"
    # a region: (chain, draw, pixel), x-major, with the result's diagnostics
    box, _ = lucijax.read_samples(sampled["samples"])
    post = res.to_arviz(region=(0, NX, 0, NY), flux_scale=1).posterior
    assert post["amplitude_Halpha"].dims == ("chain", "draw", "pixel")
    assert post["amplitude_Halpha"].attrs["units"] == "1 " + res.bound.flux_unit
    xs, ys = post["x"].values, post["y"].values
    assert list(zip(xs, ys)) == [(x, y) for x in range(NX) for y in range(NY)]
    for k, name in enumerate(names):
        np.testing.assert_array_equal(post[name].values, np.moveaxis(box[xs, ys][..., k], 0, -1))
    np.testing.assert_array_equal(post.attrs["RHAT_MAX"], res.maps["RHAT_MAX"][ys, xs])
    assert post.attrs["source"] == str(sampled["path"]) and post.attrs["sampler"].startswith("MH(")
    assert list(post.attrs["x_file"]) == list(xs) and post.attrs["region_in_file"] == [0, NX, 0, NY]


@pytest.mark.timeout(120)
def test_arviz_diagnostics_agree_with_the_lucijax_maps(sampled):
    """lucijax's maps: numpyro's split R-hat (max over the parameters) and numpyro's ESS
    (min) of the raw parameters. Compared like with like:

    * numpyro.diagnostics on the exported draws: the maps to float32 rounding (the draws on
      disk are float32 and their linear parameters were rescaled by the noise after the
      diagnostics ran: R-hat and ESS are scale-free, so only rounding remains);
    * arviz ``rhat(method='split')``: the same split Gelman-Rubin formula, to 1e-4;
    * arviz ``ess(method='identity')``: the same autocorrelation estimate, without chain
      splitting or ranks, on the export's amplitudes of order 1 (``flux_scale``); Geyer's
      initial sequence is cut differently (arviz keeps one more even lag after the first
      negative pair and keeps the second pair below the first, numpyro does neither):
      these move the ESS by under 1 % here (0.05 % at most on these pixels), 5 % allowed;
    * arviz's default rank-normalised split R-hat (Vehtari et al. 2021) is another
      estimator (ranks, the max of the bulk and the folded tails): it must only tell the
      same story, within 0.03 of the map on these mixed chains (0.013 at most here).
    """
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    az = _arviz()
    res = sampled["res"]
    rows = []
    for x in range(NX):
        for y in range(NY):
            idata = res.to_arviz(x, y)
            post = idata.posterior
            draws = np.stack([post[n].values for n in post.data_vars], axis=-1).astype(np.float64)
            rhat_map, ess_map = float(res.maps["RHAT_MAX"][y, x]), float(res.maps["ESS_MIN"][y, x])
            assert post.attrs["RHAT_MAX"] == pytest.approx(rhat_map) and post.attrs["ESS_MIN"] == pytest.approx(ess_map)
            np_rhat = float(np.max(split_gelman_rubin(draws)))
            np_ess = float(np.min(effective_sample_size(draws)))
            az_split = float(az.rhat(idata, method="split").to_array().max())
            az_rank = float(az.rhat(idata).to_array().max())
            az_ess = float(az.ess(idata, method="identity").to_array().min())
            rows.append((x, y, rhat_map, np_rhat, az_split, az_rank, ess_map, np_ess, az_ess))
            assert np_rhat == pytest.approx(rhat_map, abs=1e-5)
            assert np_ess == pytest.approx(ess_map, rel=1e-4)
            assert az_split == pytest.approx(rhat_map, abs=1e-4)
            assert az_ess == pytest.approx(ess_map, rel=0.05)
            assert abs(az_rank - rhat_map) < 0.03
    lucijax_vs_arviz = "\n".join("pixel ({}, {}): RHAT_MAX {:.6f} numpyro {:.6f} arviz split {:.6f} rank {:.6f}; "
                                 "ESS_MIN {:.1f} numpyro {:.1f} arviz identity {:.1f}".format(*r) for r in rows)
    print(lucijax_vs_arviz)


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # arviz 0.23's matplotlib backend on matplotlib 3.11
def test_arviz_summary_and_trace_plot_run_on_the_export(sampled):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    az = _arviz()
    idata = sampled["res"].to_arviz(1, 1)
    names = list(idata.posterior.data_vars)
    table = az.summary(idata)
    assert list(table.index) == names and np.all(np.isfinite(table["mean"].values))
    az.plot_trace(idata, var_names=["velocity_0", "broadening_0"])
    out = sampled["tmp"] / "trace.png"
    plt.gcf().savefig(out)
    plt.close("all")
    assert out.stat().st_size > 10_000


@pytest.mark.timeout(120)
def test_export_errors_say_what_to_do(sampled, monkeypatch):
    import lucijax

    res = sampled["res"]
    with pytest.raises(ValueError, match="x, y"):
        res.to_arviz()
    with pytest.raises(ValueError, match="outside"):
        lucijax.to_arviz(sampled["samples"], 5, 0)
    with pytest.raises(ValueError, match="not a non-empty box"):
        lucijax.to_arviz(sampled["samples"], region=(2, 2, 0, 1))
    with pytest.raises(ValueError, match="not both"):
        lucijax.to_arviz(sampled["samples"], 0, 0, region=(0, 1, 0, 1))
    with pytest.raises(ValueError, match="samples="):
        dataclasses.replace(res, samples_path=None).to_arviz(0, 0)
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install arviz"):
        lucijax.to_arviz(sampled["samples"], 0, 0)
