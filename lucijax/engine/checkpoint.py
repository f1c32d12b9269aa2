"""Finished blocks on disk: a run killed at any point (even with ``kill -9``) and started
again computes only the blocks that are missing.

One ``.npz`` per block, written to a temporary name and renamed (atomic on POSIX), holding
the block's output leaves and the pytree structure they form. The folder is stamped with
the run's fingerprint; blocks of another run (another cube, model, solver, mask, block
size...) are removed, never mixed in. An exclusive lock on the folder makes a second run
into the same folder fail at once instead of sharing it. Each block also keeps a checksum
of the spectra it was computed from; on resume a finished block whose data changed (a cube
replaced at the same path, even with its size, header and modification time kept) is
computed again.
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
        self._lock = folder_lock(self.folder)
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

    def save(self, box, leaves: list, treedef, data_digest: int | None = None) -> None:
        """Store a finished block; ``data_digest`` identifies the data it was computed from
        (:func:`data_digest`)."""
        final = self._path(box)
        tmp = final.with_name(f".{final.stem}.tmp.npz")  # not matched by block_*.npz
        arrays = {f"leaf{i:03d}": np.asarray(v) for i, v in enumerate(leaves)}
        arrays["treedef"] = np.frombuffer(pickle.dumps(treedef), np.uint8)
        if data_digest is not None:
            arrays["data_digest"] = np.asarray([data_digest], np.int64)
        np.savez(tmp, **arrays)
        os.replace(tmp, final)

    def data_digest(self, box) -> int | None:
        """The digest of the data a finished block was computed from (None: not stored)."""
        try:
            with np.load(self._path(box)) as z:
                return int(z["data_digest"][0]) if "data_digest" in z.files else None
        except (OSError, ValueError, KeyError):  # unreadable: compute the block again
            return None

    def discard(self, box) -> None:
        self._path(box).unlink(missing_ok=True)

    def load(self, box) -> tuple[list, object]:
        with np.load(self._path(box)) as z:
            treedef = pickle.loads(z["treedef"].tobytes())
            leaves = [z[k] for k in sorted(k for k in z.files if k.startswith("leaf"))]
        return leaves, treedef

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def data_digest(*arrays) -> int:
    """A fast checksum (Adler-32, ~3 GB/s) of the arrays a block is computed from: a
    finished block is reused only while the file still holds the same data."""
    import zlib

    value = 1
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            value = zlib.adler32(f"{a.dtype.str}{a.shape}".encode(), value)
            value = zlib.adler32(a.view(np.uint8).reshape(-1), value)
    return value


def folder_lock(folder, name: str = "lock"):
    """An exclusive, non-blocking lock on ``folder/name``, held until the returned file is
    closed or the process ends (the kernel releases it even after ``kill -9``); raises
    :class:`CheckpointBusyError` at once when another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fh = open(Path(folder) / name, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise CheckpointBusyError(f"another run is using {folder}: wait for it to end or choose another output folder") from None
    return fh


__all__ = ["BlockCheckpoint", "CheckpointBusyError", "digest", "data_digest", "folder_lock"]
