"""``lucijax demo``: simulate a small SN3 cube, write it as an ORB HDF5 file, fit every
pixel, compare with the truth, write maps.fits and a figure."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DEMO_LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def run_demo(out: Path, size: int = 48, progress: bool = True) -> int:
    import lucijax
    from lucijax import simulate
    from lucijax.plots import plot_maps, plot_spectrum_fit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cube = simulate.make_cube(size, size, seed=42)
    path = cube.write(out / "demo_cube.hdf5")
    print(f"simulated a {size}x{size}x{cube.data.shape[2]} SN3 cube (5 lines, sincgauss, SNR 3-60): {path}")

    t1 = time.time()
    result = lucijax.fit(path, lucijax.Model(DEMO_LINES, profile="sincgauss"), lucijax.MAP(),
                         execution=lucijax.Execution(progress=progress))
    t_fit = time.time() - t1
    result.write(out)

    maps, truth = result.maps, cube.truth
    status = maps["STATUS"]
    snr = truth["SNR"]
    dv = maps["HALPHA_VELOCITY"] - truth["VELOCITY"]
    good = (snr >= 5) & np.isfinite(dv)
    pull = dv / maps["HALPHA_VELOCITY_ERR"]
    robust = lambda a: 1.4826 * np.nanmedian(np.abs(a - np.nanmedian(a)))  # noqa: E731
    print(f"fitted {status.size} spectra in {t_fit:.1f} s (compilation included)")
    print(f"status counts: {dict(zip(*[a.tolist() for a in np.unique(status, return_counts=True)]))} (0 = converged)")
    print(f"velocity vs truth at SNR>=5 ({good.sum()} px): median bias {np.nanmedian(dv[good]):+.2f} km/s, "
          f"robust scatter {robust(dv[good]):.2f} km/s, pull std {robust(pull[good]):.2f}")
    db = maps["HALPHA_BROADENING"] - truth["BROADENING"]
    print(f"broadening vs truth at SNR>=5: median bias {np.nanmedian(db[good]):+.2f} km/s, robust scatter {robust(db[good]):.2f} km/s")
    print(f"median reduced chi2 {np.nanmedian(maps['CHI2']):.3f}")

    names = ["HALPHA_FLUX", "HALPHA_VELOCITY", "HALPHA_BROADENING", "NII6583_FLUX", "HALPHA_VELOCITY_ERR", "STATUS"]
    plot_maps(maps, names, result.wcs, result.units, path=out / "maps.png", title="lucijax demo: synthetic SN3 cube")
    # spectrum of the brightest pixel
    iy, ix = np.unravel_index(np.nanargmax(np.where(status == 0, snr, -1)), snr.shape)
    axis, model = result.model_spectrum(ix, iy)
    with lucijax.open_cube(path) as c:
        spectrum = c.read_spectra(ix, ix + 1, iy, iy + 1)[0, 0, result.bound.window]
    plot_spectrum_fit(axis, spectrum, model, unit="erg/cm2/s/A", path=out / "spectrum.png",
                      title=f"pixel x={ix} y={iy}: v={maps['HALPHA_VELOCITY'][iy, ix]:.1f} km/s")
    print(f"wrote {out / 'maps.fits'}, {out / 'maps.png'}, {out / 'spectrum.png'} in {time.time() - t0:.1f} s total")
    return 0
