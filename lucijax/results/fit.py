"""Typed results of every mode, and their writers.

* :class:`FitResult` (``lucijax.fit``): per-pixel :class:`~lucijax.solvers.PixelFit` values,
  maps, units, WCS, STATUS, optionally the covariance of every pixel's parameters;
* :class:`PosteriorResult` (``lucijax.sample`` with a sampler): posterior summaries,
  diagnostics maps, the MAP fit it started from, the samples file;
* :class:`SelectionResult` (``lucijax.sample`` with evidence selection).

All share :class:`Result`: ``maps`` (FITS-ordered ``[y, x]``: ``maps[name][y, x]`` belongs
to view pixel ``(x, y)``), ``units``, ``wcs``, ``status``, ``write(dir)`` (``maps.fits``, and
``fit.json`` for a single spectrum; ``covariance.fits`` for a fit with
``MAP(covariance=True)``), ``summary()``, ``model_spectrum(x, y)`` and its parts
``line_spectra(x, y)``. Per-pixel fields (``fields``) are indexed ``[x, y, ...]`` like the cube.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lucijax.constants import QUANTILES
from lucijax.io.covariance import write_covariance_fits
from lucijax.io.maps import write_maps_fits
from lucijax.physics.lines import ratios_in
from lucijax.results.maps import build_maps, line_map_name, spectrum_summary
from lucijax.solvers.fitting import PixelFit
from lucijax.status import Status, counts_line

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What every result has (see the module docstring).

    Attributes
    ----------
    maps : dict of [y, x] arrays
    units : dict
        ``BUNIT`` of each map.
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the maps.
    region : (x0, x1, y0, y1) or None
        Where the maps lie in the cube file (None for binned or Voronoi views).
    bound : BoundModel
        The line model the values belong to.
    fields : dict of [x, y, ...] arrays
        Per-pixel values named as :class:`~lucijax.solvers.PixelFit`'s fields.
    fwhm_cm1 : [x, y] array
        Instrumental FWHM of each pixel (de-redshifted frame).
    computed : [x, y] bool array
        Pixels computed (the others were masked out).
    source : str
    is_single_spectrum : bool
    cards : dict
        Extra cards of the primary FITS header.
    """

    maps: dict
    units: dict
    wcs: Any
    region: tuple | None
    bound: Any = field(repr=False)
    fields: dict = field(repr=False, default_factory=dict)
    fwhm_cm1: np.ndarray | None = field(repr=False, default=None)
    computed: np.ndarray | None = field(repr=False, default=None)
    source: str = ""
    is_single_spectrum: bool = False
    cards: dict = field(default_factory=dict)

    @property
    def status(self) -> np.ndarray:
        """The STATUS map ``[y, x]`` (:class:`~lucijax.status.Status` codes)."""
        return self.maps["STATUS"]

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the maps."""
        return tuple(self.status.shape)

    def status_line(self) -> str:
        """One line: how many pixels have each STATUS."""
        return counts_line(self.status)

    def summary(self, x: int = 0, y: int = 0) -> dict:
        """JSON-ready result of map pixel ``(x, y)`` (the spectrum, for a single spectrum)."""
        return spectrum_summary(self.maps, self.bound, y, x)

    def _parameters(self, x: int, y: int):
        """(theta, alpha, fwhm) of map pixel ``(x, y)`` as float32 JAX arrays."""
        import jax.numpy as jnp

        f = self.fields
        theta = f["velocity_kms"][x, y]
        if self.bound.spec.has_broadening:
            theta = np.concatenate([theta, f["broadening_kms"][x, y]])
        return (jnp.asarray(theta, jnp.float32), jnp.asarray(f["linear"][x, y], jnp.float32),
                jnp.float32(self.fwhm_cm1[x, y]))

    def model_spectrum(self, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        """(observed axis cm^-1, fitted model) of map pixel ``[y, x]`` on the fit window
        (its parts, line by line: :meth:`line_spectra`)."""
        model = self.bound.line_model.spectrum(*self._parameters(x, y))
        return self.bound.axis_obs_cm1, np.asarray(model)

    def line_spectra(self, x: int, y: int, by: str = "line") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The fitted model of map pixel ``[y, x]`` in parts that sum to :meth:`model_spectrum`.

        Parameters
        ----------
        x, y : int
            Map pixel.
        by : {'line', 'component'}
            'line': one part per line of the model (``bound.line_set.names``: tied lines
            apart); 'component': one part per kinematic component of a
            :class:`~lucijax.solvers.Components` fit (the sum of its lines ``*_C1``,
            ``*_C2``..., parts ``'C1'``, ``'C2'``...).

        Returns
        -------
        axis : (n,) array
            Observed axis (cm^-1) of the fit window.
        parts : dict of (n,) arrays
            Name -> model spectrum in the cube's flux unit, ``'continuum'`` and, with
            ``Model(background=...)``, ``'background'``. A line's part summed over the channels times the observed channel width is its flux in the
            observed frame (``fields['flux_cm1'] / (1 + z)``; the ``{LINE}_FLUX`` map for a
            cube in counts).
        """
        import re

        if by not in ("line", "component"):
            raise ValueError(f"by must be 'line' or 'component', got {by!r}")
        lm = self.bound.line_model
        theta, alpha, fwhm = self._parameters(x, y)
        lines = np.asarray(lm.line_profiles(theta, fwhm) * lm.line_amplitudes(theta, alpha, fwhm)[None, :])
        continuum = np.asarray(lm.continuum_spectrum(alpha))
        names = self.bound.line_set.names
        parts: dict[str, np.ndarray] = {}
        if by == "line":
            parts = {name: lines[:, i] for i, name in enumerate(names)}
        else:
            comp = [re.search(r"_(C\d+)$", name) for name in names]
            if not all(comp):
                raise ValueError("by='component' needs the lines of a Components fit (named LINE_C1, LINE_C2, ...)")
            for i, m in enumerate(comp):
                key = m.group(1)
                parts[key] = parts[key] + lines[:, i] if key in parts else lines[:, i].copy()
        parts["continuum"] = continuum
        if self.bound.spec.n_background:  # Model(background=...): the fitted background
            parts["background"] = np.asarray(lm.background_spectrum(alpha))
        return self.bound.axis_obs_cm1, parts

    def header_cards(self) -> dict:
        spec = self.bound.spec
        extra = {
            "ORIGIN": "lucijax",
            "INPUT": Path(str(self.source)).name[:60],
            "MODEL": spec.shape,
            "LINES": " ".join(spec.line_set.names)[:68],
            "REDSHIFT": self.bound.redshift,
        }
        if self.region is not None:
            extra["REGION"] = "{}:{},{}:{}".format(*self.region)
        if self.bound.noise_window is not None:
            extra["NOISEWIN"] = "{:.1f}:{:.1f}".format(*self.bound.noise_window)
        extra.update(self.cards)
        return extra

    def write(self, out_dir) -> Path:
        """Write ``out_dir/maps.fits`` (and ``out_dir/fit.json`` for a single spectrum)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_maps_fits(out_dir / "maps.fits", self.maps, self.units, wcs2d=self.wcs, region=None,
                        header_extra=self.header_cards())
        if self.is_single_spectrum:
            with open(out_dir / "fit.json", "w") as fh:
                json.dump(self.summary(), fh, indent=2)
        return out_dir


@dataclass
class FitResult(Result):
    """A MAP, frozen or multi-component fit (:func:`lucijax.fit`).

    Attributes
    ----------
    network : (mean, sigma, kind) or None
        The posterior ``[x, y, 2]`` ([velocity, broadening]) of the network that started
        the fit (kind 'mdn' or 'cnn').
    covariance : [x, y, D, D] float64 array or None
        Covariance of all parameters (velocities, broadenings, linear parameters in the
        cube's flux unit; order :meth:`parameter_names`) with ``MAP(covariance=True)``.
    noise_from_window : [x, y] bool array or None
        Pixels whose noise comes from the model's noise window.
    solver : the solver object
    start : str
        How the fits started ('mdn', 'cnn', 'matched', 'frozen').
    seconds : float
    n_resumed : int
        Pixels taken from a checkpoint instead of computed in this run.
    """

    network: tuple | None = field(repr=False, default=None)
    covariance: np.ndarray | None = field(repr=False, default=None)
    noise_from_window: np.ndarray | None = field(repr=False, default=None)
    solver: Any = None
    start: str = ""
    seconds: float = 0.0
    n_resumed: int = 0
    #: where the run's wall time went (:func:`lucijax.engine.core.run_blocks_pipelined`; None on a cluster)
    timing: dict | None = field(repr=False, default=None)

    @property
    def pixels(self) -> PixelFit:
        """The per-pixel fit, ``[x, y, ...]`` arrays."""
        return PixelFit(**{k: self.fields[k] for k in PixelFit._fields})

    def parameter_names(self) -> list[str]:
        """Names of the parameters along the covariance's axes."""
        spec = self.bound.spec
        ls = spec.line_set
        names = [f"velocity_{g}" for g in range(spec.n_groups)]
        names += [f"broadening_{b}" for b in range(spec.n_broadening)]
        amp = [f"amplitude_{ls.names[i]}" for i in ls.primary_lines]
        prim = list(ls.primary_lines)
        for d, p, lo, hi in ls.ratio_ranges:  # the cone's coefficients: the doublet at its two extreme ratios
            amp[prim.index(p)] = f"amplitude_{ls.names[p]}_at_ratio_{lo:g}"
            amp[prim.index(d)] = f"amplitude_{ls.names[p]}_at_ratio_{hi:g}"
        names += amp
        names += [f"continuum_{k}" for k in range(spec.n_continuum)]
        names += [f"background_{k}" for k in range(spec.n_background)]
        return names

    def parameter_units(self) -> list[str]:
        """Units of the parameters along the covariance's axes (velocities and broadenings
        in km/s, line amplitudes and continuum coefficients in the cube's flux unit)."""
        spec = self.bound.spec
        return ["km/s"] * spec.n_nonlinear + [self.bound.flux_unit] * spec.n_linear

    def write(self, out_dir) -> Path:
        """Write ``out_dir/maps.fits`` (``fit.json`` for a single spectrum) and, with
        ``MAP(covariance=True)``, ``out_dir/covariance.fits``: every pixel's covariance in
        the order of :meth:`parameter_names` (read it with :func:`lucijax.read_covariance`;
        layout in :mod:`lucijax.io.covariance`)."""
        out_dir = super().write(out_dir)
        if self.covariance is not None:
            write_covariance_fits(out_dir / "covariance.fits", self.covariance, self.parameter_names(),
                                  self.parameter_units(), wcs2d=self.wcs, header_extra=self.header_cards())
        return out_dir

    def map_values(self) -> dict:
        """The per-pixel MAP values a sampler starts from (``[x, y, ...]`` arrays)."""
        return dict(self.fields)


def fit_result(pixel_map, program, cube) -> FitResult:
    """The :class:`FitResult` of an engine run of a fit program over ``cube``."""
    out = pixel_map.values
    bound = program.meta["bound"]
    fields = {k: np.asarray(v) for k, v in out.fit._asdict().items()}
    fwhm = np.asarray(out.fwhm_cm1)
    start = program.meta.get("start", "")
    network = None
    if start in ("mdn", "cnn"):
        network = (np.asarray(out.network_mean), np.asarray(out.network_sigma), start)
    maps, units = build_maps(fields, bound, fwhm, network)
    window = np.asarray(out.noise_from_window, bool)
    if bound.noise_window is not None:
        kept = int(np.sum(np.isfinite(fields["noise"]) & ~window & pixel_map.computed))
        if kept:
            log.warning("%d pixel(s) have fewer than 10 usable channels in the noise window %.1f-%.1f cm-1: "
                        "their noise comes from the fit's residuals", kept, *bound.noise_window)
    cards = {}
    if getattr(out, "count", None) is not None:  # one or two components chosen per pixel
        count = out.count
        n = np.where(pixel_map.computed, np.asarray(count.n_components), 0)
        maps["N_COMPONENTS"] = np.ascontiguousarray(n.T.astype(np.int16))
        maps["DELTA_CHI2"] = np.ascontiguousarray(np.asarray(count.delta_chi2, np.float32).T)
        maps["DELTA_BIC"] = np.ascontiguousarray(np.asarray(count.delta_bic, np.float32).T)
        units.update(N_COMPONENTS="", DELTA_CHI2="", DELTA_BIC="")
        cards = {"SELECT": "BIC", "BICTHR": float(program.meta["solver"].bic_threshold)}
    second = getattr(out, "second", None)
    if second is not None:  # the global-optimum check: the best other velocity of each group
        ls = bound.line_set
        for g in range(bound.spec.n_groups):
            name = line_map_name(ls.names[ls.groups.index(g)])
            maps[f"{name}_ALT_VELOCITY"] = np.ascontiguousarray(np.asarray(second.velocity_kms, np.float32)[..., g].T)
            maps[f"{name}_ALT_DCHI2"] = np.ascontiguousarray(np.asarray(second.delta_chi2, np.float32)[..., g].T)
            units[f"{name}_ALT_VELOCITY"], units[f"{name}_ALT_DCHI2"] = "km/s", ""
    return FitResult(
        maps=maps, units=units, wcs=cube.header.wcs, region=view_region(cube), bound=bound, fields=fields,
        fwhm_cm1=fwhm, computed=pixel_map.computed, source=str(getattr(cube, "path", "")), cards=cards,
        is_single_spectrum=bool(getattr(cube, "is_single_spectrum", False)), network=network,
        covariance=None if out.covariance is None else np.asarray(out.covariance), noise_from_window=window,
        solver=program.meta.get("solver"), start=start, seconds=pixel_map.seconds, n_resumed=pixel_map.n_resumed,
        timing=pixel_map.meta.get("timing"))


def view_region(cube) -> tuple | None:
    """``(x0, x1, y0, y1)`` of a view in its file (None when its pixels are bins)."""
    origin = getattr(cube, "origin", (0, 0))
    if origin is None:
        return None
    nx, ny = int(cube.shape[0]), int(cube.shape[1])
    return (int(origin[0]), int(origin[0]) + nx, int(origin[1]), int(origin[1]) + ny)


# ------------------------------------------------------------------------ posteriors
#: Diagnostic maps of a posterior: field -> (map name, unit).
POSTERIOR_MAPS = {"rhat_max": "RHAT_MAX", "ess_min": "ESS_MIN", "accept_rate": "ACCEPT_RATE",
                  "n_divergent": "N_DIVERGENT"}


@dataclass
class PosteriorResult(Result):
    """Posterior summaries of every pixel (:func:`lucijax.sample`): maps of posterior
    medians, ``*_ERR`` = half the 16-84 % widths, ``RHAT_MAX``, ``ESS_MIN``,
    ``ACCEPT_RATE``, ``N_DIVERGENT`` (and ``LOGZ``, ``LOGZ_ERR`` for nested and importance sampling);
    NOISE, SNR and FWHM are the MAP fit's; STATUS is the MAP fit's, or 6 (NOT_MIXED) where
    R-hat exceeds the sampler's threshold.

    Attributes
    ----------
    posterior : Posterior of [x, y, ...] arrays
    fit : FitResult
        The MAP fit the posterior started from.
    sampler : the sampler object
    samples_path : Path or None
        HDF5 file of every pixel's draws (:class:`~lucijax.results.samples.SampleStore`).
    """

    posterior: Any = field(repr=False, default=None)
    fit: FitResult | None = field(repr=False, default=None)
    sampler: Any = None
    samples_path: Path | None = None
    seconds: float = 0.0
    n_resumed: int = 0
    #: where the run's wall time went (:func:`lucijax.engine.core.run_blocks_pipelined`; None on a cluster)
    timing: dict | None = field(repr=False, default=None)

    def converged_fraction(self, threshold: float = 1.05) -> float:
        """Share of computed pixels with R-hat <= ``threshold``."""
        r = np.asarray(self.posterior.rhat_max)[self.computed]
        return float(np.mean(r <= threshold)) if r.size else float("nan")

    def to_arviz(self, x: int | None = None, y: int | None = None, *, region=None, flux_scale="auto"):
        """The draws of pixel ``(x, y)`` (view coordinates, ``maps[name][y, x]``), or of the
        pixels of ``region=(x0, x1, y0, y1)``, as arviz data for arviz's diagnostics and
        plots (:func:`lucijax.results.inference_data.to_arviz`; needs arviz).

        The ``posterior`` group holds every sampled parameter (dims ``(chain, draw)``, or
        ``(chain, draw, pixel)`` for a region); its attributes add this result's per-pixel
        diagnostics (``RHAT_MAX``, ``ESS_MIN``, ``ACCEPT_RATE``, ``N_DIVERGENT``) and cube.
        Without ``x, y`` and ``region``, a single spectrum's one pixel. Amplitudes and
        continuum coefficients are in the cube's flux unit divided by ``flux_scale``
        (default: a power of ten that makes them of order 1, which arviz's ESS needs).

        Raises
        ------
        ValueError
            When the draws were not kept (sample with ``samples='draws.h5'``).
        """
        from lucijax.results.inference_data import to_arviz

        if self.samples_path is None:
            raise ValueError("this posterior kept no draws: sample with lucijax.sample(..., samples='draws.h5') "
                             "(--bayes-samples on the command line)")
        if x is None and y is None and region is None:
            if self.computed.size != 1:
                raise ValueError(f"give a pixel (x, y) or region=(x0, x1, y0, y1) of the {self.computed.shape[0]} x "
                                 f"{self.computed.shape[1]} view")
            x, y = 0, 0
        diagnostics = {name: np.asarray(getattr(self.posterior, key)) for key, name in POSTERIOR_MAPS.items()}
        attrs = {"source": self.source} if self.source else {}
        return to_arviz(self.samples_path, x, y, region=region, flux_scale=flux_scale, flux_unit=self.bound.flux_unit,
                        attrs=attrs, pixel_attrs=diagnostics)


def _merged_fields(fit: FitResult, post) -> dict:
    fields = dict(fit.fields)
    for k in ("velocity_kms", "velocity_err_kms", "broadening_kms", "broadening_err_kms", "amplitude", "amplitude_err",
              "flux_cm1", "flux_err_cm1", "flux_corr", "continuum", "continuum_err", "linear", "chi2_reduced", "status"):
        fields[k] = np.asarray(getattr(post, k))
    # the MAP fit's flux limits hold for its own lines only (not a two-component posterior's)
    null = fields.get("flux_null_err_cm1")
    if null is not None and np.shape(null)[-1] != fields["flux_cm1"].shape[-1]:
        del fields["flux_null_err_cm1"]
    return fields


def posterior_result(pixel_map, program, cube, fit: FitResult, samples_path=None) -> PosteriorResult:
    """The :class:`PosteriorResult` of an engine run of a posterior program."""
    post = pixel_map.values
    bound = program.meta["bound"]
    fields = _merged_fields(fit, post)
    maps, units = build_maps(fields, bound, fit.fwhm_cm1, fit.network)
    for key, name in POSTERIOR_MAPS.items():
        v = np.asarray(getattr(post, key))
        maps[name] = np.ascontiguousarray(v.T.astype(np.int32 if key == "n_divergent" else np.float32))
        units[name] = ""
    ratio_q = np.asarray(post.ratio_quantiles, np.float32)
    for k, (name, _, _) in enumerate(ratios_in(bound.line_set.names)):  # quantiles of each ratio's draws
        for j, pct in enumerate(QUANTILES):
            maps[f"{name}_Q{pct}"] = np.ascontiguousarray(ratio_q[..., k, j].T)
            units[f"{name}_Q{pct}"] = ""
    if getattr(program.meta.get("sampler"), "name", "") in ("nested", "importance"):
        maps["LOGZ"] = np.ascontiguousarray(np.asarray(post.logz, np.float32).T)
        maps["LOGZ_ERR"] = np.ascontiguousarray(np.asarray(post.logz_err, np.float32).T)
        units["LOGZ"] = units["LOGZ_ERR"] = ""
    cards = {"SAMPLER": program.meta["sampler"].name, "PRIOR": program.meta["sampler"].prior.kind,
             "PRIORSRC": program.meta.get("prior_source", "")}
    return PosteriorResult(
        maps=maps, units=units, wcs=fit.wcs, region=fit.region, bound=bound, fields=fields, fwhm_cm1=fit.fwhm_cm1,
        computed=pixel_map.computed, source=fit.source, is_single_spectrum=fit.is_single_spectrum, cards=cards,
        posterior=post, fit=fit, sampler=program.meta["sampler"], samples_path=samples_path, seconds=pixel_map.seconds,
        n_resumed=pixel_map.n_resumed, timing=pixel_map.meta.get("timing"))


@dataclass
class SelectionResult(Result):
    """One or two components per pixel by evidence (:func:`lucijax.sample` with
    :class:`~lucijax.bayes.EvidenceSelection`): ``N_COMPONENTS``, ``LOGZ_1COMP``,
    ``LOGZ_2COMP`` (and their ``LOGZ_ERR_*``), ``DELTA_LOGZ``; the line maps hold the one-component posterior where
    N = 1 and the two-component one where N = 2 (first component under the line's own name,
    second as ``{LINE}_2_...``, NaN where N = 1).
    """

    selection: Any = field(repr=False, default=None)
    fit: FitResult | None = field(repr=False, default=None)
    seconds: float = 0.0
    n_resumed: int = 0
    #: where the run's wall time went (:func:`lucijax.engine.core.run_blocks_pipelined`; None on a cluster)
    timing: dict | None = field(repr=False, default=None)


def selection_result(pixel_map, program, cube, fit: FitResult) -> SelectionResult:
    """The :class:`SelectionResult` of an engine run of an evidence-selection program."""
    sel = pixel_map.values
    bound = program.meta["bound"]
    fields = _merged_fields(fit, sel.one)
    maps, units = build_maps(fields, bound, fit.fwhm_cm1, fit.network)
    for key, name in (("rhat_max", "RHAT_MAX"), ("ess_min", "ESS_MIN")):
        maps[name] = np.ascontiguousarray(np.asarray(getattr(sel.one, key), np.float32).T)
        units[name] = ""
    maps["LOGZ"] = np.ascontiguousarray(np.asarray(sel.one.logz, np.float32).T)
    maps["LOGZ_ERR"] = np.ascontiguousarray(np.asarray(sel.one.logz_err, np.float32).T)
    n = np.asarray(sel.n_components)
    n = np.where(pixel_map.computed, n, int(Status.MASKED))
    maps["N_COMPONENTS"] = np.ascontiguousarray(n.T.astype(np.int16))
    maps["LOGZ_1COMP"] = maps["LOGZ"]
    maps["LOGZ_ERR_1COMP"] = maps["LOGZ_ERR"]
    maps["LOGZ_2COMP"] = np.ascontiguousarray(np.asarray(sel.two.logz, np.float32).T)
    maps["LOGZ_ERR_2COMP"] = np.ascontiguousarray(np.asarray(sel.two.logz_err, np.float32).T)
    maps["DELTA_LOGZ"] = np.ascontiguousarray(np.asarray(sel.delta_logz, np.float32).T)
    for name in ("LOGZ", "LOGZ_ERR", "N_COMPONENTS", "LOGZ_1COMP", "LOGZ_2COMP", "LOGZ_ERR_1COMP", "LOGZ_ERR_2COMP",
                 "DELTA_LOGZ"):
        units[name] = ""
    # the two-component posterior where it wins
    two_bound = program.meta["bound_two"]
    fields2 = _merged_fields(fit, sel.two)
    maps2, units2 = build_maps(fields2, two_bound, fit.fwhm_cm1)
    use2 = maps["N_COMPONENTS"] == 2
    for name, m in maps2.items():
        if name in ("CONTINUUM", "CHI2", "SNR", "NOISE", "FWHM", "STATUS"):
            continue
        if name in maps:
            maps[name] = np.where(use2, m, maps[name])
        else:
            maps[name] = np.where(use2, m, np.nan if m.dtype.kind == "f" else -1).astype(m.dtype)
            units[name] = units2[name]
    return SelectionResult(
        maps=maps, units=units, wcs=fit.wcs, region=fit.region, bound=bound, fields=fields, fwhm_cm1=fit.fwhm_cm1,
        computed=pixel_map.computed, source=fit.source, is_single_spectrum=fit.is_single_spectrum,
        cards={"SAMPLER": "nested", "SELECT": "evidence"}, selection=sel, fit=fit, seconds=pixel_map.seconds,
        n_resumed=pixel_map.n_resumed, timing=pixel_map.meta.get("timing"))


def line_maps_of(result: Result, line: str) -> dict:
    """The maps of one line (``{LINE}_{QUANTITY}`` -> array)."""
    key = line_map_name(line) + "_"
    return {k[len(key):]: v for k, v in result.maps.items() if k.startswith(key)}


__all__ = ["Result", "FitResult", "PosteriorResult", "SelectionResult", "fit_result", "posterior_result",
           "selection_result", "view_region", "line_maps_of", "POSTERIOR_MAPS"]
