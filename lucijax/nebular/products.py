"""Physical maps of a fitted field: line ratios, BPT classes, density, metallicity, the
Balmer-decrement extinction and dereddened fluxes, detection limits — with errors from the
full per-pixel flux covariance (:mod:`lucijax.nebular.combos`).

:func:`physics_maps` takes the SN3 fit (Halpha, [NII], [SII]) and optionally the SN2 fit
(Hbeta, [OIII]) and the SN1 fit ([OII]) of the same field; their fluxes are resampled onto
SN3's pixels when the pointings differ (flux-conserving, :mod:`lucijax.io.resample`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lucijax.constants import QUANTILES
from lucijax.io.resample import grid_offset, pixel_area, resample_fluxes, resample_values
import lucijax.nebular.atomic as atomic
from lucijax.nebular.combos import Combination, covariance_between, ratio
from lucijax.nebular.diagnostics import (METALLICITY_CALIBRATIONS, bpt_class, bpt_probabilities,
                                         metallicity)
from lucijax.nebular.fluxes import LineFluxes, line_fluxes, read_line_fluxes
from lucijax.physics.lines import LINE_CATALOGUE_NM, LINE_RATIOS

log = logging.getLogger(__name__)

__all__ = ["physics_maps", "PhysicsResult", "RATIOS"]

#: ratio map name -> (numerator lines, denominator lines), fluxes summed within each
RATIOS = LINE_RATIOS
BPT_NAMES = {1: "SF", 2: "COMPOSITE", 3: "LINER", 4: "SEYFERT"}
AIR_ANGSTROM = {k.upper(): 10.0 * v for k, v in LINE_CATALOGUE_NM.items()}


@dataclass
class PhysicsResult:
    """Maps ``[y, x]`` with units, the WCS of the grid they are on, header cards, and the
    line fluxes (with covariance) they were made from."""

    maps: dict
    units: dict
    wcs: object
    cards: dict
    fluxes: LineFluxes = field(repr=False)

    def write(self, out_dir, plot: bool = True) -> Path:
        """``out_dir/physics.fits`` (one extension per map) and ``out_dir/physics.png``."""
        from lucijax.io.maps import write_maps_fits

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_maps_fits(out_dir / "physics.fits", self.maps, self.units, wcs2d=self.wcs, header_extra=self.cards)
        if plot:
            self.figure(out_dir / "physics.png")
        return out_dir / "physics.fits"

    def figure(self, path=None):
        """The main maps and the BPT diagram in one figure."""
        from lucijax.nebular.figure import plot_physics

        return plot_physics(self.maps, self.units, path=path)


def _fluxes_of(maps_or_path) -> LineFluxes:
    if isinstance(maps_or_path, LineFluxes):
        return maps_or_path
    if isinstance(maps_or_path, (str, Path)):
        return read_line_fluxes(maps_or_path)
    if hasattr(maps_or_path, "maps") and hasattr(maps_or_path, "units"):  # a FitResult / PosteriorResult
        return line_fluxes(maps_or_path.maps, maps_or_path.units, getattr(maps_or_path, "wcs", None),
                           str(getattr(maps_or_path, "source", "")))
    raise TypeError(f"expected a maps.fits path, a fit result or LineFluxes, got {type(maps_or_path).__name__}")


def onto_grid(other: LineFluxes, target: LineFluxes, draws: int = 128, seed: int = 0) -> LineFluxes:
    """``other``'s fluxes on ``target``'s pixel grid (unchanged when it is the same grid)."""
    if other.wcs is None or target.wcs is None:
        if other.shape != target.shape:
            raise ValueError("the two sets of maps have different shapes and no WCS to resample one onto the other")
        return other
    if other.shape == target.shape and grid_offset(other.wcs, target.wcs, other.shape) == (0, 0):
        return other
    flux, cov = resample_fluxes(other.flux, other.cov, other.wcs, target.wcs, target.shape, draws=draws, seed=seed)
    area = pixel_area(target.wcs) / pixel_area(other.wcs)
    lim = resample_values({n: other.limit[i] for i, n in enumerate(other.names)}, other.wcs, target.wcs, target.shape)
    usable = np.isfinite(flux) & np.all(np.isfinite(np.diagonal(cov, axis1=0, axis2=1)), axis=-1)[None]
    usable &= resample_values({"u": other.usable.all(axis=0).astype(float)}, other.wcs, target.wcs, target.shape)["u"][None] > 0.999
    return LineFluxes(other.names, flux, cov, np.stack([lim[n] * area for n in other.names]), usable, other.unit,
                      target.wcs, other.sources)


def physics_maps(sn3, sn2=None, sn1=None, *, temperature: float = 1e4, case_b_density: float = 100.0,
                 law: str = "CCM89", r_v: float = 3.1, min_snr: float = 3.0, resample_draws: int = 128,
                 bpt_draws: int = 512, seed: int = 0) -> PhysicsResult:
    """Physical maps of a field from its fitted line maps.

    Parameters
    ----------
    sn3 : path to a maps.fits, a FitResult, or LineFluxes
        The fit that sets the pixel grid (normally SN3: Halpha, [NII], [SII]).
    sn2 : same, optional
        Another filter's fit of the field (SN2: Hbeta, [OIII]); resampled onto ``sn3``'s
        grid when its WCS differs.
    sn1 : same, optional
        A third filter's fit (SN1: [OII]3726+3729), resampled the same way: ``OIII_OII``
        (O32) with ``sn2``, and dereddened [OII] with the Balmer decrement.
    temperature : float
        Electron temperature (K) of the [SII] density and the Case B decrement.
    case_b_density : float
        Density (cm^-3) of the intrinsic Case B Halpha/Hbeta.
    law, r_v : str, float
        PyNeb extinction law (:data:`lucijax.nebular.atomic.EXTINCTION_LAWS`) and R_V.
    min_snr : float
        A ratio is measured where each of its terms has flux/error >= ``min_snr``; where
        the numerator is below and the denominator above, ``{RATIO}_UPPER`` holds the upper
        limit (the numerator's 3-sigma flux limit over the denominator).
    resample_draws, bpt_draws, seed : int
        Monte-Carlo draws for resampled errors and for the BPT class probabilities.
    """
    if temperature <= 0 or case_b_density <= 0:
        raise ValueError("the temperature and the Case B density must be > 0")
    if min_snr <= 0:
        raise ValueError(f"min_snr must be > 0, got {min_snr}")
    if resample_draws < 2 or bpt_draws < 1:
        raise ValueError(f"draws must be >= 2, got {min(resample_draws, bpt_draws)}")
    lf = _fluxes_of(sn3)
    for k, other in enumerate((sn2, sn1)):
        if other is not None:
            lf = lf.joined(onto_grid(_fluxes_of(other), lf, draws=resample_draws, seed=seed + k))
    maps: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}

    def put(name, arr, unit=""):
        maps[name] = np.asarray(arr, np.float32) if np.asarray(arr).dtype.kind == "f" else np.asarray(arr)
        units[name] = unit

    # -- ratios
    combos: dict[str, Combination] = {}
    for name, (num, den) in RATIOS.items():
        if not all(n in lf for n in num + den):
            continue
        c = ratio(lf, {n: 1.0 for n in num}, {n: 1.0 for n in den})
        detected = c.defined & np.all(c.terms_snr >= min_snr, axis=0)
        combos[name] = Combination(np.where(detected, c.value, np.nan), np.where(detected, c.sigma, np.nan), c.grad,
                                   detected, c.terms_snr)
        r = 10.0 ** combos[name].value
        put(name, r)
        put(f"{name}_ERR", r * np.log(10.0) * combos[name].sigma)
        put(f"LOG_{name}", combos[name].value, "dex")
        put(f"LOG_{name}_ERR", combos[name].sigma, "dex")
        put(f"{name}_DETECTED", detected.astype(np.int16))
        if name in lf.quantiles:  # a sampled fit: the ratio's quantiles from its draws, at any S/N
            for p, qmap in zip(QUANTILES, lf.quantiles[name]):
                put(f"{name}_Q{p}", qmap)
        # upper limits: numerator not detected, denominator detected
        num_limit = np.sqrt(sum(lf.limit[lf.index(n)] ** 2 for n in num))
        den_flux = sum(lf.flux[lf.index(n)] for n in den)
        with np.errstate(divide="ignore", invalid="ignore"):
            upper = (c.terms_snr[0] < min_snr) & (c.terms_snr[1] >= min_snr) & np.all([lf.usable[lf.index(n)] for n in num + den], axis=0)
            put(f"{name}_UPPER", np.where(upper, num_limit / den_flux, np.nan))
    cards = {"ORIGIN": "lucijax physics", "MINSNR": float(min_snr), "SOURCES": " ".join(Path(s).name for s in lf.sources)[:68]}

    # -- strong-line indices and metallicity
    if "NII_HA" in combos:
        put("N2", combos["NII_HA"].value, "dex")
        put("N2_ERR", combos["NII_HA"].sigma, "dex")
    if "NII_HA" in combos and "OIII_HB" in combos:
        o3n2 = combos["OIII_HB"].value - combos["NII_HA"].value
        var = (combos["OIII_HB"].sigma ** 2 + combos["NII_HA"].sigma ** 2
               - 2 * covariance_between(lf, combos["OIII_HB"], combos["NII_HA"]))
        put("O3N2", o3n2, "dex")
        put("O3N2_ERR", np.sqrt(np.maximum(var, 0.0)), "dex")

    # -- BPT
    if "NII_HA" in combos and "OIII_HB" in combos:
        x, y = combos["NII_HA"], combos["OIII_HB"]
        cxy = covariance_between(lf, x, y)
        cls = bpt_class(x.value, y.value)
        prob = bpt_probabilities(x.value, y.value, x.sigma, y.sigma, cxy, draws=bpt_draws, seed=seed)
        put("BPT_CLASS", cls)
        for k, short in BPT_NAMES.items():
            put(f"BPT_P_{short}", prob[k - 1])
        cards["BPT"] = "1 SF (Kauffmann03) 2 comp (Kewley01) 3 LINER 4 Seyfert (Schawinski07)"

    for cal, (index, *_) in METALLICITY_CALIBRATIONS.items():
        if index in maps:
            oh, oh_err = metallicity(maps[index], maps[f"{index}_ERR"], cal)
            if "BPT_CLASS" in maps:  # the calibrations hold for HII regions only
                oh = np.where(maps["BPT_CLASS"] == 1, oh, np.nan)
                oh_err = np.where(maps["BPT_CLASS"] == 1, oh_err, np.nan)
            put(f"OH_{cal}", oh, "dex")
            put(f"OH_{cal}_ERR", oh_err, "dex")
            cards[f"OH_{cal}"[:8]] = METALLICITY_CALIBRATIONS[cal][5][:68]

    # -- density
    if "SII_RATIO" in combos:
        dens, err, lo, hi, limit = atomic.density_from_sii(maps["SII_RATIO"], maps["SII_RATIO_ERR"], temperature)
        put("DENSITY", dens, "cm-3")
        put("DENSITY_ERR", err, "cm-3")
        put("DENSITY_LO", lo, "cm-3")
        put("DENSITY_HI", hi, "cm-3")
        put("DENSITY_LIMIT", limit)
        cards["SIIDATA"] = atomic.sii_atomic_data()[:68]
    cards["TEMPE"] = float(temperature)
    cards["PYNEB"] = atomic.pyneb_version()

    # -- Balmer decrement: E(B-V) and dereddened fluxes
    if "HA_HB" in combos:
        r0 = atomic.case_b_balmer_decrement(float(temperature), float(case_b_density))
        k_ha, k_hb = atomic.attenuation_k([AIR_ANGSTROM["HALPHA"], AIR_ANGSTROM["HBETA"]], law, r_v)
        dk = k_hb - k_ha
        hahb = combos["HA_HB"]
        put("EBV", 2.5 / dk * (hahb.value - np.log10(r0)), "mag")
        put("EBV_ERR", 2.5 / dk * hahb.sigma, "mag")
        for name in lf.names:
            if name not in AIR_ANGSTROM:
                continue
            # F_corr = F X, X = 10^(k/dk (log10(Ha/Hb) - log10 R0)); the gradient keeps the
            # correlation of F with the decrement (Halpha is in both)
            e = float(atomic.attenuation_k(AIR_ANGSTROM[name], law, r_v)[0]) / dk
            i = lf.index(name)
            x = 10.0 ** (e * (hahb.value - np.log10(r0)))
            ok = hahb.defined & lf.usable[i]
            grad = (e * np.log(10.0) * lf.flux[i])[None] * hahb.grad
            grad[i] += 1.0
            grad *= x[None]
            err = np.sqrt(np.maximum(np.einsum("iyx,ijyx,jyx->yx", grad, lf.cov, grad), 0.0))
            put(f"{name}_FLUX_DERED", np.where(ok, lf.flux[i] * x, np.nan), lf.unit)
            put(f"{name}_FLUX_DERED_ERR", np.where(ok, err, np.nan), lf.unit)
        cards.update({"CASEB": round(r0, 4), "NE_CASEB": float(case_b_density), "EXTLAW": law, "R_V": float(r_v)})

    # -- detection limits (3 sigma, at each pixel's noise, line shape and broadening)
    for i, name in enumerate(lf.names):
        if np.any(np.isfinite(lf.limit[i])):
            put(f"{name}_FLUX_LIMIT", lf.limit[i], lf.unit)
    if not combos:
        raise ValueError(f"no line ratio can be made from the lines {', '.join(lf.names)} "
                         f"(e.g. Halpha with NII6583 or SII6716 and SII6731; Hbeta with OIII5007)")
    return PhysicsResult(maps, units, lf.wcs, cards, lf)
