"""Quantities that are log-linear in sums of line fluxes, with delta-method errors.

Every ratio, index and extinction correction used here has the form

    q = c + sum_k e_k log10(T_k),    T_k = sum_i a_ki F_i

(``N2 = log10(F_6583 / F_Halpha)``; ``[SII]/Halpha`` has the sum ``F_6716 + F_6731`` as a
term; a dereddened flux is ``log10 F + (k/dk) (log10(F_Ha/F_Hb) - log10 R0)``). Its gradient
with respect to the fluxes is ``g_i = sum_k e_k a_ki / (ln 10 T_k)`` and its variance
``g^T C g`` with the full covariance ``C`` of the pixel's fluxes (:class:`LineFluxes`), so
the correlations from shared kinematics and tied lines are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lucijax.nebular.fluxes import LineFluxes

__all__ = ["Combination", "combine", "covariance_between", "ratio"]

LN10 = np.log(10.0)


@dataclass
class Combination:
    """``value`` (log10), ``sigma`` (its error), ``grad`` ``[L, ny, nx]`` with respect to
    the fluxes, ``defined`` (every term positive and finite, every line's fit usable) and
    ``terms_snr`` ``[n_terms, ny, nx]`` (each term over its error)."""

    value: np.ndarray
    sigma: np.ndarray
    grad: np.ndarray
    defined: np.ndarray
    terms_snr: np.ndarray


def _term(lf: LineFluxes, coefs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = np.zeros((len(lf.names),) + (1, 1))
    for name, c in coefs.items():
        a[lf.index(name)] = c
    t = np.sum(a * lf.flux, axis=0)
    var = np.einsum("iyx,ijyx,jyx->yx", np.broadcast_to(a, lf.flux.shape), lf.cov, np.broadcast_to(a, lf.flux.shape))
    usable = np.all([lf.usable[lf.index(n)] for n in coefs], axis=0)
    return a[:, 0, 0], t, np.sqrt(np.maximum(var, 0.0)), usable


def combine(lf: LineFluxes, terms, constant=0.0) -> Combination:
    """``constant + sum e * log10(sum_i a_i F_i)`` over ``terms`` = [(e, {line: a}), ...]."""
    grad = np.zeros_like(lf.flux)
    value = np.zeros(lf.shape) + constant
    defined = np.ones(lf.shape, bool)
    snrs = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for e, coefs in terms:
            a, t, sig, usable = _term(lf, coefs)
            ok = usable & np.isfinite(t) & (t > 0)
            defined &= ok
            tt = np.where(ok, t, 1.0)
            value = value + e * np.log10(tt)
            grad += e * a[:, None, None] / (LN10 * tt)[None]
            snrs.append(t / sig)
        var = np.einsum("iyx,ijyx,jyx->yx", grad, lf.cov, grad)
    sigma = np.sqrt(np.maximum(var, 0.0))
    nan = np.nan
    return Combination(np.where(defined, value, nan), np.where(defined, sigma, nan), grad, defined, np.stack(snrs))


def covariance_between(lf: LineFluxes, a: Combination, b: Combination) -> np.ndarray:
    """Covariance of two combinations of the same fluxes in every pixel."""
    return np.einsum("iyx,ijyx,jyx->yx", a.grad, lf.cov, b.grad)


def ratio(lf: LineFluxes, numerator: dict, denominator: dict) -> Combination:
    """``log10(sum numerator / sum denominator)`` (dicts line -> coefficient)."""
    return combine(lf, [(1.0, numerator), (-1.0, denominator)])
