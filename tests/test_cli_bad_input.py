"""The command line against bad input, as a new user meets it (issue "Reliability"): one
line and exit 2 for what cannot be fitted, checked before the fit starts; maps whose STATUS
explains every NaN for what can; never a traceback, never stale or mixed results.

Each case calls ``lucijax.cli.main`` in this process (an exception escaping it fails the
test, as a traceback would show one), except where a separate process is the point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits

from lucijax import simulate
from lucijax.cli import main
from lucijax.io import write_orb_cube
from lucijax.status import Status

LINES = ["Halpha", "NII6583", "NII6548"]


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """(SyntheticCube, path) of a small 8 x 8 cube."""
    syn = simulate.make_cube(8, 8, lines=LINES, seed=41, snr_range=(10.0, 40.0))
    return syn, syn.write(tmp_path_factory.mktemp("bad") / "cube.hdf5")


def _fit(capsys, *args) -> tuple[int, str]:
    """(exit code, stderr) of ``lucijax fit ...``; stderr must be at most one error line."""
    rc = main(["fit", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if rc == 2:
        errors = [line for line in err.splitlines() if line.startswith("lucijax: error:")]
        assert len(errors) == 1, err
    return rc, err


def _maps(path) -> dict:
    with fits.open(path) as hdul:
        return {h.name: np.array(h.data) for h in hdul[1:] if h.data is not None}


def _with_attrs(src, dst, **attrs) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for k, v in attrs.items():
            if v is None:
                del f.attrs[k]
            else:
                f.attrs[k] = v
    return Path(dst)


# ------------------------------------------------------------ one line, exit 2
OPTION_CASES = [
    # (extra arguments, fragment of the message)
    (["--lines", "Halpha", "HALPHA=656.28"], "listed twice"),
    (["--lines", "Halpha", "Ha2=656.281"], "listed twice"),
    (["--lines", "=656.5"], "give the line a name"),
    (["--lines", "Halpha", "--bayes", "mh", "--bayes-num-samples", "0"], "--bayes-num-samples must be >= 1"),
    (["--lines", "Halpha", "--block-size", "-4"], "--block-size must be >= 1"),
    (["--lines", "Halpha", "--block-size", "0"], "--block-size must be >= 1"),
    (["--lines", "Halpha", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lines", "Halpha", "--iterations", "-3"], "--iterations must be >= 0"),
    (["--lines", "Halpha", "--redshift", "-1"], "--redshift must be > -1"),
    (["--lines", "Halpha", "--bin", "0"], "--bin must be >= 1"),
    (["--lines", "Halpha", "--velocity-range", "600:-600"], "the first value must be smaller"),
    (["--lines", "Halpha", "--bayes", "nuts", "--components", "2"], "leave out --freeze and --components"),
    (["--lines", "Halpha", "--region", "10:12,10:12"], "empty or outside the image"),
    (["--lines", "OIII5007"], "falls outside the fit window"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra, message", OPTION_CASES, ids=[" ".join(c[0]) for c in OPTION_CASES])
def test_bad_options_fail_at_once_with_one_line(cube, tmp_path, capsys, extra, message):
    rc, err = _fit(capsys, cube[1], *extra, "--out", tmp_path / "o", "-q")
    assert rc == 2 and message in err, err
    assert not (tmp_path / "o" / "maps.fits").exists()


HEADER_CASES = [
    # (attribute, value, fragment of the message)
    ("zpd_index", -5, "'zpd_index' = -5 is out of range"),
    ("zpd_index", 900, "'zpd_index' = 900 is out of range"),
    ("step", np.nan, "'step' = nan is out of range"),
    ("step", -2943.0, "'step' = -2943.0 is out of range"),
    ("nm_laser", 0.0, "'nm_laser' = 0.0 is out of range"),
    ("axis_corr", 0.0, "'axis_corr' = 0.0 is out of range"),
    ("apodization", 0.5, "'apodization' = 0.5 is out of range"),
    ("step_nb", "many", "'step_nb' = 'many' is not a number"),
    ("order", None, "'order'"),
    ("filter_name", "SN2", "the header's filter_name is wrong"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attr, value, message", HEADER_CASES, ids=[f"{a}={v!r}" for a, v, _ in HEADER_CASES])
def test_header_values_out_of_range_are_named(cube, tmp_path, capsys, attr, value, message):
    bad = _with_attrs(cube[1], tmp_path / "bad.hdf5", **{attr: value})
    rc, err = _fit(capsys, bad, "--lines", *LINES, "--out", tmp_path / "o", "-q")
    assert rc == 2 and message in err, err


def _level3(tmp_path, syn, flambda) -> Path:
    attrs = dict(syn.attrs, flambda=flambda, exposure_time=15.0, flux_calibration=True)
    counts = syn.data / 1e-19 * attrs["step_nb"] * 15.0
    path = tmp_path / "l3.hdf5"
    write_orb_cube(path, counts.astype(np.float32), attrs, level=3, calib_map=syn.calib_map)
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind, message", [("nan", "NaN or infinite"), ("zero", "zero"), ("negative", "negative")])
def test_bad_flambda_is_named(cube, tmp_path, capsys, kind, message):
    syn = cube[0]
    n = syn.data.shape[-1]
    flambda = {"nan": np.full(n, np.nan), "zero": np.zeros(n), "negative": np.full(n, -1e-19)}[kind]
    rc, err = _fit(capsys, _level3(tmp_path, syn, flambda), "--lines", *LINES, "--out", tmp_path / "o", "-q")
    assert rc == 2 and "'flambda'" in err and message in err, err


@pytest.mark.timeout(120)
def test_broken_files_and_outputs(cube, tmp_path, capsys):
    src = cube[1]
    trunc = tmp_path / "trunc.hdf5"
    trunc.write_bytes(src.read_bytes()[:3000])
    rc, err = _fit(capsys, trunc, "--lines", "Halpha", "--out", tmp_path / "o", "-q")
    assert rc == 2 and "not a readable HDF5 file" in err

    image = tmp_path / "image.fits"
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(image)
    cut = tmp_path / "trunc.fits"
    cut.write_bytes(image.read_bytes()[:2900])
    rc, err = _fit(capsys, cut, "--lines", "Halpha", "--out", tmp_path / "o", "-q")
    assert rc == 2 and "trunc.fits" in err

    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, err = _fit(capsys, src, "--lines", "Halpha", "--out", afile, "-q")
    assert rc == 2 and "is a file, not a folder" in err
    # an --out that cannot be created is found before the fit, not after it
    rc, err = _fit(capsys, src, "--lines", "Halpha", "--out", afile / "sub", "--no-checkpoint", "-q")
    assert rc == 2 and "is not writable" in err

    for target, fragment in ((src, "is not a FITS file"), (image, "holds no map")):
        assert main(["plot", str(target)]) == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err


@pytest.mark.timeout(120)
def test_version():
    proc = subprocess.run([sys.executable, "-m", "lucijax.cli", "--version"], capture_output=True, text=True, timeout=100, check=False)
    import lucijax

    assert proc.returncode == 0 and proc.stdout.strip() == f"lucijax {lucijax.__version__}"


@pytest.mark.timeout(120)
def test_command_ends_like_the_interpreter(tmp_path):
    """``lucijax`` (lucijax.cli.run) skips the interpreter's teardown, nothing else: a thread
    pool never shut down does not hang it, a thread that is not a daemon finishes its work,
    exit functions run, buffered output is flushed, and the command's status is the exit
    status."""
    late = tmp_path / "late.txt"
    script = f"""
