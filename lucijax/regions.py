"""Regions of a cube: pixel boxes, ds9 region files and boolean masks; spatial binning
(N x N and Voronoi); background spectra; the integrated spectrum of a region.

Conventions
-----------
* **Masks are FITS-ordered** ``[y, x]`` images of the whole cube (shape ``(ny, nx)``),
  like the output maps and like the images of the ``regions`` package: ``mask[y, x]``
  selects cube pixel ``data[x, y, :]``. ``True`` = use the pixel.
* Pixel boxes are ``(x0, x1, y0, y1)``, 0-based, end excluded (numpy slices).
* The binned and Voronoi cubes are lazy :class:`~lucijax.io.header.SpectralCube` objects
  (or small in-memory ones), so :func:`lucijax.fit_cube` fits them like a file.
* Summed spectra of ``n`` pixels get ``n`` times the per-pixel background subtracted;
  mean spectra get it once.

The status of a pixel that a mask leaves out is :data:`MASKED_STATUS` (-1) in the
``STATUS`` map; its other maps are NaN and it is never computed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from lucijax.fit.cube import MASKED_STATUS
from lucijax.io.header import SpectralCube
from lucijax.io.memory import MemoryCube, replace_wcs

__all__ = [
    "MASKED_STATUS",
    "parse_box",
    "box_mask",
    "ds9_mask",
    "read_mask",
    "mask_bounding_box",
    "cutout_wcs",
    "bin_wcs",
    "bin_mask",
    "BinnedCube",
    "background_spectrum",
    "integrated_spectrum",
    "VoronoiBinning",
    "voronoi_binning",
    "voronoi_cube",
    "unbin_result",
]

#: STATUS of pixels left out by a mask (not fitted; every other map is NaN there).

COMBINE = ("sum", "mean")


# ----------------------------------------------------------------------------- boxes
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
        from lucijax.fit.cube import parse_region

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


# ----------------------------------------------------------------------------- ds9 regions
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


# ----------------------------------------------------------------------------- WCS
def cutout_wcs(wcs, region):
    """Celestial WCS of the pixel box ``region`` (``(x0, x1, y0, y1)``) of a cube: pixel
    ``(0, 0)`` of the cut-out is cube pixel ``(x0, y0)`` (SIP kept). Same as
    ``astropy.nddata.Cutout2D(...).wcs`` for that box."""
    from lucijax.io.maps import region_wcs

    return region_wcs(wcs, region)


def bin_wcs(wcs, factor: int):
    """Celestial WCS of an image binned ``factor`` x ``factor`` from pixel ``(0, 0)``.

    Binned pixel ``(i, j)`` covers pixels ``factor*i .. factor*i + factor - 1``; its centre
    is at unbinned pixel ``factor*i + (factor - 1)/2``. The reference pixel is mapped as by
    astropy's ``wcs[::factor, ::factor]``; unlike that slicing (astropy 8), a ``CD`` matrix
    is scaled too, and so are the SIP polynomials (``A_p_q -> A_p_q * factor**(p+q-1)``,
    same for ``B``, ``AP``, ``BP``), so distorted WCSs stay exact.
    """
    from astropy.wcs import Sip

    f = int(factor)
    if f < 1:
        raise ValueError(f"binning factor must be >= 1, got {factor}")
    w = (wcs.celestial if wcs.naxis > 2 else wcs).deepcopy()
    if f == 1:
        return w
    shape = w.pixel_shape
    crpix = (np.asarray(w.wcs.crpix, np.float64) - 0.5) / f + 0.5  # 1-based FITS pixels
    w.wcs.crpix = crpix
    if w.wcs.has_cd():
        w.wcs.cd = np.asarray(w.wcs.cd) * f
    else:
        w.wcs.cdelt = np.asarray(w.wcs.cdelt) * f

    def scale(c):
        if c is None:
            return None
        c = np.array(c, np.float64)
        p, q = np.indices(c.shape)
        return c * float(f) ** (p + q - 1)

    if w.sip is not None:
        s = w.sip
        w.sip = Sip(scale(s.a), scale(s.b), scale(s.ap), scale(s.bp), crpix)
    if shape is not None:
        w.pixel_shape = (shape[0] // f, shape[1] // f)
    w.wcs.set()
    return w


def bin_mask(mask_yx, factor: int, min_fraction: float = 0.5) -> np.ndarray:
    """Binned ``[y, x]`` mask: a bin is in when at least ``min_fraction`` of its pixels are
    (and at least one); the image is trimmed to a multiple of ``factor``."""
    m = np.asarray(mask_yx, bool)
    f = int(factor)
    ny, nx = m.shape[0] // f, m.shape[1] // f
    n = m[: ny * f, : nx * f].reshape(ny, f, nx, f).sum(axis=(1, 3))
    return (n > 0) & (n >= min_fraction * f * f)


# ----------------------------------------------------------------------------- streaming
def _blocks(box, block):
    x0, x1, y0, y1 = box
    for bx in range(x0, x1, block):
        for by in range(y0, y1, block):
            yield bx, min(bx + block, x1), by, min(by + block, y1)


def _masked_blocks(cube, mask_yx, block: int = 64):
    """Yield ``(box, spectra [x, y, ch], submask [x, y])`` for blocks holding masked-in pixels."""
    box = mask_bounding_box(mask_yx)
    for b in _blocks(box, block):
        sub = np.asarray(mask_yx[b[2]:b[3], b[0]:b[1]]).T
        if sub.any():
            yield b, cube.read_spectra(*b), sub


# ----------------------------------------------------------------------------- binned cube
class BinnedCube(SpectralCube):
    """A lazy ``factor`` x ``factor`` binned view of a pixel box of a cube.

    Spectra are read from the underlying cube block by block and combined on the fly, so
    binning never holds more than one block in memory. With ``factor=1`` it is a cut-out
    with an optional mask and background subtraction.

    Parameters
    ----------
    cube : SpectralCube
        The cube (any reader, or another view).
    factor : int
        Binning factor N (bins of N x N pixels). The box is trimmed to a multiple of N.
    region : (x0, x1, y0, y1) or 'x0:x1,y0:y1', optional
        Pixel box of ``cube`` to bin (default: all of it).
    mask : bool array [y, x] of the cube's image, or anything :func:`read_mask` reads
        Pixels to use. Masked-out pixels do not enter the bins.
    combine : {'sum', 'mean'}
        Sum (flux conserving: the binned fluxes are the totals over the bin) or mean of
        the valid pixels of a bin.
    background : array (n_channels,), optional
        Background spectrum **per pixel** (:func:`background_spectrum`), subtracted before
        fitting: ``n`` times from the sum of ``n`` valid pixels, once from their mean.
    min_fraction : float
        Bins with fewer than this fraction of valid pixels are masked (NaN, not fitted).
    close_base : bool
        :meth:`close` also closes ``cube`` (default: the caller closes it).

    Attributes
    ----------
    n_pixels : numpy.ndarray
        Valid pixels per bin, ``[x, y]`` (cube order).
    mask : numpy.ndarray
        Binned mask, FITS order ``[y, x]``.
    pixel_mask : numpy.ndarray or None
        ``mask`` in cube order ``[x, y]`` when some bins are masked, else ``None``; picked
        up by :func:`lucijax.fit_cube` so masked bins are not fitted.
    box : (x0, x1, y0, y1)
        The (trimmed) box of the underlying cube that the bins cover.
    """

    def __init__(self, cube, factor: int = 1, *, region=None, mask=None, combine: str = "sum", background=None,
                 min_fraction: float = 0.5, close_base: bool = False):
        f = int(factor)
        if f < 1:
            raise ValueError(f"binning factor must be >= 1, got {factor}")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got '{combine}'")
        nx, ny, nch = cube.shape
        x0, x1, y0, y1 = parse_box(region, (nx, ny))
        nbx, nby = (x1 - x0) // f, (y1 - y0) // f
        if nbx == 0 or nby == 0:
            raise ValueError(f"box x {x0}:{x1}, y {y0}:{y1} is smaller than one {f} x {f} bin")
        self.base = cube
        self._close_base = bool(close_base)
        self.factor = f
        self.combine = combine
        self.box = (x0, x0 + nbx * f, y0, y0 + nby * f)
        if mask is not None:
            full = read_mask(mask, (ny, nx), cube.header.wcs)
            self._mask_xy = full.T[self.box[0]:self.box[1], self.box[2]:self.box[3]].copy()
            self.n_pixels = self._mask_xy.reshape(nbx, f, nby, f).sum(axis=(1, 3))
        else:
            self._mask_xy = None
            self.n_pixels = np.full((nbx, nby), f * f, np.int64)
        valid = (self.n_pixels > 0) & (self.n_pixels >= min_fraction * f * f)
        self._valid_xy = valid
        self.mask = valid.T.copy()
        self.pixel_mask = None if valid.all() else valid
        if background is not None:
            background = np.asarray(background, np.float64)
            if background.shape != (nch,):
                raise ValueError(f"background must be one spectrum of {nch} channels, got shape {background.shape}")
        self.background = background
        wcs = cube.header.wcs
        if wcs is not None:
            wcs = bin_wcs(cutout_wcs(wcs, self.box), f)
        self.header = replace_wcs(cube.header, wcs)
        self.shape = (nbx, nby, nch)
        bx0, bx1, by0, by1 = self.box
        self.path = f"{getattr(cube, 'path', '<cube>')}[{bx0}:{bx1},{by0}:{by1} bin{f} {combine}" + (
            " masked" if mask is not None else "") + (" bkg" if background is not None else "") + "]"
        self.is_single_spectrum = False
        self.level = getattr(cube, "level", None)

    def _base_box(self, x0, x1, y0, y1):
        f = self.factor
        return self.box[0] + x0 * f, self.box[0] + x1 * f, self.box[2] + y0 * f, self.box[2] + y1 * f

    def _combine(self, arr, x0, x1, y0, y1, background=None):
        """Bin an array ``[x, y, ...]`` of base pixels of the bins ``[x0:x1, y0:y1]``."""
        f = self.factor
        if self._mask_xy is not None:
            m = self._mask_xy[x0 * f:x1 * f, y0 * f:y1 * f]
            arr = np.where(m.reshape(m.shape + (1,) * (arr.ndim - 2)), arr, 0)
        nbx, nby = x1 - x0, y1 - y0
        out = arr.reshape((nbx, f, nby, f) + arr.shape[2:]).sum(axis=(1, 3), dtype=np.float64)
        n = self.n_pixels[x0:x1, y0:y1].reshape((nbx, nby) + (1,) * (arr.ndim - 2))
        if background is not None:
            out = out - n * background
        if self.combine == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                out = out / n
        out[~self._valid_xy[x0:x1, y0:y1]] = np.nan
        return out

    def read_spectra(self, x0, x1, y0, y1):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        spectra = self.base.read_spectra(*self._base_box(x0, x1, y0, y1))
        return self._combine(spectra, x0, x1, y0, y1, self.background).astype(np.float32)

    def read_calib_map(self, x0, x1, y0, y1):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        calib = self.base.read_calib_map(*self._base_box(x0, x1, y0, y1))
        if calib is None:
            return None
        f = self.factor
        if self._mask_xy is None:
            return calib.reshape(x1 - x0, f, y1 - y0, f).mean(axis=(1, 3))
        m = self._mask_xy[x0 * f:x1 * f, y0 * f:y1 * f]
        s = np.where(m, calib, 0).reshape(x1 - x0, f, y1 - y0, f).sum(axis=(1, 3))
        n = self.n_pixels[x0:x1, y0:y1]
        mean_all = calib.reshape(x1 - x0, f, y1 - y0, f).mean(axis=(1, 3))
        return np.where(n > 0, s / np.maximum(n, 1), mean_all)

    def read_deep_frame(self, x0, x1, y0, y1):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        deep = self.base.read_deep_frame(*self._base_box(x0, x1, y0, y1))
        return None if deep is None else self._combine(deep, x0, x1, y0, y1)

    def close(self):
        """Close the underlying cube only when built with ``close_base=True``."""
        if self._close_base:
            self.base.close()


# ----------------------------------------------------------------------------- background
def background_spectrum(cube, mask, statistic: str = "median", *, block: int = 64) -> np.ndarray:
    """Background spectrum **per pixel** from a region of the cube.

    Parameters
    ----------
    cube : SpectralCube
    mask : bool [y, x] array, .reg/.fits file or 'x0:x1,y0:y1'
        The background region.
    statistic : {'median', 'mean'}
        Per-channel median (robust to stars and line emission in a few pixels) or mean of
        the region's spectra (NaN channels ignored).

    Returns
    -------
    numpy.ndarray
        float64 spectrum, shape ``(n_channels,)``. Subtract it once from each pixel,
        ``n`` times from a sum of ``n`` pixels (:class:`BinnedCube`, :func:`voronoi_cube`
        and :func:`integrated_spectrum` do).
    """
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got '{statistic}'")
    nx, ny, _ = cube.shape
    m = read_mask(mask, (ny, nx), cube.header.wcs)
    rows = [spectra[sub] for _, spectra, sub in _masked_blocks(cube, m, block)]
    sel = np.concatenate(rows).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels stay NaN
        return np.nanmedian(sel, axis=0) if statistic == "median" else np.nanmean(sel, axis=0)


def integrated_spectrum(cube, mask=None, *, region=None, combine: str = "sum", background=None,
                        block: int = 64) -> MemoryCube:
    """The summed (or mean) spectrum of a region, as a one-spectrum cube ready to fit.

    Parameters
    ----------
    cube : SpectralCube
    mask : bool [y, x] array, .reg/.fits file or 'x0:x1,y0:y1', optional
        Pixels to integrate (default: the ``region`` box, or the whole cube).
    combine : {'sum', 'mean'}
    background : array (n_channels,), optional
        Per-pixel background spectrum: ``n`` times it is subtracted from the sum of ``n``
        pixels (once from the mean).

    Returns
    -------
    MemoryCube
        Shape ``(1, 1, n_channels)``, ``is_single_spectrum`` set; its calibration map is
        the mean over the region, so the instrumental FWHM is the region's mean;
        ``.n_pixels`` holds the number of pixels integrated.
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got '{combine}'")
    nx, ny, nch = cube.shape
    m = box_mask((ny, nx), region) if mask is None else read_mask(mask, (ny, nx), cube.header.wcs)
    if region is not None and mask is not None:
        m &= box_mask((ny, nx), region)
    total = np.zeros(nch, np.float64)
    calib_sum, n = 0.0, 0
    has_calib = True
    for b, spectra, sub in _masked_blocks(cube, m, block):
        total += spectra[sub].sum(axis=0, dtype=np.float64)
        n += int(sub.sum())
        calib = cube.read_calib_map(*b)
        if calib is None:
            has_calib = False
        else:
            calib_sum += float(calib[sub].sum())
    if background is not None:
        total -= n * np.asarray(background, np.float64)
    if combine == "mean":
        total /= n
    calib_map = np.array([[calib_sum / n]]) if has_calib else None
    out = MemoryCube(total.reshape(1, 1, nch), replace_wcs(cube.header, None), calib_map=calib_map,
                     path=f"{getattr(cube, 'path', '<cube>')}[integrated {combine} of {n} pixels]",
                     is_single_spectrum=True)
    out.n_pixels = n
    return out


