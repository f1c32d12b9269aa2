"""Figures: maps on the sky (WCSAxes) and a spectrum with its model and residuals."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() in ("", "agg") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _robust_limits(img, lo=2.0, hi=98.0):
    finite = np.isfinite(img)
    if not finite.any():
        return 0.0, 1.0
    vmin, vmax = np.percentile(img[finite], [lo, hi])
    return (vmin, vmax) if vmax > vmin else (vmin - 1, vmin + 1)


def plot_maps(maps: dict, names, wcs=None, units: dict | None = None, path=None, ncols: int = 3, title: str | None = None):
    """A grid of maps (FITS-ordered [y, x]) with sky axes when a celestial WCS is given.

    Returns the matplotlib Figure; saves it to ``path`` when given.
    """
    names = [n for n in names if n in maps]
    ncols = min(ncols, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    fig = plt.figure(figsize=(4.6 * ncols, 4.0 * nrows))
    for k, name in enumerate(names):
        img = np.asarray(maps[name], dtype=float)
        kw = {"projection": wcs} if wcs is not None else {}
        ax = fig.add_subplot(nrows, ncols, k + 1, **kw)
        if name == "STATUS":
            plot_status(ax, img)
        else:
            diverging = "VELOCITY" in name and not name.endswith("ERR")
            _show(ax, img, (units or {}).get(name, ""), *_limits(img, diverging), cmap="RdBu_r" if diverging else "viridis")
        ax.set_title(name, fontsize=10)
        _label_axes(ax, wcs)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def _limits(img, diverging: bool = False):
    """Robust colour limits; symmetric about the median when ``diverging``."""
    lo, hi = _robust_limits(img)
    if not diverging:
        return lo, hi
    med = np.nanmedian(img) if np.isfinite(img).any() else 0.0
    half = max(abs(lo - med), abs(hi - med), 1e-6)
    return med - half, med + half


def _show(ax, img, unit, vmin, vmax, cmap="viridis"):
    """One map with its colorbar."""
    im = ax.imshow(img, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(unit)
    return im


def _label_axes(ax, wcs):
    if wcs is not None:
        ax.coords[0].set_axislabel("RA")
        ax.coords[1].set_axislabel("Dec")
    else:
        ax.set_xlabel("x (pixel)")
        ax.set_ylabel("y (pixel)")


#: One colour per status code (:class:`lucijax.status.Status`) in every STATUS panel.
STATUS_COLORS = {-1: "0.85", 0: "#2ca02c", 1: "black", 2: "#ff7f0e", 3: "#d62728", 4: "#98df8a", 5: "#9467bd",
                 6: "#8c564b", 7: "0.55", 8: "#e377c2"}


def plot_status(ax, status_map):
    """Draw a ``STATUS`` map on ``ax``: one colour per code present, and a colorbar whose
    ticks name those codes (``'0 converged'``, ``'7 no line'``, ...).

    Parameters
    ----------
    ax : matplotlib Axes
        Where to draw (a WCSAxes too).
    status_map : array
        Status codes, FITS-ordered ``[y, x]`` (NaN, e.g. from a float FITS map, counts as
        masked).

    Returns the image.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    from lucijax.status import Status

    status = np.asarray(status_map, dtype=float)
    status = np.where(np.isfinite(status), status, float(Status.MASKED)).astype(int)
    codes = np.unique(status)
    names = []
    for code in codes:
        try:
            names.append(f"{code} {Status(code).name.lower().replace('_', ' ')}")
        except ValueError:
            names.append(f"{code} unknown")
    cmap = ListedColormap([STATUS_COLORS.get(int(c), "magenta") for c in codes])
    index = np.searchsorted(codes, status)
    im = ax.imshow(index, origin="lower", cmap=cmap, norm=BoundaryNorm(np.arange(codes.size + 1) - 0.5, codes.size),
                   interpolation="nearest")
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=np.arange(codes.size))
    cb.set_ticklabels(names)
    cb.ax.tick_params(labelsize=8)
    return im


