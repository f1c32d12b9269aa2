"""Physical maps (lucijax.nebular) against known truth on synthetic SN3 + SN2 cubes: ratio,
density and E(B-V) pulls, BPT classes and their probabilities, the joint fit of an SN2 cube
on another pointing and pixel grid, flux-conserving resampling, detection limits by
injection and recovery, and the command line."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lucijax as lj
from lucijax.io.maps import read_map_units, read_map_wcs, read_maps_fits
from lucijax.io.resample import resample_fluxes
from lucijax.nebular import line_fluxes, physics_maps
from lucijax.nebular.combos import combine
from lucijax.nebular.diagnostics import bpt_class, bpt_probabilities, kauffmann03, kewley01, schawinski07
from lucijax.simulate import filter_header
from lucijax.status import Status
from nebular_field import SN1_LINES, SN2_LINES, SN3_LINES, cube_of, nebular_truth

pytestmark = pytest.mark.timeout(900)
EX = lj.Execution(progress=False)
SIDE = 40


def robust_std(x):
    x = np.asarray(x)[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def report(name, **values):
    print(f"\n[nebular] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """SN3 fitted freely, SN2 fitted with SN3's kinematics (same grid), and the physics."""
    d = tmp_path_factory.mktemp("nebular")
    truth = nebular_truth((SIDE, SIDE), seed=11)
    cube_of(truth, SN3_LINES, "SN3", d / "sn3.hdf5", seed=1)
    cube_of(truth, SN2_LINES, "SN2", d / "sn2.hdf5", seed=2)
    sn3 = lj.fit(d / "sn3.hdf5", lj.Model(lines=list(SN3_LINES)), lj.MAP(), execution=EX)
    sn3.write(d / "sn3")
    sn2 = lj.fit(d / "sn2.hdf5", lj.Model(lines=list(SN2_LINES)), lj.Frozen(d / "sn3" / "maps.fits"), execution=EX)
    sn2.write(d / "sn2")
    phys = physics_maps(sn3, sn2)
    return truth, sn3, sn2, phys, d


def _term_error(lf, names):
    idx = [lf.index(n) for n in names]
    return np.sqrt(sum(lf.cov[i, j] for i in idx for j in idx))


def _true_ratios(truth):
    f = truth["flux"]
    return {"NII_HA": f["NII6583"] / f["Halpha"], "SII_HA": (f["SII6716"] + f["SII6731"]) / f["Halpha"],
            "SII_RATIO": f["SII6716"] / f["SII6731"], "OIII_HB": f["OIII5007"] / f["Hbeta"],
            "HA_HB": f["Halpha"] / f["Hbeta"]}


@pytest.mark.parametrize("name", ["NII_HA", "SII_HA", "SII_RATIO", "OIII_HB", "HA_HB"])
def test_ratio_pulls_at_snr_5(field, name):
    truth, sn3, sn2, phys, _ = field
    true = _true_ratios(truth)[name]
    lf = phys.fluxes
    num, den = {"NII_HA": (["NII6583"], ["HALPHA"]), "SII_HA": (["SII6716", "SII6731"], ["HALPHA"]),
                "SII_RATIO": (["SII6716"], ["SII6731"]), "OIII_HB": (["OIII5007"], ["HBETA"]),
                "HA_HB": (["HALPHA"], ["HBETA"])}[name]
    # true S/N of each term (true flux over its measured error) >= 5
    tf = {k.upper(): v for k, v in truth["flux"].items()}
    snr_num = sum(tf[n] for n in num) / _term_error(lf, num)
    snr_den = sum(tf[n] for n in den) / _term_error(lf, den)
    good = np.isin(sn3.maps["STATUS"], [Status.CONVERGED, Status.UNRESOLVED]) & (sn2.maps["STATUS"] == Status.CONVERGED)
    sel = good & (snr_num >= 5) & (snr_den >= 5) & np.isfinite(phys.maps[name])
    pulls = (phys.maps[name][sel] - true[sel]) / phys.maps[f"{name}_ERR"][sel]
    log_pulls = (phys.maps[f"LOG_{name}"][sel] - np.log10(true[sel])) / phys.maps[f"LOG_{name}_ERR"][sel]
    report(name, pixels=int(sel.sum()), pull_robust_std=round(robust_std(pulls), 3),
           pull_median=round(float(np.median(pulls)), 3), log_pull_robust_std=round(robust_std(log_pulls), 3))
    assert sel.sum() > 300
    assert 0.9 <= robust_std(pulls) <= 1.1
    assert 0.9 <= robust_std(log_pulls) <= 1.1
    assert abs(np.median(pulls)) < 0.25


