"""One pixel's spectrum from its parameters: the line model of a fit.

The model is ``y(x) = sum_j alpha_j column_j(x; theta)``, linear in the amplitudes and
continuum coefficients ``alpha`` and non-linear in ``theta`` = (velocity, broadening) of
each kinematic group. ``column_j`` is the unit-amplitude profile of primary line ``j``
plus its tied lines (flux ratios fixed), then the continuum polynomials.

Everything here is for ONE spectrum, in float32 ``jax.numpy``; the fit vectorises it.
Wavenumbers are handled relative to a reference ``ref_cm1`` near the band centre so that
float32 keeps ~1e-3 km/s precision in line positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from lucijax.constants import C_KMS
from lucijax.lineshapes import UniformGrid, get_model, sincgauss_on_grid, uniform_step
from lucijax.lines import LineSet


@dataclass(frozen=True)
class ModelSpec:
    """Static description of the line model (hashable: one compilation per spec).

    Attributes
    ----------
    line_set : LineSet
    shape : {'sincgauss', 'sinc', 'gaussian'}
    continuum_order : int
        Degree of the continuum polynomial (0 = constant).
    """

    line_set: LineSet
    shape: str = "sincgauss"
    continuum_order: int = 0

    def __post_init__(self):
        get_model(self.shape)  # validates the name
        if not 0 <= int(self.continuum_order) <= 5:
            raise ValueError("continuum_order must be between 0 and 5")

    @property
    def has_broadening(self) -> bool:
        return get_model(self.shape)[2]

    @property
    def n_groups(self) -> int:
        return self.line_set.n_groups

    @property
    def n_nonlinear(self) -> int:
        """Velocity (and broadening) per kinematic group."""
        return self.n_groups * (2 if self.has_broadening else 1)

    @property
    def n_amplitudes(self) -> int:
        return len(self.line_set.primary_lines)

    @property
    def n_linear(self) -> int:
        return self.n_amplitudes + self.continuum_order + 1


@dataclass(frozen=True)
class SpectralGrid:
    """The channels a fit uses (host-side, float64), de-redshifted.

    ``axis_rel_cm1 = axis * (1 + z) - ref_cm1`` for the channels inside the window.
    """

    axis_rel_cm1: np.ndarray
    ref_cm1: float
    redshift: float = 0.0

    @property
    def n_channels(self) -> int:
        return int(self.axis_rel_cm1.size)

    @property
    def continuum_coordinate(self) -> np.ndarray:
        """Window coordinate in [-1, 1] for the continuum polynomials."""
        a = self.axis_rel_cm1
        return (2.0 * (a - a.min()) / max(a.max() - a.min(), 1e-30) - 1.0)


def velocity_factor_minus_one(velocity_kms):
    """``sqrt((1 - v/c)/(1 + v/c)) - 1``, accurate for small v (relativistic Doppler)."""
    beta = velocity_kms / C_KMS
    return jnp.expm1(0.5 * (jnp.log1p(-beta) - jnp.log1p(beta)))


def line_position_cm1(rest_cm1, velocity_kms):
    """Observed (de-redshifted) position ``x0 = sigma_rest sqrt((1-v/c)/(1+v/c))``."""
    return rest_cm1 * (1.0 + velocity_factor_minus_one(velocity_kms))


def velocity_from_position(x0_cm1, rest_cm1):
    """Inverse of :func:`line_position_cm1` (numpy or jax arrays)."""
    r2 = (np.asarray(x0_cm1) / np.asarray(rest_cm1)) ** 2
    return C_KMS * (1.0 - r2) / (1.0 + r2)


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
        self.rest_cm1 = jnp.asarray(ls.rest_cm1, jnp.float32)
        self.rest_rel_cm1 = jnp.asarray(ls.rest_cm1 - grid.ref_cm1, jnp.float32)
        self.group = np.asarray(ls.groups, np.int32)
        # ordered components: group velocities = T @ velocity parameters (None: identity)
        self.velocity_matrix = jnp.asarray(ls.velocity_matrix(), jnp.float32) if ls.velocity_chain else None
        self.column = ls.amplitude_column()
        self.flux_ratio = jnp.asarray(ls.flux_ratio_cm1(), jnp.float32)
        self.is_primary = np.zeros(ls.n_lines, bool)
        self.is_primary[list(ls.primary_lines)] = True
        self.primary_of = np.asarray(ls.primary_lines, np.int32)[self.column]
        self.axis = jnp.asarray(grid.axis_rel_cm1, jnp.float32)
        # (first, step, n) of a uniform axis, for the sincgauss's fast path
        step = uniform_step(grid.axis_rel_cm1) if spec.shape == "sincgauss" else None
        self._uniform_grid = None if step is None else UniformGrid(grid.axis_rel_cm1[0], step, grid.n_channels)
        t = jnp.asarray(grid.continuum_coordinate, jnp.float32)
        self.continuum_basis = jnp.stack([t**k for k in range(spec.continuum_order + 1)], axis=1)

    # -- parameters --------------------------------------------------------------
    def split_theta(self, theta):
        """(velocity_kms[G], broadening_kms[G]) from the non-linear vector (broadening 0
        for the sinc, which has none). With a velocity chain in the line set, the velocity
        parameters of chained groups are offsets from their base group, and the returned
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
        b_line = broadening[self.group]
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
        (1 for primaries; ratio * fluxunit(primary)/fluxunit(line) for tied lines)."""
        fu = self.unit_fluxes(theta, fwhm_cm1)
        return jnp.where(self.is_primary, 1.0, self.flux_ratio * fu[self.primary_of] / fu)

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
        return jnp.concatenate([jnp.stack(lines, axis=1), self.continuum_basis], axis=1)

    def spectrum(self, theta, alpha, fwhm_cm1):
        """Model spectrum on the grid."""
        return self.design_matrix(theta, fwhm_cm1) @ alpha

    # -- derived quantities ---------------------------------------------------------
    def line_amplitudes(self, theta, alpha, fwhm_cm1):
        """Peak amplitude of every line (flux unit of the spectrum)."""
        return alpha[self.column] * self.line_coefficients(theta, fwhm_cm1)

    def line_fluxes_cm1(self, theta, alpha, fwhm_cm1):
        """Integrated flux of every line, spectrum unit x cm^-1 (de-redshifted frame)."""
        return self.line_amplitudes(theta, alpha, fwhm_cm1) * self.unit_fluxes(theta, fwhm_cm1)
