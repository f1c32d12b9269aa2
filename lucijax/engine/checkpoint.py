"""Finished blocks on disk: a run killed at any point (even with ``kill -9``) and started
again computes only the blocks that are missing.

One ``.npz`` per block, written to a temporary name and renamed (atomic on POSIX), holding
the block's output leaves and the pytree structure they form. The folder is stamped with
the run's fingerprint; blocks of another run (another cube, model, solver, mask, block
size...) are removed, never mixed in. An exclusive lock on the folder makes a second run
into the same folder fail at once instead of sharing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class CheckpointBusyError(RuntimeError):
    """Another run holds the checkpoint folder."""


def digest(*parts) -> str:
    """A short stable digest of text, bytes and numpy arrays."""
    h = hashlib.sha256()
    for p in parts:
        if p is None:
            h.update(b"<none>")
        elif isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


class BlockCheckpoint:
    """Results of finished blocks, one file per block (see the module docstring).

    Parameters
    ----------
    folder : path
    fingerprint : str
        What makes a block reusable: the same cube, view, program and blocks.
    """

    def __init__(self, folder, fingerprint: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.folder)
        stamp = self.folder / "fingerprint.txt"
        if stamp.exists() and stamp.read_text().strip() != fingerprint:
            stale = list(self.folder.glob("block_*.npz"))
            log.warning("checkpoint folder %s holds results of another run: %d stale blocks removed", folder, len(stale))
            for f in stale:
                f.unlink()
        stamp.write_text(fingerprint)

    def _path(self, box) -> Path:
        return self.folder / f"block_{box[0]:05d}_{box[2]:05d}.npz"

    def has(self, box) -> bool:
        return self._path(box).exists()

    def save(self, box, leaves: list, treedef) -> None:
        final = self._path(box)
        tmp = final.with_name(f".{final.stem}.tmp.npz")  # not matched by block_*.npz
        arrays = {f"leaf{i:03d}": np.asarray(v) for i, v in enumerate(leaves)}
        arrays["treedef"] = np.frombuffer(pickle.dumps(treedef), np.uint8)
        np.savez(tmp, **arrays)
        os.replace(tmp, final)

    def load(self, box) -> tuple[list, object]:
        with np.load(self._path(box)) as z:
            treedef = pickle.loads(z["treedef"].tobytes())
            leaves = [z[k] for k in sorted(k for k in z.files if k.startswith("leaf"))]
        return leaves, treedef

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _lock(folder: Path):
    """An exclusive, non-blocking lock on ``folder/lock`` held until :meth:`close` or the
    process ends (the kernel releases it even after ``kill -9``)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fh = open(folder / "lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise CheckpointBusyError(f"another run is using {folder}: wait for it to end or choose another output folder") from None
    return fh


__all__ = ["BlockCheckpoint", "CheckpointBusyError", "digest"]
