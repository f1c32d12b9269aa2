#!/usr/bin/env python
"""Residuals of the four real M31 sky spectra (``../shared/data/orcs-m31-sky``) against the
noise (issue 2, acceptance 3): reduced chi2 and the statistics of the normalised residuals
for three fits of each spectrum:

1. ``--sky-lines sky_lines.orb --model sinc`` (the acceptance's command: OH lines only);
2. the same plus Halpha, [NII]6583/6548 and [SII]6716/6731 in a kinematic group of their
   own (the gas in front of the sky: these spectra show it);
3. as 2 with a cubic continuum.

For each: STATUS, velocities, reduced chi2 (noise = robust std of the line-free residuals),
rms of residual / noise, lag-1 autocorrelation and kurtosis of the residuals (white Gaussian
noise: ~0 and 3).

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
    import lucijax
    from lucijax.io import open_cube

    data = Path(args.data)
    sky_lines = data / "orb-lines" / "sky_lines.orb"
    print("| spectrum | fit | STATUS | velocities (km/s) | chi2 | rms(res)/noise | lag-1 autocorr | kurtosis |")
    print("|---|---|---|---|---|---|---|---|")
    for i in (0, 15, 23, 24):
        path = data / "orcs-m31-sky" / f"sky_spectrum_{i}.hdf5"
        for label, lines, order in (("OH", None, 0), ("OH + gas", GAS, 0), ("OH + gas, cubic continuum", GAS, 3)):
            r = lucijax.fit_cube(path, lines, sky_lines=sky_lines, model="sinc", continuum_order=order,
                                 batch_size=8, progress=False)
            s = r.summary()
            _, model = r.model_spectrum(0, 0)
            with open_cube(path) as c:
                y = c.read_spectra(0, 1, 0, 1)[0, 0][r.plan.window]
            ok = np.isfinite(y)
            res = (y - model)[ok] / float(r.raw["noise"][0, 0])
            ac1 = np.corrcoef(res[:-1], res[1:])[0, 1]
            kurt = np.mean((res - res.mean()) ** 4) / np.var(res) ** 2
            v = ", ".join(f"{x:.1f}" for x in np.atleast_1d(r.raw["velocity_kms"][0, 0]))
            print(f"| {i} | {label} | {s['status']} | {v} | {s['chi2']:.2f} | {np.sqrt(np.mean(res**2)):.2f} | "
                  f"{ac1:.2f} | {kurt:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
