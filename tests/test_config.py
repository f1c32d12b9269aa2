"""The explicit global settings (lucijax.config): the compilation cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)

_CHILD = """
import sys, warnings
warnings.simplefilter("error")  # a failed cache write is a warning from JAX: make it fail the run
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
if sys.argv[2] == "bounded":
    import lucijax
    lucijax.enable_compilation_cache(sys.argv[1])
jax.jit(lambda x: x * float(sys.argv[3]) + 1.0)(jax.numpy.ones(3)).block_until_ready()
"""


def _compile(folder, mode, factor):
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), mode, str(factor)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_cache_written_without_a_bound_keeps_working_with_one(tmp_path):
    """A folder filled by an unbounded cache (lucijax 0.1, or JAX used directly) has entries
    without access times; JAX's bounded cache failed every write in it (every later run then
    recompiled everything). enable_compilation_cache repairs the folder."""
    _compile(tmp_path, "unbounded", 2.0)
    old = sorted(p.name for p in tmp_path.glob("*-cache"))
    assert old and not list(tmp_path.glob("*-atime"))
    _compile(tmp_path, "bounded", 3.0)  # a new program: written, no warning
    entries = sorted(p.name for p in tmp_path.glob("*-cache"))
    assert set(old) < set(entries)
    assert {p.name[: -len("-cache")] for p in tmp_path.glob("*-cache")} == \
        {p.name[: -len("-atime")] for p in tmp_path.glob("*-atime")}


def test_cache_off_and_unwritable(tmp_path):
    import lucijax

    assert lucijax.enable_compilation_cache("off") is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert lucijax.enable_compilation_cache(blocker / "cache") is None  # not a folder: no cache, no error