import atexit, concurrent.futures, sys, threading, time
import lucijax.cli as cli
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(time.sleep, 0.1)
threading.Thread(target=lambda: (time.sleep(0.5), open({str(late)!r}, "w").write("written"))).start()
atexit.register(print, "exit function ran")
cli.main = lambda: 3
sys.stdout.write("buffered ")
cli.run()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 3, proc.stderr
    assert late.read_text() == "written"
    assert proc.stdout == "buffered exit function ran\n"


# ------------------------------------------------------------ fits that work, with honest flags
@pytest.mark.timeout(300)
def test_non_ascii_name_negative_range_and_file_modes(cube, tmp_path, capsys):
    named = tmp_path / "ñgc_é.hdf5"
    shutil.copy(cube[1], named)
    old = os.umask(0o022)
    try:
        rc, err = _fit(capsys, named, "--lines", *LINES, "--velocity-range", "-300:300", "--out", tmp_path / "o", "-q")
    finally:
        os.umask(old)
    assert rc == 0, err
    maps = tmp_path / "o" / "maps.fits"
    with fits.open(maps) as hdul:
        assert "\\xf1gc" in repr(hdul[0].header)  # the name, escaped to ASCII
        velocity = hdul["HALPHA_VELOCITY"].data
    assert np.nanmax(np.abs(velocity)) <= 300.0
    assert maps.stat().st_mode & 0o777 == 0o644  # collaborators can read it


