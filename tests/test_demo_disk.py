"""The demo's field (:func:`lucijax.simulate.make_disk_cube`): its truth is what it claims
(a rotating disk, line-ratio gradient, HII regions narrower than the diffuse gas, spectra
rendered from that truth), a MAP fit recovers its velocity field with calibrated errors,
and ``lucijax demo`` writes its products."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

import lucijax
from lucijax.demo import DEMO_LINES, run_demo
from lucijax.simulate import disk_fields, make_disk_cube, render_spectra
from lucijax.status import Status

VSYS = 80.0  # disk_fields' default systemic velocity


def robust_std(x):
    return 1.4826 * np.median(np.abs(x - np.median(x)))


@pytest.fixture(scope="module")
def disk():
    return make_disk_cube(16, seed=3)


@pytest.mark.timeout(120)
def test_velocity_field_antisymmetric_about_the_centre(disk):
    v = disk.truth["VELOCITY"]
    np.testing.assert_allclose(v - VSYS, -(v[::-1, ::-1] - VSYS), atol=1e-9)
    assert v.max() - VSYS > 80 and VSYS - v.min() > 80  # it rotates
    assert -600 < v.min() and v.max() < 600  # inside the fit's default velocity range


@pytest.mark.timeout(60)
def test_velocity_is_systemic_on_the_minor_axis_and_rotates_on_the_major_axis():
    # PA 90: the receding major axis points east (-x), the minor axis is the central column
    f = disk_fields(17, pa_deg=90.0, inclination_deg=60.0, vflat_kms=200.0)
    v = f["velocity"]
    np.testing.assert_allclose(v[:, 8], VSYS, atol=1e-9)
    major = v[8] - VSYS
    np.testing.assert_allclose(major, -major[::-1], atol=1e-9)
    assert np.all(major[:8] > 0) and np.all(major[9:] < 0)
    assert np.all(np.diff(major[:9]) < 0)  # rises monotonically outwards
    expected_edge = 200.0 * 2 / np.pi * np.arctan(8 / (0.08 * 17)) * np.sin(np.radians(60.0))
    assert major[0] == pytest.approx(expected_edge, rel=1e-9)


@pytest.mark.timeout(120)
def test_line_ratios_and_broadening_follow_radius_and_hii_regions(disk):
    t = disk.truth
    ratio = t["NII6583_FLUX_CM1"] / t["HALPHA_FLUX_CM1"]
    radius, hii = t["RADIUS"], t["HII_FRACTION"]
    edges = np.quantile(radius, [0, 1 / 3, 2 / 3, 1])
    medians = [np.median(ratio[(radius >= lo) & (radius <= hi)]) for lo, hi in pairwise(edges)]
    assert medians[0] < medians[1] < medians[2]
    # the diffuse gas (no HII region) has broader lines and a higher [NII]/Halpha
    dig, hii_core = hii < 0.05, hii > 0.5
    assert dig.sum() > 50 and hii_core.sum() >= 3
    assert t["BROADENING"][hii_core].max() < t["BROADENING"][dig].min()
    assert np.median(t["BROADENING"][dig]) - np.median(t["BROADENING"][hii_core]) > 5
    inner_dig = dig & (radius <= radius[hii_core].max())
    assert np.median(ratio[hii_core]) < np.median(ratio[inner_dig])
    # [NII]6548 follows its tie, [SII] is there
    np.testing.assert_allclose(t["NII6548_FLUX_CM1"] / t["NII6583_FLUX_CM1"], 0.3369472, rtol=1e-4)
    assert np.all(t["SII6716_FLUX_CM1"] > 0) and np.all(t["SII6731_FLUX_CM1"] > 0)
    # faint sky corners, bright HII regions
    snr = t["SNR"]
    assert snr[0, 0] < 5 and snr.max() > 30 and np.mean(snr >= 5) > 0.8


@pytest.mark.timeout(120)
def test_spectra_are_the_truth_rendered_plus_noise(disk):
    t, ls = disk.truth, disk.line_set
    nx, ny, nz = disk.data.shape
    flat = lambda a: np.asarray(a).T.reshape(nx * ny)  # [y, x] truth -> ORB pixel order
    amp = np.stack([flat(t[f"{ls.names[i].upper()}_AMPLITUDE"]) for i in ls.primary_lines], axis=1)
    clean = render_spectra(ls, disk.model, disk.axis_cm1, disk.fwhm_cm1.reshape(-1), flat(t["VELOCITY"])[:, None],
                           flat(t["BROADENING"])[:, None], amp, flat(t["CONTINUUM"]))
    resid = disk.data.reshape(nx * ny, nz) - clean
    noise = t["NOISE"][0, 0]
    per_pixel = resid.std(axis=1) / noise
    assert per_pixel.min() > 0.85 and per_pixel.max() < 1.15
    assert abs(resid.mean() / noise) < 0.02


@pytest.fixture(scope="module")
def disk_fit(tmp_path_factory):
    cube = make_disk_cube(20, seed=11)
    path = cube.write(tmp_path_factory.mktemp("disk") / "disk.hdf5")
    result = lucijax.fit(path, lucijax.Model(DEMO_LINES, profile="sincgauss"), lucijax.MAP(),
                         execution=lucijax.Execution(progress=False))
    return cube, result


@pytest.mark.timeout(300)
def test_map_fit_recovers_the_velocity_field(disk_fit):
    cube, result = disk_fit
    maps, truth = result.maps, cube.truth
    dv = maps["HALPHA_VELOCITY"] - truth["VELOCITY"]
    good = (truth["SNR"] >= 5) & np.isfinite(dv) & (maps["STATUS"] == Status.CONVERGED)
    assert good.sum() > 0.8 * dv.size
    pull = dv[good] / maps["HALPHA_VELOCITY_ERR"][good]
    print(f"DISK 20x20: {good.sum()} px at SNR>=5, median |dv| {np.median(np.abs(dv[good])):.2f} km/s, "
          f"bias {np.median(dv[good]):+.2f} km/s, pull std {robust_std(pull):.3f}")
    assert 0.8 <= robust_std(pull) <= 1.25
    assert np.median(np.abs(dv[good])) < 4.0
    assert abs(np.median(dv[good])) < 1.0
    assert np.corrcoef(maps["HALPHA_VELOCITY"][good], truth["VELOCITY"][good])[0, 1] > 0.99


@pytest.mark.timeout(420)
def test_run_demo_writes_its_products(tmp_path, capsys):
    assert run_demo(tmp_path, size=12, progress=False) == 0
    for name in ("maps.fits", "maps.png", "spectrum.png", "demo_cube.hdf5"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "rotating disk" in printed and "velocity vs truth at SNR>=5" in printed


@pytest.mark.timeout(60)
def test_status_panel_names_the_codes_present():
    import matplotlib.pyplot as plt

    from lucijax.plots import plot_status

    status = np.array([[0, 0, 7], [-1, 2, 0], [9, 0, 0]])
    fig, ax = plt.subplots()
    im = plot_status(ax, status)
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert labels == ["-1 masked", "0 converged", "2 not converged", "7 no line", "9 unknown"]
    assert im.cmap.N == 5
    plt.close(fig)
