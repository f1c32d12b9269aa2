"""Child process of tests/test_engine_modes.py: one mode of lucijax on a small cube, through
the engine, with a checkpoint folder, on N CPU devices, optionally killed with SIGKILL (by
itself, after a given number of block reads of the stage under test).

    python tests/engine_child.py MODE CUBE OUT DEVICES [CRASH_AFTER]

Writes OUT/maps.npz (every map of the result) and OUT/reads.txt (how many blocks the stage
under test read in this process).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

import lucijax as lj

LINES = ["Halpha", "NII6583", "NII6548"]
WINDOW = (15000.0, 15400.0)
BLOCK = 3
BATCH = 4


class Counting:
    """A view of a cube that counts block reads and kills its process after ``crash_after``."""

    def __init__(self, cube, crash_after=None):
        self._cube = cube
        self.reads = 0
        self.crash_after = crash_after

    def __getattr__(self, name):
        return getattr(self._cube, name)

    def read_spectra(self, *box):
        if self.crash_after is not None and self.reads >= self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a run killed with kill -9, mid-way
        self.reads += 1
        return self._cube.read_spectra(*box)


def samplers():
    nested = lj.Nested(num_samples=50, num_live_points=40, max_samples=3000)
    return {
        # MH keeps its default second run of the pixels that did not mix (its reads count
        # too); NUTS and the ensemble leave it out (time)
        "nuts": lj.NUTS(num_warmup=40, num_samples=40, max_tree_depth=4, retry=0),
        "mh": lj.MH(num_warmup=40, num_samples=40),
        "ensemble": lj.Ensemble(num_warmup=40, num_samples=40, walkers=16, retry=0),
        "nested": nested,
        "evidence": lj.EvidenceSelection(estimator=nested),
    }


def main():
    mode, cube_path, out, devices = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    crash_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
    lj.set_cpu_devices(devices)
    lj.enable_compilation_cache()
    import jax

    assert len(jax.local_devices()) == devices, jax.local_devices()
    out.mkdir(parents=True, exist_ok=True)
    model = lj.Model(LINES, window=WINDOW)
    ex = lj.Execution(batch_size=BATCH, block_size=BLOCK, checkpoint=str(out / "checkpoint"), progress=False)
    with lj.open_cube(cube_path) as cube:
        if mode in ("map", "frozen", "components"):
            solver = {"map": lj.MAP(), "components": lj.Components(max_iter=6),
                      "frozen": lj.Frozen({"VELOCITY": np.full(cube.shape[1::-1], 50.0),
                                           "BROADENING": np.full(cube.shape[1::-1], 30.0)})}[mode]
            view = Counting(cube, crash_after)
            result = lj.fit(view, model, solver, execution=ex)
        else:
            fit = lj.fit(cube, model, lj.MAP(), execution=lj.Execution(batch_size=BATCH, block_size=BLOCK, progress=False))
            view = Counting(cube, crash_after)
            samples = str(out / "samples.h5") if mode == "mh" else None
            result = lj.sample(view, fit, samplers()[mode], execution=ex, samples=samples)
    np.savez(out / "maps.npz", **result.maps)
    (out / "reads.txt").write_text(str(view.reads))


if __name__ == "__main__":
    main()
