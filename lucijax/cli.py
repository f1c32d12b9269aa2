"""Command line: ``lucijax fit``, ``lucijax survey``, ``lucijax skycal``, ``lucijax demo``, ``lucijax plot``.

Thin: it translates options into the objects of the Python API (:class:`~lucijax.Model`,
a solver, a sampler, views, :class:`~lucijax.Execution`), whose defaults it shows but never
copies (an option left out is not passed on), calls :func:`lucijax.fit` /
:func:`lucijax.sample`, and reports. Every error a user can cause ends in one line on
stderr and exit status 2 (``-v`` shows the traceback).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

#: Options whose value may start with '-' (a negative range such as -300:300).
_RANGE_OPTIONS = ("--velocity-range", "--broadening-range", "--window", "--noise-window", "--region")


def _range(text: str, what: str):
    from lucijax.description import parse_range

    return parse_range(text, what)


def int_or_auto(text: str):
    """``--components``: a count, or 'auto' (chosen per pixel)."""
    return "auto" if text.strip().lower() == "auto" else int(text)


def _given(**kwargs) -> dict:
    """The options the user gave (None: left to the object's default)."""
    return {k: v for k, v in kwargs.items() if v is not None}


# ------------------------------------------------------------------------ options -> objects
def build_model(args):
    from lucijax.description import Model

    groups = tuple(args.groups) if args.groups else None
    broadening_groups = tuple(args.broadening_groups) if getattr(args, "broadening_groups", None) else None
    return Model(**_given(
        lines=tuple(args.lines) if args.lines else (),
        profile=args.model, groups=groups, broadening_groups=broadening_groups,
        tie_nii=False if args.no_nii_tie else None,
        tie_oiii=True if args.oiii_tie else None, sky_lines=args.sky_lines, continuum_order=args.continuum_order,
        continuum_spline=args.continuum_spline, window=_range(args.window, "window") if args.window else None,
        redshift=args.redshift, flambda_weights=False if args.uniform_weights else None,
        noise_window=_range(args.noise_window, "noise window") if args.noise_window else None,
        velocity_range=_range(args.velocity_range, "velocity range") if args.velocity_range else None,
        broadening_range=_range(args.broadening_range, "broadening range") if args.broadening_range else None,
        absorption=tuple(args.absorption) if args.absorption else None,
        ratio_ranges=_ratio_ranges(args),
        absorption_broadening_range=(_range(args.absorption_broadening_range, "absorption broadening range")
                                     if args.absorption_broadening_range else None)))


def _ratio_ranges(args):
    """``--ratio-range DEP/PRIM=LO:HI`` (repeatable) and ``--free-ratios`` -> ``Model.ratio_ranges``
    (None: the model's default)."""
    given = getattr(args, "ratio_range", None) or []
    if getattr(args, "free_ratios", False):
        if given:
            raise ValueError("--ratio-range and --free-ratios exclude each other")
        return {}
    if not given:
        return None
    out = {}
    for text in given:
        if "=" not in text:
            raise ValueError(f"cannot read --ratio-range '{text}': expected DEP/PRIM=LO:HI, e.g. OII3729/OII3726=0.35:1.5")
        key, rng = text.split("=", 1)
        out[key] = rng
    return out


def _ambiguity(args) -> dict:
    """The global-optimum check's option of ``MAP`` (``--ambiguity-chi2``, ``--no-ambiguity-check``)."""
    if args.no_ambiguity_check and args.ambiguity_chi2 is not None:
        raise ValueError("--ambiguity-chi2 and --no-ambiguity-check exclude each other")
    if args.no_ambiguity_check:
        return {"ambiguity_chi2": None}
    return _given(ambiguity_chi2=args.ambiguity_chi2)


def build_solver(args):
    from lucijax.solvers import MAP, Components, Frozen

    cov = {"covariance": True} if args.covariance else {}
    if args.covariance:
        for flag, given in (("--freeze", args.freeze), ("--components", (args.components or 1) > 1),
                            ("--bayes", args.bayes)):
            if given:
                raise ValueError(f"--covariance writes the covariance of a one-component MAP fit: leave out {flag}")
    if args.start_maps:
        for flag, given in (("--freeze", args.freeze), ("--no-mdn", args.no_mdn), ("--cnn", args.cnn),
                            ("--components", (args.components or 1) > 1)):
            if given:
                raise ValueError(f"--start-maps and {flag} exclude each other")
        return MAP(**_given(start="maps", start_maps=args.start_maps, max_iter=args.iterations), **_ambiguity(args),
                   **cov)
    if args.freeze and (args.components or 1) > 1:
        raise ValueError("--freeze and --components exclude each other")
    if args.freeze:
        return Frozen(args.freeze)
    if args.no_mdn and args.cnn:
        raise ValueError("--no-mdn and --cnn exclude each other")
    start = "matched" if args.no_mdn else ("cnn" if args.cnn else None)
    if args.bic_threshold is not None and not args.select_components:
        raise ValueError("--bic-threshold chooses between one and two components: use it with --components auto")
    if (args.components or 1) > 1:
        base = MAP(**_given(start=start or "matched", max_iter=args.iterations))
        return Components(**_given(n_components=args.components, min_separation_kms=args.min_separation,
                                   bic_threshold=args.bic_threshold), base=base, select=args.select_components)
    if args.components is not None and args.components < 1:
        raise ValueError(f"--components must be >= 1, got {args.components}")
    return MAP(**_given(start=start, max_iter=args.iterations), **_ambiguity(args), **cov)


def build_sampler(args):
    """The sampler of ``--bayes`` (None without it)."""
    if not args.bayes:
        for flag in ("bayes_samples", "bayes_prior", "bayes_num_samples", "bayes_num_warmup", "bayes_chains"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --bayes")
        if args.bayes_components:
            raise ValueError("--bayes-components needs --bayes importance (or nested)")
        return None
    from lucijax.bayes import SAMPLERS, EvidenceSelection, Prior

    if args.freeze or (args.components or 1) > 1:
        raise ValueError("--bayes samples one-component fits: leave out --freeze and --components "
                         "(--bayes importance --bayes-components chooses between one and two components)")
    cls = SAMPLERS[args.bayes]
    opts = _given(num_samples=args.bayes_num_samples)
    if args.bayes_prior is not None:
        opts["prior"] = Prior(kind=args.bayes_prior)
    if args.bayes_num_warmup is not None:
        if args.bayes == "nested":
            raise ValueError("--bayes-num-warmup: nested sampling has no warm-up")
        opts["num_warmup"] = args.bayes_num_warmup
    if args.bayes_chains is not None:
        if args.bayes == "ensemble":
            opts["walkers"] = args.bayes_chains
        elif args.bayes in ("nested", "importance"):
            raise ValueError(f"--bayes-chains: {args.bayes} sampling runs no chains")
        else:
            opts["num_chains"] = args.bayes_chains
    sampler = cls(**opts)
    if args.bayes_components:
        if args.bayes not in ("importance", "nested"):
            raise ValueError("--bayes-components chooses by evidence: use it with --bayes importance (or nested)")
        if args.bayes_samples:
            raise ValueError("--bayes-samples: evidence selection keeps no samples")
        return EvidenceSelection(estimator=sampler)
    return sampler


def build_execution(args, folder: str | None):
    from lucijax.engine import Execution

    return Execution(**_given(batch_size=args.batch_size, block_size=args.block_size,
                              scheduler=getattr(args, "client", None)), checkpoint=folder, progress=not args.quiet)


def check_cluster_options(args) -> None:
    """``--scheduler`` and ``--cluster`` (and its sizes) are consistent (before any work)."""
    from lucijax.engine.cluster import parse_scheduler

    if args.scheduler and args.cluster:
        raise ValueError("--scheduler and --cluster exclude each other (a jobqueue cluster has its own scheduler)")
    if args.scheduler:
        parse_scheduler(args.scheduler)
    sizes = [f for f, v in (("--cluster-jobs", args.cluster_jobs), ("--cluster-cores", args.cluster_cores),
                            ("--cluster-memory", args.cluster_memory), ("--cluster-walltime", args.cluster_walltime),
                            ("--cluster-processes", args.cluster_processes), ("--cluster-queue", args.cluster_queue))
             if v is not None]
    if sizes and not args.cluster:
        raise ValueError(f"{sizes[0]} sizes the jobs of --cluster slurm|pbs: give --cluster")
    for flag, v in (("--cluster-jobs", args.cluster_jobs), ("--cluster-cores", args.cluster_cores),
                    ("--cluster-processes", args.cluster_processes)):
        if v is not None and v < 1:
            raise ValueError(f"{flag} must be >= 1, got {v}")


def build_jobqueue(args):
    """The ``dask-jobqueue`` cluster of ``--cluster`` (not started: jobs are submitted by
    ``scale``)."""
    from lucijax.engine.cluster import jobqueue_cluster

    return jobqueue_cluster(args.cluster, **_given(cores=args.cluster_cores, memory=args.cluster_memory,
                                                   walltime=args.cluster_walltime, processes=args.cluster_processes,
                                                   queue=args.cluster_queue))


@contextlib.contextmanager
def cluster_client(args):
    """The Dask client of ``--scheduler`` / ``--cluster`` for the whole command (None
    without either), in ``args.client``; the cluster it started is closed at the end."""
    if not args.scheduler and not args.cluster:
        args.client = None
        yield None
        return
    from lucijax.engine.cluster import connect

    if not args.verbose:  # Dask logs every worker start and stop at INFO
        for name in ("distributed", "dask_jobqueue"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if args.cluster:
        jobs = build_jobqueue(args)
        jobs.scale(jobs=args.cluster_jobs or 1)
        with jobs, connect(jobs) as client:
            args.client = client
            yield client
    else:
        with connect(args.scheduler) as client:
            args.client = client
            yield client


class Prepared:
    """The view to fit, and what the steps after the fit need (``regions``: the view is the
    integrated spectra of ``--regions``)."""

    def __init__(self, cube, view, notes, voronoi=None, regions: bool = False):
        self.cube, self.view, self.notes, self.voronoi, self.regions = cube, view, notes, voronoi, regions


#: Options that need pixel maps, which ``--regions`` does not make.
_NOT_WITH_REGIONS = (("freeze", "--freeze"), ("start_maps", "--start-maps"), ("model_cube", "--model-cube"),
                     ("snr_map", "--snr-map"), ("velocity_correction", "--velocity-correction"),
                     ("covariance", "--covariance"), ("narrowband", "--narrowband"))


def check_view_options(args) -> None:
    """The view options exclude each other as they must (before the cube is read)."""
    modes = [flag for flag, given in (("--bin", args.bin), ("--voronoi-snr", args.voronoi_snr),
                                      ("--integrated", args.integrated), ("--regions", args.regions)) if given]
    if len(modes) > 1:
        raise ValueError(f"choose one of --bin, --voronoi-snr, --integrated and --regions (got {' and '.join(modes)})")
    if args.background_pca and args.background_region:
        raise ValueError("give --background-region (one subtracted spectrum) or --background-pca (a background "
                         "fitted in every pixel), not both")
    if args.background_pca and not 1 <= args.background_components <= 20:
        raise ValueError(f"--background-components must be between 1 and 20, got {args.background_components}")
    if args.bin is not None and args.bin < 1:
        raise ValueError(f"--bin must be >= 1, got {args.bin}")
    if args.regions:
        if not Path(args.regions).is_file():
            raise FileNotFoundError(f"{args.regions}: no such ds9 region file (--regions)")
        for name, flag in _NOT_WITH_REGIONS:
            if getattr(args, name):
                raise ValueError(f"--regions fits one integrated spectrum per region (a table, no pixel maps): "
                                 f"leave out {flag}")


def build_view(args, cube) -> Prepared:
    """The cube view of the options (region, mask, background, bin, Voronoi, integrated)."""
    from lucijax import views

    check_view_options(args)
    notes = []
    background = None
    if args.background_region:
        background = views.background_spectrum(cube, args.background_region, args.background_statistic)
        notes.append(f"background: {args.background_statistic} spectrum of region {args.background_region}")
    if args.bin:
        view = views.bin(cube, int(args.bin), region=args.region, mask=args.mask, combine=args.combine,
                         background=background)
        notes.append(f"binned {args.bin}x{args.bin} ({args.combine}): {view.shape[0]} x {view.shape[1]} bins")
        return Prepared(cube, view, notes)
    if args.voronoi_snr:
        view = views.voronoi(cube, float(args.voronoi_snr), region=args.region, mask=args.mask, combine=args.combine,
                             background=background, redshift=args.redshift or 0.0)
        notes.append(f"Voronoi: {view.binning.n_bins} bins of target S/N {args.voronoi_snr}")
        return Prepared(cube, view, notes, voronoi=view.binning)
    if args.integrated:
        view = views.integrate(cube, args.mask, region=args.region, combine=args.integrated, background=background)
        notes.append(f"integrated ({args.integrated}) spectrum of {view.n_pixels} pixels")
        return Prepared(cube, view, notes)
    if args.regions:
        view = views.integrate_regions(cube, args.regions, region=args.region, mask=args.mask, combine=args.combine,
                                       background=background)
        n = len(view.regions)
        notes.append(f"integrated ({args.combine}) spectra of the {n} region(s) of {args.regions}: "
                     f"{int((view.n_pixels > 0).sum())} cover pixels of the cube")
        return Prepared(cube, view, notes, regions=True)
    view = views.select(cube, args.region, args.mask)
    if background is not None:
        view = views.subtract_background(view, background)
    return Prepared(cube, view, notes)


# ------------------------------------------------------------------------ commands
def _print_summary(result, elapsed: float, what: str = "fitted"):
    import numpy as np

    from lucijax.status import help_text

    maps = result.maps
    status = maps["STATUS"]
    n = int(np.sum(status != -1))
    first = result.bound.line_set.names[0].upper()
    ok = status == 0
    print(f"{what} {n} spectra in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.1f} spectra/s, compilation included)")
    t = getattr(result, "timing", None)
    if t and result.seconds > 0:
        share = {k: 100.0 * v / result.seconds for k, v in t.items()}
        print(f"time of the engine ({result.seconds:.1f} s): waiting for reads {share['read_wait_s']:.0f} %, "
              f"preparing {share['prepare_s']:.0f} %, compiling {share['compile_s']:.0f} %, "
              f"starting batches {share['dispatch_s']:.0f} %, waiting for the devices {share['device_wait_s']:.0f} %, "
              f"placing results {share['write_s']:.0f} %")
    print(f"status counts {result.status_line()}")
    print(f"({help_text()})")
    if ok.any():
        v = maps[f"{first}_VELOCITY"][ok]
        ve = maps[f"{first}_VELOCITY_ERR"][ok]
        chi2 = maps["CHI2"][ok]
        print(f"{first} velocity: median {np.nanmedian(v):.2f} km/s, median error {np.nanmedian(ve):.2f} km/s; "
              f"median reduced chi2 {np.nanmedian(chi2):.3f}")
    if "N_COMPONENTS" in maps:
        count = maps["N_COMPONENTS"][status != -1]
        how = "BIC" if "DELTA_BIC" in maps else "evidence"
        print(f"components ({how}): two in {int(np.sum(count == 2))}, one in {int(np.sum(count == 1))} "
              f"of {count.size} spectra")
    if "RHAT_MAX" in maps:
        r = maps["RHAT_MAX"][status != -1]
        share = np.mean(r <= 1.05) if np.isfinite(r).any() else float("nan")
        again = result.cards.get("NRETRY", 0)
        again = f" ({again} sampled again with longer chains)" if again else ""
        print(f"posterior: R-hat <= 1.05 for {share:.1%} of the pixels{again}; "
              f"median ESS {np.nanmedian(maps['ESS_MIN']):.0f}")


def writable_folder(path, option: str) -> Path:
    """``path`` as a folder this process can write to (created if missing), checked before
    any work starts: a fit is never computed and then lost for want of a place to write it."""
    import tempfile

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{option} {folder} is not writable ({err.strerror or err})") from None
    return folder


#: API argument -> command-line option, for the messages of option checks.
_FLAGS = {"max_iter": "--iterations", "batch_size": "--batch-size", "block_size": "--block-size",
          "num_samples": "--bayes-num-samples", "num_warmup": "--bayes-num-warmup", "num_chains": "--bayes-chains",
          "walkers": "--bayes-chains", "redshift": "--redshift", "continuum_order": "--continuum-order",
          "continuum_spline": "--continuum-spline", "n_components": "--components",
          "min_separation_kms": "--min-separation", "velocity_range": "--velocity-range",
          "broadening_range": "--broadening-range", "noise_window": "--noise-window"}


def flag_names(message: str) -> str:
    """``message`` with the API argument names it mentions replaced by their options."""
    return re.sub(r"\b(" + "|".join(_FLAGS) + r")\b", lambda m: _FLAGS[m.group(1)], message)


def cmd_fit(args) -> int:
    t0 = time.time()
    try:  # every option is checked before the cube is read, and named as on the command line
        model = build_model(args)
        solver = build_solver(args)
        sampler = build_sampler(args)
        build_execution(args, None)
        check_view_options(args)
        check_cluster_options(args)
        if args.narrowband is not None:
            if not args.narrowband > 0:
                raise ValueError(f"--narrowband takes a half-width > 0 km/s, got {args.narrowband:g}")
            if args.voronoi_snr:
                raise ValueError("--narrowband sums the fitted pixels: not with --voronoi-snr")
    except ValueError as err:
        raise ValueError(flag_names(str(err))) from None
    created = not Path(args.out).exists()
    out = writable_folder(args.out, "--out")
    if args.bayes_samples:
        writable_folder(Path(args.bayes_samples).resolve().parent, "--bayes-samples")
    try:
        with cluster_client(args):
            return _fit_into(args, out, model, solver, sampler, t0)
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {".lucijax.lock"}:
            shutil.rmtree(out, ignore_errors=True)  # nothing of this run to keep
        raise


def _fit_into(args, out: Path, model, solver, sampler, t0: float) -> int:
    import lucijax
    from lucijax.engine.checkpoint import folder_lock
    from lucijax.io import open_cube
    from lucijax.io.header import prefetch_wcs

    ckpt = None if args.no_checkpoint else out / "checkpoint"
    execution = build_execution(args, None if ckpt is None else str(ckpt / "fit"))
    # one run at a time per output folder (released even after kill -9)
    with folder_lock(out, ".lucijax.lock") or contextlib.nullcontext(), open_cube(args.input) as cube:
        prefetch_wcs(cube.header)  # while the fit loads its executable
        prep = build_view(args, cube)
        if args.background_pca:
            bkg = lucijax.views.background_pca(cube, args.background_pca, args.background_components)
            model = dataclasses.replace(model, background=bkg)
            prep.notes.append(f"background: {bkg.source}, fitted in every pixel")
        result = lucijax.fit(prep.view, model, solver, execution=execution)
        if sampler is not None:
            from lucijax.engine.core import forget

            forget()  # the fit's executables: the sampler's replace them (peak memory)
            ex = build_execution(args, None if ckpt is None else str(ckpt / "sample"))
            result = lucijax.sample(prep.view, result, sampler, execution=ex, samples=args.bayes_samples)
        if prep.voronoi is not None:
            result = lucijax.views.unbin(result, prep.voronoi)
        if args.heliocentric:
            result = lucijax.heliocentric(result, cube)
            prep.notes.append(f"heliocentric correction {result.velocity_correction_kms:+.3f} km/s applied to the velocities")
        if args.velocity_correction:
            from lucijax.tools.skycal import correct_result_from_file

            result = correct_result_from_file(result, args.velocity_correction)
            prep.notes.append(f"velocities corrected by {args.velocity_correction}")
        elapsed = time.time() - t0
        if prep.regions:
            for note in prep.notes:
                print(note)
            _write_regions(args, result, prep, out, elapsed, "sampled" if sampler is not None else "fitted")
        else:
            written = result.write(out)
            for note in prep.notes:
                print(note)
            if getattr(result, "covariance", None) is not None and (out / "covariance.fits").exists():
                print(f"wrote {out / 'covariance.fits'}")
            for path in _write_extras(args, result, prep, out):
                print(f"wrote {path}")
    if ckpt is not None and not args.keep_checkpoint:
        shutil.rmtree(ckpt, ignore_errors=True)
    if prep.regions:
        return 0
    if result.is_single_spectrum:
        summary = result.summary()
        print(json.dumps({k: summary[k] for k in ("velocity", "velocity_err", "broadening", "broadening_err", "chi2", "status")}))
        for name, vals in summary["lines"].items():
            print(f"  {name:>14s}: flux {vals['flux']:.4g} +- {vals['flux_err']:.2g} {summary['flux_unit']}"
                  if vals["flux"] is not None else f"  {name:>14s}: NaN")
        print(f"wrote {written / 'maps.fits'} and {written / 'fit.json'}")
    else:
        _print_summary(result, elapsed, "sampled" if sampler is not None else "fitted")
        print(f"wrote {written / 'maps.fits'}")
    if args.plot:
        from lucijax.plots import plot_maps

        first = result.bound.line_set.names[0].upper()
        names = [f"{first}_FLUX", f"{first}_VELOCITY", f"{first}_BROADENING", f"{first}_VELOCITY_ERR", "CHI2", "STATUS"]
        plot_maps(result.maps, names, result.wcs, result.units, path=out / "maps.png")
        print(f"wrote {out / 'maps.png'}")
    return 0


def _write_regions(args, result, prep, out: Path, elapsed: float, what: str = "fitted") -> None:
    """``OUT/regions.ecsv`` and ``OUT/regions.fits`` (and with ``--plot`` one PNG per region
    in ``OUT/regions/``) of a ``--regions`` fit, and a line per region on stdout."""
    import numpy as np

    from lucijax.results.regions import region_table
    from lucijax.status import help_text

    table = region_table(result, prep.view, {"REGIONS": str(args.regions), "BKGSUB": bool(args.background_region)})
    t = table.table
    first = result.bound.line_set.names[0].upper()
    flux_unit = t[f"{first}_FLUX"].unit
    print(f"{what} {int(np.sum(t['N_PIXELS'] > 0))} region spectra in {elapsed:.1f} s (compilation included); "
          f"status counts {table.status_line()}")
    print(f"({help_text()})")
    print(f"{'index':>5s} {'label':>12s} {'pixels':>7s} {first + ' velocity (km/s)':>26s} "
          f"{first + f' flux ({flux_unit})':>32s} status")
    for row in t:
        label = str(row["LABEL"] or "")[:12]
        print(f"{row['INDEX']:5d} {label:>12s} {row['N_PIXELS']:7d} {row[f'{first}_VELOCITY']:12.2f} +- "
              f"{row[f'{first}_VELOCITY_ERR']:<9.2f} {row[f'{first}_FLUX']:15.4g} +- {row[f'{first}_FLUX_ERR']:<12.2g} "
              f"{row['STATUS']:d}")
    for path in table.write(out):
        print(f"wrote {path}")
    if args.plot:
        from lucijax.plots import plot_region_fits

        paths = plot_region_fits(table, out / "regions")
        print(f"wrote {len(paths)} plots to {out / 'regions'}")


def _write_extras(args, result, prep, out: Path) -> list[Path]:
    """``OUT/model.fits`` and ``OUT/residual.fits`` (``--model-cube``), ``OUT/snr.fits`` and
    ``OUT/deep.fits`` (``--snr-map``), ``OUT/narrowband.fits`` (``--narrowband``) of the
    fitted region."""
    written: list[Path] = []
    if args.narrowband is not None:
        from lucijax.engine import Execution
        from lucijax.tools.narrowband import narrowband

        nb = narrowband(prep.view, result, width_kms=args.narrowband, execution=Execution(progress=not args.quiet))
        written.append(Path(nb.write(out / "narrowband.fits")))
    if args.model_cube:
        from lucijax.engine import Execution
        from lucijax.results.model_cube import write_model_cube

        ex = Execution(progress=not args.quiet)
        if prep.voronoi is not None:  # each pixel carries its bin's model: no per-pixel residual
            written += write_model_cube(result, out / "model.fits", execution=ex)
        else:
            written += write_model_cube(result, out / "model.fits", cube=prep.view, residual_path=out / "residual.fits",
                                        execution=ex)
    if args.snr_map:
        from astropy.io import fits

        from lucijax.tools.snr import deep_image, signal_noise_maps

        box = result.region
        if box is None:  # binned: the box of the cube the bins cover
            box = getattr(prep.view, "box", None)
        sn = signal_noise_maps(prep.cube, box, redshift=result.bound.redshift, progress=not args.quiet)
        sn.write(out / "snr.fits")
        deep = deep_image(prep.cube, sn.region, progress=not args.quiet)
        hdr = sn.wcs.to_header() if sn.wcs is not None else None
        fits.writeto(out / "deep.fits", deep.astype("float32"), hdr, overwrite=True)
        written += [out / "snr.fits", out / "deep.fits"]
    return written


def cmd_survey(args) -> int:
    """``lucijax survey MANIFEST``: every cube x line set of a manifest, resumable."""
    import math

    from lucijax.survey import SUMMARY, read_manifest, run_survey

    check_cluster_options(args)
    entries, settings = read_manifest(args.manifest)
    out = Path(args.out) if args.out else settings.get("out") or Path(args.manifest).with_name(
        Path(args.manifest).stem + "_out")
    writable_folder(out, "--out")
    n_failed = [0]

    def report(row):
        if row["STATE"] != "done":
            n_failed[0] += 1
            print(f"{row['NAME']}: {row['STATE']}")
        elif args.quiet:
            return
        else:
            rate = row["SPECTRA_PER_S"]
            rate = "resumed" if math.isnan(rate) else f"{rate:.1f} spectra/s"
            print(f"{row['NAME']}: {row['N_PIXELS']} pixels ({row['N_RESUMED']} from the checkpoint), {rate}, "
                  f"{row['N_STATUS_0']} converged, median reduced chi2 {row['MEDIAN_CHI2']:.3f}")

    with cluster_client(args) as client:
        run_survey(entries, out, scheduler=client, progress=not args.quiet, keep_checkpoint=args.keep_checkpoint,
                   on_entry=report)
    print(f"wrote {out / SUMMARY} ({len(entries)} entries, {n_failed[0]} failed)")
    return 1 if n_failed[0] else 0


def cmd_demo(args) -> int:
    from lucijax.demo import run_demo

    return run_demo(Path(args.out), size=args.size, progress=not args.quiet)


def cmd_plot(args) -> int:
    from lucijax.io import read_map_units, read_map_wcs, read_maps_fits
    from lucijax.plots import plot_maps

    maps = read_maps_fits(args.maps)
    if not maps:
        raise ValueError(f"{args.maps} holds no map (not a lucijax maps.fits?)")
    names = args.names or [n for n in maps if n.endswith(("_FLUX", "_VELOCITY"))][:4] + [n for n in ("CHI2", "STATUS") if n in maps]
    missing = [n for n in names if n not in maps]
    if missing:
        raise ValueError(f"{args.maps} has no map {', '.join(missing)}")
    out = Path(args.output or Path(args.maps).with_suffix(".png"))
    plot_maps(maps, names, read_map_wcs(args.maps, names[0]), read_map_units(args.maps), path=out)
    print(f"wrote {out}")
    return 0


def cmd_skycal(args) -> int:
    import numpy as np

    import lucijax
    from lucijax.engine import Execution
    from lucijax.io.masks import parse_region, read_mask
    from lucijax.tools.skycal import calibrate_sky, write_sky_bins, write_velocity_correction

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with lucijax.open_cube(args.input) as cube:
        sky_mask = None
        if args.sky_mask:
            nx, ny, _ = cube.shape
            sky_mask = read_mask(args.sky_mask, (ny, nx), cube.header.wcs)
        corr, sky = calibrate_sky(cube, args.sky_lines, bin_size=args.bin, order=args.order, sky_mask=sky_mask,
                                  region=parse_region(args.region) if args.region else None, clip_sigma=args.clip,
                                  model=args.model, execution=Execution(progress=not args.quiet))
        path = write_velocity_correction(out / "velocity_correction.fits", corr, wcs=cube.header.wcs, sky=sky)
    write_sky_bins(out / "sky_bins.txt", sky, corr)
    cmap = corr.map()
    print(f"{sky.x.size} sky bins, {int(corr.used.sum())} kept; median bin velocity {float(np.median(sky.velocity_kms)):.2f} km/s; "
          f"surface rms {corr.rms_kms:.2f} km/s; correction {np.nanmin(cmap):.2f} .. {np.nanmax(cmap):.2f} km/s")
    print(f"wrote {path} and {out / 'sky_bins.txt'}")
    return 0


def cmd_physics(args) -> int:
    from lucijax.nebular import physics_maps

    for path in [args.maps] + [p for p in (args.sn2, args.sn1) if p]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file (give a maps.fits written by lucijax fit)")
    result = physics_maps(args.maps, args.sn2, args.sn1, temperature=args.temperature, case_b_density=args.case_b_density,
                          law=args.law, r_v=args.rv, min_snr=args.min_snr, resample_draws=args.draws,
                          bpt_draws=args.draws * 4, seed=args.seed)
    out = result.write(args.out, plot=not args.no_plot)
    made = [n for n in ("NII_HA", "SII_HA", "SII_RATIO", "OIII_HB", "OIII_OII", "BPT_CLASS", "DENSITY", "OH_N2",
                        "OH_O3N2", "EBV")
            if n in result.maps]
    print(f"{len(result.maps)} maps ({', '.join(made)}); wrote {out}" + ("" if args.no_plot else f" and {out.with_suffix('.png')}"))
    return 0


def cmd_view(args) -> int:
    from lucijax.viewer import serve

    for path, what in ((args.maps, "maps.fits written by lucijax fit"), (args.cube, "the cube of the fit"),
                       (args.samples, "--bayes-samples file")):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file (give the {what})")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: give 0..65535 (0: a free port)")
    window = _range(args.window, "window") if args.window else None
    serve(args.maps, args.cube, port=args.port, browser=not args.no_browser, samples=args.samples,
          initial=args.map, window=window)
    return 0


# ------------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    from lucijax import __version__
    from lucijax.bayes import MH, NUTS, Importance, Prior
    from lucijax.description import Model
    from lucijax.engine import Execution
    from lucijax.solvers import MAP, Components
    from lucijax.tools.narrowband import DEFAULT_WIDTH_KMS

    m, s, ex, c = Model(lines=("Halpha",)), MAP(), Execution(), Components()
    p = argparse.ArgumentParser(prog="lucijax", description="Fit emission lines in every pixel of a SITELLE cube (JAX).")
    p.add_argument("--version", action="version", version=f"lucijax {__version__}")
    p.add_argument("--verbose", "-v", action="store_true", help="log more, and show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a cube (ORB HDF5 levels 1-3, FITS) or an extracted spectrum",
                       description="Fit every pixel of a cube. Ranges take a negative first value as "
                                   "--velocity-range=-300:300 or --velocity-range -300:300.")
    f.add_argument("input", help="cube or spectrum file")
    g = f.add_argument_group("lines and model")
    g.add_argument("--lines", nargs="+", help="line names (Halpha NII6583 NII6548 SII6716 SII6731 ...) or NAME=air_nm")
    g.add_argument("--sky-lines", help="ORB sky line list: fit every line of it in the band with one velocity "
                   "(first kinematic group); --lines then adds emission lines with their own velocity")
    g.add_argument("--model", choices=["sincgauss", "sinc", "gaussian"], help=f"line profile (default {m.profile})")
    g.add_argument("--groups", nargs="+", type=int, help="kinematic group of each line (default: all share one)")
    g.add_argument("--broadening-groups", nargs="+", type=int,
                   help="broadening group of each line, apart from the velocity groups (e.g. --groups 0 0 0 "
                        "--broadening-groups 0 1 1: Halpha and [NII] share a velocity, not a broadening; "
                        "default: one broadening per --groups group)")
    g.add_argument("--no-nii-tie", action="store_true", help="free the [NII]6583/6548 flux ratio (default: 3)")
    g.add_argument("--oiii-tie", action="store_true", help="fix [OIII]5007/4959 = 3 in flux")
    g.add_argument("--ratio-range", action="append", metavar="DEP/PRIM=LO:HI",
                   help="keep a flux ratio of two lines of one group in a range (repeatable; default: "
                        "OII3729/OII3726=0.3466:1.4992, its low- and high-density limits at 10^4 K from PyNeb)")
    g.add_argument("--free-ratios", action="store_true", help="no ratio ranges: every line ratio free (before issue 20)")
    g.add_argument("--continuum-order", type=int, help=f"degree of the continuum polynomial (default {m.continuum_order})")
    g.add_argument("--continuum-spline", type=int, metavar="N",
                   help="fit the continuum with a cubic B-spline of N equal intervals over the window instead "
                        "(for continua with structure, e.g. starlight under sky lines; SN3: 16 gives ~53 cm-1)")
    g.add_argument("--redshift", type=float, help=f"the axis is de-redshifted; velocities are residuals (default {m.redshift})")
    g.add_argument("--window", metavar="SMIN:SMAX", help="fit window in cm-1 (default: the filter band)")
    g.add_argument("--velocity-range", metavar="VMIN:VMAX",
                   help="velocities searched and bounds, km/s (default {:g}:{:g})".format(*m.velocity_range))
    g.add_argument("--broadening-range", metavar="BMIN:BMAX",
                   help="broadening bounds, km/s (default {:g}:{:g})".format(*m.broadening_range))
    g.add_argument("--absorption", nargs="+", metavar="LINE",
                   help="also fit these lines in absorption (e.g. Halpha: stellar Balmer absorption under the "
                        "emission), in one kinematic group of their own, amplitudes <= 0: maps {LINE}_ABS_FLUX, ...")
    g.add_argument("--absorption-broadening-range", metavar="BMIN:BMAX",
                   help="broadening bounds of the absorption lines, km/s (default {:g}:{:g})".format(
                       *m.absorption_broadening_range))

    r = f.add_argument_group("region and views")
    r.add_argument("--region", metavar="X0:X1,Y0:Y1", help="pixel box (0-based, end excluded; default the whole cube)")
    r.add_argument("--mask", help="fit only these pixels: ds9 region file (.reg), mask image (.fits) or x0:x1,y0:y1")
    r.add_argument("--bin", type=int, help="bin N x N pixels before fitting (maps on the binned grid and WCS)")
    r.add_argument("--voronoi-snr", type=float, help="Voronoi bins reaching this line S/N; maps back on pixels")
    r.add_argument("--integrated", nargs="?", const="sum", choices=["sum", "mean"],
                   help="fit the integrated (summed, or mean) spectrum of --mask or --region")
    r.add_argument("--regions", metavar="FILE.reg",
                   help="fit the integrated spectrum of each region of this ds9 file (all in one run; overlapping "
                        "regions each count their pixels; '-' regions are taken out of all; --region and --mask "
                        "restrict the pixels): one row per region in OUT/regions.ecsv and OUT/regions.fits, no "
                        "maps.fits; with --plot, each region's spectrum and fit in OUT/regions/INDEX_LABEL.png")
    r.add_argument("--combine", default="sum", choices=["sum", "mean"],
                   help="how --bin / --voronoi-snr / --regions combine pixels")
    r.add_argument("--background-region", help="subtract the background spectrum of this region (.reg, .fits, x0:x1,y0:y1)")
    r.add_argument("--background-statistic", default="median", choices=["median", "mean"])
    r.add_argument("--background-pca", metavar="REGION",
                   help="fit a background in every pixel: the mean and principal components of this sky region's "
                        "spectra (.reg, .fits, x0:x1,y0:y1), with free coefficients per pixel (a sky that varies "
                        "across the field); instead of --background-region")
    r.add_argument("--background-components", type=int, default=4, metavar="K",
                   help="background spectra of --background-pca, the mean included (default 4)")

    n = f.add_argument_group("noise")
    n.add_argument("--noise-window", metavar="SMIN:SMAX",
                   help="measure each pixel's noise over this line-free window in cm-1, e.g. outside the filter "
                        "band where an FTS spectrum holds only noise (default: the fit's line-free residuals)")
    n.add_argument("--uniform-weights", action="store_true",
                   help="weight every channel alike (default for flux-calibrated data with a per-channel "
                        "flambda: 1 / flambda, the noise of calibrated FTS spectra)")

    so = f.add_argument_group("start and solver")
    so.add_argument("--no-mdn", action="store_true",
                    help="start from a matched filter over the velocity range (default: the filter's mixture density "
                         "network: its mean starts the fit, mean +- 3 sigma bound it)")
    so.add_argument("--cnn", action="store_true", help="start from the point-estimate network (no bounds from it)")
    so.add_argument("--ambiguity-chi2", type=float,
                    help="global-optimum check: STATUS 8 (AMBIGUOUS) where another velocity of the matched filter's "
                         "grid, more than one FWHM away, fits within this chi2 of the fitted one or better (maps "
                         f"{{LINE}}_ALT_VELOCITY, _ALT_DCHI2; default {s.ambiguity_chi2:g})")
    so.add_argument("--no-ambiguity-check", action="store_true", help="leave out the global-optimum check")
    so.add_argument("--iterations", type=int,
                    help=f"most Levenberg-Marquardt iterations (default {s.max_iter}; 0: the start only, STATUS 2)")
    so.add_argument("--components", type=int_or_auto,
                    help="kinematic components per line (ordered in velocity; maps {LINE}_C1_..., {LINE}_C2_...); "
                         "auto: one or two per pixel, chosen by the BIC of both MAP fits (maps N_COMPONENTS, "
                         "DELTA_BIC; the _C2 maps NaN where one is chosen)")
    so.add_argument("--bic-threshold", type=float,
                    help="with --components auto: two components where the BIC difference exceeds this (default "
                         f"{c.bic_threshold:g})")
    so.add_argument("--min-separation", type=float,
                    help=f"smallest velocity step between components, km/s (default {c.min_separation_kms:g})")
    so.add_argument("--freeze", metavar="MAPS.fits",
                    help="take velocities and broadenings from these maps; fit only amplitudes and continuum")
    so.add_argument("--start-maps", metavar="MAPS.fits",
                    help="start from the velocities and broadenings of these maps (an earlier run's, another filter's; "
                         f"another pointing's are resampled) and bound the fit to +- max(3 sigma, "
                         f"{s.maps_halfwidth_kms:g} km/s) around them")

    b = f.add_argument_group("posterior (after the MAP fit)")
    b.add_argument("--bayes", choices=["mh", "nuts", "ensemble", "importance", "nested"],
                   help="sample every pixel's posterior: maps of medians, *_ERR = half 16-84%% width, RHAT_MAX, "
                   "ESS_MIN, ACCEPT_RATE, N_DIVERGENT (LOGZ for importance and nested); 'mh' = broad priors with the "
                   "network as proposal, 'importance' = importance sampling from the same proposal")
    b.add_argument("--bayes-samples", metavar="FILE.h5", help="write every pixel's draws to this HDF5 file")
    b.add_argument("--bayes-prior", choices=["informed", "broad"],
                   help=f"velocity/broadening prior: network (or MAP) mean +- {Prior().width_sigma:g} sigma, or the "
                        f"model's ranges (default: {MH().prior.kind} for mh and importance, {NUTS().prior.kind} otherwise)")
    b.add_argument("--bayes-num-samples", type=int, help=f"draws per chain (default {NUTS().num_samples}; importance: "
                   f"draws per pixel, default {Importance().num_samples})")
    b.add_argument("--bayes-num-warmup", type=int, help=f"warm-up steps per chain (default {NUTS().num_warmup}; MH and "
                   "importance: adaptation draws per pixel)")
    b.add_argument("--bayes-chains", type=int,
                   help=f"chains per pixel (default {NUTS().num_chains}; ensemble: walkers, default 32)")
    b.add_argument("--bayes-components", action="store_true",
                   help="with --bayes importance (fast) or nested: fit 1 and 2 components, choose by evidence "
                   "(N_COMPONENTS map)")

    e = f.add_argument_group("execution and output")
    e.add_argument("--out", default="lucijax_out", help="output folder (maps.fits, fit.json; default lucijax_out)")
    e.add_argument("--batch-size", type=int, help="spectra per compiled batch (default on CPU: 64; 4096 on a GPU)")
    e.add_argument("--block-size", type=int,
                   help=f"pixels are read and checkpointed in BLOCK x BLOCK slabs (default {ex.block_size})")
    e.add_argument("--no-checkpoint", action="store_true",
                   help="do not keep finished blocks in OUT/checkpoint (by default a rerun after a crash resumes)")
    e.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/checkpoint after success")
    e.add_argument("--plot", action="store_true",
                   help="also write maps.png (with --regions: OUT/regions/INDEX_LABEL.png, one per region)")
    e.add_argument("--covariance", action="store_true",
                   help="also write OUT/covariance.fits: every pixel's covariance of all parameters (velocities, "
                        "broadenings, amplitudes, continuum; lucijax.read_covariance reads it)")
    e.add_argument("--model-cube", action="store_true", help="also write OUT/model.fits and OUT/residual.fits")
    e.add_argument("--snr-map", action="store_true", help="also write OUT/snr.fits and OUT/deep.fits")
    e.add_argument("--narrowband", type=float, nargs="?", const=DEFAULT_WIDTH_KMS, metavar="KMS",
                   help="also write OUT/narrowband.fits: each line's narrow-band image, the cube summed over "
                        f"+- KMS (default {DEFAULT_WIDTH_KMS:g}) km/s around the line at each pixel's fitted "
                        "velocity, minus the fitted continuum")
    e.add_argument("--heliocentric", action="store_true", help="correct velocities to the heliocentric frame")
    e.add_argument("--velocity-correction", metavar="CORR.fits",
                   help="subtract this sky velocity-correction map (lucijax skycal) from the velocity maps")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_cluster_options(f)
    f.set_defaults(func=cmd_fit, select_components=False)

    sc = sub.add_parser("skycal", help="velocity-correction map from the OH sky lines of binned sky regions")
    sc.add_argument("input", help="cube file")
    sc.add_argument("--sky-lines", required=True, help="ORB sky line list (index wavelength_A [fwhm_A] intensity)")
    sc.add_argument("--bin", type=int, default=16, help="side of the sky bins, pixels (default 16)")
    sc.add_argument("--order", type=int, default=2, help="total degree of the 2-D polynomial (default 2)")
    sc.add_argument("--sky-mask", help="sky pixels: ds9 region file (.reg), mask image (.fits) or x0:x1,y0:y1")
    sc.add_argument("--region", help="use only this pixel box x0:x1,y0:y1")
    sc.add_argument("--clip", type=float, default=3.5, help="outlier rejection threshold (sigma; default 3.5)")
    sc.add_argument("--model", default="sinc", choices=["sincgauss", "sinc", "gaussian"])
    sc.add_argument("--out", default="lucijax_skycal", help="output folder (velocity_correction.fits, sky_bins.txt)")
    sc.add_argument("--quiet", "-q", action="store_true")
    sc.set_defaults(func=cmd_skycal)

    sv = sub.add_parser("survey", help="fit every cube x line set of a manifest (TOML or CSV), resumable, with a "
                        "summary table", description="Fit every entry (cube x line set) of a manifest into its own "
                        "folder OUT/NAME (maps.fits) and write OUT/survey_summary.ecsv (per entry: pixels, spectra/s, "
                        "STATUS counts, median reduced chi2). A rerun skips finished entries and resumes a half-done "
                        "one from its checkpoint. See lucijax.survey for the manifest format.")
    sv.add_argument("manifest", help="survey manifest (.toml or .csv)")
    sv.add_argument("--out", help="output folder (default: the manifest's 'out', else MANIFEST_out beside it)")
    sv.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/NAME/checkpoint after each entry")
    sv.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no line per entry")
    add_cluster_options(sv)
    sv.set_defaults(func=cmd_survey)

    d = sub.add_parser("demo", help="simulate a small SN3 cube, fit it, write maps and a figure")
    d.add_argument("--out", default="lucijax_demo", help="output folder")
    d.add_argument("--size", type=int, default=48, help="cube side in pixels")
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=cmd_demo)

    from lucijax.nebular.atomic import EXTINCTION_LAWS

    ph = sub.add_parser("physics", help="line ratios, BPT classes, density, metallicity, extinction from fitted maps",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ph.add_argument("maps", help="maps.fits of the SN3 fit (Halpha, [NII], [SII]): the pixel grid of the output")
    ph.add_argument("--sn2", help="maps.fits of the SN2 fit (Hbeta, [OIII]) of the same field; resampled onto the "
                    "first file's pixels when its pointing differs")
    ph.add_argument("--sn1", help="maps.fits of the SN1 fit ([OII]3726+3729) of the same field, resampled the same way")
    ph.add_argument("--out", required=True, help="output folder (physics.fits, physics.png)")
    ph.add_argument("--temperature", type=float, default=1e4, help="electron temperature (K) for the [SII] density "
                    "and the Case B Halpha/Hbeta")
    ph.add_argument("--case-b-density", type=float, default=100.0, help="density (cm-3) of the Case B Halpha/Hbeta")
    ph.add_argument("--law", default="CCM89", choices=EXTINCTION_LAWS, help="extinction law (PyNeb)")
    ph.add_argument("--rv", type=float, default=3.1, help="R_V of the extinction law")
    ph.add_argument("--min-snr", type=float, default=3.0, help="a ratio needs each of its lines at this S/N; "
                    "below it, an upper limit")
    ph.add_argument("--draws", type=int, default=128, help="Monte-Carlo draws for resampled errors (x4 for BPT "
                    "class probabilities)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--no-plot", action="store_true", help="do not write physics.png")
    ph.set_defaults(func=cmd_physics)

    vw = sub.add_parser("view", help="interactive viewer in the browser: click a pixel for its spectrum, model, "
                        "residual and posterior; box-select to fit an integrated spectrum (needs lucijax[view])")
    vw.add_argument("maps", help="maps.fits written by lucijax fit (of the cube's own pixels: not binned)")
    vw.add_argument("--cube", required=True, help="the cube that was fitted (the whole file)")
    vw.add_argument("--samples", metavar="FILE.h5", help="posterior draws of the same fit (lucijax fit --bayes-samples)")
    vw.add_argument("--map", help="map shown first (default: the first line's flux)")
    vw.add_argument("--window", metavar="SMIN:SMAX", help="the fit window in cm-1, if the fit was given --window")
    vw.add_argument("--port", type=int, default=5006, help="local port (default 5006; 0: a free one)")
    vw.add_argument("--no-browser", action="store_true", help="do not open a browser (print the address only)")
    vw.set_defaults(func=cmd_view)

    pl = sub.add_parser("plot", help="plot maps of a maps.fits file")
    pl.add_argument("maps", help="maps.fits written by lucijax fit")
    pl.add_argument("--names", nargs="+", help="EXTNAMEs to plot")
    pl.add_argument("--output", "-o", help="PNG file (default: next to maps.fits)")
    pl.set_defaults(func=cmd_plot)
    return p


def add_cluster_options(parser) -> None:
    """``--scheduler`` and ``--cluster`` with its job sizes (``fit`` and ``survey``)."""
    k = parser.add_argument_group("cluster (Dask distributed: pip install 'lucijax[cluster]')")
    k.add_argument("--scheduler", metavar="ADDRESS|local:N",
                   help="run the blocks as tasks of a Dask cluster: the address of a running scheduler "
                        "(tcp://host:8786), or local:N for N single-threaded worker processes on this machine, each "
                        "with its own JAX device; each finished block is written once to OUT/checkpoint by this "
                        "process, a lost worker's blocks are re-run elsewhere")
    k.add_argument("--cluster", choices=["slurm", "pbs"],
                   help="start the workers as batch jobs (dask-jobqueue); sized by the --cluster-* options")
    k.add_argument("--cluster-jobs", type=int, help="batch jobs to submit (default 1)")
    k.add_argument("--cluster-cores", type=int, help="cores per job (default 1)")
    k.add_argument("--cluster-memory", help="memory per job, e.g. 16GB (default 4GB)")
    k.add_argument("--cluster-walltime", help="wall time per job, HH:MM:SS (default 01:00:00)")
    k.add_argument("--cluster-processes", type=int, help="worker processes per job: one per GPU (default 1)")
    k.add_argument("--cluster-queue", help="queue (SLURM partition) of the jobs")


def _join_negative_ranges(argv: list[str]) -> list[str]:
    """``--velocity-range -300:300`` -> ``--velocity-range=-300:300`` (argparse would take the
    value for an option)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in _RANGE_OPTIONS and i + 1 < len(argv) and re.match(r"^-\d", argv[i + 1]):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_join_negative_ranges(argv))
    if getattr(args, "components", None) == "auto":  # one or two per pixel
        args.components, args.select_components = 2, True
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*JAXopt is no longer maintained.*")
    from lucijax.config import enable_compilation_cache, set_cpu_devices
    from lucijax.engine import CheckpointBusyError
    from lucijax.io import MissingHeaderError
    from lucijax.physics.lines import UnknownLineError

    set_cpu_devices()
    enable_compilation_cache()
    with warnings.catch_warnings():
        if not args.verbose:  # one line per warning, without the source line that raised it
            warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except (UnknownLineError, MissingHeaderError, FileNotFoundError, ValueError, CheckpointBusyError,
                OSError) as err:
            if args.verbose:
                raise
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"lucijax: error: {message}", file=sys.stderr)
            return 2


def run() -> None:
    """The ``lucijax`` command: :func:`main`, then the process ends as the interpreter would
    end it, less its teardown (freeing every module and the XLA runtime: ~0.2 s, a tenth of
    a small cube's whole run): the threads that are not daemons are woken (thread pools)
    and joined, the exit functions run and the standard streams are flushed, in that
    order, then the process exits. Without CPython's ``threading._shutdown``: the usual exit."""
    code = main()
    shutdown = getattr(threading, "_shutdown", None)
    if not isinstance(code, int) or shutdown is None:
        sys.exit(code)
    try:
        shutdown()
    except BaseException:  # interrupted: the usual exit
        sys.exit(code)
    atexit._run_exitfuncs()  # reports (does not raise) a handler's error
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lucijax: warning: {message}", file=file or sys.stderr)


if __name__ == "__main__":
    run()
