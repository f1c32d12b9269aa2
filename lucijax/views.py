"""Cube views for notebooks and the command line alike: each takes a cube (a file's reader or
another view) and returns a cube that :func:`lucijax.fit` fits like a file.

::

    import lucijax as lj
    from lucijax import views

    cube = lj.open_cube("M31_SN3.hdf5")
    sky = views.background_spectrum(cube, "sky.reg")            # per-pixel median spectrum
    bkg = views.background_pca(cube, "sky.reg", 4)               # or fit a varying sky: Model(background=bkg)
    v = views.subtract_background(views.region(cube, (800, 1056, 900, 1156)), sky)
    v = views.bin(v, 3)                                          # 3 x 3 bins, flux conserving
    fit = lj.fit(v, lj.Model(["Halpha", "NII6583", "NII6548"]))

    vor = views.voronoi(cube, 30, region=(800, 1056, 900, 1156))  # bins of S/N 30
    pixels = views.unbin(lj.fit(vor, model), vor.binning)         # maps back on pixels
    hii = views.integrate_regions(cube, "hii.reg")                # one spectrum per ds9 region

Every view streams its spectra block by block from the cube below it. The views themselves
live in :mod:`lucijax.io.views`; :func:`voronoi` needs the S/N maps of the cube, which the
engine computes (:mod:`lucijax.tools.snr`).
"""

from __future__ import annotations

import numpy as np

from lucijax.description import Background
from lucijax.io.blocks import fold
from lucijax.io.masks import (
    box_mask,
    ds9_region_masks,
    mask_bounding_box,
    parse_box,
    read_mask,
)
from lucijax.io.views import (
    COMBINE,
    BinnedCube,
    Cutout,
    Masked,
    RegionsCube,
    VoronoiBinning,
    VoronoiCube,
    background_spectrum,
    integrated_spectrum,
    regions_spectra,
    voronoi_binning,
    voronoi_cube,
)
from lucijax.results.unbin import unbin
from lucijax.tools.snr import signal_noise_maps


def region(cube, box) -> Cutout:
    """The pixel box ``(x0, x1, y0, y1)`` (or ``'x0:x1,y0:y1'``) of ``cube``."""
    return Cutout(cube, box)


def mask(cube, mask, *, crop: bool = True):
    """``cube`` with only the pixels of ``mask`` computed (bool ``[y, x]`` image, ds9 .reg,
    mask .fits or 'x0:x1,y0:y1'); with ``crop``, cut to the mask's bounding box."""
    return _masked(cube, mask, crop)


def _masked(cube, source, crop: bool):
    nx, ny, _ = cube.shape
    full = read_mask(source, (ny, nx), cube.header.wcs)
    view = Masked(cube, full)
    if crop:
        box = mask_bounding_box(full)
        if box != (0, nx, 0, ny):
            view = Cutout(view, box)
    return view


def select(cube, region=None, mask=None):
    """``cube`` cut to ``region`` and/or masked by ``mask`` (:func:`region`, :func:`mask`;
    a mask without a region crops to its bounding box); ``cube`` itself when neither."""
    view = cube
    if region is not None:
        nx, ny, _ = cube.shape
        box = parse_box(region, (nx, ny))
        if box != (0, nx, 0, ny):
            view = Cutout(view, box)
    if mask is not None:
        if region is not None:  # a mask of the whole cube, applied inside the region
            nx, ny, _ = cube.shape
            full = read_mask(mask, (ny, nx), cube.header.wcs)
            if view is not cube:
                x0, x1, y0, y1 = view.box
                full = full[y0:y1, x0:x1]
            view = Masked(view, full)
        else:
            view = _masked(view, mask, True)
    return view


def bin(cube, factor: int, *, region=None, mask=None, combine: str = "sum", min_fraction: float = 0.5,  # noqa: A001
        background=None) -> BinnedCube:
    """``factor`` x ``factor`` bins of ``region`` (sums conserve flux; bins with less than
    ``min_fraction`` of their pixels in ``mask``, a ``[y, x]`` mask of ``cube``, are left
    out; ``background``, a per-pixel spectrum, is subtracted n times from a sum of n
    pixels); the WCS is binned exactly."""
    return BinnedCube(cube, factor, region=region, mask=mask, combine=combine, min_fraction=min_fraction,
                      background=background)


def subtract_background(cube, background) -> BinnedCube:
    """``cube`` minus a per-pixel background spectrum (:func:`background_spectrum`)."""
    return BinnedCube(cube, 1, background=np.asarray(background, np.float64))