def test_correlations_are_kept(field):
    """The tied [NII] pair is perfectly correlated; Halpha and [NII]6583 share kinematics."""
    _, sn3, _, _, _ = field
    ok = sn3.maps["STATUS"] == Status.CONVERGED
    np.testing.assert_allclose(sn3.maps["CORR_NII6583_NII6548"][ok], 1.0, atol=1e-4)
    assert np.all(np.abs(sn3.maps["CORR_HALPHA_SII6716"][ok]) < 1.0)
    # the covariance rebuilt from the maps gives the sum's error a brute-force check
    lf = line_fluxes(sn3.maps, sn3.units)
    i, j = lf.index("SII6716"), lf.index("SII6731")
    e = np.sqrt(lf.cov[i, i] + lf.cov[j, j] + 2 * lf.cov[i, j])
    c = combine(lf, [(1.0, {"SII6716": 1.0, "SII6731": 1.0})])
    s = lf.flux[i] + lf.flux[j]
    np.testing.assert_allclose((s / e)[ok], c.terms_snr[0][ok], rtol=1e-6)


def _distance_to_boundaries(x, y, sx, sy, cxy):
    """Smallest Mahalanobis distance from (x, y) to the three BPT curves (dense sampling)."""
    curves = [(np.linspace(-3, 0.049, 3000), kauffmann03), (np.linspace(-3, 0.469, 3000), kewley01),
              (np.linspace(-0.5, 1.5, 1500), schawinski07)]
    det = sx**2 * sy**2 - cxy**2
    best = np.full(x.shape, np.inf)
    for xs, f in curves:
        ys = f(xs)
        keep = (ys > -3) & (ys < 3)
        if f is schawinski07:  # the Seyfert/LINER line divides only beyond Kewley's curve
            keep &= ys > kewley01(np.minimum(xs, 0.46)) - 10 * (xs < 0.47)
        dx = xs[keep][None, :] - x[:, None]
        dy = ys[keep][None, :] - y[:, None]
        m = (sy[:, None] ** 2 * dx**2 - 2 * cxy[:, None] * dx * dy + sx[:, None] ** 2 * dy**2) / det[:, None]
        best = np.minimum(best, np.sqrt(np.min(m, axis=1)))
    vertical = np.abs(x - 0.47) / sx  # Kewley's asymptote closes the composite region
    return np.minimum(best, vertical)


def test_bpt_classes_and_probabilities(field):
    truth, _, _, phys, _ = field
    m = phys.maps
    have = m["BPT_CLASS"] > 0
    sx, sy = m["LOG_NII_HA_ERR"][have], m["LOG_OIII_HB_ERR"][have]
    cxy = np.zeros_like(sx)  # [NII]/Halpha (SN3) and [OIII]/Hbeta (SN2): independent fits
    true_cls = bpt_class(truth["n2"], truth["o3"])[have]
    far = _distance_to_boundaries(truth["n2"][have], truth["o3"][have], sx, sy, cxy) > 2.0
    agree = float(np.mean(m["BPT_CLASS"][have][far] == true_cls[far]))
    # calibration: over all (pixel, class) pairs, predicted probability vs the truth's frequency
    probs = np.stack([m[f"BPT_P_{k}"][have] for k in ("SF", "COMPOSITE", "LINER", "SEYFERT")])
    hits = np.stack([true_cls == k for k in (1, 2, 3, 4)])
    p, h = probs.ravel(), hits.ravel()
    bins = np.array([0.05, 0.35, 0.65, 0.95])
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        s = (p >= lo) & (p < hi)
        if s.sum() >= 30:
            rows.append((lo, hi, int(s.sum()), float(p[s].mean()), float(h[s].mean())))
    report("BPT", pixels=int(have.sum()), far_from_boundaries=int(far.sum()), agreement_far=round(agree, 4),
           agreement_all=round(float(np.mean(m["BPT_CLASS"][have] == true_cls)), 4),
           calibration=[(f"{a:.2f}-{b:.2f}", n, round(pm, 3), round(fr, 3)) for a, b, n, pm, fr in rows])
    assert have.sum() > 0.9 * SIDE * SIDE
    assert far.sum() > 300
    assert agree >= 0.95
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-9)
    for _, _, n, pm, fr in rows:
        assert abs(pm - fr) < max(0.1, 3 * np.sqrt(pm * (1 - pm) / n)), rows


