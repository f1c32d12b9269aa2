"""The engine (lucijax.engine.map_pixels): chunking, resume after a crash, several devices,
and a command-line fit killed with SIGKILL then run again."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import lucijax
from lucijax import simulate
from lucijax.engine import Execution, map_pixels

LINES = list(simulate.DEFAULT_LINES)


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    cube = simulate.make_cube(20, 12, seed=21)
    return cube.write(tmp_path_factory.mktemp("driver") / "cube.hdf5")


@pytest.fixture(scope="module")
def program(cube_path):
    """The MAP program of the cube, from the matched-filter start."""
    with lucijax.open_cube(cube_path) as c:
        bound = lucijax.Model(LINES).bind(c.header)
    return lucijax.MAP(start="matched").program(bound)


def _fields(values) -> dict:
    """Every per-pixel output of a MAP program's run, ``[x, y, ...]`` numpy arrays by name."""
    out = {k: np.asarray(v) for k, v in values.fit._asdict().items()}
    for k, v in values._asdict().items():
        if k != "fit" and v is not None:
            out[k] = np.asarray(v)
    return out


def _run(cube, program, batch_size, block, checkpoint=None) -> dict:
    ex = Execution(batch_size=batch_size, block_size=block, progress=False, checkpoint=checkpoint)
    return _fields(map_pixels(cube, program, ex).values)


@pytest.fixture(scope="module")
def reference(cube_path, program):
    with lucijax.open_cube(cube_path) as c:
        return _run(c, program, 64, 8)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _assert_rounding_level(reference, other):
    ok = (reference["status"] == 0) & (other["status"] == 0)
    dv = np.abs(reference["velocity_kms"] - other["velocity_kms"])[ok]
    assert np.max(dv / reference["velocity_err_kms"][ok]) < 0.05  # far below the error bars
    rel = np.abs(reference["flux_cm1"] - other["flux_cm1"])[ok] / reference["flux_err_cm1"][ok]
    assert np.max(rel) < 0.05
    assert np.mean(reference["status"] == other["status"]) > 0.97


@pytest.mark.timeout(300)
@pytest.mark.parametrize("batch_size, block", [(64, 5), (32, 8), (240, 20)])
def test_chunking_changes_results_only_at_rounding_level(cube_path, program, reference, batch_size, block):
    with lucijax.open_cube(cube_path) as c:
        other = _run(c, program, batch_size, block)
    _assert_rounding_level(reference, other)


@pytest.mark.timeout(300)
def test_same_layout_is_bit_identical(cube_path, program, reference):
    with lucijax.open_cube(cube_path) as c:
        again = _run(c, program, 64, 8)
    _assert_same(reference, again)


class _Crash(RuntimeError):
    pass


class _CrashingCube:
    """Delegates to a real cube but dies after ``n_reads`` block reads (a killed run)."""

    def __init__(self, cube, n_reads):
        self._cube, self._left = cube, n_reads

    def __getattr__(self, name):
        return getattr(self._cube, name)

    def read_spectra(self, *box):
        if self._left == 0:
            raise _Crash("simulated crash")
        self._left -= 1
        return self._cube.read_spectra(*box)


