"""Per-pixel kinematics from maps: a previous fit's (or another filter's) velocity and
broadening maps as the fixed values of freeze mode (:class:`~lucijax.solvers.Frozen`) or
as the starts and bounds of a MAP fit (``MAP(start="maps")``).

:func:`given_kinematics` reads a maps file once, resamples it onto the cube's pixels when it
belongs to another pointing (its WCS is not the cube's; ``reproject``, bilinear), and cuts
each kinematic group's velocity and broadening (and their errors) for the fitted view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lucijax.io.maps import read_map_wcs, read_maps_fits
from lucijax.io.resample import grid_offset, resample_values

KINEMATIC_QUANTITIES = ("VELOCITY", "VELOCITY_ERR", "BROADENING", "BROADENING_ERR")


def _fitted(name: str) -> bool:
    """A map of the fitted kinematics: not the network's (``MDN_...``) nor the global-optimum
    check's other solution (``{LINE}_ALT_VELOCITY``)."""
    return not name.startswith("MDN_") and "_ALT_" not in name


def kinematic_maps(freeze, line_set, region, cube_shape_xy) -> tuple[np.ndarray, np.ndarray]:
    """Velocity and broadening maps of each kinematic group over ``region`` of a cube.

    Parameters
    ----------
    freeze : path or dict
        ``maps.fits`` of a previous fit, or a dict of FITS-ordered ``[y, x]`` arrays. Group
        ``g`` takes ``{LINE}_VELOCITY`` (and ``_ERR``) of its first line, broadening group
        ``b`` ``{LINE}_BROADENING`` (and ``_ERR``) of its first line, else plain
        ``VELOCITY`` / ``BROADENING`` maps (then all groups share them), else the maps of other lines when they all share one kinematics (another
        filter's fit). Maps cover either the region or the whole cube.
    line_set : LineSet
    region : (x0, x1, y0, y1)
    cube_shape_xy : (nx, ny)

    Returns
    -------
    theta, theta_err : arrays of shape (x1 - x0, y1 - y0, G + B) indexed [x, y]: velocities
    of the G kinematic groups then broadenings of the B broadening groups (km/s).
    """
    if isinstance(freeze, (str, Path)):
        maps = read_maps_fits(freeze)
    else:
        maps = dict(freeze)
    x0, x1, y0, y1 = region
    nx, ny = cube_shape_xy

    def cut(name):
        arr = np.asarray(maps[name], np.float64)
        if arr.shape == (y1 - y0, x1 - x0):
            return arr.T
        if arr.shape == (ny, nx):
            return arr[y0:y1, x0:x1].T
        raise ValueError(f"kinematic map {name} has shape {arr.shape}: expected the region's {(y1 - y0, x1 - x0)} "
                         f"or the cube's {(ny, nx)} ([y, x])")

    def find(line, quantity, required=True):
        for name in (f"{line.upper()}_{quantity}", quantity):
            if name in maps:
                return cut(name)
        # maps of other lines with one shared kinematics (SN3's Halpha for SN2's Hbeta)
        others = [k for k in maps if k.endswith(f"_{quantity}") and _fitted(k)
                  and not k[: -len(quantity) - 1].endswith(("_VELOCITY", "_BROADENING"))]
        if others and all(np.array_equal(maps[k], maps[others[0]], equal_nan=True) for k in others[1:]):
            return cut(others[0])
        if required:
            raise ValueError(f"the kinematic maps have no {line.upper()}_{quantity} (nor {quantity}) map; "
                             f"maps given: {', '.join(sorted(maps))}")
        return np.full((x1 - x0, y1 - y0), np.nan)

    def first_lines(groups, n):
        groups = np.asarray(groups)
        return [line_set.names[int(np.nonzero(groups == g)[0][0])] for g in range(n)]

    first = first_lines(line_set.groups, line_set.n_groups)
    first_b = first_lines(line_set.broadening_of, line_set.n_broadening_groups)  # each broadening group's
    vel = [find(n, "VELOCITY") for n in first]
    vel_err = [find(n, "VELOCITY_ERR", False) for n in first]
    b = [find(n, "BROADENING", False) for n in first_b]
    b_err = [find(n, "BROADENING_ERR", False) for n in first_b]
    theta = np.stack(vel + b, axis=-1)
    err = np.stack(vel_err + b_err, axis=-1)
    return theta, err


