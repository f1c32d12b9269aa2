"""``lucijax demo``: simulate a small SN3 cube of a rotating gas disk with HII regions
(:func:`lucijax.simulate.make_disk_cube`), write it as an ORB HDF5 file, fit every pixel,
compare with the truth, write maps.fits and figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DEMO_LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def _robust_std(a):
    a = np.asarray(a, float)
    return 1.4826 * np.nanmedian(np.abs(a - np.nanmedian(a)))


def truth_in_map_units(truth: dict, line_set) -> dict:
    """The simulator's truth as the fit's maps name it: ``*_FLUX`` in erg/cm^2/s (at the
    true observed position of each line), ``HALPHA_VELOCITY``, ``HALPHA_BROADENING``."""
    from lucijax.physics.conversions import flux_cm1_to_erg, observed_position_cm1

    out = {"HALPHA_VELOCITY": truth["VELOCITY"], "HALPHA_BROADENING": truth["BROADENING"]}
    for i, name in enumerate(line_set.names):
        x0 = observed_position_cm1(line_set.rest_cm1[i], truth["VELOCITY"])
        out[f"{name.upper()}_FLUX"] = flux_cm1_to_erg(truth[f"{name.upper()}_FLUX_CM1"], x0)
    return out


def run_demo(out: Path, size: int = 48, progress: bool = True) -> int:
    """Simulate the disk cube, fit it with :class:`lucijax.MAP`, print the comparison
    with the truth and write ``maps.fits``, ``maps.png`` (truth, fit and pulls side by
    side, and the STATUS map) and ``spectrum.png`` (the brightest pixel) in ``out``.

    Parameters
    ----------
    out : path
        Output folder (created).
    size : int
        Side of the simulated field in pixels.
    progress : bool
        Show the fit's progress bar.

    Returns the exit code (0).
    """
    import lucijax
    from lucijax import simulate
    from lucijax.plots import plot_spectrum_fit, plot_truth_comparison
    from lucijax.status import counts_line

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cube = simulate.make_disk_cube(size, seed=42, lines=DEMO_LINES)
    path = cube.write(out / "demo_cube.hdf5")
    snr = cube.truth["SNR"]
    print(f"simulated a {size}x{size}x{cube.data.shape[2]} SN3 cube of a rotating disk with HII regions "
          f"(5 lines, sincgauss, Halpha SNR {snr.min():.1f}-{snr.max():.0f}): {path}")

    t1 = time.time()
    result = lucijax.fit(path, lucijax.Model(DEMO_LINES, profile="sincgauss"), lucijax.MAP(),
                         execution=lucijax.Execution(progress=progress))
    t_fit = time.time() - t1
    result.write(out)

    maps = result.maps
    truth = truth_in_map_units(cube.truth, cube.line_set)
    status = maps["STATUS"]
    dv = maps["HALPHA_VELOCITY"] - truth["HALPHA_VELOCITY"]
    good = (snr >= 5) & np.isfinite(dv)
    pull = dv / maps["HALPHA_VELOCITY_ERR"]
    print(f"fitted {status.size} spectra in {t_fit:.1f} s (compilation included)")
    print(f"status: {counts_line(status)}")
    print(f"velocity vs truth at SNR>=5 ({good.sum()} px): median bias {np.nanmedian(dv[good]):+.2f} km/s, "
          f"robust scatter {_robust_std(dv[good]):.2f} km/s, pull std {_robust_std(pull[good]):.2f}")
    db = maps["HALPHA_BROADENING"] - truth["HALPHA_BROADENING"]
    print(f"broadening vs truth at SNR>=5: median bias {np.nanmedian(db[good]):+.2f} km/s, "
          f"robust scatter {_robust_std(db[good]):.2f} km/s")
    df = maps["HALPHA_FLUX"] / truth["HALPHA_FLUX"] - 1
    ratio_fit = maps["NII6583_FLUX"] / maps["HALPHA_FLUX"]
    ratio_truth = truth["NII6583_FLUX"] / truth["HALPHA_FLUX"]
    print(f"Halpha flux vs truth at SNR>=5: median bias {100 * np.nanmedian(df[good]):+.2f} %, "
          f"robust scatter {100 * _robust_std(df[good]):.2f} %; [NII]6583/Halpha: median bias "
          f"{np.nanmedian((ratio_fit - ratio_truth)[good]):+.3f}")
    print(f"median reduced chi2 {np.nanmedian(maps['CHI2']):.3f}")

    names = ["HALPHA_FLUX", "HALPHA_VELOCITY", "HALPHA_BROADENING", "NII6583/HALPHA"]
    fit_maps = dict(maps, **{"NII6583/HALPHA": ratio_fit})
    truth_maps = dict(truth, **{"NII6583/HALPHA": ratio_truth})
    errors = {n: maps[f"{n}_ERR"] for n in names[:3]}
    plot_truth_comparison(truth_maps, fit_maps, names, errors=errors, units=result.units, status=status,
                          extra={"SNR (truth)": snr, "HALPHA_VELOCITY_ERR": maps["HALPHA_VELOCITY_ERR"]},
                          wcs=result.wcs, path=out / "maps.png",
                          title="lucijax demo: synthetic SN3 cube of a rotating disk, MAP fit vs truth")
    # spectrum of the brightest converged pixel
    iy, ix = np.unravel_index(np.nanargmax(np.where(status == 0, snr, -1)), snr.shape)
    axis, model = result.model_spectrum(ix, iy)
    with lucijax.open_cube(path) as c:
        spectrum = c.read_spectra(ix, ix + 1, iy, iy + 1)[0, 0, result.bound.window]
    plot_spectrum_fit(axis, spectrum, model, unit="erg/cm2/s/A", path=out / "spectrum.png",
                      title=f"pixel x={ix} y={iy}: v={maps['HALPHA_VELOCITY'][iy, ix]:.1f} km/s")
    print(f"wrote {out / 'maps.fits'}, {out / 'maps.png'}, {out / 'spectrum.png'} in {time.time() - t0:.1f} s total")
    return 0