# ----------------------------------------------------------------------------- Voronoi
@dataclass
class VoronoiBinning:
    """Voronoi bins of a pixel box (Cappellari & Copin 2003, ``vorbin``).

    Attributes
    ----------
    bin_number : numpy.ndarray
        ``[y, x]`` over ``region``: bin index of each pixel, -1 for pixels left out (masked,
        or without a finite, positive noise).
    region : (x0, x1, y0, y1)
        Box of the cube the bins cover.
    n_pixels : numpy.ndarray
        Pixels per bin.
    snr : numpy.ndarray
        S/N of each bin expected by ``vorbin`` from the pixels' signal and noise
        (``sum(signal) / sqrt(sum(noise**2))``).
    x_bar, y_bar : numpy.ndarray
        Signal-weighted centroids of the bins, cube pixel coordinates.
    target_snr : float
    """

    bin_number: np.ndarray
    region: tuple
    n_pixels: np.ndarray
    snr: np.ndarray
    x_bar: np.ndarray
    y_bar: np.ndarray
    target_snr: float
    wcs: object = field(default=None, repr=False)

    @property
    def n_bins(self) -> int:
        return int(self.n_pixels.size)

    def to_pixels(self, values, fill=np.nan) -> np.ndarray:
        """Map per-bin values (shape ``(n_bins, ...)``) to a ``[y, x]`` image of the region."""
        values = np.asarray(values)
        out = values[np.maximum(self.bin_number, 0)]
        integer_fill = isinstance(fill, (int, np.integer)) and not isinstance(fill, bool)
        if values.dtype.kind in "iub" and integer_fill:
            out = out.astype(np.int64)
        else:  # a NaN fill needs floats
            out = out.astype(np.result_type(values.dtype, np.float32))
        out[self.bin_number < 0] = fill
        return out


