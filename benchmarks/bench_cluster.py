#!/usr/bin/env python
"""A whole-cube fit on a Dask LocalCluster against the same fit in one process (issue 17).

Usage (from the repository root, lucijax's environment with ``lucijax[cluster]``)::

    python benchmarks/bench_cluster.py --size 128 --workers 2 --repeat 3 [--kill]

Writes a ``size``^2 synthetic SN3 cube (5 lines, as ``bench_scale.py``), then in this one
script, alternating: the fit in this process on ``workers`` XLA CPU devices, and the fit
on a ``LocalCluster`` of ``workers`` single-threaded worker processes (one JAX CPU device
each), both with the same blocks and batches. Each pair's maps are compared bit for bit.
Before the timed runs both sides fit a 16x16 corner once (compilation, worker start-up:
reported apart); the cluster's in blocks of 4x4 (the same 64-spectrum batches), so that
every worker gets some and loads the program (in blocks of 32 one worker took the only
block and the other's start-up was counted in round 1). Throughput = spectra / wall time of ``map_pixels`` (read, fit, assembly;
checkpoint on in both, as the command line does); also spectra per CPU-second (user + system
time of this process and of every worker: the comparison a loaded machine can still make). ``--kill``: one more cluster run in which
a worker is killed with SIGKILL after the first finished block: its wall time, the blocks
re-run and the maps' identity. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--kill", action="store_true")
    p.add_argument("--work", default=None, help="folder for the cube (default: a temporary one)")
    args = p.parse_args()

    import jax
    import numpy as np
    from distributed import Client

    import lucijax
    from lucijax.engine import Execution, map_pixels
    from lucijax.engine.checkpoint import BlockCheckpoint
    from lucijax.engine.cluster import local_cluster
    from lucijax.simulate import write_cube_streaming
    from lucijax.views import select

    lucijax.set_cpu_devices(args.workers)
    lucijax.enable_compilation_cache()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_cluster_"))
    work.mkdir(parents=True, exist_ok=True)
    cube_path = work / f"cube{args.size}.hdf5"
    if not cube_path.exists():
        write_cube_streaming(cube_path, args.size, args.size, seed=2, progress=False)
    n = args.size * args.size

    def cpu_seconds(scheduler) -> float:
        """User + system CPU seconds of this process (client, scheduler and nannies of a
        LocalCluster live here) and of every worker process."""
        def own():
            import resource

            r = resource.getrusage(resource.RUSAGE_SELF)
            return r.ru_utime + r.ru_stime

        total = own()
        if scheduler is not None:
            total += sum(scheduler.run(own).values())
        return total

    def run(view, program, scheduler, tag, block_size=None):
        ckpt = work / f"ckpt_{tag}"
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
        ex = Execution(block_size=block_size or args.block_size, progress=False, checkpoint=ckpt, scheduler=scheduler)
        c = cpu_seconds(scheduler)
        t = time.perf_counter()
        pm = map_pixels(view, program, ex)
        wall = time.perf_counter() - t
        cpu_used[tag] = cpu_seconds(scheduler) - c
        shutil.rmtree(ckpt, ignore_errors=True)
        return pm, wall

    def same(a, b) -> bool:
        la, lb = jax.tree_util.tree_leaves(a.values), jax.tree_util.tree_leaves(b.values)
        return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
                                          for x, y in zip(la, lb))

    cpu_used: dict = {}
    rec: dict = {"size": args.size, "workers": args.workers, "block_size": args.block_size,
                 "cpu_devices_one_process": len(jax.devices("cpu"))}
    with lucijax.open_cube(cube_path) as cube:
        view = select(cube, None, None)
        program = lucijax.MAP().program(lucijax.Model(LINES).bind(view.header), view)
        corner = select(cube, (0, 16, 0, 16), None)
        corner_program = lucijax.MAP().program(lucijax.Model(LINES).bind(corner.header), corner)
        t = time.perf_counter()
        run(corner, corner_program, None, "warm_local")
        rec["warm_local_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cluster = local_cluster(args.workers)
        client = Client(cluster)
        rec["cluster_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        warm, _ = run(corner, corner_program, client, "warm_cluster", block_size=4)
        rec["warm_cluster_s"] = time.perf_counter() - t
        rec["warm_cluster_workers"] = warm.meta["cluster"]["workers"]
        print(f"warm-up: local {rec['warm_local_s']:.1f} s, cluster start {rec['cluster_start_s']:.1f} s + "
              f"first blocks {rec['warm_cluster_s']:.1f} s (on {rec['warm_cluster_workers']} of "
              f"{args.workers} workers)", flush=True)
        local_t, cluster_t, local_cpu, cluster_cpu, identical = [], [], [], [], []
        for r in range(args.repeat):
            a, ta = run(view, program, None, "local")
            b, tb = run(view, program, client, "cluster")
            local_t.append(ta)
            cluster_t.append(tb)
            local_cpu.append(cpu_used["local"])
            cluster_cpu.append(cpu_used["cluster"])
            identical.append(same(a, b))
            print(f"round {r + 1}: one process {n / ta:.0f} spectra/s ({ta:.1f} s, {local_cpu[-1]:.1f} CPU s), "
                  f"cluster {n / tb:.0f} spectra/s ({tb:.1f} s, {cluster_cpu[-1]:.1f} CPU s; "
                  f"{b.meta['cluster']['task_seconds']:.1f} s of block compute on "
                  f"{b.meta['cluster']['workers']} workers, {b.meta['cluster']['n_devices']} devices), identical {identical[-1]}, load {os.getloadavg()[0]:.1f}",
                  flush=True)
        rec.update(local_s=local_t, cluster_s=cluster_t, local_cpu_s=local_cpu, cluster_cpu_s=cluster_cpu,
                   identical=all(identical),
                   local_spectra_per_s=n / statistics.median(local_t),
                   cluster_spectra_per_s=n / statistics.median(cluster_t),
                   ratio_median=statistics.median(ta / tb for ta, tb in zip(local_t, cluster_t)),
                   cpu_ratio_median=statistics.median(ca / cb for ca, cb in zip(local_cpu, cluster_cpu)))
        print(f"median: one process {rec['local_spectra_per_s']:.0f} spectra/s, cluster "
              f"{rec['cluster_spectra_per_s']:.0f} spectra/s, ratio cluster/one-process "
              f"{rec['ratio_median']:.3f} (per-round pairs; wall time: the figure on a quiet machine); "
              f"spectra per CPU-second ratio {rec['cpu_ratio_median']:.3f} (what a loaded machine can tell)",
              flush=True)
        if args.kill:
            killed: list = []
            save = BlockCheckpoint.save

            def save_then_kill(self, box, *a, **kw):
                save(self, box, *a, **kw)
                if not killed:
                    busy = [w for w, keys in client.processing().items() if keys]
                    for pid in client.run(os.getpid, workers=busy[:1]).values():
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)

            BlockCheckpoint.save = save_then_kill
            try:
                c, tc = run(view, program, client, "kill")
            finally:
                BlockCheckpoint.save = save
            rec.update(kill_s=tc, kill_rerun=[list(b) for b in c.meta["cluster"]["rerun"]],
                       kill_identical=same(a, c), kill_pids=killed)
            print(f"worker killed (pid {killed}) after the first block: {tc:.1f} s, re-run blocks "
                  f"{rec['kill_rerun']}, identical {rec['kill_identical']}", flush=True)
        client.close()
        cluster.close()
    print(json.dumps(rec))
    return 0 if rec["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
