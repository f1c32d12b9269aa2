"""What lucijax keeps on disk between processes, beside JAX's compilation cache.

JAX's persistent compilation cache (:func:`lucijax.config.enable_compilation_cache`) skips
XLA compilation in a later process. Two more things are worth keeping, because building them
costs seconds of Python tracing in every process:

* traced batch programs (:mod:`lucijax.engine.stored`, under ``lucijax-programs/``);
* arrays a program is built from, such as the matched filter's templates
  (:func:`stored_arrays`, under ``lucijax-arrays/``).

Every entry's name is a digest of its key, the lucijax source (:func:`code_digest`), the JAX
version and the platform, so a changed code base never reuses a stale entry. Without a
compilation cache directory nothing is stored and everything is computed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of every lucijax source file and of the JAX/jaxlib versions."""
    import jax
    import jaxlib

    h = hashlib.sha256(f"jax {jax.__version__} jaxlib {jaxlib.__version__}".encode())
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_folder(name: str) -> Path | None:
    """``<compilation cache dir>/<name>``, created (None: caching off or not writable)."""
    import jax

    base = jax.config.jax_compilation_cache_dir
    if not base:
        return None
    folder = Path(base) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


def entry_name(key: str) -> str:
    """The file stem of ``key`` (with the platform and the code digest folded in)."""
    import jax

    text = "\n".join([key, jax.default_backend(), code_digest()])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def stored_arrays(key: str, compute) -> tuple[np.ndarray, ...]:
    """``compute()`` (a tuple of numpy arrays), kept on disk under ``key``: a later process
    with the same key and code loads the arrays instead of computing them. A damaged entry is
    computed again; a failed write only costs the next process the computation."""
    return stored_arrays_many([key], lambda todo: [compute()])[0]


def stored_arrays_many(keys, compute) -> list[tuple[np.ndarray, ...]]:
    """:func:`stored_arrays` of several keys at once: ``compute(indices)`` returns the
    tuples of the keys ``indices`` (positions in ``keys``) found on no disk, in one call."""
    folder = cache_folder("lucijax-arrays")
    paths = [None if folder is None else folder / (entry_name(key) + ".npz") for key in keys]
    found: list = [None] * len(keys)
    for i, path in enumerate(paths):
        if path is not None and path.exists():
            try:
                with np.load(path) as f:
                    found[i] = tuple(f[f"a{j}"] for j in range(len(f.files)))
            except Exception as err:  # damaged or foreign: compute again
                log.warning("could not load the stored arrays %s (%s): computing them again", path.name, err)
    todo = [i for i, f in enumerate(found) if f is None]
    if todo:
        for i, arrays in zip(todo, compute(todo)):
            found[i] = tuple(np.asarray(a) for a in arrays)
            if paths[i] is not None:
                _store(paths[i], found[i])
    return found


def _store(path: Path, arrays) -> None:
    try:
        buf = io.BytesIO()
        np.savez(buf, **{f"a{i}": a for i, a in enumerate(arrays)})
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not store arrays (%s)", err)


__all__ = ["code_digest", "cache_folder", "entry_name", "stored_arrays", "stored_arrays_many"]