@pytest.mark.timeout(300)
def test_warnings_are_one_line_each(cube, tmp_path):
    """An unknown filter and a missing calibration map are said, in one line each, without
    the source line of the code that warned."""
    bad = _with_attrs(cube[1], tmp_path / "sn9.hdf5", filter_name="SN9")
    with h5py.File(bad, "r+") as f:
        del f["calib_map"]
    proc = subprocess.run([sys.executable, "-m", "lucijax.cli", "fit", str(bad), "--lines", *LINES, "--window",
                           "14600:15400", "--out", str(tmp_path / "o"), "-q"],
                          capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "lucijax: warning:" in proc.stderr and "no 'calib_map' dataset" in proc.stderr
    assert "warnings.warn" not in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "lucijax.cli", "fit", str(bad), "--lines", *LINES, "--region",
                           "0:2,0:2", "--out", str(tmp_path / "o2"), "-q"], capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "filter_name = 'SN9'" in proc.stderr


def _cube_of(syn, data, path) -> Path:
    import dataclasses

    return dataclasses.replace(syn, data=np.asarray(data, np.float32)).write(path)


@pytest.mark.timeout(300)
def test_spectra_without_a_line_get_no_line_and_no_zero_error(cube, tmp_path, capsys):
    syn = cube[0]
    rng = np.random.default_rng(3)
    sigma = float(syn.truth["NOISE"][0, 0])
    cases = {"noise": rng.normal(0.0, sigma, syn.data.shape), "negated": -syn.data}
    for name, data in cases.items():
        rc, err = _fit(capsys, _cube_of(syn, data, tmp_path / f"{name}.hdf5"), "--lines", *LINES,
                       "--out", tmp_path / name, "-q")
        assert rc == 0, err
        status = _maps(tmp_path / name / "maps.fits")["STATUS"]
        share = float(np.mean(status == Status.NO_LINE))
        with capsys.disabled():
            print(f"\n{name}: {share:.0%} of 64 pixels NO_LINE, {np.mean(status == 0):.0%} STATUS 0")
        assert share >= 0.6, np.unique(status, return_counts=True)
    # noise-free lines: a fit, and error bars at the float32 floor, never zero
    clean = simulate.make_cube(8, 8, lines=LINES, seed=41, snr_range=(1e9, 1.1e9))
    rc, err = _fit(capsys, clean.write(tmp_path / "clean.hdf5"), "--lines", *LINES, "--out", tmp_path / "clean", "-q")
    assert rc == 0, err
    maps = _maps(tmp_path / "clean" / "maps.fits")
    for name, m in maps.items():
        if name.endswith("_ERR"):
            assert np.all(m[np.isfinite(m)] > 0), name
    # the real cube: its lines are detected
    rc, _ = _fit(capsys, cube[1], "--lines", *LINES, "--out", tmp_path / "real", "-q")
    assert not np.any(_maps(tmp_path / "real" / "maps.fits")["STATUS"] == Status.NO_LINE)


