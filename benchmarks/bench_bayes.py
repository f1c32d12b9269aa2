#!/usr/bin/env python
"""Acceptance benchmark of the Bayesian fit (issue 5): coverage and R-hat, effective samples
per second against LUCI 2.0.1's emcee in the same run, MDN-informed versus broad priors, and
one- versus two-component selection by evidence.

Run from the repository root with the lucijax environment::

    /work/venv/bin/python benchmarks/bench_bayes.py --out /tmp/bayes --parts 1 2 3 4

Parts
-----
1. Synthetic SN3 region (``--size`` x ``--size`` >= 144 pixels, SNR 3-60, 5 lines,
   sincgauss): NUTS with the informed prior (MDN if available, else MAP +- k x MAP error)
   -> fraction of pixels with the true velocity inside VELOCITY +- VELOCITY_ERR (target
   62-74 %), fraction with R-hat <= 1.05 (target >= 95 %).
2. Effective samples per second per pixel, lucijax (each sampler, whole batch wall time /
   pixels) against LUCI 2.0.1's emcee path (``luci_runner.py --bayes-emcee``: LUCI's own
   ``fit_pixel(bayes_bool=True)``, 2000 walkers) on the same spectra, in the same run.
   ESS is numpyro's ``effective_sample_size`` of the velocity parameter for both (LUCI's
   walkers as chains, its 1/6 burn-in discarded).
3. Informed (option 1) vs broad priors (NUTS) vs option 2 (broad prior, MDN/MAP proposal,
   independence MH): time to 400 effective samples per pixel, velocity bias, coverage.
4. Two-component SN3 spectra (R ~ 5000, SNR 10, broadening 100 km/s, second component
   275 km/s away at half the amplitude) and one-component spectra: nested sampling of one
   and two components, fraction choosing correctly.

Everything measured goes to ``OUT/bench_bayes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LUCI_PYTHON = "/work/luci-venv/bin/python"
LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup_region(out: Path, size: int, seed: int):
    """Synthetic cube, its ORB file (with LUCI's attributes), the plan, MAP fit, spectra."""
    sys.path.insert(0, str(HERE))
    from bench_fit import add_luci_attrs

    from lucijax.fit.cube import pixel_fwhm_cm1, plan_fit
    from lucijax.fit.map import PixelFit
    from lucijax.io import open_cube
    from lucijax.simulate import make_cube

    cube = make_cube(size, size, seed=seed)
    path = out / "bayes_cube.hdf5"
    cube.write(path)
    add_luci_attrs(str(path))
    with open_cube(path) as c:
        hdr = c.header
        spectra = c.read_spectra(0, size, 0, size)
        calib = c.read_calib_map(0, size, 0, size)
    plan = plan_fit(hdr, LINES, model="sincgauss")
    y = spectra[..., plan.window].reshape(size * size, -1)  # pixel (x, y) -> index x * size + y
    fwhm = np.broadcast_to(pixel_fwhm_cm1(hdr, calib), (size, size)).reshape(-1)
    t = time.perf_counter()
    mf = plan.fitter(y, fwhm)
    mf = {k: np.asarray(v) for k, v in zip(PixelFit._fields, mf)}
    t_map = time.perf_counter() - t
    truth_v = cube.truth["VELOCITY"].T.reshape(-1)  # truth maps are [y, x]
    truth_snr = cube.truth["SNR"].T.reshape(-1)
    return dict(cube=cube, path=path, plan=plan, y=y, fwhm=fwhm, map=mf, truth_v=truth_v, snr=truth_snr,
                map_seconds=t_map, header=hdr)


def run_bayes(reg, settings, n=None, **kw):
    """Bayesian fit of the first n pixels (default all); (summaries, wall seconds)."""
    from lucijax.fit.bayes import bayes_fit_spectra

    sl = slice(0, n)
    mf = {k: v[sl] for k, v in reg["map"].items()}
    t = time.perf_counter()
    out = bayes_fit_spectra(reg["plan"], reg["y"][sl], reg["fwhm"][sl], mf, settings, keep_samples=True,
                            progress=False, filter_name=reg["header"].filter_name, **kw)
    return out, time.perf_counter() - t


def ess_velocity(samples):
    """(N,) ESS of the velocity (raw parameter 0) of each pixel."""
    from numpyro.diagnostics import effective_sample_size

    return np.array([effective_sample_size(np.asarray(s[..., 0], np.float64)) for s in samples])


def stats(out, secs, reg, name):
    err = out["velocity_kms"][:, 0] - reg["truth_v"]
    within = np.abs(err) <= out["velocity_err_kms"][:, 0]
    n = len(err)
    ess_v = ess_velocity(out["samples"])
    per_pix = secs / n
    d = dict(
        name=name, n_pixels=n, seconds=secs, seconds_per_pixel=per_pix,
        coverage_1sigma=float(np.mean(within)),
        rhat_le_105=float(np.mean(out["rhat_max"] <= 1.05)) if np.isfinite(out["rhat_max"]).any() else None,
        rhat_max_median=float(np.nanmedian(out["rhat_max"])),
        ess_min_median=float(np.nanmedian(out["ess_min"])),
        ess_velocity_median=float(np.median(ess_v)),
        ess_velocity_per_s_per_pixel=float(np.median(ess_v) / per_pix),
        ess_min_per_s_per_pixel=float(np.nanmedian(out["ess_min"]) / per_pix),
        time_to_400_ess_min_s=float(400.0 / (np.nanmedian(out["ess_min"]) / per_pix)),
        time_to_400_ess_velocity_s=float(400.0 / (np.median(ess_v) / per_pix)),
        velocity_bias_median=float(np.median(err)), velocity_abs_err_median=float(np.median(np.abs(err))),
        velocity_err_median=float(np.median(out["velocity_err_kms"][:, 0])),
        pull_std_robust=float(1.4826 * np.median(np.abs(err / out["velocity_err_kms"][:, 0]))),
        accept_rate_median=float(np.nanmedian(out["accept_rate"])),
        n_divergent_total=int(np.sum(out["n_divergent"])), prior_source=out["prior_source"],
    )
    log(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()))
    return d


