"""Synthetic SITELLE spectra and cubes with known truth (tests, demo, benchmarks, training).

Spectra are drawn from the same line model the fit uses (:mod:`lucijax.model`) on the real
ORB spectral axis of a filter, with white Gaussian noise of known sigma. Cubes are written
in the ORB HDF5 layout (level 2 in erg/cm^2/s/A, or level 3 in counts with ``flambda``)
so that every reader and the command line are exercised on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.io.orb import _attr_value, write_orb_cube
from lucijax.model import LineModel, ModelSpec, SpectralGrid
from lucijax.physics import instrument
from lucijax.physics.lines import LineSet, make_line_set
from lucijax.physics.lineshapes import get_model
from lucijax.solvers.components import component_line_set

#: Interferometer set-ups of real SITELLE cubes (step nm, order, steps, zpd index): SN3 is
#: the M31 cube of ../shared/data (R ~ 4700 at Halpha).
SETUPS = {
    "SN3": dict(step_nm=2943.025792, order=8, step_nb=840, zpd_index=168),
    "SN2": dict(step_nm=1680.0, order=6, step_nb=400, zpd_index=80),
    "SN1": dict(step_nm=1647.0, order=8, step_nb=300, zpd_index=60),
    # typical set-ups of the C filters (R at the networks' reference lines: C1 ~ 700 at
    # Hgamma, C2 ~ 1500 at HeI5876, C3 ~ 1800 at Hbeta z=0.08, C4 ~ 2600 at Halpha z=0.235)
    "C1": dict(step_nm=570.0, order=2, step_nb=400, zpd_index=80),
    "C2": dict(step_nm=1680.0, order=5, step_nb=400, zpd_index=80),
    "C3": dict(step_nm=1785.0, order=6, step_nb=400, zpd_index=80),
    "C4": dict(step_nm=5271.5, order=12, step_nb=300, zpd_index=60),
}
NM_LASER = 543.5
AXIS_CORR = 1.0374712062298759

DEFAULT_LINES = ("Halpha", "NII6583", "NII6548", "SII6716", "SII6731")


@dataclass
class SyntheticCube:
    """A synthetic cube and its truth. ``data`` is indexed [x, y, channel] like ORB files;
    truth maps are FITS-ordered [y, x]."""

    data: np.ndarray
    attrs: dict
    calib_map: np.ndarray
    axis_cm1: np.ndarray
    fwhm_cm1: np.ndarray  # [x, y]
    truth: dict = field(default_factory=dict)  # name -> [y, x] (per line: (L, y, x))
    line_set: LineSet | None = None
    model: str = "sincgauss"

    def write(self, path, level: int = 2, exposure_time: float = 15.0):
        """Write the cube as an ORB HDF5 file (level 2, or 3 in counts with flambda)."""
        attrs = dict(self.attrs)
        data = self.data
        if level == 3:
            flambda = float(attrs.get("flambda_sim", 1e-19))
            data = self.data / flambda * attrs["step_nb"] * exposure_time
            attrs.update(flambda=flambda, exposure_time=exposure_time, flux_calibration=True, level3=True)
        write_orb_cube(path, data.astype(np.float32), attrs, level=level, calib_map=self.calib_map)
        return path


def filter_header(filter_name: str = "SN3", axis_corr: float = AXIS_CORR) -> dict:
    """ORB root attributes of a cube taken with ``filter_name``."""
    setup = SETUPS[filter_name]
    axis = instrument.spectral_axis_cm1(setup["step_nm"], setup["order"], setup["step_nb"], axis_corr)
    return {
        "step": setup["step_nm"],
        "order": setup["order"],
        "step_nb": setup["step_nb"],
        "zpd_index": setup["zpd_index"],
        "nm_laser": NM_LASER,
        "axis_corr": axis_corr,
        "axis_min": float(axis[0]),
        "axis_step": float(axis[1] - axis[0]),
        "filter_name": filter_name,
        "apodization": 1.0,
        "wavenumber": True,
        "instrument": "sitelle",
        "object_name": "lucijax-synthetic",
        # a real celestial WCS (SITELLE: 0.32"/pixel)
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRVAL1": 10.684821844386,
        "CRVAL2": 41.268853142416,
        "CRPIX1": 1024.0,
        "CRPIX2": 1032.0,
        "CDELT1": -8.9e-05,
        "CDELT2": 8.9e-05,
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "RADESYS": "FK5",
        "EQUINOX": 2000.0,
    }


#: Spectra per compiled call of :func:`render_spectra` (bounds its memory).
RENDER_BATCH = 4096


def render_spectra(line_set: LineSet, model: str, axis_cm1, fwhm_cm1, velocity_kms, broadening_kms, amplitudes, continuum, redshift=0.0):
    """Noise-free spectra on ``axis_cm1`` for a batch of pixels.

    ``velocity_kms`` is (B, G), ``broadening_kms`` (B, n_broadening_groups), ``amplitudes`` (B, n_primary) peak
    amplitudes of the primary lines (tied lines follow their flux ratio), ``continuum``
    (B,), ``fwhm_cm1`` (B,). Evaluated by the fit's own line model (float32, positions
    relative to the band centre); the line shapes themselves are tested against
    brute-force convolutions.
    """
    spec = ModelSpec(line_set, model, 0)
    axis_rest = np.asarray(axis_cm1, np.float64) * (1.0 + redshift)
    ref = float(np.mean(axis_rest))
    lm = LineModel(spec, SpectralGrid(axis_rest - ref, ref, redshift))

    def one(v, b, amp, cont, fwhm):
        theta = jnp.concatenate([v, b]) if spec.has_broadening else v
        alpha = jnp.concatenate([amp, cont[None]])
        return lm.spectrum(theta, alpha, fwhm * (1.0 + redshift))

    render = jax.jit(jax.vmap(one))
    args = [np.asarray(a, np.float32) for a in (velocity_kms, broadening_kms, amplitudes, continuum, fwhm_cm1)]
    n = args[0].shape[0]
    # batches of at most RENDER_BATCH spectra (one compiled shape; the last batch is padded):
    # the sincgauss's intermediates take ~85 floats per channel and spectrum
    size = min(n, RENDER_BATCH)
    out = np.empty((n, axis_rest.size), np.float64)
    for i in range(0, n, size):
        part = [a[i : i + size] for a in args]
        m = part[0].shape[0]
        if m < size:
            part = [np.concatenate([a, np.repeat(a[-1:], size - m, axis=0)]) for a in part]
        out[i : i + m] = np.asarray(render(*part))[:m]
    return out


def make_cube(
    nx: int = 64,
    ny: int = 64,
    *,
    lines=DEFAULT_LINES,
    model: str = "sincgauss",
    filter_name: str = "SN3",
    snr_range=(3.0, 60.0),
    broadening_range_kms=(10.0, 80.0),
    velocity_range_kms=(-250.0, 250.0),
    noise: float = 1e-18,
    continuum_snr=(0.0, 2.0),
    calib_spread: float = 0.01,
    redshift: float = 0.0,
    seed: int = 0,
    velocity_kms=None,
    broadening_kms=None,
    line_fluxes_cm1=None,
    header_overrides=None,
    ratio_ranges=None,
    broadening_groups=None,
) -> SyntheticCube:
    """A synthetic cube with random kinematics per pixel and known truth.

    SNR = Halpha (first line) peak amplitude / noise sigma, log-uniform in ``snr_range``;
    other lines get realistic ratios to the first line: [NII]6583/Halpha in 0.1-0.6 (flux),
    [NII]6548 = [NII]6583/3, [SII] lines 0.05-0.3 each. The calibration laser map varies
    smoothly by +-``calib_spread`` (relative) across the field, so each pixel has its own
    instrumental FWHM. With ``redshift``, lines sit at ``rest * doppler(v) / (1 + z)`` and
    the truth fluxes (``*_FLUX_CM1``) are in the observed frame.

    Given fields replace the random draws (``[x, y]`` arrays): ``velocity_kms`` and
    ``ratio_ranges`` (line name -> (lo, hi)) replaces the uniform range of a line's flux
    ratio to the first line (e.g. ``{"OII3729": (0.35, 1.5)}``, the density-sensitive doublet).

    ``broadening_kms`` (every kinematic group), ``line_fluxes_cm1`` (line name -> observed
    flux of each primary line in cm^-1 units; tied lines follow their primary).
    ``header_overrides`` updates the header (e.g. another pointing: ``CRVAL1``, ``CDELT1``).

    ``broadening_groups``: broadening group of each line (one velocity, a broadening per
    group, drawn independently; see :class:`~lucijax.physics.lines.LineSet`); a given
    ``broadening_kms`` is then ``[x, y]`` (every group) or ``[x, y, n_broadening_groups]``,
    and the truth holds ``BROADENING_{b}`` of each group (``BROADENING``: group 0's).
    """
    rng = np.random.default_rng(seed)
    line_set = make_line_set(lines, broadening_groups=broadening_groups)
    spec = ModelSpec(line_set, model)
    header = filter_header(filter_name)
    header.update(header_overrides or {})
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]

    xs, ys = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    corr_orig = AXIS_CORR * (1.0 + calib_spread * (0.5 * (xs**2 + ys**2) - 0.5))
    calib_map = corr_orig * NM_LASER  # [x, y]
    # an apodized cube's lines are wider by its apodization coefficient (ORB's line width)
    fwhm = instrument.sinc_fwhm_cm1(header["step"], header["step_nb"], header["zpd_index"], corr_orig) \
        * float(header.get("apodization", 1.0))

    n = nx * ny
    G = line_set.n_groups
    B = line_set.n_broadening_groups if spec.has_broadening else G  # the sinc: zeros per group
    bgroups = list(line_set.broadening_of if spec.has_broadening else line_set.groups)
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n))
    velocity = rng.uniform(*velocity_range_kms, size=(n, G))
    broadening = rng.uniform(*broadening_range_kms, size=(n, B)) if spec.has_broadening else np.zeros((n, B))
    if velocity_kms is not None:
        velocity = np.repeat(np.asarray(velocity_kms, np.float64).reshape(n, 1), G, axis=1)
    if broadening_kms is not None and spec.has_broadening:
        given_b = np.asarray(broadening_kms, np.float64)
        if given_b.shape == (nx, ny, B):
            broadening = given_b.reshape(n, B)
        else:
            broadening = np.repeat(given_b.reshape(n, 1), B, axis=1)
    # flux ratios relative to the first line, then converted to primary amplitudes
    flux_ratio = np.ones((n, line_set.n_lines))
    for i, name in enumerate(line_set.names):
        if name.startswith("NII6583"):
            flux_ratio[:, i] = rng.uniform(0.1, 0.6, n)
        elif name.startswith("SII"):
            flux_ratio[:, i] = rng.uniform(0.05, 0.3, n)
        elif i > 0:
            flux_ratio[:, i] = rng.uniform(0.1, 0.5, n)
        if ratio_ranges and name in ratio_ranges and i > 0:
            flux_ratio[:, i] = rng.uniform(*ratio_ranges[name], n)
    ratio_cm1 = line_set.flux_ratio_cm1()
    for dep, prim, _ in line_set.ties:  # tied lines follow their primary, as in the model
        flux_ratio[:, dep] = ratio_cm1[dep] * flux_ratio[:, prim]
    amp_first = snr * noise
    # observed line positions: residual velocity on top of the redshift
    x0 = line_set.rest_cm1[None, :] * np.sqrt((1 - velocity[:, line_set.groups] / 299792.458) / (1 + velocity[:, line_set.groups] / 299792.458)) / (1.0 + redshift)
    sg = x0 * broadening[:, bgroups] / 299792.458

    _, flux_fn, _ = get_model(model)
    unit_flux = np.asarray(flux_fn(jnp.asarray(fwhm.reshape(n)[:, None]), jnp.asarray(sg)), np.float64)
    flux = amp_first[:, None] * unit_flux[:, :1] * flux_ratio
    if line_fluxes_cm1 is not None:
        for i, name in enumerate(line_set.names):
            if name in line_fluxes_cm1:
                flux[:, i] = np.asarray(line_fluxes_cm1[name], np.float64).reshape(n)
        for dep, prim, _ in line_set.ties:
            flux[:, dep] = ratio_cm1[dep] * flux[:, prim]
        snr = flux[:, 0] / unit_flux[:, 0] / noise
    prim = list(line_set.primary_lines)
    amp_prim = flux[:, prim] / unit_flux[:, prim]
    continuum = rng.uniform(*continuum_snr, n) * noise

    clean = render_spectra(line_set, model, axis, fwhm.reshape(n), velocity, broadening, amp_prim, continuum, redshift=redshift)
    data = clean + rng.normal(0.0, noise, clean.shape)
    data = data.reshape(nx, ny, -1)

    # line amplitudes of every line (tied ones included)
    amp_all = flux / unit_flux
    truth = {
        "VELOCITY": velocity[:, 0].reshape(nx, ny).T,
        "BROADENING": broadening[:, 0].reshape(nx, ny).T,
        "SNR": snr.reshape(nx, ny).T,
        "NOISE": np.full((ny, nx), noise),
        "CONTINUUM": continuum.reshape(nx, ny).T,
    }
    if line_set.broadening_groups is not None and spec.has_broadening:
        for b in range(B):
            truth[f"BROADENING_{b}"] = broadening[:, b].reshape(nx, ny).T
    for i, name in enumerate(line_set.names):
        truth[f"{name.upper()}_AMPLITUDE"] = amp_all[:, i].reshape(nx, ny).T
        truth[f"{name.upper()}_FLUX_CM1"] = flux[:, i].reshape(nx, ny).T
    header = dict(header)
    return SyntheticCube(
        data=data.astype(np.float32),
        attrs=header,
        calib_map=calib_map,
        axis_cm1=axis,
        fwhm_cm1=fwhm,
        truth=truth,
        line_set=line_set,
        model=model,
    )


def write_cube_streaming(path, nx: int, ny: int, *, slab: int = 64, seed: int = 0, progress: bool = True, **cube_kwargs):
    """Write a large synthetic ORB level-2 cube slab by slab (memory bounded by one slab).

    Each ``slab`` x ``ny`` column block is an independent :func:`make_cube` draw (seed
    ``seed + k``); truth is not kept. Used by the scale benchmarks (512 x 512 and
    1024 x 1024 x 842 cubes, 0.9 and 3.5 GB on disk).
    """
    import h5py
    from tqdm.auto import tqdm


    path = str(path)
    first = make_cube(min(slab, nx), ny, seed=seed, **cube_kwargs)
    nz = first.data.shape[-1]
    calib = np.empty((nx, ny))
    tmp = path + ".part"
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("data", shape=(nx, ny, nz), dtype=np.float32, chunks=(min(64, nx), min(64, ny), nz))
        for k, x0 in enumerate(tqdm(range(0, nx, slab), disable=not progress, desc="writing", unit="slab")):
            n = min(slab, nx - x0)
            syn = first if k == 0 and n == first.data.shape[0] else make_cube(n, ny, seed=seed + k, **cube_kwargs)
            ds[x0 : x0 + n] = syn.data
            calib[x0 : x0 + n] = syn.calib_map
        for key, value in first.attrs.items():
            if value is not None:
                f.attrs[key] = _attr_value(value)
        f.attrs["level2"] = True
        f.create_dataset("calib_map", data=calib)
    import os

    os.replace(tmp, path)
    return path


def simulate_components(n_pixels: int, *, lines=("Halpha", "NII6583", "NII6548"), model: str = "sincgauss",
                        n_components: int = 2, separation_kms: float = 150.0, snr_range=(20.0, 60.0),
                        broadening_range_kms=(10.0, 50.0), velocity_range_kms=(-200.0, 200.0), noise: float = 1.0,
                        filter_name: str = "SN3", seed: int = 0) -> dict:
    """Synthetic spectra of ``n_components`` components ``separation_kms`` apart (tests,
    benchmarks): returns a dict with ``spectra`` (B, n_channels of the filter band),
    ``fwhm_cm1`` (B,), ``axis_cm1``, ``line_set`` (the base set), ``window`` (channel
    indices of the band) and the truth ``velocity_kms``/``broadening_kms`` (B, C) and
    ``amplitude`` (B, C) of the first line of each component. The SNR of every component
    (first line peak / noise) is log-uniform in ``snr_range``; the other lines get ratios
    0.2-0.5 to the first (tied lines follow their tie).
    """
    rng = np.random.default_rng(seed)
    base = make_line_set(lines)
    ls = component_line_set(base, n_components, ordered=False)
    header = filter_header(filter_name)
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]
    band = instrument.get_filter(filter_name).band_cm1
    window = np.nonzero((axis >= band[0]) & (axis <= band[1]))[0]
    corr = AXIS_CORR * (1.0 + 0.01 * rng.uniform(-0.5, 0.5, n_pixels))
    fwhm = instrument.sinc_fwhm_cm1(header["step"], header["step_nb"], header["zpd_index"], corr)
    C = int(n_components)
    v1 = rng.uniform(*velocity_range_kms, n_pixels)
    velocity = v1[:, None] + separation_kms * np.arange(C)[None, :]
    broadening = rng.uniform(*broadening_range_kms, (n_pixels, C))
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), (n_pixels, C)))
    n_prim = len(base.primary_lines)
    ratio = np.ones((n_pixels, C, n_prim))
    ratio[:, :, 1:] = rng.uniform(0.2, 0.5, (n_pixels, C, n_prim - 1))
    amplitudes = (snr[:, :, None] * noise * ratio).reshape(n_pixels, C * n_prim)
    clean = render_spectra(ls, model, axis[window], fwhm, velocity, broadening, amplitudes, np.zeros(n_pixels))
    spectra = clean + rng.normal(0.0, noise, clean.shape)
    return {
        "spectra": spectra.astype(np.float32),
        "fwhm_cm1": np.asarray(fwhm, np.float64),
        "axis_cm1": axis,
        "window": window,
        "line_set": base,
        "velocity_kms": velocity,
        "broadening_kms": broadening,
        "amplitude": snr * noise,
        "noise": noise,
        "header": header,
    }


def disk_fields(
    size: int = 48,
    *,
    seed: int = 42,
    inclination_deg: float = 50.0,
    pa_deg: float = 35.0,
    vsys_kms: float = 80.0,
    vflat_kms: float = 180.0,
    r_turn: float = 0.08,
    r_disk: float = 0.4,
    disk_snr: float = 45.0,
    n_hii: int = 14,
    hii_snr=(8.0, 30.0),
    broadening_hii_kms: float = 18.0,
    broadening_dig_kms: float = 45.0,
    nii_ha_centre: float = 0.2,
    nii_ha_gradient: float = 0.12,
    dig_line_boost: float = 1.5,
) -> dict:
    """Per-pixel physics of an inclined rotating gas disk (``[y, x]`` maps, no spectra).

    The disk is centred on the field, its lengths are fractions of ``size``:

    - geometry: deprojected radius ``r`` of every pixel for an ``inclination_deg`` disk
      whose receding major axis points ``pa_deg`` from north (+y) through east (-x, the
      RA axis of the synthetic WCS decreases with x);
    - velocity: an arctan rotation curve ``vflat (2/pi) arctan(r / (r_turn size))``
      projected, ``vsys + V(r) sin(i) cos(phi)`` (``phi`` the azimuth from the major axis
      in the disk plane): antisymmetric about the centre, ``vsys`` on the minor axis;
    - Halpha surface brightness (flux) of the diffuse ionised gas (DIG), an exponential
      disk ``disk_snr exp(-r / (r_disk size))``, plus ``n_hii`` HII regions, Gaussian blobs
      of peak ``hii_snr`` (log-uniform) along two spiral arms. The brightness is in units of
      the flux of a Halpha line of peak amplitude 1 noise sigma at 30 km/s broadening, so
      it is about the peak S/N;
    - broadening: ``broadening_hii_kms`` in HII regions, ``broadening_dig_kms`` in the
      DIG (1.2 times that at the centre, 0.8 times far out), weighted by their share of the
      Halpha flux;
    - line ratios: [NII]6583/Halpha of HII regions ``nii_ha_centre + nii_ha_gradient
      r / (size / 2)`` (rises with radius), ``dig_line_boost`` times higher in the DIG;
      [SII]/Halpha 0.18 (HII) and 0.40 (DIG) with [SII]6716/6731 1.15 (HII) and 1.4 (DIG).

    Returns
    -------
    dict
        ``velocity``, ``broadening`` (km/s), ``brightness`` (Halpha, in the units above),
        ``ratio`` (line name -> flux ratio to Halpha for NII6583, SII6716, SII6731),
        ``radius`` (deprojected, pixels), ``hii_fraction`` (HII share of the Halpha flux),
        all ``[y, x]``.
    """
    rng = np.random.default_rng(seed)
    inc, pa = np.radians(inclination_deg), np.radians(pa_deg)
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - c, y - c
    # major-axis and minor-axis coordinates on the sky, then deprojected
    x_maj = -dx * np.sin(pa) + dy * np.cos(pa)
    y_min = dx * np.cos(pa) + dy * np.sin(pa)
    y_disk = y_min / np.cos(inc)
    radius = np.hypot(x_maj, y_disk)
    cos_phi = np.divide(x_maj, radius, out=np.zeros_like(radius), where=radius > 0)
    v_rot = vflat_kms * (2.0 / np.pi) * np.arctan(radius / (r_turn * size))
    velocity = vsys_kms + v_rot * np.sin(inc) * cos_phi

    dig = disk_snr * np.exp(-radius / (r_disk * size))
    # HII regions along two logarithmic spiral arms (pitch 20 deg), placed in the disk plane
    r_k = rng.uniform(0.12, 0.8, n_hii) * size / 2
    arm = rng.integers(0, 2, n_hii)
    phi_k = arm * np.pi + np.log(r_k / (0.1 * size)) / np.tan(np.radians(20.0)) + rng.normal(0, 0.15, n_hii)
    xm_k, yd_k = r_k * np.cos(phi_k), r_k * np.sin(phi_k)
    ym_k = yd_k * np.cos(inc)
    dx_k = -xm_k * np.sin(pa) + ym_k * np.cos(pa)  # back to the sky (inverse rotation)
    dy_k = xm_k * np.cos(pa) + ym_k * np.sin(pa)
    peak_k = np.exp(rng.uniform(*np.log(hii_snr), n_hii))
    sigma_k = np.maximum(rng.uniform(1.0, 2.0, n_hii) * size / 48, 0.6)
    hii = np.zeros_like(radius)
    for k in range(n_hii):
        hii += peak_k[k] * np.exp(-((dx - dx_k[k]) ** 2 + (dy - dy_k[k]) ** 2) / (2 * sigma_k[k] ** 2))
    brightness = dig + hii
    f_hii = hii / brightness

    b_dig = broadening_dig_kms * (0.8 + 0.4 * np.exp(-radius / (0.15 * size)))  # hotter towards the centre
    broadening = f_hii * broadening_hii_kms + (1 - f_hii) * b_dig
    nii_hii = nii_ha_centre + nii_ha_gradient * radius / (size / 2)
    sii_hii, sii_dig = 0.18, 0.40
    r67_hii, r67_dig = 1.15, 1.4
    sii6716 = f_hii * sii_hii * r67_hii / (1 + r67_hii) + (1 - f_hii) * sii_dig * r67_dig / (1 + r67_dig)
    sii6731 = f_hii * sii_hii / (1 + r67_hii) + (1 - f_hii) * sii_dig / (1 + r67_dig)
    ratio = {
        "NII6583": nii_hii * (f_hii + dig_line_boost * (1 - f_hii)),
        "SII6716": sii6716,
        "SII6731": sii6731,
    }
    return {"velocity": velocity, "broadening": broadening, "brightness": brightness, "ratio": ratio,
            "radius": radius, "hii_fraction": f_hii}


def make_disk_cube(size: int = 48, seed: int = 42, *, lines=DEFAULT_LINES, model: str = "sincgauss",
                   noise: float = 1e-18, **disk) -> SyntheticCube:
    """A synthetic SN3 cube of a rotating gas disk with HII regions (the demo's field).

    The per-pixel physics is :func:`disk_fields` (``disk``: its keyword arguments); the
    spectra are rendered by :func:`make_cube` from those fields, with its noise, calibration
    map and continuum draws. With the defaults the Halpha peak S/N runs from ~3 in the sky
    corners to ~65 on the brightest HII regions (median ~11, ~94 % of the field >= 5).

    Parameters
    ----------
    size : int
        Side of the square field in pixels.
    seed : int
        Seed of the HII regions and of the noise.
    lines : sequence of str
        Lines to render; ``Halpha`` first, then any of ``NII6583``, ``NII6548``
        (tied to ``NII6583``), ``SII6716``, ``SII6731``.
    model : str
        Line shape.
    noise : float
        Noise sigma per channel (erg/cm^2/s/A).
    **disk
        Keyword arguments of :func:`disk_fields` (inclination, PA, rotation curve, ...).

    Returns
    -------
    SyntheticCube
        With :func:`make_cube`'s truth (``VELOCITY``, ``BROADENING``, ``SNR``, line
        ``*_AMPLITUDE`` and ``*_FLUX_CM1``, ...) plus ``RADIUS`` (deprojected radius,
        pixels) and ``HII_FRACTION`` (HII regions' share of the Halpha flux).
    """
    if lines[0] != "Halpha":
        raise ValueError(f"the disk's first line must be Halpha, got {lines[0]!r}")
    f = disk_fields(size, seed=seed, **disk)
    line_set = make_line_set(lines)
    header = filter_header("SN3")
    # the flux of a unit-amplitude Halpha line at 30 km/s sets the brightness unit
    fwhm = instrument.sinc_fwhm_cm1(header["step"], header["step_nb"], header["zpd_index"], AXIS_CORR)
    x0 = line_set.rest_cm1[0]
    unit = float(get_model(model)[1](jnp.asarray(fwhm), jnp.asarray(x0 * 30.0 / 299792.458)))
    halpha = f["brightness"] * noise * unit
    fluxes = {"Halpha": halpha.T}
    fluxes.update({name: (halpha * r).T for name, r in f["ratio"].items() if name in line_set.names})
    cube = make_cube(size, size, lines=lines, model=model, noise=noise, seed=seed, velocity_kms=f["velocity"].T,
                     broadening_kms=f["broadening"].T, line_fluxes_cm1=fluxes)
    cube.truth["RADIUS"] = f["radius"]
    cube.truth["HII_FRACTION"] = f["hii_fraction"]
    return cube


def _field(nx: int, ny: int, filter_name: str, calib_spread: float = 0.01):
    """(header, axis cm^-1, calibration map [x, y], instrumental FWHM [x, y]) of a synthetic
    field, as in :func:`make_cube`."""
    header = filter_header(filter_name)
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]
    xs, ys = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    corr_orig = AXIS_CORR * (1.0 + calib_spread * (0.5 * (xs**2 + ys**2) - 0.5))
    fwhm = instrument.sinc_fwhm_cm1(header["step"], header["step_nb"], header["zpd_index"], corr_orig)
    return dict(header), axis, corr_orig * NM_LASER, fwhm


def true_line_fluxes(line_set: LineSet, model: str, axis_cm1, fwhm_cm1, velocity_kms, broadening_kms, amplitudes):
    """Flux (cm^-1 units, rest frame = observed for z = 0) of every line of a batch of pixels
    with the parameters of :func:`render_spectra`, by the fit's own line model (negative
    for absorption lines)."""
    spec = ModelSpec(line_set, model, 0)
    axis = np.asarray(axis_cm1, np.float64)
    ref = float(np.mean(axis))
    lm = LineModel(spec, SpectralGrid(axis - ref, ref))

    def one(v, b, amp, fwhm):
        theta = jnp.concatenate([v, b]) if spec.has_broadening else v
        return lm.line_fluxes_cm1(theta, jnp.concatenate([amp, jnp.zeros(1)]), fwhm)

    args = [np.asarray(a, np.float32) for a in (velocity_kms, broadening_kms, amplitudes, fwhm_cm1)]
    return np.asarray(jax.jit(jax.vmap(one))(*args), np.float64)


def make_absorption_cube(nx: int = 16, ny: int = 16, *, model: str = "sincgauss", filter_name: str = "SN3",
                         noise: float = 1.0, continuum: float = 40.0, depth: float = 0.25,
                         absorption_broadening_kms=(300.0, 500.0), emission_snr=(5.0, 30.0),
                         emission_broadening_kms=(15.0, 50.0), seed: int = 0) -> SyntheticCube:
    """A stellar continuum with a broad Balmer absorption under narrow Halpha + [NII] emission,
    with known truth (item 4 of issue 21: ``Model(absorption=...)``).

    Per pixel: continuum ``continuum`` x noise (flat), the Halpha absorption of peak depth
    ``depth`` x continuum and Gaussian broadening uniform in ``absorption_broadening_kms``
    at the stars' velocity (uniform +-150 km/s), and the emission (Halpha peak S/N
    log-uniform in ``emission_snr``, [NII]6583/Halpha 0.2-0.6 in flux, [NII]6548 tied) at
    the gas velocity (stars +- 50 km/s). Truth maps ``HALPHA_FLUX_CM1``,
    ``NII6583_FLUX_CM1`` and ``HALPHA_ABS_FLUX_CM1`` (negative), ``VELOCITY``,
    ``ABS_VELOCITY``, ``ABS_BROADENING``, ``CONTINUUM``; ``line_set`` is the fitted set
    (emission lines, then ``Halpha_ABS``).
    """
    from lucijax.physics.lines import absorption_line_set, join_line_sets

    rng = np.random.default_rng(seed)
    ls = join_line_sets(make_line_set(["Halpha", "NII6583", "NII6548"]), absorption_line_set(["Halpha"]))
    header, axis, calib_map, fwhm = _field(nx, ny, filter_name)
    n = nx * ny
    v_star = rng.uniform(-150.0, 150.0, n)
    v_gas = v_star + rng.uniform(-50.0, 50.0, n)
    velocity = np.stack([v_gas, v_star], axis=1)
    broadening = np.stack([rng.uniform(*emission_broadening_kms, n), rng.uniform(*absorption_broadening_kms, n)], axis=1)
    amp_ha = np.exp(rng.uniform(np.log(emission_snr[0]), np.log(emission_snr[1]), n)) * noise
    # [NII]6583's peak from its flux ratio at its own (equal-width) profile: close to the ratio itself
    amp_nii = amp_ha * rng.uniform(0.2, 0.6, n)
    amp_abs = np.full(n, depth * continuum * noise)
    amplitudes = np.stack([amp_ha, amp_nii, amp_abs], axis=1)
    cont = np.full(n, continuum * noise)
    clean = render_spectra(ls, model, axis, fwhm.reshape(n), velocity, broadening, amplitudes, cont)
    data = (clean + rng.normal(0.0, noise, clean.shape)).reshape(nx, ny, -1)
    flux = true_line_fluxes(ls, model, axis, fwhm.reshape(n), velocity, broadening, amplitudes)
    truth = {"VELOCITY": v_gas.reshape(nx, ny).T, "ABS_VELOCITY": v_star.reshape(nx, ny).T,
             "BROADENING": broadening[:, 0].reshape(nx, ny).T, "ABS_BROADENING": broadening[:, 1].reshape(nx, ny).T,
             "CONTINUUM": cont.reshape(nx, ny).T, "NOISE": np.full((ny, nx), noise)}
    for i, name in enumerate(ls.names):
        truth[f"{name.upper()}_FLUX_CM1"] = flux[:, i].reshape(nx, ny).T
    return SyntheticCube(data=data.astype(np.float32), attrs=header, calib_map=calib_map, axis_cm1=axis,
                         fwhm_cm1=fwhm, truth=truth, line_set=ls, model=model)


#: Sky lines of :func:`make_sky_cube` (air nm; OH lines of the SN3 band, two of them 1-2 nm
#: from Halpha and [NII]6583) and their peaks relative to the first.
SKY_LINES_NM = (649.85, 653.35, 655.36, 657.72, 661.84, 663.60)
SKY_PEAKS = (1.0, 0.6, 1.2, 1.5, 0.8, 0.5)


def make_sky_cube(nx: int = 16, ny: int = 16, *, model: str = "sincgauss", filter_name: str = "SN3",
                  noise: float = 1.0, sky_peak: float = 30.0, sky_gradient: float = 0.6, sky_drift_kms: float = 12.0,
                  object_snr=(8.0, 30.0), object_box=(8, 16, 4, 12), seed: int = 0) -> SyntheticCube:
    """A sky whose lines brighten across the field and shift in velocity, under an object's
    Halpha + [NII] emission, with known truth (item 5 of issue 21: a spatially varying
    background).

    Sky lines :data:`SKY_LINES_NM` (the first ``sky_peak`` x noise at peak) scaled by
    ``1 + sky_gradient * X`` (X from 0 to 1 along x) and shifted by ``sky_drift_kms * Y``
    (Y from -1 to 1 along y), with a sky continuum of 2 x noise, in every pixel; the
    object (Halpha peak S/N log-uniform in ``object_snr``, [NII]6583/Halpha 0.2-0.6, at
    +-100 km/s, broadening 10-40 km/s) fills ``object_box`` (x0, x1, y0, y1; end
    excluded). Truth maps ``HALPHA_FLUX_CM1`` and ``NII6583_FLUX_CM1`` (0 outside the
    object), ``OBJECT`` (bool), ``SKY_SCALE``, ``SKY_VELOCITY``; ``line_set`` is the
    object's.
    """
    rng = np.random.default_rng(seed)
    ls = make_line_set(["Halpha", "NII6583", "NII6548"])
    sky = LineSet(tuple(f"SKY{i}" for i in range(len(SKY_LINES_NM))), tuple(SKY_LINES_NM), (0,) * len(SKY_LINES_NM))
    header, axis, calib_map, fwhm = _field(nx, ny, filter_name)
    n = nx * ny
    X, Y = np.meshgrid(np.linspace(0.0, 1.0, nx), np.linspace(-1.0, 1.0, ny), indexing="ij")
    scale = (1.0 + sky_gradient * X).reshape(n)
    v_sky = (sky_drift_kms * Y).reshape(n)
    sky_amp = scale[:, None] * sky_peak * noise * np.asarray(SKY_PEAKS)[None, :]
    sky_spectra = render_spectra(sky, model, axis, fwhm.reshape(n), v_sky[:, None], np.full((n, 1), 5.0), sky_amp,
                                 np.full(n, 2.0 * noise))
    x0, x1, y0, y1 = object_box
    inside = np.zeros((nx, ny), bool)
    inside[x0:x1, y0:y1] = True
    inside = inside.reshape(n)
    velocity = rng.uniform(-100.0, 100.0, (n, 1))
    broadening = rng.uniform(10.0, 40.0, (n, 1))
    amp_ha = np.exp(rng.uniform(np.log(object_snr[0]), np.log(object_snr[1]), n)) * noise * inside
    amplitudes = np.stack([amp_ha, amp_ha * rng.uniform(0.2, 0.6, n)], axis=1)
    obj = render_spectra(ls, model, axis, fwhm.reshape(n), velocity, broadening, amplitudes, np.zeros(n))
    data = (sky_spectra + obj + rng.normal(0.0, noise, obj.shape)).reshape(nx, ny, -1)
    flux = true_line_fluxes(ls, model, axis, fwhm.reshape(n), velocity, broadening, amplitudes)
    truth = {"OBJECT": inside.reshape(nx, ny).T, "SKY_SCALE": scale.reshape(nx, ny).T,
             "SKY_VELOCITY": v_sky.reshape(nx, ny).T, "VELOCITY": velocity[:, 0].reshape(nx, ny).T,
             "NOISE": np.full((ny, nx), noise)}
    for i, name in enumerate(ls.names):
        truth[f"{name.upper()}_FLUX_CM1"] = flux[:, i].reshape(nx, ny).T
    return SyntheticCube(data=data.astype(np.float32), attrs=header, calib_map=calib_map, axis_cm1=axis,
                         fwhm_cm1=fwhm, truth=truth, line_set=ls, model=model)