def test_bpt_probabilities_are_calibrated():
    """Points spread evenly over the diagram, measured with Gaussian errors: among the
    (point, class) pairs given probability p, the share whose truth is that class is p."""
    rng = np.random.default_rng(4)
    n = 20000
    x, y = rng.uniform(-1.8, 0.8, n), rng.uniform(-1.3, 1.5, n)
    sx, sy, rho = 0.15, 0.12, 0.3
    z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
    mx, my = x + sx * z1, y + sy * (rho * z1 + np.sqrt(1 - rho**2) * z2)
    inner = (mx > -1.4) & (mx < 0.4) & (my > -0.9) & (my < 1.1)  # away from the edges of the spread
    probs = bpt_probabilities(mx[inner], my[inner], sx, sy, rho * sx * sy, draws=256, seed=1)
    truth = bpt_class(x[inner], y[inner])
    p = probs.ravel()
    h = np.stack([truth == k for k in (1, 2, 3, 4)]).ravel()
    rows = []
    for lo in np.arange(0.05, 0.95, 0.1):
        s = (p >= lo) & (p < lo + 0.1)
        rows.append((round(lo, 2), int(s.sum()), round(float(p[s].mean()), 3), round(float(h[s].mean()), 3)))
    report("BPT calibration", rows=rows)
    for _, count, pm, fr in rows:
        assert count > 100
        assert abs(pm - fr) < 0.05 + 2 * np.sqrt(pm * (1 - pm) / count), rows


def test_density_pulls_over_50_to_5000(field):
    truth, sn3, _, phys, _ = field
    n = phys.maps["DENSITY"]
    sel = np.isfinite(n) & (sn3.maps["STATUS"] == Status.CONVERGED) & (phys.maps["SII_RATIO_DETECTED"] == 1)
    # the delta method needs the ratio's error well inside the curve's curvature
    sel &= phys.maps["SII_RATIO_ERR"] < 0.03
    pulls = (n[sel] - truth["density"][sel]) / phys.maps["DENSITY_ERR"][sel]
    inside = (truth["density"][sel] >= phys.maps["DENSITY_LO"][sel]) & (truth["density"][sel] <= phys.maps["DENSITY_HI"][sel])
    report("density", pixels=int(sel.sum()), pull_robust_std=round(robust_std(pulls), 3),
           pull_median=round(float(np.median(pulls)), 3), within_lo_hi=round(float(np.mean(inside)), 3))
    assert sel.sum() > 200
    assert 0.9 <= robust_std(pulls) <= 1.1
    assert 0.6 <= np.mean(inside) <= 0.76


def test_ebv_and_dereddened_fluxes(field):
    truth, _, _, phys, _ = field
    e = phys.maps["EBV"]
    sel = np.isfinite(e)
    pulls = (e[sel] - truth["ebv"][sel]) / phys.maps["EBV_ERR"][sel]
    report("E(B-V) same grid", pixels=int(sel.sum()), pull_robust_std=round(robust_std(pulls), 3),
           pull_median=round(float(np.median(pulls)), 3))
    assert 0.9 <= robust_std(pulls) <= 1.1
    # dereddened Halpha and Hbeta have the Case B ratio by construction
    r = phys.maps["HALPHA_FLUX_DERED"] / phys.maps["HBETA_FLUX_DERED"]
    np.testing.assert_allclose(r[sel], phys.cards["CASEB"], rtol=1e-3)
    # and the dereddened Halpha is the intrinsic one within its error
    k_ha, k_hb = 2.53511024, 3.60893261  # CCM89, R_V = 3.1 (PyNeb)
    true_int = truth["flux"]["Halpha"] * 10 ** (0.4 * k_ha * truth["ebv"])
    p = (phys.maps["HALPHA_FLUX_DERED"][sel] - true_int[sel]) / phys.maps["HALPHA_FLUX_DERED_ERR"][sel]
    assert 0.85 <= robust_std(p) <= 1.15
    assert k_hb > k_ha


def test_metallicity_follows_marino_2013(field):
    _, _, _, phys, _ = field
    m = phys.maps
    ok = np.isfinite(m["OH_N2"])
    assert ok.sum() > 50
    np.testing.assert_allclose(m["OH_N2"][ok], 8.743 + 0.462 * m["N2"][ok], rtol=1e-6)
    assert np.all(m["BPT_CLASS"][ok] == 1)
    assert np.all((m["N2"][ok] > -1.6) & (m["N2"][ok] < -0.2))
    o = np.isfinite(m["OH_O3N2"])
    np.testing.assert_allclose(m["OH_O3N2"][o], 8.533 - 0.214 * m["O3N2"][o], rtol=1e-6)
    assert "Marino" in phys.cards["OH_N2"]


