"""Shared fixtures: the real-data folder and small synthetic cubes (made once per session).

Compiling a fit costs ~10-30 s on the 2-core CI machine, so tests that fit share their
results through module- or session-scoped fixtures, and synthetic cubes stay small.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

import lucijax

# The suite runs as the command line does: one XLA CPU device per core (the engine spreads
# batches over them) and a persistent compilation cache. Importing lucijax sets neither: both
# are explicit calls. Each xdist worker keeps its own cache folder, which the child processes
# it starts inherit through LUCIJAX_CACHE_DIR: no two processes ever write or read one cache
# entry at the same time (jaxlib 0.10.2 crashed in native code in cache reads and writes
# while two workers shared one folder).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
_cache = os.environ.get("LUCIJAX_TEST_CACHE_DIR") or os.path.join(
    tempfile.gettempdir(), f"lucijax-test-cache-{os.getuid()}", _worker)
os.environ["LUCIJAX_CACHE_DIR"] = _cache
lucijax.set_cpu_devices()
lucijax.enable_compilation_cache(_cache)

#: ``../shared/data`` relative to the project root (see its README); absent in a user's
#: fresh clone, present in CI.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Size and seed of the statistical acceptance cube (tests/test_fit_synthetic.py): 1600
#: spectra, of which ~1330 have SNR >= 5 and ~950 SNR >= 10. That puts the standard error
#: of the median velocity error near 0.06 km/s (acceptance 0.3 km/s) and that of the
#: median relative Halpha flux error near 0.13 % (acceptance 1 %).
#: 40x40 in CI; ``LUCIJAX_STAT_SIZE=64`` measures the core acceptance on the brief's 64x64 cube
#: (``LUCIJAX_STAT_SIZE=64 pytest -s -p no:xdist tests/test_fit_synthetic.py``).
STAT_CUBE_SIZE = (int(os.environ.get("LUCIJAX_STAT_SIZE", 40)),) * 2
STAT_CUBE_SEED = 20240611


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real SITELLE data not found at {SHARED_DATA} (a fresh clone has no ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def stat_cube(tmp_path_factory):
    """(SyntheticCube, path) of the statistical acceptance cube, written as ORB level 2."""
    from lucijax.simulate import make_cube

    nx, ny = STAT_CUBE_SIZE
    cube = make_cube(nx, ny, seed=STAT_CUBE_SEED)
    path = tmp_path_factory.mktemp("stat_cube") / "c.hdf5"
    cube.write(path)
    return cube, path


@pytest.fixture(scope="session")
def bad_pixel_cube(tmp_path_factory):
    """A 4x4 synthetic cube with an all-NaN, an all-inf and an all-zero spectrum.

    Returns (SyntheticCube with the bad pixels, its path, the clean SyntheticCube,
    ``bad``: name -> (x, y) pixel).
    """
    import dataclasses

    from lucijax.simulate import make_cube

    clean = make_cube(4, 4, seed=7, snr_range=(20.0, 40.0))
    bad = {"nan": (1, 2), "inf": (3, 0), "zero": (0, 3)}
    data = clean.data.copy()
    data[bad["nan"]] = np.nan
    data[bad["inf"]] = np.inf
    data[bad["inf"] + (slice(0, None, 2),)] = -np.inf
    data[bad["zero"]] = 0.0
    cube = dataclasses.replace(clean, data=data)
    path = tmp_path_factory.mktemp("bad_cube") / "bad.hdf5"
    cube.write(path)
    return cube, path, clean, bad
