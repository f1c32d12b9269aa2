#!/usr/bin/env python
"""Scale benchmarks of the whole-cube fit, each one measured on whole processes.

Usage (from the repository root, lucijax's environment)::

    python benchmarks/bench_scale.py throughput --small 32 --large 128 [--luci-region-size 8]
    python benchmarks/bench_scale.py compile --repeat 7
    python benchmarks/bench_scale.py rss --size 512      # and --size 1024
    python benchmarks/bench_scale.py gpu                 # on a machine with a GPU

* ``throughput``: ``lucijax fit`` (5 lines, sincgauss, Laplace errors, default settings)
  on a ``small``^2 and a ``large``^2 synthetic SN3 cube, as whole processes, after one
  warm-up run that fills the persistent compilation cache. Marginal throughput =
  (N_large - N_small) / (t_large - t_small): start-up, imports, tracing and cache loading
  cancel. LUCI 2.0.1 (``benchmarks/luci_runner.py`` in ``/work/luci-venv``) fits a
  centred square of the large cube in the same run; the ratio of the two is printed.
* ``compile``: ``lucijax fit`` of a 16x16 cube with an empty compilation cache (first
  run: cold start), then ``--repeat`` times more (cache warm: warm start, the median
  counts); whole-process wall times.
* ``rss``: writes a ``size``^2 x 840 cube slab by slab (``write_cube_streaming``) and fits
  the whole of it with ``lucijax fit``, under ``/usr/bin/time -v``: peak resident memory.
* ``gpu``: the full-size case (2048 x 2064 x 840, 4.2 M spectra, 14.6 GB on disk) on every
  local device: writes the cube (once) and times ``lucijax fit`` on it, I/O included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
LUCI_PYTHON = "/work/luci-venv/bin/python"


def make(path: Path, nx: int, ny: int | None = None, seed: int = 0) -> Path:
    from lucijax.simulate import write_cube_streaming

    if not path.exists():
        write_cube_streaming(path, nx, ny or nx, seed=seed, progress=False)
    return path


def lucijax_cmd(cube: Path, out: Path, extra=()) -> list[str]:
    return [sys.executable, "-m", "lucijax.cli", "fit", str(cube), "--lines", *LINES, "--out", str(out),
            "--no-checkpoint", "-q", *extra]


def timed(cmd, env=None, rss=False) -> dict:
    if rss:
        cmd = ["/usr/bin/time", "-v", *cmd]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    rec = {"wall_s": wall}
    if rss:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rec["peak_rss_gb"] = int(m.group(1)) / 1024**2 if m else None
    return rec


def cmd_throughput(args, work: Path) -> dict:
    small = make(work / f"cube{args.small}.hdf5", args.small, seed=1)
    large = make(work / f"cube{args.large}.hdf5", args.large, seed=2)
    extra = ["--no-mdn"] if args.no_mdn else []
    timed(lucijax_cmd(small, work / "warm", extra))  # fills the compilation cache
    rows = {}
    for name, cube in (("small", small), ("large", large)):
        rows[name] = min(timed(lucijax_cmd(cube, work / name, extra))["wall_s"] for _ in range(args.repeat))
    n_small, n_large = args.small**2, args.large**2
    res = {"t_small_s": rows["small"], "t_large_s": rows["large"],
           "marginal_spectra_per_s": (n_large - n_small) / (rows["large"] - rows["small"]),
           "whole_large_spectra_per_s": n_large / rows["large"], "mdn": not args.no_mdn}
    print(f"lucijax: {args.small}^2 {rows['small']:.1f} s, {args.large}^2 {rows['large']:.1f} s -> marginal "
          f"{res['marginal_spectra_per_s']:.0f} spectra/s ({res['whole_large_spectra_per_s']:.0f}/s whole process)")
    if args.luci_region_size and Path(args.luci_python).exists():
        c = args.large // 2
        h = args.luci_region_size // 2
        sys.path.insert(0, str(HERE))
        from bench_fit import add_luci_attrs

        add_luci_attrs(str(large))
        out = subprocess.run([args.luci_python, str(HERE / "luci_runner.py"), str(large), "--region",
                              f"{c - h}:{c + h},{c - h}:{c + h}", "--out", str(work / "luci")],
                             capture_output=True, text=True)
        try:
            luci = json.loads(out.stdout.strip().splitlines()[-1])
            res["luci_spectra_per_s"] = luci["spectra_per_s"]
            res["ratio_vs_luci"] = res["marginal_spectra_per_s"] / luci["spectra_per_s"]
            print(f"LUCI 2.0.1: {luci['spectra_per_s']:.2f} spectra/s on {luci['n_spectra']} spectra -> "
                  f"ratio {res['ratio_vs_luci']:.0f}x")
        except (IndexError, KeyError, json.JSONDecodeError):
            print("LUCI run failed:", out.stderr[-2000:])
    return res


def cmd_compile(args, work: Path) -> dict:
    cube = make(work / "cube16.hdf5", 16, seed=3)
    env = dict(os.environ, LUCIJAX_CACHE_DIR=str(work / "jax-cache"))
    shutil.rmtree(work / "jax-cache", ignore_errors=True)  # a cold start: empty caches
    first = timed(lucijax_cmd(cube, work / "c1"), env=env)["wall_s"]
    warm = [timed(lucijax_cmd(cube, work / "c2"), env=env)["wall_s"] for _ in range(args.repeat)]
    second = float(np.median(warm))
    print(f"compile + start-up: first run {first:.1f} s (empty cache), later runs {second:.2f} s (median of "
          f"{len(warm)}: {' '.join(f'{w:.2f}' for w in warm)}; whole processes)")
    return {"first_run_s": first, "second_run_s": second, "warm_runs_s": warm}


def cmd_rss(args, work: Path) -> dict:
    t = time.perf_counter()
    cube = make(work / f"cube{args.size}.hdf5", args.size, seed=4)
    print(f"cube {args.size}x{args.size}x840 written in {time.perf_counter() - t:.0f} s "
          f"({cube.stat().st_size / 1e9:.2f} GB)", flush=True)
    rec = timed(lucijax_cmd(cube, work / f"rss{args.size}"), rss=True)
    rec["spectra_per_s"] = args.size**2 / rec["wall_s"]
    print(f"fit of {args.size}^2: peak RSS {rec['peak_rss_gb']:.2f} GB, {rec['wall_s']:.0f} s "
          f"({rec['spectra_per_s']:.0f} spectra/s, whole process)")
    return rec


def cmd_gpu(args, work: Path) -> dict:
    # this process renders the cube on the GPU while a second one compiles the fit, then a
    # third fits: none may take the usual 75 % of the GPU's memory up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    print("devices:", jax.devices(), flush=True)
    nx, ny = args.gpu_shape
    extra = ["--batch-size", str(args.batch_size)]
    # compile (fills the persistent cache) while the full cube is written: a 16x16 fit
    warm = subprocess.Popen(lucijax_cmd(make(work / "cube16.hdf5", 16, seed=3), work / "warm", extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t = time.perf_counter()
    cube = make(work / f"cube_{nx}x{ny}.hdf5", nx, ny, seed=5)
    t_write = time.perf_counter() - t
    print(f"cube {nx}x{ny}x840 written in {t_write:.0f} s ({cube.stat().st_size / 1e9:.1f} GB)", flush=True)
    t = time.perf_counter()
    if warm.wait() != 0:
        raise RuntimeError(f"warm-up fit failed:\n{warm.stderr.read()[-3000:]}")
    print(f"warm-up (compile) finished {time.perf_counter() - t:.0f} s after the cube", flush=True)
    rec = timed(lucijax_cmd(cube, work / "full", extra))
    rec.update(n_spectra=nx * ny, spectra_per_s=nx * ny / rec["wall_s"], write_s=t_write,
               device=str(jax.devices()[0].device_kind))
    print(f"full cube {nx}x{ny} ({nx * ny} spectra): {rec['wall_s']:.1f} s, I/O included "
          f"({rec['spectra_per_s']:.0f} spectra/s, whole process)", flush=True)
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["throughput", "compile", "rss", "gpu"])
    p.add_argument("--small", type=int, default=32)
    p.add_argument("--large", type=int, default=128)
    p.add_argument("--repeat", type=int, default=1, help="runs of each size (the fastest counts)")
    p.add_argument("--size", type=int, default=512, help="rss: cube side")
    p.add_argument("--batch-size", type=int, default=4096, help="gpu: spectra per batch")
    p.add_argument("--gpu-shape", type=int, nargs=2, default=(2048, 2064), metavar=("NX", "NY"),
                   help="gpu: cube size (default: SITELLE's full 2048 x 2064)")
    p.add_argument("--luci-region-size", type=int, default=8)
    p.add_argument("--luci-python", default=LUCI_PYTHON)
    p.add_argument("--no-mdn", action="store_true", help="matched-filter start instead of the network")
    p.add_argument("--work", default=None, help="folder for cubes and outputs (default: a temp dir)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="lucijax_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    res = {"throughput": cmd_throughput, "compile": cmd_compile, "rss": cmd_rss, "gpu": cmd_gpu}[args.what](args, work)
    res.update(what=args.what, nproc=os.cpu_count(), load=os.getloadavg())
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
