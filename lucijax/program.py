"""What the engine maps over a cube: a per-spectrum :class:`Program`.

A program is written for ONE spectrum. It has three parts, each optional but the first:

* ``prepare(block) -> inputs``: host side (numpy), once per block of pixels: turn the raw
  spectra of a :class:`Block` into the per-pixel inputs of the program (the channels of the
  fit window, each pixel's instrumental line width, its noise from a noise window...),
  each an array with one row per pixel;
* ``one(inputs) -> outputs``: the computation for ONE pixel, in ``jax.numpy`` (inputs
  without their leading pixel axis); the engine vectorises it (``jax.vmap``), compiles it
  once per batch shape and runs it on every device. ``outputs`` is any pytree of arrays (a
  ``NamedTuple`` such as :class:`lucijax.solvers.map.PixelFit`); ``host`` replaces ``one``
  for programs that are plain numpy over a batch (the S/N maps);
* ``finish(outputs, inputs) -> outputs``: host side, once per batch, on numpy arrays
  (rescaling to a window noise, diagnostics that exist only in numpy).

A program may also give the engine a :class:`ProgressNote`: a count of the pixels of each
finished batch that pass a check (a sampler's R-hat), shown as a running share on the
progress bar.

Solvers and samplers build programs (:meth:`lucijax.solvers.map.MAP.program`, ...); the
engine (:func:`lucijax.engine.map_pixels`) runs them. Nothing here imports either.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class Block:
    """The pixels of one block of a cube view, as the engine hands them to ``prepare``.

    Attributes
    ----------
    box : (x0, x1, y0, y1)
        The block, in pixels of the view (half-open).
    index : (n,) int array
        Flat (x-major) indices inside the block of the pixels to compute (the others are
        masked out).
    xy : (n, 2) int32 array
        View coordinates of those pixels.
    spectra : (n, n_channels) float32 array or None
        Their spectra on the cube's whole spectral axis (None for programs that read none).
    calib : (n,) float64 array or None
        Their calibration-laser wavelength (nm), or None when the cube has no map.
    given : dict of arrays
        Per-pixel inputs supplied with the program (e.g. the MAP fit a sampler starts from),
        rows of those pixels.
    header : CubeHeader
        The view's header.
    """

    box: tuple[int, int, int, int]
    index: np.ndarray
    xy: np.ndarray
    spectra: np.ndarray | None
    calib: np.ndarray | None
    given: Mapping[str, np.ndarray]
    header: Any

    @property
    def n(self) -> int:
        return int(self.index.size)


@dataclass(frozen=True)
class ProgressNote:
    """A running share the engine shows on its progress bar (e.g. ``R-hat<=1.05: 98.7%``).

    Attributes
    ----------
    label : str
        What is counted ('R-hat<=1.05').
    count : callable ``outputs -> (n_ok, n_total)``
        Called by the engine on the outputs of every finished batch (after ``finish``, one
        row per real pixel, padding removed): how many of its pixels pass, out of how many.
    """

    label: str
    count: Callable[[Any], tuple[int, int]]

    def text(self, n_ok: int, n_total: int) -> str:
        """The bar's note for running totals ``n_ok`` out of ``n_total``."""
        share = 100.0 * n_ok / n_total if n_total else float("nan")
        return f"{self.label}: {share:.1f}%"


@dataclass(frozen=True)
class Program:
    """A per-spectrum program (see the module docstring).

    Attributes
    ----------
    name : str
        What it does, for progress bars and messages ('MAP fit', 'NUTS').
    key : str
        Everything its results depend on besides the pixels' data, as text (model, solver
        options, network weights...): part of the checkpoint fingerprint and of the key of
        the traced program kept on disk.
    prepare : callable ``Block -> dict``
    one : callable ``dict -> pytree``, optional
    host : callable ``dict -> pytree``, optional
        A numpy function of a whole batch (rows = pixels), used instead of ``one``.
    finish : callable ``(pytree, dict) -> pytree``, optional
    given : dict of arrays ``[nx, ny, ...]``
        Per-pixel inputs over the whole view, sliced by the engine into ``Block.given``.
    pad : dict
        Value of each input in the padding rows of the last batch of a block (default: a
        copy of the first row); e.g. ``{'y': nan}`` makes padding spectra invalid, which
        stop at once.
    bulk : tuple of str
        Output fields that are streamed block by block to the caller's sink instead of
        being assembled into maps (posterior samples, model cubes).
    reads_spectra : bool
        False for programs that need no spectra (a model cube from fitted parameters).
    batch_size : int, optional
        The program's own default batch size (None: the engine's default for the backend).
    spectra_per_device : int
        Spectra of a run that make one more device worth its compiled copy, when the engine
        chooses the devices (it never uses more devices than batches): 1 for slow programs
        (samplers); the MAP fit takes ~1 ms of CPU per spectrum against ~0.5 s to load a
        device's copy from the compilation cache.
    stored : bool
        Keep the traced batch program on disk (:mod:`lucijax.engine.stored`) so that a later
        process skips tracing.
    context : callable returning a context manager, optional
        Entered around every compiled call (nested sampling runs in float64).
    namedtuples : tuple of types
        The NamedTuple types in ``one``'s outputs (a stored program needs them registered
        before it is loaded in a later process).
    meta : dict
        Anything the caller needs to interpret the outputs (the line model of the results,
        the start actually used); the engine never reads it.
    progress_note : ProgressNote, optional
        A running share of the finished pixels shown on the progress bar after every batch
        (a sampler's share of pixels with R-hat under its threshold); None shows none.
    """

    name: str
    key: str
    prepare: Callable[[Block], dict]
    one: Callable[[dict], Any] | None = None
    host: Callable[[dict], Any] | None = None
    finish: Callable[[Any, dict], Any] | None = None
    given: Mapping[str, np.ndarray] = field(default_factory=dict)
    pad: Mapping[str, float] = field(default_factory=dict)
    bulk: tuple[str, ...] = ()
    reads_spectra: bool = True
    batch_size: int | None = None
    spectra_per_device: int = 1
    stored: bool = True
    context: Callable[[], Any] | None = None
    namedtuples: tuple[type, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    progress_note: ProgressNote | None = None

    def __post_init__(self):
        if (self.one is None) == (self.host is None):
            raise ValueError(f"program {self.name!r}: give exactly one of one= (per spectrum, jax) and host= (numpy)")

    def running(self):
        """The context the compiled calls run in (a null context by default)."""
        return self.context() if self.context is not None else contextlib.nullcontext()


__all__ = ["Block", "Program", "ProgressNote"]
