"""Strong-line diagnostics: the [NII] BPT diagram and metallicity calibrations.

BPT (Baldwin, Phillips & Terlevich 1981) in the plane x = log([NII]6583/Halpha),
y = log([OIII]5007/Hbeta):

- Kauffmann et al. (2003): y = 0.61 / (x - 0.05) + 1.30 (star-forming below, x < 0.05);
- Kewley et al. (2001): y = 0.61 / (x - 0.47) + 1.19 (maximum starburst line, x < 0.47);
- Schawinski et al. (2007): y = 1.05 x + 0.45 (Seyfert above, LINER below, beyond Kewley).

Metallicity: Marino et al. (2013, A&A 559, A114), 12 + log(O/H) = 8.743 + 0.462 N2
(-1.6 < N2 < -0.2, scatter 0.16 dex) and 8.533 - 0.214 O3N2 (-1.1 < O3N2 < 1.7, 0.18 dex).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BPT_CLASSES", "bpt_class", "bpt_probabilities", "METALLICITY_CALIBRATIONS", "metallicity"]

#: BPT class codes of the ``BPT_CLASS`` map (0: not classified).
BPT_CLASSES = {1: "star-forming", 2: "composite", 3: "LINER", 4: "Seyfert"}


def kauffmann03(x):
    return 0.61 / (x - 0.05) + 1.30


def kewley01(x):
    return 0.61 / (x - 0.47) + 1.19


def schawinski07(x):
    return 1.05 * x + 0.45


def bpt_class(x, y) -> np.ndarray:
    """Class code (1-4, :data:`BPT_CLASSES`) of points of the [NII] BPT diagram; 0 where x
    or y is not finite."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sf = (x < 0.05) & (y < kauffmann03(x))
        below_kewley = (x < 0.47) & (y < kewley01(x))
    agn = np.where(y > schawinski07(x), 4, 3)
    cls = np.where(sf, 1, np.where(below_kewley, 2, agn))
    return np.where(np.isfinite(x) & np.isfinite(y), cls, 0).astype(np.int16)


def bpt_probabilities(x, y, sx, sy, cxy, draws: int = 512, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """Probability of each class, ``[4, ...]``, for points with Gaussian errors ``sx``,
    ``sy`` and covariance ``cxy`` (Monte-Carlo, ``draws`` per point; NaN where undefined)."""
    arrays = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (x, y, sx, sy, cxy)))
    shape = arrays[0].shape
    x, y, sx, sy, cxy = (a.ravel() for a in arrays)
    n = x.size
    out = np.full((4, n), np.nan)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(sx) & np.isfinite(sy) & np.isfinite(cxy)
    idx = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal(draws)
    z2 = rng.standard_normal(draws)
    for s in range(0, idx.size, chunk):
        i = idx[s : s + chunk]
        rho = np.clip(cxy[i] / np.maximum(sx[i] * sy[i], 1e-300), -1.0, 1.0)
        dx = sx[i, None] * z1[None, :]
        dy = sy[i, None] * (rho[:, None] * z1[None, :] + np.sqrt(1.0 - rho[:, None] ** 2) * z2[None, :])
        cls = bpt_class(x[i, None] + dx, y[i, None] + dy)
        for k in range(4):
            out[k, i] = np.mean(cls == k + 1, axis=1)
    return out.reshape((4,) + shape)


#: name -> (index map, intercept, slope, validity range of the index, scatter dex, reference)
METALLICITY_CALIBRATIONS = {
    "N2": ("N2", 8.743, 0.462, (-1.6, -0.2), 0.16, "Marino et al. 2013, A&A 559, A114 (N2)"),
    "O3N2": ("O3N2", 8.533, -0.214, (-1.1, 1.7), 0.18, "Marino et al. 2013, A&A 559, A114 (O3N2)"),
}


def metallicity(index, index_err, calibration: str = "N2"):
    """12 + log(O/H) and its statistical error from an index map; NaN outside the
    calibration's range."""
    _, a, b, (lo, hi), _, _ = METALLICITY_CALIBRATIONS[calibration]
    index = np.asarray(index, np.float64)
    inside = (index > lo) & (index < hi)
    return np.where(inside, a + b * index, np.nan), np.where(inside, abs(b) * np.asarray(index_err), np.nan)
