"""The Python API: open a cube, fit it, sample its posteriors, write the results.

::

    import lucijax as lj

    lj.set_cpu_devices()                       # one XLA device per core (before any computation)
    model = lj.Model(["Halpha", "NII6583", "NII6548"], profile="sincgauss")
    fit = lj.fit("cube.hdf5", model, lj.MAP(), region=(100, 164, 200, 264))
    post = lj.sample("cube.hdf5", fit, lj.MH(num_samples=500))
    post.maps["HALPHA_VELOCITY"], post.maps["RHAT_MAX"]
    post.write("out/")                         # out/maps.fits

A cube is a path (opened and closed here), an open cube (:func:`open_cube`) or a view of
one (:mod:`lucijax.views`). ``region`` and ``mask`` are shortcuts for
:func:`lucijax.views.region` and :func:`lucijax.views.mask`. Every mode runs through the
engine (:func:`lucijax.engine.map_pixels`), so every mode streams the cube by blocks, uses
every device and resumes from ``Execution(checkpoint=...)``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from lucijax.bayes import MH, EvidenceSelection, posterior_program
from lucijax.description import Model
from lucijax.engine import Execution, map_pixels
from lucijax.engine.core import forget
from lucijax.io import open_cube as _open_cube
from lucijax.io.views import Cutout, Masked
from lucijax.results.fit import FitResult, PosteriorResult, SelectionResult, fit_result, posterior_result, selection_result
from lucijax.results.regions import RegionTable, region_table
from lucijax.results.samples import SampleStore, sample_parameter_names
from lucijax.solvers import MAP
from lucijax.tools.heliocentric import apply_velocity_correction, heliocentric_correction_kms
from lucijax.views import integrate_regions, select


log = logging.getLogger(__name__)


def open_cube(path):
    """Open a SITELLE cube or extracted spectrum (ORB HDF5 levels 1-3, FITS): streaming reads,
    never the whole cube (``cube.read_spectra(x0, x1, y0, y1)`` -> ``[x, y, channel]``)."""
    return _open_cube(path)


@contextlib.contextmanager
def _opened(cube):
    if hasattr(cube, "read_spectra"):
        yield cube
        return
    c = _open_cube(cube)
    try:
        yield c
    finally:
        c.close()


def fit(cube, model: Model, solver=None, *, region=None, mask=None, execution: Execution | None = None) -> FitResult:
    """Fit every pixel of a cube (or of a view of one).

    Parameters
    ----------
    cube : path, open cube or view
    model : Model
        What to fit (lines, profile, ties, continuum, window, redshift, noise).
    solver : MAP, Frozen or Components
        How (default ``MAP()``: network start, bounded Levenberg-Marquardt, Laplace errors).
    region : (x0, x1, y0, y1) or 'x0:x1,y0:y1', optional
        Pixel box (0-based, end excluded); default the whole cube.
    mask : bool [y, x] array, .reg, .fits or 'x0:x1,y0:y1', optional
        Fit only these pixels (the others are NaN with STATUS -1); without ``region`` the
        maps cover the mask's bounding box.
    execution : Execution
        Batch and block sizes, devices, checkpoint folder, progress bar.

    Returns
    -------
    FitResult
    """
    solver = solver if solver is not None else MAP()
    with _opened(cube) as c:
        view = select(c, region, mask)
        bound = model.bind(view.header)
        program = solver.program(bound, view)
        return fit_result(map_pixels(view, program, execution), program, view)


def fit_regions(cube, regions, model: Model, solver=None, *, combine: str = "sum", background=None, region=None,
                mask=None, execution: Execution | None = None) -> RegionTable:
    """Fit the integrated spectrum of each region of a ds9 file: one table row per region.

    The spectra of all the regions are read in one pass over the cube and fitted in one run
    (one compilation), as the ``(n_regions, 1)`` cube of
    :func:`lucijax.views.integrate_regions`.

    Parameters
    ----------
    cube : path, open cube or view
    regions : path, ds9 text, regions.Regions or list of regions
        Every included region with an area (circle, box, ellipse, polygon, ...) is
        integrated on its own; overlapping regions each count the pixels they share;
        excluded (``-``) regions take their pixels out of all of them. Pixel or sky
        coordinates (sky ones need the cube's WCS).
    model : Model
    solver : MAP, Frozen or Components
        Default ``MAP()``.
    combine : {'sum', 'mean'}
        Sum (fluxes are the regions' totals) or mean of the pixels of each region.
    background : array (n_channels,), optional
        Per-pixel background spectrum (:func:`lucijax.views.background_spectrum`),
        subtracted ``n`` times from the sum of a region's ``n`` pixels (once from a mean).
    region : (x0, x1, y0, y1) or 'x0:x1,y0:y1', optional
        Integrate only the regions' pixels inside this box.
    mask : bool [y, x] array, .reg, .fits or 'x0:x1,y0:y1', optional
        Integrate only the regions' pixels inside this mask.
    execution : Execution

    Returns
    -------
    RegionTable
        ``.table`` (astropy Table: index, label, centre, pixel count, every map quantity,
        STATUS and its message, with units), ``.fit`` (the FitResult, region ``k`` at
        map pixel ``(k, 0)``), ``.spectra``; ``.write(dir)`` writes ``regions.ecsv`` and
        ``regions.fits``. A region that covers no pixel of the cube is not fitted: it
        keeps its row, NaN, with STATUS 1 (invalid input), and a warning says so.
    """
    with _opened(cube) as c:
        view = integrate_regions(c, regions, region=region, mask=mask, combine=combine, background=background)
        result = fit(view, model, solver, execution=execution)
        meta = {"REGIONS": str(regions) if isinstance(regions, (str, Path)) and Path(str(regions)).exists() else "",
                "BKGSUB": background is not None}
        return region_table(result, view, meta)


def _fitted_view(cube, fit: FitResult):
    """The view of ``cube`` that ``fit`` covers, with its masked pixels left out."""
    nx, ny = fit.computed.shape
    if tuple(cube.shape[:2]) == (nx, ny):
        view = cube
    elif fit.region is not None and getattr(cube, "origin", None) == (0, 0):
        view = Cutout(cube, fit.region)
    else:
        raise ValueError(f"the fit covers {nx} x {ny} pixels; give the cube or view it was fitted on "
                         f"(this one has {cube.shape[0]} x {cube.shape[1]})")
    if not fit.computed.all():
        view = Masked(view, fit.computed.T)
    return view


def sample(cube, fit: FitResult, sampler=None, *, execution: Execution | None = None, samples=None):
    """Sample the posterior of every pixel a MAP fit computed.

    Parameters
    ----------
    cube : path, open cube or view
        What ``fit`` was fitted on (the same view, or the cube it was cut from).
    fit : FitResult
        A one-component MAP fit (its values start the chains and set the boxes of the
        priors; its network's posterior is the informed prior and the MH proposal).
    sampler : MH, NUTS, Ensemble, Nested or EvidenceSelection
        Default ``MH()`` (the network as proposal: the fastest for whole cubes).
    execution : Execution
    samples : path, optional
        Write every pixel's draws to this HDF5 file (:mod:`lucijax.results.samples`).

    Returns
    -------
    PosteriorResult, or SelectionResult for :class:`~lucijax.bayes.EvidenceSelection`
    """
    sampler = sampler if sampler is not None else MH()
    if not isinstance(fit.solver, MAP):
        raise ValueError(f"posteriors start from a one-component MAP fit, not from a {type(fit.solver).__name__} fit")
    if fit.bound.line_set.absorption:
        raise ValueError("posteriors of fits with absorption lines are not supported yet: use the MAP fit's errors")
    ex = execution or Execution()
    with _opened(cube) as c:
        view = _fitted_view(c, fit)
        values = fit.map_values()
        if isinstance(sampler, EvidenceSelection):
            program = sampler.program(fit.bound, values, keep_samples=samples is not None)
            return selection_result(map_pixels(view, program, ex), program, view, fit)
        network = fit.network[:2] if fit.network is not None and fit.network[2] == "mdn" else None
        program = posterior_program(sampler, fit.bound, values, network, keep_samples=samples is not None)
        store = None
        if samples is not None:
            attrs = {"sampler": repr(sampler), "region": np.asarray(fit.region if fit.region is not None else (-1,) * 4),
                     "source": fit.source}
            store = SampleStore(samples, view.shape[:2], sample_parameter_names(fit.bound), ex.block_size, attrs)
        try:
            pm = map_pixels(view, program, ex, sink=store)
            pm, n_retried = _retry_unmixed(view, fit, sampler, values, network, ex, pm, store, program)
        except BaseException:
            if store is not None:
                store.close(keep=False)
            raise
        if store is not None:
            store.close()
        result = posterior_result(pm, program, view, fit, samples_path=None if samples is None else Path(samples))
        if int(getattr(sampler, "retry", 0)) > 1:
            result.cards["NRETRY"] = n_retried
        return result


def _retry_unmixed(view, fit, sampler, values, network, ex: Execution, pm, store, first):
    """Sample the pixels that did not mix (split R-hat above the sampler's threshold; STATUS 6
    where the MAP fit was good) again with the sampler's
    :meth:`~lucijax.bayes.Sampler.longer` chains (``sampler.retry`` x the draws, thinned
    back), through the engine over a mask of those pixels (their own checkpoint folder
    ``CHECKPOINT/retry``; their draws replace the first run's in ``store``), and keep that
    run's results for them. Returns the merged pixel map and the number of pixels retried."""
    import dataclasses
    import types

    import jax

    factor = int(getattr(sampler, "retry", 0))
    rhat = np.asarray(pm.values.rhat_max, np.float64)
    with np.errstate(invalid="ignore"):  # every pixel above the threshold, whatever its MAP status
        redo = np.asarray(pm.computed, bool) & (rhat > float(sampler.rhat_threshold))
    if factor <= 1 or not redo.any():
        return pm, 0
    share = redo.sum() / max(int(np.sum(pm.computed)), 1)
    if share > float(sampler.retry_max_share):
        log.warning("R-hat above %g in %.0f%% of the pixels: no second run (at most %.0f%%); the chains are too short "
                    "for these posteriors: sample with more draws", sampler.rhat_threshold, 100 * share,
                    100 * float(sampler.retry_max_share))
        return pm, 0
    forget(first)  # the first run's executables: never held beside the longer run's (peak memory)
    program = posterior_program(sampler.longer(factor), fit.bound, values, network, keep_samples=store is not None)
    ckpt = None if ex.checkpoint is None else str(Path(ex.checkpoint) / "retry")
    sink = None if store is None else types.SimpleNamespace(write=store.rewrite)  # replaces those pixels' draws only
    again = map_pixels(Masked(view, redo.T), program, dataclasses.replace(ex, checkpoint=ckpt), sink=sink)

    def merge(first, second):
        first, second = np.asarray(first), np.asarray(second)
        return np.where(redo.reshape(redo.shape + (1,) * (first.ndim - 2)), second, first).astype(first.dtype)

    values = jax.tree.map(merge, pm.values, again.values)
    meta = dict(pm.meta, retried=int(redo.sum()), retry_seconds=again.seconds)
    if "timing" in pm.meta and "timing" in again.meta:  # both runs' time, where it went
        meta["timing"] = {k: v + again.meta["timing"].get(k, 0.0) for k, v in pm.meta["timing"].items()}
    return dataclasses.replace(pm, values=values, seconds=pm.seconds + again.seconds, meta=meta), int(redo.sum())


def heliocentric(result, cube):
    """``result`` with its velocities corrected to the heliocentric frame (astropy, CFHT,
    the observation date and target of ``cube``'s header)."""
    with _opened(cube) as c:
        return apply_velocity_correction(result, heliocentric_correction_kms(c.header))


__all__ = ["open_cube", "fit", "fit_regions", "sample", "heliocentric", "FitResult", "PosteriorResult", "SelectionResult",
           "RegionTable"]