# ------------------------------------------------------------ checkpoints: nothing stale or mixed
def _resume_matches_fresh(capsys, tmp_path, first: list, second: list, tag: str):
    """Run ``first`` keeping its checkpoint, then ``second`` into the same folder (as a run
    killed after its last block would leave it): the maps equal a fresh run of ``second``."""
    out = tmp_path / f"out_{tag}"
    for args in (first, second):
        rc, err = _fit(capsys, *args, "--block-size", "4", "--out", out, "--keep-checkpoint", "-q")
        assert rc == 0, err
    rc, err = _fit(capsys, *second, "--block-size", "4", "--out", tmp_path / f"fresh_{tag}", "--no-checkpoint", "-q")
    assert rc == 0, err
    got, fresh = _maps(out / "maps.fits"), _maps(tmp_path / f"fresh_{tag}" / "maps.fits")
    assert got.keys() == fresh.keys()
    for name in fresh:
        np.testing.assert_array_equal(got[name], fresh[name], err_msg=f"{tag}: {name}")
    return got


@pytest.mark.timeout(600)
def test_checkpoint_is_not_reused_when_the_cube_changes_behind_its_name(cube, tmp_path, capsys):
    """The cube replaced by another of the same size, header and modification time: only
    the data differ, and the finished blocks are not reused."""
    syn, _ = cube
    path = tmp_path / "c.hdf5"
    syn.write(path)
    st = path.stat()
    other = simulate.make_cube(8, 8, lines=LINES, seed=42, snr_range=(10.0, 40.0))
    out = tmp_path / "out_replaced"
    rc, err = _fit(capsys, path, "--lines", *LINES, "--block-size", "4", "--out", out, "--keep-checkpoint", "-q")
    assert rc == 0, err
    before = _maps(out / "maps.fits")
    other.write(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    got = _resume_matches_fresh(capsys, tmp_path, [path, "--lines", *LINES], [path, "--lines", *LINES], "replaced")
    assert not np.array_equal(got["HALPHA_VELOCITY"], before["HALPHA_VELOCITY"], equal_nan=True)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("change", ["weights", "background", "mask", "velocity-range"])
def test_checkpoint_is_not_reused_when_an_input_changes(cube, tmp_path, capsys, change):
    syn, path = cube
    if change == "weights":  # flux-calibrated, with a flambda that varies over the channels
        n = syn.data.shape[-1]
        flambda = 1e-19 * (1.0 + 0.6 * np.sin(np.linspace(0.0, 9.0, n)) ** 2)
        path = _level3(tmp_path, syn, flambda)
    base = [path, "--lines", *LINES]
    first, second = {
        "weights": ([], ["--uniform-weights"]),
        "background": (["--background-region", "0:8,0:2"], ["--background-region", "0:8,6:8"]),
        "mask": (["--mask", "0:8,0:6"], ["--mask", "2:8,0:8"]),
        "velocity-range": ([], ["--velocity-range=-200:200"]),
    }[change]
    _resume_matches_fresh(capsys, tmp_path, base + first, base + second, change)


@pytest.mark.timeout(120)
def test_a_second_run_into_the_same_folder_fails_at_once(cube, tmp_path, capsys):
    from lucijax.engine.checkpoint import folder_lock

    out = tmp_path / "o"
    out.mkdir()
    with folder_lock(out, ".lucijax.lock"):  # as a running fit holds it
        rc, err = _fit(capsys, cube[1], "--lines", *LINES, "--out", out, "--no-checkpoint", "-q")
    assert rc == 2 and "another run is using" in err
    assert not (out / "maps.fits").exists()


@pytest.mark.timeout(300)
def test_detection_threshold_is_the_solvers_option(cube, tmp_path):
    import lucijax

    syn = cube[0]
    sigma = float(syn.truth["NOISE"][0, 0])
    path = _cube_of(syn, np.random.default_rng(4).normal(0.0, sigma, syn.data.shape), tmp_path / "noise.hdf5")
    ex = lucijax.Execution(progress=False)
    flagged = lucijax.fit(path, lucijax.Model(LINES), lucijax.MAP(), execution=ex).maps["STATUS"]
    never = lucijax.fit(path, lucijax.Model(LINES), lucijax.MAP(detection_chi2=0.0), execution=ex).maps["STATUS"]
    assert np.mean(flagged == Status.NO_LINE) >= 0.6
    assert not np.any(never == Status.NO_LINE)
