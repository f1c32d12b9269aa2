"""Traced fit programs kept on disk, so that a second run skips Python tracing.

JAX's persistent compilation cache (turned on at import, ``$LUCIJAX_CACHE_DIR``) skips XLA
compilation in a later process, but every process still traces the fit in Python first --
several seconds for the sincgauss fit with its network. :class:`StoredProgram` wraps a
jitted batch function: the first call with a given input signature exports the traced
program (:mod:`jax.export`, StableHLO) into ``<cache dir>/lucijax-programs/``; a later
process with the same key loads it and calls it (the compilation then comes from the
persistent cache). The key must hold everything the program depends on besides the
inputs; the lucijax source, the JAX version and the platform are added to it here, so a
changed code base never reuses a stale program.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from pathlib import Path

import jax

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Digest of every lucijax source file and of the JAX/jaxlib versions."""
    import jaxlib

    h = hashlib.sha256(f"jax {jax.__version__} jaxlib {jaxlib.__version__}".encode())
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def program_folder() -> Path | None:
    """Where traced programs are kept: beside JAX's compilation cache (None: caching off)."""
    base = jax.config.jax_compilation_cache_dir
    if not base:
        return None
    folder = Path(base) / "lucijax-programs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


def _register_pytrees():
    from lucijax.fit.map import PixelFit

    try:
        jax.export.register_namedtuple_serialization(PixelFit, serialized_name="lucijax.PixelFit")
    except ValueError:  # already registered
        pass


class StoredProgram:
    """``fn`` (a jitted function of arrays) traced once per input signature, ever.

    Parameters
    ----------
    fn : callable
        The jitted function.
    key : str
        Everything the traced program depends on besides its inputs (line set, model,
        settings, axis, network weights...), as text.
    """

    def __init__(self, fn, key: str):
        self.fn = fn
        self.key = key
        self._programs: dict = {}
        self._lock = threading.Lock()  # one thread traces; the others wait for its program

    def _path(self, signature) -> Path | None:
        folder = program_folder()
        if folder is None:
            return None
        text = "\n".join([self.key, repr(signature), jax.default_backend(), _code_digest()])
        return folder / (hashlib.sha256(text.encode()).hexdigest()[:32] + ".jaxexport")

    def _program(self, args):
        signature = tuple((tuple(a.shape), str(a.dtype)) for a in args)
        prog = self._programs.get(signature)
        if prog is not None:
            return prog
        path = self._path(signature)
        exported = None
        _register_pytrees()
        if path is not None and path.exists():
            try:
                exported = jax.export.deserialize(bytearray(path.read_bytes()))
            except Exception as err:  # a damaged or foreign file: trace again
                log.warning("could not load the stored program %s (%s): tracing the fit again", path.name, err)
        if exported is None:
            if path is None:
                prog = self.fn
            else:
                exported = jax.export.export(self.fn)(*(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args))
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                try:
                    tmp.write_bytes(exported.serialize())
                    os.replace(tmp, path)
                except Exception as err:  # no disk space, no flatbuffers...: the fit goes on
                    log.warning("could not store the traced fit program (%s)", err)
        if exported is not None:
            prog = jax.jit(exported.call)
        self._programs[signature] = prog
        return prog

    def __call__(self, *args):
        with self._lock:
            prog = self._program(args)
        return prog(*args)
