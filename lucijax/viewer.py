"""An interactive viewer of a fit: click a map pixel to see its spectrum, the fitted model,
the residual and (when sampled) its posterior draws; draw a box to fit its integrated spectrum.

Two layers:

* :class:`ViewerData` holds what is shown and computes it without any plotting library:
  :meth:`ViewerData.pixel` (a map pixel's spectrum on the fit window, model, residual, the
  model's parts line by line, the maps' values and the posterior draws) and
  :meth:`ViewerData.fit_box` (a box's integrated spectrum fitted through
  :func:`lucijax.views.integrate` and :func:`lucijax.fit`).
* :class:`Viewer` lays it out as a Bokeh application (``bokeh``: ``pip install
  lucijax[view]``): in a notebook (``lj.view(fit, cube=...)`` displays it), or as a local web
  page (``lucijax view maps.fits --cube CUBE``, :meth:`Viewer.serve`).

The model of a pixel comes from the fit itself for a result in memory
(:meth:`~lucijax.results.fit.Result.line_spectra`). From a ``maps.fits`` file it is rebuilt
from the maps: each line's ``_AMPLITUDE``, ``_VELOCITY`` and ``_BROADENING`` and the pixel's
``FWHM`` through the fit's line model (bound to the cube's header), plus the ``CONTINUUM`` map
(the fitted continuum at the window centre: the whole continuum of the default order-0 fit).

Named Bokeh models (what a test or a script reads back through BokehJS,
``Bokeh.documents[0].get_model_by_name(NAME)``): ``map`` (the map figure), ``map_image``
(its ColumnDataSource: ``image``), ``map_select`` (the map chooser), ``spectrum_source``
(``x``, ``data``, ``model``, ``residual`` of the clicked pixel), ``pixel_info`` (a Div),
``posterior_source`` (``velocity``, ``broadening`` draws), ``pixel_grid`` (one point per
map pixel: the box-select tool selects them), ``box_source`` (``x``, ``data``, ``model``)
and ``box_info`` (a Div).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Viewer", "ViewerData", "serve", "view"]

#: maps listed first in the chooser, after the line fluxes
_FIRST = ("VELOCITY", "BROADENING", "STATUS", "CHI2", "SNR", "CONTINUUM", "NOISE")


def _import_bokeh():
    try:
        import bokeh  # noqa: F401
    except ImportError as err:  # pragma: no cover - the [view] extra
        raise ImportError("the viewer needs bokeh: pip install 'lucijax[view]'") from err


def _region_of(text) -> tuple | None:
    """'x0:x1,y0:y1' (the REGION card) -> (x0, x1, y0, y1)."""
    if not text:
        return None
    xs, ys = str(text).split(",")
    x0, x1 = (int(v) for v in xs.split(":"))
    y0, y1 = (int(v) for v in ys.split(":"))
    return x0, x1, y0, y1


def map_order(maps: dict) -> list[str]:
    """Names of the 2-D maps in the chooser's order: line fluxes, the first line's velocity and
    broadening, STATUS, CHI2 ... then every other map."""
    names = [n for n, a in maps.items() if np.ndim(a) == 2]
    first = [n for n in names if n.endswith("_FLUX")]
    for suffix in _FIRST:
        first += [n for n in names if n == suffix or (n.endswith("_" + suffix) and suffix in ("VELOCITY", "BROADENING")
                                                      and n not in first and not n.startswith("MDN_"))][:1]
    return first + [n for n in names if n not in first]


class ViewerData:
    """The maps of a fit, the cube it was fitted on, and what a click shows.

    Build it with :meth:`from_result` (a result in memory) or :meth:`from_files` (a
    ``maps.fits`` written by ``lucijax fit``).

    Parameters
    ----------
    maps : dict of [y, x] arrays
    units : dict
    cube : open cube
        The cube file the maps were fitted on (its pixels, not a binned view).
    bound : BoundModel
        The line model the pixel models are evaluated with.
    origin : (x0, y0)
        Where map pixel (0, 0) lies in the cube.
    result : Result, optional
        The fit in memory (its own model spectra are shown).
    model : Model
        The model the box fits use.
    samples : path, optional
        HDF5 file of every pixel's posterior draws (``lucijax fit --bayes-samples``).
    solver : MAP or Components, optional
        How the box fits are made (default ``MAP()``).
    """

    def __init__(self, maps, units, cube, bound, *, origin=(0, 0), result=None, model=None, samples=None,
                 solver=None):
        self.maps = maps
        self.units = dict(units)
        self.cube = cube
        self.bound = bound
        self.origin = (int(origin[0]), int(origin[1]))
        self.result = result
        self.model = model if model is not None else bound.model
        self.samples = None if samples is None else Path(samples)
        self.solver = solver
        self.map_names = map_order(maps)
        self._profiles = None
        ny, nx = self.shape
        cx, cy = cube.shape[:2]
        if self.origin[0] < 0 or self.origin[1] < 0 or self.origin[0] + nx > cx or self.origin[1] + ny > cy:
            raise ValueError(f"the maps ({nx} x {ny} pixels at {self.origin}) do not lie inside the cube ({cx} x {cy})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_result(cls, result, cube, *, samples=None) -> ViewerData:
        """Viewer data of a :class:`~lucijax.FitResult` or :class:`~lucijax.PosteriorResult`
        (its ``samples_path`` is used when ``samples`` is not given) and its cube (path or
        open cube: the whole file the result's ``region`` refers to). Box fits use the
        result's model and, for a MAP or multi-component fit, its solver."""
        from lucijax.api import open_cube
        from lucijax.solvers import MAP, Components

        c = cube if hasattr(cube, "read_spectra") else open_cube(cube)
        if result.region is not None:
            origin = result.region[0], result.region[2]
        elif tuple(result.shape[::-1]) == tuple(c.shape[:2]):
            origin = (0, 0)
        else:
            raise ValueError("the result has no region in the cube (a binned, Voronoi or integrated fit): "
                             "the viewer shows fits of the cube's own pixels")
        if samples is None:
            samples = getattr(result, "samples_path", None)
        solver = getattr(getattr(result, "fit", None) or result, "solver", None)
        return cls(result.maps, result.units, c, result.bound, origin=origin, result=result, samples=samples,
                   solver=solver if isinstance(solver, (MAP, Components)) else None)

    @classmethod
    def from_files(cls, maps_path, cube, *, samples=None, window=None) -> ViewerData:
        """Viewer data of a ``maps.fits`` written by ``lucijax fit`` and its cube.

        The line model is rebuilt from the file's cards (``LINES``, ``MODEL``, ``REDSHIFT``,
        ``REGION``) on the cube's header, each line with its own velocity and broadening
        maps; ``window`` (cm^-1) when the fit was given one (``--window``)."""
        from lucijax.api import open_cube
        from lucijax.description import Model
        from lucijax.io.maps import read_map_units, read_maps_fits, read_maps_header
        from lucijax.results.maps import line_map_name

        maps = read_maps_fits(maps_path)
        if not maps or "STATUS" not in maps:
            raise ValueError(f"{maps_path} holds no lucijax maps (no STATUS map)")
        cards = read_maps_header(maps_path)
        lines = str(cards.get("LINES", "")).split()
        missing = [n for n in lines if f"{line_map_name(n)}_AMPLITUDE" not in maps]
        if not lines or missing:
            raise ValueError(f"{maps_path}: its LINES card does not name every fitted line's maps "
                             f"({' '.join(missing) or 'no LINES card'}); the viewer rebuilds the model from them")
        c = cube if hasattr(cube, "read_spectra") else open_cube(cube)
        region = _region_of(cards.get("REGION"))
        ny, nx = maps["STATUS"].shape
        if region is None:
            if (nx, ny) != tuple(c.shape[:2]):
                raise ValueError(f"{maps_path} has no REGION card and its maps ({nx} x {ny}) are not the cube's "
                                 f"pixels ({c.shape[0]} x {c.shape[1]}): a binned or integrated fit?")
            region = (0, nx, 0, ny)
        elif (region[1] - region[0], region[3] - region[2]) != (nx, ny):
            raise ValueError(f"{maps_path}: REGION {cards['REGION']} is not the maps' {nx} x {ny} pixels (binned?)")
        profile = str(cards.get("MODEL", "sincgauss"))
        redshift = float(cards.get("REDSHIFT", 0.0) or 0.0)
        win = tuple(window) if window is not None else None
        # every line on its own: the maps hold each line's kinematics and amplitude
        each = Model(tuple(lines), profile=profile, groups=tuple(range(len(lines))), tie_nii=False, window=win,
                     redshift=redshift)
        box_model = Model(tuple(lines), profile=profile, window=win, redshift=redshift)
        return cls(maps, read_map_units(maps_path), c, each.bind(c.header), origin=(region[0], region[2]),
                   model=box_model, samples=samples)

    # ------------------------------------------------------------------ queries
    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the maps."""
        return tuple(self.maps["STATUS"].shape)

    def spectrum(self, x: int, y: int) -> np.ndarray:
        """The cube's spectrum of map pixel ``(x, y)`` on the fit window (float64)."""
        X, Y = self.origin[0] + int(x), self.origin[1] + int(y)
        s = np.asarray(self.cube.read_spectra(X, X + 1, Y, Y + 1))[0, 0]
        return np.asarray(s[self.bound.window], np.float64)

    def model_parts(self, x: int, y: int) -> dict[str, np.ndarray]:
        """The fitted model of map pixel ``(x, y)``, line by line and ``'continuum'``."""
        if self.result is not None:
            return {k: np.asarray(v, np.float64) for k, v in self.result.line_spectra(x, y)[1].items()}
        import jax
        import jax.numpy as jnp

        from lucijax.results.maps import line_map_name

        if self._profiles is None:  # compiled once: a click then costs milliseconds
            self._profiles = jax.jit(self.bound.line_model.line_profiles)

        names = self.bound.line_set.names
        keys = [line_map_name(n) for n in names]
        m = self.maps
        theta = [m[f"{k}_VELOCITY"][y, x] for k in keys]
        if self.bound.spec.has_broadening:
            theta += [m[f"{k}_BROADENING"][y, x] for k in keys]
        amp = np.array([m[f"{k}_AMPLITUDE"][y, x] for k in keys], np.float64)
        fwhm = float(m["FWHM"][y, x]) * (1.0 + self.bound.redshift)  # the fit's frame
        prof = np.asarray(self._profiles(jnp.asarray(theta, jnp.float32), jnp.float32(fwhm)), np.float64)
        parts = {n: prof[:, i] * amp[i] for i, n in enumerate(names)}
        parts["continuum"] = np.full(prof.shape[0], float(m["CONTINUUM"][y, x]))
        return parts

    def posterior(self, x: int, y: int) -> dict[str, np.ndarray] | None:
        """The posterior draws of map pixel ``(x, y)`` (first kinematic group's ``velocity``
        and ``broadening``, every chain), or None without a samples file or draws there."""
        if self.samples is None:
            return None
        from lucijax.results.samples import read_samples

        draws, names = read_samples(self.samples, int(x), int(y))
        flat = np.asarray(draws, np.float64).reshape(-1, len(names))
        out = {}
        for key, name in (("velocity", "velocity_0"), ("broadening", "broadening_0")):
            if name in names:
                out[key] = flat[:, names.index(name)]
        if not out or not np.isfinite(out["velocity"]).any():
            return None
        return out

    def values(self, x: int, y: int) -> dict[str, float]:
        """Every map's value at map pixel ``(x, y)``."""
        return {n: float(self.maps[n][y, x]) for n in self.map_names}

    def pixel(self, x: int, y: int) -> dict:
        """What a click on map pixel ``(x, y)`` shows.

        Returns
        -------
        dict
            ``axis`` (observed cm^-1 of the fit window), ``data`` (the cube's spectrum),
            ``model``, ``residual`` (data - model), ``parts`` (:meth:`model_parts`),
            ``values`` (every map at the pixel), ``posterior`` (:meth:`posterior`), ``x``,
            ``y`` and ``cube_xy`` (the pixel in the cube).
        """
        ny, nx = self.shape
        x, y = int(x), int(y)
        if not (0 <= x < nx and 0 <= y < ny):
            raise ValueError(f"pixel ({x}, {y}) is outside the maps ({nx} x {ny})")
        data = self.spectrum(x, y)
        parts = self.model_parts(x, y)
        model = np.sum(list(parts.values()), axis=0)
        return {"x": x, "y": y, "cube_xy": (self.origin[0] + x, self.origin[1] + y), "axis": self.bound.axis_obs_cm1,
                "data": data, "model": model, "residual": data - model, "parts": parts, "values": self.values(x, y),
                "posterior": self.posterior(x, y)}

    def fit_box(self, x0: int, x1: int, y0: int, y1: int, *, combine: str = "sum", solver=None) -> dict:
        """Fit the integrated spectrum of map pixels ``x0 <= x < x1``, ``y0 <= y < y1``
        (:func:`lucijax.views.integrate` then :func:`lucijax.fit` with the viewer's model and
        ``solver``, default the viewer's).

        Returns
        -------
        dict
            ``axis``, ``data`` (the integrated spectrum on the fit window), ``model``,
            ``residual``, ``summary`` (the fit's :meth:`~lucijax.results.fit.Result.summary`),
            ``fit`` (the FitResult), ``box`` (in map pixels) and ``cube_box``.
        """
        from lucijax.api import fit
        from lucijax.engine import Execution
        from lucijax.views import integrate

        ny, nx = self.shape
        x0, x1, y0, y1 = max(int(x0), 0), min(int(x1), nx), max(int(y0), 0), min(int(y1), ny)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty box {x0}:{x1},{y0}:{y1} (maps {nx} x {ny})")
        ox, oy = self.origin
        cube_box = (ox + x0, ox + x1, oy + y0, oy + y1)
        spec = integrate(self.cube, region=cube_box, combine=combine)
        result = fit(spec, self.model, solver or self.solver, execution=Execution(progress=False))
        bound = result.bound
        data = np.asarray(spec.read_spectra(0, 1, 0, 1))[0, 0][bound.window].astype(np.float64)
        axis, model = result.model_spectrum(0, 0)
        model = np.asarray(model, np.float64)
        return {"axis": axis, "data": data, "model": model, "residual": data - model, "summary": result.summary(),
                "fit": result, "box": (x0, x1, y0, y1), "cube_box": cube_box}


def _limits(img) -> tuple[float, float]:
    fin = np.asarray(img, np.float64)
    fin = fin[np.isfinite(fin)]
    if fin.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(fin, [1, 99])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.4g}"