def background_pca(cube, mask, n_components: int = 4, *, block: int = 64):
    """Background spectra of a sky region to fit in every pixel (a
    :class:`~lucijax.description.Background` for ``Model(background=...)``): the region's
    mean spectrum per pixel, then its ``n_components - 1`` leading principal components.

    Each pixel's background is then ``c_0 mean + c_1 pc_1 + ...`` with coefficients fitted
    with the lines (free signs, errors propagated to the line fluxes): a sky whose lines
    brighten, fade or shift across the field (airglow gradients, the calibration's velocity
    drift) is followed pixel by pixel where one subtracted spectrum leaves residuals. The
    components span the variations seen inside the region: pick a region that samples the
    field (e.g. around the target), free of the target's own line emission, whose flux the
    background would otherwise take; a star in it adds a component of its own.

    Parameters
    ----------
    cube : SpectralCube
    mask : bool [y, x] array, .reg/.fits file or 'x0:x1,y0:y1'
        The sky region (at least ``n_components + 1`` pixels).
    n_components : int
        Background spectra, the mean included (1: the mean alone, with a fitted scale).

    Returns
    -------
    Background
        ``spectra`` (n_components, n_channels): the mean, then each principal component
        scaled to its rms over the region (NaN channels count as 0).
    """
    k = int(n_components)
    if not 1 <= k <= 20:
        raise ValueError(f"background components must be between 1 and 20, got {n_components}")
    nx, ny, nch = cube.shape
    m = read_mask(mask, (ny, nx), cube.header.wcs)

    def step(acc, b, spectra, calib):
        y = np.nan_to_num(np.asarray(spectra, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        return acc[0] + y.shape[0], acc[1] + y.sum(axis=0), acc[2] + y.T @ y

    n, s1, s2 = fold(cube, m, step, (0, np.zeros(nch), np.zeros((nch, nch))), block=block)
    if n < k + 1:
        raise ValueError(f"the background region holds {n} pixels: {k} components need at least {k + 1}")
    mean = s1 / n
    cov = (s2 - n * np.outer(mean, mean)) / max(n - 1, 1)
    spectra = [mean]
    if k > 1:
        val, vec = np.linalg.eigh(cov)
        order = np.argsort(val)[::-1][: k - 1]
        for j in order:
            pc = vec[:, j] * np.sqrt(max(val[j], 0.0))
            spectra.append(pc if np.abs(pc).max() > 0 else vec[:, j])
    source = mask if isinstance(mask, str) else f"{int(m.sum())} pixels"
    return Background(np.stack(spectra), f"mean and {k - 1} principal components of {source} ({n} spectra)")


def integrate(cube, mask=None, *, region=None, combine: str = "sum", background=None):
    """The summed (or mean) spectrum of ``mask`` (or ``region``, or the whole cube), as a
    one-spectrum cube (``is_single_spectrum``: its fit also writes ``fit.json``)."""
    return integrated_spectrum(cube, mask, region=region, combine=combine, background=background)


def integrate_regions(cube, regions, *, region=None, mask=None, combine: str = "sum", background=None) -> RegionsCube:
    """The summed (or mean) spectrum of every region of a ds9 file, as one cube of
    ``(n_regions, 1)`` spectra that :func:`lucijax.fit` fits in one run
    (:func:`lucijax.fit_regions` fits it and tabulates the result).

    Parameters
    ----------
    cube : SpectralCube
    regions : path, ds9 text, regions.Regions or list of regions
        Each included region with an area is integrated on its own (overlaps count in each);
        excluded (``-``) regions take their pixels out of every region.
    region : (x0, x1, y0, y1) or 'x0:x1,y0:y1', optional
        Integrate only the pixels of the regions inside this box.
    mask : bool [y, x] array, .reg, .fits or 'x0:x1,y0:y1', optional
        Integrate only the pixels of the regions inside this mask (e.g. without stars).
    combine : {'sum', 'mean'}
    background : array (n_channels,), optional
        Per-pixel background spectrum (:func:`background_spectrum`), subtracted ``n`` times
        from the sum of ``n`` pixels.

    Returns
    -------
    RegionsCube
        ``.regions`` (index, label, shape, centre, pixels) and ``.n_pixels``; regions that
        cover no pixel are not fitted (a warning; STATUS 1 in :func:`lucijax.fit_regions`).
    """
    nx, ny, _ = cube.shape
    masks = ds9_region_masks(regions, (ny, nx), cube.header.wcs)
    keep = None
    if region is not None:
        keep = box_mask((ny, nx), region)
    if mask is not None:
        m = read_mask(mask, (ny, nx), cube.header.wcs)
        keep = m if keep is None else keep & m
    if keep is not None:
        masks = [r.restricted(keep) for r in masks]
    return regions_spectra(cube, masks, combine=combine, background=background)


def voronoi(cube, target_snr: float, *, region=None, mask=None, combine: str = "sum", background=None,
            redshift: float = 0.0, progress: bool = False) -> VoronoiCube:
    """Voronoi bins (``vorbin``) of ``region`` reaching ``target_snr`` in the line S/N of
    :func:`lucijax.tools.snr.signal_noise_maps`; fit the returned cube and map the result
    back with ``unbin(result, cube.binning)``."""
    src = subtract_background(cube, background) if background is not None else cube
    nx, ny, _ = cube.shape
    box = parse_box(region, (nx, ny)) if region is not None else None
    sn = signal_noise_maps(src, box, redshift=redshift, progress=progress)
    x0, x1, y0, y1 = sn.region
    sub_mask = read_mask(mask, (ny, nx), cube.header.wcs)[y0:y1, x0:x1] if mask is not None else None
    binning = voronoi_binning(sn.maps["INTEGRATED"], sn.maps["INTEGRATED_NOISE"], float(target_snr), region=sn.region,
                              mask=sub_mask, wcs=cube.header.wcs)
    return voronoi_cube(cube, binning, combine=combine, background=background)


__all__ = ["region", "mask", "select", "bin", "subtract_background", "background_spectrum", "background_pca", "integrate",
           "integrate_regions", "voronoi", "unbin", "Cutout", "Masked", "BinnedCube", "VoronoiCube", "VoronoiBinning",
           "RegionsCube", "regions_spectra", "voronoi_binning", "voronoi_cube", "COMBINE"]
