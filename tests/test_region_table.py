"""Many regions of one ds9 file, each integrated and fitted, into one table (issue 21, item 3):
``lucijax.fit_regions``, ``views.integrate_regions``, ``lucijax fit --regions``.

The cube is four 10 x 10 quadrants of known, different velocity and line flux; the regions
file holds a circle per quadrant (one in sky coordinates), a box overlapping one of them
and a circle off the cube. Each row is checked against the summed truth, and against the
existing single-mask integrated fit of the same region (an independent path: its own ds9
file, :func:`lucijax.views.integrate`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from astropy.table import Table

import lucijax
from lucijax import simulate, views
from lucijax.cli import main
from lucijax.io import masks
from lucijax.io.header import celestial_wcs_from_mapping
from lucijax.io.memory import MemoryCube
from lucijax.physics.lines import make_line_set
from lucijax.results.regions import EMPTY_REGION
from lucijax.status import Status

LINES = list(simulate.DEFAULT_LINES)
HALF = 10
#: (qx, qy) -> Halpha velocity (km/s) and peak S/N per pixel of the quadrant
VELOCITY = {(0, 0): -120.0, (1, 0): -20.0, (0, 1): 70.0, (1, 1): 160.0}
SNR = {(0, 0): 4.0, (1, 0): 6.0, (0, 1): 10.0, (1, 1): 20.0}


def _quadrant_cube():
    """20 x 20 synthetic SN3 cube: quadrant (qx, qy) holds lines at one velocity and S/N."""
    parts = {q: simulate.make_cube(HALF, HALF, seed=300 + 2 * q[0] + q[1], snr_range=(SNR[q],) * 2,
                                   velocity_range_kms=(VELOCITY[q],) * 2, broadening_range_kms=(30.0, 30.0))
             for q in VELOCITY}
    first = parts[(0, 0)]
    n, nch = 2 * HALF, first.data.shape[2]
    data = np.zeros((n, n, nch), np.float32)
    calib = np.zeros((n, n))
    truth = {k: np.zeros((n, n)) for k, v in first.truth.items() if np.ndim(v) == 2}
    for (qx, qy), c in parts.items():
        xs, ys = slice(qx * HALF, (qx + 1) * HALF), slice(qy * HALF, (qy + 1) * HALF)
        data[xs, ys], calib[xs, ys] = c.data, c.calib_map
        for k, arr in truth.items():
            arr[ys, xs] = c.truth[k]
    return dataclasses.replace(first, data=data, calib_map=calib, truth=truth)


def _region_lines():
    """The ds9 lines of the regions, and the quadrant each lies in (None: off the cube)."""
    wcs = celestial_wcs_from_mapping(simulate.filter_header())
    ra, dec = (float(v) for v in wcs.all_pix2world(4.5, 14.5, 0))
    radius = 3.5 * 8.9e-5 * 3600  # 3.5 pixels, arcsec
    return [
        ("image; circle(5.5,5.5,3.5) # text={HII-a}", (0, 0)),
        ("image; circle(15.5,5.5,3.5) # text={HII b}", (1, 0)),
        (f'fk5; circle({ra:.9f},{dec:.9f},{radius:.6f}")', (0, 1)),  # no label, sky coordinates
        ("image; circle(15.5,15.5,3.5) # text={d}", (1, 1)),
        ("image; box(13,4,4,4,0) # text={overlap}", (1, 0)),  # shares 4 pixels with HII b
        ("image; circle(100,100,3) # text={off}", None),
    ]


def _reg_text(lines) -> str:
    return "# Region file format: DS9\n" + "".join(line.replace("; ", "\n") + "\n" for line in lines)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(SyntheticCube, cube path, regions path, region lines, RegionTable, warnings)."""
    syn = _quadrant_cube()
    folder = tmp_path_factory.mktemp("region_table")
    path = syn.write(folder / "quadrants.hdf5")
    lines = _region_lines()
    reg = folder / "hii.reg"
    reg.write_text(_reg_text([line for line, _ in lines]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = lucijax.fit_regions(path, reg, lucijax.Model(LINES), execution=lucijax.Execution(progress=False))
    return syn, path, reg, lines, table, [str(w.message) for w in caught]


def _truth_flux(syn, mask_yx, line: str, velocity: float) -> float:
    """Summed truth flux of ``line`` over a [y, x] mask, erg/cm2/s (observed frame)."""
    rest = float(make_line_set([line]).rest_cm1[0])
    x0 = rest * np.sqrt((1 - velocity / 299792.458) / (1 + velocity / 299792.458))
    return float(syn.truth[f"{line.upper()}_FLUX_CM1"][mask_yx].sum()) * 1e8 / x0**2


# ----------------------------------------------------------------------------- no fit
@pytest.mark.timeout(120)
def test_region_masks_and_spectra_match_single_masks(tmp_path):
    on_cube = ["image; circle(5.5,5.5,3.5) # text={a}", "image; box(6,6,4,4,0)", "image; point(3,3)",
               "image; -circle(5.5,5.5,1)", "image; polygon(12,12,18,12,15,18) # text={tri}"]
    text = _reg_text([*on_cube, "image; circle(-40,-40,2)"])
    shape = (20, 20)
    with pytest.warns(UserWarning, match="without an area"):
        regs = masks.ds9_region_masks(text, shape)
    assert [r.index for r in regs] == [0, 1, 2, 3] and [r.label for r in regs] == ["a", "", "tri", ""]
    assert [r.shape for r in regs] == ["circle", "box", "polygon", "circle"]
    assert (regs[0].x, regs[0].y) == (4.5, 4.5) and regs[2].x == pytest.approx(14.0) and regs[3].box is None
    hole = masks.ds9_mask("image\ncircle(5.5,5.5,1)", shape)
    for r, line in zip(regs[:3], ["circle(5.5,5.5,3.5)", "box(6,6,4,4,0)", "polygon(12,12,18,12,15,18)"]):
        np.testing.assert_array_equal(r.mask(shape), masks.ds9_mask(f"image\n{line}", shape) & ~hole)
    assert (regs[0].mask(shape) & regs[1].mask(shape)).sum() > 0  # they overlap
    # the spectra: each equals the single-mask integrated spectrum (overlaps count in both)
    syn = simulate.make_cube(20, 20, seed=8)
    cube = MemoryCube.from_synthetic(syn)
    bkg = np.full(cube.shape[2], 2e-19)
    for combine in ("sum", "mean"):
        with pytest.warns(UserWarning, match="covers no pixel"):
            many = views.regions_spectra(cube, regs, combine=combine, background=bkg)
        assert many.shape == (4, 1, cube.shape[2]) and many.n_pixels.tolist() == [r.n_pixels for r in regs]
        assert many.pixel_mask[:, 0].tolist() == [True, True, True, False]
        for k, r in enumerate(regs[:3]):
            one = views.integrate(cube, r.mask(shape), combine=combine, background=bkg)
            np.testing.assert_allclose(many.read_spectrum(k, 0), one.read_spectrum(0, 0), rtol=1e-6, atol=1e-30)
            np.testing.assert_allclose(many.read_calib_map(k, k + 1, 0, 1), one.read_calib_map(0, 1, 0, 1), rtol=1e-12)
        assert np.isnan(many.read_spectrum(3, 0)).all()
    # --region / --mask restrict the pixels of every region
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restricted = views.integrate_regions(cube, _reg_text(on_cube), region=(0, 6, 0, 20))
    assert restricted.n_pixels.tolist() == [int((r.mask(shape)[:, :6]).sum()) for r in regs[:3]]
    assert restricted.n_pixels[2] == 0 and any("region 2 (tri) covers no pixel" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="none of the 1 regions"):
        views.integrate_regions(cube, "image\ncircle(-40,-40,2)")
    with pytest.raises(ValueError, match="no region with an area"):
        masks.ds9_region_masks("image\n-circle(5,5,2)", shape)


# ----------------------------------------------------------------------------- fits
@pytest.mark.timeout(600)
def test_rows_recover_the_truth_of_each_region(setup):
    syn, _, _, lines, rt, caught = setup
    t = rt.table
    assert len(t) == 6 and t["INDEX"].tolist() == list(range(6))
    assert t["LABEL"].tolist() == ["HII-a", "HII b", "", "d", "overlap", "off"]
    assert t["N_PIXELS"].tolist() == [32, 32, 32, 32, 9, 0]
    np.testing.assert_allclose(t["X"][:4], [4.5, 14.5, 4.5, 14.5], atol=1e-4)  # region 2: from its RA/Dec
    np.testing.assert_allclose(t["Y"][:4], [4.5, 4.5, 14.5, 14.5], atol=1e-4)
    wcs = celestial_wcs_from_mapping(simulate.filter_header())
    ra, dec = wcs.all_pix2world(t["X"], t["Y"], 0)
    np.testing.assert_allclose(t["RA"], ra, rtol=0, atol=1e-9)
    np.testing.assert_allclose(t["DEC"], dec, rtol=0, atol=1e-9)
    assert str(t["HALPHA_FLUX"].unit) == "erg / (s cm2)" and str(t["HALPHA_VELOCITY"].unit) == "km / s"
    regs = masks.ds9_region_masks(_reg_text([line for line, _ in lines]), (20, 20), wcs)
    report = []
    for k, (_, quadrant) in enumerate(lines[:5]):
        row = t[k]
        assert row["STATUS"] == Status.CONVERGED and row["STATUS_MESSAGE"] == "converged"
        v_true = VELOCITY[quadrant]
        pull_v = (row["HALPHA_VELOCITY"] - v_true) / row["HALPHA_VELOCITY_ERR"]
        m = regs[k].mask((20, 20))
        pulls_f = {}
        for line in ("Halpha", "NII6583"):
            truth = _truth_flux(syn, m, line, v_true)
            pulls_f[line] = (row[f"{line.upper()}_FLUX"] - truth) / row[f"{line.upper()}_FLUX_ERR"]
        report.append(f"region {k}: v {row['HALPHA_VELOCITY']:.2f} +- {row['HALPHA_VELOCITY_ERR']:.2f} (truth {v_true:g}, "
                      f"pull {pull_v:+.2f}); flux pulls Halpha {pulls_f['Halpha']:+.2f}, [NII] {pulls_f['NII6583']:+.2f}")
        assert abs(pull_v) < 3 and all(abs(p) < 3 for p in pulls_f.values())
    print("\n".join(report))
    # the region off the cube: a row of invalid input, NaN, and a warning
    off = t[5]
    assert off["STATUS"] == Status.INVALID_INPUT and off["STATUS_MESSAGE"] == EMPTY_REGION
    assert np.isnan(off["HALPHA_FLUX"]) and np.isnan(off["HALPHA_VELOCITY"])
    assert any("region 5 (off) covers no pixel" in w for w in caught)


@pytest.mark.timeout(600)
def test_rows_equal_single_mask_integrated_fits(setup, tmp_path, capsys):
    """Each row is the fit of the existing single-mask integrated spectrum of its region."""
    _, path, _, lines, rt, _ = setup
    t = rt.table
    model = lucijax.Model(LINES)
    columns = [c for c in t.colnames if c.endswith(("_FLUX", "_FLUX_ERR", "_VELOCITY", "_VELOCITY_ERR", "_BROADENING",
                                                    "_BROADENING_ERR"))] + ["CHI2", "SNR", "NOISE", "FWHM"]
    worst = {}
    with lucijax.open_cube(path) as cube:
        for k, (line, _) in enumerate(lines[:5]):
            one_reg = tmp_path / f"r{k}.reg"
            one_reg.write_text(_reg_text([line]))
            one = views.integrate(cube, one_reg)
            assert one.n_pixels == t["N_PIXELS"][k]
            ref = lucijax.fit(one, model, execution=lucijax.Execution(progress=False)).maps
            assert t["STATUS"][k] == ref["STATUS"][0, 0]
            for c in columns:
                a, b = float(t[c][k]), float(ref[c][0, 0])
                rel = abs(a - b) / max(abs(b), 1e-300)
                worst[c] = max(worst.get(c, 0.0), rel)
                assert a == pytest.approx(b, rel=2e-5, abs=1e-3 if "VELOCITY" in c or "BROADENING" in c else 0), (k, c, a, b)
    # and the command line's --mask --integrated of region 1 (fit.json)
    import json

    out = tmp_path / "one"
    assert main(["fit", str(path), "--lines", *LINES, "--mask", str(tmp_path / "r1.reg"), "--integrated",
                 "--out", str(out), "--quiet", "--no-checkpoint"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "fit.json").read_text())
    assert t["HALPHA_VELOCITY"][1] == pytest.approx(summary["velocity"], abs=1e-3)
    assert t["HALPHA_FLUX"][1] == pytest.approx(summary["lines"]["Halpha"]["flux"], rel=2e-5)
    with capsys.disabled():
        print("\nlargest relative difference to the single-mask fits: "
              + ", ".join(f"{c} {worst[c]:.1e}" for c in ("HALPHA_FLUX", "HALPHA_VELOCITY", "HALPHA_VELOCITY_ERR", "CHI2")))


@pytest.mark.timeout(600)
def test_cli_writes_the_table_and_one_plot_per_region(setup, tmp_path, capsys):
    _, path, reg, _, rt, _ = setup
    out = tmp_path / "out"
    rc = main(["fit", str(path), "--lines", *LINES, "--regions", str(reg), "--out", str(out), "--plot", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "lucijax: warning: region 5 (off) covers no pixel of the cube" in captured.err
    assert "status counts 0 converged: 5, 1 invalid input: 1" in captured.out
    assert not (out / "maps.fits").exists() and not (out / "checkpoint").exists()
    for suffix in ("ecsv", "fits"):
        t = Table.read(out / f"regions.{suffix}")
        assert len(t) == 6 and t.colnames == rt.table.colnames
        for name, unit in (("HALPHA_FLUX", "erg / (s cm2)"), ("HALPHA_FLUX_ERR", "erg / (s cm2)"),
                           ("HALPHA_VELOCITY", "km / s"), ("HALPHA_BROADENING_ERR", "km / s"), ("RA", "deg"),
                           ("X", "pix"), ("FWHM", "1 / cm"), ("CONTINUUM", "erg / (Angstrom s cm2)")):
            assert t[name].unit is not None and t[name].unit.to_string() == unit, (suffix, name, t[name].unit)
        for name in ("HALPHA_FLUX", "HALPHA_VELOCITY", "NII6583_FLUX", "CHI2", "RA", "DEC"):
            np.testing.assert_allclose(np.asarray(t[name], float), np.asarray(rt.table[name], float), rtol=1e-5,
                                       equal_nan=True)
        assert t["STATUS"].tolist() == [0, 0, 0, 0, 0, 1]
        assert str(t["STATUS_MESSAGE"][5]) == EMPTY_REGION and str(t["LABEL"][0]) == "HII-a"
    pngs = sorted(p.name for p in (out / "regions").iterdir())
    assert pngs == ["000_HII-a.png", "001_HII_b.png", "002.png", "003_d.png", "004_overlap.png"]


# ----------------------------------------------------------------------------- bad input
BAD_CASES = [
    # (name of the regions file, its text or None for no file, extra arguments, fragment of the message)
    ("missing.reg", None, [], "no such ds9 region file"),
    ("empty.reg", "# Region file format: DS9\nglobal color=green\nimage\n", [], "no region with an area"),
    ("points.reg", "image\npoint(3,3)\n", [], "no region with an area"),
    ("broken.reg", "image\ncircle(5,5\n", [], "not a valid ds9 region file"),
    ("off.reg", "image\ncircle(100,100,3)\n", [], "none of the 1 regions covers a pixel"),
    ("ok.reg", "image\ncircle(5,5,3)\n", ["--integrated"], "choose one of"),
    ("ok.reg", "image\ncircle(5,5,3)\n", ["--bin", "2"], "choose one of"),
    ("ok.reg", "image\ncircle(5,5,3)\n", ["--model-cube"], "leave out --model-cube"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,text,extra,fragment", BAD_CASES, ids=[f"{c[0]}{''.join(c[2])}" for c in BAD_CASES])
def test_cli_bad_regions_input_is_one_line_and_exit_2(setup, tmp_path, capsys, name, text, extra, fragment):
    _, path, _, _, _, _ = setup
    reg = tmp_path / name
    if text is not None:
        reg.write_text(text)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["fit", str(path), "--lines", *LINES, "--regions", str(reg), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lucijax: error:")]
    assert rc == 2 and len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err and not out.exists()
