"""The cube driver: the only place that knows about chunks, padding and progress.

``plan_fit`` turns a cube header and the user's choices (lines, model, window, redshift)
into a :class:`FitPlan` (the static line model on the fit window, the jitted batch
fitter); ``fit_region`` streams pixel blocks from the file, fits them in fixed-size
batches (one compilation) and assembles per-pixel arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lucijax import instrument
from lucijax.fit.map import FitSettings, PixelFit, Status, make_batch_fitter, make_network_fitter, start_templates
from lucijax.fit.noise import MIN_NOISE_CHANNELS, adopt_noise, window_noise
from lucijax.lines import LineSet, join_line_sets, make_line_set, sky_line_set
from lucijax.model import LineModel, ModelSpec, SpectralGrid, channel_weights

log = logging.getLogger(__name__)


#: STATUS of pixels left out by ``fit_region(pixel_mask=...)``: not fitted, maps NaN.
MASKED_STATUS = -1


class LineOutsideWindowError(ValueError):
    """A requested line cannot be observed inside the fit window."""


@dataclass
class FitPlan:
    """Everything static about a fit of one cube: built once, used for every chunk."""

    spec: ModelSpec
    settings: FitSettings
    window: np.ndarray  # channel indices of the fit window
    grid: SpectralGrid
    model: LineModel
    redshift: float
    fitter: object
    flux_unit: str
    #: Fitter started and bounded by the network (``fit(y, fwhm) -> (PixelFit, mean,
    #: sigma)``), used by :func:`fit_region` when set; ``None``: matched-filter start.
    network_fitter: object = None
    #: 'mdn', 'cnn' or None: which network starts the fit.
    network: str | None = None
    #: Noise window (cm-1) and its channel indices: each pixel's noise is measured there
    #: (:mod:`lucijax.fit.noise`); None: from the fit's line-free residuals.
    noise_window_cm1: tuple[float, float] | None = None
    noise_channels: np.ndarray | None = None
    #: 1 / relative noise of the noise window's channels (None: equal noise).
    noise_weight: np.ndarray | None = None

    @property
    def line_set(self) -> LineSet:
        return self.spec.line_set


def parse_region(text: str) -> tuple[int, int, int, int]:
    """'x0:x1,y0:y1' -> (x0, x1, y0, y1), 0-based, half-open (numpy slices)."""
    try:
        xs, ys = text.split(",")
        x0, x1 = (int(v) for v in xs.split(":"))
        y0, y1 = (int(v) for v in ys.split(":"))
    except ValueError as err:
        raise ValueError(f"cannot read region '{text}': expected x0:x1,y0:y1 (pixels, 0-based, end excluded)") from err
    return x0, x1, y0, y1


def parse_window(text: str, what: str = "window") -> tuple[float, float]:
    """'SMIN:SMAX' (cm^-1) -> (smin, smax); ``what`` names the window in errors."""
    try:
        smin, smax = (float(v) for v in text.split(":"))
    except ValueError as err:
        raise ValueError(f"cannot read {what} '{text}': expected SMIN:SMAX in cm-1, e.g. 14700:15400") from err
    if not smin < smax:
        raise ValueError(f"{what} '{text}': SMIN must be smaller than SMAX")
    return smin, smax


def pixel_fwhm_cm1(header, calib_map=None) -> np.ndarray | float:
    """Instrumental sinc FWHM of pixels: from the calibration laser map when there is one,
    else from the spectrum's own ``calib_coeff_orig``, else from ``axis_corr``."""
    if calib_map is not None:
        corr = instrument.corr_from_calib(calib_map, header.nm_laser)
    elif header.calib_coeff_orig is not None:
        corr = header.calib_coeff_orig
    else:
        corr = header.axis_corr
    return instrument.sinc_fwhm_cm1(header.step_nm, header.step_nb, header.zpd_index, corr)


def fit_window_channels(header, window_cm1=None, what: str = "fit window") -> np.ndarray:
    """Channel indices inside the fit window (default: the filter band); ``what`` names
    the window in the error message."""
    axis = header.axis_cm1
    if window_cm1 is None:
        if header.filter_name is None:
            log.warning("no filter name in the header: fitting the whole spectral axis")
            lo, hi = axis[0], axis[-1]
        else:
            lo, hi = instrument.get_filter(header.filter_name).band_cm1
    else:
        lo, hi = window_cm1
    idx = np.nonzero((axis >= lo) & (axis <= hi))[0]
    if idx.size < 10:
        raise ValueError(f"the {what} {lo:.1f}-{hi:.1f} cm-1 holds {idx.size} channels of the cube's axis "
                         f"({axis[0]:.1f}-{axis[-1]:.1f} cm-1): widen it")
    return idx


