#!/usr/bin/env python
"""The default fit's roofline, measured on whatever ``jax.devices()`` is (CPU or GPU), in
one short run.

Usage (repository root)::

    PYTHONPATH=. python benchmarks/bench_roofline.py --out DIR

1. ``cost``: XLA's cost analysis of the compiled batch program of the default fit (5 lines
   Halpha NII6583 NII6548 SII6716 SII6731, sincgauss, MDN start, Laplace errors:
   ``lucijax.MAP().program(bound)``, ``jit(vmap(program.one))``) at the engine's default
   batch size for the platform (:func:`lucijax.engine.default_batch_size`: 64 on CPU, 4096
   on an accelerator): flop, transcendentals and bytes per spectrum, arithmetic intensity.
   XLA counts a while loop's body once, whatever its trips: ``lm_loop`` compiles the program
   with the Levenberg-Marquardt loop unrolled once and twice (the difference: one iteration),
   counts each pixel's fit evaluations and each batch's loop trips (a batch runs until its
   slowest pixel settles) over the cube, and gives two more counts: *executed* (the
   batch's trips) and *useful* (each pixel's own steps).
2. ``peaks``: this machine's attainable rates, measured with XLA itself (jit-compiled
   microbenchmarks, best of ``--repeat``): float32 matmul, a vectorisable elementwise FMA
   chain, transcendental chains (``sin``, ``exp``, ``erf``: the line shapes' own operations),
   and memory bandwidth (read + write of arrays far larger than the caches); on one device
   and on every device at once.
3. ``achieved``: the batch program's steady time (best of ``--repeat``) on one device:
   GFLOP/s, GB/s, the roofline's attainable rate at its intensity
   (min(peak compute, bandwidth x intensity)) and the fraction achieved, for two roofs (the
   classic one: matmul peak and DRAM bandwidth; the elementwise one: FMA chains and cache
   bandwidth, which is what a CPU batch of 64 spectra sees), and a bound that charges the
   transcendentals at the slowest measured rate on top of the FMA roof. ``engine``: ``map_pixels`` over an
   in-memory ``--cube`` x ``--cube`` cube on every device, the same quantities.
4. ``stages``: one batch, each stage its own jitted vmapped function on the same batch: the
   network, the matched filter, the start guard, the whole program with 0 and with 8 LM
   iterations (one iteration = their difference / 8), without the global-optimum check
   (``MAP(ambiguity_chi2=None)``), with the covariance (``MAP(covariance=True)``; off by
   default); the LM iterations per pixel (mean, max per batch); the top five costs.
5. ``trace``: a Perfetto trace of one batch (``DIR/trace``), the top XLA ops by time.

Prints a markdown table (also ``DIR/roofline.md``) and writes every number to
``DIR/roofline.json``. ``--devices N`` sets the number of XLA CPU devices (default: one per
usable core, as the CLI does).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Report  # noqa: E402
from trace_summary import top_events  # noqa: E402

LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def best_of(fn, repeat: int = 5):
    """(best seconds of ``repeat`` calls after one warm call, last output)."""
    import jax

    out = jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best, out


def cost_of(compiled) -> dict:
    """XLA's cost analysis of a compiled function: flops, transcendentals, bytes accessed."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"flops": float(cost.get("flops", float("nan"))),
            "transcendentals": float(cost.get("transcendentals", float("nan"))),
            "bytes": float(cost.get("bytes accessed", float("nan")))}


def program_cost(program, batch: dict) -> dict:
    """Compile ``jit(vmap(program.one))`` for ``batch`` (a dict of arrays with a leading pixel
    axis) and return its cost per spectrum, the compile time and the compiled function."""
    import jax

    n = int(next(iter(batch.values())).shape[0])
    t = time.perf_counter()
    compiled = jax.jit(jax.vmap(program.one)).lower(batch).compile()
    compile_s = time.perf_counter() - t
    c = cost_of(compiled)
    return {"batch": n, "compile_s": compile_s, "flop_per_spectrum": c["flops"] / n,
            "transcendentals_per_spectrum": c["transcendentals"] / n, "bytes_per_spectrum": c["bytes"] / n,
            "intensity_flop_per_byte": c["flops"] / max(c["bytes"], 1.0), "compiled": compiled}


