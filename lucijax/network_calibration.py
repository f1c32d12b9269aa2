"""Calibration of a shipped network on spectra from the package's INDEPENDENT simulator.

The held-out metrics of ``scripts/train_mdn.py`` use the training generator
(:mod:`lucijax.mdn.data`); here the spectra come from :func:`lucijax.simulate.render_spectra`
(the fit's own line model) on the real observed axis of the filter's synthetic set-up
(:data:`lucijax.simulate.SETUPS`), at the network's typical redshift, and the network reads
them through :func:`lucijax.mdn.load_predictor` exactly as a fit does (axis and FWHM
de-redshifted). Used by ``benchmarks/bench_mdn.py --parts 4`` and the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: Redshift of the independent test spectra of each filter (the targets the network is for).
TEST_REDSHIFT = {"C3": 0.08, "C4": 0.235}


def independent_spectra(filter_name: str, n: int, seed: int, snr_range=(2.0, 100.0), redshift: float | None = None,
                        velocity_range_kms=(-400.0, 400.0), broadening_range_kms=(0.0, 150.0)) -> dict:
    """``n`` noisy spectra of the network's lines on the filter's observed band axis.

    Each spectrum: the lines of the network's recipe sharing one velocity and broadening
    (uniform in the given ranges), peak-amplitude ratios drawn in the recipe's ranges, the
    brightest peak = SNR (log-uniform in ``snr_range``) times the noise sigma 1, a flat
    continuum (0-5), the pixel's FWHM from the set-up with a 1 % spread of the
    calibration. ``redshift`` defaults to :data:`TEST_REDSHIFT` (0 for the others).

    Returns a dict: ``axis`` (observed cm^-1), ``y`` (n, channels) float32, ``fwhm_cm1``
    (n,) observed frame, ``theta`` (n, 2) = [velocity, broadening] km/s, ``snr``,
    ``redshift``.
    """
    from lucijax.mdn.predictor import load_network
    from lucijax.physics import instrument
    from lucijax.physics.lines import make_line_set
    from lucijax.simulate import SETUPS, filter_header, render_spectra

    key = str(filter_name).strip().upper()
    if key not in SETUPS:
        raise ValueError(f"no synthetic set-up for filter '{filter_name}' (known: {', '.join(SETUPS)})")
    cfg, _ = load_network(key, True)
    recipe = cfg["recipe"]
    z = TEST_REDSHIFT.get(key, 0.0) if redshift is None else float(redshift)
    rng = np.random.default_rng(seed)
    header = filter_header(key)
    axis = header["axis_min"] + np.arange(header["step_nb"]) * header["axis_step"]
    lo, hi = instrument.get_filter(key).band_cm1
    axis = axis[(axis >= lo) & (axis <= hi)]
    s = SETUPS[key]
    corr = header["axis_corr"] * (1 + rng.uniform(-0.01, 0.01, n))
    fwhm = instrument.sinc_fwhm_cm1(s["step_nm"], s["step_nb"], s["zpd_index"], corr)
    v = rng.uniform(*velocity_range_kms, (n, 1))
    b = rng.uniform(*broadening_range_kms, (n, 1))
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n))
    lines = list(recipe.lines)
    amp = np.ones((n, len(lines)))
    for i, name in enumerate(lines[1:], start=1):
        prim, r_lo, r_hi, log = recipe.ratios[name]
        r = np.exp(rng.uniform(np.log(r_lo), np.log(r_hi), n)) if log and r_lo != r_hi else rng.uniform(r_lo, r_hi, n)
        amp[:, i] = r * (amp[:, 0] if prim is None else amp[:, lines.index(prim)])
    amp *= (snr / amp.max(axis=1))[:, None]
    line_set = make_line_set(lines, tie_nii=False, tie_oiii=False)  # every line its own amplitude
    cont = rng.uniform(0, 5, n)
    y = render_spectra(line_set, "sincgauss", axis, fwhm, v, b, amp, cont, redshift=z)
    y = y + rng.normal(0, 1, y.shape)
    return {"axis": axis, "y": y.astype(np.float32), "fwhm_cm1": fwhm, "theta": np.concatenate([v, b], axis=1),
            "snr": snr, "redshift": z}


def predict_independent(filter_name: str, data: dict, batch: int = 4096):
    """(mean, sigma) (n, 2) of the shipped MDN on :func:`independent_spectra` output, read
    as a fit reads them (``load_predictor`` with the axis and redshift; FWHM x (1 + z))."""
    from lucijax.mdn.predictor import load_predictor

    z = data["redshift"]
    f = jax.jit(jax.vmap(load_predictor(filter_name, data["axis"], redshift=z)))
    fw = (data["fwhm_cm1"] * (1 + z)).astype(np.float32)
    means, sigmas = [], []
    for i in range(0, len(fw), batch):
        m, s = f(jnp.asarray(data["y"][i : i + batch]), jnp.asarray(fw[i : i + batch]))
        means.append(np.asarray(m))
        sigmas.append(np.asarray(s))
    return np.concatenate(means), np.concatenate(sigmas)