def voronoi_binning(signal_yx, noise_yx, target_snr: float, *, region=None, mask=None, wcs=None) -> VoronoiBinning:
    """Voronoi bins reaching ``target_snr`` (``vorbin.voronoi_2d_binning``).

    Parameters
    ----------
    signal_yx, noise_yx : numpy.ndarray
        ``[y, x]`` signal and its 1-sigma noise per pixel over ``region`` (for instance the
        continuum-subtracted line flux and its error from
        :func:`lucijax.snr.signal_noise_maps`, which add up over pixels).
    target_snr : float
    region : (x0, x1, y0, y1), optional
        Cube box the maps cover (default: ``(0, nx, 0, ny)`` of the maps).
    mask : bool [y, x], optional
        Pixels to bin (same shape as the maps).
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the cube, kept for the pixel maps.

    Returns
    -------
    VoronoiBinning
        When every pixel already reaches the target, each pixel is its own bin.
    """
    signal = np.asarray(signal_yx, np.float64)
    noise = np.asarray(noise_yx, np.float64)
    if signal.shape != noise.shape or signal.ndim != 2:
        raise ValueError(f"signal {signal.shape} and noise {noise.shape} must be [y, x] maps of one shape")
    ny, nx = signal.shape
    region = parse_box(region, None) if region is not None else (0, nx, 0, ny)
    if (region[3] - region[2], region[1] - region[0]) != (ny, nx):
        raise ValueError(f"region {region} does not match maps of shape {signal.shape}")
    use = np.isfinite(signal) & np.isfinite(noise) & (noise > 0)
    if mask is not None:
        use &= np.asarray(mask, bool)
    yy, xx = np.nonzero(use)
    if yy.size == 0:
        raise ValueError("no pixel with a finite signal and positive noise to bin")
    s, n = signal[use], noise[use]
    px, py = xx + region[0], yy + region[2]
    if np.all(s / n >= target_snr):
        classes = np.arange(s.size)
        x_bar, y_bar, sn, npix = px.astype(float), py.astype(float), s / n, np.ones(s.size, int)
    else:
        if s.sum() / np.sqrt((n**2).sum()) < target_snr:
            raise ValueError(f"the whole region only reaches S/N {s.sum() / np.sqrt((n ** 2).sum()):.2f} "
                             f"< target {target_snr}: lower the target S/N")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # vorbin's deprecation notice
            from vorbin.voronoi_2d_binning import voronoi_2d_binning

            try:
                classes, _, _, x_bar, y_bar, sn, npix, _ = voronoi_2d_binning(
                    px.astype(float), py.astype(float), s, n, float(target_snr), plot=False, quiet=True, pixelsize=1.0)
            except (IndexError, ValueError) as err:  # vorbin fails when too few bins can reach the target
                raise ValueError(f"vorbin could not build bins of S/N {target_snr} (the whole region has S/N "
                                 f"{s.sum() / np.sqrt((n ** 2).sum()):.1f}): lower the target S/N ({err})") from err
    bins = np.full((ny, nx), -1, np.int64)
    bins[yy, xx] = classes
    return VoronoiBinning(bins, tuple(region), np.asarray(npix), np.asarray(sn), np.asarray(x_bar),
                          np.asarray(y_bar), float(target_snr), wcs)


