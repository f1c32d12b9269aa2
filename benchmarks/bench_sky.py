#!/usr/bin/env python
"""Residuals of the four real M31 sky spectra (``../shared/data/orcs-m31-sky``) against the
noise (issue 2, acceptance 3): reduced chi2 and the statistics of the normalised residuals
for five fits of each spectrum, all with sinc sky lines:

1. ``--sky-lines sky_lines.orb --model sinc --uniform-weights``: OH lines only, constant
   continuum, every channel weighted alike (the default before 2026-11-26);
2. the acceptance's command ``--sky-lines sky_lines.orb --model sinc``: channels weighted
   by 1 / flambda (the noise of flux-calibrated FTS spectra follows flambda);
3. as 2 with a cubic B-spline continuum of 16 intervals (``--continuum-spline 16``,
   ~53 cm-1): these spectra carry M31 starlight and the flux calibration's filter edges,
   which a constant leaves in the residuals -- and so in the line-free noise estimate;
4. as 3 plus Halpha, [NII]6583/6548 and [SII]6716/6731 in a kinematic group of their own
   (the M31 gas in front of the sky: these spectra show it);
5. as 4 with ``--model sincgauss`` (the gas of a 2824-pixel region spans a range of
   velocities; the sky lines then get a broadening too).

For each: STATUS, velocities, the noise estimate, reduced chi2 (noise = robust std of the
line-free residuals), rms of residual / noise, lag-1 autocorrelation and kurtosis of the
residuals (white Gaussian noise: ~0 and 3).

    python benchmarks/bench_sky.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

GAS = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*JAXopt.*")
    # these files store an 'axis' dataset that is not their data's axis: the reader warns each time
    warnings.filterwarnings("ignore", message=".*attribute axis is used.*")
    import lucijax
    from lucijax.io import open_cube

    data = Path(args.data)
    sky_lines = data / "orb-lines" / "sky_lines.orb"
    print("| spectrum | fit | STATUS | velocities (km/s) | noise | chi2 | rms(res)/noise | lag-1 autocorr | kurtosis |")
    print("|---|---|---|---|---|---|---|---|---|")
    spline = dict(continuum_spline=16)
    fits = (("OH, uniform weights", None, dict(flambda_weights=False)), ("OH", None, {}),
            ("OH, spline 16", None, spline), ("OH + gas, spline 16", GAS, spline), ("OH + gas, spline 16, sincgauss", GAS, dict(spline, model="sincgauss")))
    for i in (0, 15, 23, 24):
        path = data / "orcs-m31-sky" / f"sky_spectrum_{i}.hdf5"
        for label, lines, options in fits:
            options = {"model": "sinc", **options}
            r = lucijax.fit_cube(path, lines, sky_lines=sky_lines, batch_size=8, progress=False, **options)
            s = r.summary()
            _, model = r.model_spectrum(0, 0)
            with open_cube(path) as c:
                y = c.read_spectra(0, 1, 0, 1)[0, 0][r.plan.window]
            # the noise of these flux-calibrated spectra follows flambda: residuals in units of
            # each channel's noise (the fit's weights; all 1 with --uniform-weights)
            ok, weight = (np.asarray(a) for a in r.plan.model.channel_mask(y))
            noise = float(r.raw["noise"][0, 0])
            res = ((y - model) * weight)[ok] / noise
            ac1 = np.corrcoef(res[:-1], res[1:])[0, 1]
            kurt = np.mean((res - res.mean()) ** 4) / np.var(res) ** 2
            v = ", ".join(f"{x:.1f}" for x in np.atleast_1d(r.raw["velocity_kms"][0, 0]))
            print(f"| {i} | {label} | {s['status']} | {v} | {noise:.3g} | {s['chi2']:.2f} | "
                  f"{np.sqrt(np.mean(res**2)):.2f} | {ac1:.2f} | {kurt:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
