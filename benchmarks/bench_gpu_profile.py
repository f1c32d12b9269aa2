#!/usr/bin/env python
"""Where the time of a fit goes on an accelerator (or a CPU): a profile of one batch and of
the engine around it, in one short run.

Usage (repository root)::

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/bench_gpu_profile.py --out DIR

1. ``kernels``: one batch of the default fit (5-line sincgauss SN3, MDN start, Laplace
   errors) traced with ``jax.profiler`` (a Perfetto trace, ``DIR/trace``); the device's
   events summed by name, top 15, with their share of the batch.
2. ``engine``: ``map_pixels`` over an in-memory 256 x 256 cube with every phase timed (block
   reads, ``prepare``, dispatch, gather with ``finish``): the share of wall time the device
   waits on the host; at batch sizes 4096, 16384 and 65536.
3. ``posterior``: the default sampler (MH) on one batch: the device's sampling against the
   host's diagnostics (R-hat, ESS with numpyro, per pixel).

``--small`` shrinks everything for a dry run on a CPU. Numbers go to ``DIR/profile.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Report, log  # noqa: E402
from trace_summary import top_events  # noqa: E402

LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = Report(out / "profile.json")
    put = record.put

    import jax
    import numpy as np

    import lucijax as lj
    from lucijax.engine import core as engine
    from lucijax.engine import map_pixels
    from lucijax.io.memory import MemoryCube
    from lucijax.program import Block
    from lucijax.simulate import make_cube

    lj.enable_compilation_cache(out / "jax_cache")
    side = 32 if args.small else 256
    B = 256 if args.small else 4096
    cube = MemoryCube.from_synthetic(make_cube(side, side, seed=0))
    model = lj.Model(LINES)
    bound = model.bind(cube.header)
    program = lj.MAP().program(bound)
    n = min(B, side * side)
    spectra = cube.read_spectra(0, side, 0, side).reshape(-1, cube.shape[2])[:n]
    calib = cube.read_calib_map(0, side, 0, side).reshape(-1)[:n]
    block = Block((0, side, 0, side), np.arange(n), np.zeros((n, 2), np.int32), spectra, calib, {}, cube.header)
    batch = {k: jax.device_put(v) for k, v in bound.inputs(block).items() if not k.startswith("_")}

    # 1. kernels of one batch
    fn = jax.jit(jax.vmap(program.one))
    jax.block_until_ready(fn(batch))
    jax.block_until_ready(fn(batch))
    t = time.perf_counter()
    jax.block_until_ready(fn(batch))
    batch_s = time.perf_counter() - t
    trace_dir = out / "trace"
    jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
    jax.block_until_ready(fn(batch))
    jax.profiler.stop_trace()
    put("kernels", dict(batch=n, batch_s=batch_s, **top_events(trace_dir)))

    # 2. the engine's phases
    phases = collections.Counter()

    def timed(name, f):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                phases[name] += time.perf_counter() - t0
        return wrapper

    orig = (engine.BatchRunner.dispatch, engine.BatchRunner.gather, cube.read_spectra, cube.read_calib_map)
    engine.BatchRunner.dispatch = timed("dispatch", engine.BatchRunner.dispatch)
    engine.BatchRunner.gather = timed("gather_and_finish", engine.BatchRunner.gather)
    cube.read_spectra = timed("read (background thread)", cube.read_spectra)
    res = {}
    try:
        for bs in ([B] if args.small else [4096, 16384, 65536]):
            prog = lj.MAP().program(bound)
            from dataclasses import replace

            prog = replace(prog, prepare=timed("prepare", prog.prepare))
            ex = lj.Execution(batch_size=bs, block_size=side, progress=False)
            map_pixels(cube, prog, ex)  # compiles
            phases.clear()
            t = time.perf_counter()
            map_pixels(cube, prog, ex)
            wall = time.perf_counter() - t
            res[f"batch_{bs}"] = {"spectra": side * side, "wall_s": wall, "spectra_per_s": side * side / wall,
                                  **{k: v for k, v in phases.items()}}
    finally:
        engine.BatchRunner.dispatch, engine.BatchRunner.gather, cube.read_spectra, cube.read_calib_map = orig
    put("engine", res)

    # 3. posterior: device sampling vs host diagnostics
    from lucijax.bayes.posterior import diagnose, posterior_program

    fit = lj.fit(cube, model, lj.MAP(), region=(0, side, 0, side // 4 if not args.small else side),
                 execution=lj.Execution(progress=False))
    sampler = lj.MH()
    network = fit.network[:2] if fit.network is not None else None
    pprog = posterior_program(sampler, bound, fit.map_values(), network)
    m = min(B, fit.computed.size)
    xs, ys = np.nonzero(fit.computed)
    xs, ys = xs[:m], ys[:m]
    inp = {"y": np.asarray(cube.read_spectra(0, side, 0, side)[xs, ys][:, bound.window], np.float32),
           "fwhm": np.asarray(fit.fwhm_cm1[xs, ys], np.float32), "xy": np.stack([xs, ys], 1).astype(np.int32)}
    for k, v in pprog.given.items():
        inp[k] = v[xs, ys]
    dev = {k: jax.device_put(v) for k, v in inp.items()}
    sfn = jax.jit(jax.vmap(pprog.one))
    jax.block_until_ready(sfn(dev))
    t = time.perf_counter()
    o = jax.block_until_ready(sfn(dev))
    sample_s = time.perf_counter() - t
    t = time.perf_counter()
    host = jax.tree.map(np.asarray, o)
    transfer_s = time.perf_counter() - t
    t = time.perf_counter()
    d = diagnose(host, sampler.rhat_threshold, False)
    diag_s = time.perf_counter() - t
    put("posterior", {"pixels": m, "device_sampling_s": sample_s, "device_to_host_s": transfer_s,
                      "host_diagnostics_s": diag_s, "pixels_per_s_device_only": m / sample_s,
                      "pixels_per_s_with_diagnostics": m / (sample_s + transfer_s + diag_s),
                      "rhat_ok_fraction": float(np.mean(np.asarray(d.rhat_max) <= 1.05))})
    log(json.dumps(record.data, indent=1, default=float)[:6000])


if __name__ == "__main__":
    main()