def plan_fit(
    header,
    lines=None,
    *,
    model: str = "sincgauss",
    redshift: float = 0.0,
    window_cm1=None,
    sky_lines=None,
    groups=None,
    tie_nii: bool = True,
    tie_oiii: bool = False,
    continuum_order: int = 0,
    continuum_spline: int = 0,
    settings: FitSettings | None = None,
    mdn: bool | str = False,
    flambda_weights: bool = True,
    noise_window_cm1=None,
) -> FitPlan:
    """Build the :class:`FitPlan` of a cube (see :func:`lucijax.fit_cube` for parameters).

    ``mdn``: True or 'mdn' starts and bounds every fit with the filter's shipped mixture
    density network (mean +- 3 sigma), 'cnn' starts it with the point-estimate network
    (bounds: the settings' ranges), False uses the matched-filter start. A filter without
    a shipped network falls back to the matched filter with a warning.

    ``flambda_weights``: weight the channels of flux-calibrated data by 1 / their relative
    noise, the per-channel ``flambda`` (see :meth:`~lucijax.io.header.CubeHeader.noise_shape`),
    normalised to the window's median channel (the NOISE map is that channel's noise); no
    effect on data in counts or with a scalar ``flambda``.

    ``noise_window_cm1``: (min, max) in observed cm^-1 of a line-free window (e.g. outside
    the filter band) where each pixel's noise is measured (:mod:`lucijax.fit.noise`);
    None: the noise comes from the fit's line-free residuals.
    """
    settings = settings or FitSettings()
    network = {True: "mdn", False: None, None: None}.get(mdn, mdn)
    if network not in (None, "mdn", "cnn"):
        raise ValueError(f"mdn must be True, False, 'mdn' or 'cnn', not {mdn!r}")
    window = fit_window_channels(header, window_cm1)
    axis_obs = header.axis_cm1[window]
    full_shape = header.noise_shape() if flambda_weights else None
    noise_shape = None
    if full_shape is not None and np.any(np.isfinite(full_shape[window])):
        median_shape = np.nanmedian(full_shape[window])  # relative to the median channel of the window
        noise_shape = full_shape[window] / median_shape
    noise_channels = noise_weight = None
    if noise_window_cm1 is not None:
        noise_window_cm1 = tuple(float(v) for v in noise_window_cm1)
        noise_channels = fit_window_channels(header, noise_window_cm1, "noise window")
        if np.intersect1d(noise_channels, window).size:
            log.warning("the noise window %.1f-%.1f cm-1 overlaps the fit window %.1f-%.1f cm-1: make sure it "
                        "holds no line and no continuum slope", *noise_window_cm1, axis_obs[0], axis_obs[-1])
        if noise_shape is not None:  # the same weights as the fit's channels
            noise_weight = channel_weights(full_shape[noise_channels] / median_shape)
    typical_fwhm = float(np.median(np.atleast_1d(pixel_fwhm_cm1(header))))
    if sky_lines is not None:
        line_set = sky_line_set(sky_lines, (axis_obs[0] * (1 + redshift), axis_obs[-1] * (1 + redshift)), typical_fwhm * (1 + redshift))
        if lines:  # emission lines in front of the sky: their own kinematic groups after the sky's
            line_set = join_line_sets(line_set, make_line_set(lines, groups, tie_nii=tie_nii, tie_oiii=tie_oiii))
    else:
        if not lines:
            raise ValueError("no lines to fit: give --lines (e.g. Halpha NII6583 NII6548) or --sky-lines FILE")
        line_set = make_line_set(lines, groups, tie_nii=tie_nii, tie_oiii=tie_oiii)
    # every line must be observable inside the window over the velocity range
    lo_obs, hi_obs = axis_obs[0], axis_obs[-1]
    for name, rest_nm in zip(line_set.names, line_set.rest_nm):
        pos = 1e7 / rest_nm / (1 + redshift)
        if not lo_obs < pos < hi_obs:
            raise LineOutsideWindowError(
                f"line {name} ({rest_nm} nm, expected at {pos:.1f} cm-1 for redshift {redshift}) falls outside "
                f"the fit window {lo_obs:.1f}-{hi_obs:.1f} cm-1"
                + (f" of filter {header.filter_name}" if header.filter_name and window_cm1 is None else "")
            )
    spec = ModelSpec(line_set, model, continuum_order, continuum_spline)
    if network is not None and sky_lines is not None:
        network = None  # the networks know emission lines, not the OH sky spectrum
    if network is not None:
        from lucijax.mdn import available_filters

        filt = (header.filter_name or "").upper()
        if filt not in available_filters(mdn=network == "mdn"):
            log.warning("no shipped %s network for filter %s: the fit starts from the matched filter",
                        network.upper(), header.filter_name)
            network = None
    shape_bytes = b"" if noise_shape is None else noise_shape.tobytes()
    key = (spec, settings, axis_obs.tobytes(), float(redshift), typical_fwhm, header.flux_unit, network, shape_bytes)
    plan = _PLANS.get(key)
    if plan is None:  # one traced and compiled fitter per fit set-up, reused by later calls
        axis_rest = axis_obs * (1.0 + redshift)
        ref = float(np.mean(axis_rest))
        grid = SpectralGrid(axis_rest - ref, ref, redshift, noise_shape)
        lm = LineModel(spec, grid)
        templates, velocities = start_templates(lm, typical_fwhm * (1 + redshift), settings)
        # names everything the traced programs depend on (see lucijax.fit.programs)
        program_key = "\n".join([repr(spec), repr(settings), hashlib.sha256(axis_obs.tobytes()).hexdigest(),
                                  repr(float(redshift)), repr(typical_fwhm), hashlib.sha256(shape_bytes).hexdigest()])
        fitter = make_batch_fitter(lm, settings, templates, velocities, key=program_key)
        network_fitter = None
        if network is not None:
            from lucijax.mdn import load_predictor

            predict = load_predictor(header.filter_name.upper(), axis_obs, redshift, mdn=network == "mdn")
            reference = predict.config["recipe"].lines[0]
            if reference in line_set.names:
                network_fitter = make_network_fitter(lm, settings, predict, templates, velocities,
                                                     key=f"{program_key}\n{network} {predict.weights_digest}")
            else:
                log.warning("the %s network of %s was trained on spectra led by %s, which is not fitted: "
                            "the fit starts from the matched filter", network.upper(), header.filter_name, reference)
                network = None
        plan = FitPlan(spec, settings, window, grid, lm, float(redshift), fitter, header.flux_unit,
                       network_fitter, network)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = plan
    if noise_channels is not None:  # the fitter does not depend on it: the cached plan, with it
        plan = dataclasses.replace(plan, noise_window_cm1=noise_window_cm1, noise_channels=noise_channels,
                                   noise_weight=noise_weight)
    return plan