class Viewer:
    """The Bokeh application of a :class:`ViewerData` (``bokeh`` needed: ``lucijax[view]``).

    In a notebook the object displays itself (``lj.view(fit, cube=...)`` as the cell's last
    line, or :meth:`show`); :meth:`serve` runs it as a local web page; :meth:`app` builds it
    in a given Bokeh document (``bokeh.io.show(viewer.app)``).

    Parameters
    ----------
    data : ViewerData
    initial : str, optional
        The map shown first (default: the first line's flux).
    """

    def __init__(self, data: ViewerData, initial: str | None = None):
        _import_bokeh()
        self.data = data
        if initial is not None and initial not in data.map_names:
            raise ValueError(f"no map {initial} (maps: {', '.join(data.map_names)})")
        self.initial = initial or data.map_names[0]

    # ------------------------------------------------------------------ the document
    def app(self, doc) -> None:
        """Build the viewer in Bokeh document ``doc`` (a Bokeh server's or a notebook's)."""
        from bokeh.events import DoubleTap, Tap
        from bokeh.layouts import column, row
        from bokeh.models import (
            BoxSelectTool,
            ColorBar,
            ColumnDataSource,
            Div,
            LinearColorMapper,
            Select,
        )
        from bokeh.palettes import Viridis256
        from bokeh.plotting import figure

        d = self.data
        ny, nx = d.shape
        name = self.initial
        lo, hi = _limits(d.maps[name])
        mapper = LinearColorMapper(palette=Viridis256, low=lo, high=hi, nan_color="lightgrey")
        image = ColumnDataSource({"image": [np.asarray(d.maps[name], np.float64)]}, name="map_image")
        side = 420
        fig = figure(name="map", title=f"{name} [{d.units.get(name, '')}]", x_range=(-0.5, nx - 0.5),
                     y_range=(-0.5, ny - 0.5), frame_width=side, frame_height=max(int(side * ny / nx), 120),
                     tools="pan,wheel_zoom,reset", match_aspect=True, x_axis_label="x (map pixel)",
                     y_axis_label="y (map pixel)")
        fig.image(image="image", x=-0.5, y=-0.5, dw=nx, dh=ny, color_mapper=mapper, source=image)
        fig.add_layout(ColorBar(color_mapper=mapper, width=12), "right")
        gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
        grid = ColumnDataSource({"x": gx.ravel(), "y": gy.ravel()}, name="pixel_grid")
        dots = fig.scatter("x", "y", source=grid, size=4, alpha=0.0, selection_alpha=0.6, selection_color="white",
                           nonselection_alpha=0.0)
        box_tool = BoxSelectTool(renderers=[dots])
        fig.add_tools(box_tool)
        fig.toolbar.active_drag = box_tool  # drag: a box to fit; click: a pixel
        marker = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=marker, marker="square_x", size=14, fill_alpha=0.0, line_color="red",
                    line_width=2)

        chooser = Select(title="map", value=name, options=list(d.map_names), name="map_select", width=260)
        info = Div(text="click a pixel of the map; draw a box (box-select tool) to fit its integrated spectrum",
                   name="pixel_info", width=560)

        spec_src = ColumnDataSource({"x": [], "data": [], "model": [], "residual": []}, name="spectrum_source")
        unit = d.bound.flux_unit
        sfig = figure(name="spectrum", title="spectrum", width=640, height=300, x_axis_label="wavenumber (cm-1)",
                      y_axis_label=unit, tools="pan,wheel_zoom,box_zoom,reset")
        sfig.line("x", "data", source=spec_src, color="black", legend_label="data")
        sfig.line("x", "model", source=spec_src, color="crimson", line_width=2, legend_label="model")
        sfig.legend.location = "top_left"
        rfig = figure(name="residual", title="residual (data - model)", width=640, height=160, x_range=sfig.x_range,
                      tools="pan,wheel_zoom,reset")
        rfig.line("x", "residual", source=spec_src, color="steelblue")

        post_src = ColumnDataSource({"velocity": [], "broadening": []}, name="posterior_source")
        pfig = figure(name="posterior", title="posterior draws (no samples file)" if d.samples is None else
                      "posterior draws", width=420, height=300, x_axis_label="velocity (km/s)",
                      y_axis_label="broadening (km/s)", tools="pan,wheel_zoom,reset")
        pfig.scatter("velocity", "broadening", source=post_src, size=3, alpha=0.3)

        box_src = ColumnDataSource({"x": [], "data": [], "model": []}, name="box_source")
        bfig = figure(name="box", title="integrated spectrum of the box", width=640, height=260,
                      x_axis_label="wavenumber (cm-1)", y_axis_label=unit, tools="pan,wheel_zoom,box_zoom,reset")
        bfig.line("x", "data", source=box_src, color="black")
        bfig.line("x", "model", source=box_src, color="crimson", line_width=2)
        box_info = Div(text="", name="box_info", width=640)

        def choose(attr, old, new):
            lo, hi = _limits(d.maps[new])
            image.data = {"image": [np.asarray(d.maps[new], np.float64)]}
            mapper.low, mapper.high = lo, hi
            fig.title.text = f"{new} [{d.units.get(new, '')}]"

        def show_pixel(x, y):
            p = d.pixel(x, y)
            spec_src.data = {"x": p["axis"], "data": p["data"], "model": p["model"], "residual": p["residual"]}
            marker.data = {"x": [x], "y": [y]}
            post = p["posterior"]
            post_src.data = post if post is not None else {"velocity": [], "broadening": []}
            v = p["values"]
            keys = [k for k in d.map_names if k in (chooser.value, "STATUS", "CHI2", "SNR") or k.endswith(
                ("_VELOCITY", "_BROADENING"))][:8]
            X, Y = p["cube_xy"]
            sfig.title.text = f"pixel ({x}, {y}) of the map, ({X}, {Y}) of the cube"
            info.text = (f"<b>pixel ({x}, {y})</b> (cube {X}, {Y}): "
                         + ", ".join(f"{html.escape(k)} = {_fmt(v[k])}" for k in keys))

        def tap(event):
            if event.x is None or event.y is None:
                return
            x, y = int(np.floor(event.x + 0.5)), int(np.floor(event.y + 0.5))
            if 0 <= x < nx and 0 <= y < ny:
                show_pixel(x, y)

        def fit_selected():
            idx = np.asarray(grid.selected.indices, int)
            if idx.size == 0:
                return
            xs, ys = gx.ravel()[idx], gy.ravel()[idx]
            box = (int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1)
            try:
                b = d.fit_box(*box)
            except (ValueError, RuntimeError) as err:
                box_info.text = f"box {box}: {html.escape(str(err))}"
                return
            box_src.data = {"x": b["axis"], "data": b["data"], "model": b["model"]}
            s = b["summary"]
            fluxes = ", ".join(f"{html.escape(k)} flux = {_fmt(v['flux'] if v['flux'] is not None else np.nan)}"
                               for k, v in s["lines"].items())
            box_info.text = (f"<b>box x {box[0]}:{box[1]}, y {box[2]}:{box[3]}</b> ({(box[1] - box[0]) * (box[3] - box[2])} "
                             f"pixels, summed): velocity = {_fmt(s['velocity'] or np.nan)} km/s, broadening = "
                             f"{_fmt(s['broadening'] or np.nan)} km/s, chi2 = {_fmt(s['chi2'] or np.nan)}, "
                             f"STATUS {s['status']}; {fluxes}")

        def selected(attr, old, new):
            if len(new):
                box_info.text = "fitting the box's integrated spectrum ..."
                doc.add_next_tick_callback(fit_selected)

        chooser.on_change("value", choose)
        fig.on_event(Tap, tap)
        fig.on_event(DoubleTap, tap)  # two quick clicks (on two pixels) make a double tap
        grid.selected.on_change("indices", selected)
        doc.add_root(row(column(chooser, fig, info, pfig), column(sfig, rfig, bfig, box_info), name="viewer"))
        doc.title = "lucijax viewer"

    # ------------------------------------------------------------------ showing it
    def show(self, notebook_url: str = "localhost:8888"):
        """Show the viewer in a Jupyter notebook (its callbacks run in the kernel)."""
        from bokeh.io import output_notebook, show

        output_notebook(hide_banner=True)
        return show(self.app, notebook_url=notebook_url)

    def _ipython_display_(self):  # pragma: no cover - Jupyter's display hook
        self.show()

    def serve(self, port: int = 5006, *, browser: bool = True, address: str = "localhost") -> None:
        """Serve the viewer as a local web page at ``http://ADDRESS:PORT/`` until interrupted."""
        server = make_server(self, port, address=address)
        url = f"http://{address}:{server.port}/"
        print(f"lucijax viewer at {url} (Ctrl-C to stop)", flush=True)
        if browser:
            server.io_loop.add_callback(server.show, "/")
        try:
            server.io_loop.start()
        except KeyboardInterrupt:  # pragma: no cover - interactive
            pass
        finally:
            server.stop()


