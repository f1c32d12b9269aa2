"""Kinematic maps as the per-pixel start and bounds of a MAP fit (``MAP(start="maps")``,
``lucijax fit --start-maps``): the bounds' arithmetic, recovery of the truth from maps near
it, the matched-filter guard when the maps are wrong, and the command line."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import lucijax
from lucijax.io import read_maps_fits
from lucijax.simulate import DEFAULT_LINES, make_cube
from lucijax.solvers.fitting import FitSettings
from lucijax.solvers.start import maps_start
from lucijax.status import Status

pytestmark = pytest.mark.timeout(900)
EX = lucijax.Execution(progress=False)


def robust_std(x):
    x = np.asarray(x)[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    c = make_cube(14, 14, seed=27, snr_range=(8.0, 60.0), continuum_snr=(0.5, 2.0))
    path = tmp_path_factory.mktemp("start_maps") / "c.hdf5"
    c.write(path)
    return c, path


def _model():
    return lucijax.Model(list(DEFAULT_LINES), profile="sincgauss")


def _maps(c, dv=0.0, err=1.0):
    v, b = c.truth["VELOCITY"], c.truth["BROADENING"]
    return {"VELOCITY": v + dv, "VELOCITY_ERR": np.full_like(v, err), "BROADENING": b,
            "BROADENING_ERR": np.full_like(b, err)}


def test_bounds_are_value_plus_minus_max_of_sigmas_and_floor():
    s = FitSettings(velocity_range_kms=(-500.0, 500.0), broadening_range_kms=(0.0, 150.0))
    start, lo, hi, ok = maps_start(jnp.asarray([100.0, 40.0]), jnp.asarray([5.0, 1.0]), s, 1, True, 3.0, 10.0)
    assert bool(ok)
    np.testing.assert_allclose(start, [100.0, 40.0])
    np.testing.assert_allclose(lo, [85.0, 30.0])  # 3 x 5 km/s; the 10 km/s floor
    np.testing.assert_allclose(hi, [115.0, 50.0])
    # clipped to the physical ranges, errors that are not finite count as 0
    start, lo, hi, ok = maps_start(jnp.asarray([495.0, 3.0]), jnp.asarray([np.nan, 2.0]), s, 1, True, 3.0, 10.0)
    np.testing.assert_allclose(lo, [485.0, 0.0])
    np.testing.assert_allclose(hi, [500.0, 13.0])
    # a value that is not finite: not ok, full ranges
    _, lo, hi, ok = maps_start(jnp.asarray([np.nan, 30.0]), jnp.asarray([1.0, 1.0]), s, 1, True, 3.0, 10.0)
    assert not bool(ok)
    np.testing.assert_allclose(lo, [-500.0, 0.0])
    np.testing.assert_allclose(hi, [500.0, 150.0])


def test_options_are_checked():
    with pytest.raises(ValueError, match="start_maps"):
        lucijax.MAP(start="maps")
    with pytest.raises(ValueError, match="start_maps"):
        lucijax.MAP(start_maps={"VELOCITY": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="maps_halfwidth_kms"):
        lucijax.MAP(start="maps", start_maps={}, maps_halfwidth_kms=0.0)


def test_maps_near_the_truth_give_the_free_fit(cube):
    """Maps 4 km/s off the truth: the fit moves to the truth (pulls ~1) and agrees with the
    network-started fit; pixels without a map value start from the matched filter."""
    c, path = cube
    maps = _maps(c, dv=4.0)
    maps["VELOCITY"][2, 3] = np.nan  # [y, x]: no value at x=3, y=2
    started = lucijax.fit(path, _model(), lucijax.MAP(start="maps", start_maps=maps), execution=EX)
    free = lucijax.fit(path, _model(), lucijax.MAP(), execution=EX)
    v, err = started.maps["HALPHA_VELOCITY"], started.maps["HALPHA_VELOCITY_ERR"]
    good = np.isin(started.maps["STATUS"], [int(Status.CONVERGED), int(Status.UNRESOLVED)])
    pulls = (v - c.truth["VELOCITY"])[good] / err[good]
    same = np.abs(v - free.maps["HALPHA_VELOCITY"])[good] < 0.2 * err[good]
    print(f"\n[start maps] converged {good.mean():.3f}, pull robust std {robust_std(pulls):.3f}, "
          f"median {np.median(pulls):+.3f}, same as the free fit {same.mean():.3f}")
    assert good.mean() > 0.95
    assert 0.7 <= robust_std(pulls) <= 1.3 and abs(np.median(pulls)) < 0.3  # 190 pixels; the free fit: same
    assert same.mean() > 0.95
    assert np.isfinite(v[2, 3]) and abs(v[2, 3] - c.truth["VELOCITY"][2, 3]) < 5 * err[2, 3]
    assert "MDN_VELOCITY" not in started.maps and started.start == "maps"


def test_wrong_maps_fall_back_to_the_matched_filter(cube):
    """Maps 250 km/s off with tight errors bound the fit away from the line: the guard sees
    the matched filter fit the spectrum far better and frees the range."""
    c, path = cube
    res = lucijax.fit(path, _model(), lucijax.MAP(start="maps", start_maps=_maps(c, dv=250.0)), execution=EX)
    v, err = res.maps["HALPHA_VELOCITY"], res.maps["HALPHA_VELOCITY_ERR"]
    recovered = np.abs(v - c.truth["VELOCITY"]) < 5 * err
    print(f"\n[start maps] 250 km/s off: recovered {recovered.mean():.3f}")
    assert recovered.mean() > 0.95


def test_command_line(cube, tmp_path):
    _, path = cube
    lines = list(DEFAULT_LINES)

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "lucijax.cli", "fit", str(path), "--lines", *lines,
                               "--region", "0:6,0:5", "--no-checkpoint", "-q", *extra],
                              capture_output=True, text=True, timeout=600, check=False)

    first = run("--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    again = run("--out", str(tmp_path / "b"), "--start-maps", str(tmp_path / "a" / "maps.fits"))
    assert again.returncode == 0, again.stderr[-2000:]
    a = read_maps_fits(tmp_path / "a" / "maps.fits")
    b = read_maps_fits(tmp_path / "b" / "maps.fits")
    ok = (a["STATUS"] == 0) & (b["STATUS"] == 0)
    assert ok.mean() > 0.8
    assert np.all(np.abs(a["HALPHA_VELOCITY"] - b["HALPHA_VELOCITY"])[ok] < a["HALPHA_VELOCITY_ERR"][ok])
    for extra, words in ((["--freeze", str(tmp_path / "a" / "maps.fits")], "--freeze"),
                         (["--no-mdn"], "--no-mdn")):
        bad = run("--out", str(tmp_path / "c"), "--start-maps", str(tmp_path / "a" / "maps.fits"), *extra)
        assert bad.returncode == 2 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    missing = run("--out", str(tmp_path / "c"), "--start-maps", str(tmp_path / "nope.fits"))
    assert missing.returncode == 2 and "nope.fits" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
