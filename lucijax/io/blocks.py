"""Blocks of a cube: how a region is tiled and read, written once.

Every pass over a cube goes block by block: a block is a ``block`` x ``block`` slab of
pixels, read in one call (one contiguous HDF5/FITS read), so memory stays bounded whatever
the cube's size. :func:`tile` cuts a region into blocks, :func:`selected` says which pixels
of a block a mask keeps, :func:`read_ahead` reads the next block on a background thread
while the caller works on the current one, and :func:`fold` reduces a masked region to one
value (sums, stacks) for the views that combine pixels. The engine
(:func:`lucijax.engine.map_pixels`) maps programs over the same blocks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

Box = tuple[int, int, int, int]

#: Pixels per side of a block when none is given.
DEFAULT_BLOCK = 64


def tile(box: Box, block: int = DEFAULT_BLOCK) -> list[Box]:
    """The blocks ``(x0, x1, y0, y1)`` of a pixel box, x-major (the last ones clipped)."""
    x0, x1, y0, y1 = (int(v) for v in box)
    block = int(block)
    if block < 1:
        raise ValueError(f"block size must be >= 1, got {block}")
    return [(bx, min(bx + block, x1), by, min(by + block, y1)) for bx in range(x0, x1, block) for by in range(y0, y1, block)]


def selected(mask_xy: np.ndarray | None, b: Box, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Flat (x-major) indices of the pixels of block ``b`` that ``mask_xy`` keeps (every
    pixel when the mask is None); ``origin`` is the mask's pixel (0, 0) in block
    coordinates."""
    n = (b[1] - b[0]) * (b[3] - b[2])
    if mask_xy is None:
        return np.arange(n)
    ox, oy = origin
    return np.flatnonzero(mask_xy[b[0] - ox : b[1] - ox, b[2] - oy : b[3] - oy])


def read_ahead(boxes: Iterable[Box], read: Callable[[Box], object]) -> Iterator[tuple[Box, object]]:
    """``(box, read(box))`` for each box, reading the next one on a background thread while
    the caller works on the current one."""
    boxes = list(boxes)
    if not boxes:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        future = reader.submit(read, boxes[0])
        for i, b in enumerate(boxes):
            data = future.result()
            if i + 1 < len(boxes):
                future = reader.submit(read, boxes[i + 1])
            yield b, data


def fold(cube, mask_yx: np.ndarray, step: Callable, acc, *, block: int = DEFAULT_BLOCK, calib: bool = False):
    """Reduce the pixels a ``[y, x]`` mask keeps: ``acc = step(acc, box, spectra, calib)``
    for each block holding any, with ``spectra`` (n, n_channels) of the kept pixels of the
    block, x-major, and their calibration-laser wavelengths (n,) (None unless ``calib``, or
    when the cube has none). Returns the final ``acc``."""
    m = np.asarray(mask_yx, bool)
    if not m.any():
        raise ValueError("the mask selects no pixel")
    ys = np.flatnonzero(m.any(axis=1))
    xs = np.flatnonzero(m.any(axis=0))
    bbox = (int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1)
    mask_xy = m.T
    boxes = [b for b in tile(bbox, block) if selected(mask_xy, b).size]

    def read(b):
        idx = selected(mask_xy, b)
        spectra = cube.read_spectra(*b)
        spectra = spectra.reshape(-1, spectra.shape[-1])[idx]
        cm = cube.read_calib_map(*b) if calib else None
        return spectra, (None if cm is None else np.asarray(cm, np.float64).reshape(-1)[idx])

    for b, (spectra, cm) in read_ahead(boxes, read):
        acc = step(acc, b, spectra, cm)
    return acc


__all__ = ["Box", "DEFAULT_BLOCK", "tile", "selected", "read_ahead", "fold"]