# ------------------------------------------------------------------ another pointing
def _smooth_truth(wcs, shape, pixel_area_arcsec2):
    """A smooth field evaluated at the pixel centres of a grid: fluxes per pixel scale with
    the pixel's area."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = wcs.celestial.pixel_to_world(xx, yy)
    ra0, dec0 = 10.684821844386, 41.268853142416
    dx = (sky.ra.deg - ra0) * np.cos(np.deg2rad(dec0)) * 3600.0  # arcsec
    dy = (sky.dec.deg - dec0) * 3600.0
    from lucijax.nebular.atomic import attenuation_k, case_b_balmer_decrement

    ebv = 0.35 + 0.02 * dx - 0.015 * dy
    sb_ha = 1.2e-14 * (1 + 0.02 * dx + 0.01 * dy)  # erg/cm2/s/arcsec2
    k_ha, k_hb, k_oii = attenuation_k([6562.819, 4861.333, 3727.0])
    ha = sb_ha * pixel_area_arcsec2
    hb = ha / (case_b_balmer_decrement() * 10 ** (0.4 * ebv * (k_hb - k_ha)))
    # [OII]: intrinsically 3 x Hbeta (3729/3726 = 1.35), attenuated at 3727 A
    oii_int = 3.0 * hb * 10 ** (0.4 * ebv * k_hb)
    oii = oii_int * 10 ** (-0.4 * ebv * k_oii)
    return {"velocity": 40 + 3.0 * dx, "broadening": np.full(shape, 30.0), "ebv": ebv, "oii_intrinsic": oii_int,
            "flux": {"Halpha": ha, "NII6583": 0.3 * ha, "SII6716": 0.1 * ha, "SII6731": 0.08 * ha,
                     "Hbeta": hb, "OIII5007": 0.8 * hb, "OII3726": oii / 2.35, "OII3729": oii * 1.35 / 2.35}}


def _wcs_of(h):
    """The celestial WCS of a cube header."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = [h["CTYPE1"], h["CTYPE2"]]
    w.wcs.crval = [h["CRVAL1"], h["CRVAL2"]]
    w.wcs.crpix = [h["CRPIX1"], h["CRPIX2"]]
    w.wcs.cdelt = [h["CDELT1"], h["CDELT2"]]
    return w


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    d = tmp_path_factory.mktemp("joint")
    n3, n2 = 36, 34
    h3 = dict(filter_header("SN3"), CRPIX1=18.0, CRPIX2=18.0)
    # SN2 points elsewhere (by 3.1 and -2.6 of its pixels) with 8 % larger pixels
    h2 = {"CRPIX1": 17.0 + 3.1, "CRPIX2": 17.0 - 2.6, "CDELT1": h3["CDELT1"] * 1.08, "CDELT2": h3["CDELT2"] * 1.08}
    h2full = dict(h3, **h2)
    t3 = _smooth_truth(_wcs_of(h3), (n3, n3), (h3["CDELT2"] * 3600) ** 2)
    t2 = _smooth_truth(_wcs_of(h2full), (n2, n2), (h2full["CDELT2"] * 3600) ** 2)
    cube_of(t3, SN3_LINES, "SN3", d / "sn3.hdf5", seed=5, header_overrides={"CRPIX1": 18.0, "CRPIX2": 18.0})
    cube_of(t2, SN2_LINES, "SN2", d / "sn2.hdf5", seed=6, header_overrides=h2)
    sn3 = lj.fit(d / "sn3.hdf5", lj.Model(lines=list(SN3_LINES)), lj.MAP(), execution=EX)
    sn3.write(d / "sn3")
    sn2 = lj.fit(d / "sn2.hdf5", lj.Model(lines=list(SN2_LINES)), lj.Frozen(d / "sn3" / "maps.fits"), execution=EX)
    sn2.write(d / "sn2")
    return t3, t2, sn3, sn2, d


def test_sn2_fit_with_sn3_kinematics_on_another_grid(joint):
    _, t2, _, sn2, _ = joint
    # SN3's velocities resampled onto SN2's pixels (bilinear): the velocity field is linear
    v = sn2.maps["HBETA_VELOCITY"]
    inner = np.isfinite(v)
    assert inner.mean() > 0.6  # the part of SN2's field that SN3 covers
    err = v[inner] - t2["velocity"][inner]
    report("SN2 frozen kinematics", pixels=int(inner.sum()), velocity_rms=round(float(np.sqrt(np.mean(err**2))), 3))
    assert np.sqrt(np.mean(err**2)) < 3.0
    ok = inner & (sn2.maps["STATUS"] == Status.CONVERGED)
    flux_pulls = (sn2.maps["HBETA_FLUX"][ok] - t2["flux"]["Hbeta"][ok]) / sn2.maps["HBETA_FLUX_ERR"][ok]
    assert abs(np.median(flux_pulls)) < 0.3
    assert 0.85 <= robust_std(flux_pulls) <= 1.15