def other_pointing(maps: dict, wcs_maps, cube) -> dict | None:
    """The kinematic ``maps`` (FITS-ordered, celestial WCS ``wcs_maps``) resampled onto
    ``cube``'s pixel grid when their WCS is not the cube's (up to a whole-pixel shift: a
    region of it), else None.

    Velocities and broadenings are interpolated bilinearly at the cube's pixel centres
    (``reproject``); pixels outside the maps get NaN."""
    wcs_cube = getattr(cube.header, "wcs", None)
    if wcs_maps is None or not maps or wcs_cube is None or not wcs_cube.has_celestial:
        return None
    if getattr(cube, "origin", (0, 0)) is None:
        return None
    shape_maps = next(iter(maps.values())).shape
    if grid_offset(wcs_maps, wcs_cube, shape_maps) is not None:
        return None
    nx, ny = int(cube.shape[0]), int(cube.shape[1])
    wanted = {k: v for k, v in maps.items() if k.endswith(KINEMATIC_QUANTITIES) and _fitted(k)}
    out = resample_values(wanted, wcs_maps, wcs_cube, (ny, nx))
    if not any(np.isfinite(v).any() for k, v in out.items() if k.endswith("_VELOCITY") or k == "VELOCITY"):
        raise ValueError("the kinematic maps do not overlap the cube's field (their WCS places them elsewhere "
                         "on the sky)")
    return out


def given_kinematics(kinematics, bound, cube) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's kinematics of ``cube`` (a view whose ``origin`` places it in the cube the
    maps may cover) from ``kinematics`` (a maps file, or a dict of ``[y, x]`` maps of the
    view or of the whole cube): ``(theta, theta_err)``, float32 ``[x, y, n_nonlinear]``
    (velocities then broadenings of the bound model's kinematic groups, km/s).

    A maps file is read once; when its WCS is not the cube's (another pointing, e.g. SN3's
    maps for the SN2 cube of the field) its kinematic maps are resampled onto the cube's
    pixels first."""
    nx, ny = int(cube.shape[0]), int(cube.shape[1])
    origin = getattr(cube, "origin", (0, 0)) or (0, 0)
    root = getattr(cube, "root_shape", (nx, ny)) or (nx, ny)
    region = (origin[0], origin[0] + nx, origin[1], origin[1] + ny)
    if isinstance(kinematics, (str, Path)):
        maps = read_maps_fits(kinematics)
        try:
            other = other_pointing(maps, read_map_wcs(kinematics), cube)
        except ValueError as err:
            raise ValueError(f"{Path(kinematics).name}: {err}") from None
        if other is not None:
            maps, region, root = other, (0, nx, 0, ny), (nx, ny)
    else:
        maps = dict(kinematics)
    theta, err = kinematic_maps(maps, bound.line_set, region, root)
    spec = bound.spec
    if spec.has_broadening and np.all(np.isnan(theta[..., spec.n_groups:])):
        raise ValueError(f"the kinematic maps have no broadening maps, which the {spec.shape} model needs")
    P = spec.n_nonlinear
    return np.asarray(theta[..., :P], np.float32), np.asarray(err[..., :P], np.float32)


def with_given(bound, names):
    """``prepare(block)`` of a program whose per-pixel inputs are the bound model's plus the
    engine's ``given`` arrays ``names``."""

    def prepare(block):
        out = bound.inputs(block)
        for name in names:
            out[name] = block.given[name]
        return out

    return prepare


__all__ = ["given_kinematics", "with_given", "kinematic_maps", "other_pointing", "KINEMATIC_QUANTITIES"]
