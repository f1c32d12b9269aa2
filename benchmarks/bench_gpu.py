#!/usr/bin/env python
"""Everything a lent GPU should measure, in one process tree and one short run.

Usage (repository root; on a GPU machine)::

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/bench_gpu.py --out DIR [--budget 540] [--old CHECKOUT]

``--old`` names a checkout of the baseline commit (e.g. ``git worktree add /tmp/old REV``):
the full-cube run and the steady engine are repeated with its code in the same run, so
that each change is measured against the old code on the same card.

Parts (run in the order given by ``--parts``; each records its numbers in ``DIR/gpu.json``
as soon as it ends, and is skipped when the time budget is spent):

1. ``roofline``: XLA's cost analysis of the compiled default fit (5-line sincgauss SN3, MDN
   start, Laplace errors) at the GPU batch size: flop and bytes per spectrum
   (``bench_roofline.program_cost``; ``bench_roofline.py`` measures the machine's roofs and
   the stages as well).
2. ``stages``: one batch timed whole and with stages left out (the network alone, the
   matched filter alone, the fit with 0 LM iterations, the default 8): where the time goes.
3. ``steady``: ``map_pixels`` over an in-memory cube, twice (the second warm): spectra/s of
   the engine without file I/O, at batch sizes 4096 and 16384; achieved GFLOP/s and the
   fraction of the H200's float32 peak (67 TFLOP/s, datasheet).
4. ``posterior``: the default sampler (``MH``) over a 512 x 512 cube after its MAP fit
   (compiled first on a small region): pixels/s, R-hat and ESS, and the projected time for
   a 2048 x 2064 cube.
5. ``full``: a 2048 x 2064 x 840 cube (14.6 GB, slabs of one rendered 64 x 2064 block) fitted by
   ``python -m lucijax.cli fit`` as a whole process, I/O included, and a 512 x 512 cube
   likewise: the whole-process and marginal rates; with the default batch and block sizes,
   with ``--batch-size 16384 --block-size 128``, and with the old code (``--old``).

``--small`` shrinks every size for a dry run on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Report, log  # noqa: E402
LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
#: Datasheet dense float32 peaks (no tensor cores), TFLOP/s, and memory bandwidths, TB/s (SXM parts).
PEAKS = {"H200": (67.0, 4.8), "H100": (67.0, 3.35), "A100": (19.5, 2.0)}


def peaks(device) -> tuple[float, float]:
    kind = getattr(device, "device_kind", "")
    for name, v in PEAKS.items():
        if name in kind:
            return v
    return float("nan"), float("nan")


def timed(fn, repeat=3):
    import jax

    out = fn()
    jax.block_until_ready(out)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all parts")
    ap.add_argument("--small", action="store_true", help="tiny sizes (a dry run on a CPU)")
    ap.add_argument("--parts", nargs="+", default=["roofline", "posterior", "full", "steady", "stages"])
    ap.add_argument("--old", help="checkout of the baseline commit: full-cube and steady runs repeated with its code")
    args = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "gpu.json")

    def left():
        return args.budget - (time.perf_counter() - t_start)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import lucijax as lj
    from lucijax.engine import map_pixels
    from lucijax.io.memory import MemoryCube
    from lucijax.simulate import make_cube

    lj.enable_compilation_cache(out / "jax_cache")
    os.environ["LUCIJAX_CACHE_DIR"] = str(out / "jax_cache")  # the CLI children share it
    dev = jax.devices()[0]
    peak_tflops, peak_tb_s = peaks(dev)
    report.put("machine", {"device": str(dev), "device_kind": getattr(dev, "device_kind", ""), "platform": dev.platform,
                           "jax": jax.__version__, "n_devices": len(jax.devices()),
                           "fp32_peak_tflops": peak_tflops, "memory_tb_s": peak_tb_s})
    B = 256 if args.small else 4096
    side = 32 if args.small else 256
    syn = make_cube(side, side, seed=0)
    cube = MemoryCube.from_synthetic(syn)
    model = lj.Model(LINES)
    bound = model.bind(cube.header)
    program = lj.MAP().program(bound)
    from lucijax.program import Block

    n = min(B, side * side)
    sel = np.arange(n)
    spectra = cube.read_spectra(0, side, 0, side).reshape(-1, cube.shape[2])[:n]
    calib = cube.read_calib_map(0, side, 0, side).reshape(-1)[:n]
    block = Block((0, side, 0, side), sel, np.zeros((n, 2), np.int32), spectra, calib, {}, cube.header)
    inputs = {k: v for k, v in bound.inputs(block).items() if not k.startswith("_")}
    batch = {k: jax.device_put(v) for k, v in inputs.items()}

    if "roofline" in args.parts and left() > 60:
        from bench_roofline import program_cost  # the cost analysis of bench_roofline.py (its full roofline)

        cost = program_cost(program, batch)
        compiled = cost.pop("compiled")
        run_s, _ = timed(lambda: compiled(batch))
        flops, nbytes = cost["flop_per_spectrum"] * n, cost["bytes_per_spectrum"] * n
        report.put("roofline", {**cost, "batch_s": run_s, "spectra_per_s": n / run_s,
                                "achieved_gflops": flops / run_s / 1e9,
                                "fraction_of_fp32_peak": flops / run_s / (peak_tflops * 1e12),
                                "achieved_gb_s": nbytes / run_s / 1e9,
                                "fraction_of_memory_bandwidth": nbytes / run_s / (peak_tb_s * 1e12)})

    if "full" in args.parts and left() > 200:
        import h5py

        from lucijax.io.orb import _attr_value

        nx, ny = (64, 64) if args.small else (2048, 2064)
        path = out / "full.hdf5"
        t = time.perf_counter()
        slab = make_cube(64, ny, seed=1)
        nz = slab.data.shape[-1]
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", shape=(nx, ny, nz), dtype=np.float32, chunks=(64, 64, nz))
            cm = f.create_dataset("calib_map", shape=(nx, ny), dtype=np.float64)
            for x0 in range(0, nx, 64):
                ds[x0:x0 + 64] = slab.data
                cm[x0:x0 + 64] = slab.calib_map
            for k, v in slab.attrs.items():
                if v is not None:
                    f.attrs[k] = _attr_value(v)
        write_s = time.perf_counter() - t

        def cli(p, o, extra=(), checkout=ROOT):
            """``lucijax fit`` as a whole process with the code of ``checkout`` (its folder is the
            working directory too: ``python -m`` puts it first on the path)."""
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(checkout)] + [q for q in os.environ.get("PYTHONPATH", "").split(os.pathsep) if q]))
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
            cmd = [sys.executable, "-m", "lucijax.cli", "fit", str(p), "--lines", *LINES, "--out", str(o), "-q",
                   "--no-checkpoint", *extra]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, env=env, cwd=str(checkout), capture_output=True, text=True,
                               timeout=max(30, left() - 10))
            s = time.perf_counter() - t0
            if r.returncode != 0:
                log(f"!! {' '.join(cmd[3:])} (code of {checkout}) failed: {(r.stdout + r.stderr)[-800:]}")
            return s, r

        res = {"cube": [nx, ny, nz], "write_s": write_s}
        small_path = out / "small.hdf5"
        m = 8 if args.small else 512
        with h5py.File(path) as f, h5py.File(small_path, "w") as g:
            g.create_dataset("data", data=f["data"][:m, :m])
            g.create_dataset("calib_map", data=f["calib_map"][:m, :m])
            for k, v in f.attrs.items():
                g.attrs[k] = v
        res["small_spectra"] = m * m
        res["full_spectra"] = nx * ny
        variants = [("new_default", (), ROOT), ("new_batch16384_block128", ("--batch-size", "16384", "--block-size", "128"), ROOT)]
        if args.old:
            variants.insert(1, ("old_default", (), Path(args.old).resolve()))
        for name, extra, checkout in variants:
            if left() < 90:
                break
            cli(small_path, out / f"o_small_{name}", extra, checkout)  # also warms the compilation cache
            s_small, r = cli(small_path, out / f"o_small_{name}", extra, checkout)
            v = {"small_whole_process_s": s_small, "returncode": r.returncode}
            if left() > 75:
                s_full, r = cli(path, out / f"o_full_{name}", extra, checkout)
                v.update(full_whole_process_s=s_full, full_spectra_per_s=nx * ny / s_full,
                         marginal_spectra_per_s=(nx * ny - m * m) / max(s_full - s_small, 1e-9),
                         returncode=r.returncode, cli_head=r.stdout[:400], cli_tail=(r.stdout + r.stderr)[-300:])
            res[name] = v
            report.put("full", res)
        report.put("full", res)
        path.unlink(missing_ok=True)
    if "posterior" in args.parts and left() > 60:
        pside = 16 if args.small else 512
        big = MemoryCube.from_synthetic(make_cube(pside, pside, seed=2))
        ex = lj.Execution(progress=False)
        sampler = lj.MH()
        t = time.perf_counter()
        w = min(64, pside)  # one full batch of 4096 pixels: the programs of the timed run, compiled
        warm = lj.fit(big, model, lj.MAP(), region=(0, w, 0, w), execution=ex)
        lj.sample(big, warm, sampler, execution=ex)
        first = time.perf_counter() - t
        t = time.perf_counter()
        lj.sample(big, warm, sampler, execution=ex)
        probe = w * w / (time.perf_counter() - t)  # pixels/s of one warm batch
        # the largest multiple of 64 pixels a side that samples within a third of the time left
        fits = int(np.sqrt(probe * max(left() - 60, 30) / 3) // 64 * 64)
        if not args.small and fits < pside:
            pside = max(64, fits)
            big = MemoryCube.from_synthetic(make_cube(pside, pside, seed=2))
        t = time.perf_counter()
        fit = lj.fit(big, model, lj.MAP(), execution=ex)
        map_s = time.perf_counter() - t
        t = time.perf_counter()
        post = lj.sample(big, fit, sampler, execution=ex)
        s = time.perf_counter() - t
        npx = pside * pside
        ess = post.maps["ESS_MIN"]
        report.put("posterior", {"sampler": repr(sampler), "cube": [pside, pside], "pixels": npx,
                                 "compile_and_64x64_s": first, "probe_pixels_per_s": probe, "map_fit_s": map_s, "seconds": s,
                                 "pixels_per_s": npx / s, "map_and_sample_pixels_per_s": npx / (s + map_s),
                                 "rhat_ok_fraction": post.converged_fraction(),
                                 "median_ess": float(np.nanmedian(ess)), "p10_ess": float(np.nanpercentile(ess, 10)),
                                 "timing": post.timing, "map_timing": fit.timing,
                                 "projected_full_cube_hours": 2048 * 2064 / (npx / (s + map_s)) / 3600})
        del big, post, fit

    if "steady" in args.parts and left() > 45:
        res = {}
        for bs in ([B] if args.small else [4096, 16384]):
            ex = lj.Execution(batch_size=bs, block_size=256 if not args.small else 16, progress=False)
            map_pixels(cube, program, ex)  # compile
            t = time.perf_counter()
            pm = map_pixels(cube, program, ex)
            s = time.perf_counter() - t
            res[f"batch_{bs}"] = {"spectra": side * side, "seconds": s, "spectra_per_s": side * side / s}
        if "roofline" in report.data:
            fl = report.data["roofline"]["flop_per_spectrum"]
            best = max(v["spectra_per_s"] for v in res.values())
            res["achieved_gflops"] = fl * best / 1e9
            res["fraction_of_fp32_peak"] = fl * best / (peak_tflops * 1e12)
        res["status_0_fraction"] = float(np.mean(np.asarray(pm.values.fit.status) == 0))
        report.put("steady", res)

    if "stages" in args.parts and left() > 60:
        from lucijax.solvers.map import map_one

        res = {}
        settings = lj.MAP().settings(model)
        start, predict = lj.MAP().resolve_start(bound)
        if predict is not None:
            f = jax.jit(jax.vmap(predict))
            res["network_s"], _ = timed(lambda: f(batch["y"], batch["fwhm"]))
        from lucijax.solvers.map import templates_for
        from lucijax.solvers.start import start_inputs, start_velocity

        tm, vel = templates_for(bound, settings)
        tm, vel, goc, _, _ = start_inputs(bound.line_model, settings, tm, vel)
        mf = jax.jit(jax.vmap(lambda y: start_velocity(jnp.where(jnp.isfinite(y), y, 0.0), jnp.isfinite(y), tm, vel, goc, 1)))
        res["matched_filter_s"], _ = timed(lambda: mf(batch["y"]))
        for it in (0, 8):
            solver = lj.MAP(max_iter=it)
            one = map_one(bound, solver.settings(model), start, predict, solver)
            f = jax.jit(jax.vmap(one))
            res[f"fit_{it}_iter_s"], o = timed(lambda: f(batch))
        res["per_lm_iteration_s"] = (res["fit_8_iter_s"] - res["fit_0_iter_s"]) / 8
        res["batch"] = n
        report.put("stages", res)

    log(json.dumps(report.data, indent=1, default=float))


if __name__ == "__main__":
    main()
