"""One pixel's or a small region's posterior draws as arviz data, for arviz's diagnostics and
plots (``az.summary``, ``az.rhat``, ``az.ess``, ``az.plot_trace``, ``az.plot_pair``...).

:func:`to_arviz` reads a samples file (:mod:`lucijax.results.samples`, written by
``lucijax.sample(..., samples=path)``) and returns its draws as a ``posterior`` group of
dims ``(chain, draw)`` for one pixel, or ``(chain, draw, pixel)`` for a region, one
variable per sampled parameter named as :func:`~lucijax.results.samples.sample_parameter_names`
gives them (``velocity_0``, ``broadening_0``, ``amplitude_Halpha``, ...; velocities and
broadenings in km/s; amplitudes and continuum coefficients in the cube's flux unit divided
by a power of ten, ``flux_scale``, that makes them of order 1: arviz treats a variable whose
draws span less than 1e-15 as constant, and would give raw SITELLE amplitudes, ~1e-17
erg/cm^2/s/A, an effective sample size equal to the number of draws).
The container is arviz's own: ``arviz.InferenceData`` with arviz < 1, an
``xarray.DataTree`` with arviz >= 1 (its ``posterior`` child). Per-draw sampler statistics
(acceptance, divergences) are not kept in the samples file, so there is no ``sample_stats``
group; the per-pixel diagnostics of a :class:`~lucijax.results.PosteriorResult` go into the
group's attributes (:meth:`~lucijax.results.PosteriorResult.to_arviz`).

arviz is optional (``pip install arviz``, or the ``posterior`` extra): imported here only,
when called.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["import_arviz", "to_arviz"]

#: Parameters in km/s (the others are in the cube's flux unit).
_KMS_PREFIXES = ("velocity_", "delta_velocity_", "broadening_")
#: The linear parameters (in the cube's flux unit).
_FLUX_PREFIXES = ("amplitude_", "continuum_")


def import_arviz():
    """arviz, or an ImportError that says how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # arviz 0.2x announces its 1.0 refactor at import
            import arviz
    except ImportError as err:
        raise ImportError("exporting posterior draws to arviz needs arviz: pip install arviz "
                          "(or pip install 'lucijax[posterior]')") from err
    return arviz


def _file_attrs(path) -> tuple[tuple, dict]:
    """(shape of the ``samples`` dataset, attributes of the file)."""
    import h5py

    with h5py.File(path, "r") as f:
        shape = tuple(f["samples"].shape)
        attrs = {}
        for k, v in f.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            attrs[k] = v
    return shape, attrs


def _check_box(x0, x1, y0, y1, nx, ny) -> None:
    if not (0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny):
        raise ValueError(f"region ({x0}, {x1}, {y0}, {y1}) is not a non-empty box inside the {nx} x {ny} "
                         "pixels of the samples file (view coordinates, end excluded)")


def _power_of_ten(values) -> float:
    """The power of ten of the largest finite ``|values|`` (1 when there is none)."""
    a = np.abs(np.asarray(values, np.float64))
    a = a[np.isfinite(a) & (a > 0)]
    return float(10.0 ** np.floor(np.log10(a.max()))) if a.size else 1.0


