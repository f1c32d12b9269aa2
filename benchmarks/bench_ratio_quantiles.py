"""Coverage of the posterior ratio quantiles (``{RATIO}_Q16`` .. ``_Q84`` of a sampled fit)
against the truth of a synthetic SN3 cube with faint [SII], next to the delta-method
intervals of the MAP fit (``lucijax physics``: ratio +- error) on the same pixels.

    python benchmarks/bench_ratio_quantiles.py --side 12 --sampler nuts

Prints, per ratio, the share of pixels whose true ratio lies inside 16-84 % (68 % expected)
for the posterior quantiles and for the MAP delta-method interval, the [SII] S/N
percentiles, the sampler's rate and its R-hat / ESS. Slow (NUTS ~0.25 pixel/s on 2 CPU
cores): not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=12)
    ap.add_argument("--sampler", choices=["nuts", "mh"], default="nuts")
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=21)
    args = ap.parse_args(argv)

    import lucijax as lj
    from lucijax.status import Status
    from nebular_field import SN3_LINES, cube_of, nebular_truth

    lj.set_cpu_devices()
    ex = lj.Execution(progress=False)
    d = Path(tempfile.mkdtemp(prefix="ratio_q_"))
    n = args.side
    truth = nebular_truth((n, n), seed=args.seed, halpha_flux=(2e-17, 1.5e-16))
    cube_of(truth, SN3_LINES, "SN3", d / "sn3.hdf5", seed=3)
    fit = lj.fit(d / "sn3.hdf5", lj.Model(lines=list(SN3_LINES)), lj.MAP(), execution=ex)
    sampler = (lj.NUTS(num_warmup=args.warmup, num_samples=args.samples) if args.sampler == "nuts"
               else lj.MH(num_warmup=args.warmup, num_samples=args.samples))
    t0 = time.perf_counter()
    post = lj.sample(d / "sn3.hdf5", fit, sampler, execution=ex)
    seconds = time.perf_counter() - t0
    phys = lj.physics_maps(fit)
    f = truth["flux"]
    true = {"NII_HA": f["NII6583"] / f["Halpha"], "SII_HA": (f["SII6716"] + f["SII6731"]) / f["Halpha"],
            "SII_RATIO": f["SII6716"] / f["SII6731"]}
    good = np.isin(post.maps["STATUS"], [int(Status.CONVERGED), int(Status.UNRESOLVED)])
    print(f"{n}x{n} pixels, {args.sampler} ({args.warmup} warm-up, {args.samples} draws): {n * n / seconds:.3f} pixel/s, "
          f"{int(good.sum())} usable; R-hat p50/p90 {np.nanpercentile(post.maps['RHAT_MAX'], [50, 90]).round(3)}, "
          f"ESS p10/p50 {np.nanpercentile(post.maps['ESS_MIN'], [10, 50]).round(0)}")
    snr = fit.maps["SII6731_FLUX"] / fit.maps["SII6731_FLUX_ERR"]
    print(f"[SII]6731 S/N percentiles 5/25/50/75: {np.nanpercentile(snr, [5, 25, 50, 75]).round(2)}")
    print(f"{'ratio':10s} {'posterior 16-84 %':>18s} {'MAP +- error':>14s} {'(MAP pixels)':>13s}")
    for name, t in true.items():
        lo, hi = post.maps[f"{name}_Q16"], post.maps[f"{name}_Q84"]
        inside = float(np.mean((lo[good] <= t[good]) & (t[good] <= hi[good])))
        r, e = phys.maps[name], phys.maps[f"{name}_ERR"]
        ok = np.isfinite(r) & np.isfinite(e)
        inside_map = float(np.mean(np.abs(r[ok] - t[ok]) <= e[ok]))
        print(f"{name:10s} {inside:18.3f} {inside_map:14.3f} {int(ok.sum()):13d}")


if __name__ == "__main__":
    main()