def test_balmer_decrement_across_pointings(joint):
    t3, _, sn3, sn2, d = joint
    phys = physics_maps(d / "sn3" / "maps.fits", d / "sn2" / "maps.fits", resample_draws=256)
    e = phys.maps["EBV"]
    sel = np.isfinite(e)
    pulls = (e[sel] - t3["ebv"][sel]) / phys.maps["EBV_ERR"][sel]
    # Hbeta on SN3's grid against the truth integrated over SN3's pixels
    hb = phys.fluxes.flux[phys.fluxes.index("HBETA")]
    hb_pulls = (hb[sel] - t3["flux"]["Hbeta"][sel]) / phys.fluxes.error("HBETA")[sel]
    report("E(B-V) across pointings", pixels=int(sel.sum()), pull_robust_std=round(robust_std(pulls), 3),
           pull_median=round(float(np.median(pulls)), 3), hbeta_pull_std=round(robust_std(hb_pulls), 3),
           hbeta_pull_median=round(float(np.median(hb_pulls)), 3))
    assert sel.sum() > 400
    assert 0.9 <= robust_std(pulls) <= 1.1
    assert abs(np.median(pulls)) < 0.3
    assert read_map_wcs(d / "sn3" / "maps.fits") is not None


def test_sn1_oii_across_three_pointings(joint):
    """An SN1 cube ([OII]3726+3729) on a third pointing with 7 % smaller pixels: O32
    ([OIII]5007 / [OII]) from SN2 and SN1 resampled onto SN3's grid, and [OII] dereddened by
    the Balmer decrement (Halpha from SN3, Hbeta from SN2) against the intrinsic truth."""
    t3, _, _, _, d = joint
    h3 = dict(filter_header("SN3"), CRPIX1=18.0, CRPIX2=18.0)
    n1 = 38
    h1 = {"CRPIX1": 19.0 - 2.2, "CRPIX2": 19.0 + 1.7, "CDELT1": h3["CDELT1"] * 0.93, "CDELT2": h3["CDELT2"] * 0.93}
    h1full = dict(h3, **h1)
    t1 = _smooth_truth(_wcs_of(h1full), (n1, n1), (h1full["CDELT2"] * 3600) ** 2)
    cube_of(t1, SN1_LINES, "SN1", d / "sn1.hdf5", seed=7, header_overrides=h1)
    sn1 = lj.fit(d / "sn1.hdf5", lj.Model(lines=list(SN1_LINES)), lj.MAP(), execution=EX)
    sn1.write(d / "sn1")
    phys = physics_maps(d / "sn3" / "maps.fits", d / "sn2" / "maps.fits", d / "sn1" / "maps.fits", resample_draws=256)
    f = t3["flux"]
    o32 = phys.maps["OIII_OII"]
    sel = np.isfinite(o32)
    o32_pulls = (o32[sel] - (f["OIII5007"] / (f["OII3726"] + f["OII3729"]))[sel]) / phys.maps["OIII_OII_ERR"][sel]
    dered = phys.maps["OII3726_FLUX_DERED"] + phys.maps["OII3729_FLUX_DERED"]
    ok = np.isfinite(dered)
    dered_err = np.hypot(phys.maps["OII3726_FLUX_DERED_ERR"], phys.maps["OII3729_FLUX_DERED_ERR"])  # upper bound
    m = phys.maps
    single = (m["OII3726_FLUX_DERED"][ok] - t3["oii_intrinsic"][ok] / 2.35) / m["OII3726_FLUX_DERED_ERR"][ok]
    report("SN1 [OII] on a third pointing", o32_pixels=int(sel.sum()), o32_pull_std=round(robust_std(o32_pulls), 3),
           o32_pull_median=round(float(np.median(o32_pulls)), 3), dered_pixels=int(ok.sum()),
           oii3726_dered_pull_std=round(robust_std(single), 3),
           oii3726_dered_pull_median=round(float(np.median(single)), 3),
           oii_total_dered_ratio=round(float(np.median(dered[ok] / t3["oii_intrinsic"][ok])), 4))
    assert sel.sum() > 400 and ok.sum() > 400
    assert 0.85 <= robust_std(o32_pulls) <= 1.15 and abs(np.median(o32_pulls)) < 0.3
    assert 0.85 <= robust_std(single) <= 1.15 and abs(np.median(single)) < 0.3
    assert abs(np.median(dered[ok] / t3["oii_intrinsic"][ok]) - 1) < 3 * np.median(dered_err[ok] / dered[ok])


