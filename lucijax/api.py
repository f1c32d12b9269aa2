"""Python API for notebooks and scripts: open a cube, fit a region or one spectrum,
get maps as arrays with their WCS, write FITS."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lucijax.fit.cube import FitPlan, fit_region, parse_region, parse_window, plan_fit
from lucijax.fit.map import FitSettings, Status
from lucijax.io import open_cube as _open_cube
from lucijax.io import region_wcs, write_maps_fits
from lucijax.products import build_maps, spectrum_summary


def open_cube(path):
    """Open a SITELLE cube or extracted spectrum (ORB HDF5 levels 1-3, FITS)."""
    return _open_cube(path)


@dataclass
class FitResult:
    """Maps of a fit, FITS-ordered ``[y, x]`` (``maps[name][y, x]`` belongs to cube pixel
    ``(x0 + x, y0 + y)``), with units and the celestial WCS of the region."""

    maps: dict[str, np.ndarray]
    units: dict[str, str]
    wcs: object
    region: tuple[int, int, int, int]
    plan: FitPlan = field(repr=False)
    source: str = ""
    is_single_spectrum: bool = False
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def status(self) -> np.ndarray:
        return self.maps["STATUS"]

    def summary(self) -> dict:
        """JSON-ready result of the first pixel (single spectra)."""
        return spectrum_summary(self.maps, self.plan)

    def model_spectrum(self, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        """(observed axis cm^-1, fitted model) of map pixel ``[y, x]`` on the fit window."""
        import jax.numpy as jnp

        plan = self.plan
        raw_v = self.raw["velocity_kms"][x, y]
        theta = np.concatenate([raw_v, self.raw["broadening_kms"][x, y]]) if plan.spec.has_broadening else raw_v
        fwhm = self.raw["fwhm_cm1"][x, y]
        model = plan.model.spectrum(jnp.asarray(theta, jnp.float32), jnp.asarray(self.raw["linear"][x, y], jnp.float32), jnp.float32(fwhm))
        axis_obs = (plan.grid.axis_rel_cm1 + plan.grid.ref_cm1) / (1.0 + plan.redshift)
        return axis_obs, np.asarray(model)

    def write(self, out_dir) -> Path:
        """Write ``out_dir/maps.fits`` (and ``out_dir/fit.json`` for a single spectrum)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = self.plan.spec
        extra = {
            "ORIGIN": "lucijax",
            "INPUT": Path(self.source).name[:60],
            "MODEL": spec.shape,
            "LINES": " ".join(spec.line_set.names)[:68],
            "REDSHIFT": self.plan.redshift,
            "REGION": "{}:{},{}:{}".format(*self.region),
        }
        if self.plan.noise_window_cm1 is not None:
            extra["NOISEWIN"] = "{:.1f}:{:.1f}".format(*self.plan.noise_window_cm1)
        write_maps_fits(out_dir / "maps.fits", self.maps, self.units, wcs2d=self.wcs, region=None, header_extra=extra)
        if self.is_single_spectrum:
            with open(out_dir / "fit.json", "w") as fh:
                json.dump(self.summary(), fh, indent=2)
        return out_dir


