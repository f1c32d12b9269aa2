"""Posterior samples of every pixel on disk: one HDF5 dataset chunked by block.

``samples`` has shape ``[x, y, chain, draw, parameter]`` (float32; NaN for pixels not
sampled) with the parameter names as an attribute; linear parameters are in the cube's flux
unit. :class:`SampleStore` is the engine's sink (written block by block, so a whole cube's
draws never sit in memory, and renamed into place when complete); :func:`read_samples`
returns one pixel's or a region's draws.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["SampleStore", "read_samples", "remove_stale", "sample_parameter_names"]

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one that is not ours to signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path) -> list[Path]:
    """Delete the temporary files ``.NAME.tmpPID`` of ``path`` left by runs that ended
    without closing their :class:`SampleStore` (``kill -9``, a crash): those whose process
    ``PID`` no longer runs on this machine. Files of a live process are kept. Returns the
    files removed."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.tmp") + r"(\d+)$")
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for f in candidates:
        m = pattern.match(f.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        try:
            f.unlink()
        except FileNotFoundError:  # removed by another run meanwhile
            continue
        except OSError as err:
            log.warning("could not remove %s, left by an earlier run (%s)", f, err)
            continue
        removed.append(f)
        log.info("removed %s, left by an earlier run (process %s) that did not finish", f, m.group(1))
    return removed


def sample_parameter_names(bound, ordered: bool = False) -> list[str]:
    """Names of the raw parameters (the last axis of ``samples``)."""
    spec = bound.spec
    ls = spec.line_set
    G = spec.n_groups
    names = [f"velocity_{g}" for g in range(G)]
    if ordered:
        names[1] = "delta_velocity_1"
    names += [f"broadening_{b}" for b in range(spec.n_broadening)]
    names += [f"amplitude_{ls.names[i]}" for i in ls.primary_lines]
    names += [f"continuum_{k}" for k in range(spec.n_continuum)]
    names += [f"background_{k}" for k in range(spec.n_background)]
    return names


class SampleStore:
    """An HDF5 file of samples written block by block (the engine's ``sink``).

    Parameters
    ----------
    path : path
        The file; it is written under a temporary name (``.NAME.tmpPID``) and renamed on
        :meth:`close`. Temporary files of ``path`` left by earlier runs that were killed
        (their process no longer runs) are removed first (:func:`remove_stale`).
    shape_xy : (nx, ny)
        Pixels of the view.
    names : list of str
        Parameter names.
    block : int
        Chunk side (the engine's block size).
    attrs : dict
        Attributes of the file (region, sampler, ...).
    """

    def __init__(self, path, shape_xy, names, block: int = 64, attrs=None):
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.path)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self._file = h5py.File(self._tmp, "w")
        self.shape_xy = tuple(int(v) for v in shape_xy)
        self.names = list(names)
        self.block = int(block)
        for k, v in (attrs or {}).items():
            self._file.attrs[k] = v
        self._ds = None

    def write(self, box, index, bulk) -> None:
        s = np.asarray(bulk["samples"], np.float32)
        if self._ds is None:
            nx, ny = self.shape_xy
            b = min(self.block, nx), min(self.block, ny)
            self._ds = self._file.create_dataset("samples", shape=(nx, ny) + s.shape[1:], dtype="f4",
                                                 chunks=b + s.shape[1:], fillvalue=np.nan, compression="gzip",
                                                 compression_opts=4)
            self._ds.attrs["parameters"] = np.array(self.names, dtype="S")
            self._ds.attrs["axes"] = "x, y, chain, draw, parameter"
        bx0, bx1, by0, by1 = box
        full = np.full(((bx1 - bx0) * (by1 - by0),) + s.shape[1:], np.nan, np.float32)
        full[index] = s
        self._ds[bx0:bx1, by0:by1] = full.reshape((bx1 - bx0, by1 - by0) + s.shape[1:])

    def rewrite(self, box, index, bulk) -> None:
        """Replace the draws of the pixels ``index`` of ``box`` only (a second run over some
        pixels, e.g. the longer chains of pixels that did not mix); the others keep theirs."""
        if self._ds is None:
            self.write(box, index, bulk)
            return
        s = np.asarray(bulk["samples"], np.float32)
        bx0, bx1, by0, by1 = box
        shape = (bx1 - bx0, by1 - by0) + self._ds.shape[2:]
        if s.shape[1:] != self._ds.shape[2:]:
            raise ValueError(f"draws of shape {s.shape[1:]} cannot replace draws of shape {self._ds.shape[2:]}")
        full = np.asarray(self._ds[bx0:bx1, by0:by1]).reshape((-1,) + shape[2:])
        full[index] = s
        self._ds[bx0:bx1, by0:by1] = full.reshape(shape)

    def close(self, keep: bool = True) -> None:
        """Close the file and move it into place (``keep``) or delete it."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if keep:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def read_samples(path, x=None, y=None) -> tuple[np.ndarray, list[str]]:
    """Draws ``[chain, draw, parameter]`` of pixel ``(x, y)`` (ints), or
    ``[x, y, chain, draw, parameter]`` of a region (slices; default all), and the
    parameter names."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f["samples"]
        names = [n.decode() for n in ds.attrs["parameters"]]
        sx = slice(None) if x is None else x
        sy = slice(None) if y is None else y
        return np.asarray(ds[sx, sy]), names