def test_sn2_fit_started_from_sn3_kinematics(joint):
    """SN2 fitted freely from SN3's kinematics (resampled onto its grid) as starts and
    bounds: its own velocities against the truth (pulls), its Hbeta fluxes, and the
    decrement of both fits."""
    t3, t2, _, _, d = joint
    sn2 = lj.fit(d / "sn2.hdf5", lj.Model(lines=list(SN2_LINES)),
                 lj.MAP(start="maps", start_maps=d / "sn3" / "maps.fits"), execution=EX)
    ok = np.isfinite(sn2.maps["HBETA_VELOCITY"]) & (sn2.maps["STATUS"] == Status.CONVERGED)
    v_pulls = (sn2.maps["HBETA_VELOCITY"][ok] - t2["velocity"][ok]) / sn2.maps["HBETA_VELOCITY_ERR"][ok]
    f_pulls = (sn2.maps["HBETA_FLUX"][ok] - t2["flux"]["Hbeta"][ok]) / sn2.maps["HBETA_FLUX_ERR"][ok]
    sn2.write(d / "sn2_started")
    phys = physics_maps(d / "sn3" / "maps.fits", d / "sn2_started" / "maps.fits", resample_draws=256)
    e = phys.maps["EBV"]
    sel = np.isfinite(e)
    e_pulls = (e[sel] - t3["ebv"][sel]) / phys.maps["EBV_ERR"][sel]
    report("SN2 started from SN3's kinematics", pixels=int(ok.sum()), converged=round(float(ok.mean()), 3),
           velocity_pull_std=round(robust_std(v_pulls), 3), velocity_pull_median=round(float(np.median(v_pulls)), 3),
           hbeta_pull_std=round(robust_std(f_pulls), 3), ebv_pixels=int(sel.sum()),
           ebv_pull_std=round(robust_std(e_pulls), 3), ebv_pull_median=round(float(np.median(e_pulls)), 3))
    assert ok.sum() > 0.6 * ok.size
    assert 0.85 <= robust_std(v_pulls) <= 1.15 and abs(np.median(v_pulls)) < 0.3
    assert 0.85 <= robust_std(f_pulls) <= 1.15
    assert sel.sum() > 400 and 0.9 <= robust_std(e_pulls) <= 1.1 and abs(np.median(e_pulls)) < 0.3


def test_ratio_quantiles_of_draws_match_numpy():
    """Reference: numpy's percentiles of each ratio computed from the same draws."""
    from lucijax.bayes.posterior import ratio_quantiles

    rng = np.random.default_rng(4)
    names = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
    flux = np.abs(rng.normal([100.0, 30.0, 10.0, 8.0, 6.0], [5.0, 4.0, 2.0, 3.0, 3.0], (4000, 5))).astype(np.float32)
    got = np.asarray(ratio_quantiles(jnp.asarray(flux), names))
    ref = {"NII_HA": flux[:, 1] / flux[:, 0], "SII_HA": (flux[:, 3] + flux[:, 4]) / flux[:, 0],
           "SII_RATIO": flux[:, 3] / flux[:, 4]}
    assert got.shape == (3, 3)
    for k, r in enumerate(ref.values()):
        np.testing.assert_allclose(got[k], np.percentile(r, [16, 50, 84]), rtol=1e-5)
    assert np.asarray(ratio_quantiles(jnp.asarray(flux[:, :1]), names[:1])).shape == (0, 3)