def voronoi_cube(cube, binning: VoronoiBinning, *, combine: str = "sum", background=None,
                 block: int = 64) -> MemoryCube:
    """Spectra of the Voronoi bins, as an in-memory cube of shape ``(n_bins, 1, n_channels)``.

    Bin ``k`` is the sum (or mean) of the spectra of its pixels, with ``n_k`` times
    the per-pixel ``background`` subtracted (once for a mean); its calibration map entry is
    the mean over its pixels. Fit it with :func:`lucijax.fit_cube` and map the result back
    with :func:`unbin_result`.
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got '{combine}'")
    nx, ny, nch = cube.shape
    x0, x1, y0, y1 = binning.region
    full = np.zeros((ny, nx), bool)
    full[y0:y1, x0:x1] = binning.bin_number >= 0
    nb = binning.n_bins
    sums = np.zeros((nb, nch), np.float64)
    calib = np.zeros(nb, np.float64)
    counts = np.zeros(nb, np.int64)
    has_calib = True
    for b, spectra, sub in _masked_blocks(cube, full, block):
        ids = binning.bin_number[b[2] - y0:b[3] - y0, b[0] - x0:b[1] - x0].T[sub]
        np.add.at(sums, ids, spectra[sub].astype(np.float64))
        np.add.at(counts, ids, 1)
        cm = cube.read_calib_map(*b)
        if cm is None:
            has_calib = False
        else:
            np.add.at(calib, ids, cm[sub])
    if background is not None:
        sums -= counts[:, None] * np.asarray(background, np.float64)[None, :]
    if combine == "mean":
        sums /= counts[:, None]
    out = MemoryCube(sums.reshape(nb, 1, nch), replace_wcs(cube.header, None),
                     calib_map=(calib / counts).reshape(nb, 1) if has_calib else None,
                     path=f"{getattr(cube, 'path', '<cube>')}[voronoi {nb} bins, S/N {binning.target_snr:g}, {combine}]")
    out.n_pixels = counts
    return out


def unbin_result(result, binning: VoronoiBinning):
    """A :class:`lucijax.api.FitResult` of Voronoi bins mapped back to the pixels of the region.

    Every pixel of a bin gets the bin's values; pixels outside every bin are NaN with
    ``STATUS`` = :data:`MASKED_STATUS`. Two maps are added: ``BIN`` (bin index, -1 outside)
    and ``NPIX`` (pixels in the pixel's bin). Fluxes stay those of the whole bin (for a
    summed bin, divide by ``NPIX`` for a per-pixel mean). ``raw`` is mapped too, so
    ``model_spectrum(x, y)`` gives the model of the pixel's bin.
    """
    import dataclasses

    from lucijax.io.maps import region_wcs

    maps, units = {}, dict(result.units)
    for k, v in result.maps.items():
        per_bin = np.asarray(v)[0]  # bins lie along x of a (1, n_bins) map
        fill = MASKED_STATUS if per_bin.dtype.kind in "iu" else np.nan
        maps[k] = binning.to_pixels(per_bin, fill=fill).astype(per_bin.dtype if per_bin.dtype.kind in "iu" else np.float32)
    maps["BIN"] = binning.bin_number.astype(np.int32)
    maps["NPIX"] = binning.to_pixels(binning.n_pixels, fill=0).astype(np.int32)
    units.update(BIN="", NPIX="")
    raw = {}
    bins_xy = binning.bin_number.T
    for k, v in result.raw.items():
        per_bin = np.asarray(v)[:, 0]
        out = per_bin[np.maximum(bins_xy, 0)]
        if out.dtype.kind == "f":
            out[bins_xy < 0] = np.nan
        else:
            out[bins_xy < 0] = MASKED_STATUS
        raw[k] = out
    wcs = region_wcs(binning.wcs, binning.region) if binning.wcs is not None else None
    return dataclasses.replace(result, maps=maps, units=units, wcs=wcs, region=tuple(binning.region), raw=raw,
                               is_single_spectrum=False)
