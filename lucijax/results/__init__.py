"""Typed results and their writers: :class:`FitResult`, :class:`PosteriorResult`,
:class:`SelectionResult` (maps, units, WCS, STATUS, per-pixel values, covariance), FITS maps,
``fit.json``, samples on disk (:mod:`.samples`) and their export to arviz
(:mod:`.inference_data`), model cubes (:mod:`.model_cube`), Voronoi results back on pixels
(:mod:`.unbin`), one table row per region (:mod:`.regions`)."""

from lucijax.results.fit import FitResult, PosteriorResult, Result, SelectionResult
from lucijax.results.inference_data import to_arviz
from lucijax.results.regions import RegionTable, region_table
from lucijax.results.samples import SampleStore, read_samples
from lucijax.results.unbin import unbin

__all__ = ["Result", "FitResult", "PosteriorResult", "SelectionResult", "SampleStore", "read_samples", "to_arviz",
           "unbin", "RegionTable", "region_table"]
