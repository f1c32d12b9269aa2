"""A whole synthetic cube sampled end to end with the default sampler, once without a break
and once killed with ``kill -9`` halfway then run again with the same command (issue 16,
acceptance 3).

Prints, for each ``lucijax fit`` process, its wall time and peak resident memory (the
kernel's ``ru_maxrss`` of that child alone, measured by ``/usr/bin/time``), how many of the
sampler's blocks were in the checkpoint when the kill came, and whether the maps
(``maps.fits``, every HDU) and the stored draws (``--bayes-samples``) of the two runs are
identical bit for bit.

    python benchmarks/bench_resume.py --out /tmp/resume --size 256

The cube is ``simulate.write_cube_streaming(size, size, seed)`` (5-line sincgauss SN3,
S/N 3-60); the fit is ``lucijax fit CUBE --lines (5) --bayes mh --bayes-samples`` with every
sampler option at its default. The two runs can go side by side (``--parallel``): memory
and identity do not depend on the load, wall times do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LINES = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]


def fit_command(cube, out, extra=()):
    return ["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-m", "lucijax.cli", "fit", str(cube), "--lines", *LINES,
            "--bayes", "mh", "--bayes-samples", str(Path(out) / "samples.h5"), "--out", str(out), "-q", *extra]


def start(cube, out, log, extra=()):
    Path(out).mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")  # noqa: SIM115 (closed by finish)
    proc = subprocess.Popen(fit_command(cube, out, extra), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, handle, time.time()


def finish(proc, handle, t0, log):
    rc = proc.wait()
    wall = time.time() - t0
    handle.close()
    text = Path(log).read_text()
    rss = [int(line.split()[1]) for line in text.splitlines() if line.startswith("MAXRSS_KB")]
    return {"rc": rc, "wall_s": round(wall, 1), "peak_rss_mb": round(rss[-1] / 1024, 1) if rss else None}


def sample_blocks(out):
    return len(list((Path(out) / "checkpoint" / "sample").glob("block_*.npz")))


def kill_halfway(proc, out, n_blocks, fraction):
    """SIGKILL the run (the whole process group: ``time`` and the fit) once ``fraction`` of
    the sampler's blocks are in its checkpoint."""
    want = max(1, round(fraction * n_blocks))
    while proc.poll() is None and sample_blocks(out) < want:
        time.sleep(0.5)
    if proc.poll() is not None:
        return None
    os.killpg(proc.pid, signal.SIGKILL)
    return sample_blocks(out)


def maps_of(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.data is not None}


def compare(a, b):
    from lucijax.results.samples import read_samples

    ma, mb = maps_of(Path(a) / "maps.fits"), maps_of(Path(b) / "maps.fits")
    differ = sorted(k for k in ma.keys() | mb.keys()
                    if k not in ma or k not in mb or not np.array_equal(ma[k], mb[k], equal_nan=True))
    sa, na = read_samples(Path(a) / "samples.h5")
    sb, nb = read_samples(Path(b) / "samples.h5")
    same_samples = na == nb and sa.shape == sb.shape and bool(np.array_equal(sa, sb, equal_nan=True))
    return {"maps_compared": len(ma), "maps_differing": differ, "samples_shape": list(sa.shape),
            "samples_identical": same_samples, "pixels_with_draws": int(np.isfinite(sa).all(axis=tuple(range(2, sa.ndim))).sum())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--kill-fraction", type=float, default=0.5, help="share of the sampler's blocks done at the kill")
    p.add_argument("--parallel", action="store_true", help="run the uninterrupted and the killed run side by side")
    p.add_argument("--block-size", type=int, default=None, help="default: the engine's")
    args = p.parse_args(argv)

    from lucijax.engine import Execution
    from lucijax.simulate import write_cube_streaming

    args.out.mkdir(parents=True, exist_ok=True)
    cube = args.out / f"cube{args.size}.hdf5"
    if not cube.exists():
        t0 = time.time()
        write_cube_streaming(cube, args.size, args.size, seed=args.seed, progress=False)
        print(f"cube {cube}: {args.size}x{args.size}, written in {time.time() - t0:.0f} s", flush=True)
    block = args.block_size or Execution().block_size
    extra = ("--block-size", str(block)) if args.block_size else ()
    n_blocks = (-(-args.size // block)) ** 2
    whole, killed = args.out / "whole", args.out / "killed"
    report = {"size": args.size, "block": block, "sample_blocks": n_blocks, "command": fit_command(cube, "OUT", extra)[3:]}

    w = start(cube, whole, args.out / "whole.log", extra) if args.parallel else None
    if not args.parallel:
        report["whole"] = finish(*start(cube, whole, args.out / "whole.log", extra), args.out / "whole.log")
        print("whole:", report["whole"], flush=True)
    k = start(cube, killed, args.out / "killed.log", extra)
    report["killed_at_blocks"] = kill_halfway(k[0], killed, n_blocks, args.kill_fraction)
    report["killed"] = finish(*k, args.out / "killed.log")
    print("killed:", report["killed"], "with", report["killed_at_blocks"], "of", n_blocks, "sampler blocks done", flush=True)
    report["rerun"] = finish(*start(cube, killed, args.out / "rerun.log", extra), args.out / "rerun.log")
    print("rerun:", report["rerun"], flush=True)
    if args.parallel:
        report["whole"] = finish(*w, args.out / "whole.log")
        print("whole:", report["whole"], flush=True)
    if report["whole"]["rc"] == 0 and report["rerun"]["rc"] == 0:
        report["identity"] = compare(whole, killed)
        print("identity:", report["identity"], flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    ok = report.get("identity", {}).get("samples_identical") and not report["identity"]["maps_differing"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