_PLANS: dict = {}
_MAX_PLANS = 8


def _blocks(region, block):
    x0, x1, y0, y1 = region
    for bx in range(x0, x1, block):
        for by in range(y0, y1, block):
            yield bx, min(bx + block, x1), by, min(by + block, y1)


def _fingerprint(cube, plan: FitPlan, region, block: int, mask=None) -> str:
    """What makes block results reusable: the same file, region, blocks and fit."""
    desc = json.dumps({
        "file": os.path.abspath(getattr(cube, "path", "")),
        "shape": list(cube.shape),
        "region": list(region),
        "block": block,
        "spec": repr(plan.spec),
        "settings": repr(plan.settings),
        "window": [int(plan.window[0]), int(plan.window[-1]), int(plan.window.size)],
        "redshift": plan.redshift,
        "network": plan.network,
        "noise_window": plan.noise_window_cm1,
        "mask": None if mask is None else hashlib.sha256(np.packbits(mask).tobytes()).hexdigest(),
    }, sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


class BlockCheckpoint:
    """Results of finished blocks on disk, one ``.npz`` per block, written atomically, so a
    run killed at any point and started again computes only the missing blocks."""

    def __init__(self, folder, fingerprint: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = self.folder / "fingerprint.txt"
        if stamp.exists() and stamp.read_text().strip() != fingerprint:
            stale = list(self.folder.glob("block_*.npz"))
            log.warning("checkpoint folder %s holds results of another fit: %d stale blocks removed", folder, len(stale))
            for f in stale:
                f.unlink()
        stamp.write_text(fingerprint)

    def _path(self, bx0: int, by0: int) -> Path:
        return self.folder / f"block_{bx0:05d}_{by0:05d}.npz"

    def has(self, bx0: int, by0: int) -> bool:
        return self._path(bx0, by0).exists()

    def save(self, bx0: int, by0: int, arrays: dict) -> None:
        final = self._path(bx0, by0)
        tmp = final.with_name(f".{final.stem}.tmp.npz")  # not matched by block_*.npz
        np.savez(tmp, **arrays)
        os.replace(tmp, final)

    def load(self, bx0: int, by0: int) -> dict:
        with np.load(self._path(bx0, by0)) as z:
            return {k: z[k] for k in z.files}


def default_batch_size() -> int:
    """Spectra per compiled batch when none is given: 64 on CPU (a batch's working arrays
    stay in cache, and the per-core devices interleave; measured fastest on 2 cores among
    64, 128 and 256), 4096 on an accelerator (which needs wide batches to fill it)."""
    import jax

    return 64 if jax.default_backend() == "cpu" else 4096


def fit_devices(devices=None) -> list:
    """The devices batches are spread over (default: every local device)."""
    import jax

    return list(devices) if devices is not None else jax.local_devices()


def _compile_for_every_device(fn, n_channels: int, batch_size: int, devs) -> None:
    """Run one all-NaN batch on every device at once. Each device gets its own executable
    (compiled, or loaded from the persistent cache); from threads, the devices'
    compilations overlap instead of running one after the other."""
    import jax

    y = np.full((batch_size, n_channels), np.nan, np.float32)
    f = np.ones(batch_size, np.float32)

    def run(dev):
        jax.block_until_ready(fn(jax.device_put(y, dev), jax.device_put(f, dev)))

    with ThreadPoolExecutor(max_workers=len(devs)) as pool:
        list(pool.map(run, devs))


def fit_region(cube, plan: FitPlan, region=None, *, batch_size: int | None = None, block: int = 64, progress: bool = True,
               checkpoint_dir=None, devices=None, pixel_mask=None) -> dict[str, np.ndarray]:
    """Fit every pixel of ``region`` (x0, x1, y0, y1) of ``cube``.

    Returns the :class:`PixelFit` fields as numpy arrays indexed ``[x - x0, y - y0, ...]``
    plus ``fwhm_cm1``. Pixels are read in ``block`` x ``block`` slabs (the next slab is read
    while the current one computes) and fitted in batches of ``batch_size`` (the last one
    padded with NaN spectra), so every batch reuses one compiled program. With
    ``checkpoint_dir``, each finished block is saved there and a rerun of the same fit
    computes only the missing blocks. Batches are split over ``devices`` (default: every
    local device); ``batch_size`` defaults to :func:`default_batch_size`. With
    ``pixel_mask`` (bool ``[x - x0, y - y0]``), only its pixels are read into batches and
    fitted; the others are NaN with ``status`` = ``MASKED_STATUS``.
    """
    nx, ny, _ = cube.shape
    region = region or (0, nx, 0, ny)
    x0, x1, y0, y1 = region
    if not (0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny):
        raise ValueError(f"region x {x0}:{x1}, y {y0}:{y1} is not inside the cube ({nx} x {ny} pixels)")
    sel = None
    if pixel_mask is not None:
        sel = np.asarray(pixel_mask, bool)
        if sel.shape != (x1 - x0, y1 - y0):
            raise ValueError(f"pixel_mask has shape {sel.shape}, expected [x, y] = {(x1 - x0, y1 - y0)} of the region")
        if not sel.any():
            raise ValueError("the mask selects no pixel of the region")

    def _sel(b):  # flat indices of the pixels of block b to fit (None: all)
        return None if sel is None else np.flatnonzero(sel[b[0] - x0 : b[1] - x0, b[2] - y0 : b[3] - y0])

    def _count(b):
        return (b[1] - b[0]) * (b[3] - b[2]) if sel is None else int(_sel(b).size)

    n_pix = (x1 - x0) * (y1 - y0) if sel is None else int(sel.sum())
    devs = fit_devices(devices)
    batch_size = max(1, min(int(batch_size or default_batch_size()), n_pix))  # one spectrum is not padded
    ckpt = BlockCheckpoint(checkpoint_dir, _fingerprint(cube, plan, region, block, sel)) if checkpoint_dir else None

    blocks = [b for b in _blocks(region, block) if _count(b) > 0]
    todo = [b for b in blocks if ckpt is None or not ckpt.has(b[0], b[2])]
    done_pix = n_pix - sum(_count(b) for b in todo)
    bar = tqdm(total=n_pix, initial=done_pix, unit="spectra", desc="fitting", smoothing=0.1,
               disable=not progress or n_pix < 2 * batch_size)

    def read(b):  # (spectra on the window, fwhm, window noise or None) of the block's pixels
        spectra, fwhm, noise = read_block(cube, plan, b)
        idx = _sel(b)
        return (spectra, fwhm, noise) if idx is None else (spectra[idx], fwhm[idx], None if noise is None else noise[idx])

    def run_batch(y, f):  # (PixelFit,) or (PixelFit, network mean, network sigma)
        return plan.network_fitter(y, f) if plan.network_fitter is not None else (plan.fitter(y, f),)

    def fit_block(flat, fwhm_flat, noise_flat):
        pending = []
        for i in range(0, flat.shape[0], batch_size):  # dispatch every batch, then gather
            y = flat[i : i + batch_size]
            f = fwhm_flat[i : i + batch_size]
            n = y.shape[0]
            if n < batch_size:  # pad: same compiled shape for every batch
                y = np.concatenate([y, np.full((batch_size - n, y.shape[1]), np.nan, y.dtype)])
                f = np.concatenate([f, np.full(batch_size - n, f[0])])
            if len(devs) > 1:  # round robin: every device runs the same compiled batch
                import jax

                dev = devs[(i // batch_size) % len(devs)]
                y, f = jax.device_put(y, dev), jax.device_put(f, dev)
            pending.append((n, run_batch(y, f)))
        results = []
        for n, (res, *net) in pending:
            r = {k: np.asarray(v)[:n] for k, v in zip(PixelFit._fields, res)}
            if net:  # the network's posterior: [velocity, broadening] mean and sigma
                r["mdn_mean"], r["mdn_sigma"] = (np.asarray(a)[:n] for a in net)
            results.append(r)
            bar.update(n)
        merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
        merged["fwhm_cm1"] = fwhm_flat.astype(np.float32)
        if noise_flat is not None:
            kept[0] += adopt_noise(merged, noise_flat)
        return merged

    out: dict[str, np.ndarray] = {}
    kept = [0]  # fitted pixels without a noise-window noise

    def place(b, merged):
        bx0, bx1, by0, by1 = b
        idx = _sel(b)
        for k, v in merged.items():
            fill = np.nan if v.dtype.kind == "f" else MASKED_STATUS
            if idx is not None:  # scatter the fitted pixels; the others stay masked
                full = np.full(((bx1 - bx0) * (by1 - by0),) + v.shape[1:], fill, v.dtype)
                full[idx] = v
                v = full
            v = v.reshape((bx1 - bx0, by1 - by0) + v.shape[1:])
            if k not in out:
                out[k] = np.full((x1 - x0, y1 - y0) + v.shape[2:], fill, v.dtype)
            out[k][bx0 - x0 : bx1 - x0, by0 - y0 : by1 - y0] = v

    n_batches = sum(-(-_count(b) // batch_size) for b in todo)
    if len(devs) > 1 and n_batches > 1:
        _compile_for_every_device(run_batch, plan.window.size, batch_size, devs)

    with ThreadPoolExecutor(max_workers=1) as reader:
        future = reader.submit(read, todo[0]) if todo else None
        for i, b in enumerate(todo):
            flat, fwhm_flat, noise_flat = future.result()
            if i + 1 < len(todo):
                future = reader.submit(read, todo[i + 1])  # overlaps with the fit below
            merged = fit_block(flat, fwhm_flat, noise_flat)
            if ckpt is not None:
                ckpt.save(b[0], b[2], merged)
            else:
                place(b, merged)
    bar.close()
    warn_own_noise(kept[0], plan)
    if ckpt is not None:
        for b in blocks:
            place(b, ckpt.load(b[0], b[2]))
    return out


def read_block(cube, plan: FitPlan, block) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pixels of ``block`` (bx0, bx1, by0, by1), flattened x-major: their spectra on the fit
    window (n, n_channels), sinc FWHM in the de-redshifted frame (n,) and, with a noise
    window in the plan, their noise measured there (n,), else None."""
    bx0, bx1, by0, by1 = block
    full = cube.read_spectra(bx0, bx1, by0, by1)
    spectra = full[..., plan.window]
    fwhm = np.broadcast_to(pixel_fwhm_cm1(cube.header, cube.read_calib_map(bx0, bx1, by0, by1)), spectra.shape[:2])
    noise = None
    if plan.noise_channels is not None:
        noise = window_noise(full[..., plan.noise_channels], plan.noise_weight).reshape(-1)
    return (spectra.reshape(-1, spectra.shape[-1]), np.asarray(fwhm, np.float64).reshape(-1) * (1.0 + plan.redshift),
            noise)


def warn_own_noise(n_pixels: int, plan: FitPlan) -> None:
    """Warn that ``n_pixels`` fitted pixels had too few usable channels in the noise window."""
    if n_pixels:
        log.warning("%d pixel(s) have fewer than %d usable channels in the noise window %.1f-%.1f cm-1: "
                    "their noise comes from the fit's residuals", n_pixels, MIN_NOISE_CHANNELS, *plan.noise_window_cm1)


__all__ = ["FitPlan", "plan_fit", "fit_region", "parse_region", "parse_window", "Status", "LineOutsideWindowError",
           "MASKED_STATUS"]