def part_luci(reg, out: Path, n_pixels: int, steps: int | None, walkers: int | None):
    """LUCI 2.0.1's emcee on the first n_pixels of the region; ESS/s per pixel."""
    size = int(round(np.sqrt(reg["y"].shape[0])))
    cmd = [LUCI_PYTHON, str(HERE / "luci_runner.py"), str(reg["path"]), "--region", f"0:1,0:{n_pixels}",
           "--bayes-emcee", "--out", str(out / "luci_emcee"), "--quiet"]
    if steps:
        cmd += ["--emcee-steps", str(steps)]
    if walkers:
        cmd += ["--emcee-walkers", str(walkers)]
    log("LUCI: " + " ".join(cmd))
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res.get("error"):
        raise RuntimeError(f"LUCI runner failed: {res['error']}\n{proc.stderr[-3000:]}")
    z = np.load(res["chains_file"])
    chains = z["chains"]  # (pixel, step, walker, param)
    from numpyro.diagnostics import effective_sample_size

    per = []
    for p in range(chains.shape[0]):
        c = chains[p]
        burn = c.shape[0] // 6
        vel = np.swapaxes(c[burn:, :, -3], 0, 1).astype(np.float64)  # (walker, step): LUCI's shift param
        moved = np.mean(np.any(np.diff(c[burn:], axis=0) != 0, axis=-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            ess = float(effective_sample_size(vel))
        # a frozen ensemble (no proposal ever accepted) has no effective samples; numpyro's
        # estimator returns an artefact for constant chains
        ess = 0.0 if (not np.isfinite(ess) or moved == 0) else ess
        per.append(dict(pixel=[int(v) for v in z["pixels"][p]], run_seconds=float(z["run_seconds"][p]),
                        fit_seconds=float(z["fit_seconds"][p]), ess_velocity=ess, fraction_of_moves_accepted=float(moved),
                        walker_spread_shift_cm1=float(np.std(c[-1, :, -3])),
                        walker_spread_shift_start_cm1=float(np.std(c[0, :, -3]))))
        log(f"LUCI pixel {per[-1]}")
    ess_rate = [q["ess_velocity"] / q["run_seconds"] for q in per]
    pix_index = [x * size + y for x, y in z["pixels"]]
    return dict(cmd=" ".join(cmd), wall_seconds=wall, emcee_steps=res["emcee_steps"],
                luci_emcee_steps=res["luci_emcee_steps"], walkers=res["emcee_walkers"], pixels=per,
                pixel_index=pix_index, ess_velocity_per_s_per_pixel_median=float(np.median(ess_rate)),
                ess_velocity_per_s_per_pixel_max=float(np.max(ess_rate)))


def two_component_set(plan, n_two: int, n_one: int, snr: float, seed: int):
    """Spectra (window) with one or two components, their FWHM and truth."""
    from lucijax.fit.bayes import two_component_line_set
    from lucijax.simulate import render_spectra

    rng = np.random.default_rng(seed)
    ls2 = two_component_line_set(plan.line_set)
    n = n_two + n_one
    axis_obs = (plan.grid.axis_rel_cm1 + plan.grid.ref_cm1) / (1.0 + plan.redshift)
    from lucijax.physics import instrument
    from lucijax.simulate import AXIS_CORR, SETUPS

    st = SETUPS["SN3"]
    fwhm = np.full(n, float(instrument.sinc_fwhm_cm1(st["step_nm"], st["step_nb"], st["zpd_index"], AXIS_CORR)))
    v1 = rng.uniform(-150, 50, n)
    vel = np.stack([v1, v1 + 275.0], axis=1)
    broad = np.full((n, 2), 100.0)
    noise = 1.0
    # primary amplitudes per component: Halpha = SNR x noise, [NII]6583 0.4, [SII] 0.15 each
    ratio = {"Halpha": 1.0, "NII6583": 0.4, "SII6716": 0.15, "SII6731": 0.15}
    base = np.array([ratio[plan.line_set.names[i]] for i in plan.line_set.primary_lines]) * snr * noise
    n_prim = base.size
    amp = np.concatenate([base, 0.5 * base])[None, :].repeat(n, axis=0)
    amp[n_two:, n_prim:] = 0.0  # one-component spectra: no second component
    clean = render_spectra(ls2, "sincgauss", axis_obs, fwhm, vel, broad, amp, np.zeros(n))
    y = (clean + rng.normal(0, noise, clean.shape)).astype(np.float32)
    truth_n = np.array([2] * n_two + [1] * n_one)
    return y, fwhm, truth_n


def _default_settings():
    from lucijax.fit.bayes import BayesSettings

    return BayesSettings()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_bayes_out")
    p.add_argument("--size", type=int, default=12, help="region side (size^2 >= 144 pixels)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--variants", nargs="+",
                   default=["mh_option2", "mh_informed", "nuts_informed", "nuts_broad", "ensemble_informed"],
                   help="sampler/prior variants run on the region (parts 1-3)")
    p.add_argument("--mh-samples", type=int, default=1000)
    p.add_argument("--ensemble-steps", type=int, default=500)
    p.add_argument("--max-tree-depth", type=int, default=5)
    p.add_argument("--luci-pixels", type=int, default=2)
    p.add_argument("--luci-steps", type=int, default=None, help="cap LUCI's 3000 emcee steps")
    p.add_argument("--luci-walkers", type=int, default=None)
    p.add_argument("--num-warmup", type=int, default=300)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=48, help="pixels per compiled batch (timed runs reuse it)")
    p.add_argument("--n-components-pixels", type=int, default=24, help="part 4: spectra of each kind")
    p.add_argument("--live-points", type=int, default=50, help="part 4: nested live points (0: 25 x parameters)")
    p.add_argument("--components-lines", nargs="+", default=LINES, help="part 4: lines (without parts 1-3)")
    p.add_argument("--components-window", default=None, help="part 4: fit window SMIN:SMAX cm-1")
    p.add_argument("--components-batch", type=int, default=None, help="part 4: spectra per nested batch")
    p.add_argument("--nested-slices", type=float, default=1.0, help="part 4: jaxns slice steps per new point per dimension")
    defaults = _default_settings()
    p.add_argument("--amplitude-scale", type=float, default=defaults.amplitude_scale,
                   help="parts 1-3: amplitude prior upper bound = this x max(max MAP amplitude, 3 noise)")
    p.add_argument("--evidence-amplitude-scale", type=float, default=defaults.evidence_amplitude_scale,
                   help="part 4: the same bound for the evidence of 1 vs 2 components")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*JAXopt.*")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import jax

    from lucijax.fit.bayes import BayesSettings, select_components

    record = dict(argv=sys.argv, started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  loadavg_start=os.getloadavg(), jax=jax.__version__, devices=[str(d) for d in jax.devices()])
    import numpyro

    record["numpyro"] = numpyro.__version__
    base = BayesSettings(num_warmup=args.num_warmup, num_samples=args.num_samples, batch_size=args.batch_size,
                         max_tree_depth=args.max_tree_depth, amplitude_scale=args.amplitude_scale,
                         evidence_amplitude_scale=args.evidence_amplitude_scale)
    reg = None
    if {1, 2, 3} & set(args.parts):
        reg = setup_region(out, args.size, args.seed)
        record["n_pixels"] = int(reg["y"].shape[0])
        record["map_seconds"] = reg["map_seconds"]
        log(f"region {args.size}x{args.size}, MAP fit {reg['map_seconds']:.1f} s")
    results = {}
    variants = {
        "nuts_informed": replace(base, sampler="nuts", prior="informed"),
        "nuts_broad": replace(base, sampler="nuts", prior="broad"),
        "mh_option2": replace(base, sampler="mh", num_chains=4, num_warmup=200, num_samples=args.mh_samples),
        "mh_informed": replace(base, sampler="mh", prior="informed", num_chains=4, num_warmup=200,
                               num_samples=args.mh_samples),
        "ensemble_informed": replace(base, sampler="ensemble", prior="informed", num_warmup=args.ensemble_steps,
                                     num_samples=args.ensemble_steps),
    }
    if 2 in args.parts:  # LUCI first (a subprocess on the same spectra), then lucijax
        record["luci"] = part_luci(reg, out, args.luci_pixels, args.luci_steps, args.luci_walkers)
        json.dump(record, open(out / "bench_bayes.json", "w"), indent=1, default=str)
    if {1, 2, 3} & set(args.parts):
        for name in args.variants:
            s = variants[name]
            t0 = time.perf_counter()
            run_bayes(reg, s, n=s.batch_size)  # first batch alone: compilation + one batch
            t_compile = time.perf_counter() - t0
            o, secs = run_bayes(reg, s)
            results[name] = stats(o, secs, reg, name)
            results[name]["first_call_seconds"] = t_compile
            results[name]["settings"] = repr(s)
            np.savez(out / f"{name}_maps.npz", **{k: v for k, v in o.items() if isinstance(v, np.ndarray) and k != "samples"})
            json.dump({**record, "results": results}, open(out / "bench_bayes.json", "w"), indent=1, default=str)
    record["results"] = results
    if 2 in args.parts:
        luci = record["luci"]
        for name, r in results.items():
            ratio = r["ess_velocity_per_s_per_pixel"] / max(luci["ess_velocity_per_s_per_pixel_max"], 1e-300)
            r["ratio_vs_luci_ess_per_s"] = ratio
            log(f"{name}: ESS(v)/s/pixel {r['ess_velocity_per_s_per_pixel']:.3g} vs LUCI {luci['ess_velocity_per_s_per_pixel_max']:.3g}")
        json.dump(record, open(out / "bench_bayes.json", "w"), indent=1, default=str)
    if 4 in args.parts:
        from lucijax.fit.cube import plan_fit
        from lucijax.fit.map import PixelFit

        if reg is not None:
            plan = reg["plan"]
        else:
            from lucijax.io import open_cube
            from lucijax.simulate import make_cube

            c = make_cube(2, 2, seed=1)
            c.write(out / "tiny.hdf5")
            with open_cube(out / "tiny.hdf5") as cc:
                plan = plan_fit(cc.header, args.components_lines, model="sincgauss",
                                window_cm1=(tuple(float(v) for v in args.components_window.split(":"))
                                            if args.components_window else None))
        n = args.n_components_pixels
        y, fwhm, truth_n = two_component_set(plan, n, n, snr=10.0, seed=args.seed + 1)
        mf = {k: np.asarray(v) for k, v in zip(PixelFit._fields, plan.fitter(y, fwhm))}
        # best-fit log-likelihood gain of the second component (MAP fits, noise known = 1):
        # log Z2 - log Z1 = this - the Occam factor of the second component's parameters
        from lucijax.fit.components import ComponentSettings, plan_components

        f2 = plan_components(plan, ComponentSettings(n_components=2)).fitter(y, fwhm)
        n_chan, n_lin = y.shape[1], len(plan.line_set.primary_lines) + 1
        chi2_1 = mf["chi2_reduced"] * (n_chan - 2 - n_lin) * mf["noise"] ** 2
        chi2_2 = np.asarray(f2.chi2_reduced) * (n_chan - 4 - 2 * n_lin + 1) * np.asarray(f2.noise) ** 2
        dlogl_max = 0.5 * (chi2_1 - chi2_2)
        s = replace(base, sampler="nested", num_live_points=args.live_points, nested_slices_per_dim=args.nested_slices,
                    batch_size=args.components_batch or 2 * n, num_samples=300)
        t0 = time.perf_counter()
        sel = select_components(plan, y, fwhm, mf, s, progress=False)
        secs = time.perf_counter() - t0
        chose = sel["n_components"]
        dl = sel["logz2"] - sel["logz1"]
        r4 = dict(n_two=n, n_one=n, seconds_incl_compile=secs, lines=list(plan.line_set.names),
                  window_channels=int(y.shape[1]), batch=s.batch_size,
                  frac_two_when_two=float(np.mean(chose[:n] == 2)), frac_one_when_one=float(np.mean(chose[n:] == 1)),
                  dlogz_two_median=float(np.median(dl[:n])), dlogz_two_min=float(np.min(dl[:n])),
                  dlogz_one_median=float(np.median(dl[n:])), dlogz_one_max=float(np.max(dl[n:])),
                  logz_err_median=float(np.median(np.concatenate([sel["logz1_err"], sel["logz2_err"]]))),
                  map_noise_median=float(np.median(mf["noise"])), live_points=args.live_points,
                  nested_slices_per_dim=args.nested_slices, evidence_amplitude_scale=args.evidence_amplitude_scale,
                  dlogz=[float(v) for v in dl],
                  dlogl_max=[float(v) for v in dlogl_max],
                  occam_median_two=float(np.median(dlogl_max[:n] - dl[:n])))
        log("part 4: " + json.dumps(r4))
        record["components"] = r4
    record["loadavg_end"] = os.getloadavg()
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    json.dump(record, open(out / "bench_bayes.json", "w"), indent=1, default=str)
    log(f"wrote {out / 'bench_bayes.json'}")


if __name__ == "__main__":
    main()
