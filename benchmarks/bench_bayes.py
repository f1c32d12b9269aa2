#!/usr/bin/env python
"""Acceptance benchmark of the Bayesian fit (issue 5): coverage and R-hat, effective samples
per second against LUCI 2.0.1's emcee in the same run, MDN-informed versus broad priors, and
one- versus two-component selection by evidence.

Run from the repository root with the lucijax environment::

    /work/venv/bin/python benchmarks/bench_bayes.py --out /tmp/bayes --parts 1 2 3 4

Parts
-----
1. Synthetic SN3 region (``--size`` x ``--size`` >= 144 pixels, SNR 3-60, 5 lines,
   sincgauss): NUTS with the informed prior (the MDN that started the MAP fit, else MAP +-
   k x MAP error) -> fraction of pixels with the true velocity inside VELOCITY +-
   VELOCITY_ERR (target 62-74 %), fraction with R-hat <= 1.05 (target >= 95 %).
2. Effective samples per second per pixel, lucijax (each sampler, wall time of
   ``lucijax.sample`` over the region / pixels) against LUCI 2.0.1's emcee path
   (``luci_runner.py --bayes-emcee``: LUCI's own ``fit_pixel(bayes_bool=True)``, 2000
   walkers) on the same spectra, in the same run. ESS is numpyro's
   ``effective_sample_size`` of the velocity parameter for both (LUCI's walkers as chains,
   its 1/6 burn-in discarded).
3. Informed (option 1) vs broad priors (NUTS) vs option 2 (broad prior, MDN/MAP proposal,
   independence MH): time to 400 effective samples per pixel, velocity bias, coverage.
4. Two-component SN3 spectra (R ~ 5000, SNR 10, broadening 100 km/s, second component
   275 km/s away at half the amplitude) and one-component spectra: nested sampling of one
   and two components, fraction choosing correctly.

How: parts 1-3 fit the region's ORB file with ``lucijax.fit(cube, lucijax.Model(lines),
lucijax.MAP())`` (network start: the MDN's posterior is the informed prior and the MH
proposal), then sample it with ``lucijax.sample(cube, fit, sampler,
execution=lucijax.Execution(batch_size=...), samples=FILE)`` for each variant
(``lucijax.NUTS``, ``lucijax.MH``, ``lucijax.Ensemble`` with a ``lucijax.Prior``); the
draws go to an HDF5 file, read back for the velocity's ESS. The first call of each variant
(one batch per XLA device: compilation + those batches) is timed apart; the engine keeps
the compiled program for the timed call over the whole region. Part 4 puts its spectra in
an in-memory cube (``lucijax.io.MemoryCube``), fits it (``lucijax.MAP(start='matched')``
and ``lucijax.Components(n_components=2)``) and runs ``lucijax.sample(cube, fit,
lucijax.EvidenceSelection(estimator=lucijax.Nested(...)))``. The process uses one XLA CPU
device per core (``lucijax.set_cpu_devices()``) and the compilation cache
(``lucijax.enable_compilation_cache()``).

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
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LUCI_PYTHON = "/work/luci-venv/bin/python"
LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup_region(out: Path, size: int, seed: int):
    """Synthetic cube, its ORB file (with LUCI's attributes) opened, the model, the MAP fit
    (network start) and the truth; pixel (x, y) -> flat index x * size + y."""
    sys.path.insert(0, str(HERE))
    from bench_fit import add_luci_attrs

    import lucijax
    from lucijax.simulate import make_cube

    cube = make_cube(size, size, seed=seed)
    path = out / "bayes_cube.hdf5"
    cube.write(path)
    add_luci_attrs(str(path))
    c = lucijax.open_cube(path)
    model = lucijax.Model(LINES, profile="sincgauss")
    t = time.perf_counter()
    fit = lucijax.fit(c, model, lucijax.MAP(), execution=lucijax.Execution(progress=False))
    t_map = time.perf_counter() - t
    truth_v = cube.truth["VELOCITY"].T.reshape(-1)  # truth maps are [y, x]
    truth_snr = cube.truth["SNR"].T.reshape(-1)
    truth_flux = cube.truth["HALPHA_FLUX_CM1"].T.reshape(-1)  # redshift 0: the fit's frame
    return dict(truth_flux=truth_flux, cube=cube, path=path, open=c, model=model, fit=fit, size=size, n=size * size, out=out,
                truth_v=truth_v, snr=truth_snr, map_seconds=t_map, header=c.header)


def flatten(post, samples_path) -> dict:
    """The posterior fields of a PosteriorResult as flat arrays (pixel (x, y) -> x * ny + y),
    the draws ``samples`` (N, chains, draws, D) read back from ``samples_path``, and
    ``prior_source``."""
    from lucijax.results import read_samples

    nx, ny = post.computed.shape
    out = {}
    for k, v in post.posterior._asdict().items():
        if v is None or k == "samples":
            continue
        v = np.asarray(v)
        out[k] = v.reshape((nx * ny,) + v.shape[2:])
    draws, _ = read_samples(samples_path)
    out["samples"] = draws.reshape((nx * ny,) + draws.shape[2:])
    out["prior_source"] = post.cards.get("PRIORSRC")
    out["n_retried"] = post.cards.get("NRETRY", 0)  # pixels sampled again with longer chains
    out["compile_s"] = (post.timing or {}).get("compile_s", 0.0)  # both runs' compilation (the retry's program)
    return out


def run_bayes(reg, sampler, batch_size: int, n=None):
    """Posteriors of the first n pixels (flat order; default all) with ``lucijax.sample``;
    (flattened result, wall seconds)."""
    import lucijax

    view = reg["open"]
    if n is not None and n < reg["n"]:
        keep = np.zeros(reg["n"], bool)
        keep[:n] = True
        view = lucijax.views.mask(view, keep.reshape(reg["size"], reg["size"]).T, crop=False)  # mask is [y, x]
    samples = reg["out"] / f".samples_{os.getpid()}.h5"
    t = time.perf_counter()
    post = lucijax.sample(view, reg["fit"], sampler, execution=lucijax.Execution(batch_size=batch_size, progress=False),
                          samples=samples)
    secs = time.perf_counter() - t
    try:
        out = flatten(post, samples)
    finally:
        samples.unlink(missing_ok=True)
    return out, secs


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
        coverage_1sigma_halpha_flux=float(np.mean(np.abs(out["flux_cm1"][:, 0] - reg["truth_flux"])
                                                  <= out["flux_err_cm1"][:, 0])),
        rhat_le_105=float(np.mean(out["rhat_max"] <= 1.05)) if np.isfinite(out["rhat_max"]).any() else None,
        rhat_max_median=float(np.nanmedian(out["rhat_max"])),
        ess_min_median=float(np.nanmedian(out["ess_min"])),
        ess_min_p10=float(np.nanpercentile(out["ess_min"], 10)),
        pixels_per_s=float(n / secs),
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
        n_retried=int(out["n_retried"]), compile_s=float(out["compile_s"]),
        pixels_per_s_without_compile=float(n / max(secs - out["compile_s"], 1e-9)),
    )
    if "n_grad" in out:  # model evaluations (NUTS: leapfrog steps) per pixel, all chains: a cost the load does not change
        d["evaluations_per_pixel_median"] = float(np.nanmedian(out["n_grad"]))
        d["ess_min_per_1000_evaluations"] = float(1000 * np.nanmedian(out["ess_min"] / out["n_grad"]))
    log(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()))
    return d


def part_luci(reg, out: Path, n_pixels: int, steps: int | None, walkers: int | None):
    """LUCI 2.0.1's emcee on the first n_pixels of the region; ESS/s per pixel."""
    size = reg["size"]
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


def two_component_set(bound, n_two: int, n_one: int, snr: float, seed: int, *, snr_max: float | None = None,
                      separation_kms=(275.0, 275.0), broadening_kms=(100.0, 100.0), second_ratio: float = 0.5):
    """Spectra (window) with one or two components, their FWHM and truth (N).

    Defaults: part 4's set (SNR ``snr``, components 275 km/s apart, both 100 km/s broad).
    With ``snr_max``, a separation range or a broadening range (issue 16's acceptance 4:
    150-300 km/s, half the amplitude, SNR >= 10), those are drawn per spectrum (log-uniform
    SNR) from a second generator, so the default set stays what it was.
    """
    from lucijax.bayes.evidence import two_component_line_set
    from lucijax.simulate import render_spectra

    rng = np.random.default_rng(seed)
    ls2 = two_component_line_set(bound.line_set)
    n = n_two + n_one
    axis_obs = bound.axis_obs_cm1
    from lucijax.physics import instrument
    from lucijax.simulate import AXIS_CORR, SETUPS

    st = SETUPS["SN3"]
    fwhm = np.full(n, float(instrument.sinc_fwhm_cm1(st["step_nm"], st["step_nb"], st["zpd_index"], AXIS_CORR)))
    v1 = rng.uniform(-150, 50, n)
    extra = np.random.default_rng([seed, 1])
    sep = extra.uniform(*separation_kms, n)
    vel = np.stack([v1, v1 + sep], axis=1)
    broad = extra.uniform(*broadening_kms, (n, 2))
    snr_of = np.exp(extra.uniform(np.log(snr), np.log(snr_max or snr), n))
    noise = 1.0
    # primary amplitudes per component: Halpha = SNR x noise, [NII]6583 0.4, [SII] 0.15 each
    ratio = {"Halpha": 1.0, "NII6583": 0.4, "SII6716": 0.15, "SII6731": 0.15}
    base = np.array([ratio[bound.line_set.names[i]] for i in bound.line_set.primary_lines]) * noise
    n_prim = base.size
    amp = snr_of[:, None] * np.concatenate([base, second_ratio * base])[None, :]
    amp[n_two:, n_prim:] = 0.0  # one-component spectra: no second component
    clean = render_spectra(ls2, "sincgauss", axis_obs, fwhm, vel, broad, amp, np.zeros(n))
    y = (clean + rng.normal(0, noise, clean.shape)).astype(np.float32)
    truth_n = np.array([2] * n_two + [1] * n_one)
    return y, fwhm, truth_n


def spectra_cube(header, bound, y, fwhm):
    """An in-memory cube of window spectra ``y`` (N, n): pixel (i, 0) holds spectrum i (zero
    outside the window), with a calibration map that gives every pixel ``fwhm``."""
    from lucijax.description import pixel_fwhm_cm1
    from lucijax.io.memory import MemoryCube, replace_wcs
    from lucijax.physics import instrument

    n = y.shape[0]
    data = np.zeros((n, 1, header.n_channels), np.float32)
    data[:, 0, bound.window] = y
    ratio = float(fwhm[0]) / float(instrument.sinc_fwhm_cm1(header.step_nm, header.step_nb, header.zpd_index, 1.0))
    calib = np.full((n, 1), ratio * header.nm_laser)  # the sinc FWHM is proportional to the calibration coefficient
    cube = MemoryCube(data, replace_wcs(header, None), calib_map=calib, path="<two-component spectra>")
    got = np.broadcast_to(pixel_fwhm_cm1(cube.header, calib), (n, 1))[:, 0] * (1.0 + bound.redshift)
    if not np.allclose(got, fwhm, rtol=1e-6):
        raise RuntimeError(f"the cube's FWHM {got[0]} differs from the spectra's {fwhm[0]}")
    return cube


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
    p.add_argument("--mh-chains", type=int, default=4)
    p.add_argument("--mh-warmup", type=int, default=200, help="MH adaptation draws (pooled over the chains)")
    p.add_argument("--ensemble-steps", type=int, default=500)
    p.add_argument("--max-tree-depth", type=int, default=5)
    p.add_argument("--nuts-mass", default="laplace", choices=["laplace", "adapt"],
                   help="NUTS metric: the MAP's Laplace covariance (default) or numpyro's adapted diagonal")
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
    from lucijax.bayes import MH, NUTS, Ensemble, EvidenceSelection, Nested, Prior

    p.add_argument("--amplitude-scale", type=float, default=Prior().amplitude_scale,
                   help="parts 1-3: amplitude prior upper bound = this x max(max MAP amplitude, 3 noise)")
    p.add_argument("--evidence-amplitude-scale", type=float, default=EvidenceSelection().amplitude_scale,
                   help="part 4: the same bound for the evidence of 1 vs 2 components")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*JAXopt.*")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import jax

    import lucijax

    lucijax.set_cpu_devices()  # before any computation
    lucijax.enable_compilation_cache()
    record = dict(argv=sys.argv, started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  loadavg_start=os.getloadavg(), jax=jax.__version__, devices=[str(d) for d in jax.devices()])
    import numpyro

    record["numpyro"] = numpyro.__version__
    reg = None
    if {1, 2, 3} & set(args.parts):
        reg = setup_region(out, args.size, args.seed)
        record["n_pixels"] = reg["n"]
        record["map_seconds"] = reg["map_seconds"]
        log(f"region {args.size}x{args.size}, MAP fit {reg['map_seconds']:.1f} s")
    results = {}

    def prior(kind):
        return Prior(kind=kind, amplitude_scale=args.amplitude_scale)

    nuts = dict(num_warmup=args.num_warmup, num_samples=args.num_samples, max_tree_depth=args.max_tree_depth,
                mass=args.nuts_mass)
    mh = dict(num_chains=args.mh_chains, num_warmup=args.mh_warmup, num_samples=args.mh_samples)
    variants = {
        "nuts_informed": NUTS(**nuts, prior=prior("informed")),
        "nuts_adapt_informed": NUTS(**{**nuts, "mass": "adapt"}, prior=prior("informed")),
        "nuts_broad": NUTS(**nuts, prior=prior("broad")),
        "mh_option2": MH(**mh, prior=prior("broad")),
        "mh_informed": MH(**mh, prior=prior("informed")),
        "ensemble_informed": Ensemble(num_warmup=args.ensemble_steps, num_samples=args.ensemble_steps,
                                      prior=prior("informed")),
    }
    if 2 in args.parts:  # LUCI first (a subprocess on the same spectra), then lucijax
        record["luci"] = part_luci(reg, out, args.luci_pixels, args.luci_steps, args.luci_walkers)
        json.dump(record, open(out / "bench_bayes.json", "w"), indent=1, default=str)
    if {1, 2, 3} & set(args.parts):
        # the first call runs one batch per device, so that every device the timed call uses has compiled
        n_first = min(reg["n"], args.batch_size * len(jax.local_devices()))
        for name in args.variants:
            s = variants[name]
            t0 = time.perf_counter()
            run_bayes(reg, s, args.batch_size, n=n_first)  # compilation + the first batches
            t_compile = time.perf_counter() - t0
            o, secs = run_bayes(reg, s, args.batch_size)
            results[name] = stats(o, secs, reg, name)
            results[name]["first_call_seconds"] = t_compile
            results[name]["settings"] = f"{s!r}, batch_size={args.batch_size}"
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
        from lucijax.io.memory import MemoryCube

        if reg is not None:
            model, header = reg["model"], reg["header"]
        else:
            from lucijax.simulate import make_cube

            header = MemoryCube.from_synthetic(make_cube(2, 2, seed=1)).header
            model = lucijax.Model(args.components_lines, profile="sincgauss",
                                  window=(tuple(float(v) for v in args.components_window.split(":"))
                                          if args.components_window else None))
        bound = model.bind(header)
        n = args.n_components_pixels
        y, fwhm, truth_n = two_component_set(bound, n, n, snr=10.0, seed=args.seed + 1)
        cube2 = spectra_cube(header, bound, y, fwhm)
        quiet = lucijax.Execution(progress=False)
        fit1 = lucijax.fit(cube2, model, lucijax.MAP(start="matched"), execution=quiet)
        mf = {k: np.asarray(v)[:, 0] for k, v in fit1.fields.items()}  # spectrum i is pixel (i, 0)
        # best-fit log-likelihood gain of the second component (MAP fits, noise known = 1):
        # log Z2 - log Z1 = this - the Occam factor of the second component's parameters
        f2 = lucijax.fit(cube2, model, lucijax.Components(n_components=2), execution=quiet)
        n_chan, n_lin = y.shape[1], len(bound.line_set.primary_lines) + 1
        chi2_1 = mf["chi2_reduced"] * (n_chan - 2 - n_lin) * mf["noise"] ** 2
        chi2_2 = f2.fields["chi2_reduced"][:, 0] * (n_chan - 4 - 2 * n_lin + 1) * f2.fields["noise"][:, 0] ** 2
        dlogl_max = 0.5 * (chi2_1 - chi2_2)
        nested = Nested(num_live_points=args.live_points or None, slices_per_dim=args.nested_slices, num_samples=300)
        selection = EvidenceSelection(estimator=nested, amplitude_scale=args.evidence_amplitude_scale)
        batch = args.components_batch or 2 * n
        t0 = time.perf_counter()
        sel = lucijax.sample(cube2, fit1, selection, execution=lucijax.Execution(batch_size=batch, progress=False))
        secs = time.perf_counter() - t0
        one, two = sel.selection.one, sel.selection.two
        chose = np.asarray(sel.selection.n_components)[:, 0]
        logz1, logz2 = (np.asarray(a.logz, np.float64)[:, 0] for a in (one, two))
        dl = logz2 - logz1
        logz_err = np.concatenate([np.asarray(one.logz_err)[:, 0], np.asarray(two.logz_err)[:, 0]])
        r4 = dict(n_two=n, n_one=n, seconds_incl_compile=secs, lines=list(bound.line_set.names),
                  window_channels=int(y.shape[1]), batch=batch,
                  frac_two_when_two=float(np.mean(chose[:n] == 2)), frac_one_when_one=float(np.mean(chose[n:] == 1)),
                  dlogz_two_median=float(np.median(dl[:n])), dlogz_two_min=float(np.min(dl[:n])),
                  dlogz_one_median=float(np.median(dl[n:])), dlogz_one_max=float(np.max(dl[n:])),
                  logz_err_median=float(np.median(logz_err)),
                  map_noise_median=float(np.median(mf["noise"])), live_points=args.live_points,
                  nested_slices_per_dim=args.nested_slices, evidence_amplitude_scale=args.evidence_amplitude_scale,
                  dlogz=[float(v) for v in dl],
                  dlogl_max=[float(v) for v in dlogl_max],
                  occam_median_two=float(np.median(dlogl_max[:n] - dl[:n])))
        log("part 4: " + json.dumps(r4))
        record["components"] = r4
    if reg is not None:
        reg["open"].close()
    record["loadavg_end"] = os.getloadavg()
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    json.dump(record, open(out / "bench_bayes.json", "w"), indent=1, default=str)
    log(f"wrote {out / 'bench_bayes.json'}")


if __name__ == "__main__":
    main()
