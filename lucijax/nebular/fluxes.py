"""Line fluxes of every pixel with their full covariance, read from fitted maps.

A fit writes, per line, ``{LINE}_FLUX``, ``{LINE}_FLUX_ERR`` and ``{LINE}_FLUX_LIMIT`` (the
3-sigma limit of an absent line), and per pair of lines ``CORR_{A}_{B}``: the correlation of
their fluxes (shared kinematics, the [NII] and [OIII] ties). :class:`LineFluxes` rebuilds
the covariance matrix of every pixel from them; every derived quantity
(:mod:`lucijax.nebular.combos`) propagates it.

Maps are FITS-ordered ``[y, x]``; lines are named as in the maps (``HALPHA``, ``NII6583``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lucijax.constants import QUANTILES
from lucijax.physics.lines import LINE_RATIOS
from lucijax.status import GOOD, Status

__all__ = ["LineFluxes", "line_fluxes"]


@dataclass
class LineFluxes:
    """Fluxes ``[L, ny, nx]``, covariance ``[L, L, ny, nx]`` and 3-sigma limits
    ``[L, ny, nx]`` of L lines on one pixel grid, and which pixels each line's fit
    trusts (``usable``: a good STATUS; NO_LINE pixels keep their limits)."""

    names: list[str]
    flux: np.ndarray
    cov: np.ndarray
    limit: np.ndarray
    usable: np.ndarray  # [L, ny, nx] bool: the fit behind the line is usable
    unit: str
    wcs: object = None
    sources: list[str] = field(default_factory=list)
    #: ratio name -> its posterior quantiles ``[3, ny, nx]`` (16, 50, 84 %) from the draws of a
    #: sampled fit (``{RATIO}_Q16/_Q50/_Q84`` maps); empty for a MAP fit
    quantiles: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.flux.shape[1:])

    def __contains__(self, name: str) -> bool:
        return name.upper() in self.names

    def index(self, name: str) -> int:
        try:
            return self.names.index(name.upper())
        except ValueError:
            raise KeyError(f"no {name.upper()} fluxes (lines: {', '.join(self.names)})") from None

    def error(self, name: str) -> np.ndarray:
        i = self.index(name)
        return np.sqrt(np.maximum(self.cov[i, i], 0.0))

    def snr(self, name: str) -> np.ndarray:
        i = self.index(name)
        return self.flux[i] / self.error(name)

    def joined(self, other: "LineFluxes") -> "LineFluxes":
        """Both sets of lines on this grid (fluxes of different fits are uncorrelated)."""
        if other.shape != self.shape:
            raise ValueError(f"the maps to join are {other.shape[::-1]} and {self.shape[::-1]} pixels (x, y): "
                             "resample them onto one grid first")
        if other.unit != self.unit:
            raise ValueError(f"the flux maps to join are in '{self.unit}' and '{other.unit}'")
        clash = sorted(set(self.names) & set(other.names))
        if clash:
            raise ValueError(f"lines {', '.join(clash)} are in both sets of maps")
        L, M = len(self.names), len(other.names)
        cov = np.zeros((L + M, L + M) + self.shape)
        cov[:L, :L] = self.cov
        cov[L:, L:] = other.cov
        return LineFluxes(self.names + other.names, np.concatenate([self.flux, other.flux]), cov,
                          np.concatenate([self.limit, other.limit]), np.concatenate([self.usable, other.usable]),
                          self.unit, self.wcs, self.sources + other.sources, {**self.quantiles, **other.quantiles})


def _line_names(maps: dict) -> list[str]:
    return [k[: -len("_FLUX_ERR")] for k in maps if k.endswith("_FLUX_ERR") and f"{k[:-4]}" in maps]


def line_fluxes(maps: dict, units: dict | None = None, wcs=None, source: str = "") -> LineFluxes:
    """:class:`LineFluxes` of a fit's maps (a dict of ``[y, x]`` arrays as written in
    ``maps.fits``). Lines without correlation maps (older files) get correlation 0."""
    names = _line_names(maps)
    if not names:
        raise ValueError(f"{source or 'the maps'}: no line flux maps ({{LINE}}_FLUX and {{LINE}}_FLUX_ERR)")
    units = units or {}
    flux = np.stack([np.asarray(maps[f"{n}_FLUX"], np.float64) for n in names])
    err = np.stack([np.asarray(maps[f"{n}_FLUX_ERR"], np.float64) for n in names])
    L = len(names)
    corr = np.zeros((L, L) + flux.shape[1:])
    for i in range(L):
        corr[i, i] = 1.0
        for j in range(i + 1, L):
            key = next((k for k in (f"CORR_{names[i]}_{names[j]}", f"CORR_{names[j]}_{names[i]}") if k in maps), None)
            if key is not None:
                corr[i, j] = corr[j, i] = np.nan_to_num(np.asarray(maps[key], np.float64))
    cov = corr * err[:, None] * err[None, :]
    limit = np.stack([np.asarray(maps.get(f"{n}_FLUX_LIMIT", np.full(flux.shape[1:], np.nan)), np.float64)
                      for n in names])
    status = np.asarray(maps.get("STATUS", np.zeros(flux.shape[1:], np.int16)))
    good = np.isin(status, [int(s) for s in GOOD]) | (status == int(Status.NO_LINE))
    usable = np.broadcast_to(good, flux.shape) & np.isfinite(flux) & np.isfinite(err)
    unit = str(units.get(f"{names[0]}_FLUX", ""))
    quantiles = {r: np.stack([np.asarray(maps[f"{r}_Q{p}"], np.float64) for p in QUANTILES]) for r in LINE_RATIOS
                 if all(f"{r}_Q{p}" in maps for p in QUANTILES)}
    return LineFluxes(names, flux, cov, limit, np.array(usable), unit, wcs, [source] if source else [], quantiles)


def read_line_fluxes(path) -> LineFluxes:
    """:class:`LineFluxes` of a ``maps.fits`` written by ``lucijax fit``."""
    from lucijax.io.maps import read_map_units, read_map_wcs, read_maps_fits

    path = Path(path)
    return line_fluxes(read_maps_fits(path), read_map_units(path), read_map_wcs(path), str(path))
