"""Glue between the command line and the cube tools (masks, binning, Voronoi bins,
background, integrated spectra, heliocentric correction, model cubes, S/N maps).

``lucijax fit`` calls :func:`prepare_fit_input` before the fit, :func:`finish_result` after
it and :func:`write_extras` after the maps are written; with no tool option the three are
no-ops and the fit is the plain one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PreparedInput", "prepare_fit_input", "finish_result", "write_extras"]


@dataclass
class PreparedInput:
    """What to give :func:`lucijax.fit_cube`: ``source`` (a path or a cube view),
    ``region`` and extra keywords ``fit_kwargs``; plus what :func:`finish_result` needs."""

    source: object
    region: object = None
    fit_kwargs: dict = field(default_factory=dict)
    cube: object = None  # the opened input cube, when a tool needed it
    voronoi: object = None
    notes: list = field(default_factory=list)
    input_path: str = ""
    region_box: object = None  # pixel box of the input cube the tools cover (None: all)

    def close(self) -> None:
        if self.cube is not None:
            self.cube.close()
            self.cube = None


def prepare_fit_input(input_path, *, region=None, mask=None, bin_factor=None, voronoi_snr=None, integrated=None,
                      background_region=None, background_statistic: str = "median", redshift: float = 0.0,
                      combine: str = "sum") -> PreparedInput:
    """Open the cube if a tool needs it and build the cube view to fit.

    Parameters
    ----------
    input_path : path
    region : 'x0:x1,y0:y1' or tuple, optional
    mask : .reg / .fits / 'x0:x1,y0:y1' / bool [y, x] array, optional
        Pixels to fit (or to bin, integrate).
    bin_factor : int, optional
        N x N binning (``--bin N``).
    voronoi_snr : float, optional
        Voronoi bins reaching this integrated line S/N (``--voronoi-snr S``).
    integrated : {'sum', 'mean'}, optional
        Fit the integrated spectrum of the mask (or region) (``--integrated``).
    background_region, background_statistic :
        Region whose per-pixel median (or mean) spectrum is subtracted before fitting.
    combine : {'sum', 'mean'}
        How binned spectra are combined.
    """
    from lucijax import regions
    from lucijax.io import open_cube

    prep = PreparedInput(source=input_path, region=region, input_path=str(input_path))
    modes = [m for m in (bin_factor, voronoi_snr, integrated) if m]
    if len(modes) > 1:
        raise ValueError("choose one of --bin, --voronoi-snr and --integrated")
    if not modes and background_region is None:
        if mask is not None:
            prep.fit_kwargs["mask"] = mask
        return prep
    cube = open_cube(input_path)
    prep.cube = cube
    nx, ny, _ = cube.shape
    box = regions.parse_box(region, (nx, ny)) if region is not None else None
    prep.region_box = box
    full_mask = regions.read_mask(mask, (ny, nx), cube.header.wcs) if mask is not None else None
    background = None
    if background_region is not None:
        background = regions.background_spectrum(cube, background_region, background_statistic)
        prep.notes.append(f"background: {background_statistic} spectrum of region {background_region}")
    if bin_factor:
        view = regions.BinnedCube(cube, int(bin_factor), region=box, mask=full_mask, combine=combine,
                                  background=background)
        prep.source, prep.region, prep.region_box = view, None, view.box
        prep.notes.append(f"binned {bin_factor}x{bin_factor} ({combine}): {view.shape[0]} x {view.shape[1]} bins")
    elif voronoi_snr:
        from lucijax.snr import signal_noise_maps

        src = regions.BinnedCube(cube, 1, background=background) if background is not None else cube
        sn = signal_noise_maps(src, box, redshift=redshift)
        x0, x1, y0, y1 = sn.region
        sub_mask = full_mask[y0:y1, x0:x1] if full_mask is not None else None
        vb = regions.voronoi_binning(sn.maps["INTEGRATED"], sn.maps["INTEGRATED_NOISE"], float(voronoi_snr),
                                     region=sn.region, mask=sub_mask, wcs=cube.header.wcs)
        prep.source = regions.voronoi_cube(cube, vb, combine=combine, background=background)
        prep.region, prep.voronoi = None, vb
        prep.notes.append(f"Voronoi: {vb.n_bins} bins of target S/N {voronoi_snr}")
    elif integrated:
        prep.source = regions.integrated_spectrum(cube, full_mask, region=box, combine=integrated,
                                                  background=background)
        prep.region = None
        prep.notes.append(f"integrated ({integrated}) spectrum of {prep.source.n_pixels} pixels")
    else:  # background only
        prep.source = regions.BinnedCube(cube, 1, background=background)
        if full_mask is not None:
            prep.fit_kwargs["mask"] = full_mask
    return prep


def finish_result(result, prep: PreparedInput, *, heliocentric: bool = False):
    """Map Voronoi bins back to pixels and apply the heliocentric correction on request."""
    if prep.voronoi is not None:
        from lucijax.regions import unbin_result

        result = unbin_result(result, prep.voronoi)
    if heliocentric:
        from lucijax.heliocentric import apply_velocity_correction, heliocentric_correction_kms

        if prep.cube is not None:
            header = prep.cube.header
        else:
            from lucijax.io import open_cube

            with open_cube(prep.input_path) as c:
                header = c.header
        corr = heliocentric_correction_kms(header)
        result = apply_velocity_correction(result, corr)
        prep.notes.append(f"heliocentric correction {corr:+.3f} km/s applied to the velocities")
    return result


def write_extras(result, prep: PreparedInput, out_dir, *, model_cube: bool = False, snr_map: bool = False,
                 progress: bool = True) -> list[Path]:
    """``OUT/model.fits`` and ``OUT/residual.fits`` (``model_cube``), ``OUT/snr.fits`` and
    ``OUT/deep.fits`` (``snr_map``) of the input cube's fitted region."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    if model_cube:
        from lucijax.io.model_cube import write_model_cube

        if prep.voronoi is not None:  # each pixel carries its bin's model: no per-pixel residual
            written += write_model_cube(result, out_dir / "model.fits", progress=progress)
        else:
            written += write_model_cube(result, out_dir / "model.fits", cube=prep.source,
                                        residual_path=out_dir / "residual.fits", progress=progress)
    if snr_map:
        from astropy.io import fits

        from lucijax.io import open_cube
        from lucijax.snr import deep_image, signal_noise_maps

        cube = prep.cube if prep.cube is not None else open_cube(prep.input_path)
        try:
            # the pixel box of the input cube that was fitted
            box = result.region if prep.cube is None or prep.voronoi is not None else prep.region_box
            sn = signal_noise_maps(cube, box, redshift=result.plan.redshift, progress=progress)
            sn.write(out_dir / "snr.fits")
            deep = deep_image(cube, sn.region, progress=progress)
            hdr = sn.wcs.to_header() if sn.wcs is not None else None
            fits.writeto(out_dir / "deep.fits", deep.astype("float32"), hdr, overwrite=True)
            written += [out_dir / "snr.fits", out_dir / "deep.fits"]
        finally:
            if prep.cube is None:
                cube.close()
    return written
