"""Cube views: cube -> cube functions that the engine fits like a file.

Every view reads its spectra from the cube below it on demand, block by block, so a view of
a 14 GB cube costs no memory; views compose (a binned view of a background-subtracted cut-out
of a file):

* :class:`Cutout` (a pixel box) and :class:`Masked` (pixels to compute: ``pixel_mask``;
  the others are left out, STATUS -1);
* :class:`BinnedCube` (N x N bins, sum or mean, with a mask and a background; ``factor=1``
  is a cut-out with an optional background subtraction);
* :func:`background_spectrum` (the per-pixel median or mean spectrum of a region),
  :func:`integrated_spectrum` (one summed spectrum), :func:`regions_spectra` (the summed
  spectrum of each of several regions, in one pass), :func:`voronoi_binning` and
  :func:`voronoi_cube` (Voronoi bins of a target S/N, ``vorbin``).

A view keeps the cube's header with its celestial WCS transformed (cut, binned exactly: CD
matrices and SIP polynomials included), and ``origin``: where its pixel (0, 0) lies in the
file (None for bins). Summed spectra of ``n`` pixels get ``n`` times the per-pixel
background subtracted; mean spectra get it once. Reductions over a region read through
:func:`lucijax.io.blocks.fold`.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from lucijax.io.blocks import fold
from lucijax.io.header import SpectralCube
from lucijax.io.masks import box_mask, parse_box, read_mask
from lucijax.io.memory import MemoryCube, replace_wcs
from lucijax.io.wcs import bin_wcs, cutout_wcs

COMBINE = ("sum", "mean")


def _fingerprint(cube) -> str:
    return cube.fingerprint() if hasattr(cube, "fingerprint") else str(getattr(cube, "path", "<cube>"))


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


class _Delegating(SpectralCube):
    """A view that passes everything it does not change to the cube below it."""

    def __init__(self, cube, close_base: bool = False):
        self.base = cube
        self._close_base = bool(close_base)
        self.header = cube.header
        self.shape = tuple(cube.shape)
        self.path = getattr(cube, "path", "<cube>")
        self.is_single_spectrum = bool(getattr(cube, "is_single_spectrum", False))
        self.level = getattr(cube, "level", None)
        self.pixel_mask = getattr(cube, "pixel_mask", None)
        self.origin = getattr(cube, "origin", (0, 0))
        self._root_shape = getattr(cube, "root_shape", tuple(cube.shape[:2]))

    @property
    def root_shape(self):
        return self._root_shape

    def read_spectra(self, x0, x1, y0, y1):
        return self.base.read_spectra(x0, x1, y0, y1)

    def read_calib_map(self, x0, x1, y0, y1):
        return self.base.read_calib_map(x0, x1, y0, y1)

    def read_deep_frame(self, x0, x1, y0, y1):
        return self.base.read_deep_frame(x0, x1, y0, y1)

    def close(self):
        """Close the underlying cube only when built with ``close_base=True``."""
        if self._close_base:
            self.base.close()


class Cutout(_Delegating):
    """The pixel box ``(x0, x1, y0, y1)`` of a cube (its WCS shifted, SIP kept)."""

    def __init__(self, cube, box, *, close_base: bool = False):
        super().__init__(cube, close_base)
        nx, ny, nch = cube.shape
        self.box = parse_box(box, (nx, ny))
        x0, x1, y0, y1 = self.box
        self.shape = (x1 - x0, y1 - y0, nch)
        wcs = cube.header.wcs
        self.header = replace_wcs(cube.header, cutout_wcs(wcs, self.box) if wcs is not None else None)
        base_mask = getattr(cube, "pixel_mask", None)
        self.pixel_mask = None if base_mask is None else np.asarray(base_mask, bool)[x0:x1, y0:y1].copy()
        base_origin = getattr(cube, "origin", (0, 0))
        self.origin = None if base_origin is None else (base_origin[0] + x0, base_origin[1] + y0)
        self.path = f"{self.path}[{x0}:{x1},{y0}:{y1}]"
        self.is_single_spectrum = False if (x1 - x0) * (y1 - y0) > 1 else self.is_single_spectrum
        self._key = _digest(_fingerprint(cube), "cutout", self.box)

    def fingerprint(self) -> str:
        return self._key

    def read_spectra(self, x0, x1, y0, y1):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        ox, oy = self.box[0], self.box[2]
        return self.base.read_spectra(x0 + ox, x1 + ox, y0 + oy, y1 + oy)

    def read_calib_map(self, x0, x1, y0, y1):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        ox, oy = self.box[0], self.box[2]
        return self.base.read_calib_map(x0 + ox, x1 + ox, y0 + oy, y1 + oy)

    def read_deep_frame(self, x0, x1, y0, y1):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        ox, oy = self.box[0], self.box[2]
        return self.base.read_deep_frame(x0 + ox, x1 + ox, y0 + oy, y1 + oy)


class Masked(_Delegating):
    """A cube whose pixels outside ``mask`` are not computed (their maps NaN, STATUS -1).

    ``mask``: a bool ``[y, x]`` image of the cube, a ds9 region file, a mask FITS image or
    a box ``'x0:x1,y0:y1'`` (:func:`lucijax.io.masks.read_mask`).
    """

    def __init__(self, cube, mask, *, close_base: bool = False):
        super().__init__(cube, close_base)
        nx, ny, _ = cube.shape
        m = read_mask(mask, (ny, nx), cube.header.wcs).T
        if self.pixel_mask is not None:
            m = m & np.asarray(self.pixel_mask, bool)
        if not m.any():
            raise ValueError("the mask selects no pixel of the cube")
        self.pixel_mask = m
        self.path = f"{self.path}[masked]"
        self._key = _digest(_fingerprint(cube), "masked", np.packbits(m))

    def fingerprint(self) -> str:
        return self._key


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
        ``mask`` in cube order ``[x, y]`` when some bins are masked, else ``None``: the
        engine does not compute masked bins.
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
        base_mask = getattr(cube, "pixel_mask", None)
        if mask is not None or base_mask is not None:
            full = read_mask(mask, (ny, nx), cube.header.wcs).T if mask is not None else np.ones((nx, ny), bool)
            if base_mask is not None:
                full = full & np.asarray(base_mask, bool)
            self._mask_xy = full[self.box[0]:self.box[1], self.box[2]:self.box[3]].copy()
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
        base_origin = getattr(cube, "origin", (0, 0))
        if f == 1 and base_origin is not None:  # a cut-out: its pixels are the file's pixels
            self.origin = (base_origin[0] + x0, base_origin[1] + y0)
            self._root_shape = getattr(cube, "root_shape", (nx, ny))
        else:
            self.origin = None
            self._root_shape = None
        self._key = _digest(_fingerprint(cube), "binned", self.box, f, combine, min_fraction,
                            None if self._mask_xy is None else np.packbits(self._mask_xy), background)

    @property
    def root_shape(self):
        return self._root_shape

    def fingerprint(self) -> str:
        return self._key

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
    rows = fold(cube, m, lambda acc, b, spectra, calib: acc + [spectra], [], block=block)
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

    def step(acc, b, spectra, calib):
        total, calib_sum, n, has_calib = acc
        total = total + spectra.sum(axis=0, dtype=np.float64)
        n += spectra.shape[0]
        if calib is None:
            has_calib = False
        else:
            calib_sum += float(calib.sum())
        return total, calib_sum, n, has_calib

    total, calib_sum, n, has_calib = fold(cube, m, step, (np.zeros(nch, np.float64), 0.0, 0, True), block=block,
                                          calib=True)
    if background is not None:
        total -= n * np.asarray(background, np.float64)
    if combine == "mean":
        total /= n
    calib_map = np.array([[calib_sum / n]]) if has_calib else None
    out = MemoryCube(total.reshape(1, 1, nch), replace_wcs(cube.header, None), calib_map=calib_map,
                     path=f"{getattr(cube, 'path', '<cube>')}[integrated {combine} of {n} pixels]",
                     is_single_spectrum=True)
    out.n_pixels = n
    out.origin = None  # its one spectrum is no pixel of the file
    return out


class RegionsCube(MemoryCube):
    """The integrated spectra of several regions (:func:`regions_spectra`): shape
    ``(n_regions, 1, n_channels)``, spectrum ``k`` that of ``regions[k]``.

    Attributes
    ----------
    regions : list of RegionMask
        The regions, in order (their pixels, labels and centres).
    source_wcs : astropy.wcs.WCS or None
        Celestial WCS of the cube the regions are pixels of (the spectra themselves have
        none).
    n_pixels : numpy.ndarray
        Pixels integrated in each region (0: the region covers no pixel of the cube).
    combine : {'sum', 'mean'}
    pixel_mask : numpy.ndarray or None
        ``[k, 0]`` False for the regions that cover no pixel: they are not fitted.
    """

    origin = None
    regions: list
    source_wcs: object
    n_pixels: np.ndarray
    combine: str


def regions_spectra(cube, regions, *, combine: str = "sum", background=None, block: int = 64) -> RegionsCube:
    """The summed (or mean) spectrum of each of several regions, in one pass over the cube.

    Parameters
    ----------
    cube : SpectralCube
    regions : list of RegionMask
        Pixels of each region (:func:`lucijax.io.masks.ds9_region_masks`); they may overlap
        (a pixel counts in each region that holds it).
    combine : {'sum', 'mean'}
    background : array (n_channels,), optional
        Per-pixel background spectrum: ``n`` times it is subtracted from the sum of ``n``
        pixels (once from the mean).

    Returns
    -------
    RegionsCube
        Shape ``(n_regions, 1, n_channels)``; spectrum ``k`` equals
        ``integrated_spectrum(cube, regions[k].mask(...))``'s, and its calibration map entry
        is the mean over the region's pixels. A region that covers no pixel of the cube gets
        a NaN spectrum, is left out of the fit (``pixel_mask``) and is warned about.
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got '{combine}'")
    regions = list(regions)
    if not regions:
        raise ValueError("no region to integrate")
    nx, ny, nch = cube.shape
    nr = len(regions)
    counts = np.array([r.n_pixels for r in regions], np.int64)
    empty = [r for r in regions if r.n_pixels == 0]
    if len(empty) == nr:
        raise ValueError(f"none of the {nr} regions covers a pixel of the cube ({nx} x {ny} pixels): "
                         "check their coordinates (and the cube's WCS for sky regions)")
    for r in empty:
        warnings.warn(f"region {r.index}{f' ({r.label})' if r.label else ''} covers no pixel of the cube: "
                      "not fitted, its row has STATUS 1 (invalid input)", stacklevel=2)
    union = np.zeros((ny, nx), bool)
    for r in regions:
        if r.box is not None:
            x0, x1, y0, y1 = r.box
            union[y0:y1, x0:x1] |= r.cut
    sums = np.zeros((nr, nch), np.float64)
    calib = np.zeros(nr, np.float64)

    def step(has_calib, b, spectra, cm):
        keep = union[b[2]:b[3], b[0]:b[1]].T.reshape(-1)  # the block's kept pixels, x-major like ``spectra``
        for k, r in enumerate(regions):
            inside = r.within(b).T.reshape(-1)[keep]
            if inside.any():
                sums[k] += spectra[inside].sum(axis=0, dtype=np.float64)
                if cm is not None:
                    calib[k] += float(cm[inside].sum())
        return has_calib and cm is not None

    has_calib = fold(cube, union, step, True, block=block, calib=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        if background is not None:
            sums -= counts[:, None] * np.asarray(background, np.float64)[None, :]
        if combine == "mean":
            sums /= counts[:, None]
        calib_mean = calib / counts
    sums[counts == 0] = np.nan
    if has_calib:  # the empty regions get the others' mean (they are not fitted)
        calib_mean[counts == 0] = np.mean(calib_mean[counts > 0])
    out = RegionsCube(sums.reshape(nr, 1, nch), replace_wcs(cube.header, None),
                      calib_map=calib_mean.reshape(nr, 1) if has_calib else None,
                      path=f"{getattr(cube, 'path', '<cube>')}[{nr} regions, {combine}]")
    out.regions = regions
    out.source_wcs = cube.header.wcs
    out.n_pixels = counts
    out.combine = combine
    out.pixel_mask = None if not empty else (counts > 0).reshape(nr, 1)
    return out


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
    the mean over its pixels. Fit it with :func:`lucijax.fit` and map the result back
    with :func:`lucijax.views.unbin`.
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

    def step(has_calib, b, spectra, cm):
        sub = full[b[2]:b[3], b[0]:b[1]].T
        ids = binning.bin_number[b[2] - y0:b[3] - y0, b[0] - x0:b[1] - x0].T[sub]
        np.add.at(sums, ids, spectra.astype(np.float64))
        np.add.at(counts, ids, 1)
        if cm is None:
            return False
        np.add.at(calib, ids, cm)
        return has_calib

    has_calib = fold(cube, full, step, True, block=block, calib=True)
    if background is not None:
        sums -= counts[:, None] * np.asarray(background, np.float64)[None, :]
    if combine == "mean":
        sums /= counts[:, None]
    out = VoronoiCube(sums.reshape(nb, 1, nch), replace_wcs(cube.header, None),
                      calib_map=(calib / counts).reshape(nb, 1) if has_calib else None,
                      path=f"{getattr(cube, 'path', '<cube>')}[voronoi {nb} bins, S/N {binning.target_snr:g}, {combine}]")
    out.n_pixels = counts
    out.binning = binning
    return out


class VoronoiCube(MemoryCube):
    """The spectra of Voronoi bins (:func:`voronoi_cube`): ``(n_bins, 1, n_channels)``, with
    the :class:`VoronoiBinning` that maps results back to pixels (``.binning``)."""

    origin = None
    binning: VoronoiBinning


__all__ = ["Cutout", "Masked", "BinnedCube", "VoronoiCube", "VoronoiBinning", "RegionsCube", "background_spectrum",
           "integrated_spectrum", "regions_spectra", "voronoi_binning", "voronoi_cube", "COMBINE"]
