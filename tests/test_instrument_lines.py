"""Instrument conventions (spectral axis, instrumental FWHM, resolution, filters) against
values stored in real ORB files, and the line catalogue / line sets / sky line lists."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from lucijax.physics import instrument
from lucijax.constants import SINC_FWHM
from lucijax.physics.lines import (
    LINE_CATALOGUE_NM,
    LineSet,
    UnknownLineError,
    canonical_line_name,
    make_line_set,
    parse_line,
    read_sky_lines,
    sky_line_set,
)

pytestmark = pytest.mark.timeout(60)

# The M31 SN3 cube of ../shared/data/orcs-m31-sky (root attributes of those files).
M31 = dict(step=2943.025792, order=8, step_nb=840, zpd_index=168, corr=1.0374712062298759,
           axis_min=14100.74229114844, axis_step=2.0983247457061225, resolution=4733.531668752227)
# The M57 spectrum of ../shared/data/orb-examples (root attributes).
M57 = dict(step=2880.879435, order=8, step_nb=593, zpd_index=215, corr=1.0366454628924218,
           axis_min=14393.4584737999884965, axis_step=3.0340342482722917339,
           line_fwhm=5.743627736415073, resolution=2662.6115636731283)


# ------------------------------------------------------------------ spectral axis
@pytest.mark.parametrize("ref", [M31, M57], ids=["M31-SN3", "M57-SN3"])
def test_spectral_axis_reproduces_real_files(ref):
    axis = instrument.spectral_axis_cm1(ref["step"], ref["order"], ref["step_nb"], ref["corr"])
    assert axis.dtype == np.float64 and axis.shape == (ref["step_nb"],)
    assert axis[0] == pytest.approx(ref["axis_min"], rel=1e-12)
    np.testing.assert_allclose(np.diff(axis), ref["axis_step"], rtol=1e-9)
    # the grid is axis_min + k * axis_step exactly (no N/(N-1) stretch)
    k = np.arange(ref["step_nb"])
    np.testing.assert_allclose(axis, ref["axis_min"] + k * ref["axis_step"], rtol=0, atol=1e-8)
    assert instrument.channel_width_cm1(ref["step"], ref["step_nb"], ref["corr"]) == pytest.approx(ref["axis_step"], rel=1e-12)


def test_spectral_axis_values_quoted_in_the_design_notes():
    axis = instrument.spectral_axis_cm1(2943.025792, 8, 840, 1.0374712062298759)
    assert round(axis[0], 6) == 14100.742291
    assert round(axis[1] - axis[0], 7) == 2.0983247


@pytest.mark.parametrize("order", [5, 6, 8, 9, 12])
def test_odd_and_even_order_rule(order):
    step, n, corr = 2000.0, 400, 1.02
    d = corr * 1e7 / (2 * n * step)
    lo = order / (2 * step) * corr * 1e7
    hi = (order + 1) / (2 * step) * corr * 1e7
    axis = instrument.spectral_axis_cm1(step, order, n, corr)
    if order % 2:  # odd: the first channel is dropped
        assert axis[0] == pytest.approx(lo + d, rel=1e-13)
        assert axis[-1] == pytest.approx(hi, rel=1e-13)
    else:  # even: the last one
        assert axis[0] == pytest.approx(lo, rel=1e-13)
        assert axis[-1] == pytest.approx(hi - d, rel=1e-13)
    np.testing.assert_allclose(np.diff(axis), d, rtol=1e-9)


# ------------------------------------------------------------------ FWHM, resolution
def test_sinc_fwhm_reproduces_m57_line_fwhm():
    fwhm = instrument.sinc_fwhm_cm1(M57["step"], M57["step_nb"], M57["zpd_index"], M57["corr"])
    assert float(fwhm) == pytest.approx(M57["line_fwhm"], rel=1e-12)


def test_sinc_fwhm_broadcasts_and_rejects_bad_zpd():
    corr = np.array([[1.0, 1.01], [1.02, 1.03]])
    fwhm = instrument.sinc_fwhm_cm1(2943.0, 840, 168, corr)
    assert fwhm.shape == (2, 2)
    np.testing.assert_allclose(fwhm / fwhm[0, 0], corr / corr[0, 0], rtol=1e-14)
    with pytest.raises(ValueError, match="zpd_index"):
        instrument.sinc_fwhm_cm1(2943.0, 840, 840, 1.0)


@pytest.mark.parametrize("ref", [M31, M57], ids=["M31-SN3", "M57-SN3"])
def test_resolution_formula_at_band_centre(ref):
    centre = (ref["order"] + 0.5) / (2 * ref["step"]) * ref["corr"] * 1e7
    fwhm = instrument.sinc_fwhm_cm1(ref["step"], ref["step_nb"], ref["zpd_index"], ref["corr"])
    r = float(instrument.resolution(centre, fwhm))
    expected = (ref["order"] + 0.5) * (ref["step_nb"] - ref["zpd_index"]) / SINC_FWHM
    assert r == pytest.approx(expected, rel=1e-12)
    assert r == pytest.approx(ref["resolution"], rel=1e-12)  # ORB's own value in the file


def test_corr_from_calibration_laser():
    assert float(instrument.corr_from_calib(543.5 * 1.0374712062298759, 543.5)) == pytest.approx(1.0374712062298759, rel=1e-15)


# ------------------------------------------------------------------ filters
def test_filter_bands():
    sn3 = instrument.get_filter("sn3")
    assert sn3 is instrument.get_filter("SN3")
    lo, hi = sn3.band_cm1
    # the M31/M57 files store filter_cm1_min/max
    assert lo == pytest.approx(14598.540145985402, rel=1e-12)
    assert hi == pytest.approx(15439.246564767638, rel=1e-12)
    for f in instrument.FILTERS.values():
        lo, hi = f.band_cm1
        assert lo < hi
        # the band lies inside the folding order of the interferometer set-up used with it,
        # for SITELLE's calibration coefficients (1/cos(theta) ~ 1.03-1.05)
        for corr in (1.03, 1.05):
            axis = instrument.spectral_axis_cm1(f.step_nm, f.order, 1000, corr)
            assert axis[0] < lo and hi < axis[-1], (f.name, corr)
    with pytest.raises(ValueError, match="SN9"):
        instrument.get_filter("SN9")


def test_orb_sky_list_intensity_is_the_fourth_column(shared_data):
    """ORB's sky_lines.orb: the third column scales with wavelength as a resolution-limited
    width (UVES, R ~ 40000), the fourth holds the fluxes: [OI]5577 and [OI]6300, the
    brightest night-sky lines, are its two largest below 7000 A."""
    wl_nm, intensity = read_sky_lines(shared_data / "orb-lines" / "sky_lines.orb")
    blue = wl_nm < 700.0
    top = np.sort(wl_nm[blue][np.argsort(intensity[blue])[-2:]])
    np.testing.assert_allclose(top, [557.73467, 630.03086], atol=1e-4)
    table = np.loadtxt(shared_data / "orb-lines" / "sky_lines.orb", comments="#")
    width_over_wavelength = table[:, 2] / table[:, 1]
    assert 1 / 45000 < np.median(width_over_wavelength) < 1 / 35000


def test_filter_table_matches_orb_filter_files(shared_data):
    for name, f in instrument.FILTERS.items():
        path = shared_data / "filters" / f"filter_{name}.hdf5"
        with h5py.File(path, "r") as h:
            assert float(h.attrs["bandpass_min_nm"]) == pytest.approx(f.band_min_nm), name
            assert float(h.attrs["bandpass_max_nm"]) == pytest.approx(f.band_max_nm), name
            assert float(h.attrs["step"]) == pytest.approx(f.step_nm), name
            assert int(h.attrs["order"]) == f.order, name


# ------------------------------------------------------------------ line catalogue
def test_rest_wavelengths_of_the_design_notes():
    expected = {"Halpha": 656.2819, "NII6548": 654.805, "NII6583": 658.345, "SII6716": 671.644,
                "SII6731": 673.0816, "OIII4959": 495.8911, "OIII5007": 500.6843, "Hbeta": 486.1333,
                "OII3726": 372.603, "OII3729": 372.882}
    for name, nm in expected.items():
        assert LINE_CATALOGUE_NM[name] == nm, name


@pytest.mark.parametrize("alias, name", [
    ("Ha", "Halpha"), ("halpha", "Halpha"), ("Halpha", "Halpha"), ("[NII]6584", "NII6583"),
    ("nii6583", "NII6583"), ("[NII]6548", "NII6548"), ("sii6717", "SII6716"), ("[SII]6731", "SII6731"),
    ("[OIII]5007", "OIII5007"), ("Hb", "Hbeta"),
])
def test_line_aliases(alias, name):
    assert canonical_line_name(alias) == name
    assert parse_line(alias) == (name, LINE_CATALOGUE_NM[name])


def test_unknown_line_is_named_in_the_error():
    with pytest.raises(UnknownLineError, match="FeXIV5303"):
        canonical_line_name("FeXIV5303")
    with pytest.raises(UnknownLineError, match="Hepsilon"):  # (Hdelta is in the catalogue since issue 21)
        make_line_set(["Halpha", "Hepsilon"])
    with pytest.raises(UnknownLineError, match="X=abc"):
        parse_line("X=abc")


def test_user_line():
    assert parse_line("X=700.0") == ("X", 700.0)
    ls = make_line_set(["Halpha", "X=700.0"])
    assert ls.names == ("Halpha", "X")
    assert ls.rest_nm == (656.2819, 700.0)
    np.testing.assert_allclose(ls.rest_cm1, 1e7 / np.array([656.2819, 700.0]), rtol=1e-15)


def test_nii_tie_on_and_oiii_tie_off_by_default():
    ls = make_line_set(["Halpha", "NII6583", "NII6548"])
    assert ls.ties == ((2, 1, pytest.approx(1 / 3)),)
    assert ls.primary_lines == (0, 1)
    np.testing.assert_array_equal(ls.amplitude_column(), [0, 1, 1])
    np.testing.assert_allclose(ls.flux_ratio(), [1, 1, 1 / 3])
    assert make_line_set(["Halpha", "NII6583", "NII6548"], tie_nii=False).ties == ()
    assert make_line_set(["OIII5007", "OIII4959"]).ties == ()
    assert make_line_set(["OIII5007", "OIII4959"], tie_oiii=True).ties == ((1, 0, pytest.approx(1 / 3)),)
    # lines in different kinematic groups are not tied
    assert make_line_set(["NII6583", "NII6548"], groups=[0, 1]).ties == ()


def test_line_set_validation():
    with pytest.raises(ValueError, match="twice"):
        make_line_set(["Halpha", "Ha"])
    with pytest.raises(ValueError, match="groups"):
        make_line_set(["Halpha", "NII6583"], groups=[0, 2])
    with pytest.raises(ValueError):
        LineSet((), (), ())


# ------------------------------------------------------------------ sky lines
SKY_FILE = """### a test sky line list in ORB's layout (UVES atlas: FWHM, then flux)
# index  wavelength(A)  fwhm(A)  intensity
1  6498.729  0.157  1.5
2  6553.617  0.239  4.2
3  6863.955  0.170  10.0
4  6864.0    0.160  2.0
5  6863.300  0.180  3.0
6  6912.623  0.171  7.0
7  7000.000  0.175  9.0
"""


def test_read_sky_lines(tmp_path):
    path = tmp_path / "sky.orb"
    path.write_text(SKY_FILE)
    wl, inten = read_sky_lines(path)
    np.testing.assert_allclose(wl, [649.8729, 655.3617, 686.3955, 686.4, 686.33, 691.2623, 700.0])
    np.testing.assert_allclose(inten, [1.5, 4.2, 10.0, 2.0, 3.0, 7.0, 9.0])
    # a three-column list gives the intensity third
    three = tmp_path / "three.orb"
    three.write_text("1 6498.729 1.5\n2 6553.617 4.2\n")
    np.testing.assert_allclose(read_sky_lines(three)[1], [1.5, 4.2])
    with pytest.raises(FileNotFoundError):
        read_sky_lines(tmp_path / "missing.orb")
    bad = tmp_path / "bad.orb"
    bad.write_text("1 abc 2\n")
    with pytest.raises(ValueError, match="bad.orb:1"):
        read_sky_lines(bad)


def test_sky_line_set_band_and_blends(tmp_path):
    path = tmp_path / "sky.orb"
    path.write_text(SKY_FILE)
    band = (1e7 / 695.0, 1e7 / 650.0)  # keeps 655.36 .. 691.26 nm
    fwhm = 3.0
    ls = sky_line_set(path, band, fwhm)
    rest = np.asarray(ls.rest_nm)
    # inside the band, sorted by wavenumber, one velocity
    np.testing.assert_allclose(sorted(rest), [655.3617, 686.33, 686.3955, 686.4, 691.2623])
    assert np.all(np.diff(1e7 / rest) > 0)
    assert set(ls.groups) == {0}
    assert ls.names[0] == "SKY6912.62"
    # 686.4/686.3955 nm are 0.095 cm-1 apart (< 0.25 FWHM = 0.75 cm-1): one blend, tied to
    # its brightest member in the ratio of the catalogue intensities; 686.33 nm, 1.39 cm-1
    # (0.46 FWHM) away, is separable and keeps its own amplitude
    tied = {ls.names[d]: (ls.names[p], r) for d, p, r in ls.ties}
    assert tied == {"SKY6864.00": ("SKY6863.95", pytest.approx(2.0 / 10.0))}
    assert len(ls.primary_lines) == 4
    # a wider blend criterion joins the 1.39 cm-1 neighbour
    ls_wide = sky_line_set(path, band, fwhm, blend_fwhm=0.5)
    tied = {ls_wide.names[d]: (ls_wide.names[p], r) for d, p, r in ls_wide.ties}
    assert tied == {"SKY6864.00": ("SKY6863.95", pytest.approx(2.0 / 10.0)),
                    "SKY6863.30": ("SKY6863.95", pytest.approx(3.0 / 10.0))}
    # no line in the band: a clear error
    with pytest.raises(ValueError, match="no sky line"):
        sky_line_set(path, (20000.0, 21000.0), fwhm)


def test_sky_blends_do_not_chain(tmp_path):
    """Lines 0.2 FWHM apart one after the other: a blend spans < blend_fwhm from its first
    member, so a chain of them splits instead of growing into one wide blend."""
    fwhm = 3.0
    sigma = 15000.0 + 0.6 * np.arange(6)  # cm-1, 0.2 FWHM steps over 1.0 FWHM
    path = tmp_path / "chain.orb"
    path.write_text("".join(f"{k} {1e8 / s:.4f} {1.0 + k}\n" for k, s in enumerate(sigma)))
    ls = sky_line_set(path, (14900.0, 15100.0), fwhm)
    # blends {0, 1}, {2, 3}, {4, 5} (each spans 0.2 FWHM < 0.25), tied to the brighter member
    assert len(ls.primary_lines) == 3 and len(ls.ties) == 3
    for d, p, r in ls.ties:
        assert abs(1e7 / ls.rest_nm[d] - 1e7 / ls.rest_nm[p]) < 0.25 * fwhm
        assert r < 1.0
    assert len(sky_line_set(path, (14900.0, 15100.0), fwhm, blend_fwhm=1.1).primary_lines) == 1
