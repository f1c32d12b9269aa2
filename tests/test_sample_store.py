"""The samples file of a run killed with ``kill -9`` (issue 16, acceptance 3): the run's
temporary ``.NAME.tmpPID`` stays beside the output; the next run into the same path
removes it (its process is gone), never the file of a run still going, and its own file
is renamed into place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(120)

_KILLED = """
import os, signal, sys
import numpy as np
from lucijax.results.samples import SampleStore
store = SampleStore(sys.argv[1], (4, 4), ["a", "b"], block=2)
store.write((0, 2, 0, 2), np.arange(4), {"samples": np.zeros((4, 1, 3, 2), np.float32)})
store._file.flush()
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_leaves_its_temporary_file_and_the_next_run_removes_it(tmp_path):
    from lucijax.results.samples import SampleStore, read_samples

    path = tmp_path / "samples.h5"
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(path)], capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    dead = int(proc.stdout.split()[0])
    stale = tmp_path / f".samples.h5.tmp{dead}"
    assert stale.exists() and not path.exists()

    # a run still going (this test's parent process stands for it) keeps its file; so do
    # files of other outputs and names that only look alike
    live = tmp_path / f".samples.h5.tmp{os.getppid()}"
    others = [tmp_path / f".other.h5.tmp{dead}", tmp_path / f".samples.h5.tmp{dead}x", tmp_path / "samples.h5.tmp1"]
    for f in [live, *others]:
        f.write_bytes(b"")

    store = SampleStore(path, (4, 4), ["a", "b"], block=2)
    assert not stale.exists()
    assert live.exists() and all(f.exists() for f in others)
    draws = np.arange(4 * 2 * 3 * 2, dtype=np.float32).reshape(4, 2, 3, 2)
    store.write((2, 4, 2, 4), np.arange(4), {"samples": draws})
    store.close()
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith(".samples.h5.tmp")} == {live.name, stale.name + "x"}
    got, names = read_samples(path)
    assert names == ["a", "b"]
    np.testing.assert_array_equal(got[2:4, 2:4].reshape(4, 2, 3, 2), draws)
    assert np.isnan(got[:2]).all()