def to_arviz(path, x: int | None = None, y: int | None = None, *, region=None, flux_scale="auto",
             flux_unit: str | None = None, attrs: dict | None = None, pixel_attrs: dict | None = None):
    """The posterior draws of pixel ``(x, y)``, or of the pixels of ``region``, as arviz data.

    Parameters
    ----------
    path : path
        A samples file (``lucijax.sample(..., samples=path)``, ``--bayes-samples``).
    x, y : int, optional
        One pixel, in the coordinates of the sampled view (``maps[name][y, x]``): variables
        of dims ``(chain, draw)``.
    region : (x0, x1, y0, y1), optional
        A box of view pixels (end excluded), instead of ``x, y``: variables of dims
        ``(chain, draw, pixel)`` over the box's sampled pixels (x-major order; pixels the
        sampler left out, all NaN in the file, are dropped), with coordinates ``x`` and
        ``y`` along ``pixel``. Every draw is read into memory: meant for a few pixels.
    flux_scale : 'auto' or float
        The amplitudes and continuum coefficients are exported divided by it (in float32,
        as stored): 'auto' is the power of ten of their largest absolute draw (see the
        module docstring); 1 keeps the file's values. Stored as the attribute
        ``flux_scale`` and in each variable's ``units``.
    flux_unit : str, optional
        The cube's flux unit, for the variables' ``units`` (``BoundModel.flux_unit``).
    attrs : dict, optional
        More attributes of the ``posterior`` group.
    pixel_attrs : dict of ``[x, y]`` arrays over the view, optional
        Per-pixel values stored as attributes, taken at the exported pixel(s): a scalar for
        one pixel, an array along ``pixel`` for a region (the diagnostics maps).

    Returns
    -------
    arviz.InferenceData (arviz < 1) or xarray.DataTree (arviz >= 1)
        Group ``posterior``; its attributes name the samples file, the sampler, the cube,
        the view's box in the cube file and the pixel(s) (view and file coordinates).

    Raises
    ------
    ImportError
        Without arviz.
    ValueError
        For a pixel outside the view or not sampled, a region with no sampled pixel, or
        neither (or both) of ``x, y`` and ``region``.
    """
    az = import_arviz()
    import xarray as xr

    from lucijax.results.samples import read_samples

    shape, file_attrs = _file_attrs(path)
    nx, ny = shape[:2]
    one = region is None
    if one and (x is None or y is None):
        raise ValueError("give one pixel (x and y) or a region=(x0, x1, y0, y1)")
    if not one and (x is not None or y is not None):
        raise ValueError("give one pixel (x, y) or a region, not both")
    if one:
        x, y = int(x), int(y)
        if not (0 <= x < nx and 0 <= y < ny):
            raise ValueError(f"pixel ({x}, {y}) is outside the {nx} x {ny} pixels of the samples file (view coordinates)")
        draws, names = read_samples(path, x, y)  # (chain, draw, parameter)
        if not np.isfinite(draws).any():
            raise ValueError(f"pixel ({x}, {y}) was not sampled (masked out, or outside the fitted pixels)")
        xs, ys = np.array([x]), np.array([y])
    else:
        x0, x1, y0, y1 = (int(v) for v in region)
        _check_box(x0, x1, y0, y1, nx, ny)
        box, names = read_samples(path, slice(x0, x1), slice(y0, y1))  # (x, y, chain, draw, parameter)
        gx, gy = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), indexing="ij")
        flat = box.reshape((-1,) + box.shape[2:])
        kept = np.isfinite(flat).any(axis=(1, 2, 3))
        if not kept.any():
            raise ValueError(f"no pixel of region ({x0}, {x1}, {y0}, {y1}) was sampled")
        xs, ys = gx.reshape(-1)[kept], gy.reshape(-1)[kept]
        draws = np.moveaxis(flat[kept], 0, -1)  # (chain, draw, parameter, pixel)
    n_chain, n_draw = draws.shape[:2]
    linear = [k for k, name in enumerate(names) if name.startswith(_FLUX_PREFIXES)]
    scale = _power_of_ten(draws[:, :, linear]) if flux_scale == "auto" else float(flux_scale)
    dims = ("chain", "draw") if one else ("chain", "draw", "pixel")
    data = {}
    for k, name in enumerate(names):
        values, unit = draws[:, :, k], "km s-1"
        if k in linear:
            values = values / np.float32(scale)
            unit = f"{scale:g} {flux_unit or 'x the flux unit of the cube'}"
        data[name] = xr.DataArray(values, dims=dims, attrs={"units": unit})
    coords = {"chain": np.arange(n_chain), "draw": np.arange(n_draw)}
    if not one:
        coords.update(pixel=np.arange(xs.size), x=("pixel", xs), y=("pixel", ys))

    meta = {"inference_library": "lucijax", "samples_file": str(path), "flux_scale": scale}
    meta.update({k: v for k, v in file_attrs.items() if k in ("sampler", "source")})
    file_box = file_attrs.get("region")
    if file_box is not None and len(file_box) == 4 and file_box[0] >= 0:
        meta["region_in_file"] = [int(v) for v in file_box]
        fx, fy = xs + int(file_box[0]), ys + int(file_box[2])
    else:  # a binned view: its pixels are bins, not pixels of the file
        fx = fy = None
    if one:
        meta.update(x=x, y=y)
        if fx is not None:
            meta.update(x_file=int(fx[0]), y_file=int(fy[0]))
    else:
        meta["region"] = [x0, x1, y0, y1]
        if fx is not None:
            meta.update(x_file=fx.astype(np.int64), y_file=fy.astype(np.int64))
    for name, values in (pixel_attrs or {}).items():
        v = np.asarray(values)[xs, ys]
        meta[name] = v[0].item() if one else v
    meta.update(attrs or {})
    posterior = xr.Dataset(data, coords=coords, attrs=meta)
    if int(str(az.__version__).split(".")[0]) >= 1:  # arviz 1.x works on xarray DataTrees
        return xr.DataTree.from_dict({"posterior": posterior})
    return az.InferenceData(posterior=posterior)