def plot_truth_comparison(truth: dict, fit: dict, names, *, errors: dict | None = None, units: dict | None = None,
                          status=None, extra: dict | None = None, wcs=None, path=None, title: str | None = None):
    """Fitted maps next to the truth of a simulation: one row per map, columns truth,
    fit (same colour scale) and the pull ``(fit - truth) / error`` (or ``fit - truth``
    when no error is given); an optional last row shows the ``STATUS`` map and ``extra``
    maps.

    Parameters
    ----------
    truth, fit : dict
        Name -> map, FITS-ordered ``[y, x]``.
    names : list of str
        Maps to compare (keys of both dicts), one row each.
    errors : dict, optional
        Name -> 1-sigma error map of the fit: the third column is then the pull.
    units : dict, optional
        Name -> unit for the colorbars.
    status : array, optional
        A ``STATUS`` map, drawn by :func:`plot_status`.
    extra : dict, optional
        Name -> map, drawn after the status panel in the last row (at most 2 with a
        status, 3 without).
    wcs : astropy WCS, optional
        Celestial WCS: sky axes.
    path : path, optional
        Save the figure there.
    title : str, optional
        Figure title.

    Returns the matplotlib Figure.
    """
    names = list(names)
    last = ([("STATUS", status)] if status is not None else []) + list((extra or {}).items())
    if len(last) > 3:
        raise ValueError(f"at most 3 panels in the last row, got {len(last)}")
    nrows = len(names) + bool(last)
    fig = plt.figure(figsize=(13.5, 3.9 * nrows))
    kw = {"projection": wcs} if wcs is not None else {}
    units = units or {}
    for r, name in enumerate(names):
        t, f = np.asarray(truth[name], float), np.asarray(fit[name], float)
        diverging = "VELOCITY" in name
        vmin, vmax = _limits(t, diverging)
        cmap = "RdBu_r" if diverging else "viridis"
        err = (errors or {}).get(name)
        if err is not None:
            third, label, unit, half = (f - t) / np.asarray(err, float), "pull (fit - truth) / error", "", 4.0
        else:
            third, label, unit = f - t, "fit - truth", units.get(name, "")
            half = max(np.nanpercentile(np.abs(third), 98), 1e-30) if np.isfinite(third).any() else 1.0
        for c, (img, lo, hi, cm, col, u) in enumerate([(t, vmin, vmax, cmap, "truth", units.get(name, "")),
                                                        (f, vmin, vmax, cmap, "fit", units.get(name, "")),
                                                        (third, -half, half, "RdBu_r", label, unit)]):
            ax = fig.add_subplot(nrows, 3, 3 * r + c + 1, **kw)
            _show(ax, img, u, lo, hi, cmap=cm)
            ax.set_title(f"{name}: {col}", fontsize=10)
            _label_axes(ax, wcs)
    for c, (name, img) in enumerate(last):
        ax = fig.add_subplot(nrows, 3, 3 * len(names) + c + 1, **kw)
        if name == "STATUS":
            plot_status(ax, img)
        else:
            _show(ax, np.asarray(img, float), units.get(name, ""), *_limits(np.asarray(img, float)))
        ax.set_title(name, fontsize=10)
        _label_axes(ax, wcs)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_spectrum_fit(axis_cm1, spectrum, model, *, lines=None, unit: str = "", path=None, title: str | None = None):
    """Spectrum, model and residuals of one pixel. ``lines``: {name: position cm^-1}."""
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(axis_cm1, spectrum, color="0.3", lw=0.9, label="data")
    ax.plot(axis_cm1, model, color="C3", lw=1.2, label="model")
    for name, pos in (lines or {}).items():
        ax.axvline(pos, color="C0", lw=0.6, ls=":")
        ax.text(pos, ax.get_ylim()[1], name, rotation=90, va="top", ha="right", fontsize=7, color="C0")
    axr.plot(axis_cm1, np.asarray(spectrum) - np.asarray(model), color="0.3", lw=0.8)
    axr.axhline(0, color="C3", lw=0.8)
    ax.set_ylabel(f"flux ({unit})" if unit else "flux")
    axr.set_ylabel("residual")
    axr.set_xlabel("wavenumber (cm$^{-1}$)")
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def region_plot_name(index: int, label: str, n_regions: int) -> str:
    """File name of a region's plot: ``'007_HII-12.png'`` (index zero-padded to sort, the
    label with every character but letters, digits, ``.``, ``_`` and ``-`` made ``_``)."""
    width = max(3, len(str(max(n_regions - 1, 0))))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label or "")).strip("_.")
    return f"{int(index):0{width}d}" + (f"_{safe}" if safe else "") + ".png"


