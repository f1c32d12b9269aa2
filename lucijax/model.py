"""One pixel's spectrum from its parameters: the line model of a fit.

The model is ``y(x) = sum_j alpha_j column_j(x; theta)``, linear in the amplitudes and
continuum coefficients ``alpha`` and non-linear in ``theta`` = (the velocity of each
kinematic group, then the broadening of each broadening group: the kinematic groups
themselves unless the line set has separate ``broadening_groups``). ``column_j`` is the
unit-amplitude profile of primary line ``j`` plus its tied lines (flux ratios fixed; the
negative profile for an absorption line, so that every amplitude parameter is >= 0), then
the continuum basis (polynomials, or a cubic B-spline for continua with structure:
starlight, filter-edge calibration), then the background components, if any (spectra of a
sky region: its mean and principal components, fitted per pixel with free coefficients;
:mod:`lucijax.io.background`).

Everything here is for ONE spectrum, in float32 ``jax.numpy``; the fit vectorises it.
Wavenumbers are handled relative to a reference ``ref_cm1`` near the band centre so that
float32 keeps ~1e-3 km/s precision in line positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.constants import C_KMS
from lucijax.physics.conversions import velocity_factor_minus_one
from lucijax.physics.lines import LineSet
from lucijax.physics.lineshapes import UniformGrid, get_model, sincgauss_on_grid, uniform_step


def placed(x, dtype=None) -> jax.Array:
    """``jnp.asarray(x, dtype)`` for host data, converted on the host and placed with
    ``device_put``: the same array, but ``jnp.asarray`` of a NumPy array runs a small
    compiled program (JAX's ``stage`` or ``convert_element_type``), one per shape and
    dtype, each a compilation-cache lookup of ~10 ms in every process that builds a model."""
    a = np.asarray(x)
    return jax.device_put(a if dtype is None else a.astype(dtype))


@dataclass(frozen=True)
class ModelSpec:
    """Static description of the line model (hashable: one compilation per spec).

    Attributes
    ----------
    line_set : LineSet
    shape : {'sincgauss', 'sinc', 'gaussian'}
    continuum_order : int
        Degree of the continuum polynomial (0 = constant).
    continuum_spline : int
        0: the continuum is the polynomial of ``continuum_order``. N > 0: a cubic B-spline
        with N equal intervals over the fit window (N + 3 coefficients), for continua with
        structure on scales of the window / N; ``continuum_order`` must then be 0.
    background_components : int
        Background spectra (columns of :attr:`SpectralGrid.background`) fitted per pixel
        with free coefficients after the continuum; 0: none.
    """

    line_set: LineSet
    shape: str = "sincgauss"
    continuum_order: int = 0
    continuum_spline: int = 0
    background_components: int = 0

    def __post_init__(self):
        get_model(self.shape)  # validates the name
        if not 0 <= int(self.continuum_order) <= 5:
            raise ValueError("continuum_order must be between 0 and 5")
        if not 0 <= int(self.continuum_spline) <= MAX_SPLINE_INTERVALS:
            raise ValueError(f"continuum_spline (B-spline intervals) must be between 0 and {MAX_SPLINE_INTERVALS}")
        if self.continuum_spline and self.continuum_order:
            raise ValueError("give a continuum polynomial order or a continuum spline, not both")

    @property
    def has_broadening(self) -> bool:
        return get_model(self.shape)[2]

    @property
    def n_groups(self) -> int:
        return self.line_set.n_groups

    @property
    def n_broadening(self) -> int:
        """Broadening parameters: one per broadening group (0 for the sinc)."""
        return self.line_set.n_broadening_groups if self.has_broadening else 0

    @property
    def n_nonlinear(self) -> int:
        """A velocity per kinematic group, then a broadening per broadening group."""
        return self.n_groups + self.n_broadening

    @property
    def n_amplitudes(self) -> int:
        return len(self.line_set.primary_lines)

    @property
    def n_continuum(self) -> int:
        """Continuum coefficients."""
        return self.continuum_spline + 3 if self.continuum_spline else self.continuum_order + 1

    @property
    def n_background(self) -> int:
        """Background coefficients (after the continuum's)."""
        return int(self.background_components)

    @property
    def n_linear(self) -> int:
        return self.n_amplitudes + self.n_continuum + self.n_background


@dataclass(frozen=True)
class SpectralGrid:
    """The channels a fit uses (host-side, float64), de-redshifted.

    ``axis_rel_cm1 = axis * (1 + z) - ref_cm1`` for the channels inside the window;
    ``noise_shape``: relative noise std of those channels (None: flat noise; see
    :meth:`lucijax.io.header.CubeHeader.noise_shape`); ``background``: background spectra
    on those channels, shape (n_channels, K) (None: no background columns).
    """

    axis_rel_cm1: np.ndarray
    ref_cm1: float
    redshift: float = 0.0
    noise_shape: np.ndarray | None = None
    background: np.ndarray | None = None

    @property
    def n_channels(self) -> int:
        return int(self.axis_rel_cm1.size)

    @property
    def continuum_coordinate(self) -> np.ndarray:
        """Window coordinate in [-1, 1] for the continuum polynomials."""
        a = self.axis_rel_cm1
        return (2.0 * (a - a.min()) / max(a.max() - a.min(), 1e-30) - 1.0)


def channel_weights(noise_shape) -> np.ndarray:
    """1 / relative noise of each channel (float64), 0 where the relative noise is not
    finite and positive (the channel cannot be used)."""
    shape = np.asarray(noise_shape, np.float64)
    ok = np.isfinite(shape) & (shape > 0)
    return np.where(ok, 1.0 / np.where(ok, shape, 1.0), 0.0)


#: Most B-spline intervals of a continuum (an SN3 window of 840 cm-1 / 64 = 13 cm-1, ~4 FWHM).
MAX_SPLINE_INTERVALS = 64


def continuum_basis(coordinate: np.ndarray, order: int = 0, spline_intervals: int = 0) -> np.ndarray:
    """Continuum columns at window coordinates in [-1, 1], shape (n, n_coefficients).

    ``spline_intervals = 0``: the powers ``t**k``, k = 0..order. Otherwise the cubic B-spline
    basis on ``spline_intervals`` equal intervals of [-1, 1] (clamped knots: the columns are
    non-negative and sum to 1 at every ``t``, so a constant continuum is exactly
    representable), evaluated by the Cox-de Boor recursion in float64.
    """
    t = np.asarray(coordinate, np.float64)
    if not spline_intervals:
        return np.stack([t**k for k in range(order + 1)], axis=1)
    n, k = int(spline_intervals), 3
    knots = np.concatenate([np.full(k, -1.0), np.linspace(-1.0, 1.0, n + 1), np.full(k, 1.0)])
    # degree 0: indicator of each knot interval (the last non-empty one closed at t = 1)
    last = n + k - 1
    basis = np.stack([((knots[j] <= t) & (t < knots[j + 1])) | ((j == last) & (t == knots[-1]))
                      for j in range(len(knots) - 1)], axis=1).astype(np.float64)
    for d in range(1, k + 1):
        nxt = np.zeros((t.size, len(knots) - 1 - d))
        for j in range(nxt.shape[1]):
            left = knots[j + d] - knots[j]
            right = knots[j + d + 1] - knots[j + 1]
            if left > 0:
                nxt[:, j] += (t - knots[j]) / left * basis[:, j]
            if right > 0:
                nxt[:, j] += (knots[j + d + 1] - t) / right * basis[:, j + 1]
        basis = nxt
    return basis


class LineModel:
    """Evaluates the model of one spectrum for a :class:`ModelSpec` on a :class:`SpectralGrid`.

    The instance holds float32 constants (rest positions, tie coefficients); its methods are
    pure functions of the parameters and trace under ``jit``/``vmap``.
    """

    def __init__(self, spec: ModelSpec, grid: SpectralGrid):
        self.spec = spec
        self.grid = grid
        ls = spec.line_set
        self.profile_fn, self.flux_fn, _ = get_model(spec.shape)
        self.rest_cm1 = placed(ls.rest_cm1, np.float32)
        self.rest_rel_cm1 = placed(ls.rest_cm1 - grid.ref_cm1, np.float32)
        #: -1 for absorption lines, +1 for emission (None: emission lines only)
        self.line_sign = placed(ls.line_sign(), np.float32) if ls.absorption else None
        self.group = np.asarray(ls.groups, np.int32)
        # broadening parameter of each line (the sinc's zero broadenings: its kinematic group)
        self.broadening_group = np.asarray(ls.broadening_of if spec.has_broadening else ls.groups, np.int32)
        # ordered components: group velocities = T @ velocity parameters (None: identity)
        self.velocity_matrix = placed(ls.velocity_matrix(), np.float32) if ls.velocity_chain else None
        self.column = ls.amplitude_column()
        self.flux_ratio = placed(ls.flux_ratio_cm1(), np.float32)
        self.is_primary = np.zeros(ls.n_lines, bool)
        self.is_primary[list(ls.primary_lines)] = True
        self.primary_of = np.asarray(ls.primary_lines, np.int32)[self.column]
        #: ratio ranges as (primary's column, dependent's column, primary line, dependent line,
        #: lo, hi) with flux ratios in cm^-1: the two columns hold the cone's extreme ratios
        prim = list(ls.primary_lines)
        self.ratio_pairs = tuple((prim.index(p), prim.index(d), p, d, lo, hi) for d, p, lo, hi in ls.ratio_ranges_cm1())
        self.axis = placed(grid.axis_rel_cm1, np.float32)
        # (first, step, n) of a uniform axis, for the sincgauss's fast path
        step = uniform_step(grid.axis_rel_cm1) if spec.shape == "sincgauss" else None
        self._uniform_grid = None if step is None else UniformGrid(grid.axis_rel_cm1[0], step, grid.n_channels)
        #: 1 / relative noise of each channel (0 where unknown), or None for flat noise
        self.channel_weight = None
        if grid.noise_shape is not None:
            self.channel_weight = placed(channel_weights(grid.noise_shape), np.float32)
        self.continuum_basis = placed(
            continuum_basis(grid.continuum_coordinate, spec.continuum_order, spec.continuum_spline), np.float32)
        #: weights of the continuum coefficients that give the continuum at the window centre
        self.continuum_centre = placed(
            continuum_basis(np.zeros(1), spec.continuum_order, spec.continuum_spline)[0], np.float32)
        #: background columns (n_channels, K), or None
        self.background_basis = None
        n_bg = 0 if grid.background is None else np.shape(grid.background)[1]
        if n_bg != spec.n_background or (grid.background is not None and np.shape(grid.background)[0] != grid.n_channels):
            raise ValueError(f"the grid holds {n_bg} background spectra, the model {spec.n_background}")
        #: orthonormal basis (n_channels, K) of the background columns, for :meth:`without_background`
        self.background_q = None
        if spec.n_background:
            bg = np.nan_to_num(np.asarray(grid.background, np.float64))
            self.background_basis = placed(bg, np.float32)
            u, s, _ = np.linalg.svd(bg, full_matrices=False)
            self.background_q = placed(u[:, s > s[0] * 1e-6], np.float32)

    # -- parameters --------------------------------------------------------------
    def split_theta(self, theta):
        """(velocity_kms[G], broadening_kms[B]) from the non-linear vector (B broadening
        groups; broadening 0 of each kinematic group for the sinc, which has none). With a
        velocity chain in the line set, the velocity parameters of chained groups are offsets from their base group, and the returned
        velocities are the groups' own."""
        g = self.spec.n_groups
        if self.spec.has_broadening:
            velocity, broadening = theta[:g], theta[g:]
        else:
            velocity, broadening = theta, jnp.zeros_like(theta)
        if self.velocity_matrix is not None:
            # elementwise sum, not a matmul (GPU float32 matmuls may run in reduced precision)
            velocity = jnp.sum(self.velocity_matrix * velocity[None, :], axis=1)
        return velocity, broadening

    def line_kinematics(self, theta):
        """Per line: observed position relative to ref (cm^-1), position (cm^-1) and the
        broadening's Gaussian sigma (cm^-1)."""
        velocity, broadening = self.split_theta(theta)
        v_line = velocity[self.group]
        b_line = broadening[self.broadening_group]
        shift = self.rest_cm1 * velocity_factor_minus_one(v_line)
        x0_rel = self.rest_rel_cm1 + shift
        x0 = self.rest_cm1 + shift
        sg = x0 * b_line / C_KMS
        return x0_rel, x0, sg

    def unit_fluxes(self, theta, fwhm_cm1):
        """Flux (cm^-1) of each line per unit amplitude."""
        _, _, sg = self.line_kinematics(theta)
        return self.flux_fn(fwhm_cm1, sg)

    def line_coefficients(self, theta, fwhm_cm1):
        """Amplitude of each line per unit of its column's amplitude parameter
        (1 for primaries; ratio * fluxunit(primary)/fluxunit(line) for tied lines; negative
        for absorption lines)."""
        fu = self.unit_fluxes(theta, fwhm_cm1)
        coef = jnp.where(self.is_primary, 1.0, self.flux_ratio * fu[self.primary_of] / fu)
        return coef if self.line_sign is None else coef * self.line_sign

    def ratio_coefficients(self, theta, fwhm_cm1):
        """Per ratio range, the dependent line's amplitude per unit primary amplitude at the
        range's two ends, ``(lo, hi) x fluxunit(primary) / fluxunit(dependent)``, shape (R, 2)."""
        fu = self.unit_fluxes(theta, fwhm_cm1)
        return jnp.stack([jnp.stack([lo * fu[p] / fu[d], hi * fu[p] / fu[d]]) for _, _, p, d, lo, hi in self.ratio_pairs])

    def column_amplitudes(self, theta, alpha, fwhm_cm1):
        """The linear parameters with each ratio range's cone coefficients ``(c_lo, c_hi)``
        (in the primary's and the dependent's column) turned into the two lines' own
        amplitude parameters: ``primary = c_lo + c_hi``, ``dependent = k_lo c_lo + k_hi c_hi``
        (:meth:`ratio_coefficients`). ``alpha`` itself without ratio ranges."""
        if not self.ratio_pairs:
            return alpha
        k = self.ratio_coefficients(theta, fwhm_cm1)
        for r, (jp, jd, *_) in enumerate(self.ratio_pairs):
            c_lo, c_hi = alpha[jp], alpha[jd]
            alpha = alpha.at[jp].set(c_lo + c_hi).at[jd].set(k[r, 0] * c_lo + k[r, 1] * c_hi)
        return alpha

    def line_profiles(self, theta, fwhm_cm1):
        """Unit-peak profile of every line on the grid, shape (n_channels, n_lines)."""
        x0_rel, _, sg = self.line_kinematics(theta)
        if self._uniform_grid is not None:  # uniform axis: sin/cos by angle addition
            return sincgauss_on_grid(self._uniform_grid, x0_rel, jnp.asarray(fwhm_cm1, self.axis.dtype), sg)
        dx = self.axis[:, None] - x0_rel[None, :]
        return self.profile_fn(dx, fwhm_cm1, sg[None, :])

    def design_matrix(self, theta, fwhm_cm1):
        """Columns of the linear parameters, shape (n_channels, n_linear)."""
        prof = self.line_profiles(theta, fwhm_cm1) * self.line_coefficients(theta, fwhm_cm1)
        # each column sums its lines (explicit adds: a tiny matmul per pixel is slower on CPU)
        lines = [sum(prof[:, i] for i in np.flatnonzero(self.column == j)) for j in range(self.spec.n_amplitudes)]
        if self.ratio_pairs:  # the cone of a ratio range: the doublet at its two extreme ratios
            k = self.ratio_coefficients(theta, fwhm_cm1)
            for r, (jp, jd, *_) in enumerate(self.ratio_pairs):
                cp, cd = lines[jp], lines[jd]
                lines[jp], lines[jd] = cp + k[r, 0] * cd, cp + k[r, 1] * cd
        parts = [jnp.stack(lines, axis=1), self.continuum_basis]
        if self.background_basis is not None:
            parts.append(self.background_basis)
        return jnp.concatenate(parts, axis=1)

    def spectrum(self, theta, alpha, fwhm_cm1):
        """Model spectrum on the grid."""
        return self.design_matrix(theta, fwhm_cm1) @ alpha

    def without_background(self, y):
        """``y`` (zeros in unusable channels) less its least-squares projection on the
        background columns (``y`` itself without them): what the starts look at, so that
        bright sky lines do not pull them."""
        if self.background_q is None:
            return y
        return y - self.background_q @ (self.background_q.T @ y)

    def channel_mask(self, y):
        """(valid, weight) of the channels of a spectrum ``y`` (or of a batch: channels on
        the last axis): valid = finite (and of known noise); weight = 1 / relative noise
        where valid, else 0. A fit that multiplies the data and its columns by ``weight``
        is the weighted least-squares fit."""
        valid = jnp.isfinite(y)
        if self.channel_weight is None:
            return valid, valid.astype(jnp.float32)
        valid = valid & (self.channel_weight > 0)
        return valid, jnp.where(valid, self.channel_weight, 0.0)

    def continuum_at_centre(self, alpha):
        """Continuum at the window centre from the linear parameters ``alpha``."""
        na = self.spec.n_amplitudes
        return alpha[na:na + self.spec.n_continuum] @ self.continuum_centre

    def continuum_spectrum(self, alpha):
        """The continuum on the grid (without the background) from the linear parameters."""
        na = self.spec.n_amplitudes
        return self.continuum_basis @ alpha[na:na + self.spec.n_continuum]

    def background_spectrum(self, alpha):
        """The fitted background on the grid (zeros without background columns)."""
        if self.background_basis is None:
            return jnp.zeros(self.grid.n_channels, jnp.float32)
        return self.background_basis @ alpha[self.spec.n_amplitudes + self.spec.n_continuum:]

    # -- derived quantities ---------------------------------------------------------
    def line_amplitudes(self, theta, alpha, fwhm_cm1):
        """Peak amplitude of every line (flux unit of the spectrum)."""
        return self.column_amplitudes(theta, alpha, fwhm_cm1)[self.column] * self.line_coefficients(theta, fwhm_cm1)

    def line_fluxes_cm1(self, theta, alpha, fwhm_cm1):
        """Integrated flux of every line, spectrum unit x cm^-1 (de-redshifted frame)."""
        return self.line_amplitudes(theta, alpha, fwhm_cm1) * self.unit_fluxes(theta, fwhm_cm1)
