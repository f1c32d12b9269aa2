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
   (the M31 gas in front of the sky: these spectra show it), ``--iterations 16``;
5. as 4 with ``--model sincgauss`` (the gas of a 2824-pixel region spans a range of
   velocities; the sky lines then get a broadening too).

Two noise references:

* the fit's own: robust std of its line-free residuals (a sky spectrum has lines
  everywhere, so: of all its residuals, studentized), which takes in what the model misses;
* the noise window ``--noise-window 14250:14510`` below the SN3 band (14599-15439 cm-1),
  where the FTS spectrum holds noise only: independent of the model. A second table shows
  its robust std in sub-windows: near the start of each file's data (the integrated
  spectrum sums pixels whose axes do not all reach there) and near the filter edge (light
  leaking through the filter's wings) it is not the same, so it is a reference good to
  ~20 %, not better.

For each fit: STATUS, velocities, reduced chi2 against either noise, rms of the residuals /
window noise, lag-1 autocorrelation of the residuals, and a local reduced chi2 (window
noise; sum of squared residuals / sum of (1 - leverage), leverage = diagonal of the fit's
hat matrix) in three sets of channels: within 1 FWHM of an OH line brighter than 5 noise;
within 4 FWHM of an M31 gas line (at the gas group's velocity, else -300 km/s) or 2 FWHM of
Halpha in the sky's frame (geocoronal and Galactic Halpha fall on the OH line at 6562.76 A);
and the rest.

    python benchmarks/bench_sky.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import numpy as np

GAS = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
GAS_NM = np.array([656.28, 658.345, 654.986, 671.644, 673.081])
C_KMS = 299792.458
NOISE_WINDOW = "14250:14510"
SUB_WINDOWS = ((14250.0, 14400.0), (14400.0, 14510.0), (15510.0, 15861.0))


def leverage(result, y) -> tuple[np.ndarray, np.ndarray]:
    """(valid channels, leverage of each valid channel) of the fit of pixel (0, 0): the
    diagonal of the hat matrix of all its parameters (velocities, broadenings, linear)."""
    import jax
    import jax.numpy as jnp

    bound, f = result.bound, result.fields
    line_model = bound.line_model
    v = np.atleast_1d(f["velocity_kms"][0, 0])
    theta = np.concatenate([v, f["broadening_kms"][0, 0]]) if bound.spec.has_broadening else v
    theta = jnp.asarray(theta, jnp.float32)
    alpha = jnp.asarray(f["linear"][0, 0], jnp.float32)
    fwhm = jnp.float32(result.fwhm_cm1[0, 0])
    ok, weight = (np.asarray(a) for a in line_model.channel_mask(jnp.asarray(y)))
    jac = np.concatenate([np.asarray(jax.jacfwd(lambda t: line_model.spectrum(t, alpha, fwhm))(theta)),
                          np.asarray(line_model.design_matrix(theta, fwhm))], axis=1) * weight[:, None]
    jac = jac[ok].astype(np.float64)
    jac /= np.maximum(np.linalg.norm(jac, axis=0), 1e-300)
    u, s, _ = np.linalg.svd(jac, full_matrices=False)
    u = u[:, s > 1e-8 * s[0]]
    return ok, np.sum(u**2, axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*JAXopt.*")
    # these files store an 'axis' dataset that is not their data's axis: the reader warns each time
    warnings.filterwarnings("ignore", message=".*attribute axis is used.*")
    import lucijax
    from lucijax.description import window_noise
    from lucijax.io import open_cube
    from lucijax.model import channel_weights

    lucijax.set_cpu_devices()
    lucijax.enable_compilation_cache()
    data = Path(args.data)
    sky_lines = data / "orb-lines" / "sky_lines.orb"
    spline = dict(continuum_spline=16)
    more = dict(max_iter=16)  # MAP options; the rest are Model options
    fits = (("OH, uniform weights", None, dict(flambda_weights=False)), ("OH", None, {}),
            ("OH, spline 16", None, spline), ("OH + gas, spline 16", GAS, dict(spline, **more)),
            ("OH + gas, spline 16, sincgauss", GAS, dict(spline, profile="sincgauss", **more)))
    quiet = lucijax.Execution(batch_size=8, progress=False)
    print(f"noise window {NOISE_WINDOW} cm-1; local chi2 against the window noise\n")
    print("| spectrum | fit | STATUS | velocities (km/s) | chi2 (own noise) | chi2 (window noise) | rms(res) / window noise "
          "| lag-1 autocorr | bright OH | gas (M31; Halpha at 0 km/s) | rest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sub_rows = []
    for i in (0, 15, 23, 24):
        path = data / "orcs-m31-sky" / f"sky_spectrum_{i}.hdf5"
        with open_cube(path) as c:
            full = c.read_spectra(0, 1, 0, 1)[0, 0]
            axis_full = c.header.axis_cm1
            shape_full = c.header.noise_shape()  # relative noise of every channel (flambda)
        for label, lines, options in fits:
            options = {"profile": "sinc", **options}
            solver = lucijax.MAP(max_iter=options.pop("max_iter", lucijax.MAP().max_iter))
            model = lucijax.Model(lines, sky_lines=sky_lines, **options)
            own = lucijax.fit(path, model, solver, execution=quiet)
            r = lucijax.fit(path, dataclasses.replace(model, noise_window=NOISE_WINDOW), solver, execution=quiet)
            s = r.summary()
            _, model_y = r.model_spectrum(0, 0)
            y = full[r.bound.window]
            ok, lev = leverage(r, y)
            weight = np.asarray(r.bound.line_model.channel_mask(y)[1])
            noise = float(r.fields["noise"][0, 0])
            res = ((y - model_y) * weight)[ok] / noise  # in units of each channel's (window) noise
            ac1 = np.corrcoef(res[:-1], res[1:])[0, 1]
            # channel sets: bright OH lines, M31 gas, the rest
            axis = (r.bound.grid.axis_rel_cm1 + r.bound.grid.ref_cm1)[ok] / (1.0 + r.bound.redshift)
            fwhm = float(r.fwhm_cm1[0, 0])
            ls = r.bound.line_set
            v = np.atleast_1d(r.fields["velocity_kms"][0, 0])
            groups = np.asarray(ls.groups)
            pos = 1e7 / np.asarray(ls.rest_nm) * (1.0 - v[groups] / C_KMS)
            amp = np.asarray(r.fields["amplitude"][0, 0]) / noise
            v_gas = v[1] if v.size > 1 else -300.0
            near_gas = np.min(np.abs(axis[:, None] - 1e7 / GAS_NM[None, :] * (1.0 - v_gas / C_KMS)), axis=1) < 4 * fwhm
            # geocoronal and Galactic Halpha sit on the OH line at 6562.76 A (sky frame, ~0 km/s)
            near_gas |= np.abs(axis - 1e7 / GAS_NM[0] * (1.0 - v[0] / C_KMS)) < 2 * fwhm
            sky = (groups == 0) & (amp > 5)
            bright = np.any(np.abs(axis[:, None] - pos[None, sky]) < fwhm, axis=1) & ~near_gas
            local = [np.sum(res[m] ** 2) / np.sum(1.0 - lev[m]) for m in (bright, near_gas, ~bright & ~near_gas)]
            vel = ", ".join(f"{x:.1f}" for x in v)
            print(f"| {i} | {label} | {s['status']} | {vel} | {own.summary()['chi2']:.2f} | {s['chi2']:.2f} | "
                  f"{np.sqrt(np.mean(res**2)):.2f} | {ac1:.2f} | {local[0]:.2f} ({bright.sum()}) | "
                  f"{local[1]:.2f} ({near_gas.sum()}) | {local[2]:.2f} ({(~bright & ~near_gas).sum()}) |", flush=True)
        # the window noise in sub-windows, weighted as the fit's (relative to its window's median channel)
        sub = []
        for lo, hi in SUB_WINDOWS:
            sel = np.flatnonzero((axis_full >= lo) & (axis_full <= hi))
            w = channel_weights(shape_full[sel] / np.nanmedian(shape_full[r.bound.window]))
            usable = np.sum((full[sel] != 0) & np.isfinite(full[sel]))
            sub.append(f"{window_noise(full[sel], w):.3g} ({usable})")
        sub_rows.append(f"| {i} | {noise:.3g} | " + " | ".join(sub) + " |")
    print("\nrobust std of the spectrum over out-of-band windows (usable channels), in the window noise's units\n")
    print("| spectrum | " + NOISE_WINDOW + " | " + " | ".join(f"{lo:.0f}:{hi:.0f}" for lo, hi in SUB_WINDOWS) + " |")
    print("|---|---|" + "---|" * len(SUB_WINDOWS))
    for row in sub_rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