def plot_region_fits(regions, folder) -> list:
    """One PNG per fitted region of a :class:`~lucijax.results.regions.RegionTable`: its
    integrated spectrum, the model and the residuals on the fit window, the lines marked
    at their fitted velocity; the title gives the region, its pixels, the first line's
    velocity and flux and the STATUS. Named by :func:`region_plot_name` in ``folder``
    (created); regions that were not fitted (no pixel) get none.

    Returns the paths written.
    """
    from pathlib import Path

    from lucijax.physics.conversions import observed_position_cm1

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table, fit = regions.table, regions.fit
    ls = fit.bound.line_set
    first = ls.names[0].upper()
    unit = fit.units.get("CONTINUUM", "")
    paths = []
    for k, row in enumerate(table):
        if row["N_PIXELS"] == 0:
            continue
        axis, spectrum, model = regions.model_spectrum(k)
        v = np.asarray(fit.fields["velocity_kms"][k, 0], float)
        lines = {}
        if np.all(np.isfinite(v)):
            lines = {name: float(observed_position_cm1(ls.rest_cm1[i], v[ls.groups[i]], fit.bound.redshift))
                     for i, name in enumerate(ls.names)}
        label = str(row["LABEL"] or "")
        title = (f"region {row['INDEX']}{f' {label}' if label else ''} ({row['SHAPE']}, {row['N_PIXELS']} px), "
                 f"STATUS {row['STATUS']}\nv = {row[f'{first}_VELOCITY']:.1f} +- {row[f'{first}_VELOCITY_ERR']:.1f} km/s, "
                 f"{ls.names[0]} {row[f'{first}_FLUX']:.3g} +- {row[f'{first}_FLUX_ERR']:.2g} "
                 f"{table[f'{first}_FLUX'].unit or ''}")
        path = folder / region_plot_name(row["INDEX"], label, len(table))
        fig = plot_spectrum_fit(axis, spectrum, model, lines=lines, unit=unit, path=path, title=title)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_corner(samples: dict, names=None, *, truths: dict | None = None, units: dict | None = None, path=None,
                title: str | None = None, **corner_kwargs):
    """Posterior corner plot (``corner`` package) of one pixel.

    Parameters
    ----------
    samples : dict
        Parameter name -> samples, shape ``(draws,)`` or ``(chains, draws)`` (flattened).
    names : list of str, optional
        Parameters to show, in order (default: every key of ``samples``).
    truths : dict, optional
        Parameter name -> value to mark (e.g. the MAP fit or the simulation truth).
    units : dict, optional
        Parameter name -> unit for the axis labels.
    path : path, optional
        Save the figure there.
    corner_kwargs
        Passed to ``corner.corner`` (e.g. ``bins``, ``smooth``).

    Returns the matplotlib Figure; the titles give the median and the 16-84 % interval.
    """
    import corner

    names = list(names or samples)
    missing = [n for n in names if n not in samples]
    if missing:
        raise KeyError(f"no samples for {missing}; samples given: {list(samples)}")
    cols = [np.asarray(samples[n], dtype=float).reshape(-1) for n in names]
    if len({c.size for c in cols}) != 1:
        raise ValueError("every parameter needs the same number of samples")
    data = np.stack(cols, axis=1)
    keep = np.all(np.isfinite(data), axis=1)
    if keep.sum() < max(10, data.shape[1] + 1):
        raise ValueError(f"only {int(keep.sum())} finite samples: too few for a corner plot")
    labels = [f"{n} ({(units or {}).get(n)})" if (units or {}).get(n) else n for n in names]
    kw = dict(quantiles=[0.16, 0.5, 0.84], show_titles=True, title_fmt=".3g", title_kwargs={"fontsize": 9},
              label_kwargs={"fontsize": 9})
    if truths is not None:
        kw["truths"] = [truths.get(n) for n in names]
        kw["truth_color"] = "C3"
    kw.update(corner_kwargs)
    fig = corner.corner(data[keep], labels=labels, **kw)
    if title:
        fig.suptitle(title, y=1.02)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _finish(fig, path):
    """Lay out ``fig``, save it to ``path`` when given, return it."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
