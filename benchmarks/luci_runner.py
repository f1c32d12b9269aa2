#!/usr/bin/env python
"""Fit a region of an ORB-format HDF5 cube with LUCI 2.0.1 and time it.

This is the *peer-code* side of the lucijax benchmark.  It must be run with the
interpreter of the separate LUCI virtual environment, never with lucijax's own
environment (lucijax never imports LUCI)::

    /work/luci-venv/bin/python benchmarks/luci_runner.py CUBE.hdf5 \
        --region x0:x1,y0:y1 \
        --lines Halpha NII6583 NII6548 SII6716 SII6731 \
        --model sincgauss [--out DIR] [--n-threads 1|2]

The last line written to stdout is ONE JSON object, e.g.::

    {"n_spectra": 64, "fit_seconds": 31.2, "spectra_per_s": 2.05,
     "setup_seconds": 4.1, "luci_version": "2.0.1",
     "velocity_map": "/out/luci_velocity.npy", ...}

Everything LUCI prints (progress bars, log lines, prints from joblib worker
processes) is sent to stderr at the file-descriptor level.

What is fitted
--------------
``SitelleCube(...).fit_cube(lines, model, vel_rel=[1]*n, sigma_rel=[1]*n,
x0, x1, y0, y1, n_threads=...)``: every pixel of the half-open rectangle
``x0 <= x < x1, y0 <= y < y1`` (indices of ``data[x, y, :]``), one velocity and
one broadening shared by all lines (LUCI ties them with SLSQP constraints), a
constant continuum (LUCI's only continuum model), LUCI's default initial guess
(its ONNX CNN predictor ``ML/onnx/R<resolution>-PREDICTOR-I-<FILTER>.onnx``,
shipped inside the wheel; if it cannot be loaded the runner sets
``ML_bool=False`` and LUCI uses its data-driven guess), LUCI's default
``nii_cons=True`` (flux(NII6548) = flux(NII6583)/3; ``--no-nii-cons`` turns it
off), no uncertainties, no Bayesian step, no binning, no background.

Timing
------
``fit_seconds`` times only the ``fit_cube`` call (which includes LUCI writing
~37 small FITS maps into ``OUT/Luci_outputs``; the deep image it needs is made
during setup).  ``setup_seconds`` = importing LUCI + reading the cube + deep
image + ML-model check (process start to the timed call, minus the warm-up).  By default a warm-up ``fit_cube`` over at
most 2 pixels runs first (``warmup_seconds``; not counted in fit_seconds) so
that joblib's worker processes are already started and have loaded the ONNX
model; ``--no-warmup`` measures the cold call instead.  ``n_threads`` is
LUCI's own argument (joblib, loky processes, parallel over y rows).

Output maps (numpy .npy, float32, in --out)
-------------------------------------------
All maps cover the fitted region only and are oriented ``[y, x]``:
``map[j, i]`` belongs to ``data[x0 + i, y0 + j, :]`` of the HDF5 cube.  (LUCI's
own FitMaps are already ``[y, x]`` -- checked on a synthetic cube whose
velocity depends differently on x and y -- so no transpose is applied.)

* ``luci_velocity.npy``    velocity [km/s] of the Halpha line (or the first
  line if Halpha is not fitted); LUCI's convention v = c (lam - lam0)/lam0 with
  c = 299792 km/s and its own rest wavelengths (Halpha 656.280 nm, NII6583
  658.341, NII6548 654.803, SII6716 671.647, SII6731 673.085 -- these differ
  from other tables by up to ~2 km/s).
* ``luci_broadening.npy``  Gaussian sigma [km/s] (c * sigma_cm-1 / position).
* ``luci_flux_halpha.npy`` Halpha flux [erg/cm2/s] (only if Halpha is fitted).
* ``luci_velocity_lines.npy``, ``luci_broadening_lines.npy``,
  ``luci_flux_lines.npy``, ``luci_amplitude_lines.npy``: ``[y, x, line]`` in
  the order of ``--lines``.
* ``luci_continuum.npy``, ``luci_chi2.npy`` when LUCI's FITS files can be read.

HDF5 layout LUCI 2.0.1 needs (new-format / "level 2" ORB cube)
---------------------------------------------------------------
LUCI opens ``<cube_path>.hdf5`` (it appends the extension itself; this runner
strips/symlinks as needed).  Without a root attribute ``quad_nb`` it reads the
new single-dataset layout:

Datasets
  * ``data``       [x, y, channel], real (float32 fine) in erg/cm2/s/A.  LUCI
                   takes ``np.real(data)``, so complex level-3 data also load,
                   but see ``flambda`` below.
  * ``calib_map``  [x, y] float, calibration-laser wavelength map in nm.
                   REQUIRED (LUCI computes the per-pixel interferometer angle
                   theta = arccos(CALIBNM / calib_map); it sets the sinc width
                   1/(2 cos(theta) STEP (STEPNB-ZPDINDEX) 1e-7) used by
                   sincgauss).  For a uniform cube use
                   ``calib_map = nm_laser * axis_corr``.
  * ``deep_frame`` [x, y] optional; if absent LUCI sums the cube.

Root attributes (numpy scalars / str as h5py writes them)
  * ``NAXIS``      int, REQUIRED (e.g. 3).
  * ``STEPNB``     int, REQUIRED under exactly this name: LUCI's fallback from
                   ``step_nb`` is broken (it tests for ``STEP_NB``).  Must equal
                   ``data.shape[2]`` -- LUCI builds the spectral axis with
                   STEPNB points.
  * ``STEP``       float, step size in nm, REQUIRED under this name.
  * ``ZPDINDEX``   int (or ``zpd_index``).
  * ``FILTER``     str (or ``filter_name``), e.g. ``'SN3'``; selects
                   ``Data/SN3_filter.dat`` (transmission), the fit/noise
                   windows, ``ML/Reference-Spectrum-R5000-SN3.fits`` and the
                   ONNX model -- all shipped in the wheel.
  * ``CRVAL3``     float (or ``axis_min``), first wavenumber [cm-1].
  * ``CDELT3``     float (or ``axis_step``), channel step [cm-1].
  * ``CALIBNM``    float (or ``nm_laser``), reference laser wavelength [nm].
  Optional
  * ``flux_calibration`` bool.  If False *and* ``flambda`` is present LUCI
                   multiplies the data by flambda / STEPNB / exposure_time.
                   Absent (or True, or no ``flambda``): data are taken as
                   already calibrated.
  * ``NAXIS1``, ``NAXIS2`` (only used for ds9-region masks).
  * WCS keys ``CTYPE1/2`` ('RA---TAN'/'DEC--TAN'), ``CRVAL1/2``, ``CRPIX1/2``,
    ``CDELT1/2`` (or ``PC``/``CD``), ``CUNIT1/2``; without them LUCI silently
    uses a pixel WCS, which is fine for fit_cube.
  Attributes whose name contains ``path`` are blanked by LUCI; others ignored.

Gotchas found in LUCI 2.0.1 (all left as-is unless a flag says otherwise)
-------------------------------------------------------------------------
* Spectral axis: LUCI uses ``linspace(CRVAL3, CRVAL3 + STEPNB*CDELT3,
  STEPNB)``, i.e. channel spacing CDELT3*STEPNB/(STEPNB-1), so channel k sits
  k*CDELT3/(STEPNB-1) too high compared with CRVAL3 + k*CDELT3.  For the
  standard SN3 setup that is +1.35 cm-1 at Halpha, a velocity bias of about
  -26 km/s.  ``--axis exact`` (not LUCI's default) replaces LUCI's axis by
  CRVAL3 + k*CDELT3 after loading (and re-interpolates its transmission curve);
  ``--axis luci`` (default) benchmarks LUCI as shipped.
* LUCI divides each spectrum by the filter transmission (where T > 0.5) before
  fitting: fluxes come out ~1-2 % higher than for a cube without the filter
  imprinted (SN3: T ~ 0.98-0.99 at Halpha..SII).
* LUCI's sincgauss "flux" is its own convention,
  (1.20671 / (pi * 2 sqrt(2 ln 2))) * A * sqrt(2 pi) sigma / erf(sigma / (sqrt(2) w)),
  with A in the cube's units and sigma, w (sinc width) in cm-1.  On the
  synthetic SN3 test cube that came out ~0.36x the line's integral over
  wavenumber, so compare amplitudes, or convert, rather than raw fluxes.
* Speed is dominated by scipy SLSQP with 3-point finite differences
  (~0.5 s per typical spectrum on one core); now and then a pixel runs to
  maxiter=500 (~15 s), which also unbalances joblib's row-wise split.
* No network access in the fit path (only luci.simulation downloads).  Files
  written: ``OUT/Luci_outputs/`` (deep image + FITS maps); nothing in cwd (the
  runner still runs from inside OUT).  ML model files come with the wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

_T_START = time.perf_counter()


def _parse_region(text: str) -> tuple[int, int, int, int]:
    try:
        xpart, ypart = text.split(",")
        x0, x1 = (int(v) for v in xpart.split(":"))
        y0, y1 = (int(v) for v in ypart.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--region must look like x0:x1,y0:y1, got {text!r}") from exc
    if x1 <= x0 or y1 <= y0 or x0 < 0 or y0 < 0:
        raise argparse.ArgumentTypeError(f"empty or negative region {text!r}")
    return x0, x1, y0, y1


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cube", help="ORB-format HDF5 cube (level 2: data[x, y, channel])")
    p.add_argument("--region", type=_parse_region, default=None, help="x0:x1,y0:y1 (half-open); default: whole cube")
    p.add_argument("--lines", nargs="+", default=["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"])
    p.add_argument("--model", default="sincgauss", choices=["sincgauss", "gaussian", "sinc"])
    p.add_argument("--out", default=None, help="output directory (default: a new temporary directory)")
    p.add_argument("--n-threads", type=int, default=2, help="LUCI's n_threads (joblib workers); default 2")
    p.add_argument("--resolution", type=int, default=5000, help="LUCI resolution key for ML model (default 5000)")
    p.add_argument("--redshift", type=float, default=0.0)
    p.add_argument("--no-ml", action="store_true", help="force ML_bool=False (data-driven initial guess)")
    p.add_argument("--no-nii-cons", action="store_true", help="drop LUCI's NII6548 = NII6583/3 flux constraint")
    p.add_argument("--no-warmup", action="store_true", help="time the cold fit_cube call (joblib start-up included)")
    p.add_argument(
        "--axis",
        choices=["luci", "exact"],
        default="luci",
        help="'luci': LUCI's own (stretched) spectral axis; 'exact': CRVAL3 + k*CDELT3",
    )
    p.add_argument("--object-name", default="bench")
    p.add_argument("--quiet", action="store_true", help="LUCI logger at WARNING")
    p.add_argument(
        "--bayes-emcee",
        action="store_true",
        help="instead of fit_cube: LUCI's emcee path (fit_pixel with bayes_bool=True) for every pixel of the "
        "region, one at a time; chains saved to OUT/luci_emcee_chains.npz (see run_bayes_emcee)",
    )
    p.add_argument(
        "--emcee-steps",
        type=int,
        default=None,
        help="with --bayes-emcee: cap emcee's run_mcmc steps (LUCI uses 3000 steps x 2000 walkers)",
    )
    p.add_argument("--emcee-walkers", type=int, default=None, help="with --bayes-emcee: override LUCI's 2000 walkers")
    return p.parse_args(argv)


REQUIRED_DATASETS = ("data", "calib_map")
# (accepted names, what it is) -- the first name is the one LUCI prefers
REQUIRED_ATTRS = (
    (("NAXIS",), "number of axes"),
    (("STEPNB",), "number of channels (must be this exact name)"),
    (("STEP",), "step size in nm (must be this exact name)"),
    (("ZPDINDEX", "zpd_index"), "ZPD index"),
    (("FILTER", "filter_name"), "filter name, e.g. SN3"),
    (("CRVAL3", "axis_min"), "first wavenumber in cm-1"),
    (("CDELT3", "axis_step"), "wavenumber step in cm-1"),
    (("CALIBNM", "nm_laser"), "calibration laser wavelength in nm"),
)


def _check_cube(path: str, region):
    """Check the HDF5 file has what LUCI reads; return (nx, ny, nz, region)."""
    import h5py

    problems = []
    with h5py.File(path, "r") as f:
        if "quad_nb" in f.attrs:
            nx, ny, nz = int(f.attrs["dimx"]), int(f.attrs["dimy"]), int(f.attrs["dimz"])
        else:
            for name in REQUIRED_DATASETS:
                if name not in f:
                    problems.append(f"dataset '{name}' missing")
            if "data" not in f:
                raise SystemExit(f"{path}: " + "; ".join(problems))
            nx, ny, nz = f["data"].shape
            for names, what in REQUIRED_ATTRS:
                if not any(n in f.attrs for n in names):
                    problems.append(f"attribute {' or '.join(names)} ({what}) missing")
            if "STEPNB" in f.attrs and int(f.attrs["STEPNB"]) != nz:
                problems.append(f"STEPNB={int(f.attrs['STEPNB'])} but data has {nz} channels")
            if "calib_map" in f and f["calib_map"].shape != (nx, ny):
                problems.append(f"calib_map shape {f['calib_map'].shape} != data spatial shape {(nx, ny)}")
    if problems:
        raise SystemExit(f"{path} cannot be read by LUCI 2.0.1: " + "; ".join(problems))
    if region is None:
        region = (0, nx, 0, ny)
    x0, x1, y0, y1 = region
    if x1 > nx or y1 > ny:
        raise SystemExit(f"region {region} outside the cube's spatial shape ({nx}, {ny})")
    return nx, ny, nz, region


def _redirect_stdout_to_stderr():
    """Point fd 1 at stderr (inherited by joblib workers); return a file on the real stdout."""
    sys.stdout.flush()
    real_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(real_fd, "w")


def run(args, result: dict) -> dict:
    import numpy as np

    t_setup0 = time.perf_counter()
    cube_path = os.path.abspath(args.cube)
    nx, ny, nz, (x0, x1, y0, y1) = _check_cube(cube_path, args.region)

    out_dir = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="luci_runner_")
    os.makedirs(out_dir, exist_ok=True)
    os.chdir(out_dir)  # LUCI's fit path writes nothing in cwd, but be safe
    result.update(out_dir=out_dir, cube=cube_path, region=[x0, x1, y0, y1], cube_shape=[nx, ny, nz])

    # LUCI opens cube_path + '.hdf5'.
    if cube_path.endswith(".hdf5"):
        luci_cube_stem = cube_path[: -len(".hdf5")]
    else:
        link_dir = tempfile.mkdtemp(prefix="luci_cube_")
        luci_cube_stem = os.path.join(link_dir, "cube")
        os.symlink(cube_path, luci_cube_stem + ".hdf5")

    t_imp = time.perf_counter()
    import luci
    from luci import SitelleCube

    if args.quiet:
        import logging

        from luci.log import get_logger

        get_logger().setLevel(logging.WARNING)
    result["import_seconds"] = time.perf_counter() - t_imp
    result["luci_version"] = getattr(luci, "__version__", "unknown")

    t_load = time.perf_counter()
    cube = SitelleCube(
        cube_path=luci_cube_stem,
        output_dir=out_dir,
        object_name=args.object_name,
        redshift=args.redshift,
        resolution=args.resolution,
        ML_bool=not args.no_ml,
    )
    if args.axis == "exact":
        from luci.io.reference import read_in_transmission

        k = np.arange(int(cube.hdr_dict["STEPNB"]))
        axis = float(cube.hdr_dict["CRVAL3"]) + k * float(cube.hdr_dict["CDELT3"])
        cube.spectrum_axis_unshifted = np.asarray(axis, dtype=np.float32)
        if cube.filter in ("C1", "C2", "C4"):
            cube.spectrum_axis = cube.spectrum_axis_unshifted
        else:
            cube.spectrum_axis = np.asarray(axis * (1 + args.redshift), dtype=np.float32)
        cube.transmission_interpolated = read_in_transmission(
            cube.Luci_path, cube.hdr_dict, cube.spectrum_axis_unshifted
        )
    cube.create_deep_image()  # fit_cube would otherwise do it inside the timed call
    result["load_seconds"] = time.perf_counter() - t_load

    # ML initial guess: LUCI's default. Fall back to its data-driven guess if the
    # ONNX model is missing or cannot run here.
    ml_used, ml_note = False, "disabled by --no-ml"
    if not args.no_ml:
        try:
            from luci.ml import get_predictor

            predictor = get_predictor(cube.resolution, cube.filter, cube.mdn, cube.Luci_path)
            if predictor is None:
                ml_note = f"no ONNX model R{cube.resolution}-PREDICTOR-I-{cube.filter}; data-driven guess"
            else:
                est = predictor.predict(np.zeros(len(cube.wavenumbers_syn), dtype=np.float32))
                float(est.velocity)
                ml_used, ml_note = True, f"ONNX R{cube.resolution}-PREDICTOR-I-{cube.filter}"
        except Exception as exc:  # noqa: BLE001 -- any failure means: no ML
            ml_note = f"ML model unusable ({type(exc).__name__}: {exc}); data-driven guess"
        if not ml_used:
            cube.ML_bool = False
    result.update(ml_initial_guess=ml_used, ml_note=ml_note)

    lines = list(args.lines)
    n_lines = len(lines)
    fit_kwargs = dict(n_threads=args.n_threads, nii_cons=not args.no_nii_cons, uncertainty_bool=False)

    warm_s, n_warm = 0.0, 0
    if not args.no_warmup:
        wy1 = min(y1, y0 + 2)  # two rows -> one task per joblib worker
        t_w = time.perf_counter()
        cube.fit_cube(lines, args.model, [1] * n_lines, [1] * n_lines, x0, x0 + 1, y0, wy1, **fit_kwargs)
        warm_s = time.perf_counter() - t_w
        n_warm = wy1 - y0
    result.update(warmup_seconds=warm_s, warmup_spectra=n_warm)
    result["setup_seconds"] = time.perf_counter() - _T_START - warm_s

    # ---- the timed call ---------------------------------------------------------
    t_fit = time.perf_counter()
    vel, broad, flux, ampl = cube.fit_cube(lines, args.model, [1] * n_lines, [1] * n_lines, x0, x1, y0, y1, **fit_kwargs)
    fit_s = time.perf_counter() - t_fit
    # ------------------------------------------------------------------------------

    n_spec = (x1 - x0) * (y1 - y0)
    result.update(
        n_spectra=n_spec,
        fit_seconds=fit_s,
        spectra_per_s=n_spec / fit_s if fit_s > 0 else None,
    )

    vel, broad, flux, ampl = (np.asarray(a, dtype=np.float32) for a in (vel, broad, flux, ampl))
    assert vel.shape == (y1 - y0, x1 - x0, n_lines), vel.shape
    ref = lines.index("Halpha") if "Halpha" in lines else 0

    def save(name, arr):
        path = os.path.join(out_dir, name)
        np.save(path, np.ascontiguousarray(arr))
        return path

    result["velocity_line"] = lines[ref]
    result["velocity_map"] = save("luci_velocity.npy", vel[:, :, ref])
    result["broadening_map"] = save("luci_broadening.npy", broad[:, :, ref])
    result["flux_halpha_map"] = save("luci_flux_halpha.npy", flux[:, :, ref]) if "Halpha" in lines else None
    result["velocity_lines"] = save("luci_velocity_lines.npy", vel)
    result["broadening_lines"] = save("luci_broadening_lines.npy", broad)
    result["flux_lines"] = save("luci_flux_lines.npy", flux)
    result["amplitude_lines"] = save("luci_amplitude_lines.npy", ampl)
    # continuum / chi2 only exist as LUCI's FITS outputs (same [y, x] orientation)
    try:
        from astropy.io import fits

        stem = os.path.join(cube.output_dir, f"{args.object_name}_{args.model}")
        result["continuum_map"] = save("luci_continuum.npy", fits.getdata(stem + "_continuum.fits").astype(np.float32))
        result["chi2_map"] = save("luci_chi2.npy", fits.getdata(stem + "_Chi2.fits").astype(np.float32))
    except Exception as exc:  # noqa: BLE001
        result["continuum_map"] = result["chi2_map"] = None
        result["fits_note"] = f"could not read LUCI FITS outputs: {exc}"
    result["map_orientation"] = "[y, x]: map[j, i] <-> data[x0+i, y0+j, :]"

    finite = np.isfinite(vel[:, :, ref]) & (vel[:, :, ref] != 0)
    result["n_failed"] = int(n_spec - finite.sum())
    if finite.any():
        result["velocity_median"] = float(np.median(vel[:, :, ref][finite]))
        result["broadening_median"] = float(np.median(broad[:, :, ref][finite]))
    return result


def run_bayes_emcee(args, result: dict) -> dict:
    """LUCI's Bayesian path: ``SitelleCube.fit_pixel(..., bayes_bool=True,
    bayes_method='emcee')`` for each pixel of the region, in this process, one at a time
    (LUCI's MAP fit, then ``SpectrumFitter.fit_Bayes``: emcee ``EnsembleSampler`` with
    LUCI's log_probability, 2000 walkers, 3000 steps, 500 discarded).

    ``emcee.EnsembleSampler`` is wrapped (not changed) to record the time of ``run_mcmc``
    and the full chain of each pixel; ``--emcee-steps`` / ``--emcee-walkers`` optionally
    shorten the run (the per-step cost and the autocorrelation time per step do not depend
    on the run length, so effective samples per second can be measured on a shorter run).
    Saved: ``OUT/luci_emcee_chains.npz`` with ``chains`` [pixel, step, walker, param]
    (float32; params = LUCI's [amplitudes..., shift (cm-1), sigma (cm-1), continuum]),
    ``pixels`` [(x, y)], ``run_seconds`` (run_mcmc wall time per pixel), ``fit_seconds``
    (whole fit_pixel call per pixel).
    """
    import numpy as np

    t_setup0 = time.perf_counter()
    cube_path = os.path.abspath(args.cube)
    nx, ny, nz, (x0, x1, y0, y1) = _check_cube(cube_path, args.region)
    out_dir = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="luci_runner_")
    os.makedirs(out_dir, exist_ok=True)
    os.chdir(out_dir)
    if cube_path.endswith(".hdf5"):
        luci_cube_stem = cube_path[: -len(".hdf5")]
    else:
        link_dir = tempfile.mkdtemp(prefix="luci_cube_")
        luci_cube_stem = os.path.join(link_dir, "cube")
        os.symlink(cube_path, luci_cube_stem + ".hdf5")
    import emcee
    import luci
    from luci import SitelleCube

    if args.quiet:
        import logging

        from luci.log import get_logger

        get_logger().setLevel(logging.WARNING)
    result["luci_version"] = getattr(luci, "__version__", "unknown")
    result["emcee_version"] = getattr(emcee, "__version__", "unknown")
    records = []
    _Base = emcee.EnsembleSampler

    class RecordingSampler(_Base):
        def __init__(self, nwalkers, ndim, *a, **k):
            self._orig_nwalkers = nwalkers
            super().__init__(nwalkers, ndim, *a, **k)

        def run_mcmc(self, initial_state, nsteps, **kw):
            steps = nsteps if args.emcee_steps is None else min(nsteps, args.emcee_steps)
            t = time.perf_counter()
            out = super().run_mcmc(initial_state, steps, **{**kw, "progress": False})
            records.append({"seconds": time.perf_counter() - t, "chain": self.get_chain().astype(np.float32),
                            "luci_steps": nsteps, "steps": steps, "walkers": self.nwalkers})
            return out

        def get_chain(self, **kw):
            if "discard" in kw and args.emcee_steps is not None:  # keep LUCI's 1/6 burn-in fraction
                kw["discard"] = min(kw["discard"], self.iteration // 6)
            return super().get_chain(**kw)

    emcee.EnsembleSampler = RecordingSampler
    if args.emcee_walkers is not None:
        import luci.fitting.spectrum_fitter as sf

        orig_bayes = sf.SpectrumFitter.fit_Bayes

        def fit_bayes_walkers(self):
            # LUCI hard-codes n_walkers = 2000 inside fit_Bayes: rebuild the same call with fewer
            orig_np_randn = np.random.randn

            def randn(*shape):
                if len(shape) == 2 and shape[0] == 2000:
                    shape = (args.emcee_walkers, shape[1])
                return orig_np_randn(*shape)

            np.random.randn = randn
            try:
                return orig_bayes(self)
            finally:
                np.random.randn = orig_np_randn

        sf.SpectrumFitter.fit_Bayes = fit_bayes_walkers

        def init_walkers(self, nwalkers, ndim, *a, **k):
            _Base.__init__(self, args.emcee_walkers if nwalkers == 2000 else nwalkers, ndim, *a, **k)

        RecordingSampler.__init__ = init_walkers

    cube = SitelleCube(cube_path=luci_cube_stem, output_dir=out_dir, object_name=args.object_name,
                       redshift=args.redshift, resolution=args.resolution, ML_bool=not args.no_ml)
    if args.no_ml:
        cube.ML_bool = False
    result["setup_seconds"] = time.perf_counter() - t_setup0
    lines = list(args.lines)
    n = len(lines)
    pixels, fit_seconds = [], []
    for x in range(x0, x1):
        for y in range(y0, y1):
            t = time.perf_counter()
            cube.fit_pixel(lines, args.model, [1] * n, [1] * n, x, y, bayes_bool=True, bayes_method="emcee",
                           nii_cons=not args.no_nii_cons)
            fit_seconds.append(time.perf_counter() - t)
            pixels.append((x, y))
            print(f"pixel {x},{y}: {fit_seconds[-1]:.1f} s", file=sys.stderr, flush=True)
    chains = np.stack([r["chain"] for r in records])
    path = os.path.join(out_dir, "luci_emcee_chains.npz")
    np.savez(path, chains=chains, pixels=np.asarray(pixels), run_seconds=np.asarray([r["seconds"] for r in records]),
             fit_seconds=np.asarray(fit_seconds))
    result.update(n_spectra=len(pixels), chains_file=path, emcee_steps=records[0]["steps"],
                  luci_emcee_steps=records[0]["luci_steps"], emcee_walkers=records[0]["walkers"],
                  run_seconds=[r["seconds"] for r in records], fit_seconds=fit_seconds,
                  entry_point="luci.SitelleCube.fit_pixel(bayes_bool=True, bayes_method='emcee')")
    return result


def main(argv=None) -> int:
    args = _parse_args(argv)
    json_out = _redirect_stdout_to_stderr()
    result = {
        "n_spectra": None,
        "fit_seconds": None,
        "spectra_per_s": None,
        "setup_seconds": None,
        "luci_version": None,
        "velocity_map": None,
        "model": args.model,
        "lines": list(args.lines),
        "n_threads": args.n_threads,
        "cpu_count": os.cpu_count(),
        "axis": args.axis,
        "nii_cons": not args.no_nii_cons,
        "resolution": args.resolution,
        "redshift": args.redshift,
        "continuum": "constant",
        "tied": "vel_rel=sigma_rel=[1]*n_lines (one velocity, one broadening)",
        "entry_point": "luci.SitelleCube.fit_cube",
    }
    rc = 0
    try:
        if args.bayes_emcee:
            run_bayes_emcee(args, result)
        else:
            run(args, result)
    except BaseException as exc:  # noqa: BLE001 -- always emit the JSON line
        traceback.print_exc(file=sys.stderr)
        result["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    json_out.write(json.dumps(result) + "\n")
    json_out.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
