"""lucijax: emission-line fits of every pixel of SITELLE spectral cubes, as one JAX program.

Quick start (notebook)::

    import lucijax as lj

    lj.set_cpu_devices()                                  # optional: one device per core
    model = lj.Model(["Halpha", "NII6583", "NII6548"])
    fit = lj.fit("cube.hdf5", model, lj.MAP(), region=(100, 164, 200, 264))
    fit.maps["HALPHA_FLUX"]                               # numpy [y, x], erg/cm^2/s
    post = lj.sample("cube.hdf5", fit, lj.MH())           # posteriors of every pixel
    post.write("out/")                                    # out/maps.fits

Importing lucijax changes no global state: the number of CPU devices
(:func:`set_cpu_devices`), the compilation cache (:func:`enable_compilation_cache`) and
float64 are explicit. Every public name is importable from here; the modules load on first
use.
"""

__version__ = "0.2.0"

#: public name -> module that defines it
_PUBLIC = {
    # what to fit, how, where
    "Model": "lucijax.description",
    "Background": "lucijax.description",
    "MAP": "lucijax.solvers",
    "Frozen": "lucijax.solvers",
    "Components": "lucijax.solvers",
    "NUTS": "lucijax.bayes",
    "Ensemble": "lucijax.bayes",
    "MH": "lucijax.bayes",
    "Importance": "lucijax.bayes",
    "Nested": "lucijax.bayes",
    "Prior": "lucijax.bayes",
    "EvidenceSelection": "lucijax.bayes",
    "Execution": "lucijax.engine",
    # doing it
    "open_cube": "lucijax.api",
    "fit": "lucijax.api",
    "fit_regions": "lucijax.api",
    "sample": "lucijax.api",
    "heliocentric": "lucijax.api",
    "physics_maps": "lucijax.nebular",
    "narrowband": "lucijax.tools.narrowband",
    "map_pixels": "lucijax.engine",
    "view": "lucijax.viewer",
    "run_survey": "lucijax.survey",
    # results
    "FitResult": "lucijax.results",
    "PosteriorResult": "lucijax.results",
    "SelectionResult": "lucijax.results",
    "RegionTable": "lucijax.results",
    "read_samples": "lucijax.results",
    "to_arviz": "lucijax.results",
    "read_covariance": "lucijax.io.covariance",
    "Status": "lucijax.status",
    # process-wide settings
    "set_cpu_devices": "lucijax.config",
    "enable_compilation_cache": "lucijax.config",
}

_MODULES = ("views", "io", "tools", "results", "bayes", "solvers", "engine", "physics", "simulate", "plots", "mdn", "survey")


def __getattr__(name):  # lazy: importing lucijax stays cheap and imports no JAX
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"lucijax.{name}")
    raise AttributeError(f"module 'lucijax' has no attribute '{name}'")


def __dir__():
    return sorted(list(_PUBLIC) + list(_MODULES) + ["__version__"])


__all__ = sorted(_PUBLIC)
