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
    from regions import Regions, SkyRegion

    if isinstance(source, Regions):
        regs = source
    else:
        text = os.fspath(source)
        if os.path.exists(text):
            regs = Regions.read(text, format="ds9")
        elif "(" in text:
            regs = Regions.parse(text, format="ds9")
        else:
            raise FileNotFoundError(f"{text}: no such ds9 region file")
    ny, nx = (int(v) for v in shape_yx)
    include = np.zeros((ny, nx), bool)
    exclude = np.zeros((ny, nx), bool)
    n_include = 0
    for reg in regs:
        if isinstance(reg, SkyRegion):
            if wcs is None:
                raise ValueError(f"region {type(reg).__name__} is in sky coordinates but the cube has no celestial WCS")
            reg = reg.to_pixel(wcs.celestial if wcs.naxis > 2 else wcs)
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


__all__ = ["parse_region", "parse_box", "box_mask", "mask_bounding_box", "ds9_mask", "read_mask", "bin_mask"]
