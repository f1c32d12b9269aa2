"""Which pixels: pixel boxes, ds9 region files, mask images and boolean masks.

Conventions
-----------
* **Masks are FITS-ordered** ``[y, x]`` images of the whole cube (shape ``(ny, nx)``), like
  the output maps and like the images of the ``regions`` package: ``mask[y, x]`` selects
  cube pixel ``data[x, y, :]``. ``True`` = use the pixel.
* Pixel boxes are ``(x0, x1, y0, y1)``, 0-based, end excluded (numpy slices).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np


def parse_region(text: str) -> tuple[int, int, int, int]:
    """'x0:x1,y0:y1' -> (x0, x1, y0, y1), 0-based, half-open (numpy slices)."""
    try:
        xs, ys = text.split(",")
        x0, x1 = (int(v) for v in xs.split(":"))
        y0, y1 = (int(v) for v in ys.split(":"))
    except ValueError as err:
        raise ValueError(f"cannot read region '{text}': expected x0:x1,y0:y1 (pixels, 0-based, end excluded)") from err
    return x0, x1, y0, y1


def parse_box(region, shape_xy=None) -> tuple[int, int, int, int]:
    """``(x0, x1, y0, y1)`` from a tuple or ``'x0:x1,y0:y1'``; ``None`` = the whole image.

    Parameters
    ----------
    region : tuple, str or None
    shape_xy : (nx, ny), optional
        Image size, needed for ``None`` and to check the box.
    """
    if region is None:
        if shape_xy is None:
            raise ValueError("a pixel box is needed (x0, x1, y0, y1)")
        return 0, int(shape_xy[0]), 0, int(shape_xy[1])
    if isinstance(region, str):
        region = parse_region(region)
    x0, x1, y0, y1 = (int(v) for v in region)
    if shape_xy is not None and not (0 <= x0 < x1 <= shape_xy[0] and 0 <= y0 < y1 <= shape_xy[1]):
        raise ValueError(f"pixel box x {x0}:{x1}, y {y0}:{y1} is empty or outside the image "
                         f"({shape_xy[0]} x {shape_xy[1]} pixels)")
    return x0, x1, y0, y1


def box_mask(shape_yx, region) -> np.ndarray:
    """Boolean ``[y, x]`` mask of a pixel box ``(x0, x1, y0, y1)`` in an image of ``shape_yx``."""
    ny, nx = shape_yx
    x0, x1, y0, y1 = parse_box(region, (nx, ny))
    m = np.zeros((ny, nx), bool)
    m[y0:y1, x0:x1] = True
    return m


def mask_bounding_box(mask_yx) -> tuple[int, int, int, int]:
    """Smallest pixel box ``(x0, x1, y0, y1)`` holding every ``True`` pixel of a ``[y, x]`` mask."""
    m = np.asarray(mask_yx, bool)
    if not m.any():
        raise ValueError("the mask selects no pixel")
    ys = np.flatnonzero(m.any(axis=1))
    xs = np.flatnonzero(m.any(axis=0))
    return int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1


def read_ds9(source):
    """The regions of a ds9 region file, of the text of one, or of parsed regions.

    Parameters
    ----------
    source : str, os.PathLike, regions.Regions or list of regions
        A ds9 ``.reg`` file, the text of one (anything holding a ``(``), or regions of the
        ``regions`` package.

    Returns
    -------
    regions.Regions

    Raises
    ------
    FileNotFoundError
        ``source`` is neither a file nor region text.
    ValueError
        The file cannot be read as ds9 regions.
    """
    from regions import Region, Regions

    if isinstance(source, Regions):
        return source
    if isinstance(source, (list, tuple)) and all(isinstance(r, Region) for r in source):
        return Regions(list(source))
    text = os.fspath(source)
    try:
        if os.path.exists(text):
            return Regions.read(text, format="ds9")
        if "(" in text:
            return Regions.parse(text, format="ds9")
    except (TypeError, ValueError, IndexError, KeyError) as err:  # what ``regions`` raises on a malformed line
        name = text if os.path.exists(text) else "the region text"
        raise ValueError(f"{name}: not a valid ds9 region file ({type(err).__name__}: {err})") from None
    raise FileNotFoundError(f"{text}: no such ds9 region file")


def _to_pixel(reg, wcs):
    """``reg`` in the cube's pixel coordinates (0-based)."""
    from regions import SkyRegion

    if isinstance(reg, SkyRegion):
        if wcs is None:
            raise ValueError(f"region {type(reg).__name__} is in sky coordinates but the cube has no celestial WCS")
        reg = reg.to_pixel(wcs.celestial if wcs.naxis > 2 else wcs)
    return reg


def ds9_mask(source, shape_yx, wcs=None, mode: str = "center") -> np.ndarray:
    """Boolean ``[y, x]`` mask of the regions of a ds9 region file (or string).

    Parameters
    ----------
    source : str, os.PathLike or regions.Regions
        A ds9 ``.reg`` file, the text of one, or parsed regions.
    shape_yx : (ny, nx)
        Image shape of the cube.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the cube (pixel ``(x, y)``), needed for regions in sky
        coordinates (``fk5``, ``icrs``, ...).
    mode : str
        ``regions`` mask mode: ``'center'`` (a pixel is in when its centre is), ...

    Returns
    -------
    numpy.ndarray
        ``True`` inside any included region and outside every excluded one (ds9 ``-``
        prefix); with only excluded regions, everything else is in.

    Notes
    -----
    Pixel coordinates are converted by ``regions`` from ds9's 1-based image convention
    to 0-based pixels, the convention of the cube's ``data[x, y]``.
    """
    regs = read_ds9(source)
    ny, nx = (int(v) for v in shape_yx)
    include = np.zeros((ny, nx), bool)
    exclude = np.zeros((ny, nx), bool)
    n_include = 0
    for reg in regs:
        reg = _to_pixel(reg, wcs)
        img = reg.to_mask(mode=mode).to_image((ny, nx))
        inside = np.zeros((ny, nx), bool) if img is None else img > 0
        if reg.meta.get("include", True):
            include |= inside
            n_include += 1
        else:
            exclude |= inside
    if n_include == 0:
        include[:] = True
    return include & ~exclude


#: ds9 names of the shapes whose ``regions`` class name differs.
_DS9_SHAPES = {"rectangle": "box", "circleannulus": "annulus", "ellipseannulus": "ellipse annulus",
               "rectangleannulus": "box annulus"}


@dataclass(frozen=True)
class RegionMask:
    """One region of a ds9 file as pixels of a cube (:func:`ds9_region_masks`).

    Attributes
    ----------
    index : int
        Position of the region among the file's regions with an area (0-based).
    label : str
        Its ds9 ``text={...}`` (``''`` when it has none).
    shape : str
        ds9 shape name (``'circle'``, ``'box'``, ``'ellipse'``, ``'polygon'``, ...).
    x, y : float
        Centre, 0-based pixel coordinates of the cube (a polygon's: the mean of its
        vertices); it may lie off the cube.
    box : (x0, x1, y0, y1) or None
        Bounding box of its pixels in the cube (None when it covers none).
    cut : numpy.ndarray
        Its pixels inside ``box``, ``[y, x]`` bool (shape ``(0, 0)`` when it covers none).
    """

    index: int
    label: str
    shape: str
    x: float
    y: float
    box: tuple | None
    cut: np.ndarray = field(repr=False)

    @property
    def n_pixels(self) -> int:
        """Number of cube pixels in the region."""
        return int(self.cut.sum())

    def mask(self, shape_yx) -> np.ndarray:
        """The region as a ``[y, x]`` mask of an image of ``shape_yx``."""
        m = np.zeros(tuple(int(v) for v in shape_yx), bool)
        if self.box is not None:
            x0, x1, y0, y1 = self.box
            m[y0:y1, x0:x1] = self.cut
        return m

    def within(self, box) -> np.ndarray:
        """The region's pixels inside the pixel box ``(x0, x1, y0, y1)``, a ``[y, x]`` mask of
        the box's shape."""
        bx0, bx1, by0, by1 = box
        out = np.zeros((by1 - by0, bx1 - bx0), bool)
        if self.box is not None:
            x0, x1, y0, y1 = self.box
            ix0, ix1, iy0, iy1 = max(bx0, x0), min(bx1, x1), max(by0, y0), min(by1, y1)
            if ix0 < ix1 and iy0 < iy1:
                out[iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0] = self.cut[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        return out

    def restricted(self, keep_yx) -> RegionMask:
        """The same region with only the pixels a ``[y, x]`` mask ``keep_yx`` keeps."""
        return _region_mask(self.index, self.label, self.shape, self.x, self.y, self.mask(keep_yx.shape) & keep_yx)


def _region_mask(index, label, shape, x, y, full) -> RegionMask:
    if not full.any():
        return RegionMask(index, label, shape, float(x), float(y), None, np.zeros((0, 0), bool))
    x0, x1, y0, y1 = mask_bounding_box(full)
    return RegionMask(index, label, shape, float(x), float(y), (x0, x1, y0, y1), full[y0:y1, x0:x1].copy())


def ds9_region_masks(source, shape_yx, wcs=None, mode: str = "center") -> list[RegionMask]:
    """Each region of a ds9 region file on its own, as pixels of a cube.

    Parameters
    ----------
    source : str, os.PathLike, regions.Regions or list of regions
        A ds9 ``.reg`` file, the text of one, or regions of the ``regions`` package.
    shape_yx : (ny, nx)
        Image shape of the cube.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the cube, needed for regions in sky coordinates.
    mode : str
        ``regions`` mask mode (``'center'``: a pixel is in when its centre is).

    Returns
    -------
    list of RegionMask
        One per included region with an area, in the file's order. Excluded regions (ds9
        ``-`` prefix) take their pixels out of every included one; regions without an area
        (points, lines, text) are left out with a warning. A region may cover no pixel of
        the cube (``box`` None); regions may overlap (a pixel then counts in each).

    Raises
    ------
    ValueError
        No included region with an area.
    """
    regs = read_ds9(source)
    ny, nx = (int(v) for v in shape_yx)
    kept, excluded, skipped = [], np.zeros((ny, nx), bool), []
    for reg in regs:
        pix = _to_pixel(reg, wcs)
        name = type(pix).__name__.replace("PixelRegion", "").lower()
        try:
            img = pix.to_mask(mode=mode).to_image((ny, nx))
        except NotImplementedError:  # points, lines, text: no area
            skipped.append(name)
            continue
        inside = np.zeros((ny, nx), bool) if img is None else img > 0
        if not reg.meta.get("include", True):
            excluded |= inside
            continue
        centre = getattr(pix, "center", None)
        if centre is None:  # polygons
            centre = pix.vertices
        x, y = float(np.mean(centre.x)), float(np.mean(centre.y))
        kept.append((str(reg.meta.get("text", "") or "").strip(), _DS9_SHAPES.get(name, name), x, y, inside))
    if skipped:
        warnings.warn(f"left out {len(skipped)} region(s) without an area ({', '.join(sorted(set(skipped)))})",
                      stacklevel=2)
    if not kept:
        is_file = isinstance(source, (str, os.PathLike)) and os.path.exists(os.fspath(source))
        raise ValueError(f"{os.fspath(source) if is_file else 'the regions'}: no region with an area to integrate "
                         "(circle, box, ellipse, polygon, ...)")
    return [_region_mask(k, label, shape, x, y, inside & ~excluded) for k, (label, shape, x, y, inside) in enumerate(kept)]


def read_mask(source, shape_yx, wcs=None) -> np.ndarray:
    """A boolean ``[y, x]`` mask from any supported description.

    Parameters
    ----------
    source : numpy array, str or path
        A boolean (or 0/1) ``[y, x]`` array of shape ``shape_yx``; a ds9 region file
        (``.reg``) or region text; a FITS image (``.fits``, first image HDU, non-zero and
        finite = in, FITS ``[y, x]`` order); or a pixel box ``'x0:x1,y0:y1'``.
    shape_yx : (ny, nx)
        Image shape of the cube.
    wcs : astropy.wcs.WCS, optional
        Cube celestial WCS (sky regions).
    """
    shape_yx = tuple(int(v) for v in shape_yx)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        low = text.lower()
        if low.endswith((".fits", ".fit", ".fits.gz", ".fts")):
            from astropy.io import fits

            with fits.open(text) as hdul:
                img = next((h.data for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2), None)
            if img is None:
                raise ValueError(f"{text}: no 2-D image HDU to use as a mask")
            m = np.isfinite(img) & (img != 0)
        elif low.endswith(".reg") or "(" in text:
            return ds9_mask(text, shape_yx, wcs)
        elif ":" in text and "," in text:
            return box_mask(shape_yx, text)
        else:
            raise ValueError(f"cannot read a mask from '{text}': expected a .reg, a .fits image or x0:x1,y0:y1")
    else:
        m = np.asarray(source)
        if m.dtype != bool:
            m = np.isfinite(m) & (m != 0) if m.dtype.kind == "f" else m != 0
    if m.shape != shape_yx:
        raise ValueError(f"mask of shape {m.shape} does not match the cube image [y, x] = {shape_yx}")
    return np.asarray(m, bool)


def bin_mask(mask_yx, factor: int, min_fraction: float = 0.5) -> np.ndarray:
    """Binned ``[y, x]`` mask: a bin is in when at least ``min_fraction`` of its pixels are
    (and at least one); the image is trimmed to a multiple of ``factor``."""
    m = np.asarray(mask_yx, bool)
    f = int(factor)
    ny, nx = m.shape[0] // f, m.shape[1] // f
    n = m[: ny * f, : nx * f].reshape(ny, f, nx, f).sum(axis=(1, 3))
    return (n > 0) & (n >= min_fraction * f * f)


__all__ = ["parse_region", "parse_box", "box_mask", "mask_bounding_box", "read_ds9", "ds9_mask", "RegionMask",
           "ds9_region_masks", "read_mask", "bin_mask"]