def test_sampled_fit_carries_ratio_quantiles(tmp_path):
    """A sampled fit writes each ratio's 16/50/84 % quantiles of its draws; ``lucijax
    physics`` carries them (from the result and from maps.fits); a MAP fit has none."""
    n = 4
    truth = nebular_truth((n, n), seed=21, halpha_flux=(2e-17, 1.5e-16))
    cube_of(truth, SN3_LINES, "SN3", tmp_path / "sn3.hdf5", seed=3)
    fit = lj.fit(tmp_path / "sn3.hdf5", lj.Model(lines=list(SN3_LINES)), lj.MAP(), execution=EX)
    post = lj.sample(tmp_path / "sn3.hdf5", fit, lj.NUTS(num_warmup=60, num_samples=100), execution=EX)
    for name in ("NII_HA", "SII_HA", "SII_RATIO"):
        lo, mid, hi = (post.maps[f"{name}_Q{p}"] for p in (16, 50, 84))
        assert np.all(np.isfinite(mid)) and np.all(lo <= mid) and np.all(mid <= hi) and np.all(lo < hi)
    # the median ratio sits near the ratio of the fluxes where both are bright
    flux_ratio = post.maps["NII6583_FLUX"] / post.maps["HALPHA_FLUX"]
    np.testing.assert_allclose(np.median(post.maps["NII_HA_Q50"] / flux_ratio), 1.0, atol=0.05)
    assert "OIII_HB_Q50" not in post.maps
    phys = physics_maps(post)
    np.testing.assert_array_equal(phys.maps["SII_RATIO_Q50"], post.maps["SII_RATIO_Q50"].astype(np.float32))
    post.write(tmp_path / "post")
    back = physics_maps(tmp_path / "post" / "maps.fits")
    np.testing.assert_allclose(back.maps["NII_HA_Q84"], phys.maps["NII_HA_Q84"], rtol=1e-6)
    assert "NII_HA_Q16" not in physics_maps(fit).maps  # a MAP fit has no draws


def test_resampling_conserves_flux_like_reproject():
    """A compact source inside both grids keeps its total flux; a uniform surface brightness
    gives each target pixel its area's share; errors of independent pixels shrink as the
    overlap weights say (checked against brute-force draws)."""
    from astropy.wcs import WCS
    from reproject import reproject_exact

    def grid(crpix, cdelt):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [10.0, 41.0]
        w.wcs.crpix = crpix
        w.wcs.cdelt = [-cdelt, cdelt]
        return w

    w_in, w_out = grid([20.0, 20.0], 9e-5), grid([17.3, 22.6], 1.13e-4)
    yy, xx = np.mgrid[0:40, 0:40]
    blob = np.exp(-0.5 * ((xx - 19.5) ** 2 + (yy - 20.2) ** 2) / 2.0**2)
    flux = np.stack([blob, 2 * blob])
    err = 0.1 * np.ones_like(flux)
    cov = np.zeros((2, 2, 40, 40))
    cov[0, 0] = cov[1, 1] = err[0] ** 2
    cov[0, 1] = cov[1, 0] = 0.5 * err[0] ** 2
    out, cov_out = resample_fluxes(flux, cov, w_in, w_out, (36, 36), draws=400, seed=1)
    np.testing.assert_allclose(np.nansum(out[0]), blob.sum(), rtol=1e-4)
    # reproject's own result, in surface brightness
    sb, _ = reproject_exact((blob, w_in), w_out, shape_out=(36, 36))
    covered = np.isfinite(out[0])  # target pixels wholly inside the source image
    assert covered.mean() > 0.6
    np.testing.assert_allclose(out[0][covered], (sb * (1.13e-4 / 9e-5) ** 2)[covered], rtol=1e-6, atol=1e-12)
    # uniform brightness: each target pixel holds its area's flux
    flat, _ = resample_fluxes(np.ones((1, 40, 40)), cov[:1, :1], w_in, w_out, (36, 36), draws=4)
    inside = np.isfinite(flat[0])
    np.testing.assert_allclose(flat[0][inside], (1.13e-4 / 9e-5) ** 2, rtol=1e-6)
    # variances: target pixels spanning ~1.3 source pixels have var = sum w^2 * 0.01 < 0.0128
    v = cov_out[0, 0][inside]
    assert 0.006 < np.median(v) < 0.0128
    rho = cov_out[0, 1][inside] / np.sqrt(cov_out[0, 0][inside] * cov_out[1, 1][inside])
    assert abs(np.median(rho) - 0.5) < 0.08


