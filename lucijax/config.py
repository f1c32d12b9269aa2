"""Process-wide settings, as explicit calls (importing lucijax changes nothing).

* :func:`set_cpu_devices`: split the CPU into one XLA device per core, so that the engine
  runs batches on every core at once (one CPU device runs on ~1 core). Like numpyro's
  ``set_host_device_count``, it must come before JAX starts its backend (before the first
  computation). The command line calls it; a notebook calls it first thing.
* :func:`enable_compilation_cache`: keep compiled programs (and lucijax's traced fit
  programs) on disk, so that a second run of the same kind of fit starts in seconds.

Float64 is never switched on: the fit runs in float32; nested sampling scopes its own
float64 to its runs (:func:`lucijax.bayes.samplers.float64`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Default folder of the compilation cache (``$LUCIJAX_CACHE_DIR`` overrides it; ``off``
#: disables the cache).
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lucijax" / "jax"


def default_cpu_devices() -> int:
    """``$LUCIJAX_CPU_DEVICES``, else the number of cores this process may use."""
    try:
        n = int(os.environ.get("LUCIJAX_CPU_DEVICES", 0))
    except ValueError:
        n = 0
    if n > 0:
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_cpu_devices(n: int | None = None) -> int:
    """Use ``n`` XLA CPU devices (default :func:`default_cpu_devices`); returns the number in
    effect. An explicit ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` wins.
    After JAX has started its backend the count cannot change: then this only checks
    and warns."""
    import jax

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return len(jax.devices("cpu"))
    n = int(n or default_cpu_devices())
    if n < 1:
        raise ValueError(f"the number of CPU devices must be >= 1, got {n}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if have != n:
            log.warning("JAX already runs with %d CPU device(s): call lucijax.set_cpu_devices(%d) before any "
                        "computation to use %d", have, n, n)
        return have
    return n


def _give_entries_an_access_time(folder: Path) -> None:
    """Entries written without a size bound (lucijax 0.1, or JAX used directly) have no
    ``<key>-atime`` file; JAX's bounded cache then fails every write (its eviction reads the
    access time of every entry) and a run recompiles everything each time. Give each such
    entry the time of its last change."""
    for entry in folder.glob("*-cache"):
        atime = entry.with_name(entry.name[: -len("-cache")] + "-atime")
        if not atime.exists():
            try:
                atime.write_bytes(int(entry.stat().st_mtime_ns).to_bytes(8, "little"))
            except OSError:  # removed meanwhile, or a read-only folder: nothing to repair
                pass


def enable_compilation_cache(path: str | os.PathLike | None = None, max_size_gb: float = 16.0) -> Path | None:
    """Keep compiled programs in ``path`` (default ``$LUCIJAX_CACHE_DIR``, else
    :data:`DEFAULT_CACHE_DIR`; ``'off'`` disables it), at most ``max_size_gb`` (least
    recently used programs evicted). Returns the folder, or None when off or not writable.

    The size bound also makes JAX read and write the cache under a file lock: several
    processes (test workers, a cluster's workers, two runs) then share one cache safely.
    Without it JAX writes entries in place, and a process reading an entry another one is
    still writing crashed jaxlib 0.10.2 in native code."""
    import jax

    text = os.fspath(path) if path is not None else os.environ.get("LUCIJAX_CACHE_DIR", str(DEFAULT_CACHE_DIR))
    if text.lower() in ("off", "none", "0", ""):
        return None
    folder = Path(text).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
        # every program, small ones too: a second run then compiles nothing
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        _give_entries_an_access_time(folder)
        jax.config.update("jax_compilation_cache_max_size", int(max_size_gb * 2**30))
    except (OSError, AttributeError) as err:  # read-only home, old jax: run without the cache
        log.warning("no compilation cache (%s)", err)
        return None
    return folder


__all__ = ["set_cpu_devices", "enable_compilation_cache", "default_cpu_devices", "DEFAULT_CACHE_DIR"]
