"""Static description of the network of each filter: its input grid, the lines and the
parameter ranges of its training set, the architecture. Saved as JSON next to the weights.

The input grid is a fixed, evenly spaced set of rest-frame (de-redshifted) wavenumbers
covering the filter's lines over the velocity range, with a margin for the line wings at
the lowest resolution. Resolution is ``R = sigma / fwhm`` at the first (reference) line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

#: Version of the preprocessing + architecture + training recipe; bump on any change that
#: makes old weights incompatible.
MDN_VERSION = "2"


@dataclass(frozen=True)
class FilterRecipe:
    """How the training spectra of one filter are drawn and what the network sees.

    Attributes
    ----------
    filter_name : str
    lines : tuple of str
        Catalogue names; the first is the reference line of the resolution.
    grid_min_cm1, grid_max_cm1 : float
        Rest-frame range of the network's input grid (cm^-1).
    n_grid : int
        Points of the input grid (a multiple of ``space_to_depth``).
    band_min_cm1, band_max_cm1 : float
        Rest-frame range of the simulated spectra (the filter band at redshift 0): the
        continuum and noise of the spectrum are estimated over all its channels.
    resolution_range : (float, float)
        Log-uniform range of R at the reference line.
    velocity_range_kms, broadening_range_kms, snr_range : (float, float)
        Uniform, uniform and log-uniform ranges. SNR = brightest line peak / noise.
    ratios : dict
        ``line -> (primary_line, lo, hi, log)``: peak amplitude of ``line`` = ratio *
        peak amplitude of ``primary_line``, ratio uniform (log-uniform if ``log``) in
        [lo, hi]; a primary of ``None`` means relative to the reference line. Tied lines
        are given as a fixed ratio (lo == hi).
    """

    filter_name: str
    lines: tuple
    grid_min_cm1: float
    grid_max_cm1: float
    n_grid: int
    band_min_cm1: float
    band_max_cm1: float
    resolution_range: tuple = (1000.0, 10000.0)
    velocity_range_kms: tuple = (-500.0, 500.0)
    broadening_range_kms: tuple = (0.0, 200.0)
    snr_range: tuple = (2.0, 100.0)
    zpd_fraction_range: tuple = (0.1, 0.3)
    fwhm_spread: float = 0.02
    continuum_range: tuple = (0.0, 10.0)
    continuum_slope: float = 1.0
    ratios: dict = field(default_factory=dict)

    @property
    def grid_step_cm1(self) -> float:
        return (self.grid_max_cm1 - self.grid_min_cm1) / (self.n_grid - 1)


@dataclass(frozen=True)
class NetConfig:
    """Architecture (see :mod:`lucijax.mdn.network`): convolutions on the grid folded into
    ``space_to_depth`` channels give ``n_evidence`` maps; a comb over ``n_velocities``
    velocities in +-``comb_velocity_kms`` reads them at the lines' positions (softmax:
    discrete velocity posterior); ``n_offsets`` points of each line profile around the
    soft-argmax velocity (spaced ``offset_step`` grid points) feed the dense layers."""

    space_to_depth: int = 4
    conv_features: tuple = (8, 8)
    kernel_size: int = 5
    n_evidence: int = 3
    comb_velocity_kms: float = 650.0
    n_velocities: int = 66
    n_offsets: int = 11
    offset_step: float = 1.0
    dense_features: tuple = (64, 64)
    mdn: bool = True

    @property
    def n_out(self) -> int:
        return 4 if self.mdn else 2


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    n_train: int = 100_000
    n_val: int = 8_000
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    #: beta of the beta-NLL (Seitzer et al. 2022, ICLR): each spectrum's Gaussian NLL is
    #: weighted by stop_gradient(sigma^(2 beta)). 0 is the plain NLL, whose gradient for
    #: the mean scales as 1/sigma^2, so the spectra with broad posteriors barely train the
    #: mean; the weight depends on the spectrum only, so the optimum is still the
    #: conditional mean and variance (the sigmas stay calibrated).
    nll_beta: float = 0.0


#: Velocity and broadening (km/s) of the network outputs are ``center + scale * output``.
TARGET_CENTER = (0.0, 100.0)
TARGET_SCALE = (500.0, 100.0)

RECIPES: dict[str, FilterRecipe] = {
    "SN3": FilterRecipe(
        filter_name="SN3",
        lines=("Halpha", "NII6583", "NII6548", "SII6716", "SII6731"),
        grid_min_cm1=14800.0,
        grid_max_cm1=15330.0,
        n_grid=512,
        band_min_cm1=1e7 / 685.0,
        band_max_cm1=1e7 / 647.7,
        resolution_range=(1000.0, 10000.0),
        ratios={
            "NII6583": (None, 0.05, 1.5, True),
            "NII6548": ("NII6583", 1 / 3.0, 1 / 3.0, False),
            "SII6716": (None, 0.05, 0.5, True),
            "SII6731": ("SII6716", 0.5, 1.4, False),
        },
    ),
    "SN2": FilterRecipe(
        filter_name="SN2",
        lines=("Hbeta", "OIII5007", "OIII4959"),
        grid_min_cm1=19880.0,
        grid_max_cm1=20665.0,
        n_grid=256,
        band_min_cm1=1e7 / 513.2,
        band_max_cm1=1e7 / 479.8,
        resolution_range=(500.0, 2000.0),
        ratios={
            "OIII5007": (None, 0.1, 10.0, True),
            "OIII4959": ("OIII5007", 1 / 3.0, 1 / 3.0, False),
        },
    ),
    "SN1": FilterRecipe(
        filter_name="SN1",
        lines=("OII3726", "OII3729"),
        grid_min_cm1=26680.0,
        grid_max_cm1=26976.0,
        n_grid=128,
        band_min_cm1=1e7 / 385.6,
        band_max_cm1=1e7 / 362.6,
        resolution_range=(500.0, 2000.0),
        ratios={"OII3729": (None, 0.35, 1.5, False)},
    ),
}

#: Redshift at which the rest-frame band of the C3 and C4 networks is the filter's band
#: de-redshifted (see :data:`C_RECIPES`).
C3_REDSHIFT = 0.08
C4_REDSHIFT = 0.235

#: The networks of the C filters (issue 21 item 7). The grid of each covers its lines over
#: +-500 km/s with a margin of about 1.5 sinc FWHM at the lowest resolution; the resolution
#: range is the filter's (R = 2 N step sigma / (1.20671e7) for N = 150..700 steps).
#:
#: * **C1** (385-485 nm, step 570 nm, order 2: R ~ 300-1500): the blue lines at redshift 0,
#:   Hgamma (reference: in every HII region and PN), Hdelta (Case B ratio 0.55, 0.4-0.65
#:   with reddening), [NeIII]3869 (0.05-5, log: high-excitation PNe have it above Hgamma)
#:   and the auroral [OIII]4363 (0.01-0.5, log). Hbeta (486.1 nm) is outside the band.
#:   At this resolution the broadening (< 200 km/s, against a sinc FWHM of 200-1000 km/s)
#:   is poorly constrained.
#: * **C2** (559-626 nm, R ~ 700-3000): HeI5876 (reference) and the auroral [NII]5755
#:   (0.05-5, log) at redshift 0; [OI]6300 and [SIII]6312 lie outside the band (625.5 nm).
#: * **C3** (511-555 nm) is used mostly for redshifted Hbeta + [OIII]4959,5007: the
#:   network is SN2's line set (same ratios) on the C3 band de-redshifted at z = 0.08; its
#:   grid lies inside the band for 0.056 <= z <= 0.104. The rest-frame lines of C3
#:   ([NI]5200, [FeII]...) are faint and not a network's job: those fits start from the
#:   matched filter.
#: * **C4** (798-823 nm, R ~ 1600-7500) is used for redshifted Halpha + [NII] (z ~ 0.22-
#:   0.25): Halpha (reference), [NII]6583 (0.05-1.5, log) and [NII]6548 (6583/3) on the
#:   C4 band de-redshifted at z = 0.235; the grid lies inside the band for 0.223 <= z <=
#:   0.247. [SII]6716,6731 are not in the network: with Halpha and [NII] they fit the band
#:   only at z ~ 0.22 (a fitted [SII] shares the start of its kinematic group).
#:
#: Redshift: the network sees the spectrum de-redshifted by the user's redshift
#: (:func:`lucijax.mdn.load_predictor`: ``axis * (1 + z)``, FWHM times ``1 + z``, the
#: resolution R is unchanged), so one rest-frame network serves every redshift at which
#: its grid lies inside the band; the velocity it gives is the residual velocity.
C_RECIPES: dict[str, FilterRecipe] = {
    "C1": FilterRecipe(
        filter_name="C1",
        lines=("Hgamma", "Hdelta", "NeIII3869", "OIII4363"),
        grid_min_cm1=22740.0,
        grid_max_cm1=25940.0,
        n_grid=512,
        band_min_cm1=1e7 / 485.2,
        band_max_cm1=1e7 / 385.4,
        resolution_range=(250.0, 1500.0),
        ratios={
            "Hdelta": (None, 0.4, 0.65, False),
            "NeIII3869": (None, 0.05, 5.0, True),
            "OIII4363": (None, 0.01, 0.5, True),
        },
    ),
    "C2": FilterRecipe(
        filter_name="C2",
        lines=("HeI5876", "NII5755"),
        grid_min_cm1=16940.0,
        grid_max_cm1=17460.0,
        n_grid=256,
        band_min_cm1=1e7 / 625.5,
        band_max_cm1=1e7 / 559.3,
        resolution_range=(500.0, 3000.0),
        ratios={"NII5755": (None, 0.05, 5.0, True)},
    ),
    "C3": FilterRecipe(
        filter_name="C3",
        lines=("Hbeta", "OIII5007", "OIII4959"),
        grid_min_cm1=19880.0,
        grid_max_cm1=20665.0,
        n_grid=256,
        band_min_cm1=1e7 * (1 + C3_REDSHIFT) / 555.4,
        band_max_cm1=1e7 * (1 + C3_REDSHIFT) / 511.0,
        resolution_range=(500.0, 3000.0),
        ratios={
            "OIII5007": (None, 0.1, 10.0, True),
            "OIII4959": ("OIII5007", 1 / 3.0, 1 / 3.0, False),
        },
    ),
    "C4": FilterRecipe(
        filter_name="C4",
        lines=("Halpha", "NII6583", "NII6548"),
        grid_min_cm1=15140.0,
        grid_max_cm1=15320.0,
        n_grid=128,
        band_min_cm1=1e7 * (1 + C4_REDSHIFT) / 823.4,
        band_max_cm1=1e7 * (1 + C4_REDSHIFT) / 798.5,
        resolution_range=(1000.0, 7000.0),
        ratios={
            "NII6583": (None, 0.05, 1.5, True),
            "NII6548": ("NII6583", 1 / 3.0, 1 / 3.0, False),
        },
    ),
}
RECIPES.update(C_RECIPES)


def recipe_to_dict(recipe: FilterRecipe) -> dict:
    return dataclasses.asdict(recipe)


def recipe_from_dict(d: dict) -> FilterRecipe:
    d = dict(d)
    for k in ("lines", "resolution_range", "velocity_range_kms", "broadening_range_kms", "snr_range",
              "zpd_fraction_range", "continuum_range"):
        d[k] = tuple(d[k])
    d["ratios"] = {k: tuple(v) for k, v in d["ratios"].items()}
    return FilterRecipe(**d)


def net_from_dict(d: dict) -> NetConfig:
    d = dict(d)
    d["conv_features"] = tuple(d["conv_features"])
    d["dense_features"] = tuple(d["dense_features"])
    return NetConfig(**d)


def save_config(path, recipe: FilterRecipe, net: NetConfig, train: TrainConfig, extra: dict | None = None) -> None:
    doc = {
        "version": MDN_VERSION,
        "filter": recipe.filter_name,
        "kind": "mdn" if net.mdn else "cnn",
        "recipe": recipe_to_dict(recipe),
        "net": dataclasses.asdict(net),
        "train": dataclasses.asdict(train),
        "target_center": list(TARGET_CENTER),
        "target_scale": list(TARGET_SCALE),
    }
    if extra:
        doc.update(extra)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def load_config(path) -> dict:
    with open(path) as f:
        doc = json.load(f)
    doc["recipe"] = recipe_from_dict(doc["recipe"])
    doc["net"] = net_from_dict(doc["net"])
    return doc
