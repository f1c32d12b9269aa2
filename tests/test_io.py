"""Tests of the I/O layer: ORB HDF5 cubes (levels 1-3), extracted spectra, FITS cubes, maps."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lucijax.io import (
    COUNTS_UNIT,
    FLUX_UNIT,
    CubeHeader,
    FitsCube,
    MissingHeaderError,
    OrbHDF5Cube,
    OrbSpectrum,
    SpectralCube,
    celestial_wcs_from_mapping,
    get_quadrant_dims,
    header_from_attrs,
    normalise_filter_name,
    open_cube,
    read_map_units,
    read_map_wcs,
    read_maps_fits,
    read_maps_header,
    write_maps_fits,
    write_orb_cube,
)
from lucijax.io.orb import make_header_table, read_header_table

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
M57 = SHARED_DATA / "orb-examples" / "m57_spectrum0.hdf5"
SKY0 = SHARED_DATA / "orcs-m31-sky" / "sky_spectrum_0.hdf5"

STEP = 2943.025792
ORDER = 8
AXIS_CORR = 1.0374712062298759


def base_attrs(n_channels: int) -> dict:
    """ORB root attributes of an SN3-like cube with ``n_channels`` channels."""
    return {
        "step": STEP,
        "order": ORDER,
        "step_nb": n_channels,
        "zpd_index": 168 if n_channels > 168 else n_channels // 5,  # a frame of the interferogram
        "nm_laser": 543.5,
        "axis_corr": AXIS_CORR,
        "axis_min": 1e7 * ORDER / (2 * STEP) * AXIS_CORR,
        "axis_step": 1e7 / (2 * STEP * n_channels) * AXIS_CORR,
        "filter_name": "/home/someone/orb/data/filter_SN3.hdf5",
        "apodization": 1.0,
    }


def sip_wcs(nx: int = 2048, ny: int = 2064) -> WCS:
    """A SITELLE-like TAN-SIP celestial WCS (coefficients from the M57 example)."""
    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"] = nx
    h["NAXIS2"] = ny
    for k, v in {
        "CTYPE1": "RA---TAN-SIP",
        "CTYPE2": "DEC--TAN-SIP",
        "CRVAL1": 283.36858333333,
        "CRVAL2": 33.046222222222,
        "CRPIX1": 1024.0,
        "CRPIX2": 1032.0,
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "PC1_1": -8.8955294906578e-05,
        "PC1_2": -2.3293763755875e-06,
        "PC2_1": -2.3293763755875e-06,
        "PC2_2": 8.8955294906578e-05,
        "RADESYS": "FK5",
        "EQUINOX": 2000.0,
        "A_ORDER": 2,
        "B_ORDER": 2,
        "A_0_2": 9.79661000745481e-07,
        "A_1_1": 1.1128880509198e-06,
        "A_2_0": 3.27514460364517e-07,
        "B_0_2": 1.64669346024648e-06,
        "B_1_1": -1.1316153644893e-06,
        "B_2_0": 1.81747950781852e-07,
    }.items():
        h[k] = v
    return WCS(h, naxis=2)


def distinct_cube(nx: int, ny: int, nz: int) -> np.ndarray:
    """[x, y, channel] cube whose value encodes (x, y, k) exactly in float32."""
    x, y, k = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    return (1000.0 * x + 10.0 * y + k / 8.0).astype(np.float32)


def assert_same_sky(w1: WCS, w2: WCS, pix1, pix2):
    c1 = w1.pixel_to_world(*pix1)
    c2 = w2.pixel_to_world(*pix2)
    sep = c1.separation(c2).to_value("arcsec")
    assert np.max(sep) < 1e-6


# ---------------------------------------------------------------------------
# header
# ---------------------------------------------------------------------------
def test_axis_exact_step():
    attrs = {
        "step": 2943.025792,
        "order": 8,
        "step_nb": 840,
        "zpd_index": 168,
        "nm_laser": 543.5,
        "axis_corr": AXIS_CORR,
        "axis_min": 14100.74229114844,
        "axis_step": 2.0983247457061225,
    }
    h = header_from_attrs(attrs, 840, "mem")
    axis = h.axis_cm1
    assert axis.dtype == np.float64
    assert axis.shape == (840,)
    assert axis[1] - axis[0] == 2.0983247457061225
    assert axis[0] == 14100.74229114844
    assert axis[-1] == 14100.74229114844 + 839 * 2.0983247457061225


def test_header_fields_and_conversions():
    attrs = base_attrs(100)
    attrs.update(order=np.float64(8.0), step_nb=np.int64(100), axis_min=np.longdouble(attrs["axis_min"]))
    attrs["filter_name"] = b"/x/y/filter_SN3.hdf5"
    attrs["calib_coeff_orig"] = 1.04
    h = header_from_attrs(attrs, 100, "mem")
    assert isinstance(h, CubeHeader)
    assert h.order == 8 and isinstance(h.order, int)
    assert h.step_nb == 100 and isinstance(h.step_nb, int)
    assert h.filter_name == "SN3"
    assert h.calib_coeff_orig == 1.04
    assert isinstance(h.attrs["axis_min"], float)
    assert h.flux_unit == COUNTS_UNIT  # nothing says calibrated
    assert h.wcs is None
    assert h.apodization == 1.0
    with pytest.raises(ValueError, match="order"):
        header_from_attrs({**attrs, "order": 8.5}, 100, "mem")


def test_header_upper_case_fallbacks_and_formula_axis():
    attrs = {"STEP": STEP, "ORDER": 8.0, "STEPNB": 200, "ZPDINDEX": 40, "CALIBNM": 543.5,
             "calib_coeff": AXIS_CORR, "FILTER": "C2", "APODIZ": "None"}
    h = header_from_attrs(attrs, 200, "mem")
    assert (h.step_nm, h.order, h.step_nb, h.zpd_index, h.nm_laser) == (STEP, 8, 200, 40, 543.5)
    assert h.axis_corr == AXIS_CORR
    assert h.filter_name == "C2"
    assert h.apodization == 1.0
    # ORB create_cm1_axis formula
    assert h.axis_min_cm1 == pytest.approx(1e7 * 8 / (2 * STEP) * AXIS_CORR, rel=1e-14)
    assert h.axis_step_cm1 == pytest.approx(1e7 / (2 * STEP * 200) * AXIS_CORR, rel=1e-14)
    # lower-case wins over upper-case
    h2 = header_from_attrs({**attrs, "step": 1000.0}, 200, "mem")
    assert h2.step_nm == 1000.0


def test_header_crval3_fallback_and_wavelength_rejected():
    attrs = base_attrs(50)
    del attrs["axis_min"], attrs["axis_step"]
    attrs.update(CRVAL3=15000.0, CDELT3=2.5, CRPIX3=3.0, CUNIT3="cm-1")
    h = header_from_attrs(attrs, 50, "mem")
    assert h.axis_min_cm1 == 15000.0 - 2 * 2.5
    assert h.axis_step_cm1 == 2.5
    with pytest.raises(ValueError, match="wavenumber"):
        header_from_attrs({**attrs, "CUNIT3": "nm"}, 50, "mem")


@pytest.mark.parametrize("missing", ["step", "order", "step_nb", "zpd_index", "nm_laser", "axis_corr"])
def test_missing_header_error(missing):
    attrs = base_attrs(10)
    del attrs[missing]
    with pytest.raises(MissingHeaderError) as ei:
        header_from_attrs(attrs, 10, "cube.hdf5")
    err = ei.value
    assert isinstance(err, KeyError)
    assert err.name == missing
    assert str(err) == f"cube.hdf5: required header attribute '{missing}' is missing"


def test_missing_header_error_from_file(tmp_path):
    attrs = base_attrs(8)
    del attrs["zpd_index"]
    p = tmp_path / "nozpd.hdf5"
    write_orb_cube(p, np.zeros((2, 3, 8), np.float32), attrs)
    with pytest.raises(MissingHeaderError, match="'zpd_index' is missing") as ei:
        open_cube(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("SN3", "SN3"),
        ("sn1", "SN1"),
        ("/home/x/filter_SN3.hdf5", "SN3"),
        ("/home/thomas/Astro/Python/ORB/Orb/orb/data/filter_C4.hdf5", "C4"),
        ("filter_SN2", "SN2"),
        (b"C1", "C1"),
        ("CUSTOM", None),
        ("SN9", None),
        ("", None),
        (None, None),
    ],
)
def test_filter_name(value, expected):
    assert normalise_filter_name(value) == expected


def test_celestial_wcs_from_attrs_keeps_sip():
    w0 = sip_wcs()
    cards = dict(w0.to_header(relax=True))
    cards.update(CTYPE3="WAVE-SIP", CRVAL3=14000.0, CDELT3=3.0, CRPIX3=1.0, CUNIT3="cm-1", CROTA1=0.0)
    w = celestial_wcs_from_mapping(cards)
    assert w is not None and w.naxis == 2 and w.sip is not None
    pix = (np.array([0.0, 100.0, 2000.0]), np.array([0.0, 1500.0, 30.0]))
    assert_same_sky(w, w0, pix, pix)
    assert celestial_wcs_from_mapping({"STEP": 1.0}) is None


def test_celestial_wcs_is_built_once_on_first_use(tmp_path, monkeypatch):
    """Opening a cube does not build its WCS (astropy.wcs's import: ~0.3 s of a small fit's
    start); the first use builds it, once; prefetch_wcs builds it on a thread; a pickled
    header (a cluster's task) carries the built WCS."""
    import pickle
    import threading

    from lucijax.io import header as hd

    calls = []
    real = hd.celestial_wcs_from_mapping

    def counting(*args):
        calls.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(hd, "celestial_wcs_from_mapping", counting)
    nx, ny, nz = 7, 5, 12
    p = tmp_path / "c.hdf5"
    w0 = sip_wcs(nx, ny)
    write_orb_cube(p, distinct_cube(nx, ny, nz), base_attrs(nz), level=2, wcs=w0)
    pix = (np.array([0.0, 3.0, 6.0]), np.array([0.0, 4.0, 2.0]))
    with open_cube(p) as cube:
        h = cube.header
        assert calls == []
        copy = pickle.loads(pickle.dumps(h))
        assert len(calls) == 1 and copy == h
        assert_same_sky(copy.wcs, w0, pix, pix)
        assert_same_sky(h.wcs, w0, pix, pix)
        assert h.wcs is h.wcs and len(calls) == 1
    with open_cube(p) as cube:
        hd.prefetch_wcs(cube.header)
        for t in threading.enumerate():
            if t.name == "lucijax-later":
                t.join(60)
        assert calls[1:] == ["lucijax-later"]
        assert_same_sky(cube.header.wcs, w0, pix, pix)
        hd.prefetch_wcs(cube.header)  # built: nothing to start
        assert len(calls) == 2
    bare = tmp_path / "bare.hdf5"
    write_orb_cube(bare, distinct_cube(nx, ny, nz), base_attrs(nz), level=2)
    with open_cube(bare) as cube:
        assert cube.header.wcs is None and len(calls) == 2


# ---------------------------------------------------------------------------
# ORB HDF5 cubes
# ---------------------------------------------------------------------------
def test_level2_round_trip_orientation_and_slabs(tmp_path):
    nx, ny, nz = 7, 5, 12
    data = distinct_cube(nx, ny, nz)
    calib = 543.5 + 0.01 * np.arange(nx * ny, dtype=np.float64).reshape(nx, ny)
    deep = np.arange(nx * ny, dtype=np.float64).reshape(nx, ny)
    p = tmp_path / "l2.hdf5"
    w0 = sip_wcs(nx, ny)
    write_orb_cube(p, data, base_attrs(nz), level=2, calib_map=calib, deep_frame=deep, wcs=w0, chunk_xy=(4, 3))
    with h5py.File(p, "r") as f:
        assert f["data"].dtype == np.float32
        assert f["data"].chunks == (4, 3, nz)
        assert f.attrs["level2"]
    with open_cube(p) as cube:
        assert isinstance(cube, OrbHDF5Cube) and isinstance(cube, SpectralCube)
        assert cube.level == 2
        assert cube.shape == (nx, ny, nz)
        assert not cube.is_single_spectrum
        assert cube.header.flux_unit == FLUX_UNIT
        assert cube.header.filter_name == "SN3"
        assert cube.header.n_channels == nz
        full = cube.read_spectra(0, nx, 0, ny)
        assert full.dtype == np.float32 and full.shape == (nx, ny, nz)
        np.testing.assert_array_equal(full, data)
        # [x, y, channel] orientation: value encodes the pixel
        assert full[6, 2, 3] == 1000 * 6 + 10 * 2 + 3 / 8
        for box in [(2, 5, 1, 4), (0, 1, 0, 1), (6, 7, 4, 5), (3, 7, 0, 5)]:
            x0, x1, y0, y1 = box
            np.testing.assert_array_equal(cube.read_spectra(*box), full[x0:x1, y0:y1])
            np.testing.assert_array_equal(cube.read_calib_map(*box), calib[x0:x1, y0:y1])
        np.testing.assert_array_equal(cube.read_spectrum(4, 1), data[4, 1])
        np.testing.assert_array_equal(cube.read_deep_frame(1, 3, 2, 5), deep[1:3, 2:5])
        pix = (np.array([0.0, 3.0, 6.0]), np.array([0.0, 4.0, 1.0]))
        assert cube.header.wcs.sip is not None
        assert_same_sky(cube.header.wcs, w0, pix, pix)
        with pytest.raises(IndexError):
            cube.read_spectra(0, nx + 1, 0, 1)
        with pytest.raises(IndexError):
            cube.read_spectra(3, 3, 0, 1)
    # closed: a second close is harmless
    cube.close()


def test_level2_without_calib_map(tmp_path):
    p = tmp_path / "l2b.hdf5"
    write_orb_cube(p, np.ones((3, 3, 4), np.float32), base_attrs(4))
    with open_cube(p) as cube:
        assert cube.read_calib_map(0, 3, 0, 3) is None
        assert cube.read_deep_frame(0, 3, 0, 3) is None
        assert cube.header.wcs is None


def test_level3_flux_calibration_scalar_flambda(tmp_path):
    nx, ny, nz = 4, 3, 16
    counts = distinct_cube(nx, ny, nz)
    attrs = base_attrs(nz)
    attrs.update(flambda=3.0e-17, exposure_time=15.0, flux_calibration=True, level3=True)
    p = tmp_path / "l3.hdf5"
    write_orb_cube(p, counts, attrs, level=3)
    with h5py.File(p, "r") as f:
        assert f["data"].dtype == np.complex64
        assert np.all(f["data"][()].imag == 0)
    with open_cube(p) as cube:
        assert cube.level == 3
        assert cube.header.flux_unit == FLUX_UNIT
        out = cube.read_spectra(1, 4, 0, 2)
        expected = (counts[1:4, 0:2].astype(np.float64) * 3.0e-17 / nz / 15.0).astype(np.float32)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_level3_vector_flambda_with_nans(tmp_path):
    nx, ny, nz = 3, 4, 20
    counts = distinct_cube(nx, ny, nz) + 1.0
    flambda = np.linspace(1e-17, 2e-17, nz)
    flambda[-3:] = np.nan
    attrs = base_attrs(nz)
    attrs.update(flambda=flambda, exposure_time=13.7, flux_calibration=True)
    p = tmp_path / "l3v.hdf5"
    write_orb_cube(p, counts, attrs, level=3)
    with open_cube(p) as cube:
        out = cube.read_spectra(0, nx, 0, ny)
    assert np.all(np.isnan(out[..., -3:]))
    assert np.all(np.isfinite(out[..., :-3]))
    expected = counts.astype(np.float64) * flambda / nz / 13.7
    np.testing.assert_allclose(out[..., :-3], expected[..., :-3], rtol=1e-6)


@pytest.mark.parametrize("flag", [None, False, 0])
def test_level3_uncalibrated_stays_in_counts(tmp_path, flag):
    # ORB's rule: without 'flambda' a level-3 cube is in counts (with 'flambda' it is
    # calibrated whatever the flag says: tests/test_orb_rules.py)
    nz = 10
    counts = distinct_cube(2, 3, nz)
    attrs = base_attrs(nz)
    attrs.update(exposure_time=10.0)
    if flag is not None:
        attrs["flux_calibration"] = flag
    p = tmp_path / "l3c.hdf5"
    write_orb_cube(p, counts, attrs, level=3)
    with open_cube(p) as cube:
        assert cube.header.flux_unit == COUNTS_UNIT
        np.testing.assert_array_equal(cube.read_spectra(0, 2, 0, 3), counts)


def test_level3_calibrated_needs_exposure_time(tmp_path):
    attrs = base_attrs(6)
    attrs.update(flambda=1e-17, flux_calibration=True)
    p = tmp_path / "l3e.hdf5"
    write_orb_cube(p, np.ones((2, 2, 6)), attrs, level=3)
    with pytest.raises(MissingHeaderError, match="'exposure_time' is missing"):
        open_cube(p)


def test_quadrant_dims_match_orb():
    # ORB's rule: floor division, the last row/column takes the remainder
    assert get_quadrant_dims(0, 2048, 2064, 3) == (0, 682, 0, 688)
    assert get_quadrant_dims(4, 2048, 2064, 3) == (682, 1364, 688, 1376)
    assert get_quadrant_dims(8, 2048, 2064, 3) == (1364, 2048, 1376, 2064)
    assert get_quadrant_dims(2, 2048, 2064, 3) == (1364, 2048, 0, 688)  # q % div -> x
    tiles = np.zeros((11, 8), int)
    for q in range(9):
        x0, x1, y0, y1 = get_quadrant_dims(q, 11, 8, 3)
        tiles[x0:x1, y0:y1] += 1
    assert np.all(tiles == 1)


def test_level1_round_trip(tmp_path):
    nx, ny, nz = 11, 8, 9
    data = distinct_cube(nx, ny, nz)
    calib = np.full((nx, ny), 543.5) + np.arange(ny) * 0.1
    attrs = base_attrs(nz)
    attrs["exposure_time"] = 15.0
    w0 = sip_wcs(nx, ny)
    p = tmp_path / "l1.hdf5"
    write_orb_cube(p, data, attrs, level=1, quad_nb=9, calib_map=calib, wcs=w0)
    with h5py.File(p, "r") as f:
        assert "data" not in f
        assert sorted(k for k in f if k.startswith("quad")) == [f"quad{q:03d}" for q in range(9)]
        assert f["quad004/data"].shape == (3, 2, nz)
        assert "step" not in f.attrs  # parameters live in the header table
    with open_cube(p) as cube:
        assert cube.level == 1
        assert cube.shape == (nx, ny, nz)
        assert cube.header.flux_unit == FLUX_UNIT
        h = cube.header
        assert (h.step_nm, h.order, h.step_nb, h.zpd_index, h.nm_laser) == (STEP, 8, nz, attrs["zpd_index"], 543.5)
        assert h.filter_name == "SN3"
        np.testing.assert_allclose(h.axis_cm1, attrs["axis_min"] + np.arange(nz) * attrs["axis_step"], rtol=0, atol=1e-9)
        full = cube.read_spectra(0, nx, 0, ny)
        np.testing.assert_array_equal(full, data)
        for box in [(2, 9, 1, 7), (3, 6, 2, 4), (9, 11, 5, 8), (0, 1, 7, 8), (2, 4, 0, 8)]:
            x0, x1, y0, y1 = box
            np.testing.assert_array_equal(cube.read_spectra(*box), data[x0:x1, y0:y1])
        np.testing.assert_array_equal(cube.read_calib_map(2, 5, 3, 8), calib[2:5, 3:8])
        pix = (np.array([0.0, 10.0]), np.array([7.0, 0.0]))
        assert_same_sky(h.wcs, w0, pix, pix)


def test_level1_handwritten_structured_header(tmp_path):
    """A level-1 file written like old ORB: 2x2 quads, no dim attrs, compound header."""
    nx, ny, nz = 6, 5, 4
    data = distinct_cube(nx, ny, nz)
    p = tmp_path / "old.hdf5"
    rec = np.dtype([("key", "S16"), ("value", "S64"), ("comment", "S16"), ("type", "S32")])
    cards = [("STEP", "2943.025792", "", "<type 'float'>"), ("ORDER", "8", "", "<type 'int'>"),
             ("STEPNB", "4", "", "<type 'int'>"), ("ZPDINDEX", "1", "", "<type 'int'>"),
             ("CALIBNM", "543.5", "", "<type 'float'>"), ("AXISCORR", "1.03", "", "<type 'float'>"),
             ("FILTER", "SN2", "", "<type 'str'>"), ("COMMENT", "hello", "", "comment"),
             ("CRVAL3", "15000.0", "", "<type 'float'>"), ("CDELT3", "3.0", "", "<type 'float'>"),
             ("CRPIX3", "1.0", "", "<type 'float'>"), ("CUNIT3", "cm-1", "", "<type 'str'>")]
    with h5py.File(p, "w") as f:
        for q in range(4):
            x0, x1, y0, y1 = get_quadrant_dims(q, nx, ny, 2)
            f[f"quad{q:03d}/data"] = data[x0:x1, y0:y1]
        f["header"] = np.array(cards, dtype=rec)
        f.attrs["quad_nb"] = 4
    with open_cube(p) as cube:
        assert cube.level == 1 and cube.shape == (nx, ny, nz)
        assert cube.header.filter_name == "SN2"
        assert cube.header.axis_corr == 1.03
        assert cube.header.axis_min_cm1 == 15000.0 and cube.header.axis_step_cm1 == 3.0
        np.testing.assert_array_equal(cube.read_spectra(1, 5, 1, 4), data[1:5, 1:4])


def test_header_table_round_trip():
    cards = {"STEP": 2943.025792, "ORDER": 8, "FLAG": True, "FILTER": "SN3", "NEG": False}
    parsed = read_header_table(make_header_table(cards))
    assert parsed == cards
    assert isinstance(parsed["ORDER"], int) and isinstance(parsed["FLAG"], bool)
    card_images = np.array([fits.Card("STEP", 2943.0).image.encode(), fits.Card("FILTER", "SN1").image.encode()])
    assert read_header_table(card_images) == {"STEP": 2943.0, "FILTER": "SN1"}


def test_write_orb_cube_overwrites_atomically(tmp_path):
    p = tmp_path / "c.hdf5"
    write_orb_cube(p, np.zeros((2, 2, 5)), base_attrs(5))
    write_orb_cube(p, np.ones((3, 2, 5)), base_attrs(5))
    assert sorted(os.listdir(tmp_path)) == ["c.hdf5"]
    with open_cube(p) as cube:
        assert cube.shape == (3, 2, 5)
        assert np.all(cube.read_spectra(0, 3, 0, 2) == 1)


def test_simulator_style_level3_write(tmp_path):
    """The simulator passes float32 counts and level3/flux_calibration attrs."""
    nz = 8
    flux = distinct_cube(2, 2, nz) * 1e-18
    attrs = base_attrs(nz)
    attrs.update(flambda=1e-19, exposure_time=15.0, flux_calibration=True, level3=True)
    counts = (flux / 1e-19 * nz * 15.0).astype(np.float32)
    p = tmp_path / "sim.hdf5"
    write_orb_cube(p, counts, attrs, level=3)
    with open_cube(p) as cube:
        np.testing.assert_allclose(cube.read_spectra(0, 2, 0, 2), flux, rtol=1e-5)


# ---------------------------------------------------------------------------
# extracted spectra
# ---------------------------------------------------------------------------
def _write_spectrum(path, n, attrs, axis):
    with h5py.File(path, "w") as f:
        f["axis"] = axis
        f["data"] = (np.arange(n) * 1e-18).astype(np.complex128) + 1j
        f["err"] = np.ones(n)
        for k, v in attrs.items():
            f.attrs[k] = v


def test_synthetic_spectrum_consistent_axis(tmp_path):
    n = 30
    attrs = base_attrs(n)
    attrs["BUNIT"] = "FLUX"
    axis = attrs["axis_min"] + np.arange(n) * attrs["axis_step"]
    p = tmp_path / "spec.hdf5"
    _write_spectrum(p, n, attrs, axis)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cube = open_cube(p)
    assert isinstance(cube, OrbSpectrum)
    assert cube.is_single_spectrum and cube.shape == (1, 1, n)
    assert cube.header.flux_unit == FLUX_UNIT
    assert cube.header.axis_min_cm1 == attrs["axis_min"]
    s = cube.read_spectra(0, 1, 0, 1)
    assert s.dtype == np.float32 and s.shape == (1, 1, n)
    np.testing.assert_allclose(s[0, 0], np.arange(n) * 1e-18, rtol=1e-6)  # real part only
    with pytest.raises(IndexError):
        cube.read_spectra(0, 2, 0, 1)
    cube.close()


def test_synthetic_spectrum_inconsistent_axis_uses_attribute_axis(tmp_path):
    n = 40
    attrs = base_attrs(n)  # cube base axis, corr = AXIS_CORR
    calib_coeff = 1.0545498170176162
    attrs["calib_coeff"] = calib_coeff
    axis = 1e7 * ORDER / (2 * STEP) * calib_coeff + np.arange(n) * 1e7 / (2 * STEP * n) * calib_coeff
    p = tmp_path / "spec2.hdf5"
    _write_spectrum(p, n, attrs, axis)
    with pytest.warns(UserWarning, match="attribute axis is used"):
        cube = open_cube(p)
    np.testing.assert_allclose(cube.header.axis_cm1, attrs["axis_min"] + np.arange(n) * attrs["axis_step"], rtol=0, atol=1e-9)
    assert cube.header.axis_corr == AXIS_CORR


# ---------------------------------------------------------------------------
# FITS cubes
# ---------------------------------------------------------------------------
def _fits_cube(path, nx=6, ny=4, nz=10, cunit="cm-1", crpix3=1.0, wcs=None):
    data_xyz = distinct_cube(nx, ny, nz)
    hdu = fits.PrimaryHDU(data_xyz.transpose(2, 1, 0))  # numpy [channel, y, x]
    h = hdu.header
    if wcs is not None:
        for card in wcs.to_header(relax=True).cards:
            h[card.keyword] = card.value
    h["CTYPE3"] = "WAVENUMBER"
    h["CUNIT3"] = cunit
    h["CRVAL3"] = 14500.0
    h["CDELT3"] = 2.5
    h["CRPIX3"] = crpix3
    h["STEP"] = STEP
    h["ORDER"] = 8
    h["STEP_NB"] = nz
    h["ZPDINDEX"] = 3
    h["NM_LASER"] = 543.5
    h["AXISCORR"] = AXIS_CORR
    h["FILTER"] = "SN3"
    h["BUNIT"] = "erg/cm2/s/A"
    hdu.writeto(path, overwrite=True)
    return data_xyz


@pytest.mark.parametrize("name", ["cube.fits", "cube.fits.gz"])
def test_fits_cube_round_trip(tmp_path, name):
    nx, ny, nz = 6, 4, 10
    w0 = sip_wcs(nx, ny)
    p = tmp_path / name
    data = _fits_cube(p, nx, ny, nz, wcs=w0)
    with open_cube(p) as cube:
        assert isinstance(cube, FitsCube)
        assert cube.shape == (nx, ny, nz)
        h = cube.header
        assert (h.step_nm, h.order, h.step_nb, h.zpd_index, h.axis_corr) == (STEP, 8, nz, 3, AXIS_CORR)
        assert h.filter_name == "SN3" and h.flux_unit == FLUX_UNIT
        assert h.axis_min_cm1 == 14500.0 and h.axis_step_cm1 == 2.5
        full = cube.read_spectra(0, nx, 0, ny)
        assert full.dtype == np.float32
        np.testing.assert_array_equal(full, data)
        assert full[5, 1, 2] == 5000 + 10 + 2 / 8
        np.testing.assert_array_equal(cube.read_spectra(2, 5, 1, 3), data[2:5, 1:3])
        assert cube.read_calib_map(0, nx, 0, ny) is None
        assert h.wcs is not None and h.wcs.sip is not None
        pix = (np.array([0.0, 5.0]), np.array([3.0, 0.0]))
        assert_same_sky(h.wcs, w0, pix, pix)


def test_fits_cube_crpix3_and_calib_extension(tmp_path):
    p = tmp_path / "c.fits"
    _fits_cube(p, 5, 3, 8, crpix3=4.0)
    calib_yx = 543.0 + np.arange(15, dtype=np.float64).reshape(3, 5)
    with fits.open(p, mode="append") as hdul:
        hdul.append(fits.ImageHDU(calib_yx, name="CALIB_MAP"))
    with open_cube(p) as cube:
        assert cube.header.axis_min_cm1 == 14500.0 - 3 * 2.5
        np.testing.assert_array_equal(cube.read_calib_map(1, 4, 0, 2), calib_yx[0:2, 1:4].T)


def test_fits_cube_wavelength_axis_rejected(tmp_path):
    p = tmp_path / "nm.fits"
    _fits_cube(p, cunit="nm")
    with pytest.raises(ValueError, match="wavenumber cubes"):
        open_cube(p)


# ---------------------------------------------------------------------------
# open_cube dispatch errors
# ---------------------------------------------------------------------------
def test_open_cube_errors(tmp_path):
    missing = tmp_path / "nope.hdf5"
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        open_cube(missing)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt.*neither an HDF5 nor a FITS"):
        open_cube(txt)
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f["stuff"] = np.zeros(3)
    with pytest.raises(ValueError, match="other.hdf5.*expected an ORB HDF5 cube"):
        open_cube(other)
    img = tmp_path / "img.fits"
    fits.PrimaryHDU(np.zeros((3, 3))).writeto(img)
    with pytest.raises(ValueError, match="no 3-D image HDU"):
        open_cube(img)


# ---------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------
def _need(path: Path):
    if not path.exists():
        pytest.skip(f"real SITELLE data not available: {path} (the shared/data folder next to the repository)")


def test_real_m57_spectrum():
    _need(M57)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attributes and stored axis agree: no warning
        cube = open_cube(M57)
    with cube:
        assert isinstance(cube, OrbSpectrum)
        assert cube.is_single_spectrum
        assert cube.shape == (1, 1, 593)
        h = cube.header
        assert h.n_channels == 593
        assert h.filter_name == "SN3"
        assert h.step_nb == 593
        assert h.zpd_index == 215
        assert h.order == 8
        assert h.flux_unit == FLUX_UNIT
        assert h.calib_coeff_orig == pytest.approx(1.0366454628924218)
        assert h.wcs is not None and h.wcs.has_celestial and h.wcs.sip is not None
        with h5py.File(M57, "r") as f:
            stored_axis = f["axis"][()]
            stored = f["data"][()].real
        np.testing.assert_allclose(h.axis_cm1, stored_axis, rtol=0, atol=1e-6)
        s = cube.read_spectra(0, 1, 0, 1)
        assert s.shape == (1, 1, 593) and s.dtype == np.float32
        np.testing.assert_allclose(s[0, 0], stored, rtol=1e-6, atol=1e-30)
        # WCS reference pixel (FITS 1-based CRPIX) maps to CRVAL
        c = h.wcs.pixel_to_world(1023.0, 1031.0)
        assert c.ra.deg == pytest.approx(283.36858333333) and c.dec.deg == pytest.approx(33.046222222222)


def test_real_sky_spectrum():
    _need(SKY0)
    with pytest.warns(UserWarning, match="attribute axis is used"):
        cube = open_cube(SKY0)
    with cube:
        h = cube.header
        assert cube.shape == (1, 1, 840)
        assert h.n_channels == 840
        assert h.order == 8
        assert h.step_nb == 840
        assert h.filter_name == "SN3"
        assert h.flux_unit == FLUX_UNIT
        with h5py.File(SKY0, "r") as f:
            stored_axis = f["axis"][()]
        # the data lie on the cube's axis (attributes), not on the stored calib_coeff axis
        assert np.max(np.abs(h.axis_cm1 - stored_axis)) > 100.0
        assert h.axis_cm1[0] == pytest.approx(14100.74229114844) and h.axis_step_cm1 == pytest.approx(2.0983247457061225)
        assert h.axis_corr == pytest.approx(1.0374712062298759, rel=1e-12)
        np.testing.assert_allclose(cube.read_calib_map(0, 1, 0, 1), [[1.0545498170176162 * 543.5]])
        s = cube.read_spectra(0, 1, 0, 1)
        assert s.shape == (1, 1, 840)


# ---------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------
def test_maps_round_trip_and_region_wcs(tmp_path):
    w_full = sip_wcs()
    x0, x1, y0, y1 = 300, 340, 1500, 1525
    ny, nx = y1 - y0, x1 - x0
    yy, xx = np.mgrid[0:ny, 0:nx]
    maps = {
        "HALPHA_FLUX": (xx + 1000.0 * yy).astype(np.float64),
        "HALPHA_VELOCITY": np.full((ny, nx), -300.0),
        "CHI2": np.ones((ny, nx)),
        "STATUS": (xx % 3).astype(np.int64),
    }
    units = {"HALPHA_FLUX": "erg/cm2/s", "HALPHA_VELOCITY": "km/s", "CHI2": ""}
    extra = {"LUCIJAX": "0.1.0", "INPUT": "/some/where/cube.hdf5", "MODEL": "sincgauss",
             "LINES": ["Halpha", "NII6583"], "LONG_KEYWORD_NAME": 3}
    p = tmp_path / "out" / "maps.fits"
    write_maps_fits(p, maps, units, wcs2d=w_full, region=(x0, x1, y0, y1), header_extra=extra)

    back = read_maps_fits(p)
    assert list(back) == list(maps)
    assert back["HALPHA_FLUX"].dtype == np.float32
    assert back["STATUS"].dtype == np.int16
    np.testing.assert_array_equal(back["HALPHA_FLUX"], maps["HALPHA_FLUX"].astype(np.float32))
    np.testing.assert_array_equal(back["STATUS"], maps["STATUS"])
    assert back["HALPHA_FLUX"][2, 7] == 7 + 2000  # [y, x]
    assert read_map_units(p) == {"HALPHA_FLUX": "erg/cm2/s", "HALPHA_VELOCITY": "km/s", "CHI2": "", "STATUS": ""}
    hdr = read_maps_header(p)
    assert hdr["LUCIJAX"] == "0.1.0" and hdr["MODEL"] == "sincgauss" and hdr["LINES"] == "Halpha,NII6583"
    with fits.open(p) as hdul:
        assert hdul[0].data is None
        assert [h.header["EXTNAME"] for h in hdul[1:]] == list(maps)

    for name in (None, "CHI2", "STATUS"):
        w_map = read_map_wcs(p, name)
        assert w_map is not None and w_map.sip is not None
        i = np.array([0.0, 5.0, 39.0, 17.5])
        j = np.array([0.0, 24.0, 3.0, 11.25])
        assert_same_sky(w_map, w_full, (i, j), (x0 + i, y0 + j))
    with pytest.raises(KeyError):
        read_map_wcs(p, "NOPE")


def test_maps_full_frame_no_wcs_and_overwrite(tmp_path):
    p = tmp_path / "maps.fits"
    write_maps_fits(p, {"A": np.zeros((3, 4))}, {"A": "km/s"})
    assert read_map_wcs(p, "A") is None
    write_maps_fits(p, {"B": np.ones((2, 2))}, {})
    assert sorted(os.listdir(tmp_path)) == ["maps.fits"]  # no temporary left behind
    assert list(read_maps_fits(p)) == ["B"]
    w = sip_wcs(4, 3)
    write_maps_fits(p, {"A": np.zeros((3, 4))}, {}, wcs2d=w)
    pix = (np.array([0.0, 3.0]), np.array([2.0, 0.0]))
    assert_same_sky(read_map_wcs(p), w, pix, pix)


def test_maps_validation(tmp_path):
    p = tmp_path / "bad.fits"
    with pytest.raises(ValueError, match="region"):
        write_maps_fits(p, {"A": np.zeros((3, 4))}, {}, region=(0, 3, 0, 4))
    with pytest.raises(ValueError, match="shape"):
        write_maps_fits(p, {"A": np.zeros((3, 4)), "B": np.zeros((4, 3))}, {})
    with pytest.raises(ValueError, match="collide"):
        write_maps_fits(p, {"a": np.zeros((3, 4)), "A": np.zeros((3, 4))}, {})
    assert not p.exists()
