"""One table row per region: the fits of the integrated spectra of the regions of a ds9 file
(:func:`lucijax.fit_regions`, ``lucijax fit --regions``).

The fit itself is an ordinary one, of the ``(n_regions, 1)`` cube of
:func:`lucijax.io.views.regions_spectra`; here its maps become the columns of an astropy
:class:`~astropy.table.Table`, after the region's index, label, shape, centre and number
of pixels. A region that covers no pixel of the cube keeps its row, NaN, with STATUS 1
(invalid input).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lucijax.status import Status, counts_line, describe

#: Message of the rows of regions that cover no pixel of the cube.
EMPTY_REGION = "invalid input: the region covers no pixel of the cube"

#: The columns that describe a region, before those of its fit.
REGION_COLUMNS = ("INDEX", "LABEL", "SHAPE", "X", "Y", "RA", "DEC", "N_PIXELS")


def table_unit(text: str):
    """The astropy unit of a map's ``BUNIT`` (``'A'`` is Angstrom, ``'counts'`` counts),
    None for dimensionless."""
    import astropy.units as u

    if not text:
        return None
    fixed = re.sub(r"\bA\b", "Angstrom", re.sub(r"\bcounts\b", "count", text))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)  # 'erg/cm2/s': several slashes
        return u.Unit(fixed, parse_strict="silent")


@dataclass
class RegionTable:
    """The fits of the integrated spectra of several regions.

    Attributes
    ----------
    table : astropy.table.Table
        One row per region: ``INDEX`` (0-based, the file's order of regions with an area),
        ``LABEL`` (ds9 ``text={...}``), ``SHAPE``, ``X``, ``Y`` (centre, 0-based cube
        pixels), ``RA``, ``DEC`` (deg, in the cube's WCS frame; NaN without one),
        ``N_PIXELS``, then every map of the fit (``{LINE}_FLUX``, ``..._ERR``,
        ``{LINE}_VELOCITY``, ..., ``CHI2``, ``SNR``, ``NOISE``, ``FWHM``), ``STATUS`` and
        ``STATUS_MESSAGE``; columns carry their units.
    fit : Result
        The fit of the ``(n_regions, 1)`` cube of integrated spectra: region ``k`` is its
        map pixel ``(x=k, y=0)``.
    spectra : numpy.ndarray
        The integrated spectra, ``(n_regions, n_channels)``, in the cube's flux unit.
    """

    table: Any
    fit: Any = field(repr=False)
    spectra: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.table)

    def status_line(self) -> str:
        """One line: how many regions have each STATUS."""
        return counts_line(np.asarray(self.table["STATUS"]))

    def model_spectrum(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(observed axis cm^-1, integrated spectrum, fitted model) of region ``k`` on the
        fit window."""
        axis, model = self.fit.model_spectrum(k, 0)
        return axis, self.spectra[k, self.fit.bound.window], model

    def write(self, out_dir, name: str = "regions") -> list[Path]:
        """Write ``out_dir/{name}.ecsv`` and ``out_dir/{name}.fits`` (a binary table)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{name}.ecsv", out_dir / f"{name}.fits"]
        self.table.write(paths[0], format="ascii.ecsv", overwrite=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's notes on long meta keys (HIERARCH)
            self.table.write(paths[1], format="fits", overwrite=True)
        return paths


def region_table(result, cube, meta: dict | None = None) -> RegionTable:
    """The :class:`RegionTable` of a fit of a :class:`~lucijax.io.views.RegionsCube`.

    Parameters
    ----------
    result : Result
        The fit (or posterior) of ``cube``.
    cube : RegionsCube
        The integrated spectra it fitted, with their regions.
    meta : dict, optional
        More table metadata (the regions file, the background, ...).
    """
    from astropy.table import Table

    regions = cube.regions
    n = len(regions)
    if result.maps["STATUS"].shape != (1, n):
        raise ValueError(f"the fit covers {result.maps['STATUS'].shape[::-1]} spectra, not the {n} regions of the cube")
    table = Table(meta={"INPUT": str(getattr(cube, "path", "")), "COMBINE": cube.combine,
                        "MODEL": result.bound.spec.shape, "LINES": " ".join(result.bound.line_set.names),
                        "REDSHIFT": result.bound.redshift, "PIXELS": "0-based cube pixels (x, y)"})
    table["INDEX"] = np.array([r.index for r in regions], np.int32)
    table["LABEL"] = [r.label for r in regions]
    table["SHAPE"] = [r.shape for r in regions]
    x = np.array([r.x for r in regions])
    y = np.array([r.y for r in regions])
    table["X"], table["Y"] = x, y
    table["X"].unit = table["Y"].unit = "pix"
    ra = dec = np.full(n, np.nan)
    wcs = getattr(cube, "source_wcs", None)
    if wcs is not None:
        ra, dec = (np.asarray(v, np.float64) for v in wcs.celestial.all_pix2world(x, y, 0))
        table.meta["RADESYS"] = str(wcs.wcs.radesys or "ICRS")
    table["RA"], table["DEC"] = ra, dec
    table["RA"].unit = table["DEC"].unit = "deg"
    table["N_PIXELS"] = np.asarray(cube.n_pixels, np.int64)
    status = np.asarray(result.maps["STATUS"][0]).astype(np.int16)
    empty = np.asarray(cube.n_pixels) == 0
    status[empty] = int(Status.INVALID_INPUT)
    for name, values in result.maps.items():
        if name == "STATUS":
            continue
        table[name] = np.asarray(values[0])
        unit = table_unit(result.units.get(name, ""))
        if unit is not None:
            table[name].unit = unit
    table["STATUS"] = status
    table["STATUS_MESSAGE"] = [EMPTY_REGION if e else describe(s) for s, e in zip(status, empty)]
    table.meta.update(meta or {})
    spectra = np.asarray(cube.read_spectra(0, n, 0, 1)[:, 0], np.float64)
    return RegionTable(table, result, spectra)


__all__ = ["EMPTY_REGION", "REGION_COLUMNS", "RegionTable", "region_table", "table_unit"]
