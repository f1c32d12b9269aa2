"""Separate broadening groups (issue 21 item 1): Halpha at 40 km/s and [NII] at 15 km/s with
one velocity, fitted with ``broadening_groups=(0, 1, 1)`` and with one broadening for all.

    PYTHONPATH=. python benchmarks/bench_broadening_groups.py [N] [mdn|matched]

Prints, for each model, the STATUS counts, the time, and the pulls (mean, std) of the
velocity and of each broadening over the converged pixels of an N x N cube (default 12).
"""

from __future__ import annotations

import sys
import time

import numpy as np

import lucijax
from lucijax.simulate import make_cube

LINES = ("Halpha", "NII6583", "NII6548")
TRUE_B = (40.0, 15.0)


def main(n: int = 12, start: str = "mdn", path: str = "/tmp/bench_broadening_groups.hdf5"):
    b = np.stack([np.full((n, n), TRUE_B[0]), np.full((n, n), TRUE_B[1])], axis=-1)
    cube = make_cube(n, n, lines=LINES, broadening_groups=(0, 1, 1), broadening_kms=b, snr_range=(20.0, 60.0),
                     velocity_range_kms=(-150.0, 150.0), seed=3)
    cube.write(path)
    ex = lucijax.Execution(progress=False)
    for groups in ((0, 1, 1), None):
        t = time.perf_counter()
        res = lucijax.fit(path, lucijax.Model(LINES, broadening_groups=groups), lucijax.MAP(start=start), execution=ex)
        f = res.fields
        ok = f["status"] == 0
        codes, counts = np.unique(f["status"], return_counts=True)
        print(f"broadening_groups={groups}: {time.perf_counter() - t:.1f} s, STATUS {dict(zip(codes.tolist(), counts.tolist()))}")
        pv = (f["velocity_kms"][..., 0] - cube.truth["VELOCITY"].T) / f["velocity_err_kms"][..., 0]
        print(f"  velocity pull mean {pv[ok].mean():+.3f} std {pv[ok].std():.3f}")
        for k in range(f["broadening_kms"].shape[-1]):
            truth = TRUE_B[k]
            p = (f["broadening_kms"][..., k] - truth) / f["broadening_err_kms"][..., k]
            print(f"  broadening {k} (true {truth}): median {np.median(f['broadening_kms'][..., k][ok]):.2f} km/s, "
                  f"pull mean {p[ok].mean():+.3f} std {p[ok].std():.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12, sys.argv[2] if len(sys.argv) > 2 else "mdn")
