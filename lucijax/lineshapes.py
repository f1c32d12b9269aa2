"""Line shapes of one emission line and their exact flux integrals (pure ``jax.numpy``).

Every profile is normalised to a peak value of 1 at the line centre; the line model
multiplies it by the amplitude ``A``. Arguments broadcast, so one call evaluates one line
on a whole spectral axis. Units: ``dx_cm1 = x - x0`` (cm^-1), ``fwhm_cm1`` the FWHM of the
instrumental sinc, ``sg_cm1`` the Gaussian standard deviation of the intrinsic broadening.

Conventions (design notes section 1): ``w = fwhm / (1.20671 pi)``; the sinc is
``sin(u)/u`` with ``u = dx / w``; the sinc-convolved Gaussian ("sincgauss") is

    S(a, b) = [exp(-b^2) - exp(-a^2) Re(exp(2iab) wofz(b + ia))] / erf(a),
    a = sg / (sqrt(2) w),  b = dx / (sqrt(2) sg),  2ab = u,

which stays finite where the Dawson/complex-erf forms overflow. For ``a`` below
``SERIES_A_MAX`` that difference loses float32 digits, and the profile is computed instead
from its integral form ``S = int_0^1 cos(k u) exp(-a^2 k^2) dk / int_0^1 exp(-a^2 k^2) dk``
expanded to order ``a^8`` (exact to ~1e-9 there), which also gives the sinc at ``a = 0``
with finite derivatives.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from lucijax.constants import GAUSS_FWHM_OVER_SIGMA, SINC_FWHM

#: Below this ``a`` the sincgauss uses the small-broadening series.
SERIES_A_MAX = 0.15
#: Below this ``|u|`` the series coefficients use their Taylor expansion in ``u``.
_TAYLOR_U_MAX = 3.0
_TAYLOR_TERMS = 11
_SQRT2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def sinc_width(fwhm_cm1):
    """``w = fwhm / (1.20671 pi)``: the sinc is ``sin(dx/w) / (dx/w)``."""
    return fwhm_cm1 / (SINC_FWHM * math.pi)


# ----------------------------------------------------------------------------- sinc
def sinc(dx_cm1, fwhm_cm1):
    """Instrumental sinc, peak 1: ``sin(u)/u`` with ``u = dx / w``."""
    u = dx_cm1 / sinc_width(fwhm_cm1)
    return jnp.sinc(u / math.pi)


def sinc_flux(fwhm_cm1):
    """Integral (cm^-1) of the unit-peak sinc: ``pi w = fwhm / 1.20671``."""
    return math.pi * sinc_width(fwhm_cm1)


# ------------------------------------------------------------------------- gaussian
def gaussian_sigma(fwhm_cm1, sg_cm1=0.0):
    """Standard deviation of the 'gaussian' model: instrument (FWHM/2.3548) and
    broadening added in quadrature."""
    s_instr = fwhm_cm1 / GAUSS_FWHM_OVER_SIGMA
    return jnp.sqrt(s_instr**2 + sg_cm1**2)


def gaussian(dx_cm1, fwhm_cm1, sg_cm1=0.0):
    """Gaussian line, peak 1, standard deviation :func:`gaussian_sigma`."""
    s = gaussian_sigma(fwhm_cm1, sg_cm1)
    return jnp.exp(-0.5 * (dx_cm1 / s) ** 2)


def gaussian_flux(fwhm_cm1, sg_cm1=0.0):
    """Integral (cm^-1) of the unit-peak Gaussian: ``sqrt(2 pi) s``."""
    return _SQRT_2PI * gaussian_sigma(fwhm_cm1, sg_cm1)


# ------------------------------------------------------------------------ Faddeeva
def _weideman_coefficients(n_terms: int) -> tuple[float, np.ndarray]:
    """Coefficients of Weideman's rational approximation of the Faddeeva function
    (J.A.C. Weideman 1994, SIAM J. Numer. Anal. 31, 1497, eq. 3.8-3.11), from the FFT of
    ``exp(-t^2)(L^2 + t^2)`` sampled at ``t = L tan(theta/2)``."""
    m = 2 * n_terms
    k = np.arange(-m + 1, m)
    big_l = np.sqrt(n_terms / np.sqrt(2.0))
    t = big_l * np.tan(k * np.pi / m / 2.0)
    f = np.concatenate([[0.0], np.exp(-(t**2)) * (big_l**2 + t**2)])
    a = np.real(np.fft.fft(np.fft.fftshift(f))) / (2 * m)
    return float(big_l), np.flipud(a[1 : n_terms + 1])


#: 16 terms reach float32 round-off (~2e-6 absolute on w for Im z >= 0.15).
_WEIDEMAN_L, _WEIDEMAN_A = _weideman_coefficients(16)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


@jax.custom_jvp
def faddeeva_upper(x, y):
    """Faddeeva function ``w(x + iy) = exp(-z^2) erfc(-iz)`` for ``y >= 0``, as (Re, Im).

    Real arithmetic only (it vectorises, unlike complex XLA ops on CPU), Weideman's
    16-term rational approximation: ``w = 2 p(Z)/(L - iz)^2 + 1/(sqrt(pi)(L - iz))`` with
    ``Z = (L + iz)/(L - iz)``.
    """
    big_l = _WEIDEMAN_L
    lpy = big_l + y
    d = lpy * lpy + x * x
    zr = (big_l * big_l - y * y - x * x) / d
    zi = 2.0 * big_l * x / d
    pr = jnp.zeros_like(zr)
    pi = jnp.zeros_like(zr)
    for coef in _WEIDEMAN_A:
        pr, pi = pr * zr - pi * zi + float(coef), pr * zi + pi * zr
    ir, ii = lpy / d, x / d  # 1 / (L - iz)
    i2r, i2i = ir * ir - ii * ii, 2.0 * ir * ii
    wr = 2.0 * (pr * i2r - pi * i2i) + _INV_SQRT_PI * ir
    wi = 2.0 * (pr * i2i + pi * i2r) + _INV_SQRT_PI * ii
    return wr, wi


@faddeeva_upper.defjvp
def _faddeeva_upper_jvp(primals, tangents):
    x, y = primals
    dx, dy = tangents
    wr, wi = faddeeva_upper(x, y)
    # dw/dz = -2 z w + 2i/sqrt(pi), and w is holomorphic: dw = (dw/dz)(dx + i dy)
    der_r = -2.0 * (x * wr - y * wi)
    der_i = -2.0 * (x * wi + y * wr) + 2.0 * _INV_SQRT_PI
    return (wr, wi), (der_r * dx - der_i * dy, der_i * dx + der_r * dy)


# ------------------------------------------------------------------------ sincgauss
def _taylor_c(u2):
    """``C_m(u) = int_0^1 k^(2m) cos(k u) dk``, m = 0..3, by their Taylor series in ``u``
    (small |u|), evaluated by Horner's rule in ``u^2``."""
    out = []
    for m in range(4):
        total = jnp.zeros_like(u2)
        for j in reversed(range(_TAYLOR_TERMS)):
            total = total * u2 + (-1.0) ** j / (math.factorial(2 * j) * (2 * m + 2 * j + 1))
        out.append(total)
    return out


