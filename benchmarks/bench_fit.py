#!/usr/bin/env python
"""Whole-cube fit throughput of lucijax against LUCI 2.0.1, measured in the same run.

Usage (from the repository root, lucijax's environment)::

    python benchmarks/bench_fit.py --size 64 --luci-region-size 8 --threads 2 --out /tmp/bench

What it does
------------
1. Makes a synthetic SN3 cube ``lucijax.simulate.make_cube(size, size, seed=0)`` (5 lines:
   Halpha NII6583 NII6548 SII6716 SII6731, sincgauss, random kinematics per pixel, known
   truth) and writes it with ``SyntheticCube.write`` (ORB level-2 HDF5). The root
   attributes LUCI 2.0.1 insists on under their FITS names (``NAXIS``, ``STEPNB``,
   ``STEP``, plus ``NAXIS1..3``) are then added with h5py -- lucijax's writer uses ORB's
   lower-case names only (see ``benchmarks/luci_runner.py`` for the layout LUCI reads).
2. lucijax, in this process (``lucijax.fit(path, lucijax.Model(lines, profile='sincgauss'),
   lucijax.MAP(), region=..., execution=lucijax.Execution(progress=False))``: network start,
   MAP fit + Laplace uncertainties of every pixel). The process first calls
   ``lucijax.set_cpu_devices()`` (one XLA CPU device per usable core, or ``--host-devices``)
   and ``lucijax.enable_compilation_cache(OUT/jax_cache)`` (a fresh directory, so that the
   cold call really compiles; ``--no-jax-cache`` leaves the cache off):

   * ``cold``: one call on a small region (``--compile-region-size``, default 16x16 = 256
     spectra) in a fresh process with an empty compilation cache = start-up (imports
     excluded, reported apart) + tracing + XLA compilation + one batch. Reported as
     "compile + startup". The region must hold at least ``batch_size`` (64 on CPU) spectra:
     the engine fits a smaller region as one smaller batch, a different compiled shape
     that the full cube would not reuse. The engine compiles the batch program for the
     devices the call uses (at most one per batch): with more devices than the cold call
     has batches, the others compile (or load from the cache) in the next call.
   * ``half``: the region x 0:size, y 0:size/2, then ``full``: the whole cube. **The engine
     keeps the compiled executables of the process** (``lucijax.engine``): a second
     ``lucijax.fit`` of the same model, solver and batch shape neither traces nor compiles,
     cache or not. The time includes opening the cube, binding the model, building the
     program (the network's weights are loaded), reading the cube and building the maps:
     what a user calling ``lucijax.fit`` again in a notebook would see.
   * ``marginal``: ``(N_full - N_half) / (t_full - t_half)``, the throughput with every
     per-call constant (file open, binding, maps) cancelled.
   * ``steady``: the model bound once (``Model.bind(cube.header)``), the program built once
     (``lucijax.MAP().program(bound)``), then ``lucijax.engine.map_pixels(cube, program,
     lucijax.Execution(progress=False))`` on the whole cube with that program (the engine
     alone, no per-call set-up, no maps). ``--no-steady`` skips it.
3. LUCI: ``/work/luci-venv/bin/python benchmarks/luci_runner.py CUBE --region ...`` as a
   subprocess on a centred ``--luci-region-size`` square (LUCI fits ~1-3 spectra/s on
   this class of machine), with ``--n-threads`` = ``--threads``; its timed
   ``fit_seconds`` excludes import, cube loading and a 2-pixel warm-up (see the runner).
   LUCI is run as shipped (ML initial guess, ``nii_cons=True``, no uncertainties, its own
   spectral axis -- ``--luci-axis exact`` corrects its ~-26 km/s axis bias).
4. Prints a table (n spectra, seconds, spectra/s, ratio lucijax / LUCI) and the accuracy
   of both on LUCI's region against the truth (median |dv|, median bias of the Halpha
   velocity, the same for the broadening, failures), and writes everything to
   ``OUT/bench_fit.json``.

The two engines are measured back-to-back in one run so that the ratio is meaningful on a
shared machine; the load average and the CPU seconds of each phase are recorded so that
contention can be judged (cpu/wall close to the thread count = the engine had the cores).

``--threads N`` sets LUCI's ``n_threads``; if N is below the number of CPUs, the whole
benchmark (and so XLA's thread pool and LUCI's workers) is pinned to the first N CPUs.
On CPU, one XLA device runs this program on about one core: ``lucijax.set_cpu_devices()``
splits the CPU into one device per usable core (after the pinning above), and the engine
sends its batches round robin to them; ``--host-devices N`` sets N devices instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
HERE = Path(__file__).resolve().parent
DEFAULT_LUCI_PYTHON = "/work/luci-venv/bin/python"


# ----------------------------------------------------------------------------- helpers
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="cube side in pixels (size x size spectra); default 64")
    p.add_argument("--luci-region-size", type=int, default=8, help="side of LUCI's centred square region; default 8")
    p.add_argument("--compile-region-size", type=int, default=16,
                   help="side of lucijax's cold (compile) call; default 16 (256 spectra >= the engine's default CPU batch "
                   "of 64, so the full cube reuses that compiled batch shape)")
    p.add_argument("--skip-luci", action="store_true", help="do not run LUCI")
    p.add_argument("--threads", type=int, default=2, help="LUCI n_threads; pins the run to N CPUs if N < nproc")
    p.add_argument("--out", default=None, help="output directory (cube, LUCI maps, bench_fit.json); default a temp dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--luci-python", default=DEFAULT_LUCI_PYTHON, help=f"LUCI venv interpreter ({DEFAULT_LUCI_PYTHON})")
    p.add_argument("--luci-axis", choices=["luci", "exact"], default="luci", help="runner --axis (default: as shipped)")
    p.add_argument("--luci-timeout", type=float, default=3600.0, help="seconds before the LUCI run is killed")
    p.add_argument("--host-devices", type=int, default=0,
                   help="N > 0: XLA_FLAGS=--xla_force_host_platform_device_count=N, so that the engine spreads its "
                   "batches over N CPU devices (default 0: lucijax.set_cpu_devices(), one device per usable CPU)")
    p.add_argument("--no-jax-cache", action="store_true",
                   help="no persistent compilation cache (the engine still keeps the compiled programs of the process)")
    p.add_argument("--no-steady", action="store_true", help="skip the reused-program map_pixels measurement")
    p.add_argument("--no-half", action="store_true", help="skip the half-cube call (no marginal throughput)")
    args = p.parse_args(argv)
    if args.size < 2:
        p.error("--size must be >= 2")
    args.luci_region_size = min(args.luci_region_size, args.size)
    args.compile_region_size = min(args.compile_region_size, args.size)
    return args


def machine_info() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "mem_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def git_revision() -> str | None:
    """Commit of the lucijax checkout (+ '-dirty' with uncommitted changes), if a git repo."""
    try:
        root = HERE.parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class Phase:
    """Wall and CPU seconds (this process + reaped children) of a block."""

    def __enter__(self):
        self.load_before = loadavg()
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_self = (r1.ru_utime + r1.ru_stime) - (self.r0.ru_utime + self.r0.ru_stime)
        self.cpu_children = (c1.ru_utime + c1.ru_stime) - (self.c0.ru_utime + self.c0.ru_stime)
        self.load_after = loadavg()
        return False

    def record(self, **extra) -> dict:
        d = {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_self + self.cpu_children,
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
        }
        d.update(extra)
        if d.get("n_spectra"):
            d["spectra_per_s"] = d["n_spectra"] / self.seconds
        return d


def add_luci_attrs(path: str) -> list[str]:
    """Add the root attributes LUCI 2.0.1 reads only under FITS names; return those added."""
    import h5py

    added = []
    with h5py.File(path, "a") as f:
        nx, ny, nz = f["data"].shape
        a = f.attrs
        want = {
            "NAXIS": 3,
            "NAXIS1": int(nx),
            "NAXIS2": int(ny),
            "NAXIS3": int(nz),
            "STEPNB": int(a["step_nb"]),
            "STEP": float(a["step"]),
            # the ones below LUCI also accepts under ORB's names; written for clarity
            "ZPDINDEX": int(a["zpd_index"]),
            "FILTER": str(a["filter_name"]),
            "CRVAL3": float(a["axis_min"]),
            "CDELT3": float(a["axis_step"]),
            "CALIBNM": float(a["nm_laser"]),
        }
        for k, v in want.items():
            if k not in a:
                a[k] = v
                added.append(k)
        if int(a["STEPNB"]) != nz:
            raise RuntimeError(f"STEPNB={int(a['STEPNB'])} but the cube has {nz} channels")
    return added


def accuracy(vel, broad, truth_v, truth_b, vel_err=None) -> dict:
    import numpy as np

    vel = np.asarray(vel, np.float64)
    broad = np.asarray(broad, np.float64)
    ok = np.isfinite(vel) & (vel != 0)
    out = {"n": int(vel.size), "n_failed": int(vel.size - ok.sum())}
    if ok.any():
        dv = (vel - truth_v)[ok]
        out.update(
            median_abs_dv_kms=float(np.median(np.abs(dv))),
            median_dv_kms=float(np.median(dv)),
            p90_abs_dv_kms=float(np.percentile(np.abs(dv), 90)),
        )
        okb = ok & np.isfinite(broad)
        if okb.any():
            db = (broad - truth_b)[okb]
            out.update(median_abs_dsigma_kms=float(np.median(np.abs(db))), median_dsigma_kms=float(np.median(db)))
        if vel_err is not None:
            e = np.asarray(vel_err, np.float64)[ok]
            good = np.isfinite(e) & (e > 0)
            if good.any():
                out["median_vel_err_kms"] = float(np.median(e[good]))
                out["frac_within_1sigma"] = float(np.mean(np.abs(dv[good]) < e[good]))
    return out


def fmt(x, spec=".1f"):
    if x is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width)) if width else "-"
    return format(x, spec)


# ----------------------------------------------------------------------------- lucijax
def run_lucijax(args, cube_path: str, out_dir: Path, res: dict):
    """All lucijax timings, in this process. Returns the full-cube FitResult."""
    import lucijax

    model = lucijax.Model(LINES, profile="sincgauss")
    quiet = lucijax.Execution(progress=False)
    s, c = args.size, args.compile_region_size
    calls = [("cold", (0, c, 0, c))]
    if not args.no_half and s >= 2:
        calls.append(("half", (0, s, 0, s // 2)))
    calls.append(("full", None))
    full = None
    for name, region in calls:
        with Phase() as ph:
            r = lucijax.fit(cube_path, model, lucijax.MAP(), region=region, execution=quiet)
        n = (region[1] - region[0]) * (region[3] - region[2]) if region else s * s
        res["lucijax"][name] = ph.record(n_spectra=n, region=list(region) if region else [0, s, 0, s])
        print(f"  lucijax {name:5s}: {n:6d} spectra in {ph.seconds:8.2f} s", file=sys.stderr, flush=True)
        if name == "full":
            full = r
    lj = res["lucijax"]
    if "half" in lj and lj["full"]["seconds"] > lj["half"]["seconds"]:
        dn = lj["full"]["n_spectra"] - lj["half"]["n_spectra"]
        dt = lj["full"]["seconds"] - lj["half"]["seconds"]
        lj["marginal"] = {"n_spectra": dn, "seconds": dt, "spectra_per_s": dn / dt}

    if not args.no_steady:
        try:
            from lucijax.engine import map_pixels

            cube = lucijax.open_cube(cube_path)
            try:
                bound = model.bind(cube.header)
                program = lucijax.MAP().program(bound)
                map_pixels(lucijax.views.region(cube, (0, c, 0, c)), program, quiet)  # compiled program (or load) + warm-up
                with Phase() as ph:
                    map_pixels(cube, program, quiet)
                lj["steady"] = ph.record(n_spectra=s * s, region=[0, s, 0, s])
            finally:
                cube.close()
            print(f"  lucijax steady: {s * s:6d} spectra in {ph.seconds:8.2f} s", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 -- internal API may change; the benchmark goes on
            lj["steady"] = {"error": f"{type(exc).__name__}: {exc}"}
    return full


# ----------------------------------------------------------------------------- LUCI
def run_luci(args, cube_path: str, out_dir: Path, region, res: dict):
    x0, x1, y0, y1 = region
    luci_out = out_dir / "luci"
    shutil.rmtree(luci_out, ignore_errors=True)
    cmd = [
        args.luci_python, str(HERE / "luci_runner.py"), cube_path,
        "--region", f"{x0}:{x1},{y0}:{y1}",
        "--lines", *LINES,
        "--model", "sincgauss",
        "--out", str(luci_out),
        "--n-threads", str(args.threads),
        "--axis", args.luci_axis,
        "--quiet",
    ]
    res["luci_command"] = shlex.join(cmd)
    log_path = out_dir / "luci_stderr.log"
    with Phase() as ph, open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=args.luci_timeout)
            stdout, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stdout, rc = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    info = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            info = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    rec = {"returncode": rc, "stderr_log": str(log_path), "process_seconds": ph.seconds,
           "process_cpu_seconds": ph.cpu_self + ph.cpu_children,
           "loadavg_before": ph.load_before, "loadavg_after": ph.load_after}
    if info is None:
        rec["error"] = f"no JSON from luci_runner (rc={rc}); see {log_path}"
    else:
        rec.update(info)
    res["luci"] = rec
    return rec


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    nproc = os.cpu_count() or 1
    if args.threads < nproc and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: max(1, args.threads)]
        os.sched_setaffinity(0, cpus)  # before JAX starts its thread pool; inherited by LUCI
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench_fit_")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    import numpy as np

    res: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "args": vars(args),
        "lines": LINES,
        "model": "sincgauss",
        "lucijax": {},
    }
    s = args.size
    print(f"bench_fit: {s}x{s} synthetic SN3 cube, {len(LINES)} lines, sincgauss; out={out_dir}", file=sys.stderr)

    # Importing lucijax changes nothing: the CPU devices and JAX's persistent compilation
    # cache are set explicitly, after the import and before any computation. The cache
    # goes to a fresh directory so that the cold call really compiles.
    if args.host_devices > 0:  # before JAX starts its backend (lucijax.set_cpu_devices respects it)
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.host_devices}".strip()
    cache_dir = out_dir / "jax_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    if not args.no_jax_cache:
        cache_dir.mkdir(parents=True)
    with Phase() as ph:
        import jax

        import lucijax
        from lucijax import api  # noqa: F401  (the API and the engine: JAX, numpy, the readers)
    res["lucijax"]["import"] = ph.record()
    lucijax.set_cpu_devices()
    if args.no_jax_cache:
        jax.config.update("jax_compilation_cache_dir", None)  # off even if $JAX_COMPILATION_CACHE_DIR is set
        used_cache = None
    else:
        used_cache = lucijax.enable_compilation_cache(cache_dir)
    res["jax_cache"] = None if used_cache is None else str(used_cache)

    # ---- cube
    with Phase() as ph:

        from lucijax.simulate import make_cube

        cube = make_cube(s, s, seed=args.seed)
        cube_path = str(out_dir / f"cube_{s}x{s}_seed{args.seed}.hdf5")
        cube.write(cube_path)
        added = add_luci_attrs(cube_path)
    res["cube"] = {"path": cube_path, "shape": list(cube.data.shape), "make_write_seconds": ph.seconds,
                   "luci_attrs_added": added}
    res["versions"] = {"jax": jax.__version__, "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
                       "numpy": np.__version__, "lucijax": lucijax.__version__, "lucijax_git": git_revision(),
                       "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
                       "XLA_FLAGS": os.environ.get("XLA_FLAGS")}

    # ---- lucijax
    full = run_lucijax(args, cube_path, out_dir, res)

    # ---- LUCI (right after, same process tree, same cube)
    r = args.luci_region_size
    lx0 = ly0 = (s - r) // 2
    region = (lx0, lx0 + r, ly0, ly0 + r)
    res["luci_region"] = list(region)
    luci = None
    if not args.skip_luci:
        print(f"  LUCI on region x {lx0}:{lx0 + r}, y {ly0}:{ly0 + r} ({r * r} spectra) ...", file=sys.stderr, flush=True)
        luci = run_luci(args, cube_path, out_dir, region, res)

    # ---- accuracy on LUCI's region (maps and truth are [y, x])
    tv, tb = cube.truth["VELOCITY"], cube.truth["BROADENING"]
    ys, xs = slice(region[2], region[3]), slice(region[0], region[1])
    m = full.maps
    acc = {
        "lucijax_luci_region": accuracy(m["HALPHA_VELOCITY"][ys, xs], m["HALPHA_BROADENING"][ys, xs], tv[ys, xs],
                                        tb[ys, xs], m["HALPHA_VELOCITY_ERR"][ys, xs]),
        "lucijax_full_cube": accuracy(m["HALPHA_VELOCITY"], m["HALPHA_BROADENING"], tv, tb, m["HALPHA_VELOCITY_ERR"]),
    }
    status = np.asarray(m["STATUS"])
    acc["lucijax_full_cube"]["status_counts"] = {int(k): int(v) for k, v in zip(*np.unique(status, return_counts=True))}
    if luci and luci.get("velocity_map"):
        acc["luci_luci_region"] = accuracy(np.load(luci["velocity_map"]), np.load(luci["broadening_map"]),
                                           tv[ys, xs], tb[ys, xs])
    res["accuracy"] = acc

    # ---- ratios
    lj = res["lucijax"]
    ratios = {}
    if luci and luci.get("spectra_per_s"):
        ls_ = luci["spectra_per_s"]
        for key in ("full", "marginal", "steady"):
            if lj.get(key, {}).get("spectra_per_s"):
                ratios[key] = lj[key]["spectra_per_s"] / ls_
        # a first-ever full-cube call pays roughly the compile too
        t_first = lj["cold"]["seconds"] + lj["full"]["seconds"]
        lj["full_incl_compile_estimate"] = {"n_spectra": s * s, "seconds": t_first, "spectra_per_s": s * s / t_first}
        ratios["full_incl_compile_estimate"] = (s * s / t_first) / ls_
    res["ratios_lucijax_over_luci"] = ratios

    (out_dir / "bench_fit.json").write_text(json.dumps(res, indent=2, default=str))
    print_report(res)
    return 0


def print_report(res):
    m, lj, luci = res["machine"], res["lucijax"], res.get("luci")
    s = res["args"]["size"]
    print(f"# bench_fit  {res['date']}")
    print(f"command : {res['command']}")
    print(f"machine : {m['nproc']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, {m['mem_gb']} GB; {m['platform']}")
    v = res["versions"]
    print(f"versions: lucijax {v['lucijax']} (git {v.get('lucijax_git')}), jax {v['jax']} ({v['jax_backend']}, "
          f"{len(v['jax_devices'])} device(s)), numpy {v['numpy']}"
          + (f", LUCI {luci.get('luci_version')}" if luci else ""))
    print(f"cube    : {s}x{s} x {res['cube']['shape'][2]} ch synthetic SN3, 5 lines, sincgauss, seed "
          f"{res['args']['seed']}; jax persistent cache: {'on' if res['jax_cache'] else 'off'}")
    print()
    hdr = f"{'engine':8s} {'measurement':60s} {'n spec':>7s} {'seconds':>9s} {'spectra/s':>10s} {'cpu s':>7s} {'load':>5s}"
    print(hdr)
    print("-" * len(hdr))

    def row(engine, label, d):
        if not d or "seconds" not in d:
            return
        load = d.get("loadavg_before")
        print(f"{engine:8s} {label:60s} {d.get('n_spectra') or '-':>7} {d['seconds']:9.2f} "
              f"{fmt(d.get('spectra_per_s'), '.2f'):>10s} {fmt(d.get('cpu_seconds'), '.0f'):>7s} "
              f"{fmt(load[0] if load else None, '.1f'):>5s}")

    c = res["args"]["compile_region_size"]
    row("lucijax", "import jax + lucijax", lj.get("import"))
    row("lucijax", f"lucijax.fit {c}x{c}, cold: compile + startup", lj.get("cold"))
    how = "compiled program kept"
    row("lucijax", f"lucijax.fit {s}x{s // 2} ({how})", lj.get("half"))
    row("lucijax", f"lucijax.fit {s}x{s} full cube ({how})  [headline]", lj.get("full"))
    row("lucijax", "marginal (N_full - N_half)/(t_full - t_half)", lj.get("marginal"))
    row("lucijax", "map_pixels, program built once (steady state)", lj.get("steady"))
    row("lucijax", "estimate of a first call: cold + full", lj.get("full_incl_compile_estimate"))
    if lj.get("steady", {}).get("error"):
        print(f"lucijax  steady state skipped: {lj['steady']['error']}")
    if luci:
        if luci.get("error") and not luci.get("fit_seconds"):
            print(f"LUCI     FAILED: {luci['error']}")
        else:
            rr = res["luci_region"]
            d = {"n_spectra": luci["n_spectra"], "seconds": luci["fit_seconds"], "spectra_per_s": luci["spectra_per_s"],
                 "loadavg_before": luci.get("loadavg_before")}
            row("LUCI", f"fit_cube x {rr[0]}:{rr[1]} y {rr[2]}:{rr[3]}, n_threads={luci['n_threads']}", d)
            print(f"{'LUCI':8s} {'(setup ' + fmt(luci.get('setup_seconds'), '.1f') + ' s, warm-up ' + fmt(luci.get('warmup_seconds'), '.1f') + ' s, whole process ' + fmt(luci.get('process_seconds'), '.1f') + ' s, cpu ' + fmt(luci.get('process_cpu_seconds'), '.0f') + ' s)'}")
    print()
    for k, v in res["ratios_lucijax_over_luci"].items():
        print(f"ratio lucijax/LUCI spectra/s  [{k}]: {v:.1f}x")
    print()
    print("accuracy, Halpha velocity and broadening vs truth (km/s):")
    hdr = f"{'engine / pixels':34s} {'n':>5s} {'fail':>4s} {'med|dv|':>8s} {'med dv':>7s} {'p90|dv|':>8s} {'med|ds|':>8s} {'med ds':>7s} {'within 1 sig':>12s}"
    print(hdr)
    print("-" * len(hdr))
    for key, label in (("lucijax_luci_region", "lucijax, LUCI region"), ("luci_luci_region", f"LUCI ({res['args']['luci_axis']} axis), LUCI region"),
                       ("lucijax_full_cube", "lucijax, full cube")):
        a = res["accuracy"].get(key)
        if not a:
            continue
        print(f"{label:34s} {a['n']:5d} {a['n_failed']:4d} {fmt(a.get('median_abs_dv_kms'), '8.2f')} "
              f"{fmt(a.get('median_dv_kms'), '7.2f')} {fmt(a.get('p90_abs_dv_kms'), '8.2f')} "
              f"{fmt(a.get('median_abs_dsigma_kms'), '8.2f')} {fmt(a.get('median_dsigma_kms'), '7.2f')} "
              f"{fmt(a.get('frac_within_1sigma'), '12.2f')}")
    sc = res["accuracy"]["lucijax_full_cube"].get("status_counts")
    print(f"lucijax STATUS counts (full cube): {sc}")
    print(f"\nJSON: {Path(res['cube']['path']).parent / 'bench_fit.json'}")


if __name__ == "__main__":
    sys.exit(main())
