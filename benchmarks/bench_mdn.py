#!/usr/bin/env python
"""Acceptance of the network (issue 4): accuracy and calibration, inference speed, and the
MAP fit started and bounded by the MDN against the matched-filter start.

Usage (repository root, lucijax's environment)::

    python benchmarks/bench_mdn.py                 # all three parts
    python benchmarks/bench_mdn.py --parts 1 2     # skip the fits
    python benchmarks/bench_mdn.py --out /tmp/bench_mdn   # + bench_mdn.json

1. Accuracy: for every shipped network (``lucijax.mdn.available_filters``, MDN and CNN),
   ``--n-eval`` held-out spectra of its training recipe simulated with the seed the
   training used + ``EVAL_SEED_OFFSET`` (never seen in training): RMSE of velocity and
   broadening, fraction of truths inside mean +- 3 sigma, robust std (1.4826 MAD) of the
   z-scores (truth - mean)/sigma, at SNR >= 10 and per SNR bin; for SN3 also per
   resolution bin at SNR >= 10.
2. Speed: ``jax.jit(jax.vmap(load_predictor('SN3', axis)))`` on 16384 spectra of the SN3
   band (840-channel cube, 401-channel window), compile excluded, best of 5; also with the
   batch sharded over every local XLA device.
3. Fits: ``make_cube(64, 64, seed=20240611)`` (SN3, 5 lines, sincgauss), fitted twice in
   batches of 256 by the fit of one spectrum (:func:`lucijax.solvers.fitting.fit_spectrum`
   on the model bound to the cube, ``lucijax.Model(lines).bind(header)``, with
   ``lucijax.MAP().settings``), ``jax.jit(jax.vmap(...))``-ed on one device: the
   matched-filter start (:func:`lucijax.solvers.map.matched_one`: bounds = the model's
   ranges) and a start at the MDN mean with bounds mean -+ 3 sigma clipped to velocity
   +-600 km/s and broadening 0-300 km/s (the raw network start, without the guard of
   ``lucijax.MAP(start='mdn')``). Reported: fraction of pixels with
   |v - truth| > 50 km/s at SNR 3-5 (and at SNR >= 5), at SNR >= 5 the median velocity
   error (bias), robust std of the velocity errors and of the pulls (error / velocity_err),
   status counts (STATUS 3 = at a bound), and the throughput of both (MDN inference
   included in the MDN run). A third run uses the MDN only where its sigma_v <=
   ``--fallback-sigma`` km/s and the matched-filter start elsewhere.

4. Calibration on the INDEPENDENT simulator (``--filters C1 C2 C3 C4``, default every
   shipped MDN): ``--n-eval`` spectra of each network's lines drawn by
   :func:`lucijax.network_calibration.independent_spectra` (``lucijax.simulate.render_spectra``
   on the observed band axis of the filter's synthetic set-up, C3 at z = 0.08 and C4 at
   z = 0.235, velocity +-400 km/s, broadening 0-150 km/s, SNR 2-100) and read through
   ``load_predictor`` as a fit reads them: the same table as part 1.

The process splits the CPU into one XLA device per core (``lucijax.set_cpu_devices()``,
for the sharded run of part 2) and keeps compiled programs on disk
(``lucijax.enable_compilation_cache()``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def robust_std(x):
    x = np.asarray(x, np.float64)
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def part1(n_eval: int, log, filters=None):
    from lucijax.mdn import available_filters, load_network
    from lucijax.mdn.train import evaluation_set, format_table, metrics, predict_features, snr_rows

    out = {}
    for mdn in (True, False):
        for filt in available_filters(mdn):
            if filters and filt not in filters:
                continue
            cfg, params = load_network(filt, mdn)
            recipe, net_cfg = cfg["recipe"], cfg["net"]
            t0 = time.perf_counter()
            ev = evaluation_set(recipe, cfg["train"]["seed"], n_eval)
            mean, sigma = predict_features(recipe, net_cfg, params, ev["x"], ev["scalars"])
            rows = snr_rows(ev, mean, sigma)
            if filt == "SN3":
                r = ev["resolution"]
                edges = [1000, 2000, 3500, 5000, 7000, 10000]
                for lo, hi in zip(edges[:-1], edges[1:]):
                    rows.append((f"SNR >= 10, R {lo}-{hi}", metrics(ev["theta"], mean, sigma, (ev["snr"] >= 10) & (r >= lo) & (r < hi))))
            kind = "MDN" if mdn else "CNN"
            log(f"\n### {filt} {kind}: {n_eval} held-out spectra (R {recipe.resolution_range[0]:.0f}-"
                f"{recipe.resolution_range[1]:.0f}, v {recipe.velocity_range_kms}, b {recipe.broadening_range_kms}) "
                f"[{time.perf_counter() - t0:.0f} s]\n")
            log(format_table(rows))
            out[f"{filt}_{kind.lower()}"] = {label: m for label, m in rows}
    return out


def part4(filters, n_eval: int, log, seed: int = 4):
    from lucijax.mdn import available_filters, load_network
    from lucijax.network_calibration import independent_spectra, predict_independent
    from lucijax.mdn.train import format_table, snr_rows
    from lucijax.physics.lines import LINE_CATALOGUE_NM
    from lucijax.simulate import SETUPS

    out = {}
    for filt in filters or [f for f in available_filters(True) if f in SETUPS]:
        t0 = time.perf_counter()
        data = independent_spectra(filt, n_eval, seed)
        mean, sigma = predict_independent(filt, data)
        rows = snr_rows(data, mean, sigma)
        ref = load_network(filt, True)[0]["recipe"].lines[0]
        r = 1e7 / LINE_CATALOGUE_NM[ref] / (1 + data["redshift"]) / float(np.median(data["fwhm_cm1"]))
        log(f"\n### {filt} MDN on the independent simulator: {n_eval} spectra (z = {data['redshift']:g}, "
            f"{data['axis'].size} channels, R = {r:.0f} at {ref}) [{time.perf_counter() - t0:.0f} s]\n")
        log(format_table(rows))
        out[filt] = {label: m for label, m in rows}
    return out


def sn3_cube_axis():
    from lucijax.physics import instrument
    from lucijax.simulate import filter_header

    header = filter_header("SN3")
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]
    lo, hi = instrument.get_filter("SN3").band_cm1
    return axis[(axis >= lo) & (axis <= hi)]


def part2(log, n=16384, repeats=5):
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from lucijax.mdn import load_predictor

    axis = sn3_cube_axis()
    predict = load_predictor("SN3", axis)
    rng = np.random.default_rng(0)
    x0 = 15237.0 + rng.uniform(-20, 20, n)
    y = (rng.normal(0, 1, (n, axis.size)) + 30 * np.exp(-0.5 * ((axis[None, :] - x0[:, None]) / 1.5) ** 2)).astype(np.float32)
    fwhm = np.full(n, 3.2, np.float32)
    f = jax.jit(jax.vmap(predict))
    res = {}

    def timeit(fn, *args):
        """(best wall rate, rate per CPU-second of this process over all repeats)."""
        jax.block_until_ready(fn(*args))  # compile
        best = np.inf
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best = min(best, time.perf_counter() - t)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        return n / best, n * repeats / cpu, cpu / wall

    yj, fj = jnp.asarray(y), jnp.asarray(fwhm)
    res["one_device_spectra_per_s"], res["one_device_per_cpu_s"], res["one_device_cores_used"] = timeit(f, yj, fj)
    devs = jax.local_devices()
    if len(devs) > 1:
        mesh = Mesh(np.array(devs), ("b",))
        sh = NamedSharding(mesh, PartitionSpec("b"))
        res["sharded_spectra_per_s"], res["sharded_per_cpu_s"], res["sharded_cores_used"] = timeit(
            f, jax.device_put(yj, sh), jax.device_put(fj, sh))
    res["n_devices"] = len(devs)
    res["n_channels"] = int(axis.size)
    res["load_average"] = os.getloadavg()[0]
    log(f"\n### Inference speed (SN3, {n} spectra of {axis.size} channels, jit+vmap, compile excluded, best of {repeats})\n")
    log(f"one XLA device: {res['one_device_spectra_per_s']:.0f} spectra/s wall "
        f"({res['one_device_per_cpu_s']:.0f} per CPU-second, {res['one_device_cores_used']:.2f} cores busy)")
    if "sharded_spectra_per_s" in res:
        log(f"sharded over {len(devs)} XLA CPU devices: {res['sharded_spectra_per_s']:.0f} spectra/s wall "
            f"({res['sharded_per_cpu_s']:.0f} per CPU-second, {res['sharded_cores_used']:.2f} cores busy)")
    log(f"(load average at the end: {res['load_average']:.2f}; {os.cpu_count()} CPUs)")
    return res


def part3(log, size=64, seed=20240611, batch=256, fallback_sigma_kms=20.0):
    import jax
    import jax.numpy as jnp

    import lucijax
    from lucijax.io import open_cube
    from lucijax.mdn import load_predictor
    from lucijax.simulate import DEFAULT_LINES, make_cube
    from lucijax.solvers.fitting import fit_spectrum
    from lucijax.solvers.map import matched_one
    from lucijax.status import Status

    cube = make_cube(size, size, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.hdf5")
        cube.write(path)
        with open_cube(path) as c:
            header = c.header
    bound = lucijax.Model(list(DEFAULT_LINES), profile="sincgauss").bind(header)
    settings = lucijax.MAP().settings(bound.model)
    nx, ny, nch = cube.data.shape
    y = cube.data.reshape(nx * ny, nch)[:, bound.window]  # pixel i = x * ny + y
    fwhm = cube.fwhm_cm1.reshape(-1).astype(np.float32)
    truth_v = cube.truth["VELOCITY"].T.ravel()
    snr = cube.truth["SNR"].T.ravel()
    n = y.shape[0]
    lo_phys = np.array([-600.0, 0.0], np.float32)
    hi_phys = np.array([600.0, 300.0], np.float32)

    predict = jax.jit(jax.vmap(load_predictor("SN3", header.axis_cm1[bound.window], bound.redshift)))
    # the fit of a batch: matched-filter start over the model's ranges, or a given start and bounds
    fit_mf = jax.jit(jax.vmap(matched_one(bound, settings)))
    fit_start = jax.jit(jax.vmap(lambda yy, ff, t, lo, hi: fit_spectrum(bound.line_model, settings, yy, ff, t, lo, hi)))

    def fitter(yb, fb, start=None, lo=None, hi=None):
        yb, fb = jnp.asarray(yb, jnp.float32), jnp.asarray(fb, jnp.float32)
        if start is None:
            return fit_mf(yb, fb)
        return fit_start(yb, fb, *(jnp.asarray(a, jnp.float32) for a in (start, lo, hi)))

    def mdn_start(yb, fb):
        mean, sigma = predict(jnp.asarray(yb), jnp.asarray(fb))
        mean, sigma = np.asarray(mean), np.asarray(sigma)
        lo = np.clip(mean - 3 * sigma, lo_phys, hi_phys)
        hi = np.clip(mean + 3 * sigma, lo_phys, hi_phys)
        hi = np.maximum(hi, lo + np.array([1.0, 1.0], np.float32))  # never an empty box
        start = np.clip(mean, lo, hi)
        return start, lo, hi, mean, sigma

    def fit_batches(idx, mode):
        """Fit pixels ``idx`` in batches of ``batch`` (the last padded by repeating a pixel).
        mode: 'mf' (matched-filter start, default bounds) or 'mdn'."""
        outs, extra = [], []
        for i in range(0, len(idx), batch):
            sl = idx[i : i + batch]
            pad = np.concatenate([sl, np.repeat(sl[-1:], batch - len(sl))])
            yb, fb = y[pad], fwhm[pad]
            if mode == "mdn":
                s, lo, hi, mean, sigma = mdn_start(yb, fb)
                outs.append((len(sl), fitter(yb, fb, s, lo, hi)))
                extra.append((mean[: len(sl)], sigma[: len(sl)]))
            else:
                outs.append((len(sl), fitter(yb, fb)))
        jax.block_until_ready([o for _, o in outs])
        cat = lambda f: np.concatenate([np.asarray(f(o))[:m] for m, o in outs])  # noqa: E731
        return cat(lambda o: o.velocity_kms[:, 0]), cat(lambda o: o.velocity_err_kms[:, 0]), cat(lambda o: o.status), extra

    everything = np.arange(n)

    def run(strategy):
        # warm-up (compile) on one batch of each path, then time the whole cube
        for mode in ("mf", "mdn"):
            if strategy in (mode, "fallback"):
                fit_batches(everything[:batch], mode)
        t = time.perf_counter()
        if strategy == "fallback":  # MDN where it is confident, matched filter elsewhere
            mean, sigma = (np.asarray(a) for a in predict(jnp.asarray(y), jnp.asarray(fwhm)))
            sure = sigma[:, 0] <= fallback_sigma_kms
            v, ve, st = np.empty(n), np.empty(n), np.empty(n, np.int32)
            extra = []
            for sel, mode in ((np.nonzero(sure)[0], "mdn"), (np.nonzero(~sure)[0], "mf")):
                if sel.size:
                    a, b, c, _ = fit_batches(sel, mode)
                    v[sel], ve[sel], st[sel] = a, b, c
            extra = [(mean, sigma)]
        else:
            v, ve, st, extra = fit_batches(everything, strategy)
        dt = time.perf_counter() - t
        return v, ve, st, n / dt, extra

    res = {}
    names = {"mf": "matched-filter start", "mdn": "MDN start + bounds",
             "fallback": f"MDN if sigma_v <= {fallback_sigma_kms:g}, else matched filter"}
    for strategy, name in names.items():
        v, ve, st, rate, extra = run(strategy)
        err = v - truth_v
        s35 = (snr >= 3) & (snr < 5)
        s5 = snr >= 5
        r = {
            "n_pixels": n,
            "n_snr_3_5": int(s35.sum()),
            "frac_off50_snr_3_5": float(np.mean(np.abs(err[s35]) > 50)),
            "frac_off50_snr_ge5": float(np.mean(np.abs(err[s5]) > 50)),
            "frac_off50_all": float(np.mean(np.abs(err) > 50)),
            "median_err_snr_ge5_kms": float(np.median(err[s5])),
            "robust_std_err_snr_ge5_kms": robust_std(err[s5]),
            "pull_robust_std_snr_ge5": robust_std(err[s5] / ve[s5]),
            "status_counts": {Status(k).name: int(c) for k, c in zip(*np.unique(st, return_counts=True))},
            "n_status3_at_bound": int(np.sum(st == Status.AT_BOUND)),
            "spectra_per_s": rate,
        }
        if extra:
            mean = np.concatenate([e[0] for e in extra])
            sigma = np.concatenate([e[1] for e in extra])
            truth_b = cube.truth["BROADENING"].T.ravel()
            r["mdn_truth_in_3sigma_velocity"] = float(np.mean(np.abs(truth_v - mean[:, 0]) <= 3 * sigma[:, 0]))
            r["mdn_truth_in_3sigma_broadening"] = float(np.mean(np.abs(truth_b - mean[:, 1]) <= 3 * sigma[:, 1]))
            r["mdn_velocity_rmse_snr_ge5"] = float(np.sqrt(np.mean((mean[s5, 0] - truth_v[s5]) ** 2)))
        res[name] = r
    log(f"\n### MAP fit: matched-filter start vs MDN start and bounds ({size}x{size} SN3 cube, seed {seed}, "
        f"batches of {batch})\n")
    cols = list(names.values())
    keys = list(res[cols[1]].keys())
    log("| quantity | " + " | ".join(cols) + " |")
    log("|---" * (len(cols) + 1) + "|")
    fmt = lambda q: f"{q:.4g}" if isinstance(q, float) else str(q)  # noqa: E731
    for k in keys:
        log(f"| {k} | " + " | ".join(fmt(res[c].get(k, "–")) for c in cols) + " |")
    log(f"(load average at the end: {os.getloadavg()[0]:.2f})")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--filters", nargs="*", default=None,
                    help="part 1 and 4: only these filters' networks (default: every shipped one)")
    ap.add_argument("--n-eval", type=int, default=20000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--fallback-sigma", type=float, default=20.0,
                    help="part 3: MDN sigma_v (km/s) above which the 'fallback' run uses the matched-filter start")
    args = ap.parse_args(argv)
    import lucijax

    lucijax.set_cpu_devices()  # before any computation: part 2 shards over every device
    lucijax.enable_compilation_cache()
    results = {"load_average_start": os.getloadavg()[0]}
    log = lambda s: print(s, flush=True)  # noqa: E731
    if 1 in args.parts:
        results["accuracy"] = part1(args.n_eval, log, args.filters)
    if 2 in args.parts:
        results["speed"] = part2(log)
    if 3 in args.parts:
        results["fits"] = part3(log, fallback_sigma_kms=args.fallback_sigma)
    if 4 in args.parts:
        results["independent"] = part4(args.filters, args.n_eval, log)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_mdn.json"), "w") as f:
            json.dump(results, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
