"""Per-spectrum fitters, each an object that owns only its options and builds the program
the engine maps over a cube: :class:`MAP` (bounded least squares with Laplace errors,
started by a network or the matched filter), :class:`Frozen` (amplitudes at given
kinematics), :class:`Components` (several ordered kinematic components)."""

from lucijax.solvers.components import Components
from lucijax.solvers.fitting import FitSettings, PixelFit
from lucijax.solvers.frozen import Frozen
from lucijax.solvers.map import MAP, MapFit

__all__ = ["MAP", "Frozen", "Components", "MapFit", "PixelFit", "FitSettings"]