def fit_cube(
    cube,
    lines=None,
    *,
    model: str = "sincgauss",
    region=None,
    redshift: float = 0.0,
    window=None,
    sky_lines=None,
    groups=None,
    tie_nii: bool = True,
    tie_oiii: bool = False,
    continuum_order: int = 0,
    continuum_spline: int = 0,
    flambda_weights: bool = True,
    noise_window=None,
    settings: FitSettings | None = None,
    mdn: bool | str = True,
    batch_size: int | None = None,
    block_size: int = 64,
    progress: bool = True,
    checkpoint_dir=None,
    devices=None,
    mask=None,
    background=None,
    components: int = 1,
    min_separation_kms: float = 40.0,
    freeze=None,
    bayes: str | None = None,
    bayes_settings=None,
    bayes_samples=None,
    bayes_components: bool = False,
) -> FitResult:
    """Fit emission lines in every pixel of a region of a SITELLE cube.

    Parameters
    ----------
    cube : str, Path or SpectralCube
        ORB HDF5 cube (levels 1-3), FITS cube or ORB extracted spectrum.
    lines : list of str
        Line names ('Halpha', 'NII6583', 'NII6548', 'SII6716', 'SII6731', ...) or user
        lines 'NAME=air_nm'.
    model : {'sincgauss', 'sinc', 'gaussian'}
    region : (x0, x1, y0, y1) or 'x0:x1,y0:y1', optional
        Pixel box (0-based, end excluded); default the whole cube.
    redshift : float
        The axis is de-redshifted by (1 + z); velocities are residuals.
    window : (smin, smax) or 'SMIN:SMAX', optional
        Fit window in observed cm^-1; default the filter band.
    sky_lines : path, optional
        ORB sky line list: fit every line in the band with one shared velocity (the first
        kinematic group). ``lines`` may be given too: emission lines of gas in front of the
        sky, in kinematic groups of their own after the sky's (``groups`` numbers them).
    groups : list of int, optional
        Kinematic group of each line (default: one velocity and broadening for all).
    tie_nii, tie_oiii : bool
        3:1 flux ratio of [NII]6583/6548 (default on) and [OIII]5007/4959 (default off).
    mdn : bool or {'mdn', 'cnn'}
        Start every fit at the filter's mixture density network's posterior mean and bound
        it to mean +- 3 sigma (default; SN1, SN2 and SN3 ship a network, other filters fall
        back to the matched filter); 'cnn' starts it at the point-estimate network; False
        uses the matched-filter start over the whole velocity range. With a network the maps
        gain MDN_VELOCITY, MDN_BROADENING (and their *_SIGMA for the MDN).
    continuum_order : int
        Degree of the continuum polynomial.
    continuum_spline : int
        N > 0 fits the continuum with a cubic B-spline of N equal intervals over the window
        instead of a polynomial: for continua with structure (starlight, filter-edge flux
        calibration), which a polynomial leaves in the residuals and so in the noise
        estimate. Keep the intervals much wider than a line (SN3: N = 16 gives ~53 cm-1,
        ~17 FWHM).
    flambda_weights : bool
        Weight the channels of flux-calibrated data with a per-channel ``flambda`` by 1 / its
        relative value: the FTS spreads the noise evenly over the channels in counts, and the
        calibration multiplies each channel by ``flambda`` (the noise estimate, NOISE map
        and chi2 then refer to the channel of median ``flambda`` in the window). No effect
        on data in counts or with a scalar ``flambda``.
    noise_window : (smin, smax) or 'SMIN:SMAX', optional
        Measure each pixel's noise over this line-free window (observed cm^-1), e.g. outside
        the filter band, where an FTS spectrum holds only noise (``lucijax.fit.noise``); the
        errors, CHI2, SNR and NOISE then refer to it. Default: the noise comes from the fit's
        own line-free residuals, which take in whatever the model leaves.
    settings : FitSettings
        Iterations, velocity and broadening ranges.
    batch_size : int, optional
        Spectra per compiled batch (default: 64 on CPU, 4096 on a GPU).
    block_size : int
        Pixels are read (and checkpointed) in ``block_size`` x ``block_size`` slabs.
    checkpoint_dir : path, optional
        Keep each finished block of pixels there; rerunning the same fit after a crash
        computes only the missing blocks.
    devices : list of jax devices, optional
        Devices to split batches over (default: every local device).
    mask : bool [y, x] array of the cube image, ds9 .reg file, mask .fits or 'x0:x1,y0:y1', optional
        Fit only these pixels (``lucijax.regions.read_mask``); the others are NaN with
        STATUS -1 and are not computed. Without ``region``, the region is the mask's
        bounding box. A cube view with a ``pixel_mask`` (``lucijax.regions.BinnedCube``)
        supplies its own.
    background : array (n_channels,), optional
        Per-pixel background spectrum (``lucijax.regions.background_spectrum``) subtracted
        from every spectrum before fitting.
    components : int
        Kinematic components per kinematic group (``lucijax.fit.components``): every line
        is fitted once per component (maps ``{LINE}_C{k}_...``), components ordered in
        velocity (``v_k >= v_{k-1} + min_separation_kms``), so they never swap or collapse.
    min_separation_kms : float
        Smallest velocity difference between neighbouring components.
    freeze : path to a maps.fits or dict of [y, x] maps, optional
        Freeze mode (``lucijax.fit.freeze``): velocities and broadenings taken from these
        maps (``{LINE}_VELOCITY``/``_BROADENING`` of each group's first line, or plain
        ``VELOCITY``/``BROADENING``; region-sized or cube-sized), only the amplitudes and
        the continuum fitted.
    bayes : {'nuts', 'ensemble', 'nested', 'mh'}, optional
        After the MAP fit, sample every pixel's posterior (``lucijax.fit.bayes``): the
        maps then hold posterior medians, half 16-84 % widths as ``*_ERR``, and
        ``RHAT_MAX``, ``ESS_MIN`` (``LOGZ`` for 'nested').
    bayes_settings : lucijax.fit.bayes.BayesSettings, optional
    bayes_samples : path, optional
        Write every pixel's samples to this HDF5 file.
    bayes_components : bool
        With ``bayes='nested'``: fit one and two kinematic components per pixel and choose
        by evidence (``N_COMPONENTS``, ``LOGZ_1COMP``, ``LOGZ_2COMP``; second-component
        maps ``{LINE}_2_...``).

    Returns
    -------
    FitResult
    """
    own = not hasattr(cube, "read_spectra")
    cube_obj = _open_cube(cube) if own else cube
    try:
        if isinstance(region, str):
            region = parse_region(region)
        if isinstance(window, str):
            window = parse_window(window)
        if isinstance(noise_window, str):
            noise_window = parse_window(noise_window, "noise window")
        nx, ny, _ = cube_obj.shape
        pixel_mask = getattr(cube_obj, "pixel_mask", None)
        if mask is not None:
            from lucijax.regions import mask_bounding_box, read_mask

            full = read_mask(mask, (ny, nx), cube_obj.header.wcs)
            region = region if region is not None else mask_bounding_box(full)
        if background is not None:
            from lucijax.regions import BinnedCube

            cube_obj = BinnedCube(cube_obj, 1, background=background, close_base=own)
        region = tuple(region) if region is not None else (0, nx, 0, ny)
        if mask is not None:
            pixel_mask = full.T[region[0]:region[1], region[2]:region[3]]
        elif pixel_mask is not None:
            pixel_mask = pixel_mask[region[0]:region[1], region[2]:region[3]]
        plan = plan_fit(
            cube_obj.header, lines, model=model, redshift=redshift, window_cm1=window, sky_lines=sky_lines,
            groups=groups, tie_nii=tie_nii, tie_oiii=tie_oiii, continuum_order=continuum_order,
            continuum_spline=continuum_spline, settings=settings, mdn=mdn, flambda_weights=flambda_weights,
            noise_window_cm1=noise_window,
        )
        if int(components) > 1:
            from lucijax.fit.components import ComponentSettings, plan_components

            plan = plan_components(plan, ComponentSettings(int(components), float(min_separation_kms)))
        if freeze is not None:
            raw = _fit_frozen(cube_obj, plan, freeze, region, pixel_mask, batch_size, progress)
        else:
            raw = fit_region(cube_obj, plan, region, batch_size=batch_size, block=block_size, progress=progress,
                             checkpoint_dir=checkpoint_dir, devices=devices, pixel_mask=pixel_mask)
        if bayes:
            from lucijax.fit.bayes import bayes_region

            if int(components) > 1 or freeze is not None:
                raise ValueError("bayes= works with one component and no freeze (use bayes_components=True)")
            raw = bayes_region(cube_obj, plan, region, raw, bayes, bayes_settings, components=bayes_components,
                               samples_path=bayes_samples, progress=progress)
        maps, units = build_maps(raw, plan)
        if bayes:
            from lucijax.fit.bayes import add_bayes_maps

            add_bayes_maps(maps, units, raw, plan)
        wcs = region_wcs(cube_obj.header.wcs, region) if cube_obj.header.wcs is not None else None
        return FitResult(maps, units, wcs, region, plan, str(getattr(cube_obj, "path", "")),
                         bool(cube_obj.is_single_spectrum), raw)
    finally:
        if own:
            cube_obj.close()