def default_batch(cube, bound, n: int, device=None) -> dict:
    """The first ``n`` spectra of ``cube`` as the program's per-pixel inputs, on ``device``."""
    import jax
    import numpy as np

    from lucijax.program import Block

    nx, ny = cube.shape[:2]
    spectra = cube.read_spectra(0, nx, 0, ny).reshape(-1, cube.shape[2])[:n]
    calib = cube.read_calib_map(0, nx, 0, ny).reshape(-1)[:n]
    block = Block((0, nx, 0, ny), np.arange(n), np.zeros((n, 2), np.int32), spectra, calib, {}, cube.header)
    inputs = {k: v for k, v in bound.inputs(block).items() if not k.startswith("_")}
    return {k: jax.device_put(v, device) for k, v in inputs.items()}


# --------------------------------------------------------------------------- peaks

def on_devices(fn, args_of, devices, repeat):
    """Best seconds of ``fn`` run on every device at once (inputs ``args_of(device)``)."""
    args = [args_of(d) for d in devices]
    return best_of(lambda: [fn(*a) for a in args], repeat)[0]


def measure_peaks(devices, repeat: int, gpu: bool, m: int) -> dict:
    """This machine's attainable float32 rates with XLA (one device alone, and every device
    at once): compute roofs (matmul; elementwise FMA chains on ``m`` floats, fused into one
    kernel, and one kernel per step, which streams through the cache), transcendental
    throughput, and bandwidth from memory (DRAM) and from cache (the one-kernel-per-step
    chain's traffic)."""
    import jax
    import jax.numpy as jnp

    res = {}
    nd = len(devices)

    def both(name, fn, args_of, work, unit, traffic=None):
        one = on_devices(fn, args_of, devices[:1], repeat)
        entry = {"per_device": work / one / 1e9, "unit": unit, "seconds_one_device": one}
        if nd > 1:
            alls = on_devices(fn, args_of, devices, repeat)
            entry.update(all_devices=nd * work / alls / 1e9, seconds_all_devices=alls)
        else:
            entry["all_devices"] = entry["per_device"]
        res[name] = entry
        if traffic is not None:  # the same run read as bandwidth
            res[traffic[0]] = {"per_device": entry["per_device"] * traffic[1], "all_devices": entry["all_devices"] * traffic[1],
                               "unit": "GB/s", "from": name}
        log(f"  peak {name}: {json.dumps(entry)}")

    def vec(d, size):
        return (jax.device_put(jnp.linspace(0.1, 0.9, size, dtype=jnp.float32), d),
                jax.device_put(jnp.float32(0.999), d), jax.device_put(jnp.float32(0.001), d))

    # float32 matmul (2 n^3 flop)
    n = 8192 if gpu else 1536
    both("matmul_gflops", jax.jit(lambda a, b: a @ b),
         lambda d: (jax.device_put(jnp.ones((n, n), jnp.float32), d), jax.device_put(jnp.full((n, n), 0.5, jnp.float32), d)),
         2.0 * n ** 3, "GFLOP/s")

    # elementwise chains on an array the size of one batch's spectra (the fit's kernels work on
    # such arrays, each on one core), run as the fit runs them: inside a loop of the program
    outer, steps = 64, 16

    def fused(x, a, b):  # 16 FMAs per element fused into one kernel, 64 times
        def body(i, x):
            for _ in range(steps):
                x = x * a + b
            return x
        return jax.lax.fori_loop(0, outer, body, x)

    both("fma_fused_gflops", jax.jit(fused), lambda d: vec(d, m), 2.0 * steps * outer * m, "GFLOP/s")

    # one kernel per FMA (an optimization barrier between steps): the array streams through
    # the cache (CPU) or memory (GPU) at every step: 8 bytes per 2 flop
    def unfused(x, a, b):
        return jax.lax.fori_loop(0, outer * 4, lambda i, x: jax.lax.optimization_barrier(x * a + b), x)

    both("fma_unfused_gflops", jax.jit(unfused), lambda d: vec(d, m), 2.0 * 4 * outer * m, "GFLOP/s",
         traffic=("cache_bandwidth_gb_s" if not gpu else "unfused_bandwidth_gb_s", 4.0))

    # transcendental chains: G evaluations/s (each step also does one FMA)
    for name, op in (("sin", lambda x, a, b: jnp.sin(x) * a + b), ("exp", lambda x, a, b: jnp.exp(-x) * a + b),
                     ("erf", lambda x, a, b: jax.scipy.special.erf(x) * a + b)):
        def tchain(x, a, b, op=op):
            def body(i, x):
                for _ in range(steps):
                    x = op(x, a, b)
                return x
            return jax.lax.fori_loop(0, outer // 8, body, x)
        both(f"{name}_g_per_s", jax.jit(tchain), lambda d: vec(d, m), float(steps * (outer // 8) * m), "G evaluations/s")

    # memory bandwidth: read + write of an array far larger than the caches, in place
    # (donated: a fresh output would also page-fault its 256 MiB every call)
    big = (1 << 28) if gpu else (1 << 26)
    stream = jax.jit(lambda x, a, b: x * a + b, donate_argnums=0)
    states = {}

    def dram_args(d):
        x, a, b = vec(d, big)
        states[d] = [x]
        return (d, a, b)

    def step(d, a, b):
        states[d][0] = stream(states[d][0], a, b)
        return states[d][0]

    both("dram_bandwidth_gb_s", step, dram_args, 2.0 * 4 * big, "GB/s")
    states.clear()
    return res


# --------------------------------------------------------------------------- LM iterations

#: The function of ``lucijax.solvers.fitting`` that runs the Levenberg-Marquardt ``while_loop``.
LM_FRAMES = ("lm_run", "lm", "fit_spectrum")


def unchunked_one(program):
    """The program's per-spectrum function with its LM loop traced in place (``lm_chunk=0``),
    so that the loop's counter and its unrolled copies live in the batch's own trace (under
    ``jax.lax.map`` they would be the chunks' tracers). Per pixel the same computation."""
    import dataclasses

    from lucijax.solvers.map import map_one

    solver, bound = program.meta["solver"], program.meta["bound"]
    start, predict = solver.resolve_start(bound)
    settings = dataclasses.replace(solver.settings(bound.model), lm_chunk=0)
    return map_one(bound, settings, start, predict, solver)


def counting_iterations(one):
    """``one`` returning also each pixel's count of fit evaluations of the Levenberg-Marquardt
    loop (start + iterations): the counter of ``fit_spectrum``'s ``while_loop``, read by
    wrapping ``jax.lax.while_loop`` while the function is traced (the solver is unchanged)."""
    import jax

    real = jax.lax.while_loop
    box = []

    def spy(cond, body, init):
        out = real(cond, body, init)
        if sys._getframe(1).f_code.co_name in LM_FRAMES:
            box.append(out[0])
        return out

    def counted(inp):
        box.clear()
        jax.lax.while_loop = spy
        try:
            res = one(inp)
        finally:
            jax.lax.while_loop = real
        return res, box[0]

    return counted


def unrolled_loop(one, k: int):
    """``one`` with ``fit_spectrum``'s Levenberg-Marquardt ``while_loop`` replaced by ``k``
    unconditional passes of its body: for XLA's cost analysis, which counts a while loop's
    body once whatever its trip count (cost(k=2) - cost(k=1) = one iteration)."""
    import jax

    real = jax.lax.while_loop

    def spy(cond, body, init):
        if sys._getframe(1).f_code.co_name in LM_FRAMES:
            state = init
            for _ in range(k):
                state = body(state)
            return state
        return real(cond, body, init)

    def f(inp):
        jax.lax.while_loop = spy
        try:
            return one(inp)
        finally:
            jax.lax.while_loop = real

    return f


def compiled_cost(fn, batch) -> dict:
    """Cost analysis of the compiled (optimised, fused) ``jit(vmap(fn))`` for ``batch``."""
    import jax

    return cost_of(jax.jit(jax.vmap(fn)).lower(batch).compile())


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", type=int, default=0, help="XLA CPU devices (0: one per usable core)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (0: the engine's default for the platform)")
    ap.add_argument("--cube", type=int, default=0, help="side of the engine's in-memory cube (0: 64 CPU, 256 GPU)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--parts", nargs="+", default=["cost", "peaks", "achieved", "engine", "stages", "trace"])
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = Report(out / "roofline.json", max_chars=1500, log=log)
    report, put = record.data, record.put

    import lucijax as lj

    lj.set_cpu_devices(args.devices or None)
    lj.enable_compilation_cache(out / "jax_cache")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lucijax.engine import default_batch_size, map_pixels
    from lucijax.io.memory import MemoryCube
    from lucijax.simulate import make_cube
    from lucijax.solvers.map import CPU_LM_CHUNK, CPU_LM_FIRST

    devices = jax.local_devices()
    dev = devices[0]
    gpu = dev.platform != "cpu"
    try:
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        load = ""
    B = args.batch or default_batch_size()
    side = args.cube or (256 if gpu else 64)
    if side * side < B:
        ap.error(f"--cube {side} holds {side * side} spectra, fewer than one batch of {B}")
    put("machine", {"device": str(dev), "platform": dev.platform, "n_devices": len(devices), "jax": jax.__version__,
                    "cpu": platform.processor() or platform.machine(), "uptime_start": load, "batch": B,
                    "command": " ".join(sys.argv)})

    cube = MemoryCube.from_synthetic(make_cube(side, side, seed=0))
    model = lj.Model(LINES)
    bound = model.bind(cube.header)
    solver = lj.MAP()
    program = solver.program(bound)
    batch = default_batch(cube, bound, B, dev)

    cost = program_cost(program, batch)
    compiled = cost.pop("compiled")
    put("cost", cost)

    peaks = {}
    if "peaks" in args.parts:
        m = (1 << 24) if gpu else int(np.prod(batch["y"].shape))  # one batch of spectra (CPU)
        peaks = measure_peaks(devices, 3 * args.repeat, gpu, m)  # short kernels: more tries against the load
        put("peaks", dict(peaks, elementwise_array_floats=m))

    # LM iterations: what XLA's count leaves out (the loop body counted once), and how many
    # steps the pixels and batches take
    plain = unchunked_one(program)
    counted = jax.jit(jax.vmap(counting_iterations(plain)))
    all_inp = default_batch(cube, bound, side * side, None)
    counts, trips = [], []
    # on a CPU the whole batch makes its first CPU_LM_FIRST evaluations, then the pixels still
    # iterating go on in groups of CPU_LM_CHUNK (``fitting.compacted_under_vmap``); on a GPU
    # the batch runs until its slowest pixel settles
    first, chunk = (B, B) if gpu else (CPU_LM_FIRST, min(CPU_LM_CHUNK, B))
    executed = []  # evaluations a batch makes, per spectrum
    for k in range(0, side * side - B + 1, B):
        c = np.asarray(counted({kk: jax.device_put(np.asarray(v)[k:k + B], dev) for kk, v in all_inp.items()})[1])
        counts.append(c)
        late = c[c > first] - first
        groups = [late[j:j + chunk] for j in range(0, late.size, chunk)]
        trips.append(int(min(c.max(), first)) + sum(int(g.max()) for g in groups))
        executed.append(min(c.max(), first) + sum(chunk * int(g.max()) for g in groups) / B)
    counts = np.concatenate(counts)
    c1, c2 = (compiled_cost(unrolled_loop(plain, k), batch) for k in (1, 2))
    loop = {"lm_body_flop_per_spectrum": (c2["flops"] - c1["flops"]) / B,
            "lm_body_transcendentals_per_spectrum": (c2["transcendentals"] - c1["transcendentals"]) / B,
            "lm_body_bytes_per_spectrum": (c2["bytes"] - c1["bytes"]) / B,
            "evaluations_per_pixel_mean": float(counts.mean()), "evaluations_per_pixel_median": float(np.median(counts)),
            "loop_trips_per_batch_mean": float(np.mean(trips)), "loop_trips_per_batch_max": int(np.max(trips)),
            "pixels_using_every_iteration": float(np.mean(counts >= solver.max_iter + 1)),
            "executed_evaluations_per_spectrum": float(np.mean(executed)),
            "counted_pixels": int(counts.size), "batches": len(trips), "lm_chunk": chunk, "lm_first": first}
    # XLA's count has the body once; executed: the batch's loop trips (every pixel runs until the
    # batch's slowest settles); useful: each pixel's own evaluations
    for tag, trips in (("executed", loop["executed_evaluations_per_spectrum"]), ("useful", loop["evaluations_per_pixel_mean"])):
        extra = max(trips - 1.0, 0.0)
        for q in ("flop", "transcendentals", "bytes"):
            cost[f"{tag}_{q}_per_spectrum"] = cost[f"{q}_per_spectrum"] + extra * loop[f"lm_body_{q}_per_spectrum"]
        cost[f"{tag}_intensity_flop_per_byte"] = cost[f"{tag}_flop_per_spectrum"] / cost[f"{tag}_bytes_per_spectrum"]
    put("lm_loop", loop)
    put("cost", cost)

    def roof(rate_spectra_s: float, which: str) -> dict:
        """Achieved rates and the fractions of the roofs for a rate in spectra/s (flop and
        bytes: XLA's static count, and the executed estimate with the LM loop's trips)."""
        r = {"spectra_per_s": rate_spectra_s}
        for tag, pre in (("static", ""), ("executed", "executed_"), ("useful", "useful_")):
            fl, tr, by = (cost[f"{pre}{q}_per_spectrum"] for q in ("flop", "transcendentals", "bytes"))
            r[f"{tag}_gflops"] = fl * rate_spectra_s / 1e9
            r[f"{tag}_gb_s"] = by * rate_spectra_s / 1e9
            if not peaks:
                continue
            intensity = fl / by
            dram = peaks["dram_bandwidth_gb_s"][which]
            near = peaks.get("cache_bandwidth_gb_s", peaks["dram_bandwidth_gb_s"])[which]
            elementwise = max(peaks["fma_fused_gflops"][which], peaks["fma_unfused_gflops"][which])
            # the classic roofline (matmul peak, DRAM), and the one for an elementwise program whose
            # batch stays in cache (on a GPU both use DRAM)
            for name, comp, bw in (("matmul_dram", peaks["matmul_gflops"][which], dram),
                                   ("elementwise_cache", elementwise, near)):
                attainable = min(comp, bw * intensity)
                r[f"{tag}_attainable_gflops_{name}"] = attainable
                r[f"{tag}_fraction_{name}"] = r[f"{tag}_gflops"] / attainable
            # a bound that also charges the transcendentals at the slowest measured rate
            slowest = min(peaks[f"{t}_g_per_s"][which] for t in ("sin", "exp", "erf"))
            t_min = max(fl / (elementwise * 1e9) + tr / (slowest * 1e9), by / (near * 1e9))
            r[f"{tag}_bound_spectra_per_s_with_transcendentals"] = 1.0 / t_min
            r[f"{tag}_fraction_of_bound_with_transcendentals"] = rate_spectra_s * t_min
        return r

    if "engine" in args.parts:
        ex = lj.Execution(progress=False)
        t = time.perf_counter()
        map_pixels(cube, program, ex)  # compiles (or loads) the program on every device
        first = time.perf_counter() - t
        best = float("inf")
        for _ in range(max(2, args.repeat // 2)):
            t = time.perf_counter()
            pm = map_pixels(cube, program, ex)
            best = min(best, time.perf_counter() - t)
        put("engine", {"scope": f"map_pixels, {side}x{side} in-memory cube, {len(devices)} device(s), batch {B}",
                       "first_call_s": first, "seconds": best, "spectra": side * side,
                       "status_0_fraction": float(np.mean(np.asarray(pm.values.fit.status) == 0)),
                       **roof(side * side / best, "all_devices")})

    if "stages" in args.parts:
        from lucijax.solvers.map import templates_for
        from lucijax.solvers.start import network_start, projected_rss, start_inputs, start_velocity

        res = {"batch": B}
        settings = solver.settings(model)
        _, predict = solver.resolve_start(bound)
        lm = bound.line_model
        G, has_b, nb = bound.spec.n_groups, bound.spec.has_broadening, bound.spec.n_broadening
        tm, vel = templates_for(bound, settings)
        tm, vel, goc, _, _ = start_inputs(lm, settings, tm, vel)
        y, fwhm = batch["y"], batch["fwhm"]
        if predict is not None:
            f = jax.jit(jax.vmap(predict))
            res["network_s"], (mean, sigma) = best_of(lambda: f(y, fwhm), 2 * args.repeat)
        mf = jax.jit(jax.vmap(lambda y: start_velocity(jnp.where(jnp.isfinite(y), y, 0.0), jnp.isfinite(y), tm, vel,
                                                      goc, G)))
        res["matched_filter_s"], v_mf = best_of(lambda: mf(y), 2 * args.repeat)
        if predict is not None:
            def guard(y, fwhm, mean, sigma, v_mf):
                theta_p = network_start(mean, sigma, settings, G, has_b, solver.network_sigmas, n_broadening=nb)[0]
                theta_mf = jnp.concatenate([v_mf, theta_p[G:]]) if has_b else v_mf
                mask = jnp.isfinite(y)
                yz = jnp.where(mask, y, 0.0)
                ys = yz / jnp.maximum(jnp.max(jnp.abs(yz)), 1e-30)
                return jax.vmap(lambda th: projected_rss(lm, ys, mask.astype(jnp.float32), fwhm, th))(
                    jnp.stack([theta_mf, theta_p]))
            g = jax.jit(jax.vmap(guard))
            res["start_guard_s"], _ = best_of(lambda: g(y, fwhm, mean, sigma, v_mf), 2 * args.repeat)

        def whole(s):
            f = jax.jit(jax.vmap(s.program(bound).one))  # the platform's LM settings, as the engine runs it
            jax.block_until_ready(f(batch))
            return lambda: f(batch)

        variants = {"whole_s": lambda: compiled(batch), "fit_0_iter_s": whole(lj.MAP(max_iter=0)),
                    "no_ambiguity_check_s": whole(lj.MAP(ambiguity_chi2=None)),
                    "with_covariance_s": whole(lj.MAP(covariance=True))}
        best = {k: float("inf") for k in variants}
        for _ in range(2 * args.repeat):  # round robin: a change of load hits every variant alike
            for k, f in variants.items():
                t = time.perf_counter()
                jax.block_until_ready(f())
                best[k] = min(best[k], time.perf_counter() - t)
        res.update(best)
        res["per_lm_iteration_s"] = ((res["whole_s"] - res["fit_0_iter_s"])
                                     / max(loop["executed_evaluations_per_spectrum"] - 1, 1e-9))
        res["per_lm_iteration_note"] = ("(whole - fit 0) / (evaluations executed per spectrum - 1): one evaluation "
                                        "of the whole batch")
        # the costs, each as a share of the whole batch
        w = res["whole_s"]
        parts = {
            "LM iterations (whole - fit 0; a batch runs until its last pixel settles)":
                res["whole_s"] - res["fit_0_iter_s"],
            "global-optimum check (whole - no check)": res["whole_s"] - res["no_ambiguity_check_s"],
            "network (MDN)": res.get("network_s", 0.0),
            "matched-filter start": res["matched_filter_s"],
            "start guard (two projected fits)": res.get("start_guard_s", 0.0),
        }
        parts["rest of the 0-iteration fit (start evaluation, final QP, Laplace errors, outputs)"] = \
            res["fit_0_iter_s"] - sum(v for k, v in parts.items() if not k.startswith("LM"))
        res["costs"] = [{"stage": k, "seconds": v, "share": v / w}
                        for k, v in sorted(parts.items(), key=lambda kv: -kv[1])]
        res["covariance_extra_share"] = (res["with_covariance_s"] - w) / w
        put("stages", res)

    if "achieved" in args.parts:  # after the stages: the best of both timings of the same batch
        s, _ = best_of(lambda: compiled(batch), 2 * args.repeat)
        s = min(s, report.get("stages", {}).get("whole_s", s))
        put("achieved", {"scope": "one device, one batch", "batch_s": s, **roof(B / s, "per_device")})

    if "trace" in args.parts:
        trace_dir = out / "trace"
        jax.block_until_ready(compiled(batch))
        t = time.perf_counter()
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            jax.block_until_ready(compiled(batch))
        traced_s = time.perf_counter() - t
        # on a CPU the trace also holds Python frames ($...) and the executor's envelope events
        summary = top_events(trace_dir, 15, skip=("$", "ThunkExecutor", "PjitFunction", "TraceMe"))
        batch_ms = best_of(lambda: compiled(batch), args.repeat)[0] * 1e3
        for e in summary.get("top", []):
            e["share_of_batch"] = e["us"] / 1e3 / batch_ms
        put("trace", {"batch_ms": batch_ms, "traced_s": traced_s, **summary})

    try:
        report["machine"]["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    report["total_s"] = time.perf_counter() - t0
    md = markdown(report)
    (out / "roofline.md").write_text(md)
    (out / "roofline.json").write_text(json.dumps(report, indent=1, default=float))
    print(md)


def markdown(r: dict) -> str:
    m, c = r["machine"], r["cost"]
    lines = [f"Device: {m['device']} x {m['n_devices']} ({m['platform']}, jax {m['jax']}), batch {m['batch']}; "
             f"load: {m.get('uptime_start', '')} -> {m.get('uptime_end', '')}", "",
             "| per spectrum (batch program) | static: XLA cost analysis (loop bodies once) | "
             "executed (+ the batch's LM loop trips) | useful (+ each pixel's own LM steps) |",
             "|---|---|---|---|"]
    nan = float("nan")
    for q, label in (("flop", "flop"), ("transcendentals", "transcendentals"), ("bytes", "bytes accessed")):
        lines.append(f"| {label} | {c[f'{q}_per_spectrum']:.3g} | {c.get(f'executed_{q}_per_spectrum', nan):.3g} | "
                     f"{c.get(f'useful_{q}_per_spectrum', nan):.3g} |")
    lines.append(f"| arithmetic intensity (flop/byte) | {c['intensity_flop_per_byte']:.3g} | "
                 f"{c.get('executed_intensity_flop_per_byte', nan):.3g} | {c.get('useful_intensity_flop_per_byte', nan):.3g} |")
    lp = r.get("lm_loop")
    if lp:
        lines += ["", f"LM loop: one iteration = {lp['lm_body_flop_per_spectrum']:.3g} flop, "
                      f"{lp['lm_body_bytes_per_spectrum']:.3g} bytes, "
                      f"{lp['lm_body_transcendentals_per_spectrum']:.3g} transcendentals per spectrum; fit evaluations "
                      f"per pixel (start + steps) mean {lp['evaluations_per_pixel_mean']:.2f}, median "
                      f"{lp['evaluations_per_pixel_median']:.0f}; executed per spectrum (the batch's first "
                      f"{lp.get('lm_first', '?')} together, then the pixels still iterating in groups of "
                      f"{lp.get('lm_chunk', '?')}, each until its slowest settles) "
                      f"{lp.get('executed_evaluations_per_spectrum', nan):.2f}; the loop's trips per batch mean "
                      f"{lp['loop_trips_per_batch_mean']:.2f}, max {lp['loop_trips_per_batch_max']} "
                      f"({lp['batches']} batches); pixels using every iteration: {lp['pixels_using_every_iteration']:.1%}"]
    pk = r.get("peaks", {})
    if pk:
        lines += ["", f"| measured with XLA on this machine (elementwise: arrays of {pk.get('elementwise_array_floats')} "
                      "floats) | one device | all devices |", "|---|---|---|"]
        for k, v in pk.items():
            if not isinstance(v, dict):
                continue
            name = k.replace("_gflops", "").replace("_g_per_s", "").replace("_gb_s", "")
            lines.append(f"| {name} ({v['unit']}) | {v['per_device']:.3g} | {v['all_devices']:.3g} |")
    for part in ("achieved", "engine"):
        a = r.get(part)
        if not a:
            continue
        lines += ["", f"**{part}** ({a['scope']}): {a['spectra_per_s']:.4g} spectra/s (the bound with transcendentals adds "
                      "their time at the chains' rate to the flops' at the FMA roof: not a strict bound, the chains are "
                      "dependent, the program's operations are not)", "",
                  "| flop count | GFLOP/s | GB/s | classic roof (matmul, DRAM): attainable, achieved | "
                  "elementwise roof (FMA, cache): attainable, achieved | bound with transcendentals: spectra/s, achieved |",
                  "|---|---|---|---|---|---|"]
        for tag in ("static", "executed", "useful"):
            if f"{tag}_attainable_gflops_matmul_dram" not in a:
                lines.append(f"| {tag} | {a[f'{tag}_gflops']:.3g} | {a[f'{tag}_gb_s']:.3g} | | | |")
                continue
            lines.append(f"| {tag} | {a[f'{tag}_gflops']:.3g} | {a[f'{tag}_gb_s']:.3g} | "
                         f"{a[f'{tag}_attainable_gflops_matmul_dram']:.3g}, {a[f'{tag}_fraction_matmul_dram']:.0%} | "
                         f"{a[f'{tag}_attainable_gflops_elementwise_cache']:.3g}, "
                         f"{a[f'{tag}_fraction_elementwise_cache']:.0%} | "
                         f"{a[f'{tag}_bound_spectra_per_s_with_transcendentals']:.4g}, "
                         f"{a[f'{tag}_fraction_of_bound_with_transcendentals']:.0%} |")
    s = r.get("stages")
    if s:
        lines += ["", f"Stages of one batch of {s['batch']} (each its own jitted vmapped function, best of N, "
                      "the program variants timed round robin):", "",
                  "| stage | ms | share of the whole batch |", "|---|---|---|"]
        for k in ("whole_s", "network_s", "matched_filter_s", "start_guard_s", "fit_0_iter_s", "per_lm_iteration_s",
                  "no_ambiguity_check_s", "with_covariance_s"):
            if k in s:
                lines.append(f"| {k[:-2].replace('_', ' ')} | {s[k] * 1e3:.2f} | {s[k] / s['whole_s']:.0%} |")
        lines += ["", "Top five costs:", ""]
        for i, cst in enumerate(s["costs"][:5], 1):
            lines.append(f"{i}. {cst['stage']}: {cst['seconds'] * 1e3:.1f} ms ({cst['share']:.0%})")
    t = r.get("trace")
    if t and "top" in t:
        lines += ["", f"Top XLA ops of one batch (Perfetto trace, summed by name; nested events such as a while "
                      f"loop include their body's ops; share of the batch's {t.get('batch_ms', float('nan')):.1f} ms):",
                  "", "| op | ms | share | calls |", "|---|---|---|---|"]
        for e in t["top"][:10]:
            lines.append(f"| `{e['name'][:70]}` | {e['us'] / 1e3:.2f} | {e['share_of_batch']:.0%} | {e['calls']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