# ------------------------------------------------------------------ detection limits
def test_lines_injected_at_the_limit_are_recovered_half_the_time(tmp_path):
    """Fit a cube, take each pixel's 3-sigma [NII] limit, inject [NII] at that flux in a cube
    of the same kinematics and new noise: ~50 % come back at >= 3 sigma."""
    side = 32
    truth = nebular_truth((side, side), seed=21)
    truth["flux"]["NII6583"] = 0.02 * truth["flux"]["Halpha"]
    cube_of(truth, SN3_LINES, "SN3", tmp_path / "a.hdf5", seed=3)
    model = lj.Model(lines=list(SN3_LINES))
    first = lj.fit(tmp_path / "a.hdf5", model, lj.MAP(), execution=EX)
    limit = first.maps["NII6583_FLUX_LIMIT"]
    assert np.all(limit[np.isfinite(limit)] > 0)
    truth["flux"]["NII6583"] = np.where(np.isfinite(limit), limit, 0.0)
    cube_of(truth, SN3_LINES, "SN3", tmp_path / "b.hdf5", seed=4)
    second = lj.fit(tmp_path / "b.hdf5", model, lj.MAP(), execution=EX)
    ok = np.isfinite(limit) & np.isin(second.maps["STATUS"], [Status.CONVERGED, Status.UNRESOLVED])
    recovered = second.maps["NII6583_FLUX"][ok] / second.maps["NII6583_FLUX_ERR"][ok] >= 3.0
    # the limit of a pixel is set by its noise: a second fit gives the same (new noise draw)
    ratio = second.maps["NII6583_FLUX_LIMIT"][ok] / limit[ok]
    report("detection limit", pixels=int(ok.sum()), recovered_at_3sigma=round(float(np.mean(recovered)), 3),
           limit_ratio_second_fit=round(float(np.median(ratio)), 3))
    assert ok.sum() > 0.9 * side * side
    assert 0.4 <= np.mean(recovered) <= 0.6
    assert 0.9 < np.median(ratio) < 1.1


def test_flux_limit_matches_the_noise_of_an_absent_line():
    """Brute force: fit 4000 noise-only spectra (noise 2) by numpy least squares with the
    line's profile and a constant; the scatter of the line flux is the null flux error."""
    from lucijax.model import LineModel, ModelSpec, SpectralGrid
    from lucijax.physics.lines import make_line_set
    from lucijax.solvers.fitting import null_flux_errors

    ls = make_line_set(["Halpha"])
    axis = np.linspace(-500.0, 500.0, 400)  # relative to the line's rest position
    lm = LineModel(ModelSpec(ls, "sincgauss"), SpectralGrid(axis, float(ls.rest_cm1[0])))
    theta = jnp.asarray([20.0, 30.0])
    m = np.asarray(lm.design_matrix(theta, 5.0), np.float64)
    cov = np.linalg.inv(m.T @ m) * 2.0**2
    # d flux / d linear parameters, as the fit takes it (the Jacobian of the line fluxes)
    k = m.shape[1]
    dflux = jax.jacfwd(lambda a: lm.line_fluxes_cm1(theta, a, 5.0))(jnp.ones(k, jnp.float32))
    got = float(null_flux_errors(dflux, jnp.asarray(cov, jnp.float32))[0])
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 2.0, (4000, axis.size))
    amp = np.linalg.lstsq(m, noise.T, rcond=None)[0][0]
    brute = float(np.std(amp) * lm.unit_fluxes(theta, 5.0)[0])
    np.testing.assert_allclose(got, brute, rtol=0.05)


# ------------------------------------------------------------------ command line
def test_physics_command(field):
    _, _, _, _, d = field
    out = d / "phys"
    r = subprocess.run([sys.executable, "-m", "lucijax.cli", "physics", str(d / "sn3" / "maps.fits"), "--sn2",
                        str(d / "sn2" / "maps.fits"), "--out", str(out), "--draws", "64"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    maps = read_maps_fits(out / "physics.fits")
    units = read_map_units(out / "physics.fits")
    assert units["DENSITY"] == "cm-3" and units["EBV"] == "mag" and units["HALPHA_FLUX_DERED"] == "erg/cm2/s"
    assert read_map_wcs(out / "physics.fits", "EBV") is not None
    assert (out / "physics.png").stat().st_size > 20000
    assert {"BPT_CLASS", "BPT_P_SF", "DENSITY", "OH_N2", "OH_O3N2", "EBV", "NII_HA_UPPER"} <= set(maps)
    bad = subprocess.run([sys.executable, "-m", "lucijax.cli", "physics", str(d / "nope.fits"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr
    bad1 = subprocess.run([sys.executable, "-m", "lucijax.cli", "physics", str(d / "sn3" / "maps.fits"), "--sn1",
                           str(d / "sn1.fits"), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad1.returncode == 2 and bad1.stderr.count("\n") == 1 and "sn1.fits: no such file" in bad1.stderr
    only_sn2 = subprocess.run([sys.executable, "-m", "lucijax.cli", "physics", str(d / "sn2" / "maps.fits"),
                               "--out", str(out / "x")], capture_output=True, text=True, timeout=300)
    assert only_sn2.returncode == 0, only_sn2.stderr  # [OIII]/Hbeta alone is a ratio
