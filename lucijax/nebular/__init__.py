"""Physical maps from fitted line maps: ratios, BPT classes, electron density (PyNeb),
metallicity, Balmer-decrement extinction, detection limits, with errors from each pixel's
flux covariance; SN2 maps resampled onto SN3's grid (``reproject``)."""

from lucijax.nebular.products import RATIOS, PhysicsResult, physics_maps
from lucijax.nebular.fluxes import LineFluxes, line_fluxes, read_line_fluxes

__all__ = ["physics_maps", "PhysicsResult", "RATIOS", "LineFluxes", "line_fluxes", "read_line_fluxes"]
