"""lucijax: emission-line fits of every pixel of SITELLE spectral cubes, as one JAX program.

Quick start (notebook)::

    import lucijax
    result = lucijax.fit_cube("cube.hdf5", lines=["Halpha", "NII6583", "NII6548"],
                              region=(100, 164, 200, 264))
    result.maps["HALPHA_FLUX"]        # numpy [y, x], erg/cm^2/s
    result.write("out/")              # out/maps.fits
"""

__version__ = "0.1.0"

import os as _os


def _split_cpu_into_devices():
    """One XLA host device per CPU core, so that batches run on every core at once (the
    driver sends batches round robin to the devices; one CPU device runs on ~1 core).
    Only effective before JAX starts its CPU backend; ``LUCIJAX_CPU_DEVICES=N`` overrides
    the count, and an explicit ``--xla_force_host_platform_device_count`` is respected."""
    flags = _os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    try:
        n = int(_os.environ.get("LUCIJAX_CPU_DEVICES", 0)) or len(_os.sched_getaffinity(0))
    except (AttributeError, ValueError):
        n = _os.cpu_count() or 1
    if n > 1:
        _os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()


_split_cpu_into_devices()

import jax as _jax  # noqa: E402

# float32 throughout the hot path, but float64 host-side maths (axes, WCS) stays in numpy.
_jax.config.update("jax_enable_x64", False)


def _enable_compilation_cache():
    """Keep compiled fits on disk (``$LUCIJAX_CACHE_DIR``, default ~/.cache/lucijax/jax) so a
    second run with the same line set, model and batch shape skips compilation. Set
    ``LUCIJAX_CACHE_DIR=off`` to disable."""
    import os

    path = os.environ.get("LUCIJAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "lucijax", "jax"))
    if path.lower() in ("off", "none", "0", ""):
        return
    try:
        os.makedirs(path, exist_ok=True)
        _jax.config.update("jax_compilation_cache_dir", path)
        # every program, small ones too: a second run then compiles nothing
        _jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except (OSError, AttributeError):  # read-only home, old jax: run without the cache
        pass


_enable_compilation_cache()


def __getattr__(name):  # lazy: importing lucijax stays cheap, the API loads on first use
    if name in ("fit_cube", "fit_spectrum", "open_cube", "FitResult"):
        from lucijax import api

        return getattr(api, name)
    raise AttributeError(f"module 'lucijax' has no attribute '{name}'")
