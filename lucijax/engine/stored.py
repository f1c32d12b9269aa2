"""Traced batch programs kept on disk, so that a second run skips Python tracing.

JAX's persistent compilation cache (:func:`lucijax.config.enable_compilation_cache`) skips
XLA compilation in a later process, but every process still traces the program in Python
first -- several seconds for the sincgauss fit with its network. :func:`traced` exports the
traced batch program (:mod:`jax.export`, StableHLO) into ``<cache dir>/lucijax-programs/``
the first time a given program and input signature is seen; a later process with the same
key loads it instead of tracing (the compilation then comes from the persistent cache).
The key must hold everything the program depends on besides its inputs; the lucijax source,
the JAX version and the platform are added here, so a changed code base never reuses a
stale program. Without a compilation cache directory nothing is stored.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import jax

from lucijax.diskcache import cache_folder, code_digest, entry_name

log = logging.getLogger(__name__)

_LOCK = threading.Lock()


def program_folder() -> Path | None:
    """Where traced programs are kept: beside JAX's compilation cache (None: caching off)."""
    return cache_folder("lucijax-programs")


def register_namedtuples(types) -> None:
    """Make NamedTuple output types serialisable by :mod:`jax.export` (idempotent)."""
    for cls in types:
        try:
            jax.export.register_namedtuple_serialization(cls, serialized_name=f"{cls.__module__}.{cls.__qualname__}")
        except ValueError:  # already registered
            pass


def _path(key: str, structs) -> Path | None:
    folder = program_folder()
    if folder is None:
        return None
    leaves, tree = jax.tree_util.tree_flatten(structs)
    signature = repr(tree) + repr([(tuple(s.shape), str(s.dtype)) for s in leaves])
    return folder / (entry_name("\n".join([key, signature])) + ".jaxexport")


def traced(fn, key: str, structs, namedtuples=()):
    """A jitted callable equivalent to ``fn`` (a jitted function of one pytree argument)
    for inputs of the shapes and dtypes ``structs``: the program stored on disk under
    ``key`` when there is one, else ``fn`` itself after storing its export."""
    path = _path(key, structs)
    if path is None:
        return fn
    register_namedtuples(namedtuples)
    with _LOCK:
        exported = None
        if path.exists():
            try:
                exported = jax.export.deserialize(bytearray(path.read_bytes()))
            except Exception as err:  # a damaged or foreign file: trace again
                log.warning("could not load the stored program %s (%s): tracing it again", path.name, err)
        if exported is None:
            try:
                exported = jax.export.export(fn)(structs)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(exported.serialize())
                os.replace(tmp, path)
            except Exception as err:  # no disk space, an output type not registered...: run unstored
                log.warning("could not store the traced program (%s)", err)
                return fn
    return jax.jit(exported.call)


__all__ = ["traced", "program_folder", "code_digest", "register_namedtuples"]
