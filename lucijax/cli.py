"""Command line: ``lucijax fit``, ``lucijax demo``, ``lucijax plot``. Thin: parse, call the
library, report."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

STATUS_HELP = "STATUS: -1 masked (not fitted), 0 converged, 1 invalid input, 2 not converged, 3 at a bound, 4 unresolved (broadening 0), 5 singular"


def _settings(args):
    from lucijax.fit.map import FitSettings

    vmin, vmax = (float(v) for v in args.velocity_range.split(":"))
    bmin, bmax = (float(v) for v in args.broadening_range.split(":"))
    return FitSettings(n_iter=args.iterations, velocity_range_kms=(vmin, vmax), broadening_range_kms=(bmin, bmax))


def _print_summary(result, elapsed: float):
    import numpy as np

    maps = result.maps
    status = maps["STATUS"]
    n = status.size
    first = result.plan.line_set.names[0].upper()
    ok = status == 0
    print(f"fitted {n} spectra in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.1f} spectra/s, compilation included)")
    counts = {int(k): int(v) for k, v in zip(*np.unique(status, return_counts=True))}
    print(f"status counts {counts}   ({STATUS_HELP})")
    if ok.any():
        v = maps[f"{first}_VELOCITY"][ok]
        ve = maps[f"{first}_VELOCITY_ERR"][ok]
        chi2 = maps["CHI2"][ok]
        print(f"{first} velocity: median {np.nanmedian(v):.2f} km/s, median error {np.nanmedian(ve):.2f} km/s; "
              f"median reduced chi2 {np.nanmedian(chi2):.3f}")


def _bayes_kwargs(args) -> dict:
    """fit_cube keywords of the --bayes options (none without --bayes)."""
    if not getattr(args, "bayes", None):
        return {}
    from lucijax.fit.bayes import BayesSettings

    settings = BayesSettings(sampler=args.bayes, prior=args.bayes_prior, num_warmup=args.bayes_num_warmup,
                             num_samples=args.bayes_num_samples, num_chains=args.bayes_chains)
    return dict(bayes=args.bayes, bayes_settings=settings, bayes_samples=args.bayes_samples,
                bayes_components=args.bayes_components)


def cmd_fit(args) -> int:
    import lucijax

    from lucijax.tooling import finish_result, prepare_fit_input, write_extras

    t0 = time.time()
    prep = prepare_fit_input(args.input, region=args.region, mask=args.mask, bin_factor=args.bin,
                             voronoi_snr=args.voronoi_snr, integrated=args.integrated,
                             background_region=args.background_region,
                             background_statistic=args.background_statistic, redshift=args.redshift,
                             combine=args.combine)
    result = lucijax.fit_cube(
        prep.source,
        args.lines,
        model=args.model,
        region=prep.region,
        redshift=args.redshift,
        window=args.window,
        sky_lines=args.sky_lines,
        groups=args.groups,
        tie_nii=not args.no_nii_tie,
        tie_oiii=args.oiii_tie,
        continuum_order=args.continuum_order,
        continuum_spline=args.continuum_spline,
        flambda_weights=not args.uniform_weights,
        noise_window=args.noise_window,
        settings=_settings(args),
        mdn="cnn" if args.cnn else not args.no_mdn,
        batch_size=args.batch_size,
        block_size=args.block_size,
        progress=not args.quiet,
        checkpoint_dir=None if args.no_checkpoint else Path(args.out) / "checkpoint",
        components=args.components,
        min_separation_kms=args.min_separation,
        freeze=args.freeze,
        **_bayes_kwargs(args),
        **prep.fit_kwargs,
    )
    result = finish_result(result, prep, heliocentric=args.heliocentric)
    if args.velocity_correction:
        from lucijax.skycal import correct_result_from_file

        result = correct_result_from_file(result, args.velocity_correction)
        print(f"velocities corrected by {args.velocity_correction}")
    elapsed = time.time() - t0
    out = result.write(args.out)
    for note in prep.notes:
        print(note)
    for path in write_extras(result, prep, out, model_cube=args.model_cube, snr_map=args.snr_map, progress=not args.quiet):
        print(f"wrote {path}")
    prep.close()
    if not args.no_checkpoint and not args.keep_checkpoint:
        shutil.rmtree(Path(args.out) / "checkpoint", ignore_errors=True)
    if result.is_single_spectrum:
        summary = result.summary()
        print(json.dumps({k: summary[k] for k in ("velocity", "velocity_err", "broadening", "broadening_err", "chi2", "status")}))
        for name, vals in summary["lines"].items():
            print(f"  {name:>14s}: flux {vals['flux']:.4g} +- {vals['flux_err']:.2g} {summary['flux_unit']}"
                  if vals["flux"] is not None else f"  {name:>14s}: NaN")
        print(f"wrote {out / 'maps.fits'} and {out / 'fit.json'}")
    else:
        _print_summary(result, elapsed)
        print(f"wrote {out / 'maps.fits'}")
    if args.plot:
        from lucijax.plots import plot_maps

        first = result.plan.line_set.names[0].upper()
        names = [f"{first}_FLUX", f"{first}_VELOCITY", f"{first}_BROADENING", f"{first}_VELOCITY_ERR", "CHI2", "STATUS"]
        plot_maps(result.maps, names, result.wcs, result.units, path=out / "maps.png")
        print(f"wrote {out / 'maps.png'}")
    return 0


def cmd_demo(args) -> int:
    from lucijax.demo import run_demo

    return run_demo(Path(args.out), size=args.size, progress=not args.quiet)


def cmd_plot(args) -> int:
    from lucijax.io import read_map_units, read_map_wcs, read_maps_fits
    from lucijax.plots import plot_maps

    maps = read_maps_fits(args.maps)
    names = args.names or [n for n in maps if n.endswith(("_FLUX", "_VELOCITY"))][:4] + ["CHI2", "STATUS"]
    out = Path(args.output or Path(args.maps).with_suffix(".png"))
    plot_maps(maps, names, read_map_wcs(args.maps, names[0]), read_map_units(args.maps), path=out)
    print(f"wrote {out}")
    return 0


def cmd_skycal(args) -> int:
    import numpy as np

    import lucijax
    from lucijax.fit.cube import parse_region
    from lucijax.skycal import calibrate_sky, write_sky_bins, write_velocity_correction

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with lucijax.open_cube(args.input) as cube:
        sky_mask = None
        if args.sky_mask:
            from lucijax.regions import read_mask

            nx, ny, _ = cube.shape
            sky_mask = read_mask(args.sky_mask, (ny, nx), cube.header.wcs)
        corr, sky = calibrate_sky(cube, args.sky_lines, bin_size=args.bin, order=args.order, sky_mask=sky_mask,
                                  region=parse_region(args.region) if args.region else None, clip_sigma=args.clip,
                                  model=args.model, progress=not args.quiet)
        path = write_velocity_correction(out / "velocity_correction.fits", corr, wcs=cube.header.wcs, sky=sky)
    write_sky_bins(out / "sky_bins.txt", sky, corr)
    cmap = corr.map()
    print(f"{sky.x.size} sky bins, {int(corr.used.sum())} kept; median bin velocity {float(np.median(sky.velocity_kms)):.2f} km/s; "
          f"surface rms {corr.rms_kms:.2f} km/s; correction {np.nanmin(cmap):.2f} .. {np.nanmax(cmap):.2f} km/s")
    print(f"wrote {path} and {out / 'sky_bins.txt'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lucijax", description="Fit emission lines in every pixel of a SITELLE cube (JAX).")
    p.add_argument("--verbose", "-v", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a cube (ORB HDF5 levels 1-3, FITS) or an extracted spectrum")
    f.add_argument("input", help="cube or spectrum file")
    f.add_argument("--lines", nargs="+", help="line names (Halpha NII6583 NII6548 SII6716 SII6731 ...) or NAME=air_nm")
    f.add_argument("--sky-lines", help="ORB sky line list: fit every line of it in the band with one velocity "
                   "(first kinematic group); --lines then adds emission lines with their own velocity")
    f.add_argument("--model", default="sincgauss", choices=["sincgauss", "sinc", "gaussian"])
    f.add_argument("--out", default="lucijax_out", help="output folder (maps.fits, fit.json)")
    f.add_argument("--redshift", type=float, default=0.0)
    f.add_argument("--region", help="pixel box x0:x1,y0:y1 (0-based, end excluded)")
    f.add_argument("--window", help="fit window SMIN:SMAX in cm-1 (default: the filter band)")
    f.add_argument("--groups", nargs="+", type=int, help="kinematic group of each line (default: all share one)")
    f.add_argument("--no-nii-tie", action="store_true", help="free the [NII]6583/6548 flux ratio (default: 3)")
    f.add_argument("--oiii-tie", action="store_true", help="fix [OIII]5007/4959 = 3 in flux")
    f.add_argument("--continuum-order", type=int, default=0, help="degree of the continuum polynomial")
    f.add_argument("--continuum-spline", type=int, default=0, metavar="N",
                   help="fit the continuum with a cubic B-spline of N equal intervals over the window instead "
                        "(for continua with structure, e.g. starlight under sky lines; SN3: 16 gives ~53 cm-1)")
    f.add_argument("--uniform-weights", action="store_true",
                   help="weight every channel alike (default for flux-calibrated data with a per-channel "
                        "flambda: 1 / flambda, the noise of calibrated FTS spectra)")
    f.add_argument("--noise-window", metavar="SMIN:SMAX",
                   help="measure each pixel's noise over this line-free window in cm-1, e.g. outside the filter "
                        "band where an FTS spectrum holds only noise (default: the fit's line-free residuals)")
    f.add_argument("--velocity-range", default="-600:600", help="velocities searched, km/s (VMIN:VMAX)")
    f.add_argument("--broadening-range", default="0:300", help="broadening bounds, km/s (BMIN:BMAX)")
    f.add_argument("--iterations", type=int, default=8, help="Levenberg-Marquardt iterations")
    f.add_argument("--no-mdn", action="store_true",
                   help="start from a matched filter over the velocity range instead of the filter's network "
                        "(default: the mixture density network's mean starts the fit, mean +- 3 sigma bound it)")
    f.add_argument("--cnn", action="store_true", help="start from the point-estimate network (no bounds from it)")
    f.add_argument("--batch-size", type=int, default=None,
                   help="spectra per compiled batch (default: 64 on CPU, 4096 on a GPU)")
    f.add_argument("--block-size", type=int, default=64,
                   help="pixels are read and checkpointed in BLOCK x BLOCK slabs (default 64)")
    f.add_argument("--plot", action="store_true", help="also write maps.png")
    f.add_argument("--no-checkpoint", action="store_true",
                   help="do not keep finished blocks in OUT/checkpoint (by default a rerun after a crash resumes)")
    f.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/checkpoint after success")
    f.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    t = f.add_argument_group("cube tools")
    t.add_argument("--mask", help="fit only these pixels: ds9 region file (.reg), mask image (.fits) or x0:x1,y0:y1")
    t.add_argument("--bin", type=int, help="bin N x N pixels before fitting (maps on the binned grid and WCS)")
    t.add_argument("--voronoi-snr", type=float, help="Voronoi bins reaching this line S/N; maps back on pixels")
    t.add_argument("--integrated", nargs="?", const="sum", choices=["sum", "mean"],
                   help="fit the integrated (summed, or mean) spectrum of --mask or --region")
    t.add_argument("--combine", default="sum", choices=["sum", "mean"], help="how --bin / --voronoi-snr combine pixels")
    t.add_argument("--background-region", help="subtract the background spectrum of this region (.reg, .fits, x0:x1,y0:y1)")
    t.add_argument("--background-statistic", default="median", choices=["median", "mean"])
    t.add_argument("--heliocentric", action="store_true", help="correct velocities to the heliocentric frame")
    t.add_argument("--model-cube", action="store_true", help="also write OUT/model.fits and OUT/residual.fits")
    t.add_argument("--snr-map", action="store_true", help="also write OUT/snr.fits and OUT/deep.fits")
    t.add_argument("--components", type=int, default=1,
                   help="kinematic components per line (ordered in velocity; maps {LINE}_C1_..., {LINE}_C2_...)")
    t.add_argument("--min-separation", type=float, default=40.0, help="smallest velocity step between components, km/s")
    t.add_argument("--freeze", metavar="MAPS.fits",
                   help="take velocities and broadenings from these maps; fit only amplitudes and continuum")
    t.add_argument("--velocity-correction", metavar="CORR.fits",
                   help="subtract this sky velocity-correction map (lucijax skycal) from the velocity maps")
    b = f.add_argument_group("Bayesian posteriors (after the MAP fit; lucijax.fit.bayes)")
    b.add_argument("--bayes", choices=["nuts", "ensemble", "nested", "mh"],
                   help="sample every pixel's posterior: maps of medians, *_ERR = half 16-84%% width, RHAT_MAX, "
                   "ESS_MIN (LOGZ for nested); 'mh' = broad priors with the MDN as proposal")
    b.add_argument("--bayes-samples", metavar="FILE.h5", help="write every pixel's samples to this HDF5 file")
    b.add_argument("--bayes-prior", choices=["informed", "broad"],
                   help="velocity/broadening prior: MDN (or MAP) mean +- 3 sigma, or the search range "
                   "(default: broad for mh, informed otherwise)")
    b.add_argument("--bayes-num-samples", type=int, default=500, help="draws per chain")
    b.add_argument("--bayes-num-warmup", type=int, default=300, help="warm-up steps per chain")
    b.add_argument("--bayes-chains", type=int, default=2, help="chains per pixel (ensemble: walkers are separate)")
    b.add_argument("--bayes-components", action="store_true",
                   help="with --bayes nested: fit 1 and 2 components, choose by evidence (N_COMPONENTS map)")
    f.set_defaults(func=cmd_fit)

    sc = sub.add_parser("skycal", help="velocity-correction map from the OH sky lines of binned sky regions")
    sc.add_argument("input", help="cube file")
    sc.add_argument("--sky-lines", required=True, help="ORB sky line list (index wavelength_A [fwhm_A] intensity)")
    sc.add_argument("--bin", type=int, default=16, help="side of the sky bins, pixels")
    sc.add_argument("--order", type=int, default=2, help="total degree of the 2-D polynomial")
    sc.add_argument("--sky-mask", help="sky pixels: ds9 region file (.reg), mask image (.fits) or x0:x1,y0:y1")
    sc.add_argument("--region", help="use only this pixel box x0:x1,y0:y1")
    sc.add_argument("--clip", type=float, default=3.5, help="outlier rejection threshold (sigma)")
    sc.add_argument("--model", default="sinc", choices=["sincgauss", "sinc", "gaussian"])
    sc.add_argument("--out", default="lucijax_skycal", help="output folder (velocity_correction.fits, sky_bins.txt)")
    sc.add_argument("--quiet", "-q", action="store_true")
    sc.set_defaults(func=cmd_skycal)

    d = sub.add_parser("demo", help="simulate a small SN3 cube, fit it, write maps and a figure")
    d.add_argument("--out", default="lucijax_demo", help="output folder")
    d.add_argument("--size", type=int, default=48, help="cube side in pixels")
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=cmd_demo)

    pl = sub.add_parser("plot", help="plot maps of a maps.fits file")
    pl.add_argument("maps", help="maps.fits written by lucijax fit")
    pl.add_argument("--names", nargs="+", help="EXTNAMEs to plot")
    pl.add_argument("--output", "-o", help="PNG file (default: next to maps.fits)")
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*JAXopt is no longer maintained.*")
    from lucijax.io import MissingHeaderError
    from lucijax.lines import UnknownLineError

    try:
        return args.func(args)
    except (UnknownLineError, MissingHeaderError, FileNotFoundError, ValueError) as err:
        print(f"lucijax: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
