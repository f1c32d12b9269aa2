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

import contextlib
import functools
import hashlib
import logging
import os
import pickle
import platform
import sys
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


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """What an executable compiled here depends on beyond the program: the XLA flags, the
    64-bit switch and the CPU (its model and instruction-set flags)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        cpu = "".join(sorted(set(lines)))
    except OSError:
        pass
    return "\n".join([os.environ.get("XLA_FLAGS", ""), str(jax.config.jax_enable_x64), cpu])


def _compiled_path(digest: str, device) -> Path | None:
    folder = program_folder()
    if folder is None:
        return None
    import jaxlib

    # the device's kind too: GPUs of two generations sharing one cache folder (a cluster's
    # file system) must not load each other's machine code
    kind = getattr(device, "device_kind", "")
    where = "\n".join([digest, f"jax {jax.__version__} jaxlib {jaxlib.__version__}",
                        f"{device.platform} {device.id} {kind} {device.client.platform_version}", _host()])
    return folder / (hashlib.sha256(where.encode()).hexdigest()[:32] + ".xla")


@functools.lru_cache(maxsize=1)
def _lapack_ready() -> bool:
    """LAPACK's kernels (which XLA:CPU programs call for LU and triangular solves) are
    bound when a program using them is lowered; a loaded executable is not lowered, so they
    are bound here, once (JAX's own call: a private one, hence the guard)."""
    try:
        from jax._src.lax.linalg import initialize_lapack

        with _scipy_lapack_alone():
            initialize_lapack()
        return True
    except Exception as err:  # another JAX: load no executables, lower as before
        log.info("no stored executables (%s)", err)
        return False


@contextlib.contextmanager
def _scipy_lapack_alone():
    """jaxlib takes LAPACK's function pointers from ``scipy.linalg.cython_blas`` and
    ``cython_lapack``; importing them imports ``scipy.linalg`` (0.1-0.15 s, mostly scipy's
    array-API layer). When ``scipy.linalg`` is not imported yet, the two extension modules
    are loaded alone for the binding and removed from ``sys.modules`` after it (a later
    ``import scipy.linalg`` then loads them as usual); any failure: the usual import."""
    added = []
    if "scipy.linalg" not in sys.modules:
        try:
            import importlib.util

            import scipy

            folder = Path(scipy.__file__).parent / "linalg"
            for name in ("cython_blas", "cython_lapack"):
                (path,) = folder.glob(f"{name}.*.so")
                spec = importlib.util.spec_from_file_location(f"scipy.linalg.{name}", path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                added.append(spec.name)
                spec.loader.exec_module(module)
        except Exception:  # another layout: let jaxlib import scipy.linalg
            for name in added:
                sys.modules.pop(name, None)
            added = []
    try:
        yield
    finally:
        for name in added:
            if sys.modules.get(name) is not None and "scipy.linalg" not in sys.modules:
                sys.modules.pop(name, None)


def load_compiled(digest: str, device):
    """The compiled executable on ``device`` of the stored program of digest ``digest``
    (:func:`stored_program`), as :func:`store_compiled` left it (None: none stored, or it
    failed to load)."""
    path = _compiled_path(digest, device)
    if path is None or not path.exists() or (device.platform == "cpu" and not _lapack_ready()):
        return None
    from jax.experimental import serialize_executable

    try:
        serialized, in_tree, out_tree = pickle.loads(path.read_bytes())
        return serialize_executable.deserialize_and_load(serialized, in_tree, out_tree, backend=device.client,
                                                         execution_devices=[device])
    except Exception as err:  # damaged, foreign or from another jaxlib: compile (from JAX's cache)
        log.warning("could not load the stored executable %s (%s): compiling it", path.name, err)
        return None


def compile_fresh(lowered):
    """``(lowered.compile(), fresh)``: ``fresh`` when XLA compiled it in this call (JAX
    wrote it to its cache) rather than JAX's cache or memory giving it: an executable
    loaded from JAX's cache serialises without its machine code (jaxlib 0.10.2: "Function
    ... not found" when the copy runs), so only a fresh one may be stored."""
    events = []

    def listen(event, **kwargs):
        if event in ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"):
            events.append(event)

    jax.monitoring.register_event_listener(listen)
    try:
        exe = lowered.compile()
    finally:
        jax.monitoring.unregister_event_listener(listen)
    return exe, events == ["/jax/compilation_cache/cache_misses"]


def store_compiled(digest: str, device, compiled) -> None:
    """Keep ``compiled`` (the stored program of digest ``digest`` compiled for ``device`` by
    XLA in this process: see :func:`compile_fresh`) for :func:`load_compiled`."""
    path = _compiled_path(digest, device)
    if path is None:
        return
    from jax.experimental import serialize_executable

    unloaded = getattr(getattr(compiled, "_executable", None), "_unloaded_executable", None)
    if unloaded is None or any(getattr(unloaded, a, None) for a in ("host_callbacks", "keepalive", "ordered_effects",
                                                                    "unordered_effects")):
        return  # Python callbacks or effects: a loaded executable would lack them (JAX's cache skips these too)
    try:
        data = pickle.dumps(serialize_executable.serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except Exception as err:  # not serialisable (constants passed as arguments), no disk space: not kept
        log.info("could not store the executable (%s)", err)


@contextlib.contextmanager
def _innermost_locations():
    """Each operation's source location is its innermost line only, not the whole call
    stack, and names its file without the folder: the stored program (and so its digest,
    which names its executables) then does not depend on who called the fit (the command
    line, a notebook, a test), on a line moved in their code, or on where lucijax is
    installed -- one executable for every caller of the same program."""
    settings = {"jax_include_full_tracebacks_in_locations": False, "jax_hlo_source_file_canonicalization_regex": r"^.*/"}
    before = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)


def traced(fn, key: str, structs, namedtuples=()):
    """A jitted callable equivalent to ``fn`` (a jitted function of one pytree argument)
    for inputs of the shapes and dtypes ``structs``: the program stored on disk under
    ``key`` when there is one, else ``fn`` itself after storing its export."""
    return stored_program(fn, key, structs, namedtuples)[0]


def stored_program(fn, key: str, structs, namedtuples=()):
    """``(callable, digest)``: :func:`traced`'s callable and the digest of the stored
    program's content (None: nothing stored), which names its compiled executables."""
    path = _path(key, structs)
    if path is None:
        return fn, None
    register_namedtuples(namedtuples)
    with _LOCK:
        exported = data = None
        if path.exists():
            try:
                data = path.read_bytes()
                exported = jax.export.deserialize(bytearray(data))
            except Exception as err:  # a damaged or foreign file: trace again
                log.warning("could not load the stored program %s (%s): tracing it again", path.name, err)
        if exported is None:
            try:
                with _innermost_locations():
                    exported = jax.export.export(fn)(structs)
                data = bytes(exported.serialize())
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except Exception as err:  # no disk space, an output type not registered...: run unstored
                log.warning("could not store the traced program (%s)", err)
                return fn, None
    return jax.jit(exported.call), hashlib.sha256(data).hexdigest()[:32]


__all__ = ["traced", "stored_program", "load_compiled", "store_compiled", "compile_fresh", "program_folder", "code_digest", "register_namedtuples"]