@pytest.mark.timeout(300)
def test_resume_after_crash_is_bit_identical(cube_path, program, reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    with lucijax.open_cube(cube_path) as c:
        with pytest.raises(_Crash):
            _run(_CrashingCube(c, 3), program, 64, 8, checkpoint=ckpt)
        done = {p.name: p.stat().st_mtime_ns for p in ckpt.glob("block_*.npz")}
        assert 0 < len(done) < 6  # 6 blocks in a 20x12 cube with 8x8 blocks
        # the rerun computes only the missing blocks; it reads every block once (the
        # finished ones to check their data against the checksum stored with them)
        reads = []
        orig = c.read_spectra

        def counting(*box):
            reads.append(box)
            return orig(*box)

        c.read_spectra = counting
        resumed = _run(c, program, 64, 8, checkpoint=ckpt)
        c.read_spectra = orig
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 6
    assert all((ckpt / name).stat().st_mtime_ns == t for name, t in done.items()), "a finished block was computed again"
    _assert_same(reference, resumed)


_FIT_ON_N_DEVICES = """
import sys, numpy as np, jax, lucijax
from lucijax import simulate
lucijax.enable_compilation_cache()
n = int(sys.argv[3])
assert len(jax.local_devices()) == n, jax.local_devices()
res = lucijax.fit(sys.argv[1], lucijax.Model(list(simulate.DEFAULT_LINES)), lucijax.MAP(),
                  execution=lucijax.Execution(batch_size=64, devices=jax.local_devices(), progress=False))
extra = {"fwhm_cm1": res.fwhm_cm1}
if res.network is not None:  # the posterior of the network that started the fits
    extra.update(network_mean=res.network[0], network_sigma=res.network[1])
np.savez(sys.argv[2], **res.fields, **extra)
"""


def _fit_with_devices(cube_path, out, n):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    subprocess.run([sys.executable, "-c", _FIT_ON_N_DEVICES, str(cube_path), str(out), str(n)], env=env, check=True, timeout=280)
    return dict(np.load(out))


@pytest.mark.timeout(600)
def test_two_cpu_devices_agree_with_one(cube_path, tmp_path):
    one = _fit_with_devices(cube_path, tmp_path / "one.npz", 1)
    two = _fit_with_devices(cube_path, tmp_path / "two.npz", 2)
    # every device runs the same compiled batch: bit-identical maps
    _assert_same(one, two)


@pytest.mark.timeout(60)
def test_a_short_run_uses_one_device_per_spectra_per_device():
    from lucijax.engine.core import local_devices

    everyone = jax.local_devices()
    # the devices given are all used (at most one per batch)
    assert local_devices(everyone, 1, 8, 512) == everyone[:1] and local_devices(everyone, 100, 800, 512) == everyone
    # chosen by the engine: one more device per spectra_per_device spectra, one per batch at most
    assert local_devices(None, 32, 256, 512) == everyone[:1]
    assert local_devices(None, 65, 513, 512) == everyone[:2]
    assert local_devices(None, 3, 3) == everyone[:3]
    assert local_devices(None, 0, 0, 512) == everyone[:1]


def _cli_fit(cube, out, *extra):
    return [sys.executable, "-m", "lucijax.cli", "fit", str(cube), "--lines", *LINES, "--out", str(out),
            "--block-size", "8", "--batch-size", "32", "-q", *extra]


def _maps(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.data is not None}


@pytest.mark.timeout(600)
def test_kill_9_then_rerun_computes_only_missing_blocks(tmp_path):
    """A fit killed with SIGKILL mid-run and started again with the same command keeps the
    finished blocks untouched, computes the rest, and ends with bit-identical maps."""
    import signal
    import time

    cube = simulate.make_cube(32, 32, seed=22).write(tmp_path / "cube.hdf5")  # 16 blocks of 8 x 8
    env = dict(os.environ, LUCIJAX_CPU_DEVICES="1")
    subprocess.run(_cli_fit(cube, tmp_path / "whole", "--no-checkpoint"), env=env, check=True, timeout=280)

    out = tmp_path / "killed"
    ckpt = out / "checkpoint" / "fit"  # the MAP fit's blocks (a sampler's go to checkpoint/sample)
    proc = subprocess.Popen(_cli_fit(cube, out, "--keep-checkpoint"), env=env)
    t0 = time.time()
    while len(list(ckpt.glob("block_*.npz"))) < 6 and proc.poll() is None and time.time() - t0 < 250:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the fit ended before it could be killed"
    done = {p.name: p.stat().st_mtime_ns for p in ckpt.glob("block_*.npz")}
    assert 6 <= len(done) < 16
    assert not (out / "maps.fits").exists()

    subprocess.run(_cli_fit(cube, out, "--keep-checkpoint"), env=env, check=True, timeout=280)
    after = {p.name: p.stat().st_mtime_ns for p in ckpt.glob("block_*.npz")}
    assert len(after) == 16
    assert all(after[name] == mtime for name, mtime in done.items()), "a finished block was computed again"
    whole, resumed = _maps(tmp_path / "whole" / "maps.fits"), _maps(out / "maps.fits")
    assert whole.keys() == resumed.keys()
    for name in whole:
        np.testing.assert_array_equal(whole[name], resumed[name], err_msg=name)