def _closed_c(u):
    """``C_0..C_3`` in closed form (integration by parts), accurate for |u| >= 3."""
    s, c = jnp.sin(u), jnp.cos(u)
    i1 = 1.0 / u
    i2, i3, i4, i5, i6, i7 = i1**2, i1**3, i1**4, i1**5, i1**6, i1**7
    c0 = s * i1
    c1 = s * i1 + 2 * c * i2 - 2 * s * i3
    c2 = s * i1 + 4 * c * i2 - 12 * s * i3 - 24 * c * i4 + 24 * s * i5
    c3 = s * i1 + 6 * c * i2 - 30 * s * i3 - 120 * c * i4 + 360 * s * i5 + 720 * c * i6 - 720 * s * i7
    return c0, c1, c2, c3


def _sincgauss_series(u, a):
    """Small-``a`` sincgauss, exact to O(a^8): the Gaussian factor of the integral form
    expanded in powers of ``a^2``."""
    small_u = jnp.abs(u) < _TAYLOR_U_MAX
    u_big = jnp.where(small_u, _TAYLOR_U_MAX, u)  # safe input for the closed forms
    u2 = jnp.where(small_u, u, 0.0) ** 2
    closed = _closed_c(u_big)
    cs = [jnp.where(small_u, t, c) for t, c in zip(_taylor_c(u2), closed)]
    a2 = a * a
    num = cs[0] - a2 * cs[1] + a2**2 / 2.0 * cs[2] - a2**3 / 6.0 * cs[3]
    den = 1.0 - a2 / 3.0 + a2**2 / 10.0 - a2**3 / 42.0
    return num / den