def make_server(viewer: Viewer, port: int = 5006, *, address: str = "localhost"):
    """A started (not yet looping) Bokeh server of ``viewer`` at ``address:port`` (0: a free port)."""
    from bokeh.application import Application
    from bokeh.application.handlers import FunctionHandler
    from bokeh.server.server import Server

    if not port:
        import socket

        with socket.socket() as sock:  # a free port
            sock.bind((address, 0))
            port = sock.getsockname()[1]
    origins = sorted(f"{h}:{port}" for h in {address, "localhost", "127.0.0.1"})
    server = Server({"/": Application(FunctionHandler(viewer.app))}, port=port, address=address,
                    allow_websocket_origin=origins, num_procs=1)
    server.start()
    return server


def view(result_or_maps, cube, *, samples=None, initial: str | None = None, window=None) -> Viewer:
    """The interactive viewer of a fit (Bokeh; ``pip install 'lucijax[view]'``).

    Parameters
    ----------
    result_or_maps : FitResult, PosteriorResult, or path of a maps.fits
        The fit: a result of :func:`lucijax.fit` / :func:`lucijax.sample`, or the maps
        ``lucijax fit`` wrote.
    cube : path or open cube
        The cube it was fitted on (the whole file: a result's ``region`` places it).
    samples : path, optional
        HDF5 file of posterior draws (default: a PosteriorResult's ``samples_path``).
    initial : str, optional
        The map shown first.
    window : (smin, smax), optional
        The fit window (cm^-1) a maps.fits was fitted with (``--window``), if any.

    Returns
    -------
    Viewer
        Displays itself in a notebook; ``.serve(port)`` for a web page; ``.data`` computes
        without Bokeh (``.data.pixel(x, y)``, ``.data.fit_box(x0, x1, y0, y1)``).
    """
    if isinstance(result_or_maps, (str, Path)):
        data = ViewerData.from_files(result_or_maps, cube, samples=samples, window=window)
    else:
        data = ViewerData.from_result(result_or_maps, cube, samples=samples)
    return Viewer(data, initial=initial)


def serve(maps, cube, *, port: int = 5006, browser: bool = True, samples=None, initial=None, window=None) -> None:
    """``lucijax view``: serve the viewer of ``maps`` (a maps.fits) over ``cube`` as a local page."""
    view(maps, cube, samples=samples, initial=initial, window=window).serve(port, browser=browser)
