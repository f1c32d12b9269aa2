"""Blocks on a Dask cluster (lucijax.engine.cluster) and survey runs (lucijax.survey).

One LocalCluster of 2 single-threaded worker processes serves the whole module (workers
start slowly: each imports JAX). Against a one-process run of the same cube: the maps of a
distributed run are bit-identical, each block is written once, a run resumes from the
checkpoint, a worker killed with SIGKILL mid-run costs only its in-flight blocks (re-run
elsewhere, named in the log) and the maps stay identical; the command line's --scheduler
and its errors; SLURM/PBS job scripts; a survey of 3 cubes x 2 line sets killed and resumed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import distributed  # in the test extra: these tests never skip in CI
import numpy as np
import pytest

import lucijax
from lucijax import simulate
from lucijax.engine import Execution, map_pixels
from lucijax.engine.checkpoint import BlockCheckpoint
from lucijax.engine.cluster import (
    jobqueue_cluster,
    local_cluster,
    worker_devices,
    worker_env,
)
from lucijax.program import Program

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 5  # 20x20 pixels: 16 blocks of 25
#: the real fit of the command-line test and of the survey's first line set (one compilation)
FIT_LINES = ["Halpha", "NII6583", "NII6548"]
FIT_OPTIONS = ["--model", "gaussian", "--no-mdn"]

# the toy program's functions travel to the workers by value (the workers need not import this file)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def toy_program(delay: float = 0.0) -> Program:
    """A cheap per-spectrum program (compiles in a second): what the engine does with a
    program does not depend on which program it is. ``delay``: seconds each block's
    ``prepare`` waits (keeps blocks in flight)."""
    import jax.numpy as jnp

    def prepare(block):
        if delay:
            time.sleep(delay)
        return {"y": np.asarray(block.spectra, np.float32), "xy": np.asarray(block.xy, np.float32)}

    def one(inputs):
        y = inputs["y"] * 1e17  # erg/cm2/s/A: squares of ~1e-17 would flush to zero in float32
        return {"power": jnp.sum(y * y), "peak": jnp.argmax(y).astype(jnp.int32),
                "mean": jnp.mean(y) * (1.0 + inputs["xy"][0] + 100.0 * inputs["xy"][1])}

    return Program(name="toy", key=f"toy delay={delay}", prepare=prepare, one=one, stored=False)


@pytest.fixture(scope="module")
def client():
    cluster = local_cluster(2)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    return simulate.make_cube(20, 20, seed=17).write(tmp_path_factory.mktemp("cluster") / "cube.hdf5")


def _ex(**kw):
    return Execution(block_size=BLOCK, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(cube_path):
    """The toy program's one-process run (one device) over the whole cube, and the truth
    computed with numpy."""
    import jax

    with lucijax.open_cube(cube_path) as c:
        pm = map_pixels(c, toy_program(), _ex(devices=jax.devices()[:1]))
        data = c.read_spectra(0, 20, 0, 20)
    return pm, data


def _assert_identical(a, b):
    assert sorted(a.values) == sorted(b.values)
    for k in a.values:
        np.testing.assert_array_equal(a.values[k], b.values[k], err_msg=k)


def test_reference_is_right(reference):
    pm, data = reference
    np.testing.assert_allclose(pm.values["power"], np.sum((data.astype(np.float64) * 1e17) ** 2, axis=-1), rtol=1e-4)
    np.testing.assert_array_equal(pm.values["peak"], np.argmax(data, axis=-1))


def test_local_workers_start_without_the_nannys_trim_threshold(client):
    """Dask's nanny gives every worker MALLOC_TRIM_THRESHOLD_=65536 (glibc then maps and
    unmaps each large XLA buffer: ~60x the page faults, 20 % more CPU per block); the
    LocalCluster lucijax starts leaves it out."""
    env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(env) == 2 and set(env.values()) == {None}



@pytest.mark.timeout(10)
def test_worker_devices_and_their_environment(monkeypatch):
    """Local workers get the cores over the workers, at least 2 JAX CPU devices each, set
    with XLA's device-count flag (in effect from the worker's start)."""
    assert [worker_devices(n, cores=c) for n, c in [(1, 2), (2, 2), (2, 1), (4, 16), (3, 16), (16, 16)]] == \
        [2, 2, 2, 4, 5, 2]
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=false")
    env = worker_env(3)
    assert env["XLA_FLAGS"].split() == ["--xla_cpu_enable_fast_math=false", "--xla_force_host_platform_device_count=3"]
    assert env["LUCIJAX_CPU_DEVICES"] == "3"


def test_local_workers_run_two_batches_of_a_block_at_once(cube_path, client):
    """Each local worker has worker_devices(2) JAX CPU devices (the LUCIJAX_CPU_DEVICES=1
    the workers once had did nothing: one device, one batch at a time); a block's batches
    go round robin over them and the maps are bit-identical to a one-device run with the
    same batches."""
    import jax

    assert set(client.run(lambda: len(__import__("jax").devices("cpu"))).values()) == {worker_devices(2)}
    program = toy_program()
    with lucijax.open_cube(cube_path) as c:
        one = map_pixels(c, program, _ex(devices=jax.devices()[:1], batch_size=8))  # 25 pixels: 4 batches a block
        pm = map_pixels(c, program, _ex(scheduler=client, batch_size=8))
    _assert_identical(one, pm)
    assert pm.n_devices == pm.meta["cluster"]["workers"] * worker_devices(2)

ALLOCATION_FAULTS = """
import os, resource, sys
import numpy as np
from lucijax.engine.cluster import allocator_like_one_process