def _fit_frozen(cube_obj, plan, freeze, region, pixel_mask, batch_size, progress) -> dict:
    """Freeze mode of :func:`fit_cube`: kinematics from maps, masked pixels left out."""
    from lucijax.fit.cube import MASKED_STATUS
    from lucijax.fit.freeze import fit_region_frozen, kinematic_maps

    nx, ny, _ = cube_obj.shape
    theta, theta_err = kinematic_maps(freeze, plan.line_set, region, (nx, ny))
    if plan.spec.has_broadening and np.all(np.isnan(theta[..., plan.spec.n_groups:])):
        raise ValueError(f"freeze maps have no broadening maps, which the {plan.spec.shape} model needs")
    if pixel_mask is not None:
        theta[~np.asarray(pixel_mask, bool)] = np.nan
    raw = fit_region_frozen(cube_obj, plan, theta, theta_err, region, batch_size=batch_size, progress=progress)
    if pixel_mask is not None:
        raw["status"][~np.asarray(pixel_mask, bool)] = MASKED_STATUS
    return raw


def fit_spectrum(path, lines=None, **kwargs) -> dict:
    """Fit one extracted spectrum; returns the JSON-ready summary (see ``fit.json``)."""
    return fit_cube(path, lines, batch_size=kwargs.pop("batch_size", 8), **kwargs).summary()


__all__ = ["open_cube", "fit_cube", "fit_spectrum", "FitResult", "FitSettings", "Status"]
