"""Signal-to-noise maps and deep images of a cube, streamed block by block.

The S/N of a spectrum compares a **line window** (where the filter's main lines fall) with
a **noise window** (line-free channels of the same filter):

* continuum = median of the noise window, subtracted from the spectrum;
* noise = robust standard deviation (1.4826 x median absolute deviation) of the noise
  window;
* peak S/N = max(spectrum - continuum) in the line window / noise (the definition of the
  simulator's SNR: brightest line amplitude over noise sigma);
* integrated signal = sum(spectrum - continuum) over the line window, with noise
  ``noise * sqrt(n_line_channels)``: both add up over pixels (Voronoi binning uses them).

Default windows are rest-frame air wavelengths (nm) per filter, shifted by ``1 + z``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from lucijax.engine import Execution, map_pixels
from lucijax.io.maps import write_maps_fits
from lucijax.io.masks import parse_box
from lucijax.io.views import Cutout
from lucijax.io.wcs import region_wcs
from lucijax.program import Program

__all__ = ["SNR_WINDOWS_NM", "snr_windows_cm1", "signal_noise", "SNRMaps", "signal_noise_maps", "deep_image",
           "snr_program"]

#: Rest-frame (line window, noise window) in nm per filter. SN1: [OII]3726,3729 / between
#: H10 379.8 and H9 383.5 nm; SN2: Hbeta to [OIII]5007 / 503.5-512 nm; SN3: [NII]6548 to
#: [NII]6583 with Halpha / 660-666.5 nm (below HeI 667.8 and [SII]6716).
SNR_WINDOWS_NM = {
    "SN1": ((371.0, 374.5), (380.5, 383.0)),
    "SN2": ((484.5, 502.0), (503.5, 512.0)),
    "SN3": ((654.0, 659.0), (660.0, 666.5)),
}


def snr_windows_cm1(filter_name, redshift: float = 0.0, line_window_cm1=None, noise_window_cm1=None):
    """(line window, noise window) in observed cm^-1, each ``(min, max)``.

    Explicit windows win; otherwise the filter's defaults of :data:`SNR_WINDOWS_NM`
    shifted to ``lambda_rest * (1 + z)``.
    """
    if line_window_cm1 is not None and noise_window_cm1 is not None:
        return tuple(sorted(line_window_cm1)), tuple(sorted(noise_window_cm1))
    if filter_name not in SNR_WINDOWS_NM:
        raise ValueError(f"no default S/N windows for filter {filter_name}: give line_window_cm1 and "
                         f"noise_window_cm1 (known filters: {', '.join(SNR_WINDOWS_NM)})")
    line_nm, noise_nm = SNR_WINDOWS_NM[filter_name]

    def to_cm1(w):
        return tuple(sorted(1e7 / (np.asarray(w) * (1.0 + redshift))))

    return (tuple(sorted(line_window_cm1)) if line_window_cm1 is not None else to_cm1(line_nm),
            tuple(sorted(noise_window_cm1)) if noise_window_cm1 is not None else to_cm1(noise_nm))


def _channels(axis, window, what):
    idx = np.flatnonzero((axis >= window[0]) & (axis <= window[1]))
    if idx.size < 3:
        raise ValueError(f"the {what} window {window[0]:.1f}-{window[1]:.1f} cm-1 holds {idx.size} channels of the "
                         f"cube's axis ({axis[0]:.1f}-{axis[-1]:.1f} cm-1)")
    return idx


def signal_noise(spectra, line_channels, noise_channels) -> dict[str, np.ndarray]:
    """Continuum, noise, peak and integrated line signal of spectra ``(..., n_channels)``.

    Returns a dict of arrays of shape ``spectra.shape[:-1]``: ``continuum``, ``noise``,
    ``peak``, ``integrated``, ``integrated_noise``, ``snr`` (peak / noise) and
    ``snr_integrated``. NaN channels are ignored; spectra without a finite noise get NaN.
    """
    s = np.asarray(spectra, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN spectra give NaN
        nz = s[..., noise_channels]
        cont = np.nanmedian(nz, axis=-1)
        noise = 1.4826 * np.nanmedian(np.abs(nz - cont[..., None]), axis=-1)
        line = s[..., line_channels] - cont[..., None]
        n_line = np.sum(np.isfinite(line), axis=-1)
        peak = np.nanmax(line, axis=-1)
        integ = np.nansum(line, axis=-1)
        noise = np.where(noise > 0, noise, np.nan)
        integ_noise = noise * np.sqrt(n_line)
        integ = np.where(n_line > 0, integ, np.nan)
        return {
            "continuum": cont,
            "noise": noise,
            "peak": peak,
            "integrated": integ,
            "integrated_noise": integ_noise,
            "snr": peak / noise,
            "snr_integrated": integ / integ_noise,
        }


@dataclass
class SNRMaps:
    """S/N maps of a pixel box, FITS-ordered ``[y, x]`` (see :func:`signal_noise`)."""

    maps: dict[str, np.ndarray]
    region: tuple
    line_window_cm1: tuple
    noise_window_cm1: tuple
    flux_unit: str = ""
    wcs: object = field(default=None, repr=False)

    @property
    def snr(self) -> np.ndarray:
        """Peak S/N map."""
        return self.maps["SNR"]

    def write(self, path) -> None:
        """Write every map to one FITS file (one HDU each, with the region's WCS)."""
        u = self.flux_unit
        units = {"SNR": "", "SNR_INTEGRATED": "", "CONTINUUM": u, "NOISE": u, "PEAK": u,
                 "INTEGRATED": f"{u} channel", "INTEGRATED_NOISE": f"{u} channel"}
        extra = {"LINEWIN": "{:.2f}:{:.2f}".format(*self.line_window_cm1),
                 "NOISEWIN": "{:.2f}:{:.2f}".format(*self.noise_window_cm1),
                 "REGION": "{}:{},{}:{}".format(*self.region)}
        write_maps_fits(path, self.maps, units, wcs2d=self.wcs, header_extra=extra)


_NAMES = {"snr": "SNR", "snr_integrated": "SNR_INTEGRATED", "peak": "PEAK", "integrated": "INTEGRATED",
          "integrated_noise": "INTEGRATED_NOISE", "continuum": "CONTINUUM", "noise": "NOISE"}


def snr_program(line_channels, noise_channels) -> Program:
    """The S/N of each spectrum as a host (numpy) program for the engine."""
    def prepare(block):
        return {"spectra": block.spectra}

    def host(inputs):
        res = signal_noise(inputs["spectra"], line_channels, noise_channels)
        return {k: np.asarray(v, np.float32) for k, v in res.items()}

    key = f"snr {np.asarray(line_channels).tolist()} {np.asarray(noise_channels).tolist()}"
    return Program(name="S/N map", key=key, prepare=prepare, host=host, batch_size=4096, stored=False)


def signal_noise_maps(cube, region=None, *, redshift: float = 0.0, line_window_cm1=None, noise_window_cm1=None,
                      block: int = 64, progress: bool = False) -> SNRMaps:
    """S/N, continuum, noise and line signal maps of a pixel box of a cube.

    Parameters
    ----------
    cube : SpectralCube
    region : (x0, x1, y0, y1) or 'x0:x1,y0:y1', optional
        Default: the whole cube.
    redshift : float
        Shifts the default windows.
    line_window_cm1, noise_window_cm1 : (min, max), optional
        Windows in observed cm^-1 (default: per filter, :data:`SNR_WINDOWS_NM`).

    Returns
    -------
    SNRMaps
        Maps ``SNR`` (peak), ``SNR_INTEGRATED``, ``PEAK``, ``INTEGRATED``,
        ``INTEGRATED_NOISE``, ``CONTINUUM``, ``NOISE``.
    """
    nx, ny, _ = cube.shape
    x0, x1, y0, y1 = parse_box(region, (nx, ny))
    axis = cube.header.axis_cm1
    lw, nw = snr_windows_cm1(cube.header.filter_name, redshift, line_window_cm1, noise_window_cm1)
    li, ni = _channels(axis, lw, "line"), _channels(axis, nw, "noise")
    view = Cutout(cube, (x0, x1, y0, y1))
    view.pixel_mask = None  # every pixel of the box
    out = map_pixels(view, snr_program(li, ni), Execution(block_size=block, progress=progress)).values
    maps = {name: np.ascontiguousarray(np.asarray(out[k], np.float32).T) for k, name in _NAMES.items()}
    wcs = region_wcs(cube.header.wcs, (x0, x1, y0, y1)) if cube.header.wcs is not None else None
    return SNRMaps(maps, (x0, x1, y0, y1), lw, nw, cube.header.flux_unit, wcs)


def deep_image(cube, region=None, *, use_stored: bool = True, block: int = 64, progress: bool = False) -> np.ndarray:
    """Deep image ``[y, x]`` of a pixel box.

    The cube's stored deep frame (ORB ``deep_frame``, the sum of the interferogram
    frames) when there is one and ``use_stored``; otherwise the sum of the spectra over
    all channels (NaN channels skipped), in the cube's flux unit x channel.
    """
    nx, ny, _ = cube.shape
    x0, x1, y0, y1 = parse_box(region, (nx, ny))
    if use_stored:
        stored = cube.read_deep_frame(x0, x1, y0, y1)
        if stored is not None:
            return np.ascontiguousarray(np.asarray(stored, np.float64).T)
    program = Program(name="deep image", key="deep image", prepare=lambda b: {"spectra": b.spectra},
                      host=lambda inp: {"deep": np.nansum(inp["spectra"], axis=-1, dtype=np.float64)}, batch_size=4096,
                      stored=False)
    view = Cutout(cube, (x0, x1, y0, y1))
    view.pixel_mask = None
    out = map_pixels(view, program, Execution(block_size=block, progress=progress)).values
    return np.ascontiguousarray(np.asarray(out["deep"], np.float64).T)