def faults():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        a = np.ones(1 << 17)  # 1 MiB, written: every page touched
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
changed = allocator_like_one_process()
print(before, faults(), changed, allocator_like_one_process())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.timeout(60)
def test_a_worker_with_the_trim_threshold_set_allocates_like_one_process():
    """A worker started with the variable (dask worker, dask-jobqueue) sets glibc's
    thresholds back once: 200 allocations of 1 MiB then reuse the heap instead of faulting
    in 256 fresh pages each."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", ALLOCATION_FAULTS], env=env, capture_output=True, text=True,
                         timeout=50, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before > 200 * 200  # a fresh mapping per allocation
    assert after < 2000, (before, after)
    assert out[2:] == ["True", "False"]  # changed once, then left alone
    env.pop("MALLOC_TRIM_THRESHOLD_")
    out = subprocess.run([sys.executable, "-c", ALLOCATION_FAULTS], env=env, capture_output=True, text=True,
                         timeout=50, check=True).stdout.split()
    assert int(out[0]) < 2000 and out[2:] == ["False", "False"]  # glibc's defaults: nothing to undo


def test_distributed_maps_bit_identical_each_block_written_once_and_resume(cube_path, reference, client, tmp_path,
                                                                            monkeypatch):
    ref, _ = reference
    saves: list = []
    save = BlockCheckpoint.save

    def counting_save(self, box, *args, **kwargs):
        saves.append(tuple(box))
        return save(self, box, *args, **kwargs)

    monkeypatch.setattr(BlockCheckpoint, "save", counting_save)
    folder = tmp_path / "ckpt"
    program = toy_program()
    with lucijax.open_cube(cube_path) as c:
        pm = map_pixels(c, program, _ex(scheduler=client, checkpoint=folder))
        _assert_identical(ref, pm)
        assert sorted(saves) == sorted(set(saves)) and len(saves) == 16  # every block once, by this process
        assert len(list(folder.glob("block_*.npz"))) == 16
        assert pm.meta["cluster"]["blocks"] == 16 and pm.meta["cluster"]["rerun"] == []
        assert pm.n_devices == pm.meta["cluster"]["n_devices"] >= 1
        # a run killed after 10 blocks and started again: only the 6 missing blocks are computed
        for f in sorted(folder.glob("block_*.npz"))[10:]:
            f.unlink()
        saves.clear()
        again = map_pixels(c, program, _ex(scheduler=client, checkpoint=folder))
    assert again.n_resumed == 10 * BLOCK * BLOCK and len(saves) == 6
    _assert_identical(ref, again)


def test_worker_killed_mid_run_loses_only_its_blocks(cube_path, reference, client, tmp_path, monkeypatch, caplog):
    ref, _ = reference
    killed: list = []
    save = BlockCheckpoint.save

    def save_then_kill(self, box, *args, **kwargs):
        save(self, box, *args, **kwargs)
        if not killed:  # after the first finished block: kill a worker that is computing one
            busy = [w for w, keys in client.processing().items() if keys]
            pids = client.run(os.getpid, workers=busy[:1])
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    monkeypatch.setattr(BlockCheckpoint, "save", save_then_kill)
    caplog.set_level(logging.WARNING, logger="lucijax.engine.cluster")
    folder = tmp_path / "ckpt"
    with lucijax.open_cube(cube_path) as c:
        pm = map_pixels(c, toy_program(delay=0.3), _ex(scheduler=client, checkpoint=folder))
    assert killed
    rerun = pm.meta["cluster"]["rerun"]
    assert 1 <= len(rerun) <= 2  # a single-threaded worker holds its running block (and at most one queued)
    assert "re-run after their worker was lost" in caplog.text
    for b in rerun:
        assert f"{b[0]}:{b[1]},{b[2]}:{b[3]}" in caplog.text
    assert len(list(folder.glob("block_*.npz"))) == 16
    _assert_identical(ref, pm)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it


def one_process_fit(cube_path, folder) -> None:
    """The same fit in one process on one device, without a scheduler (run inside a worker
    process: its compiled program is the one the cluster run compiled there)."""
    fit = lucijax.fit(cube_path, lucijax.Model(FIT_LINES, profile="gaussian"), lucijax.MAP(start="matched"),
                      execution=_ex())
    fit.write(folder)


def test_cli_scheduler_fit_is_the_one_process_fit(cube_path, client, tmp_path, capsys):
    """A real fit (3 lines, Gaussian, matched-filter start) through ``lucijax fit
    --scheduler``: maps.fits bit-identical to the one-process fit's."""
    from lucijax.cli import main
    from lucijax.io import read_maps_fits

    out = tmp_path / "out"
    rc = main(["fit", str(cube_path), "--lines", *FIT_LINES, *FIT_OPTIONS, "--block-size", str(BLOCK),
               "--out", str(out), "-q", "--scheduler", client.scheduler.address])
    assert rc == 0, capsys.readouterr().err
    assert not (out / "checkpoint").exists()
    client.submit(one_process_fit, cube_path, tmp_path / "local", pure=False).result()
    expected = read_maps_fits(tmp_path / "local" / "maps.fits")
    got = read_maps_fits(out / "maps.fits")
    assert sorted(got) == sorted(expected) and np.mean(got["STATUS"] == 0) > 0.6  # Gaussian lines on sincgauss data
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_cli_cluster_errors_are_one_line(cube_path, tmp_path, capsys, monkeypatch):
    from lucijax.cli import main

    base = ["fit", str(cube_path), "--lines", "Halpha", "--out", str(tmp_path / "o"), "-q"]
    cases = [(["--scheduler", "local:0"], "local:N with N >= 1"),
             (["--scheduler", "local:2", "--cluster", "slurm"], "exclude each other"),
             (["--cluster-cores", "4"], "give --cluster")]
    for extra, text in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and text in err, err
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    assert main(base + ["--scheduler", "local:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lucijax[cluster]" in err, err
    assert not (tmp_path / "o").exists()


def test_jobqueue_job_scripts_hold_the_sizes_asked_for():
    from lucijax.cli import build_jobqueue, build_parser

    args = build_parser().parse_args(["fit", "c.hdf5", "--cluster", "slurm", "--cluster-cores", "8", "--cluster-memory",
                                      "32GB", "--cluster-walltime", "02:30:00", "--cluster-processes", "2",
                                      "--cluster-queue", "gpu"])
    with build_jobqueue(args) as slurm:
        script = slurm.job_script()
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH -t 02:30:00" in script
    assert "#SBATCH -p gpu" in script and "#SBATCH --mem=30G" in script  # 32 GB = 29.8 GiB, rounded by jobqueue
    assert "--nworkers 2" in script and "--nthreads 4" in script  # 2 processes of 4 cores each
    with jobqueue_cluster("pbs", cores=4, memory="8GB", walltime="00:10:00") as pbs:
        script = pbs.job_script()
    assert "#PBS -l select=1:ncpus=4:mem=7630MB" in script and "#PBS -l walltime=00:10:00" in script
    with pytest.raises(ValueError, match="cluster kind"):
        jobqueue_cluster("lsf")


# ------------------------------------------------------------------------ surveys
def test_manifests_toml_and_csv(tmp_path):
    from lucijax.survey import read_manifest

    (tmp_path / "m.toml").write_text(
        'out = "res"\n[options]\nblock_size = 8\n[line_sets]\nha = ["Halpha", "NII6583"]\nsii = ["SII6716", "SII6731"]\n'
        '[[cube]]\npath = "a.hdf5"\n[[cube]]\npath = "sub/b.hdf5"\nname = "B"\nline_sets = ["sii"]\n'
        'velocity_range = [-300, 300]\n')
    entries, settings = read_manifest(tmp_path / "m.toml")
    assert [e.name for e in entries] == ["a__ha", "a__sii", "B__sii"]
    assert entries[2].cube == (tmp_path / "sub" / "b.hdf5").resolve() and entries[2].lines == ("SII6716", "SII6731")
    assert entries[2].options == {"block_size": 8, "velocity_range": [-300, 300]}
    assert settings["out"] == (tmp_path / "res").resolve()
    (tmp_path / "m.csv").write_text("cube,line_set,lines,block_size,redshift\na.hdf5,ha,Halpha NII6583,16,\n"
                                    "a.hdf5,,SII6716 SII6731,,0.001\n")
    entries, _ = read_manifest(tmp_path / "m.csv")
    assert [e.name for e in entries] == ["a__ha", "a__SII6716+SII6731"]
    assert entries[0].options == {"block_size": 16} and entries[1].options == {"redshift": 0.001}
    (tmp_path / "bad.csv").write_text("cube,lines,speed\na.hdf5,Halpha,3\n")
    with pytest.raises(ValueError, match="unknown option 'speed'"):
        read_manifest(tmp_path / "bad.csv")


@pytest.mark.timeout(420)
def test_survey_killed_and_resumed_on_the_cluster(client, tmp_path, capsys):
    from astropy.table import Table

    from lucijax.cli import main
    from lucijax.io import read_maps_fits

    for i in range(3):
        simulate.make_cube(16, 16, seed=40 + i).write(tmp_path / f"field{i}.hdf5")
    manifest = tmp_path / "survey.toml"
    manifest.write_text('[options]\nblock_size = 4\nstart = "matched"\nprofile = "gaussian"\n[line_sets]\n'
                        f'ha = {json.dumps(FIT_LINES)}\nsii = ["SII6716", "SII6731"]\n'
                        + "".join(f'[[cube]]\npath = "field{i}.hdf5"\n' for i in range(3)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lucijax.cli", "survey", str(manifest), "--out", str(out), "-q",
           "--scheduler", client.scheduler.address]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_end = time.time() + 300
    half_done = None
    while time.time() < t_end and proc.poll() is None and half_done is None:
        for d in sorted(out.glob("*")) if out.exists() else []:  # an entry with blocks in its checkpoint, not done
            if (not (d / "done.json").exists() and len(list((d / "checkpoint" / "fit").glob("block_*.npz"))) >= 2
                    and any((e / "done.json").exists() for e in out.glob("*"))):
                half_done = d.name
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert half_done is not None
    finished_before = {d.name: (d / "done.json").stat().st_mtime_ns for d in out.glob("*") if (d / "done.json").exists()}
    assert finished_before and half_done not in finished_before

    assert main(["survey", str(manifest), "--out", str(out), "-q", "--scheduler", client.scheduler.address]) == 0
    assert "6 entries, 0 failed" in capsys.readouterr().out
    summary = Table.read(out / "survey_summary.ecsv")
    assert len(summary) == 6 and set(summary["STATE"]) == {"done"}
    assert sorted(summary["NAME"]) == sorted(f"field{i}__{s}" for i in range(3) for s in ("ha", "sii"))
    for name, mtime in finished_before.items():  # finished entries were skipped
        assert (out / name / "done.json").stat().st_mtime_ns == mtime
    row = summary[list(summary["NAME"]).index(half_done)]
    assert 2 * 16 <= row["N_RESUMED"] < 256  # resumed from its checkpoint
    for row in summary:
        maps = read_maps_fits(out / row["NAME"] / "maps.fits")
        status = maps["STATUS"]
        assert row["N_PIXELS"] == 256 == sum(row[f"N_STATUS_{k}"] for k in range(9))
        assert row["N_STATUS_0"] == int(np.sum(status == 0))
        assert row["MEDIAN_CHI2"] == pytest.approx(float(np.nanmedian(maps["CHI2"][status == 0])), rel=1e-6)
        assert np.isfinite(row["MEDIAN_CHI2"]) and row["MEDIAN_CHI2"] > 0.5
        assert not (out / row["NAME"] / "checkpoint").exists()
