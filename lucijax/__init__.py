"""lucijax: emission-line fits of every pixel of SITELLE spectral cubes, as one JAX program.

Quick start (notebook)::

    import lucijax
    result = lucijax.fit_cube("cube.hdf5", lines=["Halpha", "NII6583", "NII6548"],
                              region=(100, 164, 200, 264))
    result.maps["HALPHA_FLUX"]        # numpy [y, x], erg/cm^2/s
    result.write("out/")              # out/maps.fits
"""

__version__ = "0.1.0"

import jax as _jax

# float32 throughout the hot path, but float64 host-side maths (axes, WCS) stays in numpy.
_jax.config.update("jax_enable_x64", False)


def __getattr__(name):  # lazy: importing lucijax stays cheap, the API loads on first use
    if name in ("fit_cube", "fit_spectrum", "open_cube", "FitResult"):
        from lucijax import api

        return getattr(api, name)
    raise AttributeError(f"module 'lucijax' has no attribute '{name}'")