def _sincgauss_faddeeva(dx, w, sg, a):
    """The Faddeeva form of the sincgauss, for ``a >= SERIES_A_MAX``."""
    b = dx / (_SQRT2 * sg)
    u = dx / w  # = 2ab, computed without the product to keep the phase accurate
    wr, wi = faddeeva_upper(b, a)
    tail = jnp.exp(-(a**2)) * (jnp.cos(u) * wr - jnp.sin(u) * wi)
    return (jnp.exp(-(b**2)) - tail) / erf(a)


def sincgauss(dx_cm1, fwhm_cm1, sg_cm1):
    """Sinc of FWHM ``fwhm_cm1`` convolved with a Gaussian of std ``sg_cm1``, peak 1.

    Accurate to ~1e-6 of the peak in float32 for every broadening, including
    ``sg -> 0`` where it tends to :func:`sinc` (with finite derivatives).
    """
    dx, fwhm, sg = jnp.broadcast_arrays(*(jnp.asarray(v) for v in (dx_cm1, fwhm_cm1, sg_cm1)))
    dx = dx.astype(jnp.result_type(dx, float))
    w = sinc_width(fwhm)
    a = sg / (_SQRT2 * w)
    use_series = a < SERIES_A_MAX
    a_big = jnp.where(use_series, SERIES_A_MAX, a)
    sg_big = a_big * _SQRT2 * w
    a_small = jnp.where(use_series, a, 0.0)
    series = _sincgauss_series(dx / w, a_small)
    fadd = _sincgauss_faddeeva(dx, w, sg_big, a_big)
    return jnp.where(use_series, series, fadd)


def _erf_ratio(a):
    """``(2 a / sqrt(pi)) / erf(a)``, equal to 1 at ``a = 0`` and smooth there."""
    small = a < 0.05
    a_s = jnp.where(small, a, 0.0)
    a2 = a_s * a_s
    series = 1.0 / (1.0 - a2 / 3.0 + a2**2 / 10.0 - a2**3 / 42.0)
    a_b = jnp.where(small, 0.05, a)
    exact = (2.0 * a_b / math.sqrt(math.pi)) / erf(a_b)
    return jnp.where(small, series, exact)


def sincgauss_flux(fwhm_cm1, sg_cm1):
    """Integral (cm^-1) of the unit-peak sincgauss: ``sqrt(2 pi) sg / erf(a)``.

    Written as ``pi w * (2a/sqrt(pi))/erf(a)`` so it tends smoothly to the sinc flux
    ``pi w`` as ``sg -> 0``.
    """
    w = sinc_width(fwhm_cm1)
    a = sg_cm1 / (_SQRT2 * w)
    return math.pi * w * _erf_ratio(a)


#: The line-shape models by name: (profile(dx, fwhm, sg), flux(fwhm, sg), has_broadening).
MODELS = {
    "sinc": (lambda dx, fwhm, sg: sinc(dx, fwhm), lambda fwhm, sg: sinc_flux(fwhm) + 0.0 * sg, False),
    "gaussian": (gaussian, gaussian_flux, True),
    "sincgauss": (sincgauss, sincgauss_flux, True),
}


def get_model(name: str):
    """(profile, flux, has_broadening) of the line-shape model ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown line model '{name}'; choose one of {', '.join(MODELS)}")
    return MODELS[name]
